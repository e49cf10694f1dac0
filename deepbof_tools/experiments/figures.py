"""The paper-style box plots of a sweep: per-tag test ROC-AUC for every setting.

Like Figs. 4–7 of the paper: one box per setting along the grid's x factor, one
panel per value of its secondary factor (sampling scheme, initialisation, pooling
window). A box holds the per-tag ROC-AUC of the test split, pooled over the seeds; the
white diamond is its mean (= AUC-T averaged over seeds) and the default setting (the
authors' configuration) is drawn in orange. Drawn on a ``matplotlib.figure.Figure``
with the Agg canvas (``deepbof_tf.plots.save_figure``), never through ``pyplot``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from matplotlib.figure import Figure

from deepbof_tf import plots
from deepbof_tools.experiments import grids as grids_lib
from deepbof_tools.experiments import results as results_lib

_FACTOR_NAMES = {
    "sampling": "sampling", "block_frames": "block frames",
    "sparsity_target": "sparsity target ρ", "pool_frames": "pooling (frames)",
    "pool_seconds": "pooling (s)", "num_hidden_layers": "hidden layers",
    "init": "initialisation", "weight_costs": "weight costs",
    grids_lib.SETTING: "setting",
}


def plot_grid(grid: grids_lib.Grid, results: Sequence[results_lib.CellResult],
              path: str) -> int:
  """Writes the grid's box plot to ``path``; returns the number of boxes drawn.

  Args:
    grid: the grid.
    results: its cell results (those not "ok" are left out; an empty box slot stays).
    path: the PNG to write.
  """
  ok = [r for r in results if r.status == results_lib.OK]
  panels: List[Any] = []
  for cell in grid.cells:
    value = grids_lib.factor_value(cell, grid.panel_factor) if grid.panel_factor else None
    if value not in panels:
      panels.append(value)
  default = grids_lib.Settings()
  x_label = _FACTOR_NAMES.get(grid.x_factor, grid.x_factor)
  many = max(len([c for c in grid.cells if grid.panel_factor is None or
                  grids_lib.factor_value(c, grid.panel_factor) == p]) for p in panels)
  width = max(5.0, min(24.0, 1.2 + len(panels) * (0.55 * many + 1.0)))
  figure = Figure(figsize=(width, 4.6 if grid.x_factor != grids_lib.SETTING else 5.4))
  axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
  drawn = 0
  for ax, panel in zip(axes, panels):
    cells = [c for c in grid.cells if grid.panel_factor is None
             or grids_lib.factor_value(c, grid.panel_factor) == panel]
    data: List[List[float]] = []
    for cell in cells:
      data.append([auc for r in ok if r.run.cell.label == cell.label
                   for auc in r.per_tag_auc().values()])
    positions = [i for i, values in enumerate(data, 1) if values]
    if positions:
      boxes = ax.boxplot([data[i - 1] for i in positions], positions=positions,
                         widths=0.6, patch_artist=True, showmeans=True,
                         meanprops={"marker": "D", "markerfacecolor": "white",
                                    "markeredgecolor": "black", "markersize": 5},
                         medianprops={"color": "black"}, flierprops={"markersize": 3})
      for patch, position in zip(boxes["boxes"], positions):
        is_default = cells[position - 1].settings == default
        patch.set_facecolor("#f4a259" if is_default else "#8ecae6")
      drawn += len(positions)
    ax.set_xticks(range(1, len(cells) + 1))
    labels = [str(grids_lib.factor_value(c, grid.x_factor)) for c in cells]
    ax.set_xticklabels(labels, rotation=45 if grid.x_factor == grids_lib.SETTING else 0,
                       ha="right" if grid.x_factor == grids_lib.SETTING else "center",
                       fontsize=8)
    ax.set_xlim(0.4, len(cells) + 0.6)
    ax.set_xlabel(x_label)
    if grid.panel_factor:
      ax.set_title(f"{_FACTOR_NAMES.get(grid.panel_factor, grid.panel_factor)} = {panel}",
                   fontsize=10)
    ax.grid(axis="y", alpha=0.3)
  axes[0].set_ylabel("per-tag ROC-AUC (test split)")
  clips = sorted({r.metrics.get("num_clips") for r in ok})
  seeds = sorted({r.run.seed for r in ok})
  figure.suptitle(
      f"{grid.name} (paper {grid.figure}): {grid.question}\n"
      f"{', '.join(map(str, clips)) or '?'} test clips, seeds "
      f"{', '.join(map(str, seeds)) or '—'}; box = tags (× seeds), ◇ = mean (AUC-T), "
      "orange = default", fontsize=10)
  figure.tight_layout()
  plots.save_figure(figure, path)
  return drawn


def per_setting_values(grid: grids_lib.Grid, results: Sequence[results_lib.CellResult]
                       ) -> Dict[str, List[float]]:
  """Cell label → the pooled per-tag ROC-AUC values a box shows (for tests/reports)."""
  return {cell.label: [auc for r in results if r.status == results_lib.OK
                       and r.run.cell.label == cell.label
                       for auc in r.per_tag_auc().values()]
          for cell in grid.cells}
