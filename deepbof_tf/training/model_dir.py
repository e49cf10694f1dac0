"""Layout of a model directory (the ``--model_dir`` of ``deepbof-train``) for the song-level stages.

::

  model_dir/
    config.json                 the operative TrainConfig (written by deepbof-train)
    tags.json                   ordered tag names
    bof/{train,valid,test}.npz  bag-of-features per clip (the encode stage)
    standardization.npz         mean/std of the training bag-of-features (for reference)
    pretrain/rbm_{1,2,3}.npz    pretrained RBMs (kernel, hidden_bias, visible_bias)
    finetune/checkpoint.npz     resumable fine-tuning state (every epoch)
    finetune/history.json       loss and validation AUC-tag per epoch
    finetune/tensorboard/       TensorBoard logs
    tagger.keras                the final tagger (bag_of_features → probabilities)
    logreg/tagger.keras         the logistic-regression baseline on the same features
    metrics.json, metrics_{split}.json, per_tag_{split}.csv, per_tag_auc_{split}.png
"""

from __future__ import annotations

import io
import posixpath
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from deepbof_tf.layers.standardize import standardization_statistics

BOF_DIR = "bof"
PRETRAIN_DIR = "pretrain"
FINETUNE_DIR = "finetune"
LOGREG_DIR = "logreg"
STANDARDIZATION_FILE = "standardization.npz"
CONFIG_FILE = "config.json"


def bof_path(model_dir: str, split: str) -> str:
  return posixpath.join(model_dir, BOF_DIR, f"{split}.npz")


def rbm_path(model_dir: str, layer_index: int) -> str:
  """``pretrain/rbm_{layer_index+1}.npz``."""
  return posixpath.join(model_dir, PRETRAIN_DIR, f"rbm_{layer_index + 1}.npz")


def _read_npz(path: str) -> Dict[str, np.ndarray]:
  with tf.io.gfile.GFile(path, "rb") as f:
    data = np.load(io.BytesIO(f.read()), allow_pickle=False)
    return {key: data[key] for key in data.files}


def write_npz(path: str, **arrays: np.ndarray) -> None:
  """Writes an ``.npz`` through ``tf.io.gfile`` (local or GCS), atomically."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  tf.io.gfile.makedirs(posixpath.dirname(path))
  temp = path + ".tmp"
  with tf.io.gfile.GFile(temp, "wb") as f:
    f.write(buffer.getvalue())
  tf.io.gfile.rename(temp, path, overwrite=True)


def read_npz(path: str) -> Dict[str, np.ndarray]:
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path}: not found")
  return _read_npz(path)


def load_bof(model_dir: str, split: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(clip_id, bag_of_features [N, D] float32, labels [N, T] float32) of one split.

  Args:
    model_dir: the model directory.
    split: "train", "valid" or "test".
  """
  path = bof_path(model_dir, split)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path}: no bag-of-features for split {split!r}; run "
                            "deepbof-train --stages=encode first")
  try:  # the encode stage's reader, when present
    from deepbof_tf.data.bof_io import read_bof
    data = read_bof(path)
  except ImportError:
    data = _read_npz(path)
  for key in ("clip_id", "bag_of_features", "labels"):
    if key not in data:
      raise ValueError(f"{path}: missing key {key!r} (has {sorted(data)})")
  x = np.asarray(data["bag_of_features"], np.float32)
  y = np.asarray(data["labels"], np.float32)
  if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
    raise ValueError(f"{path}: bag_of_features {x.shape} and labels {y.shape} do not "
                     "describe the same clips")
  if x.shape[0] == 0:
    raise ValueError(f"{path}: split {split!r} has no clips")
  return np.asarray(data["clip_id"]), x, y


def standardization(model_dir: str, x_train: np.ndarray, mode: str = "standardize"
                    ) -> Tuple[np.ndarray, np.ndarray]:
  """The training split's (mean, std) for ``mode``; also written to ``standardization.npz``.

  Recomputed from ``x_train`` every time (cheap and deterministic), so a re-encoded
  bag-of-features can never meet stale statistics.

  Args:
    model_dir: the model directory.
    x_train: the training bag-of-features.
    mode: "standardize", "max" or "none" (``DNNConfig.input_normalization``).
  """
  mean, std = standardization_statistics(x_train, mode)
  write_npz(posixpath.join(model_dir, STANDARDIZATION_FILE), mean=mean, std=std)
  return mean, std
