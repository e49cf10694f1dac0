"""Stages learn-local-features and encode on a tiny synthetic dataset in tmp_path."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from deepbof_tf import config as config_lib
from deepbof_tf import model_dir as layout
from deepbof_tf import models
from deepbof_tf.data import bof_io
from deepbof_tf.data import schema
from deepbof_tf.io_utils import write_json
from deepbof_tf.training import local_features
from deepbof_tf.training import sparse_rbm_trainer as sparse_rbm_lib

N_MELS, BLOCK_FRAMES = 128, 8
TAGS = ["guitar", "piano", "drums"]


def _log_mel(rng, frames):
  """Smooth, non-negative mel-like frames: a few drifting harmonic ridges + noise."""
  mel = np.arange(N_MELS)[None, :]
  t = np.arange(frames)[:, None]
  out = 0.1 * rng.random((frames, N_MELS))
  for _ in range(3):
    centre = rng.uniform(10, 100) + rng.uniform(-0.2, 0.2) * t
    out += rng.uniform(0.5, 1.5) * np.exp(-0.5 * ((mel - centre) / rng.uniform(2, 6)) ** 2)
  onsets = rng.random(frames) < 0.1
  out += 0.8 * onsets[:, None] * rng.random((frames, N_MELS))
  return np.log10(1 + 10 * out).astype(np.float32)


def _write(path, examples):
  options = tf.io.TFRecordOptions(compression_type="GZIP")
  with tf.io.TFRecordWriter(path, options) as writer:
    for example in examples:
      writer.write(example.SerializeToString())


def write_tiny_dataset(root, counts=(("train", 12), ("valid", 3), ("test", 4)), seed=5):
  """A preprocessed dataset in ``root``: clips of every split, train blocks, metadata.

  Returns (root, {clip_id: (log_mel, labels)}, number of blocks). The first test clip
  is shorter than one block (skipped by encode).
  """
  rng = np.random.default_rng(seed)
  root = str(root)
  os.makedirs(os.path.join(root, schema.CLIPS_DIR))
  os.makedirs(os.path.join(root, schema.BLOCKS_DIR))
  clips = {}
  blocks = []
  for split, count in counts:
    examples = []
    for i in range(count):
      frames = int(rng.integers(60, 200))
      if split == "test" and i == 0:
        frames = BLOCK_FRAMES - 1  # too short for one block: skipped and counted
      log_mel = _log_mel(rng, frames)
      labels = (rng.random(len(TAGS)) < 0.5).astype(np.float32)
      clip_id = f"{split}-{i:03d}"
      clips[clip_id] = (log_mel, labels)
      examples.append(schema.make_clip_example(clip_id, f"{clip_id}.wav", log_mel,
                                               np.zeros(frames), labels))
      if split == "train":
        for start in range(0, frames - BLOCK_FRAMES + 1, 2):
          blocks.append(schema.make_block_example(
              clip_id, start, log_mel[start:start + BLOCK_FRAMES]))
    _write(os.path.join(root, schema.CLIPS_DIR, f"{split}-00000-of-00001.tfrecord.gz"),
           examples)
  _write(os.path.join(root, schema.BLOCKS_DIR, "train-00000-of-00001.tfrecord.gz"), blocks)
  write_json(os.path.join(root, schema.METADATA_FILE),
             {"tags": TAGS, "block_frames": BLOCK_FRAMES, "n_mels": N_MELS})
  return root, clips, len(blocks)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return write_tiny_dataset(tmp_path_factory.mktemp("data"))


def _config(epochs=3, **rbm):
  return config_lib.override(config_lib.TrainConfig(), {
      "local.rbm.num_hidden": 48, "local.rbm.epochs": epochs,
      "local.num_plot_filters": 12, "local.pooling.pool_frames": 43,
      **{f"local.rbm.{k}": v for k, v in rbm.items()}})


def test_learn_and_encode(dataset, tmp_path):
  data_dir, clips, n_blocks = dataset
  model_dir = str(tmp_path)
  config = _config()
  summary = local_features.learn_local_features(data_dir, model_dir, config)
  local = layout.local_dir(model_dir)
  assert summary["num_blocks"] == n_blocks and summary["epochs"] == 3
  assert 1 <= summary["pca_dim"] < N_MELS * BLOCK_FRAMES
  for name in ("local_features.npz", "local_features.json", "pca.npz", "training_log.csv",
               "training_log.json", "filters.png", "activation_histogram.png",
               "training_curves.png"):
    assert os.path.getsize(os.path.join(local, name)) > 0, name
  assert tf.io.gfile.glob(os.path.join(local, "tensorboard", "events.*"))
  assert tf.io.gfile.glob(os.path.join(local, "checkpoints", "ckpt-3*"))
  with open(os.path.join(local, "training_log.json")) as f:
    assert [row["epoch"] for row in json.load(f)] == [0, 1, 2]
  # A finished stage with the same config and blocks is not recomputed.
  assert local_features.learn_local_features(data_dir, model_dir, config)["skipped"]

  result = local_features.encode(data_dir, model_dir, config)
  encoder = models.load_bof_encoder(model_dir)
  for split, expected_count in (("train", 12), ("valid", 3), ("test", 3)):
    data = bof_io.read_bof(layout.bof_path(model_dir, split))
    assert data["bag_of_features"].shape == (expected_count, 48)
    assert data["bag_of_features"].dtype == np.float32
    assert data["labels"].shape == (expected_count, len(TAGS))
    assert result["splits"][split]["num_clips"] == expected_count
    for clip_id, bag, labels in zip(data["clip_id"], data["bag_of_features"],
                                    data["labels"]):
      log_mel, true_labels = clips[clip_id]
      np.testing.assert_array_equal(labels, true_labels)
      np.testing.assert_allclose(bag, encoder(log_mel[None]).numpy()[0], atol=1e-6)
  assert result["splits"]["test"]["skipped_short_clips"] == ["test-000"]
  again = local_features.encode(data_dir, model_dir, config)
  assert all(s.get("skipped") for s in again["splits"].values())
  # Another pooling window is another bag-of-features: recomputed.
  other = config_lib.override(config, {"local.pooling.pool_frames": 11})
  changed = local_features.encode(data_dir, model_dir, other)
  assert not any(s.get("skipped") for s in changed["splits"].values())


def test_killed_learn_run_resumes_to_the_same_weights(dataset, tmp_path, monkeypatch):
  data_dir, _, _ = dataset
  config = _config(epochs=4)
  clean_dir = os.path.join(tmp_path, "clean")
  local_features.learn_local_features(data_dir, clean_dir, config)

  killed_dir = os.path.join(tmp_path, "killed")
  original = sparse_rbm_lib.SparseRBMTrainer.train_epoch

  def dies_in_epoch_two(self, batches, epoch):
    if epoch == 2:
      raise KeyboardInterrupt("killed")
    return original(self, batches, epoch)

  monkeypatch.setattr(sparse_rbm_lib.SparseRBMTrainer, "train_epoch", dies_in_epoch_two)
  with pytest.raises(KeyboardInterrupt):
    local_features.learn_local_features(data_dir, killed_dir, config)
  assert not os.path.exists(os.path.join(layout.local_dir(killed_dir),
                                         layout.LOCAL_FEATURES_INFO))
  monkeypatch.setattr(sparse_rbm_lib.SparseRBMTrainer, "train_epoch", original)
  calls = []
  monkeypatch.setattr(sparse_rbm_lib.SparseRBMTrainer, "train_epoch",
                      lambda self, b, e: calls.append(e) or original(self, b, e))
  local_features.learn_local_features(data_dir, killed_dir, config)
  assert calls == [2, 3]  # resumed after the last finished epoch
  clean = bof_io.read_npz(os.path.join(layout.local_dir(clean_dir), "local_features.npz"))
  resumed = bof_io.read_npz(os.path.join(layout.local_dir(killed_dir),
                                         "local_features.npz"))
  for key in clean:
    np.testing.assert_array_equal(resumed[key], clean[key], err_msg=key)

  # A changed RBM configuration discards the old checkpoints and retrains.
  calls.clear()
  local_features.learn_local_features(data_dir, killed_dir, _config(epochs=2))
  assert calls == [0, 1]
