"""Supervised fine-tuning of the song-level DNN, resumable after a kill.

* AdaDelta (learning rate 1.0, ρ 0.99, ε 1e-8), minibatches of 128, binary
  cross-entropy **summed over tags** and averaged over clips (the authors' objective;
  Keras' built-in loss averages over tags too, a 1/n_tags rescaling). Under several
  replicas the average is over the global batch (``GlobalBatchLoss``), so a last batch
  that does not split evenly weighs every clip the same (docs/multi-device.md).
* ``ValidationAUC`` computes the validation AUC-tag after every epoch, keeps the best
  epoch's weights, stops early after ``patience`` epochs without improvement (0 = never)
  and puts the best weights back at the end (the authors keep the best epoch too).
* ``EpochCheckpoint`` writes, at epoch ends (at most once a minute by default, and
  after the last epoch), everything a resumed run needs to continue bit for bit: all
  model variables (including the dropout seed-generator states), the optimizer's
  variables, the best-so-far weights and score, the early-stopping counter, the
  history and the epoch.
* Batches go in file order every epoch (the authors' deepmat; ``FinetuneConfig.shuffle``
  draws a stateless permutation of (seed, e) per epoch instead), so a run resumed at
  epoch k sees exactly the batches an uninterrupted run sees.
* The length is ``FinetuneConfig.num_epochs``: fixed epochs, or the epochs that give
  the configured number of updates on this training set.

See docs/model.md#fine-tuning.
"""

from __future__ import annotations

import io
import json
import logging
import math
import posixpath
import time
from typing import Any, Dict, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from deepbof_tf import metrics
from deepbof_tf import model_dir as layout
from deepbof_tf.config import FinetuneConfig
from deepbof_tf.io_utils import write_atomic
from deepbof_tf.training import optimizers


@keras.saving.register_keras_serializable(package="deepbof")
def tag_cross_entropy(y_true, y_pred):
  """Binary cross-entropy summed over tags (per clip); Keras then averages over clips."""
  num_tags = ops.cast(ops.shape(y_true)[-1], y_pred.dtype)
  return keras.losses.binary_crossentropy(y_true, y_pred) * num_tags


@keras.saving.register_keras_serializable(package="deepbof")
class GlobalBatchLoss(keras.losses.Loss):
  """A per-example loss averaged over the *global* batch under a multi-replica strategy.

  Keras averages each replica's loss over that replica's examples and sums the replicas'
  gradients divided by their number, so when a batch does not split evenly (the last
  batch of an epoch; 25 rows on 2 replicas are 13 + 12) a replica with fewer examples
  weighs as much as a full one. Here every replica returns the *sum* of its examples'
  losses divided by the global batch size (its rows all-reduced over the replicas), so
  the summed gradient is the one-device mean over the batch: every example weighs the
  same. Only used with several replicas; one device keeps Keras' mean.

  Args:
    fn: ``fn(y_true, y_pred)`` → per-example losses [rows].
    name: the loss name.
  """

  def __init__(self, fn=None, name: str = "global_batch_loss", **kwargs):
    kwargs.pop("reduction", None)
    super().__init__(name=name, reduction="sum", **kwargs)
    self.fn = fn or tag_cross_entropy

  def call(self, y_true, y_pred):
    values = self.fn(y_true, y_pred)
    rows = tf.cast(tf.shape(values)[0], values.dtype)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
      rows = context.all_reduce(tf.distribute.ReduceOp.SUM, rows)
    return values / rows

  def get_config(self):
    return {"name": self.name}


def epoch_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int,
                  first_epoch: int, num_epochs: int, shuffle: bool = False
                  ) -> tf.data.Dataset:
  """Minibatches of epochs ``first_epoch … num_epochs−1``.

  ``shuffle=False`` (the authors' deepmat): every epoch visits the examples in their
  order, ``ceil(N / batch_size)`` batches, the last one smaller. ``shuffle=True``:
  epoch e is a permutation that depends only on (seed, e), never on how many epochs
  ran before in this process, which is what makes resumption exact.

  Args:
    x: [examples, features] inputs.
    y: [examples, tags] targets.
    batch_size: minibatch size (the last batch of an epoch may be smaller).
    seed: the fine-tuning seed.
    first_epoch: 0-based first epoch to produce.
    num_epochs: total epochs of the run.
    shuffle: a seeded permutation per epoch instead of the file order.
  """
  x = tf.constant(np.asarray(x, np.float32))
  y = tf.constant(np.asarray(y, np.float32))
  n = int(x.shape[0])

  def one_epoch(epoch):
    if shuffle:
      keys = tf.random.stateless_uniform([n], seed=tf.stack([tf.cast(seed, tf.int64),
                                                             epoch]))
      order = tf.argsort(keys, stable=True)
    else:
      order = tf.range(n, dtype=tf.int32)
    return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

  epochs = tf.data.Dataset.range(first_epoch, num_epochs)
  return epochs.flat_map(one_epoch).map(
      lambda idx: (tf.gather(x, idx), tf.gather(y, idx)))


class ValidationAUC(keras.callbacks.Callback):
  """Validation AUC-tag every epoch; keeps the best weights; optional early stopping.

  Adds ``val_auc_tag`` to the epoch logs (place it before TensorBoard/CSV loggers).

  Args:
    x_valid: validation inputs.
    y_valid: validation targets (0/1).
    patience: stop after this many epochs without a better AUC-tag (0: never).
    batch_size: prediction batch size.
  """

  def __init__(self, x_valid: np.ndarray, y_valid: np.ndarray, patience: int = 0,
               batch_size: int = 1024):
    super().__init__()
    self.x_valid = np.asarray(x_valid, np.float32)
    self.y_valid = np.asarray(y_valid, np.float32)
    self.patience = int(patience)
    self.batch_size = batch_size
    self.best_auc = -math.inf
    self.best_epoch = -1
    self.best_weights: Optional[List[np.ndarray]] = None
    self.wait = 0
    self.history: Dict[str, List[float]] = {}
    self._forward = None
    self._forward_model = None

  def _scores(self) -> np.ndarray:
    # A traced forward pass instead of model.predict, whose per-call set-up (~0.1-0.2 s)
    # dominated the epochs of a small training set (thousands of epochs of a few
    # batches under the default update budget). The same ops, the same numbers.
    if self._forward is None or self._forward_model is not self.model:
      model = self.model
      self._forward = tf.function(lambda x: model(x, training=False),
                                  reduce_retracing=True)
      self._forward_model = model
    parts = [self._forward(tf.constant(self.x_valid[i:i + self.batch_size])).numpy()
             for i in range(0, len(self.x_valid), self.batch_size)]
    return np.concatenate(parts, axis=0)

  def on_epoch_end(self, epoch, logs=None):
    logs = logs if logs is not None else {}
    scores = self._scores()
    auc = metrics.tagging_metrics(self.y_valid, scores, ks=())["auc_tag"]
    logs["val_auc_tag"] = auc
    for key, value in logs.items():
      self.history.setdefault(key, []).append(float(value))
    if auc > self.best_auc:  # NaN never wins
      self.best_auc, self.best_epoch, self.wait = float(auc), int(epoch), 0
      self.best_weights = [np.array(w) for w in self.model.get_weights()]
    else:
      self.wait += 1
      if self.patience and self.wait >= self.patience:
        logging.info("early stopping after epoch %d: no better validation AUC-tag for "
                     "%d epochs (best %.4f at epoch %d)", epoch + 1, self.wait,
                     self.best_auc, self.best_epoch + 1)
        self.model.stop_training = True
    logging.info("epoch %d: loss %.4f val AUC-tag %.4f (best %.4f at epoch %d)",
                 epoch + 1, logs.get("loss", float("nan")), auc, self.best_auc,
                 self.best_epoch + 1)

  def restore_best(self) -> None:
    if self.best_weights is not None:
      self.model.set_weights(self.best_weights)

  def state(self) -> Dict[str, Any]:
    return {"best_auc": self.best_auc, "best_epoch": self.best_epoch, "wait": self.wait,
            "history": self.history}

  def load_state(self, state: Dict[str, Any], best_weights: List[np.ndarray]) -> None:
    self.best_auc = float(state["best_auc"])
    self.best_epoch = int(state["best_epoch"])
    self.wait = int(state["wait"])
    self.history = {k: list(v) for k, v in state["history"].items()}
    self.best_weights = best_weights or None


def _write_npz_atomically(path: str, arrays: Dict[str, np.ndarray]) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_atomic(path, buffer.getvalue())


class EpochCheckpoint(keras.callbacks.Callback):
  """Writes the full training state at epoch ends (atomically: temp file + rename).

  A small data set runs thousands of short epochs under the default update budget,
  and the state (model, optimizer, best weights) is ~17 MB for the 3 × 512 network, so
  it is written after an epoch only when ``every_seconds`` have passed since the last
  write, and always after the last epoch and when training stops. A killed run resumes
  from the last write and repeats the epochs after it exactly (the batch order and the
  dropout generators' states depend only on the epoch and the saved state).

  Args:
    path: the checkpoint file (``.npz``).
    validation: the ``ValidationAUC`` callback whose state is saved with the model.
    fingerprint: a string identifying the configuration; a checkpoint with another
      fingerprint is not resumed from.
    every_seconds: the least time between two writes (0: every epoch).
    last_epoch: the run's last 0-based epoch (always written).
  """

  def __init__(self, path: str, validation: ValidationAUC, fingerprint: str = "",
               every_seconds: float = 0.0, last_epoch: Optional[int] = None):
    super().__init__()
    self.path = path
    self.validation = validation
    self.fingerprint = fingerprint
    self.every_seconds = float(every_seconds)
    self.last_epoch = last_epoch
    self._last_write = time.monotonic()

  def on_epoch_end(self, epoch, logs=None):
    due = (self.every_seconds <= 0 or self.model.stop_training
           or (self.last_epoch is not None and epoch >= self.last_epoch)
           or time.monotonic() - self._last_write >= self.every_seconds)
    if due:
      self.write(epoch)

  def write(self, epoch: int) -> None:
    """Writes the state after 0-based ``epoch`` now."""
    self._last_write = time.monotonic()
    arrays: Dict[str, np.ndarray] = {}
    for i, v in enumerate(self.model.variables):
      arrays[f"model_{i}"] = np.asarray(v.numpy())
    for i, v in enumerate(self.model.optimizer.variables):
      arrays[f"optimizer_{i}"] = np.asarray(v.numpy())
    for i, w in enumerate(self.validation.best_weights or []):
      arrays[f"best_{i}"] = w
    meta = {"epoch": int(epoch), "fingerprint": self.fingerprint,
            "num_model_variables": len(self.model.variables),
            "num_optimizer_variables": len(self.model.optimizer.variables),
            "num_best": len(self.validation.best_weights or []),
            "stopped": bool(self.model.stop_training),
            "validation": self.validation.state()}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    _write_npz_atomically(self.path, arrays)


def _read_checkpoint(path: str) -> Optional[Dict[str, Any]]:
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path, "rb") as f:
    data = np.load(io.BytesIO(f.read()))
    arrays = {key: data[key] for key in data.files}
  meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
  return {"meta": meta, "arrays": arrays}


def make_optimizer(config: FinetuneConfig) -> keras.optimizers.Optimizer:
  """``config.optimizer`` (the authors' deepmat AdaDelta by default) with their ρ and ε."""
  return optimizers.make_adadelta(config.optimizer, config.learning_rate,
                                  config.adadelta_rho, config.adadelta_epsilon)


def replica_batch_size(batch_size: int, replicas: int, examples: int) -> int:
  """The global batch size that splits evenly over ``replicas``, nearest to ``batch_size``.

  Under ``MirroredStrategy`` Keras splits every global batch over the replicas and
  fails on a first batch that does not divide (e.g. 128 on 3 replicas, or a training
  set smaller than one batch whose size is odd on 2). One replica keeps the size.

  Args:
    batch_size: the configured global batch size.
    replicas: replicas in sync.
    examples: training examples (a first batch is never larger than this).
  """
  if replicas <= 1:
    return batch_size
  size = max(replicas, int(round(batch_size / replicas)) * replicas)
  if examples < size:
    size = max(replicas, examples // replicas * replicas)
  return size


def finetune(model: keras.Model, x_train: np.ndarray, y_train: np.ndarray,
             x_valid: np.ndarray, y_valid: np.ndarray, config: FinetuneConfig,
             work_dir: str, fingerprint: str = "", resume: bool = True,
             callbacks: Sequence[keras.callbacks.Callback] = (),
             verbose: int = 0, run_eagerly: bool = False) -> Dict[str, Any]:
  """Fine-tunes ``model`` in place and leaves the best validation epoch's weights in it.

  Args:
    model: the song-level DNN (built, uncompiled; inside the strategy scope if any).
    x_train: [clips, features] training bag-of-features.
    y_train: [clips, tags] training labels.
    x_valid: validation bag-of-features (selects the best epoch).
    y_valid: validation labels.
    config: the fine-tuning config.
    work_dir: directory of the checkpoint, history and TensorBoard logs.
    fingerprint: identifies the configuration; a checkpoint with another one is ignored.
    resume: continue from ``work_dir/checkpoint.npz`` when it matches.
    callbacks: extra Keras callbacks, run after the checkpoint is written.
    verbose: Keras fit verbosity.
    run_eagerly: run the training steps eagerly (slow; lets a test replay recorded
      dropout masks, tests/test_authors_reference.py).

  Returns:
    {"best_epoch" (0-based), "best_val_auc_tag", "epochs_run", "resumed_from" (epoch or
    None), "history" (per-epoch loss and val_auc_tag over the whole run)}.
  """
  tf.io.gfile.makedirs(work_dir)
  checkpoint_path = posixpath.join(work_dir, layout.FINETUNE_CHECKPOINT_FILE)
  replicas = tf.distribute.get_strategy().num_replicas_in_sync
  model.compile(optimizer=make_optimizer(config),
                loss=GlobalBatchLoss(tag_cross_entropy) if replicas > 1
                else tag_cross_entropy, jit_compile=False, run_eagerly=run_eagerly)
  validation = ValidationAUC(x_valid, y_valid, patience=config.early_stopping_patience)

  first_epoch, resumed_from, stopped = 0, None, False
  state = _read_checkpoint(checkpoint_path) if resume else None
  if state is not None and state["meta"].get("fingerprint") != fingerprint:
    logging.warning("%s was written with another configuration; starting over",
                    checkpoint_path)
    state = None
  if state is not None:
    meta, arrays = state["meta"], state["arrays"]
    if meta["num_model_variables"] != len(model.variables):
      raise ValueError(f"{checkpoint_path}: {meta['num_model_variables']} model variables, "
                       f"the model has {len(model.variables)}; delete it or use another "
                       "model_dir")
    model.optimizer.build(model.trainable_variables)
    if meta["num_optimizer_variables"] != len(model.optimizer.variables):
      raise ValueError(f"{checkpoint_path}: optimizer state does not match this model")
    for i, v in enumerate(model.variables):
      v.assign(arrays[f"model_{i}"])
    for i, v in enumerate(model.optimizer.variables):
      v.assign(arrays[f"optimizer_{i}"])
    validation.load_state(meta["validation"],
                          [arrays[f"best_{i}"] for i in range(meta["num_best"])])
    first_epoch = meta["epoch"] + 1
    resumed_from = meta["epoch"]
    stopped = bool(meta.get("stopped"))
    logging.info("resuming fine-tuning after epoch %d (best val AUC-tag %.4f)",
                 first_epoch, validation.best_auc)

  num_epochs = config.num_epochs(len(x_train))
  all_callbacks: List[keras.callbacks.Callback] = [
      validation, EpochCheckpoint(checkpoint_path, validation, fingerprint,
                                  every_seconds=config.checkpoint_every_seconds,
                                  last_epoch=num_epochs - 1)]
  if config.tensorboard:
    all_callbacks.append(keras.callbacks.TensorBoard(
        log_dir=posixpath.join(work_dir, layout.TENSORBOARD_DIR), write_graph=False))
  all_callbacks.extend(callbacks)

  if first_epoch < num_epochs and not stopped:
    batch_size = replica_batch_size(config.batch_size, replicas, len(x_train))
    if batch_size != config.batch_size:
      logging.warning("finetune: batch size %d does not split over %d replicas; using %d "
                      "(%d per replica)", config.batch_size, replicas, batch_size,
                      batch_size // replicas)
    steps = math.ceil(len(x_train) / batch_size)
    if first_epoch == 0:
      logging.info("finetune: %d epochs of %d minibatches (%s)", num_epochs, steps,
                   f"{config.epochs} epochs" if config.epochs else
                   f"{config.updates:,} updates")
    dataset = epoch_dataset(x_train, y_train, batch_size, config.seed,
                            first_epoch, num_epochs, shuffle=config.shuffle).prefetch(2)
    model.fit(dataset, epochs=num_epochs, initial_epoch=first_epoch, shuffle=False,
              steps_per_epoch=steps, callbacks=all_callbacks, verbose=verbose)
  validation.restore_best()
  history = validation.history
  write_atomic(posixpath.join(work_dir, layout.FINETUNE_HISTORY_FILE),
               json.dumps({"best_epoch": validation.best_epoch,
                           "best_val_auc_tag": validation.best_auc,
                           "history": history}, indent=2) + "\n")
  return {"best_epoch": validation.best_epoch, "best_val_auc_tag": validation.best_auc,
          "epochs_run": len(history.get("loss", [])), "resumed_from": resumed_from,
          "history": history}
