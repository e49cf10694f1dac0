"""Benchmark: the Beam preprocessing job on 30-s MP3 clips (DirectRunner, multi-process).

Targets, on a 2-core machine:

* end to end (decode + resample + features + write, clip and block TFRecords) with
  ``--direct_num_workers=2 --direct_running_mode=multi_processing``: >= 400x real time,
  and >= 600x marginal (start-up excluded, see below);
* 2 workers >= 1.6x faster than 1;
* the peak RSS of a worker does not grow with the number of clips.

The corpus is generated here (tones with note onsets plus noise, encoded to MP3 by
libsndfile; a few distinct clips are copied under many names, which costs the pipeline
the same as distinct ones). The script prints:

1. a per-stage breakdown of one clip in this process on one TensorFlow thread
   (read, decode, resample, features, serialize, gzip TFRecord write), so the share of
   each stage is visible whatever the load of the machine;
2. for 1 and 2 workers and two corpus sizes: wall time, end-to-end x real time, the
   *marginal* x real time ((clips_large - clips_small) x seconds / (wall_large -
   wall_small)), which excludes the fixed start-up cost (spawning workers, importing
   TensorFlow, tracing), and the peak RSS of the worker processes and of the runner;
3. the ratios the targets are about. On a shared machine compare ratios, not absolutes.

Usage::

  .venv/bin/python benchmarks/bench_preprocess.py [--clips=20,60] [--seconds=30]
      [--sample_rate=44100] [--workers=1,2]
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import statistics
import tempfile
import threading
import time
from typing import Dict, List, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

import result_line  # noqa: E402  (benchmarks/, the script's own folder)

FLAGS = flags.FLAGS
flags.DEFINE_list("clips", ["40", "600"], "Two corpus sizes (clips); the larger one amortises the fixed start-up.")
flags.DEFINE_list("workers", ["1", "2"], "Beam worker counts (multi_processing).")
flags.DEFINE_float("seconds", 30.0, "Clip length (s).")
flags.DEFINE_integer("sample_rate", 44100, "Sample rate of the generated MP3s (Hz).")
flags.DEFINE_integer("distinct", 4, "Distinct clips (the rest are copies).")
flags.DEFINE_integer("blocks_per_train_clip", 14, "Block budget per training clip "
                     "(MagnaTagATune: 200,000 blocks / 14,660 train clips ≈ 14).")
flags.DEFINE_string("work_dir", None, "Scratch directory (default: a new temp dir).")
flags.DEFINE_bool("keep", False, "Keep the scratch directory.")


# x real time on 2 workers, 30-s clips (the module docstring).
END_TO_END_TARGET = 400
MARGINAL_TARGET = 600


# --------------------------------------------------------------------------------------
# Corpus.
# --------------------------------------------------------------------------------------


def _music(seconds: float, rate: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * rate)) / rate
  x = np.zeros_like(t)
  # Each note decays as exp(-5 t); after 8 s it is below 1e-17 of its start (under the
  # float64 sum's rounding), so it is added over those 8 s only: linear in the length.
  for start in np.arange(0.0, seconds, 0.25):
    f0 = 110.0 * 2 ** (rng.integers(0, 36) / 12)
    lo, hi = int(np.ceil(start * rate)), min(t.size, int(np.ceil((start + 8.0) * rate)))
    u = t[lo:hi]
    env = np.exp(-(u - start) * 5.0)
    x[lo:hi] += 0.15 * env * (np.sin(2 * np.pi * f0 * u) + 0.3 * np.sin(4 * np.pi * f0 * u))
  x += 0.01 * rng.standard_normal(t.size)
  return np.clip(x, -1, 1).astype(np.float32)


def make_corpus(root: str, n_clips: int, seconds: float, rate: int,
                distinct: int) -> str:
  """Writes ``n_clips`` MP3s and a CSV manifest (80/10/10 by hash) under ``root``."""
  audio_dir = os.path.join(root, "audio")
  os.makedirs(audio_dir, exist_ok=True)
  encoded = []
  for seed in range(distinct):
    buffer = io.BytesIO()
    sf.write(buffer, _music(seconds, rate, seed), rate, format="MP3")
    encoded.append(buffer.getvalue())
  rows = ["path,split,tags"]
  for i in range(n_clips):
    name = f"clip{i:05d}.mp3"
    with open(os.path.join(audio_dir, name), "wb") as f:
      f.write(encoded[i % distinct])
    rows.append(f"{name},,{['rock', 'jazz', 'pop'][i % 3]}")
  manifest = os.path.join(root, "manifest.csv")
  with open(manifest, "w") as f:
    f.write("\n".join(rows) + "\n")
  return manifest


# --------------------------------------------------------------------------------------
# Peak RSS of the worker processes (Linux /proc; no extra dependency).
# --------------------------------------------------------------------------------------


def _children() -> Dict[int, List[int]]:
  tree: Dict[int, List[int]] = {}
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/stat") as f:
        stat = f.read()
      ppid = int(stat.rsplit(")", 1)[1].split()[1])
      tree.setdefault(ppid, []).append(int(entry))
    except (OSError, ValueError, IndexError):
      continue
  return tree


def _descendants(pid: int) -> List[int]:
  tree, out, stack = _children(), [], [pid]
  while stack:
    for child in tree.get(stack.pop(), []):
      out.append(child)
      stack.append(child)
  return out


def _status_kb(pid, key: str) -> int:
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith(key + ":"):
          return int(line.split()[1])
  except OSError:
    pass
  return 0


def _cpu_seconds(pid) -> float:
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime+stime
  except (OSError, ValueError, IndexError):
    return 0.0


class PeakRss:
  """Polls the peak RSS (VmHWM) and CPU time of every descendant running a Beam worker."""

  def __init__(self, interval: float = 0.1):
    self._interval = interval
    self._peaks: Dict[int, int] = {}
    self._cpu: Dict[int, float] = {}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._poll, daemon=True)

  def _poll(self):
    while not self._stop.is_set():
      for pid in _descendants(os.getpid()):
        try:
          with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        except OSError:
          continue
        if b"sdk_worker_main" in cmd and b"/bin/sh" not in cmd.split(b"\0")[0]:
          self._peaks[pid] = max(self._peaks.get(pid, 0), _status_kb(pid, "VmHWM"))
          self._cpu[pid] = max(self._cpu.get(pid, 0.0), _cpu_seconds(pid))
      self._stop.wait(self._interval)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()

  @property
  def worker_cpu_seconds(self) -> float:
    """CPU seconds of all workers (sampled every ``interval``: a slight undercount)."""
    return sum(self._cpu.values())

  @property
  def worker_peaks_mb(self) -> List[float]:
    return sorted(v / 1024 for v in self._peaks.values())


def _reset_own_peak() -> None:
  try:  # Linux >= 4.0: writing 5 to clear_refs resets VmHWM of this process.
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
  except OSError:
    pass


# --------------------------------------------------------------------------------------
# Stage breakdown of one clip (this process, one TensorFlow thread).
# --------------------------------------------------------------------------------------


def stage_breakdown(path: str, runs: int = 3) -> List[Tuple[str, float]]:
  import tensorflow as tf
  from apache_beam.io.tfrecordio import _TFRecordUtil
  from beam_jobs import sinks
  from deepbof_tf import audio, frontend
  from deepbof_tf.data import schema
  # Like a Beam worker of the job: one TensorFlow thread.
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)

  out_path = path + ".bench.tfrecord.gz"
  times: Dict[str, List[float]] = {}

  def timed(name, fn):
    start = time.perf_counter()
    value = fn()
    times.setdefault(name, []).append(time.perf_counter() - start)
    return value

  for _ in range(runs + 1):  # the first run warms up (tracing, resampler latency)
    data = timed("read", lambda: tf.io.gfile.GFile(path, "rb").read())
    samples, rate = timed("decode", lambda: audio.decode_audio_bytes(data, path))
    mono = audio.to_mono(samples, "first")
    waveform = timed("resample", lambda: audio.resample(mono, rate, 22050))
    log_mel, novelty = timed("features", lambda: [
        t.numpy() for t in frontend.compute_features(waveform)])
    payload = timed("serialize", lambda: schema.serialize_clip_example(
        "c", path, log_mel, novelty, np.zeros(50, np.float32)))

    def write():
      # What the job's TFRecord sink does per record: framing + crc32c, then ISA-L gzip.
      compressed = sinks.IgzipWriter(open(out_path, "wb"))
      _TFRecordUtil.write_record(compressed, payload)
      compressed.close()

    timed("gzip write", write)
  os.remove(out_path)
  return [(name, statistics.median(values[1:])) for name, values in times.items()]


# --------------------------------------------------------------------------------------
# Pipeline runs.
# --------------------------------------------------------------------------------------


def run_pipeline(manifest: str, output_dir: str, workers: int, num_blocks: int
                 ) -> Tuple[float, dict, List[float], float, Dict[str, float]]:
  """Wall seconds, metadata, worker peak RSS (MB), runner peak RSS (MB), CPU seconds."""
  from beam_jobs import preprocess_lib
  from deepbof_tf.config import SamplingConfig
  config = preprocess_lib.PreprocessConfig(
      manifest=manifest, audio_root=os.path.dirname(manifest) + "/audio",
      output_dir=output_dir, overwrite=True,
      sampling=SamplingConfig(num_blocks=num_blocks))
  _reset_own_peak()
  runner_cpu = time.process_time()
  with PeakRss() as rss:
    start = time.perf_counter()
    metadata = preprocess_lib.run(config, beam_args=[
        f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"])
    wall = time.perf_counter() - start
  runner_mb = _status_kb("self", "VmHWM") / 1024
  cpu = {"workers": rss.worker_cpu_seconds, "runner": time.process_time() - runner_cpu}
  return wall, metadata, rss.worker_peaks_mb, runner_mb, cpu


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.WARNING)
  sizes = sorted(int(c) for c in FLAGS.clips)
  if len(sizes) != 2 or sizes[0] == sizes[1] or sizes[0] < 1:
    raise app.UsageError(f"--clips={','.join(FLAGS.clips)}: expected two different "
                         "positive corpus sizes, e.g. --clips=40,600")
  worker_counts = [int(w) for w in FLAGS.workers]
  root = FLAGS.work_dir or tempfile.mkdtemp(prefix="bench_preprocess_")
  print(f"scratch: {root}; {os.cpu_count()} CPUs; load average "
        f"{os.getloadavg()[0]:.2f} (ratios matter on a shared machine)")
  manifests = {}
  for n in sizes:
    manifests[n] = make_corpus(os.path.join(root, f"corpus{n}"), n, FLAGS.seconds,
                               FLAGS.sample_rate, FLAGS.distinct)
  print(f"corpus: {sizes} clips of {FLAGS.seconds:.0f} s, MP3 at {FLAGS.sample_rate} Hz")

  breakdown = stage_breakdown(os.path.join(root, f"corpus{sizes[0]}", "audio",
                                           "clip00000.mp3"))
  total = sum(t for _, t in breakdown)
  print(f"\none clip, this process, one TF thread: {total * 1000:.0f} ms = "
        f"{FLAGS.seconds / total:.0f}x real time")
  for name, t in breakdown:
    print(f"  {name:<11} {t * 1000:8.1f} ms  {100 * t / total:5.1f} %")

  results = {}
  print(f"\n{'workers':>7} {'clips':>6} {'audio s':>8} {'wall s':>7} {'x RT':>7} "
        f"{'worker CPU':>9} {'run. CPU':>8} {'worker peak RSS MB':>20} {'runner MB':>10} "
        f"{'blocks':>7} reconciled")
  for workers in worker_counts:
    for n in sizes:
      out = os.path.join(root, f"out_w{workers}_n{n}")
      budget = max(1, int(FLAGS.blocks_per_train_clip * 0.8 * n))  # 80 % train
      wall, metadata, peaks, runner_mb, cpu = run_pipeline(manifests[n], out, workers,
                                                           budget)
      audio_s = n * FLAGS.seconds
      results[(workers, n)] = (wall, peaks, cpu)
      print(f"{workers:>7} {n:>6} {audio_s:>8.0f} {wall:>7.1f} {audio_s / wall:>7.1f} "
            f"{cpu['workers']:>9.1f} {cpu['runner']:>8.1f} "
            f"{', '.join(f'{p:.0f}' for p in peaks):>20} {runner_mb:>10.0f} "
            f"{metadata['num_blocks']:>7} {metadata['counters']['reconciled']}")
      shutil.rmtree(out, ignore_errors=True)

  small, large = sizes[0], sizes[-1]
  print("\nratios")
  marginal = {}
  for workers in worker_counts:
    d_wall = results[(workers, large)][0] - results[(workers, small)][0]
    marginal[workers] = (large - small) * FLAGS.seconds / d_wall if d_wall > 0 else float("nan")
    per_clip = d_wall / (large - small) if d_wall > 0 else float("nan")
    fixed = results[(workers, small)][0] - small * per_clip
    print(f"  {workers} worker(s): marginal {marginal[workers]:.1f}x real time "
          f"(excludes start-up); end to end at {large} clips "
          f"{large * FLAGS.seconds / results[(workers, large)][0]:.1f}x; fixed start-up "
          f"cost ≈ {fixed:.1f} s (launcher + worker imports + tracing)")
    if marginal[workers] > END_TO_END_TARGET:
      # n·s / (fixed + n·per_clip) >= R  ⇔  n >= R·fixed / (s − R·per_clip)
      needed = END_TO_END_TARGET * fixed / (FLAGS.seconds - END_TO_END_TARGET * per_clip)
      print(f"    end to end reaches {END_TO_END_TARGET}x from about {max(needed, 0):.0f} "
            f"clips of {FLAGS.seconds:.0f} s")
  for workers in worker_counts:
    d_cpu = results[(workers, large)][2]["workers"] - results[(workers, small)][2]["workers"]
    print(f"  {workers} worker(s): marginal worker CPU per clip "
          f"{1000 * d_cpu / (large - small):.0f} ms (in-process stage sum "
          f"{total * 1000:.0f} ms; load-independent: 2 workers on 2 idle cores scale "
          "linearly when the two agree)")
  if 1 in worker_counts and 2 in worker_counts:
    e2e = results[(1, large)][0] / results[(2, large)][0]
    print(f"  2 vs 1 workers: end to end {e2e:.2f}x, marginal "
          f"{marginal[2] / marginal[1]:.2f}x (target >= 1.6x)")
  for workers in worker_counts:
    p_small = max(results[(workers, small)][1] or [0])
    p_large = max(results[(workers, large)][1] or [0])
    if p_small:
      print(f"  {workers} worker(s): worker peak RSS {p_small:.0f} MB at {small} clips, "
            f"{p_large:.0f} MB at {large} clips ({p_large / p_small:.2f}x; streaming "
            "means ~1.0x)")
  if 2 in worker_counts:
    print(f"  2 workers vs the {END_TO_END_TARGET}x end-to-end and {MARGINAL_TARGET}x "
          f"marginal targets: "
          f"{large * FLAGS.seconds / results[(2, large)][0] / END_TO_END_TARGET:.2f} and "
          f"{marginal[2] / MARGINAL_TARGET:.2f} (>= 1.00 meets them)")
  _emit_result(sizes, worker_counts, results, marginal, FLAGS.seconds / total)
  if not FLAGS.keep and not FLAGS.work_dir:
    shutil.rmtree(root, ignore_errors=True)


def _emit_result(sizes: List[int], worker_counts: List[int], results: dict,
                 marginal: Dict[int, float], in_process_rt: float) -> None:
  """The BENCHMARK_RESULT line: the preprocessing targets as measured above."""
  small, large = sizes[0], sizes[-1]
  # The targets were written for 30-s MP3s at 44.1 kHz and a corpus (600 clips) large
  # enough to amortise the ~10 s start-up; smaller runs report the numbers as n/a.
  applies = (FLAGS.seconds == 30.0 and FLAGS.sample_rate == 44100 and large >= 600
             and small < large)
  seconds = FLAGS.seconds
  reference = "in-process stages of one clip, one TF thread"
  rows = []
  for workers in worker_counts:
    wall = results[(workers, large)][0]
    rows.append(result_line.measurement(
        f"Beam preprocess, {workers} worker(s), end to end, {large} clips of {seconds:g} s",
        large * seconds / wall, "x real time", reference=reference,
        reference_value=in_process_rt,
        target=f">= {END_TO_END_TARGET}" if workers == 2 else None,
        applies=applies, note=f"{wall:.0f} s wall"))
    rows.append(result_line.measurement(
        f"Beam preprocess, {workers} worker(s), marginal (start-up excluded)",
        marginal[workers], "x real time", reference=reference,
        reference_value=in_process_rt,
        target=f">= {MARGINAL_TARGET}" if workers == 2 else None,
        applies=applies))
  if 1 in worker_counts and 2 in worker_counts:
    rows.append(result_line.measurement(
        f"Beam preprocess, 2 vs 1 workers, end to end at {large} clips",
        large * seconds / results[(2, large)][0], "x real time",
        reference="1 worker, same corpus",
        reference_value=large * seconds / results[(1, large)][0],
        target=">= 1.6", target_on="ratio", applies=applies))
  for workers in worker_counts:
    p_small = max(results[(workers, small)][1] or [0])
    p_large = max(results[(workers, large)][1] or [0])
    if p_small and small < large:
      # "Does not grow with the number of clips", read as: at most 10 % more on the
      # large corpus than on the small one.
      rows.append(result_line.measurement(
          f"Beam worker peak RSS, {workers} worker(s), {large} clips", p_large, "MB",
          reference=f"same at {small} clips", reference_value=p_small,
          target="<= 1.1", target_on="ratio", applies=applies))
  result_line.emit("preprocess", rows, config={
      "clips": sizes, "workers": worker_counts, "seconds": seconds,
      "sample_rate": FLAGS.sample_rate, "distinct": FLAGS.distinct,
      "blocks_per_train_clip": FLAGS.blocks_per_train_clip})


if __name__ == "__main__":
  app.run(main)
