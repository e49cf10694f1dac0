"""Thread limits of a Beam worker process: TensorFlow's pools and the BLAS's.

Beam parallelises over worker processes, one per core, so each worker computes with
one thread. TensorFlow's intra-/inter-op pools are set here, and so is NumPy's BLAS
(through ``threadpoolctl``), which the resampler's matrix products use: left at one
thread per core, the BLAS threads of two workers on two cores spin on each other's
cores and doubled the workers' CPU time per clip (docs/benchmarks.md).
"""

from __future__ import annotations

_blas_limits = None  # the threadpoolctl limiter, kept for the process's lifetime


def limit_threads(threads: int) -> None:
  """Caps this process at ``threads`` TensorFlow and BLAS threads (<= 0: no change).

  TensorFlow's pools can only be set before its context starts; in a process where it
  already has, they keep their settings.
  """
  global _blas_limits
  if threads <= 0:
    return
  import tensorflow as tf
  try:
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
  except RuntimeError:
    pass  # this process's context is already initialised: keep its settings
  from threadpoolctl import threadpool_limits
  _blas_limits = threadpool_limits(limits=threads, user_api="blas")
