"""The model-directory layout and its fingerprints: old model directories stay up to date.

Every resumable stage records a fingerprint of its configuration and inputs; a finished
step is reused only when the fingerprint is unchanged. Each test computes a stage's
fingerprint with the recipe the stage used before there was one shared function, inline,
and checks that the shared function gives the same hex string.
"""

import hashlib
import json
import math
import os

import numpy as np

from deepbof_tf import config as config_lib
from deepbof_tf import io_utils
from deepbof_tf import model_dir as layout


def _arrays(seed=0):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(7, 5)), (rng.random((7, 3)) > 0.5).astype(np.float32),
          rng.normal(size=(4, 5)).astype(np.float64)]


def test_fingerprint_of_json_alone_is_the_local_feature_recipe():
  config = config_lib.TrainConfig()
  blocks = [["train-00000-of-00001.tfrecord.gz", 12345]]
  payload = {"pca": config_lib.to_dict(config.local.pca), "blocks": blocks}
  old = hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()
  assert layout.fingerprint(payload) == old
  rbm_payload = {"pca": old, "rbm": config_lib.to_dict(config.local.rbm)}
  old_rbm = hashlib.sha256(
      json.dumps(rbm_payload, sort_keys=True).encode("utf-8")).hexdigest()
  assert layout.fingerprint(rbm_payload) == old_rbm


def test_encode_fingerprint_is_the_old_recipe():
  payload = {"parameters": hashlib.sha256(b"weights").hexdigest(), "pool_frames": 86,
             "clips": [["test-00000-of-00001.tfrecord.gz", 999]]}
  old = hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()
  assert layout.fingerprint(payload) == old


def test_pretrain_layer_fingerprint_is_the_old_recipe():
  from deepbof_tf.training import pretraining
  config = config_lib.TrainConfig()
  inputs = _arrays()[0]
  for layer_index in (0, 2):
    digest = hashlib.sha256()
    digest.update(json.dumps({"pretrain": config_lib.to_dict(config.pretrain),
                              "units": config.dnn.hidden_units,
                              "normalization": config.dnn.input_normalization,
                              "layer": layer_index}, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(inputs, np.float32).tobytes())
    assert pretraining.layer_fingerprint(config, layer_index, inputs) == digest.hexdigest()


def test_finetune_fingerprint_is_the_old_recipe():
  from deepbof_tf.training import tagger
  config = config_lib.TrainConfig()
  arrays = _arrays()
  for mixed in (False, True):
    finetune = config_lib.to_dict(config.finetune)
    for key in ("epochs", "updates", "early_stopping_patience", "tensorboard",
                "checkpoint_every_seconds"):
      finetune.pop(key)
    finetune["mixed_precision"] = mixed
    payload = {"dnn": config_lib.to_dict(config.dnn), "finetune": finetune}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode())
    for array in arrays:
      digest.update(np.ascontiguousarray(array, np.float32).tobytes())
    assert tagger.finetune_fingerprint(config, *arrays,
                                       mixed_precision_used=mixed) == digest.hexdigest()


def test_logreg_baseline_fingerprint_is_the_old_recipe():
  c_values = list(config_lib.TrainConfig().finetune.logreg_c_values)
  arrays = _arrays(1)
  digest = hashlib.sha256(json.dumps(c_values).encode())
  for array in arrays:
    digest.update(np.ascontiguousarray(array, np.float32).tobytes())
  assert layout.fingerprint(c_values, *arrays) == digest.hexdigest()


def test_fingerprint_depends_on_payload_and_every_array():
  arrays = _arrays()
  base = layout.fingerprint({"a": 1}, *arrays)
  assert layout.fingerprint({"a": 2}, *arrays) != base
  assert layout.fingerprint({"a": 1}, *arrays[:2]) != base
  assert layout.fingerprint({"a": 1}, arrays[0], arrays[1], arrays[2] + 1) != base


def test_layout_paths():
  assert layout.local_dir("m") == "m/local"
  assert layout.bof_path("m", "valid") == "m/bof/valid.npz"
  assert layout.rbm_path("m", 0) == "m/pretrain/rbm_1.npz"
  assert layout.metrics_path("m", "test") == "m/metrics_test.json"
  assert layout.per_tag_csv_path("m", "test") == "m/per_tag_test.csv"
  assert layout.per_tag_plot_path("m", "valid") == "m/per_tag_auc_valid.png"


def test_write_json_matches_the_old_writers_and_is_strict(tmp_path):
  payload = {"b": [1, 2.5, "x"], "a": {"z": None, "y": True}, "n": np.int64(3),
             "f": np.float32(0.25)}
  path = str(tmp_path / "sub" / "out.json")
  assert io_utils.write_json(path, payload) == path
  expected = json.dumps({"b": [1, 2.5, "x"], "a": {"z": None, "y": True}, "n": 3,
                         "f": 0.25}, indent=2, sort_keys=True) + "\n"
  with open(path) as f:
    assert f.read() == expected
  io_utils.write_json(path, {"nan": math.nan, "inf": [math.inf, np.float64(-np.inf)]})
  with open(path) as f:
    assert json.load(f) == {"nan": None, "inf": [None, None]}
  assert os.listdir(tmp_path / "sub") == ["out.json"]
