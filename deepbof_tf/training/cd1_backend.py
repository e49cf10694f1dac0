"""Which CD-1 backend trains the sparse RBM: the native kernel or TensorFlow.

``native`` is the C kernel ``deepbof_tf.native._cd1`` (x86-64 with AVX2/FMA, built at
install where a C compiler exists; docs/native-kernel.md), ``tensorflow`` the
``tf.function`` epoch of ``SparseRBMTrainer`` (any device). ``auto`` takes ``native``
when it is available, no GPU is visible and the strategy has one replica.
"""

from __future__ import annotations

import os
import warnings

import tensorflow as tf

try:  # The optional native kernel (setup.py builds it where a C compiler exists).
  from deepbof_tf.native import _cd1
except ImportError:  # pragma: no cover - exercised only where the build was skipped
  _cd1 = None

BACKENDS = ("auto", "native", "tensorflow")


def native_available() -> bool:
  """True if the native CD-1 kernel is built and this CPU can run it (AVX2 + FMA)."""
  return _cd1 is not None and bool(_cd1.supported())


def default_num_threads() -> int:
  """Threads of the native kernel: TF's intra-op setting if set, else usable cores."""
  configured = tf.config.threading.get_intra_op_parallelism_threads()
  if configured > 0:
    return configured
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # pragma: no cover - non-Linux
    return max(1, os.cpu_count() or 1)


def resolve_backend(backend: str, replicas: int = 1) -> str:
  """``auto`` → ``native`` if available, no GPU is visible and one replica, else ``tensorflow``.

  The native kernel is CPU-only and single-device: under a multi-replica strategy
  ``auto`` takes the TensorFlow path, which is distributed.

  Args:
    backend: one of ``BACKENDS``.
    replicas: replicas in sync of the strategy the trainer runs under.
  """
  if backend not in BACKENDS:
    raise ValueError(f"SparseRBMTrainer: backend must be one of {BACKENDS}, got "
                     f"{backend!r}")
  if backend == "native":
    if _cd1 is None:
      raise ValueError("SparseRBMTrainer: backend='native' but the extension "
                       "deepbof_tf.native._cd1 was not built (reinstall with a C compiler: "
                       "pip install -e .), or use backend='tensorflow'")
    if not _cd1.supported():
      raise ValueError("SparseRBMTrainer: backend='native' needs an x86-64 CPU with "
                       "AVX2 and FMA; use backend='tensorflow'")
    return backend
  if backend == "auto":
    if (native_available() and not tf.config.list_physical_devices("GPU")
        and replicas == 1):
      return "native"
    if _cd1 is None:
      warnings.warn("deepbof_tf.native._cd1 is not built; the sparse RBM trains with "
                    "the slower TensorFlow CPU path", RuntimeWarning, stacklevel=3)
    return "tensorflow"
  return backend
