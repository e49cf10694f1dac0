"""Layout of a model directory (the ``--model_dir`` of ``deepbof-train``), and stage fingerprints.

The one place that names the files and directories of a model directory; the stages
that write them (``deepbof_tf.training``), the model loaders (``deepbof_tf.models``)
and the exporter (``serving``) all take the names from here. Imports nothing heavy
(no TensorFlow), so light tools can read a layout too.

::

  model_dir/
    config.json                 the operative TrainConfig (written by deepbof-train)
    frontend.json               front end + channel mode of the training data (for export)
    local/                      the local features (the learn-local-features stage):
      pca.npz                     the fitted PCA (reused by a resumed run)
      checkpoints/                per-epoch sparse-RBM training state
        fingerprint.json          the configuration and inputs the checkpoints belong to
      training_log.csv, .json     per-epoch metrics
      tensorboard/                TensorBoard scalars
      local_features.npz, .json   the encoder's parameters (the JSON is written last)
      filters.png, activation_histogram.png, training_curves.png
    bof/{train,valid,test}.npz  bag-of-features per clip (the encode stage; docs/data.md)
    bof/{train,valid,test}.json what each split was encoded from (its fingerprint)
    standardization.npz         mean/std of the training bag-of-features (for reference)
    pretrain/rbm_{1,2,3}.npz    pretrained RBMs (kernel, hidden_bias, visible_bias)
    finetune/checkpoint.npz     resumable fine-tuning state
    finetune/history.json       loss and validation AUC-tag per epoch
    finetune/tensorboard/       TensorBoard logs
    tags.json                   ordered tag names
    tagger.keras                the final tagger (bag_of_features → probabilities)
    logreg/tagger.keras         the logistic-regression baseline on the same features
    logreg/fingerprint.txt      the inputs the baseline was fitted on
    metrics.json, metrics_{split}.json, per_tag_{split}.csv, per_tag_auc_{split}.png

Every resumable step records a fingerprint of its configuration and inputs
(:func:`fingerprint`) and is reused only when the fingerprint is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Any

import numpy as np

CONFIG_FILE = "config.json"
# The front end and channel mode of the training data (from its metadata.json), so that
# deepbof-export rebuilds the same front end without the data directory.
FRONTEND_FILE = "frontend.json"
TENSORBOARD_DIR = "tensorboard"

# --- Local features (learn-local-features, encode) --------------------------------------
LOCAL_DIR = "local"
LOCAL_FEATURES_FILE = "local_features.npz"
LOCAL_FEATURES_INFO = "local_features.json"
PCA_FILE = "pca.npz"
CHECKPOINT_DIR = "checkpoints"
FINGERPRINT_FILE = "fingerprint.json"
ACTIVATION_HISTOGRAM_PLOT = "activation_histogram.png"
FILTERS_PLOT = "filters.png"
TRAINING_CURVES_PLOT = "training_curves.png"
BOF_DIR = "bof"

# --- Song-level stages (pretrain, finetune, evaluate) -----------------------------------
PRETRAIN_DIR = "pretrain"
FINETUNE_DIR = "finetune"
FINETUNE_CHECKPOINT_FILE = "checkpoint.npz"
FINETUNE_HISTORY_FILE = "history.json"
LOGREG_DIR = "logreg"
LOGREG_FINGERPRINT_FILE = "fingerprint.txt"
STANDARDIZATION_FILE = "standardization.npz"
TAGS_FILE = "tags.json"
TAGGER_FILE = "tagger.keras"
METRICS_FILE = "metrics.json"


def local_dir(model_dir: str) -> str:
  """``model_dir/local``: PCA, sparse RBM, training logs and plots of the local features."""
  return posixpath.join(model_dir, LOCAL_DIR)


def bof_path(model_dir: str, split: str) -> str:
  """``model_dir/bof/{split}.npz``.

  Args:
    model_dir: the ``--model_dir`` of ``deepbof-train``.
    split: "train", "valid" or "test".
  """
  return posixpath.join(model_dir, BOF_DIR, f"{split}.npz")


def rbm_path(model_dir: str, layer_index: int) -> str:
  """``pretrain/rbm_{layer_index+1}.npz``."""
  return posixpath.join(model_dir, PRETRAIN_DIR, f"rbm_{layer_index + 1}.npz")


def metrics_path(model_dir: str, split: str) -> str:
  """``model_dir/metrics_{split}.json``."""
  return posixpath.join(model_dir, f"metrics_{split}.json")


def per_tag_csv_path(model_dir: str, split: str) -> str:
  """``model_dir/per_tag_{split}.csv``."""
  return posixpath.join(model_dir, f"per_tag_{split}.csv")


def per_tag_plot_path(model_dir: str, split: str) -> str:
  """``model_dir/per_tag_auc_{split}.png``."""
  return posixpath.join(model_dir, f"per_tag_auc_{split}.png")


def fingerprint(payload: Any, *arrays: np.ndarray) -> str:
  """The hex SHA-256 of a stage's configuration and inputs.

  The digest of ``json.dumps(payload, sort_keys=True)`` (UTF-8), followed by the bytes
  of every array as contiguous float32, in order. The recipe is part of every model
  directory's records: changing it would make every finished step look out of date.

  Args:
    payload: the JSON-serialisable configuration (and file signatures) of the step.
    *arrays: numeric inputs of the step (cast to float32 before hashing).
  """
  digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8"))
  for array in arrays:
    digest.update(np.ascontiguousarray(array, np.float32).tobytes())
  return digest.hexdigest()
