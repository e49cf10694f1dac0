"""Per-split bag-of-features files: ``model_dir/bof/{split}.npz`` (the encode stage).

The path of a split's file is ``deepbof_tf.model_dir.bof_path``.

Keys: ``clip_id`` [N] unicode strings, ``bag_of_features`` [N, D] float32 (D = 1024
hidden units of the sparse RBM), ``labels`` [N, n_tags] float32 (multi-hot over the
dataset's ``metadata.json`` tags, in the clip TFRecords' order). Plain NumPy ``.npz``
without pickles, so ``np.load(path)`` (or SciPy/MATLAB users) read it directly; files
are written through ``tf.io.gfile`` (local or GCS) and published by rename.
"""

from __future__ import annotations

import io
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

from deepbof_tf.io_utils import write_atomic

KEYS = ("clip_id", "bag_of_features", "labels")


def write_bof(path: str, clip_id: Sequence[str], bag_of_features: np.ndarray,
              labels: np.ndarray) -> None:
  """Writes one split's bag-of-features atomically (temporary file, then rename).

  Args:
    path: destination ``.npz`` (local or any ``tf.io.gfile`` filesystem).
    clip_id: [N] clip ids (str or bytes).
    bag_of_features: [N, D] bag-of-features.
    labels: [N, n_tags] multi-hot labels.
  """
  ids = np.array([c.decode("utf-8") if isinstance(c, bytes) else str(c)
                  for c in clip_id], dtype=str)
  bag_of_features = np.asarray(bag_of_features, np.float32)
  labels = np.asarray(labels, np.float32)
  if bag_of_features.ndim != 2 or labels.ndim != 2:
    raise ValueError(f"{path}: bag_of_features {bag_of_features.shape} and labels "
                     f"{labels.shape} must both be 2-D")
  if not ids.shape[0] == bag_of_features.shape[0] == labels.shape[0]:
    raise ValueError(f"{path}: {ids.shape[0]} clip ids, {bag_of_features.shape[0]} "
                     f"bag-of-features rows and {labels.shape[0]} label rows differ")
  if not np.all(np.isfinite(bag_of_features)):
    raise ValueError(f"{path}: bag_of_features has non-finite values")
  write_npz(path, clip_id=ids, bag_of_features=bag_of_features, labels=labels)


def read_bof(path: str) -> Dict[str, np.ndarray]:
  """Reads a file of ``write_bof`` into ``{clip_id, bag_of_features, labels}``.

  Args:
    path: the ``.npz`` file.
  """
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path}: no bag-of-features file; run "
                            "deepbof-train --stages=encode first")
  with tf.io.gfile.GFile(path, "rb") as f:
    with np.load(io.BytesIO(f.read()), allow_pickle=False) as data:
      missing = [k for k in KEYS if k not in data.files]
      if missing:
        raise ValueError(f"{path}: missing key(s) {missing} (has {sorted(data.files)})")
      return {
          "clip_id": np.asarray(data["clip_id"]).astype(str),
          "bag_of_features": np.asarray(data["bag_of_features"], np.float32),
          "labels": np.asarray(data["labels"], np.float32),
      }


def write_npz(path: str, **arrays: np.ndarray) -> None:
  """Writes arrays as an ``.npz`` through ``tf.io.gfile``, published by rename.

  Args:
    path: destination file (local or any ``tf.io.gfile`` filesystem).
    **arrays: the named arrays (no object arrays: files are read without pickles).
  """
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_atomic(path, buffer.getvalue())


def read_npz(path: str) -> Dict[str, np.ndarray]:
  """All arrays of an ``.npz`` file (read without pickles).

  Args:
    path: the file (local or any ``tf.io.gfile`` filesystem).
  """
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path}: not found")
  with tf.io.gfile.GFile(path, "rb") as f:
    with np.load(io.BytesIO(f.read()), allow_pickle=False) as data:
      return {key: data[key] for key in data.files}
