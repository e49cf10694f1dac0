"""deepbof_tf.audio: every format, sample rate and channel layout, and every bad input.

All files are written by the test into tmp_path with soundfile (libsndfile: WAV, FLAC,
Ogg Vorbis, MP3). Lossless formats are compared with the source signal to within the
format's quantisation step; lossy ones by SNR/correlation. After resampling to 22,050
Hz the waveform is compared with the same tones evaluated on the 22,050 Hz time grid,
which also checks that the resampler is time-aligned (zero-phase).
"""

import io
import os

import numpy as np
import pytest
import soundfile as sf

from deepbof_tf import audio

RATES = [8000, 16000, 22050, 44100, 48000]
TONES_HZ = (220.0, 660.0, 1500.0)  # inside every rate's passband (8 kHz → 3.6 kHz)

# (soundfile format, subtype, extension, max abs error of the native decode)
LOSSLESS = [
    ("WAV", "PCM_U8", "wav", 1.0 / 128),
    ("WAV", "PCM_16", "wav", 1.0 / 2 ** 15),
    ("WAV", "PCM_24", "wav", 1.0 / 2 ** 23),
    ("WAV", "PCM_32", "wav", 1.0 / 2 ** 30),
    ("WAV", "FLOAT", "wav", 0.0),
    ("WAV", "DOUBLE", "wav", 1e-7),
    ("FLAC", "PCM_S8", "flac", 1.0 / 128),
    ("FLAC", "PCM_16", "flac", 1.0 / 2 ** 15),
    ("FLAC", "PCM_24", "flac", 1.0 / 2 ** 23),
]
LOSSY = [("OGG", "VORBIS", "ogg"), ("MP3", "MPEG_LAYER_III", "mp3")]


def _tones(rate, seconds=0.5, phase=0.0):
  t = np.arange(int(seconds * rate)) / rate
  return sum(0.25 * np.sin(2 * np.pi * f * t + phase) for f in TONES_HZ).astype(np.float32)


def _stereo(rate, seconds=0.5):
  # Distinct channels so "first" and "mean" differ.
  return np.stack([_tones(rate, seconds), _tones(rate, seconds, phase=1.0) * 0.5], axis=1)


def _write(tmp_path, name, data, rate, fmt, subtype):
  path = str(tmp_path / name)
  sf.write(path, data, rate, format=fmt, subtype=subtype)
  return path


def _snr_db(x, ref):
  return 10 * np.log10(np.sum(ref ** 2) / max(np.sum((x - ref) ** 2), 1e-30))


# --------------------------------------------------------------------------------------
# Native decode: every format x sample rate, mono and stereo.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("fmt,subtype,ext,tolerance", LOSSLESS)
def test_lossless_native_decode(tmp_path, fmt, subtype, ext, tolerance, rate):
  source = _stereo(rate, seconds=0.2)
  path = _write(tmp_path, f"s.{ext}", source, rate, fmt, subtype)
  samples, native_rate = audio.decode_audio(path)
  assert native_rate == rate
  assert samples.dtype == np.float32 and samples.shape == source.shape
  np.testing.assert_allclose(samples, source, atol=tolerance + 1e-7, rtol=0)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("fmt,subtype,ext", LOSSY)
def test_lossy_native_decode(tmp_path, fmt, subtype, ext, rate):
  source = _stereo(rate, seconds=1.0)
  path = _write(tmp_path, f"s.{ext}", source, rate, fmt, subtype)
  samples, native_rate = audio.decode_audio(path)
  assert native_rate == rate
  assert samples.shape[1] == 2
  assert abs(samples.shape[0] - source.shape[0]) <= 0.01 * rate  # gapless up to 10 ms
  n = min(len(samples), len(source))
  # Skip the codec's first and last 50 ms (onset ramp) for the quality check.
  core = slice(int(0.05 * rate), n - int(0.05 * rate))
  for channel in range(2):
    assert _snr_db(samples[core, channel], source[core, channel]) > 15.0


# --------------------------------------------------------------------------------------
# load_audio: mono, resampled to 22,050 Hz, time-aligned.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("fmt,subtype,ext", [("WAV", "PCM_24", "wav"), ("FLAC", "PCM_16", "flac"),
                                             ("WAV", "FLOAT", "wav")])
def test_load_audio_resamples_lossless_in_time(tmp_path, fmt, subtype, ext, rate):
  seconds = 0.5
  path = _write(tmp_path, f"m.{ext}", _tones(rate, seconds), rate, fmt, subtype)
  y = audio.load_audio(path)
  expected = _tones(22050, seconds)
  assert y.dtype == np.float32 and y.ndim == 1
  assert len(y) == int(np.ceil(len(_tones(rate, seconds)) * 22050 / rate))
  n = min(len(y), len(expected))
  core = slice(200, n - 200)  # the resampling filter's edge effects
  np.testing.assert_allclose(y[core], expected[core], atol=3e-3)


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
@pytest.mark.parametrize("fmt,subtype,ext", LOSSY)
def test_load_audio_lossy_correlates_with_source(tmp_path, fmt, subtype, ext, rate):
  path = _write(tmp_path, f"m.{ext}", _tones(rate, 1.0), rate, fmt, subtype)
  y = audio.load_audio(path)
  expected = _tones(22050, 1.0)
  n = min(len(y), len(expected))
  core = slice(1000, n - 1000)
  assert np.corrcoef(y[core], expected[core])[0, 1] > 0.99
  assert _snr_db(y[core], expected[core]) > 15.0


@pytest.mark.parametrize("ext,fmt,subtype", [("wav", "WAV", "PCM_16"),
                                             ("mp3", "MP3", "MPEG_LAYER_III")])
def test_channel_modes(tmp_path, ext, fmt, subtype):
  rate = 22050
  source = _stereo(rate, seconds=1.0)
  path = _write(tmp_path, f"st.{ext}", source, rate, fmt, subtype)
  first = audio.load_audio(path, channel_mode="first")
  mean = audio.load_audio(path, channel_mode="mean")
  default = audio.load_audio(path)
  np.testing.assert_array_equal(default, first)
  n = min(len(first), rate)
  core = slice(1000, n - 1000)
  tolerance = 1e-4 if ext == "wav" else 0.05
  np.testing.assert_allclose(first[core], source[core, 0], atol=tolerance)
  np.testing.assert_allclose(mean[core], source[core].mean(axis=1), atol=tolerance)
  with pytest.raises(ValueError, match="channel_mode"):
    audio.load_audio(path, channel_mode="left")


@pytest.mark.parametrize("subtype,tolerance", [("PCM_U8", 1.0 / 128), ("PCM_24", 1.0 / 2 ** 23)])
def test_odd_sized_wav_data_chunk(tmp_path, subtype, tolerance):
  # Mono 8/24-bit with an odd sample count has an odd data chunk plus a pad byte.
  source = _tones(22050, 0.1)[:2205]
  path = _write(tmp_path, "odd.wav", source, 22050, "WAV", subtype)
  samples, rate = audio.decode_audio(path)
  assert rate == 22050 and samples.shape == (2205, 1)
  np.testing.assert_allclose(samples[:, 0], source, atol=tolerance + 1e-7)


@pytest.mark.parametrize("subtype,tolerance", [("PCM_16", 1.0 / 2 ** 15), ("PCM_24", 1.0 / 2 ** 23),
                                               ("PCM_32", 1.0 / 2 ** 30), ("FLOAT", 0.0)])
def test_wave_format_extensible(tmp_path, subtype, tolerance):
  source = _stereo(16000, seconds=0.1)
  path = _write(tmp_path, "x.wav", source, 16000, "WAVEX", subtype)
  with open(path, "rb") as f:
    assert f.read()[20:22] == b"\xfe\xff"  # really WAVE_FORMAT_EXTENSIBLE
  samples, rate = audio.decode_audio(path)
  assert rate == 16000
  np.testing.assert_allclose(samples, source, atol=tolerance + 1e-7)


def test_wav_with_extra_chunks_and_streamed_size(tmp_path):
  import struct
  source = _tones(8000, 0.1)
  path = _write(tmp_path, "plain.wav", source, 8000, "WAV", "PCM_16")
  with open(path, "rb") as f:
    data = f.read()
  data_at = data.find(b"data")
  info = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\x00"  # odd size + pad byte
  with_list = data[:data_at] + info + data[data_at:] + b"junk" + struct.pack("<I", 2) + b"ab"
  with_list = with_list[:4] + struct.pack("<I", len(with_list) - 8) + with_list[8:]
  samples, _ = audio.decode_audio_bytes(with_list, "list.wav")
  np.testing.assert_allclose(samples[:, 0], source, atol=1.0 / 2 ** 15)
  streamed = bytearray(data)
  streamed[data_at + 4:data_at + 8] = b"\xff\xff\xff\xff"
  samples, _ = audio.decode_audio_bytes(bytes(streamed), "streamed.wav")
  np.testing.assert_allclose(samples[:, 0], source, atol=1.0 / 2 ** 15)


def test_resample_time_aligned_and_identity():
  x = np.zeros(44100, np.float32)
  x[10000] = 1.0
  y = audio.resample(x, 44100, 22050)
  assert len(y) == 22050
  assert int(np.argmax(np.abs(y))) == 5000  # impulse stays at the same time
  same = np.arange(10, dtype=np.float32)
  assert audio.resample(same, 22050, 22050) is not None
  np.testing.assert_array_equal(audio.resample(same, 22050, 22050), same)
  assert len(audio.resample(np.ones(1, np.float32), 44100, 22050)) == 1
  assert len(audio.resample(np.ones(3, np.float32), 8000, 22050)) == 9


@pytest.mark.parametrize("rate_in", [8000, 11025, 16000, 32000, 44100, 48000, 96000,
                                     44056])
def test_resample_equals_scipy_resample_poly(rate_in):
  """The matrix form against SciPy's polyphase loop itself (44056 Hz has no plan and
  runs resample_poly: exact)."""
  from scipy import signal
  rng = np.random.default_rng(rate_in)
  for n in (1, 7, 2 * rate_in + 13):
    x = (0.3 * rng.standard_normal(n)).astype(np.float32)
    g = np.gcd(rate_in, 22050)
    reference = signal.resample_poly(x, 22050 // g, rate_in // g)
    y = audio.resample(x, rate_in, 22050)
    assert y.dtype == np.float32 and y.shape == reference.shape
    np.testing.assert_allclose(y, reference, rtol=0, atol=2e-6 * max(1.0, np.abs(x).max()))
  assert (audio._gemm_plan(22050 // g, rate_in // g) is None) == (rate_in == 44056)


@pytest.mark.parametrize("rate_in", [8000, 16000, 44100, 48000, 22050])
def test_resample_segment_equals_one_shot(rate_in):
  x = np.random.default_rng(rate_in).standard_normal(rate_in * 3 + 17).astype(np.float32)
  whole = audio.resample(x, rate_in, 22050)
  assert len(whole) == audio.resampled_length(len(x), rate_in, 22050)

  def read(lo, hi):
    out = np.zeros(hi - lo, np.float32)
    a, b = max(lo, 0), min(hi, len(x))
    if b > a:
      out[a - lo:b - lo] = x[a:b]
    return out

  edges = [0, 1, 5000, 22050, 40001, len(whole)]
  pieces = [audio.resample_segment(read, len(x), rate_in, 22050, a, b)
            for a, b in zip(edges[:-1], edges[1:])]
  # The products run on a grid fixed by the whole signal: bit for bit the same values.
  np.testing.assert_array_equal(np.concatenate(pieces), whole)


def test_load_audio_from_bytes_and_format_from_content(tmp_path):
  rate = 16000
  path = _write(tmp_path, "real.flac", _tones(rate), rate, "FLAC", "PCM_16")
  with open(path, "rb") as f:
    data = f.read()
  # The content wins over a misleading name.
  y = audio.load_audio_from_bytes(data, "misnamed.mp3")
  np.testing.assert_array_equal(y, audio.load_audio(path))
  assert audio.detect_format(data, "x.mp3") == "flac"
  assert audio.detect_format(b"\x00" * 16, "x.ogg") == "ogg"  # extension fallback
  # A renamed file on disk decodes the same way.
  renamed = tmp_path / "renamed.wav"
  renamed.write_bytes(data)
  np.testing.assert_array_equal(audio.load_audio(str(renamed)), y)


def test_mp3_with_id3_tag_and_single_sample_files(tmp_path):
  rate = 44100
  path = _write(tmp_path, "t.mp3", _tones(rate), rate, "MP3", "MPEG_LAYER_III")
  with open(path, "rb") as f:
    data = f.read()
  tag_body = b"TIT2" + (5).to_bytes(4, "big") + b"\x00\x00" + b"\x00song"
  size = len(tag_body)
  syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
  tagged = b"ID3\x03\x00\x00" + syncsafe + tag_body + data
  samples, native_rate = audio.decode_audio_bytes(tagged, "tagged.mp3")
  assert native_rate == rate and samples.shape[0] > 0.9 * rate * 0.5
  one = _write(tmp_path, "one.wav", np.array([0.5], np.float32), 8000, "WAV", "FLOAT")
  assert audio.load_audio(one).shape == (3,)


# --------------------------------------------------------------------------------------
# Bad input: each raises AudioDecodeError naming the path and the reason.
# --------------------------------------------------------------------------------------


def _bad_inputs(tmp_path):
  """(path, expected words in the message) for every kind of bad input."""
  rng = np.random.default_rng(0)
  cases = []

  def add(name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    cases.append((str(path), reason))

  cases.append((str(tmp_path / "missing.mp3"), "not found"))
  add("empty.mp3", b"", "0 bytes")
  add("empty.ogg", b"", "0 bytes")
  add("text.mp3", b"this is a text file, not audio\n" * 40, "not audio")
  add("text.wav", b"RIFF is not enough\n" * 40, "not audio")
  add("random.mp3", rng.bytes(20000), "not audio")
  add("random.ogg", rng.bytes(20000), "not audio")
  add("random.bin", rng.bytes(20000), "not audio")
  rate = 22050
  tones = _tones(rate, 1.0)
  for fmt, subtype, ext in [("MP3", "MPEG_LAYER_III", "mp3"), ("FLAC", "PCM_16", "flac"),
                            ("WAV", "PCM_16", "wav"), ("OGG", "VORBIS", "ogg"),
                            ("WAV", "PCM_32", "wav")]:
    path = _write(tmp_path, f"full_{subtype}.{ext}", tones, rate, fmt, subtype)
    with open(path, "rb") as f:
      data = f.read()
    add(f"truncated_{subtype}.{ext}", data[:len(data) // 2], "truncated")
    add(f"header_only_{subtype}.{ext}", data[:40], "truncated")
  nan = np.full(100, np.nan, np.float32)
  cases.append((_write(tmp_path, "nan.wav", nan, rate, "WAV", "FLOAT"), "NaN/Inf"))
  inf = np.zeros(100, np.float32)
  inf[50] = np.inf
  cases.append((_write(tmp_path, "inf.wav", inf, rate, "WAV", "FLOAT"), "NaN/Inf"))
  cases.append((_write(tmp_path, "zero.wav", np.zeros(0, np.float32), rate, "WAV", "PCM_16"),
                "0 samples"))
  # A float WAV with 0 frames and trailing chunks after the empty data chunk.
  zero_float = _write(tmp_path, "zero_float.wav", np.zeros(0, np.float32), rate, "WAV", "FLOAT")
  cases.append((zero_float, "0 samples"))
  cases.append((str(tmp_path), "directory"))
  return cases


def test_every_bad_input_raises_audio_decode_error(tmp_path):
  for path, reason in _bad_inputs(tmp_path):
    with pytest.raises(audio.AudioDecodeError) as info:
      audio.load_audio(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert reason in message, message
    assert "{{function_node" not in message, message  # no raw TF noise in the message
    assert isinstance(info.value, ValueError)
    assert info.value.path == path


def test_decoder_errors_are_chained(tmp_path):
  path = tmp_path / "broken.flac"
  rate = 22050
  full = _write(tmp_path, "full.flac", _tones(rate, 1.0), rate, "FLAC", "PCM_16")
  with open(full, "rb") as f:
    path.write_bytes(f.read()[:3000])
  with pytest.raises(audio.AudioDecodeError) as info:
    audio.load_audio(str(path))
  assert info.value.__cause__ is not None  # the decoder's error is kept for debugging


def test_bytes_api_rejects_non_bytes_and_header_only_files():
  with pytest.raises(TypeError):
    audio.decode_audio_bytes("not bytes", "x.wav")
  # An AIFF header and nothing else: AIFF is read, and this one is cut before its chunks.
  with pytest.raises(audio.AudioDecodeError, match="x.aiff: truncated or corrupt AIFF"):
    audio.decode_audio_bytes(b"FORM\x00\x00\x00\x00AIFF" + b"\x00" * 64, "x.aiff")


@pytest.mark.parametrize("subtype", ["ULAW", "ALAW"])
def test_companded_wav_decodes(tmp_path, subtype):
  # libsndfile decodes G.711 WAV; the 8-bit companding costs ~38 dB of SNR at most.
  source = _tones(8000)
  path = _write(tmp_path, f"{subtype}.wav", source, 8000, "WAV", subtype)
  samples, rate = audio.decode_audio(path)
  assert rate == 8000 and samples.shape == (len(source), 1)
  assert _snr_db(samples[:, 0], source) > 30.0


def test_unsupported_wav_encoding_is_named(tmp_path):
  import struct
  path = _write(tmp_path, "pcm.wav", _tones(8000), 8000, "WAV", "PCM_16")
  with open(path, "rb") as f:
    data = bytearray(f.read())
  at = data.find(b"fmt ") + 8
  data[at:at + 2] = struct.pack("<H", 0x1234)  # a format tag no decoder knows
  bad = tmp_path / "odd_tag.wav"
  bad.write_bytes(bytes(data))
  with pytest.raises(audio.AudioDecodeError, match="unsupported WAV encoding.*0x1234"):
    audio.load_audio(str(bad))


def test_ogg_opus_decodes(tmp_path):
  try:
    path = _write(tmp_path, "o.ogg", _tones(48000), 48000, "OGG", "OPUS")
  except (sf.LibsndfileError, ValueError, TypeError) as err:
    pytest.skip(f"this libsndfile cannot write Ogg Opus: {err}")
  y = audio.load_audio(path)
  expected = _tones(22050)
  n = min(len(y), len(expected))
  core = slice(1000, n - 1000)
  assert abs(len(y) - len(expected)) <= 0.02 * 22050
  assert np.corrcoef(y[core], expected[core])[0, 1] > 0.99


def test_vbr_mp3_without_vbr_header_decodes_to_its_end(tmp_path):
  # libsndfile takes such a file's length from its size and stops there: FFmpeg reads it.
  rng = np.random.default_rng(1)
  t = np.arange(22050 * 6) / 22050
  source = np.where(t % 2 < 1, 0.3 * np.sin(2 * np.pi * 440 * t),
                    0.5 * rng.standard_normal(t.size)).astype(np.float32)
  path = tmp_path / "vbr.mp3"
  sf.write(path, source, 22050, format="MP3", subtype="MPEG_LAYER_III",
           bitrate_mode="VARIABLE", compression_level=0.5)
  data = path.read_bytes()
  first = audio._mp3_header(data, 0)
  assert b"Xing" in data[:first[2]] or b"Info" in data[:first[2]]
  no_header = data[first[2]:]  # the info frame dropped
  with sf.SoundFile(io.BytesIO(no_header)) as f:  # what libsndfile alone would give
    assert f.read().shape[0] < 0.7 * source.size
  samples, info = audio.decode_bytes(no_header, "no_header.mp3")
  assert (info.container, info.decoder) == ("mp3", "ffmpeg")
  # Every frame decodes: the encoder's delay and padding are not trimmed without the
  # LAME header, so a little more than the source comes out, never less.
  assert source.size <= samples.shape[0] <= source.size + 2 * 1152 + 529
  with_header, with_info = audio.decode_bytes(data, "vbr.mp3")
  assert with_info.decoder == "libsndfile" and with_header.shape[0] == source.size


def test_decode_in_graph_matches_libsndfile(tmp_path):
  try:
    import tensorflow_io  # noqa: F401  pylint: disable=unused-import
  except Exception as err:  # not installed, or built for another TensorFlow
    pytest.skip(f"tensorflow-io unavailable (the [tfio] extra, TensorFlow 2.16): {err}")
  import tensorflow as tf
  rate = 22050
  for fmt, subtype, ext, tolerance in [("WAV", "PCM_16", "wav", 1e-6),
                                       ("FLAC", "PCM_16", "flac", 1e-6),
                                       ("OGG", "VORBIS", "ogg", 0.05),
                                       ("MP3", "MPEG_LAYER_III", "mp3", 0.05)]:
    path = _write(tmp_path, f"g.{ext}", _stereo(rate), rate, fmt, subtype)
    reference, _ = audio.decode_audio(path)
    in_graph = audio.decode_in_graph(tf.io.read_file(path), ext).numpy()
    assert in_graph.shape[1] == 2
    n = min(len(in_graph), len(reference))
    assert abs(len(in_graph) - len(reference)) <= 0.01 * rate
    if tolerance < 1e-3:
      np.testing.assert_allclose(in_graph[:n], reference[:n], atol=tolerance)
    else:  # lossy: decoders differ in their delay handling; compare the waveforms' shape
      core = slice(2000, n - 2000)
      lag = int(np.argmax(np.correlate(in_graph[core, 0], reference[core, 0][500:-500],
                                       mode="valid"))) - 500
      shifted = np.roll(in_graph[:, 0], -lag)[core]
      assert np.corrcoef(shifted, reference[core, 0])[0, 1] > 0.99


def test_audio_module_does_not_import_tensorflow_io_at_import_time():
  import subprocess
  import sys
  code = "import sys; import deepbof_tf.audio; print('tensorflow_io' in sys.modules)"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       check=True)
  assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("fmt,subtype,ext", [("WAV", "PCM_16", "wav"), ("FLAC", "PCM_24", "flac")]
                         + LOSSY)
def test_open_native_random_access_equals_one_shot(tmp_path, fmt, subtype, ext):
  rng = np.random.default_rng(3)
  source = (0.3 * rng.standard_normal((44100 * 4, 2))).astype(np.float32)
  path = _write(tmp_path, f"r.{ext}", source, 44100, fmt, subtype)
  reference = audio.decode_audio(path)[0].mean(axis=1, dtype=np.float64).astype(np.float32)
  num_frames, rate, read = audio.open_native(path, channel_mode="mean")
  assert (num_frames, rate) == (len(reference), 44100)
  # Forward, overlapping, backward, past-the-end ranges, and ranges across the
  # decoder's blocks (BLOCK_FRAMES = 131072 frames each).
  for start, stop in [(0, 1000), (500, 3000), (2000, 2500), (90000, 120000), (5, 100),
                      (150000, num_frames + 50), (60000, 61000), (120000, 140000),
                      (0, num_frames)]:
    np.testing.assert_array_equal(read(start, stop), reference[start:min(stop, num_frames)])


def test_open_native_reports_a_truncated_stream(tmp_path):
  noise = (0.3 * np.random.default_rng(4).standard_normal(44100 * 20)).astype(np.float32)
  path = _write(tmp_path, "t.mp3", noise, 44100, "MP3", "MPEG_LAYER_III")
  with open(path, "rb") as f:
    data = f.read()
  assert len(data) * 2 // 3 > 1 << 16  # beyond the first bytes read for the header
  cut = tmp_path / "cut.mp3"
  cut.write_bytes(data[:len(data) * 2 // 3])  # mid-frame
  for open_or_decode in (audio.open_native, audio.decode_audio):
    with pytest.raises(audio.AudioDecodeError, match="truncated MP3: the frame at byte"):
      open_or_decode(str(cut))
