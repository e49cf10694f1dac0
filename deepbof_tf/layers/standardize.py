"""Input standardization of the song-level DNN (SPEC §5 "input normalization").

The bag-of-features is standardized feature-wise with the training split's mean and
standard deviation before the RBMs and the DNN. The statistics are non-trainable
weights of a Keras layer that sits at the input of the DNN, so an exported model takes
the raw bag-of-features and nobody has to carry the statistics around separately.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import keras
import numpy as np
from keras import ops


NORMALIZATIONS = ("standardize", "max", "none")


def standardization_statistics(data: np.ndarray, mode: str = "standardize",
                               min_scale: float = 1e-6) -> Tuple[np.ndarray, np.ndarray]:
  """Feature-wise (mean, std) of ``data`` ([examples, features]) for ``(x − mean)/std``.

  Computed in float64. ``mode`` "standardize" gives the mean and standard deviation
  (SPEC §5); "max" gives mean 0 and the feature-wise maximum (the authors'
  ``input_normalization``, which keeps a [0, 1] bag-of-features in [0, 1]); "none"
  gives 0 and 1. A scale below ``min_scale`` (a constant feature on the training
  split) becomes 1, so that feature maps to ``x − mean`` instead of being blown up by
  a near-zero division on other splits.

  Args:
    data: [examples, features] matrix (the training bag-of-features).
    mode: "standardize", "max" or "none".
    min_scale: smallest scale treated as non-degenerate.

  Returns:
    (mean, std), float32 vectors of length ``features``.
  """
  if mode not in NORMALIZATIONS:
    raise ValueError(f"normalization mode must be one of {NORMALIZATIONS}, got {mode!r}")
  data = np.asarray(data, dtype=np.float64)
  if data.ndim != 2 or data.shape[0] == 0:
    raise ValueError(f"standardization needs a non-empty [examples, features] matrix, "
                     f"got shape {data.shape}")
  if not np.all(np.isfinite(data)):
    raise ValueError("standardization input has non-finite values")
  if mode == "standardize":
    mean, scale = data.mean(axis=0), data.std(axis=0)
  elif mode == "max":
    mean, scale = np.zeros(data.shape[1]), np.abs(data).max(axis=0)
  else:
    mean, scale = np.zeros(data.shape[1]), np.ones(data.shape[1])
  scale = np.where(scale < min_scale, 1.0, scale)
  return mean.astype(np.float32), scale.astype(np.float32)


@keras.saving.register_keras_serializable(package="deepbof")
class Standardization(keras.layers.Layer):
  """``(x − mean) / std`` with stored, non-trainable statistics.

  The same layer carries the "max" normalization (mean 0, std = the training maximum).

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
      mode: "standardize", "max" or "none" (see ``standardization_statistics``).
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
