"""Tabulates pretraining_check.sh's runs: docs/experiments/pretraining/results.{csv,md}.

Usage: python reference/authors/collect.py OUT [--docs=docs/experiments/pretraining]
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import platform
import re
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))
FIELDS = ("implementation", "variant", "budget", "init", "num_layers", "seed", "epochs",
          "best_epoch", "valid_auc_tag", "test_auc_tag", "logreg_test_auc_tag")


def ours(out: str):
  for path in sorted(glob.glob(os.path.join(out, "runs", "ours-*", "metrics.json"))):
    run = os.path.dirname(path)
    budget, init, layers, seed, variant = re.match(
        r"ours-(\w+?)-(\w+?)-(\d)l-seed(\d+)(?:-([\w.]+))?$", os.path.basename(run)).groups()
    metrics = json.load(open(path))
    history = json.load(open(os.path.join(run, "finetune", "history.json")))
    logreg = next(iter(metrics.get("baselines", {}).values()), {})
    yield {"implementation": "deepbof", "variant": variant or "authors' conventions",
           "budget": budget, "init": init,
           "num_layers": int(layers), "seed": int(seed),
           "epochs": len(history["history"]["val_auc_tag"]),
           "best_epoch": history["best_epoch"] + 1,
           "valid_auc_tag": history["best_val_auc_tag"],
           "test_auc_tag": metrics["auc_tag"],
           "logreg_test_auc_tag": logreg.get("auc_tag")}


def authors(out: str):
  path = os.path.join(out, "authors.json")
  for run in json.load(open(path)) if os.path.exists(path) else []:
    yield {"implementation": "authors (Octave)", "variant": "their code",
           "budget": "paper", "init": run["init"],
           "num_layers": run["num_layers"], "seed": run["seed"], "epochs": run["epochs"],
           "best_epoch": None, "valid_auc_tag": run["valid_auc_tag"],
           "test_auc_tag": run["test_auc_tag"], "logreg_test_auc_tag": None}


def _mean(values):
  values = [v for v in values if v is not None]
  if not values:
    return "—"
  if len(values) == 1:
    return f"{values[0]:.3f}"
  return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out")
  parser.add_argument("--docs", default=os.path.join(HERE, "..", "..", "docs",
                                                     "experiments", "pretraining"))
  args = parser.parse_args()
  rows = list(ours(args.out)) + list(authors(args.out))
  os.makedirs(args.docs, exist_ok=True)
  with open(os.path.join(args.docs, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, FIELDS)
    writer.writeheader()
    writer.writerows(rows)
  groups = {}
  for row in rows:
    groups.setdefault((row["implementation"], row["variant"], row["budget"],
                       row["num_layers"]), {}).setdefault(row["init"], []).append(row)
  lines = ["| implementation | conventions | budget | hidden layers | pretrained | "
           "random init | pretrained − random (paired by seed) | seeds | best epochs | "
           "logreg |", "|---|---|---|---|---|---|---|---|---|---|"]
  for (impl, variant, budget, layers), inits in sorted(groups.items()):
    pre, rnd = inits.get("pretrained", []), inits.get("random", [])
    by_seed = {r["seed"]: r["test_auc_tag"] for r in rnd}
    deltas = [r["test_auc_tag"] - by_seed[r["seed"]] for r in pre if r["seed"] in by_seed]
    delta = _mean(deltas)
    if deltas and delta != "—" and not delta.startswith("-"):
      delta = "+" + delta
    best = sorted(f"{r['best_epoch']}/{r['epochs']}" for r in pre + rnd if r["best_epoch"])
    label = {"paper": "100 epochs", "default": "11,500 updates"}[budget]
    lines.append(f"| {impl} | {variant} | {label} | {layers} | {_mean([r['test_auc_tag'] for r in pre])}"
                 f" | {_mean([r['test_auc_tag'] for r in rnd])} | {delta} | "
                 f"{len(pre)}/{len(rnd)} | {', '.join(best) or '—'} | "
                 f"{_mean([r['logreg_test_auc_tag'] for r in pre + rnd])} |")
  reference = {(r["budget"], r["init"], r["seed"]): r["test_auc_tag"] for r in rows
               if r["implementation"] == "deepbof" and r["num_layers"] == 3
               and r["variant"] == "authors' conventions"}
  effects = ["", "Each option against the authors' conventions (3 hidden layers, same budget, "
             "init, seed and features): test AUC-T of the option − the reference run. "
             "wc_*: the pretraining weight costs per layer, bottom first (reference: "
             "increasing, 0.001/0.01/0.1).", "",
             "| option | budget | init | seeds | option | authors' conventions | effect |",
             "|---|---|---|---|---|---|---|"]
  for row_key in sorted({(r["variant"], r["budget"], r["init"]) for r in rows
                         if r["implementation"] == "deepbof"
                         and r["variant"] != "authors' conventions"}):
    runs = [r for r in rows if (r["variant"], r["budget"], r["init"]) == row_key
            and (r["budget"], r["init"], r["seed"]) in reference]
    if not runs:
      continue
    base = [reference[(r["budget"], r["init"], r["seed"])] for r in runs]
    deltas = [r["test_auc_tag"] - b for r, b in zip(runs, base)]
    effect = _mean(deltas)
    label = {"paper": "100 epochs", "default": "11,500 updates"}[row_key[1]]
    effects.append(f"| {row_key[0]} | {label} | {row_key[2]} | "
                   f"{','.join(str(r['seed']) for r in runs)} | "
                   f"{_mean([r['test_auc_tag'] for r in runs])} | {_mean(base)} | "
                   f"{'+' if not effect.startswith('-') else ''}{effect} |")
  lines += effects
  with open(os.path.join(args.docs, "results.md"), "w") as f:
    f.write("Test AUC-T, mean ± std over seeds (generated by reference/authors/collect.py "
            f"on {platform.processor() or platform.machine()}).\n\n" + "\n".join(lines)
            + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
