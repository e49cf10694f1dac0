"""Figures users expect from a trained model, as PNG files (matplotlib, Agg canvas).

Plain functions of NumPy arrays. They draw on ``matplotlib.figure.Figure`` with the
Agg canvas directly, never through ``pyplot``, so they neither need a display nor
change the caller's matplotlib backend. Paths may be local or any ``tf.io.gfile``
filesystem.
"""

from __future__ import annotations

import io
import math
from typing import Dict, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def save_figure(figure: Figure, path: str, dpi: int = 100) -> None:
  """Renders ``figure`` with the Agg canvas and writes it as a PNG to ``path``.

  Args:
    figure: a ``matplotlib.figure.Figure``.
    path: destination PNG (local or ``tf.io.gfile``).
    dpi: resolution.
  """
  import tensorflow as tf  # deferred: only for gfile
  FigureCanvasAgg(figure)
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=dpi)
  directory = path.rsplit("/", 1)[0] if "/" in path else ""
  if directory:
    tf.io.gfile.makedirs(directory)
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buffer.getvalue())


def plot_filters(filters: np.ndarray, path: str, block_frames: int = 8,
                 n_mels: int = 128, columns: int = 20,
                 title: Optional[str] = None) -> None:
  """A grid of spectral-block filters as mel × frame patches (the paper's figure).

  Each filter is a flat ``block_frames·n_mels`` vector in the blocks' row-major
  [frame, mel] layout (e.g. dewhitened RBM weights). Patches are drawn with low mel
  bands at the bottom and time to the right, each scaled to its own symmetric range
  (red positive, blue negative).

  Args:
    filters: [n, block_frames·n_mels] filters.
    path: output PNG.
    block_frames: frames per block.
    n_mels: mel bands per frame.
    columns: patches per row.
    title: optional figure title.
  """
  filters = np.asarray(filters, np.float64)
  if filters.ndim != 2 or filters.shape[1] != block_frames * n_mels:
    raise ValueError(f"plot_filters: filters must be [n, {block_frames * n_mels}], got "
                     f"{filters.shape}")
  count = filters.shape[0]
  columns = max(1, min(columns, count))
  rows = max(1, math.ceil(count / columns))
  figure = Figure(figsize=(0.55 * columns + 0.4, 2.4 * rows + 0.6))
  for i in range(rows * columns):
    axis = figure.add_subplot(rows, columns, i + 1)
    axis.set_xticks([])
    axis.set_yticks([])
    if i >= count:
      axis.set_axis_off()
      continue
    patch = filters[i].reshape(block_frames, n_mels).T  # [mel, frame]
    limit = float(np.max(np.abs(patch))) or 1.0
    axis.imshow(patch, origin="lower", aspect="auto", cmap="RdBu_r",
                vmin=-limit, vmax=limit, interpolation="nearest")
  figure.suptitle(title or f"{count} filters ({block_frames} frames × {n_mels} mel bands)")
  figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.5 / figure.get_figheight(),
                         wspace=0.08, hspace=0.08)
  save_figure(figure, path)


def plot_activation_histogram(mean_activation: np.ndarray, path: str,
                              target: Optional[float] = None, bins: int = 50,
                              title: Optional[str] = None) -> None:
  """Histogram of the hidden units' mean activations over a sample of blocks.

  Args:
    mean_activation: [H] mean of p(h_j=1|v) per hidden unit.
    path: output PNG.
    target: the sparsity target ρ, drawn as a reference line.
    bins: histogram bins.
    title: optional title.
  """
  mean_activation = np.asarray(mean_activation, np.float64).ravel()
  figure = Figure(figsize=(6.4, 4.0))
  axis = figure.add_subplot(1, 1, 1)
  upper = 1.05 * max(float(mean_activation.max()), target or 0.0, 1e-6)
  axis.hist(mean_activation, bins=bins, range=(0.0, upper), color="0.4")
  overall = float(mean_activation.mean())
  axis.axvline(overall, color="tab:blue", label=f"mean over units {overall:.4f}")
  if target is not None:
    axis.axvline(target, color="tab:red", linestyle="--", label=f"target ρ = {target:g}")
  axis.set_xlabel("mean activation p(h=1|v) of a hidden unit")
  axis.set_ylabel("hidden units")
  axis.set_title(title or f"Hidden-unit activations ({mean_activation.size} units)")
  axis.legend()
  figure.tight_layout()
  save_figure(figure, path)


def plot_training_curves(history: Sequence[Dict[str, float]], path: str,
                         keys: Sequence[str] = ("reconstruction_error", "mean_activation",
                                                "weight_norm", "learning_rate"),
                         target: Optional[float] = None) -> None:
  """Per-epoch training curves (one panel per key).

  Args:
    history: rows of per-epoch metrics (each a dict with "epoch" and the keys).
    path: output PNG.
    keys: metrics to draw.
    target: sparsity target drawn on the "mean_activation" panel.
  """
  epochs = [row["epoch"] + 1 for row in history]
  figure = Figure(figsize=(4.0 * len(keys), 3.2))
  for i, key in enumerate(keys):
    axis = figure.add_subplot(1, len(keys), i + 1)
    axis.plot(epochs, [row[key] for row in history], marker="." if len(epochs) < 30 else None)
    if key == "mean_activation" and target is not None:
      axis.axhline(target, color="tab:red", linestyle="--", label=f"ρ = {target:g}")
      axis.legend()
    axis.set_xlabel("epoch")
    axis.set_title(key.replace("_", " "))
  figure.tight_layout()
  save_figure(figure, path)


def plot_per_tag_auc(per_tag: Dict[str, Dict[str, float]], path: str,
                     title: str = "Per-tag ROC-AUC",
                     reference: Optional[Dict[str, Dict[str, float]]] = None,
                     labels: Sequence[str] = ("model", "reference")) -> None:
  """Bar chart of the per-tag ROC-AUC of ``deepbof_tf.metrics.tagging_metrics``.

  Tags are sorted by decreasing ROC-AUC; tags without a defined AUC (one class only)
  are left out. An optional second method is drawn as markers on the same tags.

  Args:
    per_tag: the ``per_tag`` entry of a metrics result (tag → {"roc_auc", ...}).
    path: output PNG.
    title: chart title (the mean and the tag count are appended).
    reference: optionally another method's ``per_tag``.
    labels: legend names of the bars and of the reference markers.
  """
  tags = [t for t, v in per_tag.items() if not math.isnan(v["roc_auc"])]
  tags.sort(key=lambda t: -per_tag[t]["roc_auc"])
  values = np.array([per_tag[t]["roc_auc"] for t in tags])
  positions = np.arange(len(tags))
  figure = Figure(figsize=(max(6.0, 0.22 * len(tags) + 1.5), 4.0))
  axis = figure.add_subplot(1, 1, 1)
  axis.bar(positions, values, color="tab:blue", label=labels[0])
  if reference is not None:
    markers = [reference.get(t, {}).get("roc_auc", np.nan) for t in tags]
    axis.plot(positions, markers, "o", color="tab:orange", markersize=3, label=labels[1])
    axis.legend(loc="lower left")
  mean = float(values.mean()) if values.size else float("nan")
  axis.axhline(mean, color="gray", linestyle="--", linewidth=0.8)
  axis.axhline(0.5, color="black", linewidth=0.5)
  axis.set_xticks(positions)
  axis.set_xticklabels(tags, rotation=90, fontsize=7)
  axis.set_ylim(min(0.4, float(values.min())) if values.size else 0.4, 1.0)
  axis.set_ylabel("ROC-AUC")
  axis.set_title(f"{title} (mean {mean:.3f}, {len(tags)} tags)")
  figure.tight_layout()
  save_figure(figure, path, dpi=120)
