"""Chunked (streaming) bag-of-features encoding of long recordings, equal to one-shot.

A one-hour recording is 79 M samples at 22,050 Hz (318 MB as float32) and ~155 k STFT
frames; computing it in one piece needs several GB. This module cuts it into chunks
whose results combine into *exactly* the one-shot bag-of-features:

* **framing** — chunk ``[t0, t1)`` of frames needs the original samples
  ``[hop·t0 − n_fft/2, hop·(t1 − 1) + n_fft/2)`` (zeros outside the recording), framed
  without further padding (:func:`segment_bounds`; ``frontend.stft_magnitude(pad=False)``).
* **floor** — ``S += 1e-4·max(S)`` uses the maximum over the *whole* recording, so a
  first pass computes every chunk's STFT maximum (:func:`segment_peak`) and the second
  pass floors with the global one. Where memory allows, the first pass keeps each
  chunk's magnitudes (:func:`segment_spectrum`, ~88 KB per second of audio) and the
  second encodes from them (:func:`encode_spectrum`) instead of computing the STFT
  again: the same numbers, one STFT per chunk.
* **AGC** — the band envelope after a chunk's last frame is the next chunk's initial
  state (``frontend.agc(initial_state=...)``; zeros = the clip start).
* **blocks** — a block covers ``block_frames`` frames, so each chunk after the first is
  encoded together with the last ``block_frames − 1`` log-mel frames of the previous
  chunk (carried, not recomputed).
* **pooling** — max-pooling windows are aligned to multiples of ``pool_frames`` block
  positions from the clip start. Chunk boundaries are placed so that chunk ``k``
  encodes exactly the block positions ``[k·L, (k+1)·L)`` with ``L`` a multiple of
  ``pool_frames`` (:func:`plan_chunks`): every window lies in one chunk, the last
  window of the recording may be short as in one-shot, and the bag-of-features is the
  mean of all chunks' window maxima (:func:`mean_of_windows`).

Decoding is bounded too: :class:`ResampledNativeWaveform` decodes the file once
(``deepbof_tf.audio.open_decoded``, into a temporary file when long) and resamples the
ranges the passes ask for, equal to ``deepbof_tf.audio.load_audio`` of the whole file;
:class:`SpooledWaveform` spools the resampled result itself.

The TensorFlow functions here (:func:`segment_peak`, :func:`encode_segment`) use core
ops only; ``serving/export_lib.py`` traces them into the SavedModel's ``stream_*``
signatures so that the ``deepbof-tag`` CLI streams with the exported weights.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np

from deepbof_tf import framing
from deepbof_tf.config import DEFAULT_BLOCK_FRAMES, DEFAULT_POOL_FRAMES, FrontendConfig

_DEFAULT_CONFIG = FrontendConfig()


# --------------------------------------------------------------------------------------
# Chunk plan (pure Python).
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Chunk:
  """Frames ``[frame_start, frame_stop)`` computed by one streaming step.

  Attributes:
    frame_start: first STFT frame of the chunk.
    frame_stop: one past its last frame.
    first_block: the first block position it encodes (a multiple of pool_frames).
  """

  frame_start: int
  frame_stop: int
  first_block: int


# ``frontend.frame_count`` for Python ints without importing TensorFlow (one definition,
# deepbof_tf.framing; kept under this name for the callers of this module).
frame_count = framing.frame_count


def plan_chunks(num_samples: int, windows_per_chunk: int,
                config: FrontendConfig = _DEFAULT_CONFIG,
                block_frames: int = DEFAULT_BLOCK_FRAMES,
                pool_frames: int = DEFAULT_POOL_FRAMES) -> List[Chunk]:
  """Splits a recording into chunks whose pooling windows never straddle two chunks.

  Chunk 0 computes frames ``[0, L + block_frames − 1)`` and encodes block positions
  ``[0, L)``; chunk ``k ≥ 1`` computes frames ``[k·L + block_frames − 1, (k+1)·L +
  block_frames − 1)`` and, with the carried ``block_frames − 1`` frames before them,
  encodes positions ``[k·L, (k+1)·L)``; ``L = windows_per_chunk · pool_frames``. The
  last chunk ends at the recording's last frame.

  Args:
    num_samples: length of the recording at ``config.sample_rate``.
    windows_per_chunk: pooling windows per chunk (≥ 1); sets memory per step.
    config: the front-end configuration (framing).
    block_frames: frames per block.
    pool_frames: pooling window in block positions.

  Returns:
    The chunks in order; one chunk when the recording is short.
  """
  if windows_per_chunk < 1:
    raise ValueError(f"windows_per_chunk must be >= 1, got {windows_per_chunk}")
  total = frame_count(num_samples, config)
  span = windows_per_chunk * pool_frames
  chunks = []
  start, block = 0, 0
  stop = span + block_frames - 1
  while True:
    if stop >= total:
      chunks.append(Chunk(start, total, block))
      return chunks
    chunks.append(Chunk(start, stop, block))
    start, block, stop = stop, block + span, stop + span


def segment_bounds(chunk: Chunk, config: FrontendConfig = _DEFAULT_CONFIG) -> Tuple[int, int]:
  """Original-sample range ``[start, stop)`` that frames a chunk (may exceed the clip).

  Frame ``t`` of the padded signal covers original samples
  ``[hop·t − n_fft/2, hop·t + n_fft/2)``; samples outside ``[0, num_samples)`` are
  the zero padding of the front end's framing.

  Args:
    chunk: the chunk.
    config: the front-end configuration.
  """
  half = config.n_fft // 2
  start = config.hop_length * chunk.frame_start - half
  stop = config.hop_length * (chunk.frame_stop - 1) + config.n_fft - half
  return start, stop


def mean_of_windows(pooled: List[np.ndarray]) -> np.ndarray:
  """Bag-of-features: the mean of all chunks' window maxima (float64 sum → float32).

  Args:
    pooled: per chunk, ``[windows, H]`` window maxima.
  """
  stacked = np.concatenate([np.asarray(p, np.float64) for p in pooled], axis=0)
  if stacked.shape[0] == 0:
    raise ValueError("no pooling window to average")
  return stacked.mean(axis=0).astype(np.float32)


def group_windows(pooled: np.ndarray, windows_per_segment: int) -> np.ndarray:
  """Means over consecutive groups of pooling windows (a taggram's time resolution).

  Args:
    pooled: ``[windows, H]`` window maxima of a whole recording.
    windows_per_segment: windows per group; the last group may be shorter.

  Returns:
    ``[ceil(windows / windows_per_segment), H]`` float32.
  """
  if windows_per_segment < 1:
    raise ValueError(f"windows_per_segment must be >= 1, got {windows_per_segment}")
  pooled = np.asarray(pooled, np.float64)
  groups = [pooled[i:i + windows_per_segment].mean(axis=0)
            for i in range(0, pooled.shape[0], windows_per_segment)]
  return np.stack(groups).astype(np.float32)


# --------------------------------------------------------------------------------------
# Streaming steps (TensorFlow, core ops only).
# --------------------------------------------------------------------------------------


def segment_peak(segment, config: FrontendConfig = _DEFAULT_CONFIG):
  """Pass 1: the largest STFT magnitude of a chunk's frames.

  Args:
    segment: float32 ``[samples]`` from :func:`segment_bounds` (zero-filled outside
      the recording).
    config: the front-end configuration.

  Returns:
    A float32 scalar tensor; the recording's maximum is the max over its chunks.
  """
  from deepbof_tf import frontend
  import tensorflow as tf
  return tf.reduce_max(frontend.stft_magnitude(segment, config, pad=False))


def segment_spectrum(segment, config: FrontendConfig = _DEFAULT_CONFIG):
  """Pass 1, keeping the spectrum: a chunk's STFT magnitudes ``[frames, bins]``.

  Their maximum is :func:`segment_peak`; :func:`encode_spectrum` encodes from them.
  """
  from deepbof_tf import frontend
  return frontend.stft_magnitude(segment, config, pad=False)


def encode_segment(encoder, segment, peak, agc_state, context,
                   config: FrontendConfig = _DEFAULT_CONFIG):
  """Pass 2: one chunk → its window maxima, the AGC state and the carried frames.

  Args:
    encoder: a ``deepbof_tf.layers.bag_of_features.BagOfFeaturesEncoder``.
    segment: float32 ``[samples]`` from :func:`segment_bounds`.
    peak: float32 scalar, the whole recording's STFT maximum (pass 1).
    agc_state: float32 ``[agc bands]`` envelope after the previous chunk (zeros for
      the first chunk, which equals the clip-start state).
    context: float32 ``[k, n_mels]``: the previous chunk's last ``block_frames − 1``
      log-mel frames (``k = 0`` for the first chunk).
    config: the front-end configuration.

  Returns:
    ``(pooled [windows, H], agc_state [bands], context [block_frames − 1, n_mels])``.
  """
  from deepbof_tf import frontend
  return encode_spectrum(encoder, frontend.stft_magnitude(segment, config, pad=False),
                         peak, agc_state, context, config)


def encode_spectrum(encoder, magnitude, peak, agc_state, context,
                    config: FrontendConfig = _DEFAULT_CONFIG):
  """Pass 2 from the chunk's magnitudes (:func:`segment_spectrum`); as
  :func:`encode_segment`, which is this after the STFT."""
  from deepbof_tf import frontend
  import tensorflow as tf
  floored = frontend.apply_floor(magnitude, peak, config)
  if config.agc:
    agc_magnitude, agc_state = frontend.agc(floored, agc_state, config)
  else:
    agc_magnitude = floored
  log_mel = frontend.log_mel_from_agc(agc_magnitude, config)
  frames = tf.concat([tf.cast(context, tf.float32), log_mel], axis=0)
  pooled, _ = encoder.pooled_hidden(frames[None])
  keep = encoder.block_frames - 1
  return pooled[0], agc_state, frames[tf.shape(frames)[0] - keep:]


# --------------------------------------------------------------------------------------
# Waveform sources: in memory, or decoded block by block into a disk spool.
# --------------------------------------------------------------------------------------


class InMemoryWaveform:
  """A decoded waveform held in memory, read in zero-filled ranges.

  Args:
    samples: float32 ``[samples]``.
    sample_rate: its rate.
  """

  def __init__(self, samples: np.ndarray, sample_rate: int):
    self.samples = np.ascontiguousarray(samples, dtype=np.float32)
    self.sample_rate = int(sample_rate)
    self.num_samples = int(self.samples.shape[0])

  def read(self, start: int, stop: int) -> np.ndarray:
    """Samples ``[start, stop)``, zeros where the range lies outside the waveform."""
    out = np.zeros(max(stop - start, 0), np.float32)
    lo, hi = max(start, 0), min(stop, self.num_samples)
    if hi > lo:
      out[lo - start:hi - start] = self.samples[lo:hi]
    return out

  def close(self) -> None:
    pass


class SpooledWaveform:
  """A decoded, resampled mono waveform kept in an anonymous temporary file.

  Use :meth:`from_file` to decode a recording block by block (:func:`decode_blocks`),
  then :meth:`read` arbitrary zero-filled ranges. Memory stays at one decode block
  regardless of the recording's length; the spool file (4 bytes per sample, ~318 MB
  per hour at 22,050 Hz) goes away on :meth:`close`.

  Args:
    sample_rate: the rate of the stored samples.
    directory: where the spool file lives (None: the system temp directory).
  """

  def __init__(self, sample_rate: int, directory: Optional[str] = None):
    self.sample_rate = int(sample_rate)
    self.num_samples = 0
    self._file = tempfile.TemporaryFile(dir=directory)

  def append(self, samples: np.ndarray) -> None:
    """Appends float32 samples."""
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    self._file.write(samples.tobytes())
    self.num_samples += int(samples.shape[0])

  def read(self, start: int, stop: int) -> np.ndarray:
    """Samples ``[start, stop)``, zeros where the range lies outside the waveform."""
    out = np.zeros(max(stop - start, 0), np.float32)
    lo, hi = max(start, 0), min(stop, self.num_samples)
    if hi > lo:
      self._file.flush()
      data = os.pread(self._file.fileno(), (hi - lo) * 4, lo * 4)
      out[lo - start:hi - start] = np.frombuffer(data, np.float32)
    return out

  def close(self) -> None:
    self._file.close()

  def __enter__(self) -> "SpooledWaveform":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  @classmethod
  def from_file(cls, path: str, sample_rate: int = 22050, channel_mode: str = "first",
                block_seconds: float = 30.0, directory: Optional[str] = None,
                ) -> "SpooledWaveform":
    """Decodes ``path`` block by block into a spool (see :func:`decode_blocks`).

    Args:
      path: any file ``deepbof_tf.audio`` decodes.
      sample_rate: the output rate.
      channel_mode: ``"first"`` (the authors' code) or ``"mean"``.
      block_seconds: decode block length (memory per step).
      directory: spool directory (None: the system temp directory).

    Raises:
      deepbof_tf.audio.AudioDecodeError: unreadable stream, zero samples, NaN/Inf.
    """
    from deepbof_tf import audio
    spool = cls(sample_rate, directory)
    try:
      bad = 0
      for block in decode_blocks(path, sample_rate, channel_mode, block_seconds):
        bad += int(block.size - np.count_nonzero(np.isfinite(block)))
        spool.append(block)
      if spool.num_samples == 0:
        raise audio.AudioDecodeError(path, "0 samples after decoding (empty or corrupt file)")
      if bad:
        raise audio.AudioDecodeError(path, f"{bad} NaN/Inf samples after decoding "
                                     "(corrupt file)")
    except BaseException:
      spool.close()
      raise
    return spool


class ResampledNativeWaveform:
  """Random access to a file's mono samples at ``sample_rate``, decoded once.

  The file is decoded once at its native rate (``deepbof_tf.audio.open_decoded``: in
  memory, or in a temporary file for a long recording), so its length is what decodes;
  :meth:`read` resamples just the range it is asked for
  (``deepbof_tf.audio.resample_segment``, equal to the one-shot ``load_audio``). The
  chunked passes of ``deepbof_tf.exported`` read each chunk twice from that store, not
  from the file.

  Args:
    path: any file ``deepbof_tf.audio`` decodes (``tf.io.gfile`` paths work).
    sample_rate: the output rate.
    channel_mode: ``"first"`` (the authors' code) or ``"mean"``.

  Raises:
    deepbof_tf.audio.AudioDecodeError: missing, empty, not audio, truncated or corrupt,
      NaN/Inf samples (on construction).
  """

  def __init__(self, path: str, sample_rate: int = 22050, channel_mode: str = "first"):
    from deepbof_tf import audio
    self.path = path
    self.sample_rate = int(sample_rate)
    self._decoded = audio.open_decoded(path, channel_mode)
    self.info = self._decoded.info
    self._num_in, self._rate_in = self._decoded.num_frames, self._decoded.rate
    self._read = self._decoded.read
    self.native_rate = self._rate_in
    self.num_samples = audio.resampled_length(self._num_in, self._rate_in, self.sample_rate)

  def _read_zero_filled(self, lo: int, hi: int) -> np.ndarray:
    out = np.zeros(hi - lo, np.float32)
    a, b = max(lo, 0), min(hi, self._num_in)
    if b > a:
      out[a - lo:b - lo] = self._read(a, b)
    return out

  def resampled(self, start: int, stop: int) -> np.ndarray:
    """Samples ``[start, min(stop, num_samples))`` as they are (no NaN/Inf check)."""
    from deepbof_tf import audio
    return audio.resample_segment(self._read_zero_filled, self._num_in, self._rate_in,
                                  self.sample_rate, start, stop)

  def read(self, start: int, stop: int) -> np.ndarray:
    """Samples ``[start, stop)``, zeros where the range lies outside the waveform."""
    from deepbof_tf import audio
    out = np.zeros(max(stop - start, 0), np.float32)
    lo, hi = max(start, 0), min(stop, self.num_samples)
    if hi > lo:
      out[lo - start:hi - start] = self.resampled(lo, hi)
    finite = np.isfinite(out)
    if not finite.all():
      bad = int(out.size - np.count_nonzero(finite))
      raise audio.AudioDecodeError(
          self.path, f"{bad} NaN/Inf samples after decoding (corrupt file), in samples "
          f"[{start}, {stop}) at {self.sample_rate} Hz")
    return out

  def close(self) -> None:
    self._decoded.close()

  def __enter__(self) -> "ResampledNativeWaveform":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def resampled_store(source: "ResampledNativeWaveform", memory_limit: Optional[int] = None,
                    block_seconds: float = 30.0, directory: Optional[str] = None):
  """The whole recording at ``source.sample_rate``, resampled once, for many reads.

  The chunked passes read every chunk twice (the peak, then the encoding); reading them
  from this store resamples each sample once. The values are ``source``'s (equal to
  the one-shot ``load_audio``): the resampling of any range is the one-shot's.

  Args:
    source: a decoded file.
    memory_limit: float32 bytes kept in memory; above it the samples go to an anonymous
      temporary file (None: ``deepbof_tf.audio.IN_MEMORY_SAMPLES_BYTES``).
    block_seconds: the resampling step when spooling (memory per step).
    directory: the spool file's directory (None: the system temp directory).

  Returns:
    An :class:`InMemoryWaveform` or a :class:`SpooledWaveform` (close it when done).
  """
  from deepbof_tf import audio
  limit = audio.IN_MEMORY_SAMPLES_BYTES if memory_limit is None else memory_limit
  n = source.num_samples
  step = max(int(block_seconds * source.sample_rate), 1)
  if 4 * n <= limit:  # resampled block by block: no input range of the whole file
    samples = np.empty(n, np.float32)
    for start in range(0, n, step):
      samples[start:start + step] = source.resampled(start, start + step)
    return InMemoryWaveform(samples, source.sample_rate)
  spool = SpooledWaveform(source.sample_rate, directory)
  try:
    for start in range(0, n, step):
      spool.append(source.resampled(start, start + step))
  except BaseException:
    spool.close()
    raise
  return spool


def native_blocks(path: str, channel_mode: str = "first"
                  ) -> Tuple[int, int, Callable[[int, int], np.ndarray]]:
  """Random access to a file's mono samples at its native rate (decoded once).

  See :func:`deepbof_tf.audio.open_decoded`; the samples equal ``deepbof_tf.audio``'s
  one-shot decode (tested for equality).

  Returns:
    ``(num_frames, rate, read)`` where ``read(start, stop)`` returns the float32 mono
    samples ``[start, stop)`` clipped to the file.

  Raises:
    deepbof_tf.audio.AudioDecodeError: unreadable, truncated or corrupt file.
  """
  from deepbof_tf import audio
  return audio.open_native(path, channel_mode)


def decode_blocks(path: str, sample_rate: int = 22050, channel_mode: str = "first",
                  block_seconds: float = 30.0) -> Iterator[np.ndarray]:
  """Yields consecutive float32 mono blocks equal to ``deepbof_tf.audio.load_audio``.

  ``load_audio`` resamples the whole signal at once; here each output block is computed
  by ``deepbof_tf.audio.resample_segment`` from the native samples it needs (the block
  plus the filter's context), which gives the one-shot outputs.

  Args:
    path: the audio file.
    sample_rate: output rate.
    channel_mode: ``"first"`` or ``"mean"``.
    block_seconds: approximate output block length.
  """
  source = ResampledNativeWaveform(path, sample_rate, channel_mode)
  step = max(int(block_seconds * source.sample_rate), 1)
  try:
    for start in range(0, source.num_samples, step):
      yield source.resampled(start, start + step)
  finally:
    source.close()
