"""deepbof-train / deepbof-evaluate: config handling, end-to-end on synthetic features, resume."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import multi_device
from deepbof_tf import config as config_lib
from deepbof_tf.config import FrontendConfig
from deepbof_tf import model_dir as layout
from deepbof_tf import models
from deepbof_tf.training import tagger as tagger_lib
from trainer import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAGS = ["rock", "piano", "vocal", "beat", "quiet"]


def _write_synthetic(root, n=(400, 100, 100), dim=32, seed=0):
  """Bag-of-features in [0, 1] whose tags are linear functions of 4 latent factors."""
  rng = np.random.default_rng(seed)
  mixing = rng.normal(size=(4, dim))
  tag_weights = rng.normal(size=(4, len(TAGS)))
  data_dir, model_dir = root / "data", root / "model"
  (model_dir / "bof").mkdir(parents=True)
  data_dir.mkdir()
  (data_dir / "metadata.json").write_text(json.dumps({"tags": TAGS}))
  for split, count in zip(("train", "valid", "test"), n):
    latent = rng.normal(size=(count, 4))
    bof = 1 / (1 + np.exp(-(latent @ mixing + 0.1 * rng.normal(size=(count, dim)))))
    labels = (latent @ tag_weights > 0.5).astype(np.float32)
    np.savez(model_dir / "bof" / f"{split}.npz",
             clip_id=np.array([f"{split}-{i}" for i in range(count)]),
             bag_of_features=bof.astype(np.float32), labels=labels)
  return str(data_dir), str(model_dir)


def _small_config(**dotted):
  values = {"dnn.hidden_units": 32, "pretrain.epochs": 10, "pretrain.batch_size": 50,
            "finetune.epochs": 30, "finetune.batch_size": 32}
  values.update(dotted)
  return config_lib.override(config_lib.TrainConfig(), values)


# --- configuration ----------------------------------------------------------------------

def test_build_config_precedence(tmp_path):
  path = tmp_path / "config.yaml"
  path.write_text("finetune:\n  epochs: 250\n  batch_size: 64\ndnn:\n  num_hidden_layers: 2\n")
  config = train.build_config(
      str(path), ["finetune.batch_size=32", "pretrain.weight_costs=[0.001, 0.01]"],
      {"dnn.num_hidden_layers": 1, "dnn.init": "random"}, seed=7)
  assert config.finetune.epochs == 250                     # file
  assert config.finetune.batch_size == 32                  # --set beats the file
  assert config.dnn.num_hidden_layers == 1                 # flags beat --set and file
  assert config.dnn.init == "random"
  assert config.pretrain.weight_costs == (0.001, 0.01)
  assert config.seed == config.finetune.seed == config.local.rbm.seed == 7
  assert config.pretrain.seed == 7
  json_path = tmp_path / "config.json"
  json_path.write_text(json.dumps({"pretrain": {"epochs": 3}}))
  assert train.build_config(str(json_path)).pretrain.epochs == 3


def test_presets_scale_the_defaults_and_yield_to_explicit_values():
  demo = train.build_config(preset="demo")
  # The demo gets the default budget: the paper's number of updates, not its epochs.
  assert demo.finetune.epochs == 0 and demo.finetune == config_lib.TrainConfig().finetune
  assert demo.local == config_lib.TrainConfig().local  # everything else the paper's
  assert train.build_config(preset="demo", assignments=["finetune.epochs=7"]).finetune.epochs == 7
  # The paper preset is the defaults (the authors' run_tagatune_dnn.m), with RBM 1's
  # visible type spelled out instead of "auto" and the authors' 100 epochs instead of
  # their number of updates.
  paper = train.build_config(preset="paper")
  assert paper == config_lib.override(config_lib.TrainConfig(),
                                      {"pretrain.first_layer_visible": "binary",
                                       "finetune.epochs": 100})
  assert (paper.dnn.pretrained_biases, paper.dnn.dropout_scaling) == ("next_visible",
                                                                      "weights")
  assert not paper.pretrain.shuffle and not paper.finetune.shuffle
  described = config_lib.describe(paper)
  for words in ("RBM i+1's visible bias", "non-inverted", "file order", "100 epochs"):
    assert words in described
  assert config_lib.PRESETS["paper"].num_blocks == 200_000
  with pytest.raises(ValueError, match="unknown preset"):
    config_lib.preset("huge")


def test_paper_preset_writes_and_prints_the_authors_configuration(tmp_path):
  config = train.build_config(preset="paper")
  train.write_operative_config(str(tmp_path), config)
  stored = json.loads((tmp_path / "config.json").read_text())
  assert stored["dnn"]["input_normalization"] == "none"
  assert stored["pretrain"]["first_layer_visible"] == "binary"
  assert (stored["pretrain"]["binary_relu_learning_rate"],
          stored["pretrain"]["binary_relu_min_learning_rate"]) == (0.03, 0.01)
  assert (stored["pretrain"]["relu_relu_learning_rate"],
          stored["pretrain"]["relu_relu_min_learning_rate"]) == (0.003, 0.001)
  assert stored["local"]["pooling"]["pool_frames"] == 86
  assert stored["local"]["rbm"]["num_hidden"] == 1024
  assert stored["local"]["rbm"]["sparsity_target"] == 0.02
  assert (stored["dnn"]["num_hidden_layers"], stored["dnn"]["hidden_units"]) == (3, 512)
  assert stored["pretrain"]["epochs"] == 200
  assert stored["finetune"]["optimizer"] == "adadelta_deepmat"
  assert (stored["finetune"]["adadelta_rho"], stored["finetune"]["adadelta_epsilon"],
          stored["finetune"]["learning_rate"]) == (0.99, 1e-8, 1.0)
  assert stored["finetune"]["epochs"] == 100
  text = config_lib.describe(config)
  for words in ("pooling: 86 frames", "input normalization none",
                "RBM 1 binary-visible 0.03 -> 0.01", "RBMs 2+ ReLU-visible 0.003 -> 0.001",
                "200 epochs", "adadelta_deepmat (rho 0.99, epsilon 1e-08, lr 1)",
                "100 epochs", "1024 units, sparsity 0.02", "3 x 512 ReLU"):
    assert words in text, (words, text)
  standardized = config_lib.override(config_lib.TrainConfig(),
                                     {"dnn.input_normalization": "standardize"})
  assert "RBM 1 gaussian-visible 0.003 -> 0.001" in config_lib.describe(standardized)


@pytest.mark.parametrize("assignment, message", [
    ("finetune.epochz=3", "unknown config key"),
    ("finetune.epochs=ten", "expects an integer"),
    ("finetune.mixed_precision=1", "expects true/false"),
    ("finetune=3", "config section"),
    ("finetune.epochs", "dotted.key=value"),
    ("dnn.init=pretrianed", "init must be"),
])
def test_bad_overrides_are_rejected(assignment, message):
  with pytest.raises(ValueError, match=message):
    train.build_config(None, [assignment])


def test_set_flag_values_are_typed():
  config = train.build_config(None, ["finetune.learning_rate=2", "pretrain.shuffle=false",
                                     "pretrain.weight_costs=0.01"],
                              {"dnn.num_hidden_layers": 1})
  assert config.finetune.learning_rate == 2.0 and isinstance(config.finetune.learning_rate,
                                                             float)
  assert config.pretrain.shuffle is False
  assert config.pretrain.weight_costs == (0.01,)


def test_too_few_weight_costs_for_the_layers():
  with pytest.raises(ValueError, match="weight_costs has 1 entries for 3 hidden layers"):
    train.build_config(None, ["pretrain.weight_costs=[0.001]"])


def test_parse_stages():
  assert train.parse_stages("all") == list(train.STAGES)
  assert train.parse_stages("evaluate,pretrain") == ["pretrain", "evaluate"]
  with pytest.raises(ValueError, match="unknown stage"):
    train.parse_stages("pretrain,fine-tune")


def test_operative_config_is_written_and_protected(tmp_path):
  model_dir = str(tmp_path / "model")
  config = _small_config()
  path = train.write_operative_config(model_dir, config)
  stored = json.loads(open(path).read())
  assert config_lib.from_dict(config_lib.TrainConfig, stored) == config
  train.write_operative_config(model_dir, config)  # same config: fine
  changed = config_lib.override(config, {"finetune.epochs": 300})
  with pytest.raises(ValueError, match=r"finetune.epochs: 30 -> 300.*--overwrite"):
    train.write_operative_config(model_dir, changed)
  train.write_operative_config(model_dir, changed, overwrite=True)
  assert json.loads(open(path).read())["finetune"]["epochs"] == 300


# --- end to end ----------------------------------------------------------------------------

def test_front_end_of_the_data_is_recorded_with_the_model(tmp_path):
  data_dir, model_dir = _write_synthetic(tmp_path)
  frontend = dataclasses.asdict(FrontendConfig(symmetric_window=False))
  metadata = {"tags": TAGS, "frontend": frontend, "channel_mode": "mean"}
  with open(os.path.join(data_dir, "metadata.json"), "w") as f:
    json.dump(metadata, f)
  train.run_stages(data_dir, model_dir, _small_config(), [])
  recorded = json.load(open(os.path.join(model_dir, "frontend.json")))
  assert recorded == {"frontend": frontend, "channel_mode": "mean"}
  # ... and it is what the export reads back, without the data directory.
  from serving import export_lib
  config, channel_mode = export_lib.load_audio_settings(model_dir)
  assert config == FrontendConfig(symmetric_window=False) and channel_mode == "mean"


def test_pretrain_finetune_evaluate_on_separable_features(tmp_path, capsys):
  data_dir, model_dir = _write_synthetic(tmp_path)
  config = _small_config(**{"dnn.num_hidden_layers": 2})
  summaries = train.run_stages(data_dir, model_dir, config,
                               ["pretrain", "finetune", "evaluate"])
  assert len(summaries["pretrain"]["layers"]) == 2
  assert summaries["finetune"]["init"] == "pretrained"
  report = json.loads(open(os.path.join(model_dir, "metrics.json")).read())
  assert report["method"] == "Deep-BoF DNN" and report["split"] == "test"
  assert report["auc_tag"] >= 0.95, {k: v for k, v in report.items() if k != "per_tag"}
  assert report["baselines"]["BoF + logistic regression"]["auc_tag"] >= 0.95
  assert set(report["per_tag"]) == set(TAGS) and report["num_clips"] == 100
  for name in ("metrics_test.json", "per_tag_test.csv", "per_tag_auc_test.png",
               "tagger.keras", "tags.json", "pretrain/rbm_1.npz", "pretrain/rbm_2.npz",
               "finetune/history.json", "finetune/checkpoint.npz", "logreg/tagger.keras"):
    assert os.path.exists(os.path.join(model_dir, name)), name
  rows = open(os.path.join(model_dir, "per_tag_test.csv")).read().splitlines()
  assert rows[0].startswith("tag,positives,Deep-BoF DNN_roc_auc") and len(rows) == 6
  assert open(os.path.join(model_dir, "per_tag_auc_test.png"), "rb").read(4) == b"\x89PNG"
  table = capsys.readouterr().out
  assert "AUC-T" in table and "Deep-BoF DNN" in table
  # The DNN's first hidden layer starts from RBM 1 (weights + hidden bias), not random.
  rbm = np.load(os.path.join(model_dir, "pretrain", "rbm_1.npz"))
  assert rbm["kernel"].shape == (32, 32)
  # Rerunning pretrain reuses the stored layers (same config, same inputs).
  before = os.path.getmtime(os.path.join(model_dir, "pretrain", "rbm_1.npz"))
  train.run_stages(data_dir, model_dir, config, ["pretrain"])
  assert os.path.getmtime(os.path.join(model_dir, "pretrain", "rbm_1.npz")) == before
  # The exported tagger maps raw bag-of-features to probabilities.
  tagger = models.load_tagger(model_dir)
  bof = np.load(os.path.join(model_dir, "bof", "test.npz"))["bag_of_features"]
  scores = tagger.predict(bof, verbose=0)
  assert scores.shape == (100, 5) and np.all((scores >= 0) & (scores <= 1))
  assert models.load_tag_names(model_dir) == TAGS


def test_logreg_head(tmp_path):
  data_dir, model_dir = _write_synthetic(tmp_path, n=(200, 60, 60))
  config = _small_config(**{"dnn.head": "logreg"})
  summaries = train.run_stages(data_dir, model_dir, config, ["pretrain", "finetune",
                                                             "evaluate"])
  assert "skipped" in summaries["pretrain"]
  assert summaries["finetune"]["head"] == "logreg"
  assert summaries["evaluate"]["BoF + logistic regression"]["auc_tag"] >= 0.95
  assert "Deep-BoF DNN" not in summaries["evaluate"]


class _Killed(Exception):
  pass


class _KillAfterEpoch:
  """A Keras callback that 'kills' the run after the checkpoint of ``epoch``."""

  def __new__(cls, epoch):
    import keras

    class Kill(keras.callbacks.Callback):
      def on_epoch_end(self, e, logs=None):
        if e == epoch:
          raise _Killed(f"killed after epoch {e}")
    return Kill()


@pytest.mark.parametrize("every_seconds,resumed_from", [(0.0, 2), (3600.0, None)])
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, every_seconds,
                                                             resumed_from):
  # every_seconds=0 writes a checkpoint after every epoch: the rerun resumes after the
  # kill's epoch. 3600 s writes only after the last epoch: the rerun starts over. Both
  # end exactly where an uninterrupted run ends.
  config = _small_config(**{"dnn.num_hidden_layers": 1, "dnn.init": "random",
                            "finetune.epochs": 6, "finetune.early_stopping_patience": 0,
                            "finetune.checkpoint_every_seconds": every_seconds})
  data_a, model_a = _write_synthetic(tmp_path / "a", n=(120, 40, 40))
  data_b, model_b = _write_synthetic(tmp_path / "b", n=(120, 40, 40))
  tagger_lib.train_tagger(data_a, model_a, config)
  with pytest.raises(_Killed):
    tagger_lib.train_tagger(data_b, model_b, config, callbacks=[_KillAfterEpoch(2)])
  assert not os.path.exists(os.path.join(model_b, layout.TAGGER_FILE))
  summary = tagger_lib.train_tagger(data_b, model_b, config)
  assert summary["resumed_from"] == resumed_from and summary["epochs_run"] == 6
  weights_a = models.load_tagger(model_a).get_weights()
  weights_b = models.load_tagger(model_b).get_weights()
  for wa, wb in zip(weights_a, weights_b):
    np.testing.assert_array_equal(wa, wb)
  history_a = json.loads(open(os.path.join(model_a, "finetune", "history.json")).read())
  history_b = json.loads(open(os.path.join(model_b, "finetune", "history.json")).read())
  assert history_a == history_b
  # The last checkpoint (not only the best weights) is identical too.
  state_a = np.load(os.path.join(model_a, "finetune", "checkpoint.npz"))
  state_b = np.load(os.path.join(model_b, "finetune", "checkpoint.npz"))
  for key in state_a.files:
    if key != "meta":
      np.testing.assert_array_equal(state_a[key], state_b[key], err_msg=key)
  # A changed configuration does not resume from the old checkpoint.
  other = config_lib.override(config, {"finetune.batch_size": 16})
  assert tagger_lib.train_tagger(data_b, model_b, other)["resumed_from"] is None


def test_mixed_precision_run_resumes_where_the_gpu_is_gone(tmp_path, monkeypatch):
  """The checkpoint fingerprint records whether mixed precision ran, not the request.

  A run with --mixed_precision where a GPU is visible (here: a stand-in device list)
  checkpoints a LossScaleOptimizer's extra variables; resumed where no GPU is visible,
  the same flag means float32, so the checkpoint must not be loaded into it.
  """
  import tensorflow as tf
  config = _small_config(**{"dnn.num_hidden_layers": 1, "dnn.init": "random",
                            "finetune.epochs": 3, "finetune.mixed_precision": True})
  data_dir, model_dir = _write_synthetic(tmp_path, n=(64, 32, 32))
  real = tf.config.list_logical_devices

  def with_a_gpu(kind=None):
    if kind == "GPU":
      return [tf.config.LogicalDevice("/device:GPU:0", "GPU")]
    return real(kind)

  monkeypatch.setattr(tf.config, "list_logical_devices", with_a_gpu)
  with pytest.raises(_Killed):
    tagger_lib.train_tagger(data_dir, model_dir, config, callbacks=[_KillAfterEpoch(0)])
  monkeypatch.setattr(tf.config, "list_logical_devices", real)
  summary = tagger_lib.train_tagger(data_dir, model_dir, config)  # no GPU any more
  assert summary["resumed_from"] is None and summary["epochs_run"] == 3


@pytest.mark.slow
def test_command_line_entry_points(tmp_path):
  data_dir, model_dir = _write_synthetic(tmp_path, n=(120, 40, 40))
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
  command = [sys.executable, "-m", "trainer.train", f"--data_dir={data_dir}",
             f"--model_dir={model_dir}", "--stages=finetune", "--head=logreg",
             "--set=finetune.logreg_c_values=[0.1]", "--seed=3"]
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  stored = json.loads(open(os.path.join(model_dir, "config.json")).read())
  assert stored["dnn"]["head"] == "logreg" and stored["finetune"]["seed"] == 3
  assert stored["finetune"]["logreg_c_values"] == [0.1]
  # A different config on the same model_dir is refused without --overwrite.
  refused = subprocess.run(command[:-1] + ["--seed=4"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
  assert refused.returncode != 0 and "--overwrite" in refused.stderr
  evaluated = subprocess.run(
      [sys.executable, "-m", "trainer.evaluate", f"--data_dir={data_dir}",
       f"--model_dir={model_dir}", "--split=valid"], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=300)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert "AUC-T" in evaluated.stdout and "BoF + logistic regression" in evaluated.stdout
  report = json.loads(open(os.path.join(model_dir, "metrics_valid.json")).read())
  assert report["split"] == "valid" and report["num_clips"] == 40
  assert not os.path.exists(os.path.join(model_dir, "metrics.json"))  # test split only


_MIRRORED_SCRIPT = r"""
import os, sys, tempfile
import tensorflow as tf
import numpy as np
from deepbof_tf import models
from deepbof_tf.config import DNNConfig, FinetuneConfig
from deepbof_tf.training import finetuning
rng = np.random.default_rng(0)
x = rng.random((200, 16)).astype(np.float32)
y = (x[:, :3] > 0.5).astype(np.float32)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
def run(work_dir, epochs):
  with strategy.scope():
    model = models.build_song_dnn(3, DNNConfig(num_hidden_layers=1, hidden_units=8),
                                  input_dim=16, seed=0)
    result = finetuning.finetune(model, x, y, x, y, FinetuneConfig(
        epochs=epochs, batch_size=32, tensorboard=False), work_dir)
  return model.get_weights(), result
with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
  weights_a, _ = run(a, 4)
  run(b, 2)                     # stops after 2 epochs ...
  weights_b, result = run(b, 4)  # ... and a longer run continues from there
  assert result["resumed_from"] == 1, result
  assert all(np.array_equal(p, q) for p, q in zip(weights_a, weights_b))
print("OK")
"""


_MIRRORED_3_SCRIPT = r"""
import pathlib, sys
import tensorflow as tf
import test_trainer as t
from trainer import train
data_dir, model_dir = t._write_synthetic(pathlib.Path(sys.argv[1]), n=(61, 20, 20))
config = t._small_config(**{"dnn.num_hidden_layers": 1, "dnn.init": "random",
                            "finetune.epochs": 2, "finetune.batch_size": 32,
                            "finetune.tensorboard": False})
summary = train.run_stages(data_dir, model_dir, config, ["finetune", "evaluate"],
                           strategy="mirrored")
print("OK", summary["finetune"]["epochs_run"],
      (pathlib.Path(model_dir) / "metrics.json").exists())
"""


_REPLICAS_SCRIPT = r"""
import sys, tempfile
import tensorflow as tf
import numpy as np
from deepbof_tf import models
from deepbof_tf.config import DNNConfig, FinetuneConfig
from deepbof_tf.training import finetuning
replicas, out = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
x = rng.random((175, 16)).astype(np.float32)
y = (x[:, :3] > 0.5).astype(np.float32)
strategy = (tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
            if replicas > 1 else tf.distribute.get_strategy())
with strategy.scope(), tempfile.TemporaryDirectory() as work_dir:
  model = models.build_song_dnn(3, DNNConfig(num_hidden_layers=2, hidden_units=8,
                                             dropout=0.5), input_dim=16, seed=0)
  finetuning.finetune(model, x, y, x, y, FinetuneConfig(epochs=3, batch_size=30,
                                                        tensorboard=False), work_dir)
  np.savez(out, *model.get_weights())
"""


@pytest.mark.slow
def test_mirrored_fine_tuning_with_dropout_reproduces_one_device(tmp_path):
  """Each replica applies its rows of the one-device dropout mask (ReplicaDropout), and
  the loss is averaged over the global batch (GlobalBatchLoss).

  175 clips in batches of 30: the last batch of 25 splits unevenly over 2 (12 + 13) and
  3 replicas (8 + 8 + 9). Keras' own average weighted each replica's mean equally,
  1e-4 (2 replicas) and 4e-4 (3) off the one-device weights after 3 epochs; per clip it
  is the one-device update up to the order of the gradient sums (measured 3e-8).
  """
  weights = {}
  for replicas in (1, 2, 3):
    path = tmp_path / f"w{replicas}.npz"
    multi_device.run_on_logical_cpus(_REPLICAS_SCRIPT, replicas, replicas, path)
    stored = np.load(path)
    weights[replicas] = [stored[k] for k in stored.files]
  for replicas in (2, 3):
    for ours, one in zip(weights[replicas], weights[1]):
      np.testing.assert_allclose(ours, one, rtol=0, atol=1e-6)


def test_replica_batch_size_always_divides():
  from deepbof_tf.training import finetuning
  assert finetuning.replica_batch_size(128, 1, 1000) == 128
  assert finetuning.replica_batch_size(128, 2, 1000) == 128
  assert finetuning.replica_batch_size(128, 3, 1000) == 129  # 43 per replica
  assert finetuning.replica_batch_size(128, 5, 1000) == 130
  assert finetuning.replica_batch_size(128, 7, 1000) == 126
  assert finetuning.replica_batch_size(128, 2, 5) == 4       # a tiny, odd training set
  assert finetuning.replica_batch_size(2, 3, 100) == 3
  for replicas in range(1, 9):
    for batch in (1, 7, 32, 100, 128, 255):
      size = finetuning.replica_batch_size(batch, replicas, 61)
      assert size % replicas == 0 and size >= replicas


@pytest.mark.slow
def test_finetune_on_three_logical_devices_with_an_uneven_batch(tmp_path):
  """batch 32 on 3 replicas (and 61 examples) crashed Keras' first step before."""
  result = multi_device.run_on_logical_cpus(_MIRRORED_3_SCRIPT, 3, tmp_path, check=False)
  assert result.returncode == 0 and "OK 2 True" in result.stdout, result.stderr[-3000:]
  assert "does not split over 3 replicas; using 33" in result.stderr


@pytest.mark.slow
def test_finetune_under_mirrored_strategy_with_two_replicas():
  """Two logical CPUs stand in for two GPUs: checkpoint/resume works on mirrored variables."""
  result = multi_device.run_on_logical_cpus(_MIRRORED_SCRIPT, 2, check=False)
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
