"""This machine's dense float32 matmul rate, the reference of the FLOP-rate targets.

The rate is the faster of a square ``tf.matmul`` (TensorFlow's oneDNN/Eigen kernels)
and ``numpy.matmul`` (NumPy's OpenBLAS) of the same operands: "the machine's rate" is
what the best library here reaches, not what one of them does. On this project's
machines OpenBLAS has been the faster by 20–50 %, so a TF-only reference would flatter
every ratio. ``measure()`` takes one timing of each, so callers can interleave them
with the measurements they compare (on a shared machine, ratios of neighbouring
timings survive the noise that absolutes do not).
"""

from __future__ import annotations

import time
from typing import List, Tuple

import numpy as np
import tensorflow as tf


class DenseMatmulReference:
  """Square float32 matmul of side ``size`` in TF and NumPy; rates in FLOP/s.

  Args:
    size: side of the square operands (2048 for the benchmarks' targets).
  """

  def __init__(self, size: int = 2048):
    self.size = int(size)
    self.flops = 2.0 * self.size ** 3
    self._a = tf.random.normal([self.size, self.size], seed=1)
    self._b = tf.random.normal([self.size, self.size], seed=2)
    self._a_numpy, self._b_numpy = self._a.numpy(), self._b.numpy()
    self._tf_matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(self._a, self._b)))
    self.tf_rates: List[float] = []
    self.numpy_rates: List[float] = []
    self._tf_matmul().numpy()  # trace and warm up both
    np.matmul(self._a_numpy, self._b_numpy)

  def measure(self) -> Tuple[float, float]:
    """One timing of each library; returns and records ``(tf_rate, numpy_rate)``."""
    start = time.perf_counter()
    self._tf_matmul().numpy()
    tf_rate = self.flops / (time.perf_counter() - start)
    start = time.perf_counter()
    np.matmul(self._a_numpy, self._b_numpy)
    numpy_rate = self.flops / (time.perf_counter() - start)
    self.tf_rates.append(tf_rate)
    self.numpy_rates.append(numpy_rate)
    return tf_rate, numpy_rate

  def measure_best(self, repeats: int) -> float:
    """The best rate of ``repeats`` interleaved timings of both libraries."""
    for _ in range(repeats):
      self.measure()
    return self.best

  @property
  def paired(self) -> List[float]:
    """Per ``measure()`` call, the faster library's rate."""
    return [max(t, n) for t, n in zip(self.tf_rates, self.numpy_rates)]

  @property
  def best(self) -> float:
    return max(self.paired)

  @property
  def name(self) -> str:
    return (f"{self.size}x{self.size} float32 matmul, best of tf.matmul and "
            f"numpy.matmul")

  def summary(self) -> str:
    return (f"tf.matmul {max(self.tf_rates) / 1e9:.1f}, numpy.matmul "
            f"{max(self.numpy_rates) / 1e9:.1f} GFLOP/s")
