"""The training log of the sparse RBM: per-epoch quantities and their files.

``SparseRBMTrainer`` keeps one row of ``HISTORY_FIELDS`` per finished epoch (in its
checkpoint) and writes them as ``training_log.csv`` and ``training_log.json`` after
every epoch (docs/model.md#sparse-rbm).
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Dict, List

import tensorflow as tf

from deepbof_tf.io_utils import write_atomic

# Per-epoch quantities of the training log, in column order.
HISTORY_FIELDS = ("epoch", "learning_rate", "momentum", "reconstruction_error",
                  "mean_activation", "running_activation", "weight_norm", "seconds")


def write_history(rows: List[Dict[str, float]], directory: str) -> None:
  """Writes ``training_log.csv`` and ``training_log.json`` into ``directory``.

  Args:
    rows: per-epoch metrics (``SparseRBMTrainer.history_rows``).
    directory: output directory (any ``tf.io.gfile`` path).
  """
  tf.io.gfile.makedirs(directory)
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(HISTORY_FIELDS))
  writer.writeheader()
  writer.writerows(rows)
  write_atomic(os.path.join(directory, "training_log.csv"), buffer.getvalue())
  write_atomic(os.path.join(directory, "training_log.json"),
                json.dumps(rows, indent=1) + "\n")
