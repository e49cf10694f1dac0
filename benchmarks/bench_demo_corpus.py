"""Benchmark: generating the demo corpus, and the MFCC baseline that proves its tags audible.

Targets:

* ``deepbof-make-demo-corpus --num_clips=600`` (15-s clips, 2 workers) finishes in under
  4 minutes on a 2-core machine on a *first* run (empty MIDI cache, scores parsed), and
  a second run (cached MIDI) is much faster;
* per-tag logistic regression on MFCC statistics reaches a mean ROC-AUC >= 0.75 on the
  test split of that corpus.

The machine may be shared, so the script also times, in the same run, a reference unit
of work (render one 15-s four-track excerpt with symusic and encode it as mp3, in
process) and prints the generation times as multiples of it, with the load average.
It also checks that both runs wrote byte-identical manifests.

Usage::

  .venv/bin/python benchmarks/bench_demo_corpus.py [--num_clips 600] [--clip_seconds 15]
      [--num_workers 2] [--output_dir DIR] [--skip_baseline]

Exit status 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

from deepbof_tf.data import manifests
from deepbof_tools.baseline import mfcc as baselines
from deepbof_tools.demo import corpus as demo_corpus
from deepbof_tools.demo import orchestration
import result_line  # (benchmarks/, the script's own folder)

FIRST_RUN_BUDGET_SECONDS = 240.0
AUC_TARGET = 0.75


def _reference_unit_seconds(runs: int = 5) -> float:
  """Median time to render and mp3-encode one 15-s, four-track excerpt in process."""
  import soundfile as sf
  rate = 22050
  rng = np.random.default_rng(0)
  tracks = []
  for role, program, base in (("melody", 40, 72), ("inner", 41, 64), ("inner", 6, 57),
                              ("bass", 42, 45)):
    notes = [(0.5 * k, 0.45, int(base + rng.integers(-5, 6))) for k in range(60)]
    tracks.append(orchestration.ArrangedTrack(role, program, False, notes, 90, [0]))
  arrangement = orchestration.Arrangement(tracks=tracks, transposition=0, register_target=None)
  times = []
  with tempfile.TemporaryDirectory() as tmp:
    for _ in range(runs):
      start = time.perf_counter()
      mix = demo_corpus._mix(arrangement, 120.0, rate, 15 * rate)
      audio = (0.5 * mix / np.max(np.abs(mix))).astype(np.float32)
      sf.write(os.path.join(tmp, "ref.mp3"), audio, rate, format="MP3")
      times.append(time.perf_counter() - start)
  return statistics.median(times)


def _generate(output_dir: str, cache_dir: str, args) -> tuple:
  config = demo_corpus.DemoCorpusConfig(num_clips=args.num_clips,
                                        clip_seconds=args.clip_seconds, seed=args.seed)
  start = time.perf_counter()
  summary = demo_corpus.make_demo_corpus(output_dir, config, num_workers=args.num_workers,
                                         cache_dir=cache_dir, overwrite=True,
                                         progress=not args.no_progress)
  return time.perf_counter() - start, summary


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--num_clips", type=int, default=600)
  parser.add_argument("--clip_seconds", type=float, default=15.0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num_workers", type=int, default=2)
  parser.add_argument("--output_dir", default=None,
                      help="keep the corpus here (default: a temporary folder)")
  parser.add_argument("--skip_baseline", action="store_true")
  parser.add_argument("--no_progress", action="store_true")
  args = parser.parse_args()

  work = tempfile.mkdtemp(prefix="bench_demo_corpus_")
  output_dir = args.output_dir or os.path.join(work, "first")
  cache_dir = os.path.join(work, "midi_cache")  # always empty: a true first run
  failures = []
  rows = []
  # The time and tag-count targets were written for 600 clips of 15 s.
  paper_size = args.num_clips == 600 and args.clip_seconds == 15.0
  try:
    print(f"load average before: {os.getloadavg()}  (cpus: {os.cpu_count()})")
    reference = _reference_unit_seconds()
    print(f"reference unit (render + mp3-encode one 15-s 4-track excerpt): "
          f"{1000 * reference:.1f} ms")

    t_first, first = _generate(output_dir, cache_dir, args)
    print(f"first run  ({first['pieces_parsed']} scores parsed): {t_first:7.1f} s "
          f"= {t_first / reference:7.0f} reference units  load {os.getloadavg()}")
    second_dir = os.path.join(work, "second")
    t_second, second = _generate(second_dir, cache_dir, args)
    print(f"cached run ({second['pieces_parsed']} scores parsed): {t_second:7.1f} s "
          f"= {t_second / reference:7.0f} reference units  load {os.getloadavg()}")
    print(f"first / cached: {t_first / t_second:.2f}x")
    rows.append(result_line.measurement(
        f"demo corpus, {args.num_clips} clips of {args.clip_seconds:g} s, first run "
        f"({args.num_workers} workers)", t_first, "s",
        reference="render + mp3-encode one 15-s 4-track excerpt", reference_value=reference,
        ratio_of="measured / reference (reference units)",
        target=f"< {FIRST_RUN_BUDGET_SECONDS:g}", applies=paper_size))
    rows.append(result_line.measurement(
        "demo corpus, second run (cached MIDI)", t_second, "s",
        reference="first run", reference_value=t_first))
    if args.num_clips == 600 and args.clip_seconds == 15.0:
      ok = t_first < FIRST_RUN_BUDGET_SECONDS
      print(f"first run under {FIRST_RUN_BUDGET_SECONDS:.0f} s: {'PASS' if ok else 'FAIL'}")
      if not ok:
        failures.append("first-run time")
    identical = all(
        open(os.path.join(output_dir, name), "rb").read()
        == open(os.path.join(second_dir, name), "rb").read()
        for name in demo_corpus.OUTPUT_FILES)
    print(f"manifests identical across runs: {'PASS' if identical else 'FAIL'}")
    if not identical:
      failures.append("determinism")
    rows.append(result_line.measurement(
        "demo corpus manifests byte-identical across the two runs", identical, "",
        target="== true"))

    counts = first["counts"]
    print(f"splits: {counts['splits']}  pieces per split: {counts['pieces_by_split']}")
    print(f"formats: {counts['formats']}  sample rates: {counts['sample_rates']}")
    print("tag counts (all / test):")
    for tag, n in sorted(counts["tags"].items(), key=lambda kv: -kv[1]):
      print(f"  {tag:12s} {n:4d} {counts['tags_by_split']['test'][tag]:4d}")
    smallest = min(counts["tags"].values())
    if args.num_clips == 600:
      ok = smallest >= 15
      print(f"every tag >= 15 clips: {'PASS' if ok else 'FAIL'} (smallest {smallest})")
      if not ok:
        failures.append("tag counts")
    rows.append(result_line.measurement(
        "demo corpus, clips of the rarest tag", smallest, "clips", target=">= 15",
        applies=args.num_clips == 600))

    result = None
    if not args.skip_baseline:
      manifest = manifests.read_csv_manifest(os.path.join(output_dir, "manifest.csv"))
      start = time.perf_counter()
      try:
        result = baselines.run_baseline(manifest, os.path.join(output_dir, "audio"),
                                        num_workers=args.num_workers)
      except ValueError as error:  # e.g. a small corpus with an empty test split
        print(f"MFCC baseline not run: {error}")
        if args.num_clips >= 600:
          failures.append("baseline AUC")
        rows.append(result_line.measurement(
            "MFCC + logistic regression baseline, test mean ROC-AUC", None, "",
            target=f">= {AUC_TARGET}", applies=args.num_clips >= 600, note=str(error)))
    if result is not None:
      elapsed = time.perf_counter() - start
      print(f"MFCC + logistic regression baseline ({result.n_train} train, {result.n_eval} "
            f"test clips, {elapsed:.1f} s):")
      per_tag = result.metrics["per_tag"]
      for tag, values in sorted(per_tag.items(), key=lambda kv: kv[1]["roc_auc"]):
        print(f"  {tag:12s} {values['roc_auc']:.3f}")
      print(f"  tags excluded (one class in test): {result.metrics['num_tags_excluded']}")
      print(f"  mean average precision (PR-AUC): {result.metrics['pr_auc']:.4f}")
      mean_auc = result.metrics["auc_tag"]
      ok = mean_auc >= AUC_TARGET
      print(f"mean ROC-AUC {mean_auc:.4f} >= {AUC_TARGET}: {'PASS' if ok else 'FAIL'}")
      if not ok and args.num_clips >= 600:  # the target's corpus size, as in the result
        failures.append("baseline AUC")
      rows.append(result_line.measurement(
          f"MFCC + logistic regression baseline, test mean ROC-AUC ({result.n_eval} clips)",
          mean_auc, "", target=f">= {AUC_TARGET}",
          # Written for the 600-clip corpus; a few test clips give a meaningless mean.
          applies=args.num_clips >= 600,
          note=f"PR-AUC {result.metrics['pr_auc']:.3f}; {elapsed:.0f} s"))
  finally:
    if args.output_dir is None:
      shutil.rmtree(work, ignore_errors=True)
    else:
      shutil.rmtree(os.path.join(work, "second"), ignore_errors=True)
      shutil.rmtree(cache_dir, ignore_errors=True)
  result_line.emit("demo_corpus", rows, config={
      "num_clips": args.num_clips, "clip_seconds": args.clip_seconds, "seed": args.seed,
      "num_workers": args.num_workers, "baseline": not args.skip_baseline})
  if failures:
    print(f"FAILED: {failures}")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
