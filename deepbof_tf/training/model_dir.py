"""Layout of a model directory (the ``--model_dir`` of ``deepbof-train``) for the song-level stages.

::

  model_dir/
    config.json                 the operative TrainConfig (written by deepbof-train)
    frontend.json               front end + channel mode of the training data (for export)
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

import posixpath
from typing import Tuple

import numpy as np
import tensorflow as tf

from deepbof_tf import config
from deepbof_tf.data import bof_io
from deepbof_tf.layers.standardize import standardization_statistics

BOF_DIR = bof_io.BOF_DIR
PRETRAIN_DIR = "pretrain"
FINETUNE_DIR = config.FINETUNE_DIR
LOGREG_DIR = "logreg"
STANDARDIZATION_FILE = "standardization.npz"
CONFIG_FILE = "config.json"
# The front end and channel mode of the training data (from its metadata.json), so that
# deepbof-export rebuilds the same front end without the data directory.
FRONTEND_FILE = "frontend.json"


def bof_path(model_dir: str, split: str) -> str:
  return bof_io.bof_path(model_dir, split)


def rbm_path(model_dir: str, layer_index: int) -> str:
  """``pretrain/rbm_{layer_index+1}.npz``."""
  return posixpath.join(model_dir, PRETRAIN_DIR, f"rbm_{layer_index + 1}.npz")


write_npz = bof_io.write_npz
read_npz = bof_io.read_npz


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
  data = bof_io.read_bof(path)
  x, y = data["bag_of_features"], data["labels"]
  if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
    raise ValueError(f"{path}: bag_of_features {x.shape} and labels {y.shape} do not "
                     "describe the same clips")
  if x.shape[0] == 0:
    raise ValueError(f"{path}: split {split!r} has no clips")
  return data["clip_id"], x, y


def standardization(model_dir: str, x_train: np.ndarray, mode: str = "standardize"
                    ) -> Tuple[np.ndarray, np.ndarray]:
  """The training split's (mean, std) for ``mode``; also written to ``standardization.npz``.

  Recomputed from ``x_train`` every time (cheap and deterministic), so a re-encoded
  bag-of-features can never meet stale statistics.

  Args:
    model_dir: the model directory.
    x_train: the training bag-of-features.
    mode: ``DNNConfig.input_normalization`` ("none", "clip_max" or "standardize").
  """
  mean, std = standardization_statistics(x_train, mode)
  write_npz(posixpath.join(model_dir, STANDARDIZATION_FILE), mean=mean, std=std)
  return mean, std
