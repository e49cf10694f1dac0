"""The audio front end (docs/model.md#front-end) in core TensorFlow ops.

One clip (a mono float32 waveform at ``FrontendConfig.sample_rate``) becomes

* ``log_mel`` ``[frames, 128]``: ``log10(1 + 10 · F_mel · S_agc)``, and
* ``novelty`` ``[frames]``: the onset detection function of the sampling stage,

where ``S_agc`` is the time–frequency AGC'd linear STFT magnitude. Only core
TensorFlow ops are used (no tensorflow-io), so everything here runs in ``tf.data``, in a
Beam DoFn and inside a SavedModel served by TF Serving. Arrays are float32 and
time-major, ``[frames, bins]`` (``[batch, frames, bins]`` for batches).

Definitions and deviations (also listed in docs/deviations.md):

* Framing follows the authors' ``stft.m`` as called by ``getSpecgram.m``: ``n_fft/2``
  zeros before and after the signal, then the tail is zero-filled until the last hop
  is complete, so a clip of ``n >= 1`` samples has ``ceil(n / hop) + 1`` frames
  (:func:`frame_count`; ``n = 0`` gives one all-zero frame). Every caller uses
  :func:`frame_count`.
* The default window is MATLAB's symmetric ``hann(1024)`` as in the authors' code;
  ``FrontendConfig(symmetric_window=False)`` selects the periodic Hann window.
* Digital silence (an all-zero spectrum) is defined to give all-zero ``log_mel`` and
  ``novelty``. The authors' code neither skips such a clip nor computes it: their
  feature script stores the *previous* clip's (AGC'd) spectrogram under the silent
  clip's name, since their AGC would divide by an undefined minimum. We compute the
  clip itself instead: the floor is ``1e-4 · 0 = 0``, the AGC envelope of an all-zero clip is
  defined as 0 (instead of "the smallest positive value" that does not exist), so
  ``S_agc = 0 / (0 + eps) = 0``. Never NaN.
* The AGC's attack/decay recursion ``state_j = max(alpha·state_{j-1}, A_j)`` (initial
  state 0) is evaluated with an exact log-depth doubling scan instead of a loop over
  frames: after step k every frame holds the max over the previous ``2^k`` frames of
  ``alpha^d · A_{j-d}``. Results equal the loop to float32 rounding.
* ``log10(1 + C·x)`` is computed as ``log1p(C·x) / ln 10`` (same value, better float32
  accuracy for quiet bands).

Streaming a long recording in chunks (e.g. the ``deepbof-tag`` CLI) composes the public
building blocks and equals the one-shot :func:`compute_features`:

1. pass 1: ``max_value = max over chunks of reduce_max(stft_magnitude(chunk))`` — the
   floor uses the maximum over the *whole* clip, so it needs a first pass;
2. pass 2, per chunk: ``S = apply_floor(stft_magnitude(chunk), max_value)``,
   ``S_agc, state = agc(S, initial_state=state)``, ``log_mel_from_agc(S_agc)``,
   ``novelty_from_agc(S_agc, previous_frame)`` with ``previous_frame =
   novelty_log_mel(S_agc)[-1]`` of the previous chunk.

Chunks are cut from :func:`pad_waveform` output at multiples of ``hop_length`` with
``n_fft - hop_length`` samples of overlap and passed with ``pad=False``; the AGC's
"replace non-positive envelope values" step never triggers for non-silent audio (the
floor makes every band positive), so per-chunk evaluation is exact.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from deepbof_tf import framing
from deepbof_tf.config import FrontendConfig

_DEFAULT_CONFIG = FrontendConfig()
_LN10 = math.log(10.0)

TensorLike = Union[tf.Tensor, np.ndarray]

# --------------------------------------------------------------------------------------
# Frame count (the one helper every writer, reader and test uses).
# --------------------------------------------------------------------------------------


def frame_count(num_samples, config: FrontendConfig = _DEFAULT_CONFIG):
  """Number of STFT frames of a clip of ``num_samples`` samples (the authors' framing).

  The authors' code pads ``n_fft/2`` zeros on both sides and zero-fills the tail to a
  whole hop, giving ``ceil(num_samples / hop_length) + 1`` frames (1 frame for 0 samples).
  The definition is ``deepbof_tf.framing`` (TensorFlow-free); this adds tensors.

  Args:
    num_samples: a Python/NumPy integer or an integer tensor of any shape.
    config: the front-end configuration (only ``hop_length`` is used).

  Returns:
    A Python int for integer input, otherwise an integer tensor of the input's dtype
    and shape.

  Raises:
    ValueError: a negative Python integer.
  """
  if isinstance(num_samples, (int, np.integer)):
    return framing.frame_count(num_samples, config)
  n = tf.convert_to_tensor(num_samples)
  if not n.dtype.is_integer:
    raise ValueError(f"num_samples must be an integer tensor, got dtype {n.dtype.name}")
  return framing.frames_for_samples(n, config.hop_length)


# --------------------------------------------------------------------------------------
# Constant matrices (NumPy, built once per configuration).
# --------------------------------------------------------------------------------------


def hz_to_mel(frequency: np.ndarray) -> np.ndarray:
  """Slaney's mel scale: linear below 1 kHz, logarithmic above.

  Args:
    frequency: frequencies in Hz (array-like, >= 0).

  Returns:
    The mel values as float64.
  """
  f = np.asarray(frequency, dtype=np.float64)
  linear_step = 200.0 / 3.0  # Hz per mel below the break frequency
  break_hz = 1000.0
  break_mel = break_hz / linear_step  # 15 mels
  log_step = math.log(6.4) / 27.0  # ln of the per-mel frequency ratio above 1 kHz
  safe = np.maximum(f, break_hz)  # avoid log of 0 in the unused branch
  return np.where(f < break_hz, f / linear_step, break_mel + np.log(safe / break_hz) / log_step)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
  """Inverse of :func:`hz_to_mel`.

  Args:
    mel: mel values (array-like).

  Returns:
    Frequencies in Hz as float64.
  """
  m = np.asarray(mel, dtype=np.float64)
  linear_step = 200.0 / 3.0
  break_mel = 1000.0 / linear_step
  log_step = math.log(6.4) / 27.0
  return np.where(m < break_mel, m * linear_step,
                  1000.0 * np.exp(log_step * (m - break_mel)))


@functools.lru_cache(maxsize=32)
def _mel_filterbank_cached(n_mels: int, width: float, sample_rate: int, n_fft: int) -> np.ndarray:
  n_bins = n_fft // 2 + 1
  bin_hz = np.arange(n_bins, dtype=np.float64) * sample_rate / n_fft
  # n_mels + 2 edges equally spaced in mel from 0 Hz to sr/2.
  edges = mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2.0), n_mels + 2))
  weights = np.zeros((n_bins, n_mels), dtype=np.float64)
  for band in range(n_mels):
    low, centre, high = edges[band:band + 3]
    # `width` stretches the triangle about its centre; the constant-area gain below
    # still uses the unwidened edges, as Ellis's fft2melmx does.
    low_w = centre + width * (low - centre)
    high_w = centre + width * (high - centre)
    rising = (bin_hz - low_w) / (centre - low_w)
    falling = (high_w - bin_hz) / (high_w - centre)
    weights[:, band] = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (high - low))
  weights.setflags(write=False)
  return weights


def mel_filterbank(n_mels: int, width: float = 1.0,
                   config: FrontendConfig = _DEFAULT_CONFIG) -> np.ndarray:
  """Slaney/Ellis ``fft2melmx`` mel filterbank of constant-area triangles.

  Orientation is ``[n_fft // 2 + 1, n_mels]`` (the transpose of MATLAB's ``f2a``) so that
  a time-major magnitude ``[frames, bins] @ filterbank`` gives ``[frames, n_mels]``.
  With ``width=1`` this equals ``librosa.filters.mel(..., htk=False, norm='slaney').T``.
  See docs/model.md#mel-filterbank.

  Args:
    n_mels: number of bands; ``n_mels + 2`` edges span 0 Hz … sr/2 on the mel scale.
    width: widening of each triangle about its centre (1 for the mel spectrogram and
      the novelty, ``config.agc_width`` = 2 for the AGC bands).
    config: supplies ``sample_rate`` and ``n_fft``.

  Returns:
    A read-only float64 NumPy array ``[n_fft // 2 + 1, n_mels]``.
  """
  if n_mels <= 0:
    raise ValueError(f"n_mels must be > 0, got {n_mels}")
  if width <= 0:
    raise ValueError(f"width must be > 0, got {width}")
  return _mel_filterbank_cached(int(n_mels), float(width), int(config.sample_rate),
                                int(config.n_fft))


def hann_window(config: FrontendConfig = _DEFAULT_CONFIG) -> np.ndarray:
  """The analysis window: symmetric (MATLAB ``hann(N)``, default) or periodic Hann.

  Args:
    config: supplies ``n_fft`` and ``symmetric_window``.

  Returns:
    A float64 NumPy array of length ``n_fft``.
  """
  n = config.n_fft
  denominator = (n - 1) if config.symmetric_window else n
  return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / denominator)


@functools.lru_cache(maxsize=16)
def _agc_matrices(config: FrontendConfig) -> Tuple[np.ndarray, np.ndarray]:
  """AGC band analysis ``[bins, bands]`` and the map back to bins ``[bands, bins]``."""
  analysis = mel_filterbank(config.agc_n_bands, config.agc_width, config)
  # Back to bins: E = diag(1/colsum(F_agc)) · F_agcᵀ · E_band, dividing by 1 where a bin is
  # covered by no band.
  coverage = analysis.sum(axis=1)
  coverage = np.where(coverage == 0.0, 1.0, coverage)
  synthesis = (analysis / coverage[:, None]).T
  return analysis.astype(np.float32), np.ascontiguousarray(synthesis, dtype=np.float32)


# Bands per banded filterbank product (see _filterbank_plan).
_BANDS_PER_PRODUCT = 32


@functools.lru_cache(maxsize=32)
def _filterbank_plan(n_mels: int, config: FrontendConfig) -> Tuple[Tuple[int, int, np.ndarray], ...]:
  """The mel filterbank as products over the bins each run of bands touches.

  Each FFT bin feeds at most two neighbouring triangles, so 1.5 % of the 128-band
  matrix is non-zero. The bands are cut into runs of about ``_BANDS_PER_PRODUCT``
  consecutive bands; a run's product only spans the bins between its lowest and highest
  non-zero weight. For 128 bands this is 25 % of the dense multiply-adds in four
  products, 2.3x faster than the dense product on one thread (docs/benchmarks.md);
  more, narrower runs cost more in slices and small products than they save.

  Returns:
    ``(first_bin, end_bin, weights [end_bin - first_bin, run_bands])`` per run, in band
    order; the weights are float32 and every non-zero weight is in exactly one run.
  """
  weights = mel_filterbank(n_mels, 1.0, config).astype(np.float32)
  runs = -(-n_mels // _BANDS_PER_PRODUCT)
  bounds = np.linspace(0, n_mels, runs + 1).round().astype(int)
  plan = []
  for first_band, end_band in zip(bounds[:-1], bounds[1:]):
    rows = np.nonzero(np.any(weights[:, first_band:end_band] != 0.0, axis=1))[0]
    # A run whose bands have no non-zero weight at all still needs one bin.
    first_bin, end_bin = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 1)
    part = np.ascontiguousarray(weights[first_bin:end_bin, first_band:end_band])
    part.setflags(write=False)
    plan.append((first_bin, end_bin, part))
  return tuple(plan)


def filterbank_multiply_adds(n_mels: int, config: FrontendConfig = _DEFAULT_CONFIG) -> int:
  """Multiply-adds per frame of the banded ``n_mels`` filterbank product the front end runs.

  Args:
    n_mels: number of bands.
    config: the front-end configuration.
  """
  return int(sum(weights.size for _, _, weights in _filterbank_plan(int(n_mels), config)))


def _filterbank_product(x: tf.Tensor, n_mels: int, config: FrontendConfig) -> tf.Tensor:
  """``x @ mel_filterbank(n_mels)`` (float32) over the last axis, as banded products.

  Equal to the dense product up to float32 summation order (only exact zeros are
  skipped); rank-2 or rank-3 ``x``.
  """
  parts = [_matmul_last(x[..., first_bin:end_bin], weights)
           for first_bin, end_bin, weights in _filterbank_plan(n_mels, config)]
  return parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)


@functools.lru_cache(maxsize=16)
def _agc_covers_every_bin(config: FrontendConfig) -> bool:
  """True when every FFT bin has a positive weight in some AGC band (the default)."""
  analysis, _ = _agc_matrices(config)
  return bool(np.all(analysis.sum(axis=1) > 0))


class FusedFrontendInputs(NamedTuple):
  """The constant arrays of the one-shot front end, float32, as a fused kernel takes them.

  Attributes:
    window: the analysis window ``[n_fft]`` (:func:`hann_window`).
    agc_analysis: the AGC bands ``[n_fft // 2 + 1, agc_n_bands]``.
    agc_synthesis: the map from bands back to FFT bins ``[agc_n_bands, n_fft // 2 + 1]``
      (each bin's band weights divided by their sum).
    mel: the mel filterbank ``[n_fft // 2 + 1, n_mels]`` (:func:`mel_filterbank`).
    agc_covers_every_bin: every FFT bin has a positive weight in some AGC band (true of
      the default scales). Only then is the AGC a plain ``S / (E + eps)``; otherwise the
      core ops also replace non-positive envelope values, which a kernel must match.
  """
  window: np.ndarray
  agc_analysis: np.ndarray
  agc_synthesis: np.ndarray
  mel: np.ndarray
  agc_covers_every_bin: bool


def fused_frontend_inputs(config: FrontendConfig = _DEFAULT_CONFIG) -> FusedFrontendInputs:
  """The window, AGC matrices and mel filterbank the front end of ``config`` runs.

  The inputs of the fused front-end kernel (``deepbof_tf.native.frontend_op``), the
  same arrays as :func:`compute_features_batch` uses, so the two compute the same
  function.

  Args:
    config: the front-end configuration.

  Returns:
    A :class:`FusedFrontendInputs` of float32 arrays.
  """
  analysis, synthesis = _agc_matrices(config)
  return FusedFrontendInputs(
      window=hann_window(config).astype(np.float32), agc_analysis=analysis,
      agc_synthesis=synthesis,
      mel=mel_filterbank(config.n_mels, 1.0, config).astype(np.float32),
      agc_covers_every_bin=_agc_covers_every_bin(config))


# --------------------------------------------------------------------------------------
# Building blocks (each rank-polymorphic: [frames, bins] or [batch, frames, bins]).
# --------------------------------------------------------------------------------------


def _matmul_last(x: tf.Tensor, matrix: np.ndarray,
                 bias: Optional[np.ndarray] = None) -> tf.Tensor:
  """``x @ matrix (+ bias)`` over the last axis of rank-2 or rank-3 ``x``.

  One 2-D GEMM; with a bias, a MatMul + BiasAdd that Grappler fuses into one kernel.
  """
  m = tf.constant(matrix, dtype=tf.float32)
  rank3 = x.shape.rank != 2
  if rank3:
    shape = tf.shape(x)
    x = tf.reshape(x, [-1, shape[-1]])
  out = tf.linalg.matmul(x, m)
  if bias is not None:
    out = tf.nn.bias_add(out, tf.constant(bias, tf.float32))
  if rank3:
    out = tf.reshape(out, tf.concat([shape[:-1], [matrix.shape[1]]], axis=0))
  return out


def pad_waveform(waveform: TensorLike, config: FrontendConfig = _DEFAULT_CONFIG) -> tf.Tensor:
  """The authors' padding: ``n_fft/2`` zeros in front, zeros behind to a whole last frame.

  The result has ``(frame_count(n) - 1) * hop_length + n_fft`` samples along the last
  axis, so framing it with ``n_fft``/``hop_length`` and no further padding gives exactly
  ``frame_count(n)`` frames.

  Args:
    waveform: float32 ``[samples]`` or ``[batch, samples]``.
    config: the front-end configuration.

  Returns:
    The padded float32 tensor.
  """
  x = tf.convert_to_tensor(waveform, dtype=tf.float32)
  n = tf.shape(x)[-1]
  frames = frame_count(n, config)
  total = (frames - 1) * config.hop_length + config.n_fft
  front = config.n_fft // 2
  paddings = [[front, total - n - front]]
  if x.shape.rank == 2:
    paddings = [[0, 0]] + paddings
  return tf.pad(x, paddings)


def _frame(x: tf.Tensor, config: FrontendConfig) -> tf.Tensor:
  """Frames ``[..., frames, n_fft]`` of an already padded signal (no padding)."""
  n_fft, hop = config.n_fft, config.hop_length
  if n_fft == 2 * hop and x.shape.rank == 2 and x.shape[0] == 1:
    # One clip (the serving signatures run clip by clip): frame it as a rank-1 signal,
    # whose neighbour slices are views of the blocks instead of copies.
    return _frame(x[0], config)[None]
  if n_fft == 2 * hop:
    # 50 % overlap: split into hop-sized blocks and pair neighbours, which is a reshape
    # and one concat instead of a gather.
    n = tf.shape(x)[-1]
    blocks_n = n // hop
    x = x[..., :blocks_n * hop]
    lead = tf.shape(x)[:-1]
    blocks = tf.reshape(x, tf.concat([lead, [blocks_n, hop]], axis=0))
    return tf.concat([blocks[..., :-1, :], blocks[..., 1:, :]], axis=-1)
  return tf.signal.frame(x, n_fft, hop, pad_end=False)


def stft_magnitude(waveform: TensorLike, config: FrontendConfig = _DEFAULT_CONFIG,
                   pad: bool = True) -> tf.Tensor:
  """Magnitude STFT with the authors' framing, before the floor.

  Args:
    waveform: float32 ``[samples]`` or ``[batch, samples]`` at ``config.sample_rate``.
    config: the front-end configuration.
    pad: True applies :func:`pad_waveform` (one-shot use). False frames the samples as
      given (``1 + (len - n_fft) // hop`` frames; ``len >= n_fft``), for streaming
      chunks cut from an already padded signal.

  Returns:
    float32 ``[frames, n_fft // 2 + 1]`` (or ``[batch, frames, bins]``).
  """
  x = tf.convert_to_tensor(waveform, dtype=tf.float32)
  if pad:
    x = pad_waveform(x, config)
  frames = _frame(x, config)
  window = tf.constant(hann_window(config), dtype=tf.float32)
  spectrum = tf.signal.rfft(frames * window, fft_length=[config.n_fft])
  # sqrt(re² + im²) rather than tf.abs: the complex abs is an overflow-safe hypot that
  # took 2x the time of the FFT itself. Squares stay finite while |X| < 1.8e19, i.e. for
  # samples up to about ±3.6e16 (|X| <= n_fft/2 · max|x|), far beyond audio's ±1; past
  # that the features are NaN, which the serving signatures refuse.
  return tf.sqrt(tf.square(tf.math.real(spectrum)) + tf.square(tf.math.imag(spectrum)))


def apply_floor(magnitude: TensorLike, max_value: Optional[TensorLike] = None,
                config: FrontendConfig = _DEFAULT_CONFIG) -> tf.Tensor:
  """``S + floor_ratio · max(S)`` (the authors' ``getSpecgram.m``).

  Args:
    magnitude: float32 ``[frames, bins]`` or ``[batch, frames, bins]``.
    max_value: the maximum magnitude over the *whole* clip (scalar, or ``[batch, 1, 1]``
      for batches). None uses ``reduce_max(magnitude)`` — right for a whole clip, not
      for a streaming chunk.
    config: supplies ``floor_ratio``.

  Returns:
    The floored magnitude, same shape.
  """
  s = tf.convert_to_tensor(magnitude, dtype=tf.float32)
  if max_value is None:
    max_value = tf.reduce_max(s)
  return s + config.floor_ratio * tf.cast(max_value, tf.float32)


def _attack_decay(bands: tf.Tensor, alpha_log: float) -> tf.Tensor:
  """``s_j = max(alpha · s_{j-1}, A_j)`` with ``s_{-1} = 0`` over axis -2 of ``[B, T, C]``.

  Log-depth doubling: ``s⁰ = A``; ``sᵏ⁺¹_j = max(sᵏ_j, alpha^(2^k) · sᵏ_{j-2^k})``.
  After the step with ``2^k >= T`` every frame holds ``max_{i<=j} alpha^(j-i) A_i``, which is
  the recursion's value because ``A >= 0``. A ``tf.while_loop`` keeps ``T`` dynamic.
  """
  num_frames = tf.shape(bands)[1]

  def body(shift, state):
    # alpha^shift in float64 first: alpha^2048 is below float32's normal range.
    decay = tf.cast(tf.exp(alpha_log * tf.cast(shift, tf.float64)), tf.float32)
    shifted = tf.pad(state[:, :num_frames - shift, :], [[0, 0], [shift, 0], [0, 0]])
    return shift * 2, tf.maximum(state, decay * shifted)

  _, state = tf.while_loop(lambda shift, _: shift < num_frames, body,
                           (tf.constant(1, tf.int32), bands),
                           shape_invariants=(tf.TensorShape([]), bands.shape))
  return state


def _agc_core(magnitude: tf.Tensor, initial_state: Optional[tf.Tensor],
              valid: Optional[tf.Tensor], config: FrontendConfig) -> Tuple[tf.Tensor, tf.Tensor]:
  """AGC of ``[B, T, bins]``; ``valid`` ``[B, T]`` bool limits the per-clip minimum."""
  analysis, synthesis = _agc_matrices(config)
  bands = _matmul_last(magnitude, analysis)  # A = F_agc · S, [B, T, bands]
  alpha_log = -(1.0 / config.frame_rate) / config.agc_t_scale  # ln(alpha)
  envelope = _attack_decay(bands, alpha_log)
  if initial_state is not None:
    # s_j = max(scan_j, alpha^(j+1) · s_init): the carried state decays from frame -1.
    steps = tf.cast(tf.range(1, tf.shape(bands)[1] + 1), tf.float64)
    decay = tf.cast(tf.exp(alpha_log * steps), tf.float32)[None, :, None]
    init = tf.reshape(tf.cast(initial_state, tf.float32), [-1, 1, analysis.shape[1]])
    envelope = tf.maximum(envelope, decay * init)
  final_state = envelope[:, -1, :]
  if _agc_covers_every_bin(config):
    # E + eps on the FFT grid in one fused MatMul + BiasAdd. As in tf_agc, a
    # non-positive E would be replaced by the clip's smallest positive E; when every
    # bin lies in some band that replacement changes nothing: E_i = 0 at a frame means
    # every band over bin i has A = 0 there, so S_i = 0 and S_i / (E_i + eps) = 0 either
    # way. Skipping it saves five passes over the spectrogram.
    gain = _matmul_last(envelope, synthesis, bias=np.full(synthesis.shape[1],
                                                          config.agc_epsilon, np.float32))
    return magnitude / gain, final_state
  gain = _matmul_last(envelope, synthesis)  # E on the FFT grid, [B, T, bins]
  # As in tf_agc: non-positive E → the smallest positive E of the clip. With the floor this
  # only happens for digital silence, where no positive value exists: then E := 0 and
  # S_agc = 0 / (0 + eps) = 0 (our definition; the authors' code skipped such clips).
  positive = gain > 0.0
  if valid is not None:
    positive_valid = tf.logical_and(positive, valid[:, :, None])
  else:
    positive_valid = positive
  big = tf.constant(np.finfo(np.float32).max, tf.float32)
  smallest = tf.reduce_min(tf.where(positive_valid, gain, big), axis=[1, 2], keepdims=True)
  smallest = tf.where(smallest == big, tf.zeros_like(smallest), smallest)
  gain = tf.where(positive, gain, smallest)
  return magnitude / (gain + config.agc_epsilon), final_state


def agc(magnitude: TensorLike, initial_state: Optional[TensorLike] = None,
        config: FrontendConfig = _DEFAULT_CONFIG) -> Tuple[tf.Tensor, tf.Tensor]:
  """Time–frequency automatic gain control, attack/decay variant (docs/model.md#agc).

  Args:
    magnitude: floored linear magnitude ``[frames, bins]`` or ``[batch, frames, bins]``.
    initial_state: the ``[bands]`` (``[batch, bands]``) envelope after the last frame of
      the previous chunk, or None at the start of a clip (state 0, as the authors' code).
    config: the front-end configuration.

  Returns:
    ``(agc_magnitude, final_state)``: ``S / (E + eps)`` with the input's shape, and the
    band envelope after the last frame (``[bands]`` or ``[batch, bands]``) to pass as
    ``initial_state`` of the next chunk.
  """
  s = tf.convert_to_tensor(magnitude, dtype=tf.float32)
  single = s.shape.rank == 2
  if single:
    s = s[None]
    if initial_state is not None:
      initial_state = tf.reshape(tf.convert_to_tensor(initial_state, tf.float32), [1, -1])
  out, state = _agc_core(s, initial_state, None, config)
  if single:
    return out[0], state[0]
  return out, state


def _log_compress(x: tf.Tensor, gain: float) -> tf.Tensor:
  """``log10(1 + gain · x)`` via ``log1p`` (exact identity, better float32 accuracy)."""
  return tf.math.log1p(gain * x) * (1.0 / _LN10)


def log_mel_from_agc(agc_magnitude: TensorLike,
                     config: FrontendConfig = _DEFAULT_CONFIG) -> tf.Tensor:
  """The compressed mel spectrogram ``log10(1 + C · F_mel · S_agc)``.

  Args:
    agc_magnitude: ``[frames, bins]`` or ``[batch, frames, bins]``.
    config: supplies ``n_mels`` and ``log_gain`` (C = 10).

  Returns:
    float32 ``[frames, n_mels]`` (or batched).
  """
  s = tf.convert_to_tensor(agc_magnitude, dtype=tf.float32)
  mel = _filterbank_product(s, config.n_mels, config)
  return _log_compress(mel, config.log_gain)


def novelty_log_mel(agc_magnitude: TensorLike,
                    config: FrontendConfig = _DEFAULT_CONFIG) -> tf.Tensor:
  """The novelty path's ``log10(1 + 100 · F40 · S_agc)``.

  Its last frame is the ``previous_frame`` that :func:`novelty_from_agc` needs for the
  next streaming chunk.

  Args:
    agc_magnitude: ``[frames, bins]`` or ``[batch, frames, bins]``.
    config: supplies ``novelty_n_mels`` and ``novelty_log_gain``.

  Returns:
    float32 ``[frames, novelty_n_mels]`` (or batched).
  """
  s = tf.convert_to_tensor(agc_magnitude, dtype=tf.float32)
  mel = _filterbank_product(s, config.novelty_n_mels, config)
  return _log_compress(mel, config.novelty_log_gain)


def _novelty_from_log_mel(log_mel40: tf.Tensor, previous_frame: Optional[tf.Tensor]) -> tf.Tensor:
  """Half-wave-rectified first difference over time, mean over bands, leading 0."""
  if previous_frame is None:
    rise = tf.nn.relu(log_mel40[..., 1:, :] - log_mel40[..., :-1, :])
    novelty = tf.reduce_mean(rise, axis=-1)
    paddings = [[0, 0]] * (log_mel40.shape.rank - 2) + [[1, 0]]
    return tf.pad(novelty, paddings)  # the authors' `[0 mean(...)]`
  previous = tf.expand_dims(tf.cast(previous_frame, tf.float32), -2)
  before = tf.concat([previous, log_mel40[..., :-1, :]], axis=-2)
  return tf.reduce_mean(tf.nn.relu(log_mel40 - before), axis=-1)


def novelty_from_agc(agc_magnitude: TensorLike, previous_frame: Optional[TensorLike] = None,
                     config: FrontendConfig = _DEFAULT_CONFIG) -> tf.Tensor:
  """Onset detection function (the novelty) from the AGC'd magnitude.

  ``L = log10(1 + 100 · F40 · S_agc)``; novelty = mean over bands of ``max(0, ΔL)``
  with a 0 for the first frame of a clip.

  Args:
    agc_magnitude: ``[frames, bins]`` or ``[batch, frames, bins]``.
    previous_frame: ``novelty_log_mel(...)[-1]`` of the previous streaming chunk
      (``[novelty_n_mels]`` or ``[batch, novelty_n_mels]``), or None at the clip start
      (the first value is then 0).
    config: the front-end configuration.

  Returns:
    float32 ``[frames]`` (or ``[batch, frames]``).
  """
  log_mel40 = novelty_log_mel(agc_magnitude, config)
  if previous_frame is not None:
    previous_frame = tf.convert_to_tensor(previous_frame, tf.float32)
  return _novelty_from_log_mel(log_mel40, previous_frame)


# --------------------------------------------------------------------------------------
# Entry points.
# --------------------------------------------------------------------------------------


def _features_batch(waveforms: tf.Tensor, num_samples: Optional[tf.Tensor],
                    config: FrontendConfig) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Graph body shared by the one-shot (``num_samples=None``) and batched entry points."""
  total = tf.shape(waveforms)[1]
  if num_samples is None:  # every row is a whole clip: no masks needed
    x, frame_valid = waveforms, None
    n_frames = tf.fill(tf.shape(waveforms)[:1], frame_count(total, config))
  else:
    num_samples = tf.minimum(tf.cast(num_samples, tf.int32), total)
    # Zero everything past each clip's end so the padded batch frames exactly like the
    # clip alone (the authors' tail zero-fill); a batch of whole rows needs no select.
    x = tf.cond(
        tf.reduce_all(num_samples >= total), lambda: waveforms,
        lambda: tf.where(tf.range(total)[None, :] < num_samples[:, None], waveforms, 0.0))
    n_frames = frame_count(num_samples, config)
  magnitude = stft_magnitude(x, config)  # [B, T, bins]
  if num_samples is not None:
    frame_valid = tf.range(tf.shape(magnitude)[1])[None, :] < n_frames[:, None]
  # Frames past a clip's n_frames only see zeros, so the per-clip max is unaffected by
  # them; the AGC is causal, so they cannot leak into valid frames either.
  clip_max = tf.reduce_max(magnitude, axis=[1, 2], keepdims=True)
  floored = apply_floor(magnitude, clip_max, config)
  if config.agc:
    agc_magnitude, _ = _agc_core(floored, None, frame_valid, config)
  else:
    agc_magnitude = floored
  log_mel = log_mel_from_agc(agc_magnitude, config)
  novelty = _novelty_from_log_mel(novelty_log_mel(agc_magnitude, config), None)
  if frame_valid is None:
    return log_mel, novelty, n_frames
  frame_valid_f = tf.cast(frame_valid, tf.float32)
  return log_mel * frame_valid_f[:, :, None], novelty * frame_valid_f, n_frames


# The graph bodies use tf.cond / tf.while_loop explicitly and no Python control flow on
# tensors, so the entry points trace without AutoGraph: its source-to-source conversion
# was most of the first call (a Beam worker's start-up), and the graphs are the same.
@functools.lru_cache(maxsize=16)
def _one_shot_fn(config: FrontendConfig):
  @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="waveform")],
               autograph=False)
  def features(waveform):
    log_mel, novelty, _ = _features_batch(waveform[None, :], None, config)
    return log_mel[0], novelty[0]
  return features


@functools.lru_cache(maxsize=16)
def _batch_fn(config: FrontendConfig):
  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveforms"),
                                tf.TensorSpec([None], tf.int32, name="num_samples")],
               autograph=False)
  def features(waveforms, num_samples):
    return _features_batch(waveforms, num_samples, config)
  return features


def compute_features(waveform: TensorLike,
                     config: FrontendConfig = _DEFAULT_CONFIG) -> Tuple[tf.Tensor, tf.Tensor]:
  """One clip → ``(log_mel [frames, n_mels], novelty [frames])``, the whole front end.

  Runs a cached ``tf.function`` with a ``[None]`` input signature (one trace per
  configuration, any length); callable eagerly, inside ``tf.data.Dataset.map`` and
  inside other ``tf.function``s. ``frames == frame_count(len(waveform))``.

  Args:
    waveform: mono float32 ``[samples]`` at ``config.sample_rate`` (tensor or array).
    config: the front-end configuration.

  Returns:
    ``(log_mel, novelty)`` float32 tensors.
  """
  x = tf.convert_to_tensor(waveform, dtype=tf.float32)
  if x.shape.rank is not None and x.shape.rank != 1:
    raise ValueError(f"compute_features expects a 1-D waveform, got shape {x.shape}")
  return _one_shot_fn(config)(x)


def compute_features_batch(
    waveforms: TensorLike, num_samples: TensorLike,
    config: FrontendConfig = _DEFAULT_CONFIG) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """A zero-padded batch of clips → per-clip features equal to :func:`compute_features`.

  Args:
    waveforms: float32 ``[batch, samples]``; clip b occupies ``[:num_samples[b]]`` (values
      after it are ignored).
    num_samples: int32 ``[batch]`` valid lengths.
    config: the front-end configuration.

  Returns:
    ``(log_mel [batch, frames, n_mels], novelty [batch, frames], n_frames [batch])`` with
    ``frames = frame_count(samples)``; clip b's frames ``>= n_frames[b]`` are zero.
  """
  x = tf.convert_to_tensor(waveforms, dtype=tf.float32)
  n = tf.cast(tf.convert_to_tensor(num_samples), tf.int32)
  return _batch_fn(config)(x, n)
