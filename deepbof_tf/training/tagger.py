"""Stage ``finetune``: supervised training of the song-level tagger of a model directory.

``head=dnn``: builds the DNN (input normalization, none by default → hidden ReLU layers
with dropout → sigmoid), initialises it from ``pretrain/rbm_*.npz``
(``init=pretrained``) or randomly, fine-tunes it with AdaDelta and keeps the best
validation epoch (``deepbof_tf.training.finetuning``). ``head=logreg``: fits per-tag
logistic regression on the standardized bag-of-features. Both write
``model_dir/tagger.keras`` and ``model_dir/tags.json``.

The ``tf.distribute`` strategy is ``deepbof-train --strategy``
(``distribute.distribution_strategy``: by default ``MirroredStrategy`` when more than one
GPU is visible, the default strategy otherwise; docs/multi-device.md). Fine-tuning
writes a checkpoint every epoch and a rerun on the same model_dir continues from it.
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile
from typing import Any, Dict, List, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from deepbof_tf import config as config_lib
from deepbof_tf import model_dir as layout
from deepbof_tf import models
from deepbof_tf.data import bof_io
from deepbof_tf.data import schema
from deepbof_tf.layers.standardize import standardization_statistics
from deepbof_tf.training import distribute
from deepbof_tf.training import finetuning
from deepbof_tf.training import logreg
from deepbof_tf.training import song_inputs

RBM_KEYS = ("kernel", "hidden_bias", "visible_bias")


def save_keras_model(model: keras.Model, path: str) -> None:
  """Saves a ``.keras`` file locally first, then copies it into place (local or GCS)."""
  with tempfile.TemporaryDirectory() as temp_dir:
    local = os.path.join(temp_dir, posixpath.basename(path))
    model.save(local)
    tf.io.gfile.makedirs(posixpath.dirname(path))
    tf.io.gfile.copy(local, path, overwrite=True)


def tag_names(data_dir: str, model_dir: str, num_tags: int) -> Sequence[str]:
  """Tag names from the dataset's metadata.json, written to ``model_dir/tags.json``."""
  tags = schema.tags_of(schema.read_metadata(data_dir))
  if len(tags) != num_tags:
    raise ValueError(f"{data_dir}/metadata.json lists {len(tags)} tags but the "
                     f"bag-of-features labels have {num_tags} columns; re-run encode")
  models.save_tag_names(model_dir, tags)
  return tags


def finetune_fingerprint(config: config_lib.TrainConfig, *arrays: np.ndarray,
                         mixed_precision_used: bool = False) -> str:
  """The fingerprint of a fine-tuning run: what its checkpoint may be resumed under.

  Epochs, updates and patience are left out on purpose: raising --finetune_epochs on a
  finished run continues it instead of starting over (the epoch order does not depend
  on the total). TensorBoard is cosmetic. Mixed precision enters as what ran, not as
  what was asked: without a GPU the request is ignored, and only a run that really
  used it has a LossScaleOptimizer's extra variables in its checkpoint.

  Args:
    config: the operative configuration.
    *arrays: the training and validation data, then the pretrained RBMs' weights.
    mixed_precision_used: whether the run computes in mixed float16.
  """
  finetune = config_lib.to_dict(config.finetune)
  for key in ("epochs", "updates", "early_stopping_patience", "tensorboard",
              "checkpoint_every_seconds"):
    finetune.pop(key)
  finetune["mixed_precision"] = bool(mixed_precision_used)
  payload = {"dnn": config_lib.to_dict(config.dnn), "finetune": finetune}
  return layout.fingerprint(payload, *arrays)


def load_rbms(model_dir: str, num_layers: int) -> List[Mapping[str, np.ndarray]]:
  """The weights of the pretrained RBMs ``pretrain/rbm_{1..num_layers}.npz``, bottom first.

  Args:
    model_dir: the model directory.
    num_layers: how many layers to read.
  """
  weights = []
  for i in range(num_layers):
    path = layout.rbm_path(model_dir, i)
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f"{path}: missing; run deepbof-train --stages=pretrain "
                              "first, or use --init=random")
    stored = bof_io.read_npz(path)
    weights.append({key: stored[key] for key in RBM_KEYS})
  return weights


def fit_logreg_tagger(config: config_lib.TrainConfig, x_train, y_train,
                      x_valid, y_valid) -> Dict[str, Any]:
  """Fits the logistic-regression head and returns {"model", "c", "val_auc_tag"}."""
  # Logistic regression always sees standardized features (its L2 penalty assumes
  # comparable scales), whatever the DNN's input normalization.
  mean, std = standardization_statistics(x_train, "standardize")
  fitted = logreg.fit_logreg_head((x_train - mean) / std, y_train, (x_valid - mean) / std,
                                  y_valid, config.finetune.logreg_c_values)
  model = models.build_logreg_tagger(fitted["kernel"], fitted["bias"], mean, std)
  return {"model": model, "c": fitted["c"],
          "val_auc_tag": {str(c): s for c, s in fitted["val_auc_tag"].items()}}


def train_tagger(data_dir: str, model_dir: str, config: config_lib.TrainConfig,
                 callbacks: Sequence[keras.callbacks.Callback] = (),
                 resume: bool = True, strategy: str = "auto") -> Dict[str, Any]:
  """Trains the tagger and writes ``model_dir/tagger.keras``; returns a summary.

  Args:
    data_dir: the preprocessed dataset (its metadata.json names the tags).
    model_dir: the model directory (reads ``bof/{train,valid}.npz``).
    config: the operative configuration.
    callbacks: extra Keras callbacks for the DNN's fit (tests, custom logging).
    resume: continue from ``finetune/checkpoint.npz`` when it matches the config.
    strategy: "auto", "default" or "mirrored" (``distribute.distribution_strategy``).
  """
  _, x_train, y_train = song_inputs.load_bof(model_dir, "train")
  _, x_valid, y_valid = song_inputs.load_bof(model_dir, "valid")
  tags = tag_names(data_dir, model_dir, y_train.shape[1])
  tagger_path = posixpath.join(model_dir, layout.TAGGER_FILE)

  if config.dnn.head == "logreg":
    fitted = fit_logreg_tagger(config, x_train, y_train, x_valid, y_valid)
    save_keras_model(fitted["model"], tagger_path)
    return {"head": "logreg", "c": fitted["c"], "val_auc_tag": fitted["val_auc_tag"],
            "num_tags": len(tags)}

  mean, std = song_inputs.standardization(model_dir, x_train,
                                          config.dnn.input_normalization)
  rbm_weights = (load_rbms(model_dir, config.dnn.num_hidden_layers)
                 if config.dnn.init == "pretrained" else None)

  use_mixed = config.finetune.mixed_precision and bool(tf.config.list_logical_devices("GPU"))
  if config.finetune.mixed_precision and not use_mixed:
    logging.warning("finetune: mixed precision requested but no GPU is visible; "
                    "training in float32")
  previous_policy = keras.config.dtype_policy()
  keras.utils.set_random_seed(config.finetune.seed)
  try:
    if use_mixed:
      keras.mixed_precision.set_dtype_policy("mixed_float16")
    distribution = distribute.distribution_strategy(strategy)
    with distribution.scope():
      model = models.build_song_dnn(len(tags), config.dnn, input_dim=x_train.shape[1],
                                    mean=mean, std=std, seed=config.finetune.seed)
      if rbm_weights is not None:
        models.initialize_from_rbms(model, rbm_weights, config.dnn.pretrained_biases)
      fingerprint_arrays = [x_train, y_train, x_valid, y_valid]
      fingerprint_arrays += [rbm[key] for rbm in rbm_weights or [] for key in RBM_KEYS]
      result = finetuning.finetune(
          model, x_train, y_train, x_valid, y_valid, config.finetune,
          work_dir=posixpath.join(model_dir, layout.FINETUNE_DIR),
          fingerprint=finetune_fingerprint(config, *fingerprint_arrays,
                                           mixed_precision_used=use_mixed),
          resume=resume, callbacks=callbacks)
    best_weights = model.get_weights()
  finally:
    keras.mixed_precision.set_dtype_policy(previous_policy)
  # A clean float32 copy outside any strategy scope is what gets exported.
  tagger = models.build_song_dnn(len(tags), config.dnn, input_dim=x_train.shape[1],
                                 mean=mean, std=std, seed=config.finetune.seed)
  tagger.set_weights(best_weights)
  save_keras_model(tagger, tagger_path)
  logging.info("finetune: best validation AUC-tag %.4f at epoch %d/%d; wrote %s",
               result["best_val_auc_tag"], result["best_epoch"] + 1,
               result["epochs_run"], tagger_path)
  return {"head": "dnn", "init": config.dnn.init, "best_epoch": result["best_epoch"],
          "best_val_auc_tag": result["best_val_auc_tag"],
          "epochs_run": result["epochs_run"], "resumed_from": result["resumed_from"],
          "num_tags": len(tags), "replicas": distribute.num_replicas(distribution)}
