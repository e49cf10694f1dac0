"""``deepbof-experiment``: the paper's experiments as sweeps over the pipeline.

  deepbof-experiment --grid=NAME --output_dir=DIR [--scale=demo|paper]
      [--manifest=M --manifest_format=csv|mtt --audio_root=A] [--seeds=0,1,2]
      [--force] [--dry_run]

Grids (``deepbof_tools.experiments.grids``):
  blocks_sampling   Fig. 4    block frames {2,4,6,8,10} × sampling {onset, random}
  layers_init       Fig. 5    hidden layers {1,2,3} × init {pretrained, random}
  sparsity_pooling  Fig. 6    sparsity {0.007,0.01,0.02,0.03} × pooling {11,22,43,86,172}
  weight_cost       Figs. 7–8 all 27 per-layer weight costs of the 3-layer DNN; the best
                              (by validation) of WC Inc, WC Dec, uniform and all 27

The grid becomes a DAG of the pipeline's own commands that shares stages: one
``deepbof-preprocess`` per (sampling, block frames), one learned local-feature model
per (dataset, sparsity), one encode per (local model, pooling), and pretrain +
finetune + evaluate per cell; ``--seeds`` repeats every cell with each seed (every
stage seeded). Grids run into the same --output_dir share their common nodes.
``--dry_run`` prints the plan and the runs per stage.

``--scale=demo`` (default) builds (once) the demo corpus in DIR/corpus, unless a
--manifest is given, and uses the ``demo`` preset; ``--scale=paper`` uses the
``paper`` preset (the defaults, the authors' configuration) and needs --manifest and
--audio_root (e.g. MagnaTagATune's annotations_final.csv with --manifest_format=mtt).

Every finished node leaves a stamp in DIR/.stamps (a rerun skips it unless --force)
and its log in DIR/logs/; a failing node is recorded (DIR/failures.json: command,
exit code, log) and the sweep goes on with the cells that do not depend on it.
Outputs (over every grid run into DIR): DIR/results.csv (one row per cell × seed),
DIR/results.md (mean per setting) and DIR/<grid>.png (box plots of per-tag
ROC-AUC). The exit code is 1 if a node of this grid failed.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Sequence

from absl import app, flags, logging

from deepbof_tf import cli
from deepbof_tf.io_utils import write_json
from deepbof_tools.experiments import figures
from deepbof_tools.experiments import findings as findings_lib
from deepbof_tools.experiments import grids as grids_lib
from deepbof_tools.experiments import plan as plan_lib
from deepbof_tools.experiments import results as results_lib
from deepbof_tools.experiments import runner as runner_lib

FLAGS = flags.FLAGS
REGISTRY_FILE = "sweeps.json"


def _define_flags() -> None:
  flags.DEFINE_enum("grid", None, list(grids_lib.GRIDS), "The experiment to run.")
  flags.DEFINE_string("output_dir", None, "Directory of the sweep (shared by grids).")
  flags.DEFINE_enum("scale", "demo", list(plan_lib.SCALES), "demo: demo corpus and "
                    "preset; paper: the paper preset on --manifest.")
  flags.DEFINE_string("manifest", None, "Manifest for deepbof-preprocess (default at "
                      "demo scale: DIR/corpus, built by deepbof-make-demo-corpus).")
  flags.DEFINE_enum("manifest_format", "csv", ["csv", "mtt"], "Manifest format.")
  flags.DEFINE_string("audio_root", "", "Directory of the manifest's audio files.")
  flags.DEFINE_list("seeds", ["0"], "Seeds; every cell runs once per seed.")
  flags.DEFINE_bool("force", False, "Rerun every node of the grid, finished or not.")
  flags.DEFINE_bool("dry_run", False, "Print the plan and the runs per stage; run nothing.")
  flags.DEFINE_integer("num_workers", 2, "Beam worker processes (and corpus renderers).")
  flags.DEFINE_multi_string("preprocess_arg", [], "Extra flag for every "
                            "deepbof-preprocess (repeatable), e.g. --top_n_tags=50.")
  flags.DEFINE_multi_string("train_arg", [], "Extra flag for every deepbof-train "
                            "(repeatable), e.g. --set=finetune.batch_size=64.")
  flags.mark_flags_as_required(["grid", "output_dir"])


def _sweep_args() -> Dict[str, Any]:
  """The flags that define a grid's plan, as stored in DIR/sweeps.json."""
  manifest = os.path.abspath(FLAGS.manifest) if FLAGS.manifest else None
  return {"scale": FLAGS.scale, "seeds": [int(s) for s in FLAGS.seeds],
          "manifest": manifest, "manifest_format": FLAGS.manifest_format,
          "audio_root": os.path.abspath(FLAGS.audio_root) if FLAGS.audio_root else "",
          "num_workers": FLAGS.num_workers, "preprocess_args": list(FLAGS.preprocess_arg),
          "train_args": list(FLAGS.train_arg)}


def make_plan(grid_name: str, output_dir: str, args: Dict[str, Any]) -> plan_lib.Plan:
  """The plan of ``grid_name`` in ``output_dir`` for stored sweep ``args``."""
  source = plan_lib.DataSource(args["manifest"], args["manifest_format"],
                               args["audio_root"])
  return plan_lib.plan_sweep(
      grids_lib.grid(grid_name), output_dir, args["scale"], args["seeds"], source,
      args["num_workers"], args["preprocess_args"], args["train_args"])


def read_registry(output_dir: str) -> Dict[str, Dict[str, Any]]:
  path = os.path.join(output_dir, REGISTRY_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def register(output_dir: str, grid_name: str, args: Dict[str, Any]) -> None:
  """Records the grid's flags; refuses a scale or data source other grids here differ in.

  Grids in one directory share nodes, so they must agree on what the shared nodes
  compute (the seeds may differ).
  """
  registry = read_registry(output_dir)
  shared = ("scale", "manifest", "manifest_format", "audio_root", "num_workers",
            "preprocess_args", "train_args")
  for other, other_args in registry.items():
    if other == grid_name:
      continue
    diff = [k for k in shared if other_args.get(k) != args.get(k)]
    if diff:
      raise app.UsageError(
          f"{output_dir} holds grid {other} run with other {', '.join(diff)} "
          f"({', '.join(f'{k}={other_args.get(k)!r}' for k in diff)}); grids in one "
          "--output_dir share stages, so use another --output_dir")
  registry[grid_name] = args
  os.makedirs(output_dir, exist_ok=True)
  write_json(os.path.join(output_dir, REGISTRY_FILE), registry)


def write_reports(output_dir: str) -> Dict[str, List[results_lib.CellResult]]:
  """results.csv, results.md, findings.md, failures.json and <grid>.png over every grid."""
  registry = read_registry(output_dir)
  collected: Dict[str, List[results_lib.CellResult]] = {}
  sections, failures = [], []
  for grid_name in grids_lib.GRIDS:  # the order of the paper's figures
    if grid_name not in registry:
      continue
    plan = make_plan(grid_name, output_dir, registry[grid_name])
    collected[grid_name] = results_lib.collect(plan)
    sections.append(results_lib.summarize(plan.grid, collected[grid_name]))
    if any(r.status == results_lib.OK for r in collected[grid_name]):
      figures.plot_grid(plan.grid, collected[grid_name],
                        os.path.join(output_dir, f"{grid_name}.png"))
    stamps = runner_lib.Stamps(output_dir)
    for node in plan.nodes.values():
      stamp = stamps.read(node.name)
      if stamps.status(node) == runner_lib.FAILED and stamp:
        failures.append({"node": node.name, "stage": node.stage,
                         "command": " ".join(node.command),
                         "exit_code": stamp.get("exit_code"), "log": stamp.get("log")})
  results_lib.write_csv([r for rs in collected.values() for r in rs],
                        os.path.join(output_dir, "results.csv"))
  scale = {args["scale"] for args in registry.values()}
  results_lib.write_markdown(sections, os.path.join(output_dir, "results.md"),
                             f"Experiments ({', '.join(sorted(scale))} scale)")
  findings_lib.write_markdown(collected, os.path.join(output_dir, "findings.md"))
  unique = {f["node"]: f for f in failures}
  with open(os.path.join(output_dir, "failures.json"), "w") as f:
    json.dump(list(unique.values()), f, indent=2)
  return collected


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  output_dir = os.path.abspath(FLAGS.output_dir)
  try:
    args = _sweep_args()  # --seeds=a: a usage error, not a traceback
    plan = make_plan(FLAGS.grid, output_dir, args)
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  if FLAGS.dry_run:
    stamps = runner_lib.Stamps(output_dir)
    status = {name: stamps.status(node) for name, node in plan.nodes.items()}
    print(plan_lib.format_plan(plan, status=status))
    return 0
  register(output_dir, FLAGS.grid, args)
  runner = runner_lib.Runner(plan, force=FLAGS.force)
  runner.run()
  collected = write_reports(output_dir)
  ok = sum(1 for r in collected[FLAGS.grid] if r.status == results_lib.OK)
  print("\n" + results_lib.summarize(plan.grid, collected[FLAGS.grid]))
  print(f"\n[experiment] {ok}/{len(plan.cells)} models of {FLAGS.grid} evaluated. "
        f"Results: {os.path.join(output_dir, 'results.csv')}, "
        f"{os.path.join(output_dir, 'results.md')}, "
        f"{os.path.join(output_dir, FLAGS.grid + '.png')}")
  if runner.failures:
    print(f"[experiment] {len(runner.failures)} node(s) did not finish "
          f"(details in {os.path.join(output_dir, 'failures.json')}):")
    for failure in runner.failures:
      extra = (f"exit code {failure.exit_code}, log {failure.log}"
               if failure.status == runner_lib.FAILED else failure.reason)
      print(f"  {failure.status}: {failure.node} ({extra})")
    return 1
  return 0


def run() -> None:
  """Console-script entry point ``deepbof-experiment``."""
  logging.set_verbosity(logging.WARNING)
  cli.run_console_script(main, _define_flags, __doc__)


if __name__ == "__main__":
  run()
