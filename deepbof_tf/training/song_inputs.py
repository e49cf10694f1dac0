"""The inputs of the song-level stages, read from a model directory.

A split's bag-of-features (``bof/{split}.npz``, written by the encode stage) and the
input-normalization statistics of the training split (``standardization.npz``); the
layout is ``deepbof_tf.model_dir``.
"""

from __future__ import annotations

import posixpath
from typing import Tuple

import numpy as np
import tensorflow as tf

from deepbof_tf import model_dir as layout
from deepbof_tf.data import bof_io
from deepbof_tf.layers.standardize import standardization_statistics


def load_bof(model_dir: str, split: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(clip_id, bag_of_features [N, D] float32, labels [N, T] float32) of one split.

  Args:
    model_dir: the model directory.
    split: "train", "valid" or "test".
  """
  path = layout.bof_path(model_dir, split)
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
  bof_io.write_npz(posixpath.join(model_dir, layout.STANDARDIZATION_FILE), mean=mean,
                   std=std)
  return mean, std
