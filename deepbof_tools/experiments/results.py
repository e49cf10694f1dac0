"""Results of a sweep: ``results.csv`` (one row per cell × seed) and ``results.md``.

A cell's numbers come from its model directory's ``metrics.json`` (``deepbof-train
--stages=...,evaluate``: the DNN's metrics at the top level, the per-tag logistic
regression on the same bag-of-features under ``baselines``). ``results.md`` gives,
per grid, the mean over seeds of every setting and — because the demo's test split is
small — the paired per-tag difference to the default setting (the authors'
configuration, present in every grid): the mean difference of per-tag ROC-AUC over
(tag, seed) pairs, its standard error and how many tags got better or worse.

The weight-cost grid is also reported as the paper compares it (Figs. 7–8): for each
family of settings (WC Inc, WC Dec, uniform, all 27) the member with the best mean
*validation* AUC-tag is selected and its *test* numbers are reported
(:func:`select_families`); selecting on test would flatter every family.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from deepbof_tf.model_dir import FINETUNE_DIR
from deepbof_tf.model_dir import FINETUNE_HISTORY_FILE as HISTORY_FILE
from deepbof_tools.experiments import grids as grids_lib
from deepbof_tools.experiments import plan as plan_lib
from deepbof_tools.experiments import runner as runner_lib

METRICS = ("auc_tag", "auc_clip", "p_at_3", "p_at_6", "p_at_9", "p_at_12", "p_at_15",
           "pr_auc")
METRIC_HEADERS = ("AUC-T", "AUC-C", "P@3", "P@6", "P@9", "P@12", "P@15", "PR-AUC")
BASELINE = "BoF + logistic regression"
BASELINE_COLUMNS = ("logreg_auc_tag", "logreg_pr_auc")
OK = "ok"
COLUMNS = ("grid", grids_lib.SETTING, *grids_lib.SETTINGS_COLUMNS, "seed", "status",
           "val_auc_tag", *METRICS, *BASELINE_COLUMNS, "num_test_clips", "num_tags",
           "model_dir")


@dataclasses.dataclass
class CellResult:
  """One cell × seed and what its run left.

  Args:
    run: the cell run of the plan.
    status: "ok", "failed", "blocked" (a parent stage failed), "stale" or "not run".
    metrics: its ``metrics.json`` if ok.
    val_auc_tag: the validation AUC-tag of the model kept by fine-tuning (the best
      epoch's), from ``finetune/history.json``; None if absent.
  """

  run: plan_lib.CellRun
  status: str
  metrics: Optional[Dict[str, Any]] = None
  val_auc_tag: Optional[float] = None

  def per_tag_auc(self) -> Dict[str, float]:
    """Tag → test ROC-AUC (tags with one class only left out)."""
    if not self.metrics:
      return {}
    out = {}
    for tag, values in self.metrics.get("per_tag", {}).items():
      value = values.get("roc_auc")
      if value is not None and math.isfinite(value):
        out[tag] = float(value)
    return out

  def row(self) -> Dict[str, Any]:
    row: Dict[str, Any] = {"grid": self.run.grid, grids_lib.SETTING: self.run.cell.label,
                           **self.run.cell.settings.as_row(), "seed": self.run.seed,
                           "status": self.status, "model_dir": self.run.model_dir,
                           "val_auc_tag": self.val_auc_tag}
    if self.metrics:
      for name in METRICS:
        row[name] = self.metrics.get(name)
      baseline = _baseline(self.metrics)
      row["logreg_auc_tag"] = baseline.get("auc_tag")
      row["logreg_pr_auc"] = baseline.get("pr_auc")
      row["num_test_clips"] = self.metrics.get("num_clips")
      row["num_tags"] = self.metrics.get("num_tags")
    return row


def _baseline(metrics: Dict[str, Any]) -> Dict[str, Any]:
  baselines = metrics.get("baselines") or {}
  if BASELINE in baselines:
    return baselines[BASELINE]
  return next(iter(baselines.values()), {})


def read_metrics(model_dir: str) -> Optional[Dict[str, Any]]:
  path = os.path.join(model_dir, "metrics.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_val_auc_tag(model_dir: str) -> Optional[float]:
  """The best validation AUC-tag that fine-tuning kept (None without a history)."""
  path = os.path.join(model_dir, FINETUNE_DIR, HISTORY_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    value = json.load(f).get("best_val_auc_tag")
  return float(value) if value is not None else None


def _ancestor_failed(plan: plan_lib.Plan, stamps: runner_lib.Stamps, name: str) -> bool:
  pending = list(plan.nodes[name].deps)
  while pending:
    node = plan.nodes[pending.pop()]
    if stamps.status(node) == runner_lib.FAILED:
      return True
    pending.extend(node.deps)
  return False


def collect(plan: plan_lib.Plan) -> List[CellResult]:
  """The result of every cell × seed of ``plan`` from the stamps and metrics on disk."""
  stamps = runner_lib.Stamps(plan.output_dir)
  results = []
  for run in plan.cells:
    node = plan.nodes[run.node]
    status = stamps.status(node)
    metrics = read_metrics(run.model_dir) if status == runner_lib.DONE else None
    if status == runner_lib.DONE:
      label = OK if metrics is not None else "no metrics.json"
    elif status == runner_lib.FAILED:
      label = "failed"
    elif _ancestor_failed(plan, stamps, run.node):
      label = "blocked"
    else:
      label = "stale" if status == runner_lib.STALE else "not run"
    val = read_val_auc_tag(run.model_dir) if metrics is not None else None
    results.append(CellResult(run, label, metrics, val))
  return results


def _csv_value(value: Any) -> Any:
  if isinstance(value, float):
    return "" if math.isnan(value) else f"{value:.6g}"
  return "" if value is None else value


def write_csv(results: Sequence[CellResult], path: str) -> None:
  """One row per cell × seed with ``COLUMNS``."""
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    for result in results:
      row = result.row()
      writer.writerow({c: _csv_value(row.get(c)) for c in COLUMNS})


def _mean(values: Sequence[float]) -> float:
  values = [v for v in values if v is not None and math.isfinite(v)]
  return sum(values) / len(values) if values else float("nan")


def _std(values: Sequence[float]) -> float:
  values = [v for v in values if v is not None and math.isfinite(v)]
  if len(values) < 2:
    return float("nan")
  mean = sum(values) / len(values)
  return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def paired_difference(results: Sequence[CellResult], reference: Sequence[CellResult]
                      ) -> Optional[Tuple[float, float, int, int, int]]:
  """Per-tag ROC-AUC of ``results`` minus ``reference``, paired by (seed, tag).

  Returns:
    (mean difference, its standard error, pairs, pairs better, pairs worse), or None
    without common (seed, tag) pairs.
  """
  ref = {(r.run.seed, tag): auc for r in reference for tag, auc in r.per_tag_auc().items()}
  diffs = [auc - ref[(r.run.seed, tag)] for r in results
           for tag, auc in r.per_tag_auc().items() if (r.run.seed, tag) in ref]
  if not diffs:
    return None
  mean = sum(diffs) / len(diffs)
  se = _std(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
  eps = 1e-12
  return (mean, se, len(diffs), sum(d > eps for d in diffs), sum(d < -eps for d in diffs))


def _fmt(value: float, spread: float = float("nan")) -> str:
  if value is None or not math.isfinite(value):
    return "—"
  return f"{value:.3f}" + (f" ± {spread:.3f}" if math.isfinite(spread) else "")


def summarize(grid: grids_lib.Grid, results: Sequence[CellResult]) -> str:
  """The markdown section of one grid: a table of the mean per setting, and for
  two-factor grids an AUC-T table with one column per value of the panel factor."""
  ok = [r for r in results if r.status == OK]
  seeds = sorted({r.run.seed for r in results})
  default = grids_lib.Settings()
  default_text = (f"{default.sampling}, {default.block_frames} frames, ρ "
                  f"{default.sparsity_target:g}, pool {default.pool_frames}, "
                  f"{default.num_hidden_layers} layers, {default.init}, weight costs "
                  f"{grids_lib.format_weight_costs(default.weight_costs)}")
  reference = [r for r in ok if r.run.cell.settings == default]
  by_cell = {cell.label: [r for r in ok if r.run.cell.label == cell.label]
             for cell in grid.cells}
  clips = sorted({r.metrics.get("num_clips") for r in ok})
  tags = sorted({r.metrics.get("num_tags") for r in ok})
  lines = [f"### `{grid.name}` ({grid.figure}): {grid.question}", ""]
  lines.append(
      f"Test split: {', '.join(map(str, clips)) or '?'} clips, "
      f"{', '.join(map(str, tags)) or '?'} tags; seeds {', '.join(map(str, seeds))}"
      f"{' (mean ± std over seeds)' if len(seeds) > 1 else ''}. "
      f"Δ: per-tag ROC-AUC minus the default setting's ({default_text}), mean ± "
      "standard error over (tag, seed) pairs; +/−: tags better/worse.")
  lines.append("")
  factor_names = [f for f in grid.factors]
  header = [*factor_names, "runs", "val AUC-T", "AUC-T", "Δ AUC-T", "+/−",
            *METRIC_HEADERS[1:], "BoF+LR AUC-T"]
  lines.append("| " + " | ".join(header) + " |")
  lines.append("|" + "---|" * len(header))
  for cell in grid.cells:
    cell_results = by_cell[cell.label]
    expected = sum(1 for r in results if r.run.cell.label == cell.label)
    values = [grids_lib.factor_value(cell, f) for f in factor_names]
    metric = {name: [r.metrics.get(name) for r in cell_results] for name in METRICS}
    auc_t = _fmt(_mean(metric["auc_tag"]), _std(metric["auc_tag"]))
    diff = paired_difference(cell_results, reference) if reference else None
    if cell.settings == default and cell_results:
      delta, wins = "(reference)", ""
    elif diff:
      delta, wins = f"{diff[0]:+.3f} ± {diff[1]:.3f}", f"{diff[3]}/{diff[4]}"
    else:
      delta, wins = "—", ""
    others = [_fmt(_mean(metric[name])) for name in METRICS[1:]]
    baseline = _fmt(_mean([_baseline(r.metrics).get("auc_tag") for r in cell_results]))
    val = _fmt(_mean([r.val_auc_tag for r in cell_results]))
    lines.append("| " + " | ".join(
        [*map(str, values), f"{len(cell_results)}/{expected}", val, auc_t, delta, wins,
         *others, baseline]) + " |")
  if grid.panel_factor:
    lines += ["", _pivot(grid, by_cell)]
  if grid.name == "weight_cost":
    lines += ["", _families_table(select_families(ok, grids_lib.WEIGHT_COST_FAMILIES),
                                  reference)]
  missing = [r for r in results if r.status != OK]
  if missing:
    lines += ["", "Not in the table: " + "; ".join(
        f"{r.run.cell.label} seed {r.run.seed} ({r.status})" for r in missing)]
  return "\n".join(lines)


@dataclasses.dataclass
class FamilySelection:
  """The member of a family of settings that validation picks, and its test numbers.

  Args:
    family: the family's name ("WC Inc", …).
    members: settings in the family.
    members_run: how many of them have results.
    chosen: label of the member with the best mean validation AUC-tag (None: none run).
    val_auc_tag: that member's mean validation AUC-tag over seeds.
    results: that member's results (one per seed).
  """

  family: str
  members: int
  members_run: int
  chosen: Optional[str]
  val_auc_tag: float
  results: List[CellResult]


def select_families(results: Sequence[CellResult],
                    families: Dict[str, Sequence[Tuple[float, ...]]]
                    ) -> List[FamilySelection]:
  """For each family of weight costs, its member with the best mean validation AUC-tag.

  A member counts only when all of its seeds ran (so every member is judged on the same
  seeds); ties go to the member listed first.

  Args:
    results: the grid's results (``ok`` ones are used).
    families: family name → the weight-cost tuples in it.
  """
  ok = [r for r in results if r.status == OK and r.val_auc_tag is not None]
  seeds = {r.run.seed for r in results}
  out = []
  for family, members in families.items():
    best: Optional[Tuple[float, List[CellResult]]] = None
    run = 0
    for costs in members:
      member = [r for r in ok if tuple(r.run.cell.settings.weight_costs) == tuple(costs)]
      if not member or {r.run.seed for r in member} != seeds:
        continue
      run += 1
      score = _mean([r.val_auc_tag for r in member])
      if best is None or score > best[0]:
        best = (score, member)
    out.append(FamilySelection(
        family, len(members), run, best[1][0].run.cell.label if best else None,
        best[0] if best else float("nan"), best[1] if best else []))
  return out


def _families_table(selections: Sequence[FamilySelection],
                    reference: Sequence[CellResult]) -> str:
  lines = ["The paper's comparison: the member of each family with the best mean "
           "validation AUC-tag, scored on test (Δ as above, against the default).", "",
           "| family | members run | selected | val AUC-T | test AUC-T | Δ AUC-T | +/− | "
           "PR-AUC |", "|---|---|---|---|---|---|---|---|"]
  for s in selections:
    auc = [r.metrics.get("auc_tag") for r in s.results]
    diff = paired_difference(s.results, reference) if s.results and reference else None
    delta = f"{diff[0]:+.3f} ± {diff[1]:.3f}" if diff else "—"
    wins = f"{diff[3]}/{diff[4]}" if diff else ""
    pr = _fmt(_mean([r.metrics.get("pr_auc") for r in s.results]))
    lines.append(f"| {s.family} | {s.members_run}/{s.members} | {s.chosen or '—'} | "
                 f"{_fmt(s.val_auc_tag)} | {_fmt(_mean(auc), _std(auc))} | {delta} | "
                 f"{wins} | {pr} |")
  return "\n".join(lines)


def _pivot(grid: grids_lib.Grid, by_cell: Dict[str, List[CellResult]]) -> str:
  """Mean AUC-T with x-factor rows and panel-factor columns."""
  rows: List[Any] = []
  columns: List[Any] = []
  table: Dict[Tuple[Any, Any], str] = {}
  for cell in grid.cells:
    x = grids_lib.factor_value(cell, grid.x_factor)
    panel = grids_lib.factor_value(cell, grid.panel_factor)
    if x not in rows:
      rows.append(x)
    if panel not in columns:
      columns.append(panel)
    table[(x, panel)] = _fmt(_mean([r.metrics.get("auc_tag") for r in by_cell[cell.label]]))
  lines = [f"AUC-T by {grid.x_factor} (rows) and {grid.panel_factor} (columns):", "",
           "| " + " | ".join([grid.x_factor, *map(str, columns)]) + " |",
           "|" + "---|" * (len(columns) + 1)]
  for x in rows:
    lines.append("| " + " | ".join([str(x), *(table.get((x, c), "") for c in columns)])
                 + " |")
  return "\n".join(lines)


def write_markdown(sections: Sequence[str], path: str, title: str) -> None:
  with open(path, "w") as f:
    f.write(f"## {title}\n\n" + "\n\n".join(sections) + "\n")
