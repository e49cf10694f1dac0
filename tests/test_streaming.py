"""deepbof_tf.streaming: chunk plan, chunked encoding equal to one-shot, streamed decoding
equal to ``deepbof_tf.audio.load_audio``."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

import serving_fixtures as fx
from deepbof_tf import audio, frontend, models, streaming
from deepbof_tf.config import FrontendConfig
from deepbof_tf.layers.pca import PCAWhitening
from deepbof_tf.layers.sparse_rbm import SparseRBM

CONFIG = FrontendConfig()
SR = CONFIG.sample_rate


@pytest.mark.parametrize("num_samples", [3073, 22050, 43 * 512 * 3, 200_000, 200_001])
@pytest.mark.parametrize("windows_per_chunk", [1, 4])
def test_plan_chunks_cover_every_frame_and_align_windows(num_samples, windows_per_chunk):
  pool, block = 43, 8
  plan = streaming.plan_chunks(num_samples, windows_per_chunk, CONFIG, block, pool)
  total = frontend.frame_count(num_samples)
  assert plan[0].frame_start == 0 and plan[-1].frame_stop == total
  span = windows_per_chunk * pool
  encoded = []
  for k, chunk in enumerate(plan):
    assert chunk.frame_start < chunk.frame_stop
    if k:
      assert chunk.frame_start == plan[k - 1].frame_stop
    assert chunk.first_block == k * span
    # Block positions this chunk encodes (with block - 1 carried frames after chunk 0).
    first = chunk.frame_start - (block - 1 if k else 0)
    assert first == chunk.first_block
    positions = list(range(first, chunk.frame_stop - block + 1))
    if k < len(plan) - 1:
      assert len(positions) == span  # whole windows only: none straddles two chunks
    encoded += positions
  assert encoded == list(range(total - block + 1))  # T − 7 blocks, each exactly once


def test_segments_reproduce_the_padded_framing():
  x = fx.music_like_signal(4.0, 1)
  padded = frontend.pad_waveform(x).numpy()
  source = streaming.InMemoryWaveform(x, SR)
  plan = streaming.plan_chunks(x.size, 1, CONFIG)
  pieces = []
  for chunk in plan:
    segment = source.read(*streaming.segment_bounds(chunk, CONFIG))
    hop = CONFIG.hop_length
    np.testing.assert_array_equal(
        segment, padded[hop * chunk.frame_start:hop * (chunk.frame_stop - 1) + CONFIG.n_fft])
    pieces.append(frontend.stft_magnitude(segment, CONFIG, pad=False).numpy())
  np.testing.assert_allclose(np.concatenate(pieces), frontend.stft_magnitude(x).numpy(),
                             rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def encoder():
  rng = np.random.default_rng(3)
  latent = rng.standard_normal([400, 12]) @ rng.standard_normal([12, 1024])
  pca = PCAWhitening()
  pca.adapt((0.1 * latent + 0.5 + 0.01 * rng.standard_normal(latent.shape)).astype(np.float32))
  rbm = SparseRBM(num_hidden=32)
  rbm.set_weights_from(rng.normal(0, 0.5, [pca.output_dim, 32]), rng.normal(-1, 0.5, 32),
                       np.zeros(pca.output_dim))
  # A short pooling window gives many windows and chunks on a short test signal.
  layer = models.build_bof_encoder(pca, rbm, pool_frames=11, block_frames=8)
  layer.build((None, None, 128))
  return layer


_TRACED = {}


def _traced_encode(encoder):
  """``streaming.encode_segment`` in one tf.function per encoder (as the export traces it)."""
  if id(encoder) not in _TRACED:
    _TRACED[id(encoder)] = tf.function(
        lambda segment, peak, state, context: streaming.encode_segment(
            encoder, segment, peak, state, context, CONFIG),
        input_signature=[tf.TensorSpec([None]), tf.TensorSpec([]),
                         tf.TensorSpec([CONFIG.agc_n_bands]),
                         tf.TensorSpec([None, CONFIG.n_mels])])
  return _TRACED[id(encoder)]


def _chunked(encoder, x, windows_per_chunk):
  source = streaming.InMemoryWaveform(x, SR)
  plan = streaming.plan_chunks(x.size, windows_per_chunk, CONFIG, encoder.block_frames,
                               encoder.pool_frames)
  segments = [source.read(*streaming.segment_bounds(c, CONFIG)) for c in plan]
  peak = max(float(streaming.segment_peak(s, CONFIG)) for s in segments)
  state = tf.zeros([CONFIG.agc_n_bands])
  context = tf.zeros([0, CONFIG.n_mels])
  pooled = []
  encode = _traced_encode(encoder)
  for segment in segments:
    windows, state, context = encode(tf.constant(segment), tf.constant(peak), state, context)
    assert context.shape == (encoder.block_frames - 1, CONFIG.n_mels)
    pooled.append(windows.numpy())
  return len(plan), pooled


@pytest.mark.parametrize("case", ["music", "silent_stretch", "digital_silence", "loud_end"])
@pytest.mark.parametrize("windows_per_chunk", [1, 3])
def test_chunked_encoding_equals_one_shot(encoder, case, windows_per_chunk):
  x = fx.music_like_signal(6.0, 7)
  if case == "silent_stretch":
    x[20000:70000] = 0.0
  elif case == "digital_silence":
    x[:] = 0.0
  elif case == "loud_end":  # the floor's maximum comes from the last chunk
    x[-3000:] *= 20.0
  log_mel, _ = frontend.compute_features(x)
  ref_windows, ref_count = encoder.pooled_hidden(log_mel[None])
  ref_bof = encoder(log_mel[None]).numpy()[0]
  chunks, pooled = _chunked(encoder, x, windows_per_chunk)
  assert chunks > 3
  windows = np.concatenate(pooled)
  assert windows.shape[0] == int(ref_count[0])
  np.testing.assert_allclose(windows, ref_windows.numpy()[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(streaming.mean_of_windows(pooled), ref_bof, rtol=1e-5, atol=1e-6)


def test_window_combination_helpers_match_numpy():
  rng = np.random.default_rng(0)
  pooled = rng.uniform(0, 1, [23, 5]).astype(np.float32)
  np.testing.assert_allclose(streaming.mean_of_windows([pooled[:7], pooled[7:]]),
                             pooled.astype(np.float64).mean(0), rtol=1e-6)
  groups = streaming.group_windows(pooled, 10)
  assert groups.shape == (3, 5)
  np.testing.assert_allclose(groups[2], pooled[20:].mean(0), rtol=1e-6)
  np.testing.assert_allclose(groups[0], pooled[:10].mean(0), rtol=1e-6)
  with pytest.raises(ValueError):
    streaming.mean_of_windows([pooled[:0]])


# --- streamed decoding -----------------------------------------------------------------

_FORMATS = [
    ("wav", 44100, 2, {"subtype": "PCM_16"}),
    ("wav", 22050, 1, {"subtype": "PCM_24"}),  # odd data size: tfio's reader fails on it
    ("wav", 8000, 1, {"subtype": "PCM_U8"}),
    ("wav", 32000, 2, {"subtype": "FLOAT"}),
    ("wav", 16000, 2, {"subtype": "PCM_32"}),
    ("wav", 48000, 1, {"subtype": "DOUBLE"}),
    ("flac", 48000, 2, {}),
    ("flac", 16000, 1, {"subtype": "PCM_24"}),
    ("ogg", 44100, 2, {}),
    ("mp3", 44100, 2, {}),
]


@pytest.mark.parametrize("fmt,rate,channels,options", _FORMATS)
def test_decode_blocks_equal_load_audio(tmp_path, fmt, rate, channels, options):
  x = fx.music_like_signal(2.3, 4, rate) * 0.8
  other = np.random.default_rng(1).uniform(-0.5, 0.5, x.size)
  path = str(tmp_path / f"clip.{fmt}")
  sf.write(path, np.stack([x, other], 1)[:, :channels], rate, **options)
  for mode in ("first", "mean"):
    reference = audio.load_audio(path, channel_mode=mode)
    blocks = list(streaming.decode_blocks(path, SR, mode, block_seconds=0.37))
    assert len(blocks) > 3
    np.testing.assert_array_equal(np.concatenate(blocks), reference)


def test_spooled_waveform_reads_zero_filled_ranges(tmp_path):
  x = fx.music_like_signal(3.0, 2, 44100)
  path = str(tmp_path / "clip.flac")
  sf.write(path, x, 44100)
  reference = audio.load_audio(path)
  with streaming.SpooledWaveform.from_file(path, block_seconds=0.5) as spool:
    assert spool.num_samples == reference.size
    np.testing.assert_array_equal(spool.read(0, spool.num_samples), reference)
    piece = spool.read(-100, 50)
    np.testing.assert_array_equal(piece[:100], 0.0)
    np.testing.assert_array_equal(piece[100:], reference[:50])
    tail = spool.read(spool.num_samples - 10, spool.num_samples + 20)
    np.testing.assert_array_equal(tail[:10], reference[-10:])
    np.testing.assert_array_equal(tail[10:], 0.0)


def _wav_header(data_size: int, channels=1, rate=22050, bits=16, tag=1) -> bytes:
  align = channels * bits // 8
  fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
  return (b"RIFF" + struct.pack("<I", 36 + data_size) + b"WAVE" + b"fmt " +
          struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", data_size))


@pytest.mark.parametrize("name,content,message", [
    ("empty.mp3", b"", "empty"),
    ("missing.wav", None, "not found"),
    ("truncated.wav", _wav_header(4000) + b"\x00" * 100, "truncated WAV"),
    ("nan.wav", _wav_header(400, bits=32, tag=3) + np.full(100, np.nan, "<f4").tobytes(),
     "100 NaN/Inf samples"),
    ("nothing.wav", _wav_header(0), "0 samples"),
    ("text.flac", b"this is not audio " * 20, "not audio"),
])
def test_spooled_waveform_errors_name_the_file(tmp_path, name, content, message):
  path = str(tmp_path / name)
  if content is not None:
    with open(path, "wb") as f:
      f.write(content)
  with pytest.raises(audio.AudioDecodeError, match=message) as error:
    streaming.SpooledWaveform.from_file(path)
  assert str(error.value).startswith(path)
