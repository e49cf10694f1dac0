"""The two decoders (libsndfile, FFmpeg through PyAV) give the same samples where both
read a format; decoder messages name their file; decoder errors refuse the file."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest

import audio_writers as aw
import serving_fixtures as fx
from deepbof_tf import audio
from deepbof_tf import decoders


def _both(data: bytes):
  out = {}
  for decoder in decoders.DECODERS:
    stream = decoders.open_stream(io.BytesIO(data), "x", decoder)
    try:
      out[decoder] = (np.concatenate(list(stream.blocks())), stream.rate, stream.channels)
    finally:
      stream.close()
  return out


def _stereo(rate, seconds=3.0):
  x = fx.music_like_signal(seconds, 3, rate)
  return np.stack([x, 0.7 * np.roll(x, 50)], axis=1)


# format, subtype, rate, tolerance (0: bit-exact)
SHARED = [
    ("WAV", "PCM_U8", 22050, 0.0),
    ("WAV", "PCM_16", 44100, 0.0),
    ("WAV", "PCM_24", 48000, 0.0),
    ("WAV", "PCM_32", 44100, 0.0),
    ("WAV", "FLOAT", 44100, 0.0),
    ("AIFF", "PCM_16", 44100, 0.0),
    ("AIFF", "PCM_24", 96000, 0.0),
    ("FLAC", "PCM_16", 44100, 0.0),
    ("FLAC", "PCM_24", 48000, 0.0),
    ("OGG", "VORBIS", 44100, 1e-6),
    ("MP3", "MPEG_LAYER_III", 44100, 1e-5),
]


@pytest.mark.parametrize("fmt,subtype,rate,tolerance", SHARED)
def test_both_decoders_give_the_same_samples(fmt, subtype, rate, tolerance):
  data = aw.encode_sndfile(_stereo(rate), rate, fmt, subtype)
  got = _both(data)
  (a, rate_a, ch_a), (b, rate_b, ch_b) = got["libsndfile"], got["ffmpeg"]
  assert (rate_a, ch_a) == (rate_b, ch_b) == (rate, 2)
  # The same length: FFmpeg trims an MP3's encoder delay and padding from the LAME
  # header as mpg123 does, and Opus's pre-skip and end trimming as libopus does.
  assert a.shape == b.shape
  if tolerance == 0.0:
    np.testing.assert_array_equal(a, b)
  else:
    np.testing.assert_allclose(a, b, rtol=0, atol=tolerance)


def test_opus_decoders_differ_slightly():
  # libsndfile decodes Opus with libopus, FFmpeg with its own decoder: the same length
  # (pre-skip and end trimming agree), the samples within ~50 dB (docs/audio.md).
  for seed in (3, 4):
    x = fx.music_like_signal(3.0, seed, 48000)
    got = _both(aw.encode_sndfile(np.stack([x, 0.7 * np.roll(x, 50)], axis=1), 48000,
                                  "OGG", "OPUS"))
    a, b = got["libsndfile"][0], got["ffmpeg"][0]
    assert a.shape == b.shape
    snr_db = 10 * np.log10(np.sum(a.astype(np.float64) ** 2)
                           / np.sum((a.astype(np.float64) - b) ** 2))
    assert snr_db > 45.0, snr_db


def test_mp3_without_a_lame_header_keeps_every_decoded_frame():
  # The documented difference (docs/audio.md): no header, no gapless trimming.
  source = fx.music_like_signal(3.0, 4, 44100)
  mp3 = aw.encode_sndfile(source, 44100, "MP3", "MPEG_LAYER_III", bitrate_mode="CONSTANT")
  tagged, info = audio.decode_bytes(mp3, "lame.mp3")
  untagged, untagged_info = audio.decode_bytes(aw.without_vbr_header(mp3), "plain.mp3")
  assert (info.decoder, untagged_info.decoder) == ("libsndfile", "ffmpeg")
  assert tagged.shape[0] == source.size
  assert untagged.shape[0] % 1152 == 0 and untagged.shape[0] > source.size
  # The same music, shifted by the encoder's delay minus the dropped info frame.
  a = tagged[4000:source.size - 4000, 0]
  best = max(np.corrcoef(a, untagged[4000 + d:source.size - 4000 + d, 0])[0, 1]
             for d in range(-2400, 2400))
  assert best > 0.999, best


def test_ffmpeg_formats_decode_close_to_their_source():
  source = _stereo(44100, 4.0)
  for kind in ("m4a", "alac.m4a", "wma", "ac3", "aac"):
    samples, info = audio.decode_bytes(aw.encode_ffmpeg(source, 44100, kind), kind)
    assert info.decoder == "ffmpeg" and info.channels == 2 and info.rate == 44100
    if kind == "alac.m4a":  # lossless: the source to one 16-bit step
      np.testing.assert_allclose(samples, np.clip(source, -1.0, 1.0), rtol=0,
                                 atol=1.0 / 32768)
      continue
    # Lossy: the music is there, after the codec's delay (found by cross-correlation).
    # FFmpeg's own WMA encoder is far from transparent (0.78 here): a looser bound.
    floor = 0.7 if kind == "wma" else 0.95
    assert _aligned_correlation(source[:, 0], samples[:, 0]) > floor, kind


def _aligned_correlation(ref, decoded, max_lag=8192):
  n = 44100 * 3
  ref, decoded = ref[:n].astype(np.float64), decoded[:n + max_lag].astype(np.float64)
  size = 1 << int(np.ceil(np.log2(len(ref) + len(decoded))))
  xcorr = np.fft.irfft(np.fft.rfft(decoded, size) * np.conj(np.fft.rfft(ref, size)), size)
  lag = int(np.argmax(xcorr[:max_lag]))
  return np.corrcoef(ref[2000:n - 2000], decoded[2000 + lag:n - 2000 + lag])[0, 1]


def test_mpg123_messages_name_their_file(tmp_path, caplog):
  mp3 = aw.encode_sndfile(_stereo(44100), 44100, "MP3", "MPEG_LAYER_III")
  junk = mp3[:40000] + np.random.default_rng(2).bytes(3000) + mp3[40000:]
  path = str(tmp_path / "junk.mp3")
  with open(path, "wb") as f:
    f.write(junk)
  with caplog.at_level(logging.WARNING, logger="deepbof_tf.decoders"):
    with pytest.raises(audio.AudioDecodeError, match="junk.mp3: truncated or corrupt MP3"):
      audio.decode_audio(path)
  lines = [r.getMessage() for r in caplog.records]
  assert lines and all(line.startswith(f"{path}: libsndfile: ") for line in lines)
  assert any("Illegal Audio-MPEG-Header" in line for line in lines)


def test_ffmpeg_errors_refuse_the_file_and_name_it():
  webm = aw.encode_ffmpeg(_stereo(48000), 48000, "webm")
  cut = webm[:len(webm) * 2 // 3]
  with pytest.raises(audio.AudioDecodeError,
                     match=r"cut.webm: truncated or corrupt WebM/Matroska \(ffmpeg: "):
    audio.decode_bytes(cut, "cut.webm")


def test_a_wav_libsndfile_cannot_open_is_offered_to_ffmpeg():
  # A WAV of 32-bit float samples that says it is WAVE_FORMAT_EXTENSIBLE with a
  # sub-format GUID libsndfile does not accept, but FFmpeg reads, is not refused.
  import struct
  x = fx.music_like_signal(1.0, 5, 22050)
  data = bytearray(aw.encode_sndfile(x, 22050, "WAV", "PCM_16"))
  at = data.find(b"fmt ") + 8
  data[at:at + 2] = struct.pack("<H", 0x0006)  # A-law tag on PCM bytes: FFmpeg decodes
  samples, info = audio.decode_bytes(bytes(data), "alaw.wav")
  assert samples.shape[0] > 0 and info.container == "wav"


def test_stream_blocks_are_float32_and_cover_the_file():
  data = aw.encode_ffmpeg(_stereo(44100, 8.0), 44100, "m4a")
  stream = decoders.open_stream(io.BytesIO(data), "x.m4a", "ffmpeg")
  blocks = list(stream.blocks())
  stream.close()
  assert all(b.dtype == np.float32 and b.ndim == 2 and b.shape[1] == 2 for b in blocks)
  assert len(blocks) >= 2  # gathered to about BLOCK_FRAMES each
  assert sum(b.shape[0] for b in blocks) >= 8 * 44100
