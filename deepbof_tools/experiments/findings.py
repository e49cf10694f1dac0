"""The paper's findings, each measured on a sweep's results with a verdict.

A finding compares two settings (or two validation-selected members of families of
settings) that the paper ranks. For each, :func:`evaluate` gives

* the effect: test AUC-T of the first minus the second, per seed, as mean ± std over
  the seeds both have (a single seed has no spread);
* the paired per-tag difference: per-tag test ROC-AUC of the first minus the second
  over every (seed, tag) pair, its mean ± standard error, and tags better / worse;
* a verdict: "within noise" when the paired mean is within two standard errors of 0
  (or when a seed spread exists and is larger than the effect), otherwise "holds" when
  its sign is the paper's and "does not hold" when it is not. A claim of *no*
  difference (pretraining a 1-layer network) holds when the difference is within noise.

``findings.md`` of a sweep (``deepbof-experiment`` writes it) lists every finding whose
cells have run; the others are named as not run yet.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from deepbof_tools.experiments import grids as grids_lib
from deepbof_tools.experiments import results as results_lib

CellResult = results_lib.CellResult
Selector = Callable[[Sequence[CellResult]], List[CellResult]]
HOLDS, DOES_NOT_HOLD, WITHIN_NOISE = "holds", "does not hold", "within noise"


@dataclasses.dataclass(frozen=True)
class Finding:
  """A claim of the paper: setting ``better`` beats setting ``worse``.

  Args:
    name: a short name.
    figure: the paper's figure.
    claim: the paper's claim in words.
    grid: the grid whose results hold both settings.
    better: picks the results (one per seed) of the setting the paper finds better.
    worse: likewise for the other one.
    better_label: how the table names the first setting.
    worse_label: likewise.
    expect_difference: False for a claim of *no* difference: it holds when the
      measured difference is within noise.
  """

  name: str
  figure: str
  claim: str
  grid: str
  better: Selector
  worse: Selector
  better_label: str
  worse_label: str
  expect_difference: bool = True


@dataclasses.dataclass
class Measured:
  """A finding measured on results (see the module docstring)."""

  finding: Finding
  seeds: List[int]
  effect: float
  effect_std: float
  paired: Optional[Tuple[float, float, int, int, int]]
  verdict: str
  better_chosen: str = ""
  worse_chosen: str = ""


def _cell(**settings) -> Selector:
  """The results of the one cell whose settings have these values."""
  def select(results):
    return [r for r in results if r.status == results_lib.OK and all(
        getattr(r.run.cell.settings, k) == v for k, v in settings.items())]
  return select


def _family(name: str) -> Selector:
  """The results of the family member with the best mean validation AUC-tag.

  Nothing until every member has run: a selection among some members is not the
  paper's comparison.
  """
  def select(results):
    chosen = results_lib.select_families(
        results, {name: grids_lib.WEIGHT_COST_FAMILIES[name]})[0]
    return chosen.results if chosen.members_run == chosen.members else []
  return select


def _spread(values: Sequence[float]) -> float:
  if len(values) < 2:
    return float("nan")
  mean = sum(values) / len(values)
  return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def verdict(effect: float, effect_std: float,
            paired: Optional[Tuple[float, float, int, int, int]]) -> str:
  """holds / does not hold / within noise, from the paired test and the seed spread."""
  if paired is None:
    return WITHIN_NOISE
  mean, se = paired[0], paired[1]
  if not math.isfinite(se) or abs(mean) <= 2 * se:
    return WITHIN_NOISE
  if math.isfinite(effect_std) and effect_std >= abs(effect):
    return WITHIN_NOISE
  return HOLDS if mean > 0 else DOES_NOT_HOLD


def measure(finding: Finding, results: Sequence[CellResult]) -> Optional[Measured]:
  """``finding`` on ``results`` (None when either side has no result yet)."""
  better, worse = finding.better(results), finding.worse(results)
  seeds = sorted({r.run.seed for r in better} & {r.run.seed for r in worse})
  if not seeds:
    return None
  better = [r for r in better if r.run.seed in seeds]
  worse = [r for r in worse if r.run.seed in seeds]
  by_seed = {r.run.seed: r.metrics["auc_tag"] for r in worse}
  effects = [r.metrics["auc_tag"] - by_seed[r.run.seed] for r in better]
  effect = sum(effects) / len(effects)
  effect_std = _spread(effects)
  paired = results_lib.paired_difference(better, worse)
  result = verdict(effect, effect_std, paired)
  if not finding.expect_difference:
    result = HOLDS if result == WITHIN_NOISE else DOES_NOT_HOLD
  return Measured(finding, seeds, effect, effect_std, paired, result,
                  better[0].run.cell.label, worse[0].run.cell.label)


def _findings() -> List[Finding]:
  s = grids_lib.Settings()
  out = []
  for frames in grids_lib.BLOCK_FRAMES:
    out.append(Finding(
        f"onset vs random sampling, {frames}-frame blocks", "Fig. 4",
        "onset-based sampling of the feature-learning blocks beats random sampling",
        "blocks_sampling", _cell(sampling="onset", block_frames=frames),
        _cell(sampling="random", block_frames=frames), f"onset, {frames} frames",
        f"random, {frames} frames"))
  for frames in (2, 4, 6, 10):
    out.append(Finding(
        f"8-frame vs {frames}-frame blocks (onset)", "Fig. 4",
        "8-frame blocks are the best block size", "blocks_sampling",
        _cell(sampling="onset", block_frames=8),
        _cell(sampling="onset", block_frames=frames), "8 frames", f"{frames} frames"))
  for layers in (2, 3):
    out.append(Finding(
        f"pretrained vs random init, {layers} hidden layers", "Fig. 5",
        "RBM pretraining helps deeper networks (2–3 hidden layers)", "layers_init",
        _cell(num_hidden_layers=layers, init="pretrained"),
        _cell(num_hidden_layers=layers, init="random"), "pretrained", "random init"))
  out.append(Finding(
      "pretrained vs random init, 1 hidden layer", "Fig. 5",
      "pretraining does not matter for 1 hidden layer (no difference expected)",
      "layers_init", _cell(num_hidden_layers=1, init="pretrained"),
      _cell(num_hidden_layers=1, init="random"), "pretrained", "random init",
      expect_difference=False))
  for layers in (2, 3):
    out.append(Finding(
        f"{layers} vs 1 hidden layer, pretrained", "Fig. 5",
        "deeper pretrained networks tag better", "layers_init",
        _cell(num_hidden_layers=layers, init="pretrained"),
        _cell(num_hidden_layers=1, init="pretrained"), f"{layers} layers", "1 layer"))
  rho = s.sparsity_target
  rate = grids_lib.FRAME_RATE
  for pool, other in ((43, 11), (86, 11), (43, 172), (86, 172)):
    out.append(Finding(
        f"pooling {pool} vs {other} frames (ρ {rho:g})", "Fig. 6",
        "pooling over 1–2 s beats shorter and longer windows", "sparsity_pooling",
        _cell(sparsity_target=rho, pool_frames=pool),
        _cell(sparsity_target=rho, pool_frames=other),
        f"pool {pool / rate:.2g} s", f"pool {other / rate:.2g} s"))
  for other in (0.007, 0.03):
    out.append(Finding(
        f"sparsity 0.02 vs {other:g} (pool {s.pool_frames})", "Fig. 6",
        "a sparsity target of 0.02 is best", "sparsity_pooling",
        _cell(sparsity_target=0.02, pool_frames=s.pool_frames),
        _cell(sparsity_target=other, pool_frames=s.pool_frames), "ρ 0.02", f"ρ {other:g}"))
  for other in ("WC Dec", "uniform", "all"):
    out.append(Finding(
        f"best WC Inc vs best {other}", "Figs. 7–8",
        "weight costs increasing upward (WC Inc) are best", "weight_cost",
        _family("WC Inc"), _family(other), "best WC Inc", f"best {other}"))
  return out


FINDINGS: List[Finding] = _findings()


def _fmt(value: float) -> str:
  return f"{value:+.3f}" if math.isfinite(value) else "—"


def write_markdown(results_by_grid: Dict[str, Sequence[CellResult]], path: str) -> None:
  """``findings.md``: one row per finding that has results, then those still to run."""
  lines = ["## The paper's findings at demo scale", "",
           "Effect: test AUC-T of the first setting minus the second, mean ± std over "
           "the seeds. Paired Δ: per-tag test ROC-AUC difference over (seed, tag) "
           "pairs, mean ± standard error; +/−: pairs better/worse. Verdict: within "
           "noise when |Δ| ≤ 2 SE or the seed spread exceeds the effect.", "",
           "| figure | finding | compared | seeds | effect (AUC-T) | paired Δ | +/− | "
           "verdict |", "|---|---|---|---|---|---|---|---|"]
  missing = []
  for finding in FINDINGS:
    measured = measure(finding, results_by_grid.get(finding.grid, []))
    if measured is None:
      missing.append(finding.name)
      continue
    effect = _fmt(measured.effect)
    if math.isfinite(measured.effect_std):
      effect += f" ± {measured.effect_std:.3f}"
    if measured.paired:
      mean, se, _, up, down = measured.paired
      paired, wins = f"{mean:+.3f} ± {se:.3f}", f"{up}/{down}"
    else:
      paired, wins = "—", ""
    compared = f"{measured.better_chosen} vs {measured.worse_chosen}"
    lines.append(f"| {finding.figure} | {finding.claim} | {compared} | "
                 f"{len(measured.seeds)} | {effect} | {paired} | {wins} | "
                 f"{measured.verdict} |")
  if missing:
    lines += ["", "Not run yet: " + "; ".join(missing) + "."]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
