"""Evaluation reports of a trained tagger: metrics JSON, per-tag CSV, per-tag ROC-AUC chart."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Dict, Mapping, Optional, Sequence

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


def plot_per_tag_auc(per_tag: Mapping[str, Mapping[str, Any]], path: str,
                     title: str = "Per-tag ROC-AUC",
                     reference: Optional[Mapping[str, Mapping[str, Any]]] = None,
                     labels: Sequence[str] = ("model", "reference")) -> None:
  """Bar chart of per-tag ROC-AUC, tags sorted by AUC, written as PNG.

  Args:
    per_tag: the ``per_tag`` entry of a ``tagging_metrics`` result.
    path: the PNG file (local or GCS).
    title: the chart title.
    reference: optionally a second method's ``per_tag`` drawn as markers.
    labels: legend names of the two methods.
  """
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  tags = [t for t, v in per_tag.items() if not np.isnan(v["roc_auc"])]
  tags.sort(key=lambda t: -per_tag[t]["roc_auc"])
  values = [per_tag[t]["roc_auc"] for t in tags]
  width = max(6.0, 0.22 * len(tags) + 1.5)
  fig, ax = plt.subplots(figsize=(width, 4.0))
  positions = np.arange(len(tags))
  ax.bar(positions, values, color="#4C72B0", label=labels[0])
  if reference is not None:
    ref = [reference[t]["roc_auc"] if t in reference else np.nan for t in tags]
    ax.plot(positions, ref, "o", color="#DD8452", markersize=3, label=labels[1])
    ax.legend(loc="lower left")
  mean = float(np.mean(values)) if values else float("nan")
  ax.axhline(mean, color="gray", linestyle="--", linewidth=0.8)
  ax.axhline(0.5, color="black", linewidth=0.5)
  ax.set_xticks(positions)
  ax.set_xticklabels(tags, rotation=90, fontsize=7)
  ax.set_ylim(min([0.4] + [v for v in values if np.isfinite(v)]), 1.0)
  ax.set_ylabel("ROC-AUC")
  ax.set_title(f"{title} (mean {mean:.3f}, {len(tags)} tags)")
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=120)
  plt.close(fig)
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buffer.getvalue())
