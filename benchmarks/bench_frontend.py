"""Benchmark: front-end features of a 30-s clip on one CPU thread (decode excluded).

Target: ``compute_features`` of a 30-s clip at 22,050 Hz in < 50 ms on one core.
The machine may be shared, so the script also times references in the same run and
prints ratios:

* ``tf.signal.stft`` alone (1024/512, Hann) on the same clip,
* one plain ``[1293, 513] @ [513, 128]`` float32 matmul,
* librosa's ``melspectrogram`` (1024/512, 128 Slaney bands, NumPy/SciPy on one thread
  when the BLAS thread count is limited by the environment variables set below).

Usage::

  .venv/bin/python benchmarks/bench_frontend.py [--runs 30] [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

# One thread everywhere, set before TensorFlow / NumPy start their pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
             "TF_NUM_INTEROP_THREADS"):
  os.environ.setdefault(_var, "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

from deepbof_tf import frontend  # noqa: E402
from deepbof_tf.config import FrontendConfig  # noqa: E402
import result_line  # noqa: E402  (benchmarks/, the script's own folder)


def _median_ms(fn, runs: int, warmup: int = 3) -> float:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1000.0 * statistics.median(times)


def _test_clip(seconds: float, sample_rate: int) -> np.ndarray:
  """Harmonic tones with note changes plus a little noise: music-like, deterministic."""
  rng = np.random.default_rng(0)
  n = int(seconds * sample_rate)
  t = np.arange(n) / sample_rate
  x = np.zeros(n)
  for start in np.arange(0.0, seconds, 0.5):
    f0 = 110.0 * 2 ** (rng.integers(0, 36) / 12)
    mask = (t >= start) & (t < start + 0.5)
    envelope = np.exp(-3.0 * (t[mask] - start))
    for h in range(1, 8):
      x[mask] += envelope * np.sin(2 * np.pi * h * f0 * t[mask]) / h
  x += 0.01 * rng.standard_normal(n)
  return (0.3 * x / np.abs(x).max()).astype(np.float32)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=30, help="timed runs per measurement")
  parser.add_argument("--seconds", type=float, default=30.0, help="clip length in seconds")
  args = parser.parse_args()

  config = FrontendConfig()
  clip = _test_clip(args.seconds, config.sample_rate)
  frames = frontend.frame_count(len(clip), config)
  waveform = tf.constant(clip)

  def features():
    log_mel, novelty = frontend.compute_features(waveform, config)
    return log_mel.numpy(), novelty.numpy()

  batch = tf.constant(np.stack([clip] * 8))
  lengths = tf.constant([len(clip)] * 8, tf.int32)

  def features_batch():
    return frontend.compute_features_batch(batch, lengths, config)[0].numpy()

  stft_fn = tf.function(lambda w: tf.abs(tf.signal.stft(w, 1024, 512, 1024, pad_end=True)),
                        input_signature=[tf.TensorSpec([None], tf.float32)])
  spectrum = tf.random.stateless_uniform([frames, 513], seed=[1, 2])
  mel_matrix = tf.constant(frontend.mel_filterbank(config.n_mels, 1.0, config), tf.float32)
  matmul_fn = tf.function(lambda a, b: tf.linalg.matmul(a, b))

  ours = _median_ms(features, args.runs)
  ours_batch = _median_ms(features_batch, max(3, args.runs // 4)) / 8
  stft_ms = _median_ms(lambda: stft_fn(waveform).numpy(), args.runs)
  matmul_ms = _median_ms(lambda: matmul_fn(spectrum, mel_matrix).numpy(), args.runs)
  try:
    import librosa
    librosa_ms = _median_ms(lambda: librosa.feature.melspectrogram(
        y=clip, sr=config.sample_rate, n_fft=1024, hop_length=512, n_mels=128, htk=False,
        norm="slaney"), max(3, args.runs // 3))
  except ImportError:  # librosa is a dev dependency; the benchmark works without it
    librosa_ms = float("nan")

  print(f"clip: {args.seconds:g} s at {config.sample_rate} Hz, {frames} frames; "
        f"one TF thread; median of {args.runs} runs after warm-up")
  print(f"compute_features           {ours:8.2f} ms/clip   realtime factor "
        f"{1000 * args.seconds / ours:7.0f}x   target < 50 ms: "
        f"{'PASS' if ours < 50 else 'FAIL'}")
  print(f"compute_features_batch (8) {ours_batch:8.2f} ms/clip")
  print(f"reference tf.signal.stft   {stft_ms:8.2f} ms        ours/stft   = {ours / stft_ms:5.2f}")
  print(f"reference {frames}x513 @ 513x128 matmul {matmul_ms:6.2f} ms  "
        f"ours/matmul = {ours / matmul_ms:5.1f}")
  print(f"reference librosa melspectrogram {librosa_ms:8.2f} ms  "
        f"ours/librosa = {ours / librosa_ms:5.2f}")

  # The < 50 ms target is about a 30-s clip.
  applies = args.seconds == 30.0
  result_line.emit("frontend", [
      result_line.measurement(
          f"front end (compute_features), {args.seconds:g}-s clip, one thread", ours, "ms",
          reference="tf.signal.stft of the same clip", reference_value=stft_ms,
          target="< 50", applies=applies,
          note=f"{1000 * args.seconds / ours:.0f}x real time"),
      result_line.measurement(
          "front end vs librosa melspectrogram (one thread)", ours, "ms",
          reference="librosa.feature.melspectrogram", reference_value=librosa_ms),
      result_line.measurement(
          "front end batched (compute_features_batch, 8 clips), per clip", ours_batch, "ms",
          reference="compute_features, one clip", reference_value=ours),
  ], config={"seconds": args.seconds, "runs": args.runs, "frames": frames})


if __name__ == "__main__":
  main()
