"""Benchmark: the catalogue job on 4-minute tracks against 30-s clips of the same music.

Target, on one worker process (``deepbof-tag-catalog``, the FnApiRunner with
``--direct_running_mode=multi_processing``):

* audio-seconds tagged per worker CPU-second on 4-minute tracks ≥ 0.9 of the rate on
  30-s clips, both measured in this run, marginally (the difference between two corpus
  sizes, so that the worker's start-up — importing TensorFlow, loading and tracing the
  export — is left out);
* the worker's peak RSS on the tracks ≤ 1.1 of its peak on the clips.

The tracks are the clips' own music: each 4-minute MP3 is eight distinct 30-s pieces in
a row, the clips are the same pieces one by one (44.1 kHz MP3, LAME-tagged). The job
runs with its defaults: a track is decoded and resampled once, then encoded chunk by
chunk (two streaming passes: the first computes each chunk's STFT and keeps it, the
second encodes from it). Reported next to it: the same tracks tagged in
one piece (``--one_shot_seconds=600``), batched with each other.

The model is bench_serving's synthetic one (the paper's sizes).

Usage::

  .venv/bin/python benchmarks/bench_long_tracks.py [--clips=32,192] [--tracks=4,24]
      [--track_seconds=240] [--repeats=2]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

import result_line  # noqa: E402  (benchmarks/, the script's own folder)

SAMPLE_RATE = 44100
PIECE_SECONDS = 30.0


def _write_corpus(root: str, items: Sequence[np.ndarray]) -> str:
  """MP3s of ``items`` and a CSV manifest under ``root``; returns the manifest."""
  import soundfile as sf
  audio_dir = os.path.join(root, "audio")
  os.makedirs(audio_dir, exist_ok=True)
  encoded: Dict[int, bytes] = {}
  rows = ["path,split,tags"]
  for i, samples in enumerate(items):
    key = id(samples)
    if key not in encoded:
      buffer = io.BytesIO()
      sf.write(buffer, samples, SAMPLE_RATE, format="MP3")
      encoded[key] = buffer.getvalue()
    name = f"f{i:05d}.mp3"
    with open(os.path.join(audio_dir, name), "wb") as f:
      f.write(encoded[key])
    rows.append(f"{name},,rock")
  manifest = os.path.join(root, "manifest.csv")
  with open(manifest, "w") as f:
    f.write("\n".join(rows) + "\n")
  return manifest


def run_catalog(manifest: str, export_dir: str, output_dir: str,
                one_shot_seconds: float) -> Tuple[float, float, float, int]:
  """(wall s, worker CPU s, worker peak RSS MB, files tagged) of a 1-worker run."""
  from bench_preprocess import PeakRss
  from beam_jobs import catalog_runs
  from beam_jobs import tag_catalog_lib
  config = tag_catalog_lib.TagCatalogConfig(
      model=export_dir, input=manifest, output_dir=output_dir, overwrite=True,
      audio_root=os.path.join(os.path.dirname(manifest), "audio"),
      one_shot_seconds=one_shot_seconds)
  with PeakRss() as rss:
    start = time.perf_counter()
    metadata = catalog_runs.run(config, ["--direct_num_workers=1",
                                         "--direct_running_mode=multi_processing"])
    wall = time.perf_counter() - start
  shutil.rmtree(output_dir, ignore_errors=True)
  peaks = rss.worker_peaks_mb
  return wall, rss.worker_cpu_seconds, max(peaks or [0.0]), metadata["num_files"]


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--clips", default="32,192", help="two clip-corpus sizes")
  parser.add_argument("--tracks", default="4,24", help="two track-corpus sizes")
  parser.add_argument("--track_seconds", type=float, default=240.0)
  parser.add_argument("--repeats", type=int, default=2, help="runs of each corpus, "
                      "interleaved; the least CPU of each is kept (a shared host only "
                      "ever adds time)")
  parser.add_argument("--pca_dims", type=int, default=128)
  args = parser.parse_args()
  logging.getLogger().setLevel(logging.WARNING)
  import bench_preprocess
  import bench_serving
  from beam_jobs import tag_catalog_lib
  from serving import export_lib

  per_track = int(round(args.track_seconds / PIECE_SECONDS))
  pieces = [bench_preprocess._music(PIECE_SECONDS, SAMPLE_RATE, seed)  # pylint: disable=protected-access
            for seed in range(per_track)]
  track = np.concatenate(pieces)
  clip_sizes = sorted(int(n) for n in args.clips.split(","))
  track_sizes = sorted(int(n) for n in args.tracks.split(","))
  root = tempfile.mkdtemp(prefix="bench_long_tracks_")
  rows: List[dict] = []
  try:
    model_dir = bench_serving.synthetic_model_dir(os.path.join(root, "model"),
                                                  args.pca_dims)
    export_dir = os.path.join(root, "export")
    export_lib.export(model_dir, export_dir)
    corpora = {}
    for n in clip_sizes:
      corpora[("clips", n)] = (_write_corpus(os.path.join(root, f"clips{n}"),
                                             [pieces[i % per_track] for i in range(n)]),
                               n * PIECE_SECONDS)
    for n in track_sizes:
      corpora[("tracks", n)] = (_write_corpus(os.path.join(root, f"tracks{n}"),
                                              [track] * n), n * len(track) / SAMPLE_RATE)
    default = tag_catalog_lib.DEFAULT_ONE_SHOT_SECONDS
    runs = [("clips", n, default) for n in clip_sizes] + [
        ("tracks", n, default) for n in track_sizes] + [
        ("tracks, one-shot", n, 600.0) for n in track_sizes]
    results = {}
    print(f"{'corpus':>16} {'files':>6} {'audio s':>8} {'wall s':>7} {'CPU s':>7} "
          f"{'x RT/CPU-s':>10} {'peak RSS MB':>12}")
    for _ in range(args.repeats):
      for kind, n, one_shot in runs:
        manifest, seconds = corpora[("clips" if kind == "clips" else "tracks", n)]
        wall, cpu, peak, tagged = run_catalog(manifest, export_dir,
                                              os.path.join(root, "out"), one_shot)
        assert tagged == n, (kind, n, tagged)
        if (kind, n) in results:  # the least CPU, the largest peak of the repeats
          _, cpu0, peak0 = results[(kind, n)]
          cpu, peak = min(cpu, cpu0), max(peak, peak0)
        results[(kind, n)] = (seconds, cpu, peak)
        print(f"{kind:>16} {n:>6} {seconds:>8.0f} {wall:>7.1f} {cpu:>7.1f} "
              f"{seconds / cpu:>10.1f} {peak:>12.0f}")

    def marginal(kind, sizes):
      (s0, c0, _), (s1, c1, _) = results[(kind, sizes[0])], results[(kind, sizes[-1])]
      return (s1 - s0) / (c1 - c0) if c1 > c0 else float("nan")

    clips_rate = marginal("clips", clip_sizes)
    tracks_rate = marginal("tracks", track_sizes)
    one_shot_rate = marginal("tracks, one-shot", track_sizes)
    print(f"marginal audio-s per worker CPU-s: clips {clips_rate:.1f}, tracks "
          f"{tracks_rate:.1f} ({tracks_rate / clips_rate:.2f}), tracks in one piece "
          f"{one_shot_rate:.1f} ({one_shot_rate / clips_rate:.2f})")
    applies = (args.track_seconds >= 200 and clip_sizes[-1] - clip_sizes[0] >= 128
               and track_sizes[-1] - track_sizes[0] >= 16)
    rows.append(result_line.measurement(
        f"deepbof-tag-catalog, {args.track_seconds:g}-s tracks, 1 worker, marginal",
        tracks_rate, "audio-s/CPU-s", reference="30-s clips of the same music, same run",
        reference_value=clips_rate, target=">= 0.9", target_on="ratio", applies=applies))
    rows.append(result_line.measurement(
        f"deepbof-tag-catalog, {args.track_seconds:g}-s tracks in one piece "
        "(--one_shot_seconds=600)", one_shot_rate, "audio-s/CPU-s",
        reference="30-s clips, same run", reference_value=clips_rate))
    peak_clips = max(results[("clips", n)][2] for n in clip_sizes)
    for kind, target in (("tracks", "<= 1.1"), ("tracks, one-shot", None)):
      peak = max(results[(kind, n)][2] for n in track_sizes)
      label = "" if kind == "tracks" else " in one piece"
      rows.append(result_line.measurement(
          f"deepbof-tag-catalog worker peak RSS, {args.track_seconds:g}-s tracks{label}",
          peak, "MB", reference="30-s clips, same run", reference_value=peak_clips,
          target=target, target_on="ratio", applies=applies))
  finally:
    shutil.rmtree(root, ignore_errors=True)
  result_line.emit("long_tracks", rows, config={
      "clips": args.clips, "tracks": args.tracks, "track_seconds": args.track_seconds,
      "repeats": args.repeats, "pca_dims": args.pca_dims})
  return 0


if __name__ == "__main__":
  sys.exit(main())
