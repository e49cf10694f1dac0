"""``deepbof-demo``: the whole chain on the embedded demo corpus.

Runs, as a user would, each stage's own command line in a subprocess (so this module
imports none of ``beam_jobs``, ``trainer`` or ``serving``):

1. ``deepbof-make-demo-corpus``: real scores from ``music21.corpus`` rendered into a
   tagged, MagnaTagATune-like dataset (mixed mp3/ogg/flac/wav, mixed sample rates);
2. ``deepbof-preprocess``: the Beam job on DirectRunner (2 worker processes) writing
   clip and block TFRecords;
3. ``deepbof-train``: learn local features (PCA + sparse RBM) → encode
   (bag-of-features) → pretrain (stacked ReLU RBMs) → fine-tune (DNN);
4. ``deepbof-evaluate`` on the test split (the paper's table + PR-AUC);
5. ``deepbof-baseline``: MFCC + logistic regression on the same split;
6. ``deepbof-export`` (a TF Serving SavedModel) and ``deepbof-tag`` on three test clips.

The ``demo`` preset (``deepbof_tf.config.PRESETS``) scales the block budget to the
corpus and gives fine-tuning the paper's number of updates (2,875 short epochs here);
every other value is the paper's. The chain took 28.5 minutes on 2 cores with other
jobs sharing them (docs/benchmarks.md). The steps are a linear chain on the experiments' runner
(``deepbof_tools.experiments.runner``) and their command lines are the ones the sweeps
use (``deepbof_tools.experiments.commands``). Every finished step leaves a stamp holding
its command line in ``output_dir/.stamps``; a rerun with the same flags skips it, saying
so, and so does every step after it unless an earlier one reran (``--force`` reruns
everything). Each step's standard output (tables, tags) is shown and kept in
``output_dir/logs/<step>.out`` (shown again when the step is skipped), its log
(absl, Beam and TensorFlow logging) goes to ``output_dir/logs/<step>.log``, stage
headers and a progress line every few seconds are echoed, and the log's tail is
printed if the step fails.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from typing import Any, Dict, List, Sequence

from absl import app, flags, logging

from deepbof_tf import cli
from deepbof_tf import config as config_lib
from deepbof_tf.config import SamplingConfig
from deepbof_tf.data.manifests import DEFAULT_TOP_N_TAGS
from deepbof_tools.corpus_config import DemoCorpusConfig
from deepbof_tools.experiments import commands
from deepbof_tools.experiments import plan as plan_lib
from deepbof_tools.experiments import runner as runner_lib

FLAGS = flags.FLAGS

# Lines of a step's log worth showing as they come (stage headers, per-stage results).
BASELINE_FILE = "baseline_mfcc.json"
ECHO = re.compile(r"=== stage |^stage \S+ done|PCA of \d+ blocks|wrote \d+ clips")


_CORPUS = DemoCorpusConfig()  # flag defaults come from the corpus config


def _define_flags() -> None:
  flags.DEFINE_string("output_dir", "demo_out", "Where the corpus, dataset, model and "
                      "export go.")
  flags.DEFINE_enum("preset", "demo", sorted(config_lib.PRESETS), "Scaling of the "
                    "defaults (deepbof_tf.config.PRESETS).")
  flags.DEFINE_integer("num_clips", _CORPUS.num_clips, "Clips in the demo corpus.")
  flags.DEFINE_float("clip_seconds", _CORPUS.clip_seconds, "Seconds per demo clip.")
  flags.DEFINE_integer("seed", 0, "Seed of the corpus and of every training stage.")
  flags.DEFINE_integer("num_workers", 2, "Processes for corpus rendering and Beam.")
  flags.DEFINE_integer("num_tag_clips", 3, "Test clips tagged with the exported model.")
  flags.DEFINE_bool("force", False, "Rerun every step even if its stamp matches.")


def _test_clips(corpus_dir: str, count: int) -> List[str]:
  """The first ``count`` test-split audio files of the corpus (its CSV manifest)."""
  files = []
  with open(os.path.join(corpus_dir, "manifest.csv"), newline="") as f:
    for row in csv.DictReader(f):
      if row["split"] == "test":
        files.append(os.path.join(corpus_dir, "audio", row["path"]))
      if len(files) >= count:
        break
  return files


def _print_true_tags(corpus_dir: str, files: Sequence[str]) -> None:
  """The ground truth of the tagged files, to read next to deepbof-tag's output."""
  truth = {}
  with open(os.path.join(corpus_dir, "manifest.csv"), newline="") as f:
    for row in csv.DictReader(f):
      truth[os.path.join(corpus_dir, "audio", row["path"])] = row["tags"].replace(";", " ")
  print("[demo] their true tags:")
  for path in files:
    print(f"{path}\t{truth.get(path, '?')}")


_COLUMNS = ("auc_tag", "auc_clip", "p_at_3", "p_at_6", "p_at_9", "p_at_12", "p_at_15",
            "pr_auc")
_HEADER = ("AUC-T", "AUC-C", "P@3", "P@6", "P@9", "P@12", "P@15", "PR-AUC")


def _print_summary(model_dir: str, baseline: Dict[str, Any]) -> None:
  with open(os.path.join(model_dir, "metrics.json")) as f:
    metrics = json.load(f)
  dnn = (metrics.get("config") or {}).get("dnn") or {}
  rows = [(f"Deep-BoF ({dnn.get('num_hidden_layers', '?')} x {dnn.get('hidden_units', '?')}"
           f", {dnn.get('init', '?')})", metrics)]
  rows += [(f"{name} (baseline)", values)
           for name, values in metrics.get("baselines", {}).items()]
  rows.append(("MFCC stats + logistic regression", baseline))
  print(f"\n[demo] Test split of the demo corpus ({metrics.get('num_clips', '?')} clips, "
        f"{metrics.get('num_tags', '?')} tags)")
  print(f"{'method':<40}" + "".join(f"{h:>8}" for h in _HEADER))
  for name, values in rows:
    print(f"{name:<40}" + "".join(
        f"{values[c]:8.3f}" if isinstance(values.get(c), (int, float)) else f"{'—':>8}"
        for c in _COLUMNS))
  ours, mfcc = metrics.get("auc_tag"), baseline.get("auc_tag")
  if isinstance(ours, (int, float)) and isinstance(mfcc, (int, float)):
    verdict = "above" if ours > mfcc else "NOT above"
    print(f"[demo] Deep-BoF test AUC-T {ours:.3f} is {verdict} the MFCC baseline's "
          f"{mfcc:.3f} ({ours - mfcc:+.3f})")


def runner(chain: plan_lib.Chain, force: bool) -> runner_lib.Runner:
  """The experiments' runner set up for a linear chain whose steps' output is shown."""
  return runner_lib.Runner(chain, force=force, label="demo", show_output=True,
                           echo_pattern=ECHO, stop_on_failure=True)


def _print_artifacts(paths: Dict[str, str], steps: runner_lib.Runner, total: float) -> None:
  print("\n[demo] artifacts:")
  for what, path in paths.items():
    print(f"  {what:<34} {path}")
  timings = ", ".join(f"{k} {v:.0f} s" for k, v in steps.seconds.items())
  skipped = f"; skipped (done before): {', '.join(steps.skipped)}" if steps.skipped else ""
  print(f"\n[demo] wall time {total:.0f} s ({timings or 'no step ran'}){skipped}")


def plan_demo(out: str, preset: config_lib.Preset, *, num_clips: int, clip_seconds: float,
              seed: int, num_workers: int) -> plan_lib.Chain:
  """The demo's chain up to the export (the ``tag`` step is added once the corpus exists).

  Args:
    out: the demo's output directory (absolute).
    preset: the scaling of the defaults (``deepbof_tf.config.PRESETS``).
    num_clips, clip_seconds: the demo corpus.
    seed: the seed of the corpus and of every training stage.
    num_workers: processes for corpus rendering, Beam and the baseline.
  """
  corpus, data, model, export = (os.path.join(out, d)
                                 for d in ("corpus", "data", "model", "export"))
  source = commands.DataSource(os.path.join(corpus, "annotations_final.csv"), "mtt",
                               os.path.join(corpus, "audio"))
  sampling = SamplingConfig()
  chain = plan_lib.Chain(out)
  chain.add("corpus", commands.demo_corpus(
      corpus, num_clips=num_clips, clip_seconds=clip_seconds, seed=seed,
      num_workers=num_workers), output_dir=corpus)
  chain.add("preprocess", commands.preprocess(
      source, data, sampling=sampling.scheme, block_frames=sampling.block_frames,
      num_blocks=preset.num_blocks, seed=seed, num_workers=num_workers), output_dir=data)
  chain.add("train", commands.train(
      data, model, stages="learn-local-features,encode,pretrain,finetune",
      preset=preset.name, seed=seed), output_dir=model)
  chain.add("evaluate", commands.evaluate(data, model, split="test"))
  chain.add("baseline", commands.baseline(
      source, os.path.join(out, BASELINE_FILE), seed=seed, num_workers=num_workers,
      top_n_tags=DEFAULT_TOP_N_TAGS))
  chain.add("export", commands.export(model, export, version=1), output_dir=export)
  return chain


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  started = time.perf_counter()
  preset = config_lib.preset(FLAGS.preset)
  out = os.path.abspath(FLAGS.output_dir)
  corpus, data, model, export = (os.path.join(out, d)
                                 for d in ("corpus", "data", "model", "export"))
  baseline_path = os.path.join(out, BASELINE_FILE)
  print(f"[demo] deepbof on the embedded demo corpus ({FLAGS.num_clips} clips of "
        f"{FLAGS.clip_seconds:g} s) into {out}\n[demo] preset {preset.name!r}: "
        f"{preset.description}", flush=True)
  chain = plan_demo(out, preset, num_clips=FLAGS.num_clips,
                    clip_seconds=FLAGS.clip_seconds, seed=FLAGS.seed,
                    num_workers=FLAGS.num_workers)
  steps = runner(chain, FLAGS.force)
  steps.run()
  # The clips to tag are known once the corpus exists.
  test_clips = _test_clips(corpus, FLAGS.num_tag_clips)
  chain.add("tag", commands.tag(export, test_clips, top_k=5))
  steps.run()
  _print_true_tags(corpus, test_clips)

  with open(baseline_path) as f:
    baseline = json.load(f)
  _print_summary(model, baseline)
  _print_artifacts({
      "demo corpus (audio + manifests)": corpus,
      "TFRecords (clips, blocks)": data,
      "model (local/, bof/, tagger.keras)": model,
      "metrics (json, per-tag csv, png)": os.path.join(model, "metrics.json"),
      "learned filters": os.path.join(model, "local", "filters.png"),
      "SavedModel (TF Serving)": os.path.join(export, "1"),
      "logs": os.path.join(out, "logs"),
  }, steps, time.perf_counter() - started)


def run() -> None:
  """Console-script entry point ``deepbof-demo``."""
  logging.set_verbosity(logging.WARNING)
  cli.run_console_script(main, _define_flags, __doc__)


if __name__ == "__main__":
  run()
