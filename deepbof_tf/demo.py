"""``deepbof-demo``: the whole chain on the embedded demo corpus.

Runs, as a user would, each stage's own command line in a subprocess (so this module
imports none of ``beam_jobs``, ``trainer`` or ``serving``):

1. ``deepbof-make-demo-corpus``: real scores from ``music21.corpus`` rendered into a
   tagged, MagnaTagATune-like dataset (mixed mp3/ogg/flac/wav, mixed sample rates);
2. ``deepbof-preprocess``: the Beam job on DirectRunner (2 worker processes) writing
   clip and block TFRecords;
3. ``deepbof-train --stages=all``: PCA + sparse RBM, bag-of-features, stacked ReLU-RBM
   pretraining, DNN fine-tuning, evaluation;
4. ``deepbof-evaluate`` on the test split (the paper's table + PR-AUC);
5. the MFCC + logistic-regression baseline on the same split;
6. ``deepbof-export`` (a TF Serving SavedModel) and ``deepbof-tag`` on a few test clips.

Every finished step leaves a stamp holding its command line in ``output_dir/.stamps``;
a rerun with the same flags skips it (``--fresh`` reruns everything). Each step's
standard output (tables, tags) is shown; its log (standard error: absl, Beam and
TensorFlow logging) goes to ``output_dir/logs/<step>.log`` and its tail is printed if
the step fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Sequence

from absl import app, flags, logging

from deepbof_tf import cli

FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string("output_dir", "demo_output", "Where the corpus, dataset, model and "
                      "export go.")
  flags.DEFINE_integer("num_clips", 600, "Clips in the demo corpus.")
  flags.DEFINE_float("clip_seconds", 15.0, "Seconds per demo clip.")
  flags.DEFINE_integer("seed", 0, "Seed of the corpus and of every training stage.")
  flags.DEFINE_integer("num_blocks", 20_000, "Feature-learning block budget (the paper "
                       "used 200,000 on MagnaTagATune; the demo's train split has ~420 clips).")
  flags.DEFINE_integer("rbm_epochs", 300, "Epochs of the local sparse RBM.")
  flags.DEFINE_integer("pretrain_epochs", 200, "Epochs of each song-level RBM.")
  flags.DEFINE_integer("finetune_epochs", 300, "Max fine-tuning epochs (best validation "
                       "AUC-tag epoch kept); SPEC §5: 100 under-trains small sets.")
  flags.DEFINE_integer("num_workers", 2, "Processes for corpus rendering and Beam.")
  flags.DEFINE_bool("fresh", False, "Rerun every step even if its stamp matches.")


def _script(name: str) -> str:
  """The console script next to this interpreter (the venv's bin directory)."""
  candidate = os.path.join(os.path.dirname(sys.executable), name)
  if os.path.exists(candidate):
    return candidate
  found = shutil.which(name)
  if not found:
    raise FileNotFoundError(f"console script {name!r} not found next to {sys.executable} "
                            "or on PATH; is the package installed (pip install -e .)?")
  return found


class _Steps:
  """Runs named steps once, remembering finished ones by a stamp of their command."""

  def __init__(self, output_dir: str, fresh: bool):
    self._stamps = os.path.join(output_dir, ".stamps")
    self._logs = os.path.join(output_dir, "logs")
    os.makedirs(self._stamps, exist_ok=True)
    os.makedirs(self._logs, exist_ok=True)
    self._fresh = fresh
    self.timings: Dict[str, float] = {}

  def _stamp(self, name: str) -> str:
    return os.path.join(self._stamps, name + ".json")

  def run(self, name: str, command: Sequence[str], outputs: Sequence[str] = ()) -> None:
    key = hashlib.sha256(json.dumps(list(command)).encode()).hexdigest()
    stamp = self._stamp(name)
    if not self._fresh and os.path.exists(stamp):
      with open(stamp) as f:
        if json.load(f).get("key") == key:
          print(f"[demo] {name}: up to date (stamp {stamp}); --fresh reruns it", flush=True)
          return
    # A step whose command changed (or never finished) starts from scratch.
    for path in outputs:
      if os.path.isdir(path):
        shutil.rmtree(path)
    log_path = os.path.join(self._logs, name + ".log")
    print(f"\n[demo] {name}: {' '.join(command)}\n[demo] (log: {log_path})", flush=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    start = time.perf_counter()
    with open(log_path, "w") as log:
      result = subprocess.run(list(command), stderr=log, env=env, check=False)
    self.timings[name] = time.perf_counter() - start
    if result.returncode != 0:
      with open(log_path, errors="replace") as log:
        tail = log.readlines()[-40:]
      sys.stderr.write("".join(tail))
      raise SystemExit(f"[demo] step {name!r} failed with exit code {result.returncode} "
                       f"(full log: {log_path}): {' '.join(command)}")
    with open(stamp, "w") as f:
      json.dump({"key": key, "command": list(command),
                 "seconds": self.timings[name]}, f, indent=2)


def _test_clips(corpus_dir: str, count: int) -> List[str]:
  """A few test-split audio files of the corpus (from its CSV manifest)."""
  import csv
  files = []
  with open(os.path.join(corpus_dir, "manifest.csv"), newline="") as f:
    for row in csv.DictReader(f):
      if row["split"] == "test":
        files.append(os.path.join(corpus_dir, "audio", row["path"]))
      if len(files) >= count:
        break
  return files


def _print_summary(model_dir: str, baseline: Dict[str, Any], timings: Dict[str, float]):
  with open(os.path.join(model_dir, "metrics.json")) as f:
    metrics = json.load(f)
  rows = [("Deep-BoF (this run)", metrics)]
  rows += [(f"{name} (baseline)", values)
           for name, values in metrics.get("baselines", {}).items()]
  rows.append(("MFCC stats + logistic regression", baseline))
  columns = ["auc_tag", "auc_clip", "p_at_3", "p_at_6", "p_at_9", "p_at_12", "p_at_15",
             "pr_auc"]
  header = ["AUC-T", "AUC-C", "P@3", "P@6", "P@9", "P@12", "P@15", "PR-AUC"]
  print(f"\n[demo] Test split of the demo corpus ({metrics.get('num_clips', '?')} clips, "
        f"{metrics.get('num_tags', '?')} tags)")
  print(f"{'method':<40}" + "".join(f"{h:>8}" for h in header))
  for name, values in rows:
    print(f"{name:<40}" + "".join(
        f"{values[c]:8.3f}" if isinstance(values.get(c), (int, float)) else f"{'—':>8}"
        for c in columns))
  if timings:
    print("\n[demo] step wall times: " + ", ".join(f"{k} {v:.0f} s"
                                                   for k, v in timings.items()))


def _print_true_tags(corpus_dir: str, files: Sequence[str]) -> None:
  """The ground truth of the tagged files, to read next to deepbof-tag's output."""
  import csv
  truth = {}
  with open(os.path.join(corpus_dir, "manifest.csv"), newline="") as f:
    for row in csv.DictReader(f):
      truth[os.path.join(corpus_dir, "audio", row["path"])] = row["tags"].replace(";", " ")
  print("[demo] their true tags:")
  for path in files:
    print(f"{path}\t{truth.get(path, '?')}")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  out = os.path.abspath(FLAGS.output_dir)
  corpus, data, model, export = (os.path.join(out, d)
                                 for d in ("corpus", "data", "model", "export"))
  steps = _Steps(out, FLAGS.fresh)
  seed = str(FLAGS.seed)

  steps.run("corpus", [
      _script("deepbof-make-demo-corpus"), f"--output_dir={corpus}",
      f"--num_clips={FLAGS.num_clips}", f"--clip_seconds={FLAGS.clip_seconds}",
      f"--seed={seed}", f"--num_workers={FLAGS.num_workers}"], outputs=[corpus])
  steps.run("preprocess", [
      _script("deepbof-preprocess"), "--manifest_format=mtt",
      f"--manifest={os.path.join(corpus, 'annotations_final.csv')}",
      f"--audio_root={os.path.join(corpus, 'audio')}", f"--output_dir={data}",
      "--top_n_tags=50", f"--num_blocks={FLAGS.num_blocks}", f"--seed={seed}",
      "--overwrite", "--runner=DirectRunner",
      f"--direct_num_workers={FLAGS.num_workers}",
      "--direct_running_mode=multi_processing"], outputs=[data])
  steps.run("train", [
      _script("deepbof-train"), f"--data_dir={data}", f"--model_dir={model}",
      "--stages=all", f"--seed={seed}", f"--rbm_epochs={FLAGS.rbm_epochs}",
      f"--pretrain_epochs={FLAGS.pretrain_epochs}",
      f"--finetune_epochs={FLAGS.finetune_epochs}", "--overwrite"], outputs=[model])
  steps.run("evaluate", [
      _script("deepbof-evaluate"), f"--data_dir={data}", f"--model_dir={model}",
      "--split=test"])

  from deepbof_tf import baselines  # deferred: librosa/sklearn are only needed here
  baseline_path = os.path.join(out, "baseline_mfcc.json")
  if FLAGS.fresh or not os.path.exists(baseline_path) or os.path.getmtime(
      baseline_path) < os.path.getmtime(os.path.join(steps._stamp("corpus"))):
    print("\n[demo] baseline: MFCC statistics + per-tag logistic regression", flush=True)
    baseline = baselines.run_mfcc_baseline(
        os.path.join(corpus, "annotations_final.csv"), os.path.join(corpus, "audio"),
        manifest_format="mtt", top_n_tags=50, seed=FLAGS.seed)
    with open(baseline_path, "w") as f:
      json.dump(baseline, f, indent=2, sort_keys=True)
  with open(baseline_path) as f:
    baseline = json.load(f)

  steps.run("export", [
      _script("deepbof-export"), f"--model_dir={model}", f"--export_dir={export}",
      f"--data_dir={data}", "--version=1"], outputs=[export])
  test_clips = _test_clips(corpus, 5)
  steps.run("tag", [_script("deepbof-tag"), f"--model={export}", "--top_k=5",
                    "--output=table", "--noprogress", *test_clips])
  _print_true_tags(corpus, test_clips)
  _print_summary(model, baseline, steps.timings)


def run() -> None:
  """Console-script entry point ``deepbof-demo``."""
  logging.set_verbosity(logging.WARNING)
  cli.run_console_script(main, _define_flags, __doc__)


if __name__ == "__main__":
  run()
