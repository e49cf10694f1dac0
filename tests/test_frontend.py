"""deepbof_tf.frontend against an independent float64 NumPy reference of the front end.

The reference below is written from the processing docs/model.md#front-end describes
(the authors' stft.m framing with explicit indices, MATLAB's symmetric Hann by
formula, the 1e-4·max floor, the attack/decay AGC as a plain loop over frames, Ellis's
fft2melmx); librosa's Slaney filterbank is a second, external reference for width 1.

Tolerances (float32 TensorFlow vs float64 NumPy, measured on the signals below):
log_mel median relative error <= 1e-4 per cell (measured: 1e-7 … 1e-5) and max
relative error <= 1e-3 (measured 4e-4 for the chirp, in near-silent cells where the
float32 FFT's rounding is a visible fraction of the 1e-4·max floor); novelty
correlation >= 0.999 (measured 1.000000) and max absolute error <= 1e-4 (measured
< 6e-6); frame counts identical.
"""

import math
import os

import librosa
import numpy as np
import pytest
import tensorflow as tf

from deepbof_tf import frontend
from deepbof_tf.config import FrontendConfig

SR = 22050
CONFIG = FrontendConfig()

# --------------------------------------------------------------------------------------
# Independent float64 reference of the front end.
# --------------------------------------------------------------------------------------


def ref_hz2mel(f):
  f = float(f)
  if f < 1000.0:
    return f * 3.0 / 200.0
  return 15.0 + math.log(f / 1000.0) * 27.0 / math.log(6.4)


def ref_mel2hz(z):
  z = float(z)
  if z < 15.0:
    return z * 200.0 / 3.0
  return 1000.0 * math.exp((z - 15.0) * math.log(6.4) / 27.0)


def ref_fft2melmx(nfft, sr, nfilts, width=1.0):
  """Ellis's fft2melmx (docs/model.md#mel-filterbank); rows = bands, [nfilts, nfft/2+1]."""
  top = ref_hz2mel(sr / 2.0)
  edges = [ref_mel2hz(top * i / (nfilts + 1)) for i in range(nfilts + 2)]
  wts = np.zeros((nfilts, nfft // 2 + 1))
  for i in range(nfilts):
    f0, f1, f2 = edges[i], edges[i + 1], edges[i + 2]
    lo = f1 + width * (f0 - f1)
    hi = f1 + width * (f2 - f1)
    for k in range(nfft // 2 + 1):
      fk = k * sr / nfft
      up = (fk - lo) / (f1 - lo)
      down = (hi - fk) / (hi - f1)
      wts[i, k] = max(0.0, min(up, down)) * 2.0 / (f2 - f0)
  return wts


def ref_stft_magnitude(x, nfft=1024, hop=512, symmetric=True):
  """getSpecgram.m + stft.m: pad N/2 both sides, zero-fill the tail, frame, |FFT|."""
  x = np.concatenate([np.zeros(nfft // 2), np.asarray(x, np.float64), np.zeros(nfft // 2)])
  length = len(x)
  padded_length = int(math.ceil((length - nfft) / hop)) * hop + nfft if length >= nfft else nfft
  x = np.concatenate([x, np.zeros(padded_length - length)])
  num_frames = (padded_length - nfft) // hop + 1
  denominator = nfft - 1 if symmetric else nfft
  window = np.array([0.5 * (1.0 - math.cos(2.0 * math.pi * k / denominator)) for k in range(nfft)])
  out = np.zeros((nfft // 2 + 1, num_frames))
  for m in range(num_frames):
    segment = x[m * hop:m * hop + nfft]
    out[:, m] = np.abs(np.fft.fft(window * segment, nfft)[:nfft // 2 + 1])
  return out  # [bins, frames], MATLAB orientation


def ref_agc(spec, sr=SR, hop=512, t_scale=0.5, f_scale=2.0, eps=0.01, initial_state=None):
  """process_tf_agc.m attack/decay variant as a loop over frames; [bins, frames]."""
  nbands = max(10, int(round(20 / f_scale)))
  width = f_scale * nbands / 10
  f2a = ref_fft2melmx(1024, sr, nbands, width)
  audgram = f2a @ spec
  alpha = math.exp(-(hop / sr) / t_scale)
  state = np.zeros(nbands) if initial_state is None else np.asarray(initial_state, np.float64)
  envelope = np.zeros_like(audgram)
  for j in range(audgram.shape[1]):
    state = np.maximum(alpha * state, audgram[:, j])
    envelope[:, j] = state
  colsum = f2a.sum(axis=0)
  gain = np.diag(1.0 / (colsum + (colsum == 0))) @ f2a.T @ envelope
  if np.any(gain > 0):
    gain[gain <= 0] = gain[gain > 0].min()
  else:
    gain[:] = 0.0  # digital silence (our definition; see frontend's docstring)
  return spec / (gain + eps)


def ref_features(x, symmetric=True):
  """Returns (log_mel [frames, 128], novelty [frames]) in float64."""
  spec = ref_stft_magnitude(x, symmetric=symmetric)
  spec = spec + spec.max() * 1e-4
  spec = ref_agc(spec)
  mel = ref_fft2melmx(1024, SR, 128) @ spec
  log_mel = np.log10(1.0 + 10.0 * mel)
  novelty_mel = np.log10(1.0 + 100.0 * (ref_fft2melmx(1024, SR, 40) @ spec))
  rise = np.maximum(np.diff(novelty_mel, axis=1), 0.0)
  novelty = np.concatenate([[0.0], rise.mean(axis=0)])
  return log_mel.T, novelty


# --------------------------------------------------------------------------------------
# Test signals.
# --------------------------------------------------------------------------------------


def _render_chords(seconds=3.0):
  """A I–vi–IV–V progression rendered with symusic and pretty_midi's TimGM6mb.sf2."""
  import pretty_midi
  import symusic
  soundfont = os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")
  score = symusic.Score(480, ttype="second")
  piano = symusic.Track(program=0, ttype="second")
  strings = symusic.Track(program=48, ttype="second")
  chords = [[60, 64, 67], [57, 60, 64], [53, 57, 60], [55, 59, 62]]
  step = seconds / 4.0
  for i, chord in enumerate(chords):
    for pitch in chord:
      piano.notes.append(symusic.Note(i * step, step * 0.6, pitch, 100, ttype="second"))
    strings.notes.append(symusic.Note(i * step, step, chord[0] - 12, 70, ttype="second"))
  score.tracks.append(piano)
  score.tracks.append(strings)
  audio = np.asarray(symusic.Synthesizer(soundfont, SR, 0).render(score, stereo=False))
  audio = audio.reshape(-1)[:int(seconds * SR)]
  assert np.abs(audio).max() > 0.01  # the render produced sound
  return audio.astype(np.float32)


def _signal(name):
  n = 3 * SR + 123  # not a multiple of the hop: exercises the tail zero-fill
  t = np.arange(n) / SR
  if name == "silence":
    return np.zeros(n, np.float32)
  if name == "impulses":
    x = np.zeros(n, np.float32)
    x[::SR // 4] = 1.0
    return x
  if name == "chirp":
    phase = 2 * np.pi * (100 * t + (8000 - 100) / (2 * t[-1]) * t ** 2)  # 100 Hz → 8 kHz
    return (0.5 * np.sin(phase)).astype(np.float32)
  if name == "noise":
    return np.random.default_rng(7).normal(0.0, 0.1, n).astype(np.float32)
  if name == "chords":
    return _render_chords()
  raise KeyError(name)


SIGNALS = ["silence", "impulses", "chirp", "noise", "chords"]


@pytest.fixture(scope="module")
def signals():
  return {name: _signal(name) for name in SIGNALS}


@pytest.fixture(scope="module")
def references(signals):
  return {name: ref_features(x) for name, x in signals.items()}


# --------------------------------------------------------------------------------------
# Filterbank, window, frame count.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_mels", [10, 40, 128])
def test_mel_filterbank_width1_matches_librosa_and_reference(n_mels):
  ours = frontend.mel_filterbank(n_mels)
  assert ours.shape == (513, n_mels)
  lib = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=n_mels, htk=False, norm="slaney").T
  np.testing.assert_allclose(ours, lib, rtol=1e-5, atol=1e-6 * lib.max())
  np.testing.assert_allclose(ours, ref_fft2melmx(1024, SR, n_mels).T, rtol=1e-10, atol=1e-14)


def test_mel_filterbank_width2_matches_reference_and_keeps_unwidened_area():
  ours = frontend.mel_filterbank(10, width=2.0)
  np.testing.assert_allclose(ours, ref_fft2melmx(1024, SR, 10, 2.0).T, rtol=1e-10, atol=1e-14)
  narrow = frontend.mel_filterbank(10, width=1.0)
  # Widening about the centre with the unwidened gain doubles each triangle's support,
  # so interior bands carry about twice the weight of the width-1 bands.
  ratio = ours[:, 2:8].sum(axis=0) / narrow[:, 2:8].sum(axis=0)
  np.testing.assert_allclose(ratio, 2.0, rtol=0.1)
  assert frontend.mel_filterbank(10, width=2.0).sum(axis=1).min() > 0  # every bin covered


@pytest.mark.parametrize("n_mels,config", [
    (128, CONFIG), (40, CONFIG), (10, CONFIG), (200, CONFIG),
    (96, FrontendConfig(sample_rate=16000)), (128, FrontendConfig(n_fft=2048, hop_length=1024))])
def test_banded_filterbank_plan_holds_every_weight_once(n_mels, config):
  dense = frontend.mel_filterbank(n_mels, 1.0, config).astype(np.float32)
  plan = frontend._filterbank_plan(n_mels, config)
  rebuilt = np.zeros_like(dense)
  band = 0
  for first_bin, end_bin, weights in plan:
    rebuilt[first_bin:end_bin, band:band + weights.shape[1]] += weights
    band += weights.shape[1]
  assert band == n_mels
  np.testing.assert_array_equal(rebuilt, dense)  # nothing dropped, nothing twice
  if n_mels >= 128 and config == CONFIG:
    # The point of the plan: a quarter of the dense multiply-adds for 128 bands.
    assert sum(w.size for _, _, w in plan) <= 0.3 * dense.size


@pytest.mark.parametrize("n_mels", [128, 40])
def test_banded_filterbank_product_matches_dense_float64(n_mels):
  rng = np.random.default_rng(3)
  spectrum = rng.uniform(0.0, 1.0, (2, 37, 513)).astype(np.float32)
  spectrum[:, :, 300:] *= 1e-3  # quiet high bins, as in music
  expected = spectrum.astype(np.float64) @ frontend.mel_filterbank(n_mels)
  for x, want in ((spectrum, expected), (spectrum[0], expected[0])):  # rank 3 and 2
    got = frontend._filterbank_product(tf.constant(x), n_mels, CONFIG).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=0)


def test_mel_scale_round_trip_and_break_point():
  f = np.array([0.0, 500.0, 1000.0, 4000.0, 11025.0])
  np.testing.assert_allclose(frontend.mel_to_hz(frontend.hz_to_mel(f)), f, rtol=1e-12, atol=1e-9)
  assert frontend.hz_to_mel(1000.0) == pytest.approx(15.0)
  assert frontend.hz_to_mel(6400.0) == pytest.approx(15.0 + 27.0)


def test_window_symmetric_and_periodic():
  symmetric = frontend.hann_window(CONFIG)
  assert symmetric[0] == 0.0 and symmetric[-1] == pytest.approx(0.0, abs=1e-15)
  np.testing.assert_allclose(symmetric, symmetric[::-1], atol=1e-15)
  periodic = frontend.hann_window(FrontendConfig(symmetric_window=False))
  np.testing.assert_allclose(periodic, np.hanning(1025)[:-1], atol=1e-12)


@pytest.mark.parametrize("n,expected", [(0, 1), (1, 2), (511, 2), (512, 2), (513, 3),
                                        (1024, 3), (1025, 4), (661500, 1293)])
def test_frame_count_edges(n, expected):
  assert frontend.frame_count(n) == expected
  assert int(frontend.frame_count(tf.constant(n, tf.int32))) == expected
  assert int(frontend.frame_count(np.int64(n))) == expected
  if n >= 1:
    assert ref_stft_magnitude(np.ones(n)).shape[1] == expected
    assert frontend.stft_magnitude(np.ones(n, np.float32)).shape[0] == expected
    log_mel, novelty = frontend.compute_features(np.ones(n, np.float32))
    assert log_mel.shape == (expected, 128) and novelty.shape == (expected,)


def test_frame_count_tensor_shapes_and_errors():
  counts = frontend.frame_count(tf.constant([1, 512, 513], tf.int64))
  assert counts.dtype == tf.int64
  np.testing.assert_array_equal(counts.numpy(), [2, 2, 3])
  with pytest.raises(ValueError, match="num_samples"):
    frontend.frame_count(-1)
  with pytest.raises(ValueError, match="integer"):
    frontend.frame_count(tf.constant(3.0))


# --------------------------------------------------------------------------------------
# Each step and the whole chain against the reference.
# --------------------------------------------------------------------------------------


def _relative_error(ours, ref):
  return np.abs(ours - ref) / np.maximum(np.abs(ref), 1e-12)


@pytest.mark.parametrize("symmetric", [True, False])
def test_stft_magnitude_matches_reference(signals, symmetric):
  config = FrontendConfig(symmetric_window=symmetric)
  x = signals["chords"]
  ours = frontend.stft_magnitude(x, config).numpy().T
  ref = ref_stft_magnitude(x, symmetric=symmetric)
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, atol=2e-6 * ref.max(), rtol=0)


def test_floor_and_agc_steps_match_reference(signals):
  x = signals["chords"]
  spec = ref_stft_magnitude(x)
  floored_ref = spec + 1e-4 * spec.max()
  floored = frontend.apply_floor(frontend.stft_magnitude(x)).numpy()
  np.testing.assert_allclose(floored.T, floored_ref, rtol=5e-4, atol=2e-6 * spec.max())
  # The AGC alone, on identical float32 input, against the loop over frames.
  agc_out, state = frontend.agc(floored.astype(np.float32))
  ref = ref_agc(floored.T.astype(np.float64))
  np.testing.assert_allclose(agc_out.numpy().T, ref, rtol=2e-5, atol=0)
  assert state.shape == (10,)


@pytest.mark.parametrize("name", SIGNALS)
def test_compute_features_matches_reference(signals, references, name):
  x = signals[name]
  log_mel, novelty = frontend.compute_features(x)
  log_mel, novelty = log_mel.numpy(), novelty.numpy()
  ref_log_mel, ref_novelty = references[name]
  assert log_mel.shape == ref_log_mel.shape == (frontend.frame_count(len(x)), 128)
  assert novelty.shape == ref_novelty.shape
  assert np.all(np.isfinite(log_mel)) and np.all(np.isfinite(novelty))
  if name == "silence":
    # Our definition for digital silence: exactly zero, never NaN.
    assert not np.any(log_mel) and not np.any(novelty)
    assert not np.any(ref_log_mel) and not np.any(ref_novelty)
    return
  rel = _relative_error(log_mel, ref_log_mel)
  assert np.median(rel) <= 1e-4, f"median relative error {np.median(rel):.2e}"
  assert rel.max() <= 1e-3, f"max relative error {rel.max():.2e}"
  assert novelty[0] == 0.0
  assert np.corrcoef(novelty, ref_novelty)[0, 1] >= 0.999
  np.testing.assert_allclose(novelty, ref_novelty, atol=1e-4, rtol=0)


def test_periodic_window_option_matches_reference(signals):
  x = signals["noise"]
  log_mel, _ = frontend.compute_features(x, FrontendConfig(symmetric_window=False))
  ref_log_mel, _ = ref_features(x, symmetric=False)
  assert np.median(_relative_error(log_mel.numpy(), ref_log_mel)) <= 1e-4


def test_without_agc_matches_reference(signals):
  x = signals["chords"]
  log_mel, novelty = frontend.compute_features(x, FrontendConfig(agc=False))
  spec = ref_stft_magnitude(x)
  spec = spec + 1e-4 * spec.max()
  ref_log_mel = np.log10(1.0 + 10.0 * (ref_fft2melmx(1024, SR, 128) @ spec)).T
  assert np.median(_relative_error(log_mel.numpy(), ref_log_mel)) <= 1e-4
  assert np.corrcoef(novelty.numpy(), ref_features(x)[1])[0, 1] < 0.9999  # AGC matters


def test_short_clips_and_single_sample():
  for n in [1, 2, 100, 511, 512, 513, 1500]:
    x = np.random.default_rng(n).normal(size=n).astype(np.float32)
    log_mel, novelty = frontend.compute_features(x)
    ref_log_mel, ref_novelty = ref_features(x)
    assert log_mel.shape == ref_log_mel.shape
    assert np.median(_relative_error(log_mel.numpy(), ref_log_mel)) <= 1e-4
    np.testing.assert_allclose(novelty.numpy(), ref_novelty, atol=1e-4)


# --------------------------------------------------------------------------------------
# Batch, streaming and graph use.
# --------------------------------------------------------------------------------------


def test_batch_equals_one_shot_per_clip(signals):
  clips = [signals["chords"][:SR], signals["noise"][:777], np.zeros(3000, np.float32),
           signals["chirp"][:2 * SR + 5], signals["impulses"][:1]]
  lengths = [len(c) for c in clips]
  batch = np.zeros((len(clips), max(lengths)), np.float32)
  for i, c in enumerate(clips):
    batch[i, :len(c)] = c
  # Garbage after a clip's end must be ignored (it is zeroed, as the tail fill).
  batch[1, lengths[1]:] = 0.3
  log_mel, novelty, n_frames = frontend.compute_features_batch(batch, np.array(lengths, np.int32))
  assert log_mel.shape == (len(clips), frontend.frame_count(max(lengths)), 128)
  for i, c in enumerate(clips):
    one_log_mel, one_novelty = frontend.compute_features(c)
    t = frontend.frame_count(len(c))
    assert int(n_frames[i]) == t
    np.testing.assert_allclose(log_mel[i, :t].numpy(), one_log_mel.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(novelty[i, :t].numpy(), one_novelty.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.any(log_mel[i, t:].numpy()) and not np.any(novelty[i, t:].numpy())


def test_streaming_building_blocks_equal_one_shot(signals):
  x = signals["chords"]
  log_mel_ref, novelty_ref = frontend.compute_features(x)
  padded = frontend.pad_waveform(x).numpy()
  hop, n_fft = CONFIG.hop_length, CONFIG.n_fft
  total_frames = frontend.frame_count(len(x))
  chunk_frames = [17, 40, 1, 33]  # uneven chunk sizes, the remainder in the last
  bounds, start = [], 0
  for size in chunk_frames:
    bounds.append((start, start + size))
    start += size
  bounds.append((start, total_frames))
  chunks = [padded[a * hop:(b - 1) * hop + n_fft] for a, b in bounds]
  # Pass 1: the clip-wide maximum of the magnitude (for the floor).
  max_value = max(float(tf.reduce_max(frontend.stft_magnitude(c, pad=False))) for c in chunks)
  # Pass 2: carry the AGC state and the last 40-band frame between chunks.
  state, previous, log_mels, novelties = None, None, [], []
  for chunk in chunks:
    s = frontend.apply_floor(frontend.stft_magnitude(chunk, pad=False), max_value)
    s_agc, state = frontend.agc(s, initial_state=state)
    log_mels.append(frontend.log_mel_from_agc(s_agc).numpy())
    novelties.append(frontend.novelty_from_agc(s_agc, previous_frame=previous).numpy())
    previous = frontend.novelty_log_mel(s_agc)[-1]
  np.testing.assert_allclose(np.concatenate(log_mels), log_mel_ref.numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.concatenate(novelties), novelty_ref.numpy(), rtol=1e-5, atol=1e-6)


def test_agc_doubling_scan_equals_loop_with_initial_state():
  rng = np.random.default_rng(3)
  magnitude = rng.exponential(size=(300, 513)).astype(np.float32)
  magnitude[100:] *= 1e-3  # a sudden drop: the decay branch of the recursion
  init = rng.uniform(50, 100, size=10).astype(np.float32)
  out, state = frontend.agc(magnitude, initial_state=init)
  expected = ref_agc(magnitude.T.astype(np.float64), initial_state=init)
  np.testing.assert_allclose(out.numpy().T, expected, rtol=2e-5)
  f2a = ref_fft2melmx(1024, SR, 10, 2.0)
  bands = f2a @ magnitude.T.astype(np.float64)
  alpha = math.exp(-(512 / SR) / 0.5)
  s = init.astype(np.float64)
  for j in range(bands.shape[1]):
    s = np.maximum(alpha * s, bands[:, j])
  np.testing.assert_allclose(state.numpy(), s, rtol=1e-5)
  # Without an initial state the clip starts from state 0 (the authors' code).
  out0, _ = frontend.agc(magnitude)
  np.testing.assert_allclose(out0.numpy().T, ref_agc(magnitude.T.astype(np.float64)), rtol=2e-5)


def test_in_tf_data_map_and_unknown_length_function(signals):
  clips = [signals["noise"][:1000], signals["chords"][:5000]]
  dataset = tf.data.Dataset.from_generator(
      lambda: iter(clips), output_signature=tf.TensorSpec([None], tf.float32))
  dataset = dataset.map(lambda w: frontend.compute_features(w))
  results = list(dataset.as_numpy_iterator())
  for (log_mel, novelty), clip in zip(results, clips):
    expected_log_mel, expected_novelty = frontend.compute_features(clip)
    np.testing.assert_allclose(log_mel, expected_log_mel.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(novelty, expected_novelty.numpy(), rtol=1e-6, atol=1e-7)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
  def wrapped(w):
    log_mel, novelty = frontend.compute_features(w)
    return tf.shape(log_mel)[0], tf.reduce_sum(novelty)

  for clip in clips:
    frames, _ = wrapped(clip)
    assert int(frames) == frontend.frame_count(len(clip))


def test_one_trace_per_config():
  fn = frontend._one_shot_fn(CONFIG)
  for n in [1000, 2000, 3001]:
    frontend.compute_features(np.ones(n, np.float32))
  assert fn.experimental_get_tracing_count() == 1


def test_compute_features_rejects_2d_input():
  with pytest.raises(ValueError, match="1-D"):
    frontend.compute_features(np.zeros((2, 100), np.float32))


def test_frontend_does_not_import_tensorflow_io():
  import subprocess
  import sys
  code = ("import sys; import deepbof_tf.frontend; "
          "print('tensorflow_io' in sys.modules)")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       check=True)
  assert out.stdout.strip().splitlines()[-1] == "False"


def test_batch_features_export_to_saved_model(tmp_path, signals):
  module = tf.Module()
  module.features = frontend._batch_fn(CONFIG)
  export_dir = str(tmp_path / "frontend_model")
  tf.saved_model.save(module, export_dir)
  loaded = tf.saved_model.load(export_dir)
  clip = signals["chords"][:SR]
  log_mel, novelty, n_frames = loaded.features(clip[None, :], tf.constant([len(clip)]))
  expected_log_mel, expected_novelty = frontend.compute_features(clip)
  assert int(n_frames[0]) == frontend.frame_count(len(clip))
  np.testing.assert_allclose(log_mel[0].numpy(), expected_log_mel.numpy(), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(novelty[0].numpy(), expected_novelty.numpy(), rtol=1e-6, atol=1e-7)


def _features_with(monkeypatch, covers: bool, clips, lengths, config):
  """compute_features_batch with the AGC's fast path forced on or off (fresh traces)."""
  monkeypatch.setattr(frontend, "_agc_covers_every_bin", lambda _config: covers)
  frontend._batch_fn.cache_clear()
  try:
    return [t.numpy() for t in frontend.compute_features_batch(clips, lengths, config)]
  finally:
    frontend._batch_fn.cache_clear()


@pytest.mark.parametrize("floor_ratio", [1e-4, 0.0])
def test_agc_without_the_minimum_replacement_equals_the_general_path(signals, monkeypatch,
                                                                     floor_ratio):
  # Every bin lies in some AGC band (by default), so skipping tf_agc's "non-positive
  # envelope -> smallest positive one" step changes nothing. Checked without the floor
  # too, where leading digital silence makes the envelope exactly 0.
  assert frontend._agc_covers_every_bin(CONFIG)
  config = FrontendConfig(floor_ratio=floor_ratio)
  leading_silence = np.concatenate([np.zeros(SR // 2, np.float32), signals["chords"][:SR]])
  clips = [signals["chords"][:SR], np.zeros(SR, np.float32), leading_silence,
           signals["impulses"][:SR // 3]]
  lengths = np.array([len(c) for c in clips], np.int32)
  batch = np.zeros((len(clips), lengths.max()), np.float32)
  for i, c in enumerate(clips):
    batch[i, :len(c)] = c
  fast = _features_with(monkeypatch, True, batch, lengths, config)
  general = _features_with(monkeypatch, False, batch, lengths, config)
  for ours, theirs in zip(fast, general):
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
  assert np.isfinite(fast[0]).all() and not np.any(fast[0][1])  # the silent clip is 0
