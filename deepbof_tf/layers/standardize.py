"""Input normalization of the song-level DNN (``DNNConfig.input_normalization``).

Three modes, named for what they do (see docs/model.md#input-normalization):

* ``"none"`` — the raw bag-of-features, in [0, 1]. The authors' final run scripts
  train this way (their ``input_normalization`` flag is off), with a binary-visible
  first RBM. The default.
* ``"clip_max"`` — each clip's vector divided by that clip's own maximum: the authors'
  ``input_normalization`` option when it is on. Stateless (:class:`ClipMaxNormalization`).
* ``"standardize"`` — feature-wise ``(x − mean)/std`` with the training split's
  statistics: our option, with a Gaussian-visible first RBM. The statistics are
  non-trainable weights of :class:`Standardization` at the input of the DNN, so an
  exported model takes the raw bag-of-features.

A configuration naming the earlier mode ``"max"`` (a feature-wise maximum over the
training split, which is not what the authors' code does) is refused with a message
naming the modes to use instead.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import keras
import numpy as np
from keras import ops

from deepbof_tf.config import REMOVED_MAX_MODE


NORMALIZATIONS = ("none", "clip_max", "standardize")



def check_mode(mode: str) -> None:
  """Raises a ``ValueError`` that names the valid modes (and the removed ``"max"``)."""
  if mode == "max":
    raise ValueError(REMOVED_MAX_MODE)
  if mode not in NORMALIZATIONS:
    raise ValueError(f"input_normalization must be one of {NORMALIZATIONS}, got {mode!r}")


def clip_max(data: np.ndarray, min_scale: float = 1e-12) -> np.ndarray:
  """Each row divided by its own maximum (rows whose maximum is ≤ ``min_scale``: by 1).

  Args:
    data: [examples, features].
    min_scale: smallest maximum treated as non-degenerate.

  Returns:
    float32 [examples, features].
  """
  data = np.asarray(data, np.float32)
  peak = data.max(axis=1, keepdims=True)
  return (data / np.where(peak > min_scale, peak, 1.0)).astype(np.float32)


def normalize_inputs(data: np.ndarray, mode: str, mean: np.ndarray, std: np.ndarray
                     ) -> np.ndarray:
  """The DNN's input for ``mode`` as NumPy (what the model's first layer computes).

  Args:
    data: [examples, features] bag-of-features.
    mode: one of ``NORMALIZATIONS``.
    mean: the training statistics of :func:`standardization_statistics` (used by
      "standardize" only).
    std: likewise.

  Returns:
    float32 [examples, features].
  """
  check_mode(mode)
  if mode == "standardize":
    return ((np.asarray(data, np.float32) - mean) / std).astype(np.float32)
  if mode == "clip_max":
    return clip_max(data)
  return np.asarray(data, np.float32)


def standardization_statistics(data: np.ndarray, mode: str = "standardize",
                               min_scale: float = 1e-6) -> Tuple[np.ndarray, np.ndarray]:
  """Feature-wise (mean, std) of ``data`` ([examples, features]) for ``(x − mean)/std``.

  Computed in float64. ``mode`` "standardize" gives the mean and standard deviation;
  "none" and "clip_max" (which needs no statistics) give 0 and 1. A scale below ``min_scale`` (a constant feature on the training
  split) becomes 1, so that feature maps to ``x − mean`` instead of being blown up by
  a near-zero division on other splits.

  Args:
    data: [examples, features] matrix (the training bag-of-features).
    mode: one of ``NORMALIZATIONS``.
    min_scale: smallest scale treated as non-degenerate.

  Returns:
    (mean, std), float32 vectors of length ``features``.
  """
  check_mode(mode)
  data = np.asarray(data, dtype=np.float64)
  if data.ndim != 2 or data.shape[0] == 0:
    raise ValueError(f"standardization needs a non-empty [examples, features] matrix, "
                     f"got shape {data.shape}")
  if not np.all(np.isfinite(data)):
    raise ValueError("standardization input has non-finite values")
  if mode == "standardize":
    mean, scale = data.mean(axis=0), data.std(axis=0)
  else:
    mean, scale = np.zeros(data.shape[1]), np.ones(data.shape[1])
  scale = np.where(scale < min_scale, 1.0, scale)
  return mean.astype(np.float32), scale.astype(np.float32)


@keras.saving.register_keras_serializable(package="deepbof")
class Standardization(keras.layers.Layer):
  """``(x − mean) / std`` with stored, non-trainable statistics ("standardize").

  Args:
    mean: optional initial mean (length ``features``); zeros if None.
    std: optional initial standard deviation; ones if None.
    **kwargs: forwarded to ``keras.layers.Layer``.
  """

  def __init__(self, mean: Optional[np.ndarray] = None, std: Optional[np.ndarray] = None,
               **kwargs):
    super().__init__(**kwargs)
    # The statistics travel as weights (saved with the model), not in the config.
    self._initial_mean = None if mean is None else np.asarray(mean, np.float32)
    self._initial_std = None if std is None else np.asarray(std, np.float32)
    if self._initial_std is not None and np.any(self._initial_std <= 0):
      raise ValueError("Standardization std must be > 0 everywhere")

  def build(self, input_shape):
    features = int(input_shape[-1])
    for name, value in (("mean", self._initial_mean), ("std", self._initial_std)):
      if value is not None and value.shape != (features,):
        raise ValueError(f"Standardization {name} has shape {value.shape}, the input "
                         f"has {features} features")
    self.mean = self.add_weight(
        name="mean", shape=(features,), trainable=False,
        initializer=(keras.initializers.Zeros() if self._initial_mean is None else
                     keras.initializers.Constant(self._initial_mean)))
    self.std = self.add_weight(
        name="std", shape=(features,), trainable=False,
        initializer=(keras.initializers.Ones() if self._initial_std is None else
                     keras.initializers.Constant(self._initial_std)))
    super().build(input_shape)

  def adapt(self, data: np.ndarray, mode: str = "standardize") -> None:
    """Sets the statistics from ``data`` ([examples, features]); builds the layer if needed.

    Args:
      data: [examples, features] training data.
      mode: one of ``NORMALIZATIONS`` (see ``standardization_statistics``).
    """
    mean, std = standardization_statistics(data, mode)
    if not self.built:
      self.build((None, mean.shape[0]))
    self.set_statistics(mean, std)

  def set_statistics(self, mean: np.ndarray, std: np.ndarray) -> None:
    """Assigns precomputed statistics (e.g. those the RBM pretraining used)."""
    self.mean.assign(np.asarray(mean, np.float32))
    self.std.assign(np.asarray(std, np.float32))

  def call(self, inputs):
    inputs = ops.cast(inputs, self.compute_dtype)
    return (inputs - ops.cast(self.mean, self.compute_dtype)) / ops.cast(
        self.std, self.compute_dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self) -> Dict[str, Any]:
    return super().get_config()


@keras.saving.register_keras_serializable(package="deepbof")
class ClipMaxNormalization(keras.layers.Layer):
  """Each example divided by its own maximum over the features ("clip_max").

  The authors' ``input_normalization`` option: a clip's bag-of-features is scaled so
  that its largest entry is 1. An example whose maximum is ≤ ``min_scale`` is left as
  it is. No statistics, no weights.

  Args:
    min_scale: smallest maximum treated as non-degenerate.
    **kwargs: forwarded to ``keras.layers.Layer``.
  """

  def __init__(self, min_scale: float = 1e-12, **kwargs):
    super().__init__(**kwargs)
    self.min_scale = float(min_scale)

  def call(self, inputs):
    inputs = ops.cast(inputs, self.compute_dtype)
    peak = ops.max(inputs, axis=-1, keepdims=True)
    return inputs / ops.where(peak > self.min_scale, peak, ops.ones_like(peak))

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self) -> Dict[str, Any]:
    return {**super().get_config(), "min_scale": self.min_scale}
