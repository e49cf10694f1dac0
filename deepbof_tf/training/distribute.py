"""Running the training stages on several devices with ``tf.distribute``.

One rule for every stage (docs/multi-device.md):

* ``distribution_strategy("auto"|"default"|"mirrored")`` picks the strategy:
  ``MirroredStrategy`` over every GPU when several are visible (``auto``) or always
  (``mirrored``, over the logical CPU devices when there is no GPU), else the default
  one-device strategy.
* With one replica every stage runs the code it runs without a strategy, op for op,
  so one-device results do not change.
* With several replicas a global batch of ``n`` rows is cut into contiguous row ranges
  (``replica_rows``: replica r gets rows ``r·n//R … (r+1)·n//R``), so any batch size
  works, including a last batch that does not divide; statistics are summed over the
  replicas and divided by the *global* batch size, so every example weighs the same
  whichever replica holds it.
* Random draws (the RBMs' sampling noise) are drawn for the global batch from the
  stateless seed a one-device run uses, and each replica keeps its rows; the result
  then does not depend on how the batch is split.

``DEEPBOF_LOGICAL_CPUS=N`` (read by ``deepbof-train`` before TensorFlow initialises its
devices, ``split_cpu_from_environment``) splits the CPU into N logical devices, how the
tests stand in for N GPUs.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored")
LOGICAL_CPUS_ENV = "DEEPBOF_LOGICAL_CPUS"


def split_cpu(count: int) -> None:
  """Splits the first physical CPU into ``count`` logical devices (before TF init).

  Args:
    count: number of logical CPU devices (>= 1).

  Raises:
    RuntimeError: TensorFlow has initialised its devices already (any op has run).
  """
  if count < 1:
    raise ValueError(f"logical CPU count must be >= 1, got {count}")
  cpu = tf.config.list_physical_devices("CPU")[0]
  current = tf.config.get_logical_device_configuration(cpu)
  if current is not None and len(current) == count:
    return
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])


def split_cpu_from_environment(environ: Optional[Mapping[str, str]] = None
                               ) -> Optional[int]:
  """Applies ``DEEPBOF_LOGICAL_CPUS`` if set; returns the count (None if unset).

  Args:
    environ: the environment (``os.environ`` by default).
  """
  value = (os.environ if environ is None else environ).get(LOGICAL_CPUS_ENV, "").strip()
  if not value:
    return None
  try:
    count = int(value)
  except ValueError as error:
    raise ValueError(f"{LOGICAL_CPUS_ENV}={value!r}: expected a positive integer"
                     ) from error
  try:
    split_cpu(count)
  except RuntimeError as error:
    raise RuntimeError(f"{LOGICAL_CPUS_ENV}={count}: TensorFlow had initialised its "
                       "devices already; set it before the process starts") from error
  logging.info("%s=%d: the CPU is split into %d logical devices", LOGICAL_CPUS_ENV,
               count, count)
  return count


def distribution_strategy(kind: str = "auto") -> tf.distribute.Strategy:
  """The ``tf.distribute`` strategy of the training stages.

  Args:
    kind: "auto" — ``MirroredStrategy`` over all GPUs when there are several, else the
      default strategy; "default" — the default (one-device) strategy; "mirrored" —
      ``MirroredStrategy`` over every visible GPU, or over every logical CPU device when
      there is no GPU (how the tests stand in for several GPUs).
  """
  if kind not in STRATEGIES:
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {kind!r}")
  gpus = tf.config.list_logical_devices("GPU")
  if kind == "mirrored" or (kind == "auto" and len(gpus) > 1):
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    logging.info("MirroredStrategy over %d devices (%s)", len(devices),
                 ", ".join(devices))
    return tf.distribute.MirroredStrategy(devices)
  return tf.distribute.get_strategy()


def num_replicas(strategy: Optional[tf.distribute.Strategy] = None) -> int:
  """Replicas in sync of ``strategy`` (the current one if None)."""
  return int((strategy or tf.distribute.get_strategy()).num_replicas_in_sync)


def replica_rows(rows: int, replicas: int) -> List[Tuple[int, int]]:
  """The contiguous ``[start, stop)`` row range of each replica in a batch of ``rows``.

  Replica r gets rows ``r·rows//replicas … (r+1)·rows//replicas``: sizes differ by at
  most one (100 rows on 3 replicas: 33, 33, 34) and may be 0 when rows < replicas.

  Args:
    rows: the global batch size.
    replicas: replicas in sync.
  """
  return [(r * rows // replicas, (r + 1) * rows // replicas) for r in range(replicas)]


def replica_row_start(rows, replica_id, replicas: int):
  """``replica_rows``' start row as tensor math (for use inside a replica function)."""
  rows = tf.cast(rows, tf.int32)
  return tf.cast(replica_id, tf.int32) * rows // replicas


def log_replica_split(what: str, batch_size: int, replicas: int) -> None:
  """Logs how a ``batch_size`` batch is split when it does not divide evenly."""
  if replicas > 1 and batch_size % replicas:
    sizes = [stop - start for start, stop in replica_rows(batch_size, replicas)]
    logging.info("%s: batch %d over %d replicas as %s rows (statistics are weighted per "
                 "example)", what, batch_size, replicas, "/".join(map(str, sizes)))


def distribute_rows(strategy: tf.distribute.Strategy, value, axis: int = 0):
  """Each replica's ``replica_rows`` slice of ``value`` along ``axis``, on its device.

  Args:
    strategy: a multi-replica strategy.
    value: a tensor or array.
    axis: the batch axis (0, or 1 for [num_batches, batch, ...] stacks).
  """
  value = tf.convert_to_tensor(value)
  bounds = replica_rows(int(value.shape[axis]), strategy.num_replicas_in_sync)

  def value_fn(context):
    start, stop = bounds[context.replica_id_in_sync_group]
    index = [slice(None)] * axis + [slice(start, stop)]
    return tf.identity(value[tuple(index)])

  return strategy.experimental_distribute_values_from_function(value_fn)


class ReplicaMap:
  """Applies a per-row function to global batches, each replica on its rows.

  With one replica this is ``fn(*batch)``; with several, every replica runs ``fn`` on
  its ``replica_rows`` of the batch (any size, e.g. a last batch that does not divide)
  and the outputs are concatenated in replica order, i.e. in the batch's row order.
  ``fn`` must treat rows independently (an encoder, a model's forward pass).

  Args:
    strategy: the strategy (variables ``fn`` reads should be created in its scope).
    fn: maps tensors of [rows, ...] to one [rows, ...] tensor (a plain function, not a
      ``tf.function``: the replicas' run is wrapped in one here).
  """

  def __init__(self, strategy: tf.distribute.Strategy, fn: Callable[..., tf.Tensor]):
    self.strategy = strategy
    self.fn = fn
    self.replicas = num_replicas(strategy)
    self._run = tf.function(lambda *args: strategy.run(fn, args=args),
                            reduce_retracing=True)

  def __call__(self, *batch) -> np.ndarray:
    if self.replicas == 1:
      return np.asarray(self.fn(*batch))
    distributed = [distribute_rows(self.strategy, b) for b in batch]
    outputs = self.strategy.experimental_local_results(self._run(*distributed))
    return np.concatenate([np.asarray(o) for o in outputs], axis=0)


def map_in_batches(strategy: tf.distribute.Strategy, fn: Callable[..., tf.Tensor],
                   arrays: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
  """``ReplicaMap(strategy, fn)`` over consecutive ``batch_size`` rows of ``arrays``."""
  mapper = ReplicaMap(strategy, fn)
  total = int(np.shape(arrays[0])[0])
  outputs = [mapper(*[np.asarray(a[i:i + batch_size]) for a in arrays])
             for i in range(0, total, batch_size)]
  return np.concatenate(outputs, axis=0)
