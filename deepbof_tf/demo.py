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

The ``demo`` preset (``deepbof_tf.config.PRESETS``) scales the block budget and the
fine-tuning epochs to the corpus so the chain fits in ~12 minutes on 2 cores; every
other value is the paper's. Every finished step leaves a stamp holding its command line
in ``output_dir/.stamps``; a rerun with the same flags skips it, saying so (``--force``
reruns everything). Each step's standard output (tables, tags) is shown and kept in
``output_dir/logs/<step>.out`` (shown again when the step is skipped), its log
(absl, Beam and TensorFlow logging) goes to ``output_dir/logs/<step>.log``, stage
headers and a progress line every few seconds are echoed, and the log's tail is
printed if the step fails.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Dict, List, Pattern, Sequence

from absl import app, flags, logging

from deepbof_tf import cli
from deepbof_tf import config as config_lib
from deepbof_tf.data.demo_corpus import DemoCorpusConfig
from deepbof_tf.data.manifests import DEFAULT_TOP_N_TAGS
from deepbof_tf.io_utils import write_atomic

FLAGS = flags.FLAGS

# Lines of a step's log worth showing as they come (stage headers, per-stage results).
_ECHO = re.compile(r"=== stage |^stage \S+ done|PCA of \d+ blocks|wrote \d+ clips")
# absl's log prefix, e.g. "I1124 06:07:45.428982 140317709904768 train.py:227] ".
_ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ")


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


def _clean(line: str) -> str:
  line = _ABSL_PREFIX.sub("", line.strip())
  return line if len(line) <= 150 else line[:147] + "..."


def _run_logged(command: Sequence[str], log_path: str, label: str, output_path: str,
                echo: Pattern[str] = _ECHO, heartbeat: float = 20.0) -> int:
  """Runs ``command`` with stdout shown and kept in ``output_path``, stderr in ``log_path``.

  Lines of stderr matching ``echo`` are shown as they come; every ``heartbeat`` seconds
  without output, the latest log line (e.g. an epoch or a progress bar) is shown.
  """
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
  process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env)

  def copy_stdout() -> None:
    with open(output_path, "wb") as kept:
      for chunk in iter(lambda: process.stdout.read1(1 << 14), b""):
        kept.write(chunk)
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()

  copier = threading.Thread(target=copy_stdout, daemon=True)
  copier.start()
  latest = [""]
  shown = [time.monotonic()]

  def pump() -> None:
    pending = b""
    with open(log_path, "wb") as log:
      for chunk in iter(lambda: process.stderr.read1(1 << 14), b""):
        log.write(chunk)
        log.flush()
        *lines, pending = re.split(rb"[\r\n]", pending + chunk)
        for raw in lines:
          line = raw.decode("utf-8", "replace").strip()
          if not line:
            continue
          latest[0] = line
          if echo.search(line):
            print(f"  {label}: {_clean(line)}", flush=True)
            shown[0] = time.monotonic()

  reader = threading.Thread(target=pump, daemon=True)
  reader.start()
  start = time.monotonic()
  while process.poll() is None:
    time.sleep(0.5)
    if time.monotonic() - shown[0] >= heartbeat and latest[0]:
      print(f"  {label} ({time.monotonic() - start:.0f} s): {_clean(latest[0])}",
            flush=True)
      shown[0] = time.monotonic()
  reader.join()
  copier.join()
  return process.returncode


class _Steps:
  """Runs named steps once, remembering finished ones by a stamp of their command."""

  def __init__(self, output_dir: str, force: bool):
    self._stamps = os.path.join(output_dir, ".stamps")
    self._logs = os.path.join(output_dir, "logs")
    os.makedirs(self._stamps, exist_ok=True)
    os.makedirs(self._logs, exist_ok=True)
    self._force = force
    self.timings: Dict[str, float] = {}
    self.skipped: List[str] = []
    # Run ids of the steps so far: a step depends on every step before it, so one
    # that reran (new run id) makes every later step rerun too.
    self._upstream: List[str] = []

  def _output_path(self, name: str) -> str:
    return os.path.join(self._logs, name + ".out")

  def _replay(self, name: str) -> None:
    """Shows what a skipped step printed when it ran (its tables, its tags)."""
    path = self._output_path(name)
    if os.path.exists(path) and os.path.getsize(path):
      print(f"[demo] {name}: its output then:", flush=True)
      with open(path, "rb") as kept:
        sys.stdout.buffer.write(kept.read())
      sys.stdout.flush()

  def run(self, name: str, command: Sequence[str], outputs: Sequence[str] = ()) -> None:
    key = hashlib.sha256(json.dumps([list(command), self._upstream]).encode()).hexdigest()
    stamp = os.path.join(self._stamps, name + ".json")
    if not self._force and os.path.exists(stamp):
      with open(stamp) as f:
        record = json.load(f)
      if record.get("key") == key and record.get("run_id"):
        print(f"\n[demo] {name}: already done by an earlier run with the same command "
              "and inputs, skipped (--force reruns it)", flush=True)
        self._replay(name)
        self.skipped.append(name)
        self._upstream.append(record["run_id"])
        return
    # A step whose command changed (or never finished) starts from scratch.
    for path in outputs:
      if os.path.isdir(path):
        shutil.rmtree(path)
    log_path = os.path.join(self._logs, name + ".log")
    print(f"\n[demo] {name}: {' '.join(command)}\n[demo] (log: {log_path})", flush=True)
    start = time.perf_counter()
    returncode = _run_logged(command, log_path, name, self._output_path(name))
    self.timings[name] = time.perf_counter() - start
    if returncode != 0:
      with open(log_path, errors="replace") as log:
        tail = log.readlines()[-40:]
      sys.stderr.write("".join(tail))
      raise SystemExit(f"[demo] step {name!r} failed with exit code {returncode} "
                       f"(full log: {log_path}): {' '.join(command)}")
    print(f"[demo] {name}: done in {self.timings[name]:.0f} s", flush=True)
    run_id = uuid.uuid4().hex
    write_atomic(stamp, json.dumps({"key": key, "run_id": run_id, "command": list(command),
                                    "seconds": round(self.timings[name], 1)}, indent=2))
    self._upstream.append(run_id)


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


def _print_artifacts(paths: Dict[str, str], steps: _Steps, total: float) -> None:
  print("\n[demo] artifacts:")
  for what, path in paths.items():
    print(f"  {what:<34} {path}")
  timings = ", ".join(f"{k} {v:.0f} s" for k, v in steps.timings.items())
  skipped = f"; skipped (done before): {', '.join(steps.skipped)}" if steps.skipped else ""
  print(f"\n[demo] wall time {total:.0f} s ({timings or 'no step ran'}){skipped}")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  started = time.perf_counter()
  preset = config_lib.preset(FLAGS.preset)
  out = os.path.abspath(FLAGS.output_dir)
  corpus, data, model, export = (os.path.join(out, d)
                                 for d in ("corpus", "data", "model", "export"))
  print(f"[demo] deepbof on the embedded demo corpus ({FLAGS.num_clips} clips of "
        f"{FLAGS.clip_seconds:g} s) into {out}\n[demo] preset {preset.name!r}: "
        f"{preset.description}; budget ≤ 12 minutes on 2 cores", flush=True)
  steps = _Steps(out, FLAGS.force)
  seed = str(FLAGS.seed)

  steps.run("corpus", [
      cli.console_script("deepbof-make-demo-corpus"), f"--output_dir={corpus}",
      f"--num_clips={FLAGS.num_clips}", f"--clip_seconds={FLAGS.clip_seconds}",
      f"--seed={seed}", f"--num_workers={FLAGS.num_workers}"], outputs=[corpus])
  steps.run("preprocess", [
      cli.console_script("deepbof-preprocess"), "--manifest_format=mtt",
      f"--manifest={os.path.join(corpus, 'annotations_final.csv')}",
      f"--audio_root={os.path.join(corpus, 'audio')}", f"--output_dir={data}",
      f"--top_n_tags={DEFAULT_TOP_N_TAGS}", f"--num_blocks={preset.num_blocks}", f"--seed={seed}",
      "--overwrite", "--runner=DirectRunner",
      f"--direct_num_workers={FLAGS.num_workers}",
      "--direct_running_mode=multi_processing"], outputs=[data])
  steps.run("train", [
      cli.console_script("deepbof-train"), f"--data_dir={data}", f"--model_dir={model}",
      "--stages=learn-local-features,encode,pretrain,finetune", f"--preset={preset.name}",
      f"--seed={seed}", "--overwrite"], outputs=[model])
  steps.run("evaluate", [
      cli.console_script("deepbof-evaluate"), f"--data_dir={data}", f"--model_dir={model}",
      "--split=test"])
  baseline_path = os.path.join(out, "baseline_mfcc.json")
  steps.run("baseline", [
      cli.console_script("deepbof-baseline"), "--manifest_format=mtt",
      f"--manifest={os.path.join(corpus, 'annotations_final.csv')}",
      f"--audio_root={os.path.join(corpus, 'audio')}", f"--top_n_tags={DEFAULT_TOP_N_TAGS}",
      f"--seed={seed}", f"--num_workers={FLAGS.num_workers}",
      f"--output={baseline_path}"])
  steps.run("export", [
      cli.console_script("deepbof-export"), f"--model_dir={model}", f"--export_dir={export}",
      "--version=1"], outputs=[export])
  test_clips = _test_clips(corpus, FLAGS.num_tag_clips)
  steps.run("tag", [cli.console_script("deepbof-tag"), f"--model={export}", "--top_k=5",
                    "--output=table", "--noprogress", *test_clips])
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
