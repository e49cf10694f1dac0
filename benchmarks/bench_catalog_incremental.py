"""Benchmark: growing a catalogue (``deepbof-tag-catalog`` reruns, docs/catalog.md).

A catalogue is rerun every day and tags only the files it does not hold yet
(docs/catalog.md, "Growing a catalogue"). Targets, on a 2-core machine, each a ratio
of two wall times measured in the same run:

* a second run over an unchanged catalogue of 400 files costs <= 0.10 of the first
  run (which tagged the 400 files), the files being 4-minute tracks (``--seconds=240``:
  a catalogue holds tracks, not clips);
* adding 40 new files and running again costs <= 0.25 of the first run;
* the catalogue reconciles after every run: ``catalog.json``'s totals, the parts'
  ``inputs.jsonl`` lines, Parquet rows and TFRecord records all hold 400 files (then
  440), every path exactly once and no failed file, and each run tagged what it had to
  (400, then 0, then 40). A catalogue that does not reconcile fails the benchmark (its
  row fails and the script exits with status 1).

Reported next to them: the same three runs with ``--identity=content`` (a second
catalogue, whose reruns read and hash every input file: 400, then 440).

Every run is the command a user types, in a fresh process: the ``deepbof-tag-catalog``
console script next to this interpreter (``python -m beam_jobs.tag_catalog`` where there
is none), a pattern input (``audio/*.mp3``), the local FnApiRunner (the job's runner
for local runs) with 2 worker processes (``--direct_num_workers=2
--direct_running_mode=multi_processing``). Its wall time includes the interpreter's and
the libraries' start-up: a pipeline run pays a fixed ~10–20 s (Python, Beam, TensorFlow,
the model), which is 40 % of a first run over 400 30-s clips but under a tenth of one
over 400 tracks; ``--seconds=30`` reports the clips' ratios without a target
(docs/benchmarks.md has both). 40 files are fewer than ``--min_files_per_worker``
(50) per worker, so the job tags them in its own process. The model is bench_serving's synthetic one (the paper's sizes:
1024 hidden units, a 3 × 512 DNN, 50 tags); the corpus is bench_preprocess's (MP3s at
44.1 kHz, ``--seconds`` long, a few distinct clips copied under many names; the new
files are more copies under new names).

Usage::

  .venv/bin/python benchmarks/bench_catalog_incremental.py [--files=400] [--added=40]
      [--seconds=240] [--workers=2] [--identities=stat,content]

(``run_all.py --quick`` passes ``--files=40 --added=4 --seconds=10``: the targets then
read n/a.) A full run of the stat identity took 6.5 minutes on a quiet 2-core machine
(both identities: about twice that).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import result_line  # noqa: E402  (benchmarks/, the script's own folder)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SAMPLE_RATE = 44100
TOOL = "deepbof-tag-catalog"
# The sizes the targets are written for.
TARGET_FILES, TARGET_ADDED, TARGET_SECONDS = 400, 40, 240.0


def tool_command() -> Tuple[List[str], str]:
  """The command that runs ``deepbof-tag-catalog``, and how it is described."""
  script = os.path.join(os.path.dirname(sys.executable), TOOL)
  if os.path.isfile(script) and os.access(script, os.X_OK):
    return [script], TOOL
  return [sys.executable, "-m", "beam_jobs.tag_catalog"], "python -m beam_jobs.tag_catalog"


def run_tool(command: Sequence[str], args: Sequence[str]) -> Tuple[float, str]:
  """Runs the tool once in a fresh process; wall seconds and its output.

  Raises:
    RuntimeError: the tool exited with a non-zero status.
  """
  env = dict(os.environ)
  # This checkout first, so the tool runs the code under test.
  env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
  start = time.perf_counter()
  done = subprocess.run(list(command) + list(args), cwd=ROOT, env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        errors="replace")
  wall = time.perf_counter() - start
  if done.returncode != 0:
    raise RuntimeError(f"{TOOL} exited with status {done.returncode}:\n"
                       + "\n".join(done.stdout.splitlines()[-30:]))
  return wall, done.stdout


def add_files(audio_dir: str, first: int, count: int) -> None:
  """Copies of the corpus's clips under new names ``clip{first..first+count-1}.mp3``."""
  sources = sorted(os.listdir(audio_dir))
  for i in range(first, first + count):
    shutil.copyfile(os.path.join(audio_dir, sources[i % len(sources)]),
                    os.path.join(audio_dir, f"clip{i:05d}.mp3"))


def _tfrecord_paths(path: str) -> List[str]:
  """The ``path`` feature of every record of a gzip TFRecord file (the same tf.data read
  a catalogue's reader does; TensorFlow is loaded already, for the synthetic model)."""
  import tensorflow as tf
  return [tf.train.Example.FromString(r.numpy()).features.feature["path"].bytes_list
          .value[0].decode("utf-8")
          for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]


def check_catalog(catalog_dir: str, expected: Sequence[str]) -> Tuple[bool, Dict[str, Any]]:
  """Whether the catalogue holds exactly the files ``expected``, each once, everywhere.

  Checks ``catalog.json`` (its totals and the sum of its parts' counts), the parts'
  ``inputs.jsonl`` lines (every path tagged, once), the Parquet rows and the TFRecord
  records (every path once), and ``metadata.json``'s reconciled counters.

  Returns:
    ``(ok, facts)``: facts are the counts seen and the problems found.
  """
  import pyarrow.parquet as pq
  from deepbof_tf import catalog_parts
  expected_set = set(expected)
  problems: List[str] = []
  record = catalog_parts.read_record(catalog_dir) or {"parts": [], "totals": {}}
  totals = record.get("totals", {})
  parts = record["parts"]
  n = len(expected_set)
  if totals.get("files") != n or totals.get("files_tagged") != n \
      or totals.get("files_failed") != 0:
    problems.append(f"catalog.json totals {totals}, expected {n} files, all tagged")
  if sum(p["files_tagged"] for p in parts) != n:
    problems.append("the parts' files_tagged do not add up to the total")
  inputs: List[str] = []
  for part in parts:
    lines = catalog_parts.read_jsonl(os.path.join(
        catalog_dir, catalog_parts.PARTS_DIR, part["name"], catalog_parts.INPUTS_FILE))
    if any(line.get("status") != catalog_parts.TAGGED for line in lines):
      problems.append(f"{part['name']}: a file not tagged")
    if len(lines) != part["files_matched"]:
      problems.append(f"{part['name']}: {len(lines)} inputs lines, catalog.json says "
                      f"{part['files_matched']}")
    inputs += [line["path"] for line in lines]
  parquet_paths: List[str] = []
  for path in catalog_parts.parquet_files(catalog_dir):
    parquet_paths += pq.read_table(path, columns=["path"]).column("path").to_pylist()
  tfrecord_paths: List[str] = []
  for path in catalog_parts.tfrecord_files(catalog_dir):
    tfrecord_paths += _tfrecord_paths(path)
  for what, paths in (("inputs.jsonl", inputs), ("Parquet", parquet_paths),
                      ("TFRecord", tfrecord_paths)):
    if len(paths) != n or set(paths) != expected_set:
      problems.append(f"{what}: {len(paths)} rows of {len(set(paths))} paths, expected "
                      f"{n} distinct (the input's)")
  metadata = catalog_parts.read_metadata(catalog_dir)
  c = metadata["counters"]
  if not c["reconciled"] or c["files_tagged"] != n:
    problems.append(f"metadata.json counters {c}")
  facts = {"parts": len(parts), "inputs_lines": len(inputs), "parquet_rows":
           len(parquet_paths), "tfrecord_records": len(tfrecord_paths),
           "problems": problems}
  return not problems, facts


def last_run(output: str) -> str:
  """The tool's "this run: …" line."""
  lines = [l for l in output.splitlines() if l.startswith("this run:")]
  return lines[-1] if lines else "(no 'this run' line)"


def tagged_by_run(output: str) -> int:
  """How many files the run tagged, from its "this run: …" line (-1: no such line)."""
  found = re.search(r"^this run: .*, tagged (\d+) in", output, re.MULTILINE)
  return int(found.group(1)) if found else -1


def identity_runs(command: Sequence[str], identity: str, export_dir: str, audio_dir: str,
                  catalog_dir: str, workers: int, stage: str,
                  expect_tagged: int) -> Dict[str, Any]:
  """One run of the tool at ``stage`` ("first", "unchanged" or "added"), which must
  tag ``expect_tagged`` files and leave a catalogue that reconciles."""
  args = [f"--model={export_dir}", f"--input={os.path.join(audio_dir, '*.mp3')}",
          f"--output_dir={catalog_dir}", f"--identity={identity}",
          f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
  wall, output = run_tool(command, args)
  expected = sorted(os.path.join(audio_dir, name) for name in os.listdir(audio_dir))
  ok, facts = check_catalog(catalog_dir, expected)
  if tagged_by_run(output) != expect_tagged:
    ok = False
    facts["problems"].append(f"the run tagged {tagged_by_run(output)} files, expected "
                             f"{expect_tagged}")
  print(f"{identity:>8} {stage:>10} {len(expected):>6} {wall:>7.2f} {facts['parts']:>6} "
        f"{facts['parquet_rows']:>6} {'yes' if ok else 'NO'}   {last_run(output)}")
  for problem in facts["problems"]:
    print(f"    NOT RECONCILED: {problem}")
  return {"wall": wall, "files": len(expected), "ok": ok, "facts": facts,
          "last_run": last_run(output)}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--files", type=int, default=TARGET_FILES,
                      help="files of the first run")
  parser.add_argument("--added", type=int, default=TARGET_ADDED,
                      help="files added before the last run")
  parser.add_argument("--seconds", type=float, default=TARGET_SECONDS,
                      help="length of each MP3")
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--distinct", type=int, default=4, help="distinct clips encoded")
  parser.add_argument("--pca_dims", type=int, default=128)
  parser.add_argument("--identities", default="stat,content",
                      help="the --identity values to run (stat carries the targets)")
  args = parser.parse_args()
  identities = [i for i in args.identities.split(",") if i]

  sys.path.insert(0, HERE)
  import run_all  # for the machine's description (CPU and its vector extensions)
  machine = run_all.machine_info()
  print(f"{machine['cpu']} ({machine['simd'] or 'no AVX'}), {machine['usable_cores']} "
        f"usable cores; load average {os.getloadavg()[0]:.2f} (ratios matter on a shared "
        "machine)")
  command, command_name = tool_command()
  root = tempfile.mkdtemp(prefix="bench_catalog_incremental_")
  results: Dict[Tuple[str, str], Dict[str, Any]] = {}
  start = time.perf_counter()
  try:
    import bench_preprocess
    import bench_serving
    from serving import export_lib
    model_dir = bench_serving.synthetic_model_dir(os.path.join(root, "model"),
                                                  args.pca_dims)
    export_dir = os.path.join(root, "export")
    export_lib.export(model_dir, export_dir)
    manifest = bench_preprocess.make_corpus(os.path.join(root, "corpus"), args.files,
                                            args.seconds, SAMPLE_RATE, args.distinct)
    audio_dir = os.path.join(os.path.dirname(manifest), "audio")
    print(f"corpus: {args.files} MP3s of {args.seconds:g} s at {SAMPLE_RATE} Hz "
          f"({args.distinct} distinct), then {args.added} more; synthetic model (PCA "
          f"{args.pca_dims}, 1024 hidden, DNN 3 x 512, 50 tags); {command_name}, "
          f"{args.workers} worker(s)")
    print(f"\n{'identity':>8} {'run':>10} {'files':>6} {'wall s':>7} {'parts':>6} "
          f"{'rows':>6} reconciled")
    catalogs = {i: os.path.join(root, f"catalog_{i}") for i in identities}
    for stage, expect_tagged in (("first", args.files), ("unchanged", 0)):
      for identity in identities:
        results[(identity, stage)] = identity_runs(
            command, identity, export_dir, audio_dir, catalogs[identity], args.workers,
            stage, expect_tagged)
    add_files(audio_dir, args.files, args.added)
    for identity in identities:
      results[(identity, "added")] = identity_runs(
          command, identity, export_dir, audio_dir, catalogs[identity], args.workers,
          "added", args.added)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  total = time.perf_counter() - start

  applies = (args.files == TARGET_FILES and args.added == TARGET_ADDED
             and args.seconds == TARGET_SECONDS)
  rows = []
  all_ok = all(r["ok"] for r in results.values())
  for identity in identities:
    first = results[(identity, "first")]
    targets = identity == "stat"
    content = identity == "content"
    label = f"--identity={identity}"
    rows.append(result_line.measurement(
        f"first run, {label}, {args.files} new MP3s of {args.seconds:g} s",
        first["wall"], "s", note=f"{args.files / first['wall']:.1f} files/s, "
        f"{args.workers} workers"))
    unchanged = results[(identity, "unchanged")]
    rows.append(result_line.measurement(
        f"rerun, {label}, unchanged catalogue of {args.files} files"
        + (f" (hashing {args.files} files)" if content else ""),
        unchanged["wall"], "s", reference="first run, same catalogue",
        reference_value=first["wall"], target="<= 0.10" if targets else None,
        target_on="ratio", applies=applies))
    added = results[(identity, "added")]
    rows.append(result_line.measurement(
        f"rerun, {label}, {args.added} new files added to {args.files}"
        + (f" (hashing {args.files + args.added} files)" if content else ""),
        added["wall"], "s", reference="first run, same catalogue",
        reference_value=first["wall"], target="<= 0.25" if targets else None,
        target_on="ratio", applies=applies))
  facts = "; ".join(
      f"{identity}: " + ", ".join(
          f"{results[(identity, stage)]['facts']['parquet_rows']} rows in "
          f"{results[(identity, stage)]['facts']['parts']} part(s)"
          for stage in ("first", "unchanged", "added"))
      for identity in identities)
  rows.append(result_line.measurement(
      "catalogue reconciles after every run (catalog.json, inputs, Parquet, TFRecord: "
      "each path once)", all_ok, "", target="== true",
      note=facts))
  print(f"\nbenchmark wall time {total:.0f} s (corpus, export and {len(results)} runs)")
  result_line.emit("catalog_incremental", rows, config={
      "files": args.files, "added": args.added, "seconds": args.seconds,
      "workers": args.workers, "identities": args.identities, "command": command_name,
      "cpu": machine["cpu"], "simd": machine["simd"], "seconds_total": round(total, 1)})
  return 0 if all_ok else 1


if __name__ == "__main__":
  sys.exit(main())
