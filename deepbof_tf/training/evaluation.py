"""Evaluation reports of a trained tagger: metrics JSON and per-tag CSV.

The per-tag ROC-AUC chart is ``deepbof_tf.plots.plot_per_tag_auc``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Mapping

import numpy as np
import tensorflow as tf


def json_safe(value: Any) -> Any:
  """Replaces NaN/inf floats by None (strict JSON) recursively."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, (np.floating,)):
    return json_safe(float(value))
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, Mapping):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  return value


def write_json(path: str, payload: Mapping[str, Any]) -> None:
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(json.dumps(json_safe(payload), indent=2, sort_keys=True) + "\n")


def write_per_tag_csv(path: str, results: Mapping[str, Mapping[str, Any]]) -> None:
  """One row per tag: tag, positives, then roc_auc/pr_auc of every method.

  Args:
    path: the CSV file.
    results: method name → ``tagging_metrics`` result (same tags in each).
  """
  methods = list(results)
  first = results[methods[0]]["per_tag"]
  header = ["tag", "positives"]
  for method in methods:
    header += [f"{method}_roc_auc", f"{method}_pr_auc"]
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(header)
  for tag, values in first.items():
    row = [tag, values["positives"]]
    for method in methods:
      entry = results[method]["per_tag"][tag]
      row += ["" if np.isnan(entry["roc_auc"]) else f"{entry['roc_auc']:.6f}",
              "" if np.isnan(entry["pr_auc"]) else f"{entry['pr_auc']:.6f}"]
    writer.writerow(row)
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(buffer.getvalue())
