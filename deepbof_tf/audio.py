"""Decoding and resampling of audio files (SPEC §1 "decode" and "resample").

``load_audio(path)`` reads any of WAV, FLAC, Ogg/Vorbis and MP3 through ``tf.io.gfile``
(so ``gs://`` paths work), decodes it with tensorflow-io, keeps the first channel (the
authors' code) or averages the channels, and resamples to 22,050 Hz with a polyphase
Kaiser FIR (see below). Every failure raises :class:`AudioDecodeError` (a
``ValueError``) whose message starts with the path and names the reason.

Details worth knowing (also in the README):

* The format is detected from the content (RIFF/WAVE, ``fLaC``, ``OggS``, ID3 or an
  MPEG audio frame header); the file extension is only a fallback.
* tensorflow-io's WAV decoder reads 32-bit integer PCM as float and cannot read 64-bit
  float; those two WAV encodings are decoded by a small RIFF reader in NumPy here.
  8/16/24-bit PCM and 32-bit float WAV go through tensorflow-io.
* The native sample rate is read from the stream headers (WAV ``fmt``, FLAC
  STREAMINFO, the Vorbis identification header, the first MPEG frame header), because
  tensorflow-io's in-memory decoders return samples only.
* Resampling is SciPy's polyphase FIR (``scipy.signal.resample_poly``: a Kaiser-windowed
  (β = 5) low-pass of 2·10·max(p, q)+1 taps at the ratio p/q), the same design family
  and defaults as MATLAB's ``resample`` that the authors' code calls. It is zero-phase
  (time-aligned with the input) and gives ``ceil(n · out / in)`` samples like MATLAB.
  This is a deliberate deviation from resampling with tensorflow-io: ``tfio.audio.
  resample`` (Speex) delays its output, rolls off earlier (−3 dB near 10 kHz for
  44.1 → 22.05 kHz) and was 8–40× slower, which made resampling most of the Beam job's
  time. :func:`resample_segment` computes any output range of the same resampling from
  a random-access reader, so long files can be resampled in pieces (``deepbof-tag``)
  with results equal to the one-shot call.
* tensorflow-io aborts the process on some inputs (e.g. empty Ogg data), so bytes are
  validated before they reach a decoder; decoded samples are checked too (zero samples,
  NaN/Inf), because the decoders accept, e.g., a WAV full of NaNs.
"""

from __future__ import annotations

import dataclasses
import math
import posixpath
import struct
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

DEFAULT_SAMPLE_RATE = 22050
CHANNEL_MODES = ("first", "mean")
FORMATS = ("wav", "flac", "ogg", "mp3")
_EXTENSIONS = {".wav": "wav", ".wave": "wav", ".flac": "flac", ".ogg": "ogg",
               ".oga": "ogg", ".mp3": "mp3"}


class AudioDecodeError(ValueError):
  """An input that cannot be turned into a waveform; the message names path and reason.

  Args:
    path: the file path or name of the input.
    reason: what is wrong, in words a user can act on.
  """

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path = path
    self.reason = reason


def _tfio():
  """tensorflow-io, imported on first use: frontend/SavedModel code must not need it."""
  import tensorflow_io as tfio  # pylint: disable=import-outside-toplevel
  return tfio


def _short(err: BaseException) -> str:
  """The useful last line of a TensorFlow error (drops the `{{function_node ...}}` noise)."""
  text = str(err).strip()
  if "}}" in text:
    text = text.rsplit("}}", 1)[1]
  text = text.split(" [Op:", 1)[0].strip()
  return text or type(err).__name__


# --------------------------------------------------------------------------------------
# Header parsing (format detection and native sample rate).
# --------------------------------------------------------------------------------------


def _id3v2_size(data: bytes) -> int:
  """Length of a leading ID3v2 tag (0 if none)."""
  if len(data) < 10 or data[:3] != b"ID3":
    return 0
  size = 0
  for byte in data[6:10]:  # 4 "syncsafe" bytes of 7 bits
    size = (size << 7) | (byte & 0x7F)
  footer = 10 if data[5] & 0x10 else 0
  return 10 + size + footer


def detect_format(data: bytes, name: str = "") -> Optional[str]:
  """The container of ``data`` from its signature, else from ``name``'s extension.

  Args:
    data: the file's bytes.
    name: the file name, used only when the content has no known signature.

  Returns:
    One of ``FORMATS`` or None when neither the content nor the extension is known.
  """
  fmt = _format_from_content(data)
  if fmt is None:
    fmt = _EXTENSIONS.get(posixpath.splitext(name.lower())[1])
  return fmt


def _format_from_content(data: bytes) -> Optional[str]:
  if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
    return "wav"
  if data[:4] == b"fLaC":
    return "flac"
  if data[:4] == b"OggS":
    return "ogg"
  skip = _id3v2_size(data)
  if skip:
    return "flac" if data[skip:skip + 4] == b"fLaC" else "mp3"
  if len(data) >= 4 and _mp3_header(data, 0) is not None:
    return "mp3"
  return None


@dataclasses.dataclass(frozen=True)
class _WavInfo:
  format_tag: int
  channels: int
  rate: int
  bits: int
  block_align: int
  data_offset: int
  data_size: int


_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_IEEE_FLOAT = 3
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


def _parse_wav(data: bytes, path: str) -> _WavInfo:
  """Walk the RIFF chunks for ``fmt `` and ``data``; raise on truncation."""
  offset, fmt, data_offset, data_size = 12, None, None, None
  while offset + 8 <= len(data):
    chunk_id = data[offset:offset + 4]
    (size,) = struct.unpack("<I", data[offset + 4:offset + 8])
    body = offset + 8
    if chunk_id == b"fmt ":
      if size < 16 or body + 16 > len(data):
        raise AudioDecodeError(path, "truncated or corrupt WAV (incomplete 'fmt ' chunk)")
      tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", data[body:body + 16])
      if tag == _WAVE_FORMAT_EXTENSIBLE and size >= 40 and body + 26 <= len(data):
        (tag,) = struct.unpack("<H", data[body + 24:body + 26])  # sub-format GUID
      fmt = (tag, channels, rate, bits, block_align)
    elif chunk_id == b"data":
      data_offset = body
      available = len(data) - body
      if size == 0xFFFFFFFF:
        size = available  # streamed WAV: the writer could not fill in the size
      if size > available:
        raise AudioDecodeError(
            path, f"truncated WAV: header declares {size} bytes of samples, file has "
            f"{available}")
      data_size = size
      if fmt is not None:
        break
    offset = body + size + (size & 1)  # chunks are padded to an even length
  if fmt is None:
    raise AudioDecodeError(path, "truncated or corrupt WAV (no 'fmt ' chunk)")
  if data_offset is None:
    raise AudioDecodeError(path, "truncated or corrupt WAV (no 'data' chunk)")
  tag, channels, rate, bits, block_align = fmt
  if channels < 1 or rate < 1 or block_align < 1:
    raise AudioDecodeError(path, f"corrupt WAV header ({channels} channels, {rate} Hz)")
  return _WavInfo(tag, channels, rate, bits, block_align, data_offset, data_size)


def _flac_streaminfo(data: bytes, start: int, path: str) -> Tuple[int, int, int, int]:
  """(rate, channels, bits per sample, total samples or 0) from the STREAMINFO block."""
  block = start + 8  # "fLaC" + the 4-byte metadata block header
  if len(data) < block + 18 or data[start + 4] & 0x7F != 0:
    raise AudioDecodeError(path, "truncated or corrupt FLAC (no STREAMINFO block)")
  (packed,) = struct.unpack(">Q", data[block + 10:block + 18])
  rate = packed >> 44
  channels = ((packed >> 41) & 0x7) + 1
  bits = ((packed >> 36) & 0x1F) + 1
  total = packed & 0xFFFFFFFFF
  if rate == 0:
    raise AudioDecodeError(path, "corrupt FLAC header (sample rate 0)")
  return rate, channels, bits, total


def _vorbis_rate(data: bytes, path: str) -> int:
  head = data[:512]
  if b"OpusHead" in head:
    raise AudioDecodeError(path, "Ogg Opus is not supported (tensorflow-io decodes Ogg "
                           "Vorbis only); convert to Vorbis, FLAC, MP3 or WAV")
  if b"\x7fFLAC" in head:
    raise AudioDecodeError(path, "FLAC inside Ogg is not supported; use a native .flac file")
  at = head.find(b"\x01vorbis")
  if at < 0 or at + 16 > len(data):
    raise AudioDecodeError(path, "truncated or corrupt Ogg (no Vorbis identification header)")
  (rate,) = struct.unpack("<I", data[at + 12:at + 16])
  if rate == 0:
    raise AudioDecodeError(path, "corrupt Ogg Vorbis header (sample rate 0)")
  return rate


# MPEG audio: sample rates by version id and Layer III bit rates (kbit/s).
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_MP3_KBPS_V1 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MP3_KBPS_V2 = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)


def _mp3_header(data: bytes, i: int) -> Optional[Tuple[int, int, int]]:
  """(version id, rate, frame length or 0) of a Layer III frame header at ``i``."""
  if i + 4 > len(data) or data[i] != 0xFF or (data[i + 1] & 0xE0) != 0xE0:
    return None
  version = (data[i + 1] >> 3) & 0x3
  layer = (data[i + 1] >> 1) & 0x3
  bitrate_index = data[i + 2] >> 4
  rate_index = (data[i + 2] >> 2) & 0x3
  if version == 1 or layer != 1 or bitrate_index == 15 or rate_index == 3:
    return None
  rate = _MP3_RATES[version][rate_index]
  padding = (data[i + 2] >> 1) & 0x1
  kbps = (_MP3_KBPS_V1 if version == 3 else _MP3_KBPS_V2)[bitrate_index]
  if kbps == 0:  # "free format": length unknown without searching
    return version, rate, 0
  samples_factor = 144 if version == 3 else 72
  return version, rate, samples_factor * kbps * 1000 // rate + padding


def _mp3_rate(data: bytes, path: str, confirmed_only: bool) -> int:
  """Sample rate of the first Layer III frame confirmed by the next frame's header.

  ``confirmed_only`` (content without an MP3 signature) refuses a lone plausible header,
  which random bytes contain by chance.
  """
  start = _id3v2_size(data)
  end = min(len(data) - 3, start + (1 << 17))
  first_plausible = None
  for i in range(start, max(start, end)):
    header = _mp3_header(data, i)
    if header is None:
      continue
    version, rate, length = header
    if first_plausible is None:
      first_plausible = rate
    if length and i + length + 4 <= len(data):
      following = _mp3_header(data, i + length)
      if following is not None and following[:2] == (version, rate):
        return rate
    elif length and i + length >= len(data) - 128:
      return rate  # a one-frame file (possibly followed by an ID3v1 tag)
  if first_plausible is not None and not confirmed_only:
    return first_plausible
  raise AudioDecodeError(path, "not audio: no MPEG audio frame found (not an MP3 file?)")


# --------------------------------------------------------------------------------------
# Decoding.
# --------------------------------------------------------------------------------------


def _canonical_wav(info: _WavInfo, samples_bytes: bytes) -> bytes:
  """A minimal RIFF/WAVE (16-byte ``fmt ``, ``data``) holding exactly the parsed samples.

  tensorflow-io's reader fails on valid files whose ``data`` chunk has an odd size (8-bit
  or 24-bit mono with an odd sample count): after the pad byte it expects another chunk
  header. Feeding it a rebuilt file with an empty trailing ``JUNK`` chunk in that case
  avoids the bug; rebuilding also normalises WAVE_FORMAT_EXTENSIBLE headers and
  streamed sizes.
  """
  frames = len(samples_bytes) // info.block_align
  body = samples_bytes[:frames * info.block_align]
  fmt = struct.pack("<HHIIHH", info.format_tag, info.channels, info.rate,
                    info.rate * info.block_align, info.block_align, info.bits)
  chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(body))
  chunks += body
  if len(body) % 2:
    chunks += b"\x00" + b"JUNK" + struct.pack("<I", 0)
  return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def _decode_wav(data: bytes, path: str) -> Tuple[np.ndarray, int]:
  info = _parse_wav(data, path)
  tag, bits = info.format_tag, info.bits
  samples_bytes = data[info.data_offset:info.data_offset + info.data_size]
  frames = info.data_size // info.block_align
  if frames == 0:
    return np.zeros((0, info.channels), np.float32), info.rate
  numpy_dtypes = {(_WAVE_FORMAT_PCM, 32): ("<i4", 2.0 ** 31),
                  (_WAVE_FORMAT_IEEE_FLOAT, 64): ("<f8", 1.0)}
  tfio_dtypes = {(_WAVE_FORMAT_PCM, 8): (tf.uint8, 128.0),
                 (_WAVE_FORMAT_PCM, 16): (tf.int16, 2.0 ** 15),
                 (_WAVE_FORMAT_PCM, 24): (tf.int32, 2.0 ** 31),  # tfio left-justifies 24-bit
                 (_WAVE_FORMAT_IEEE_FLOAT, 32): (tf.float32, 1.0)}
  key = (tag, bits)
  if key in numpy_dtypes:
    # tfio reads 32-bit PCM as float and rejects 64-bit float: our own RIFF reader.
    dtype, scale = numpy_dtypes[key]
    width = np.dtype(dtype).itemsize
    if info.block_align != width * info.channels:
      raise AudioDecodeError(path, f"corrupt WAV header (block align {info.block_align} for "
                             f"{info.channels} x {bits}-bit)")
    raw = np.frombuffer(samples_bytes[:frames * info.block_align], dtype=dtype)
    return (raw.reshape(frames, info.channels) / scale).astype(np.float32), info.rate
  if key not in tfio_dtypes:
    kind = {_WAVE_FORMAT_PCM: "PCM", _WAVE_FORMAT_IEEE_FLOAT: "float"}.get(
        tag, f"format tag {tag}")
    raise AudioDecodeError(path, f"unsupported WAV encoding ({kind}, {bits} bits); use 8/16/"
                           "24/32-bit PCM or 32/64-bit float")
  dtype, scale = tfio_dtypes[key]
  try:
    decoded = _tfio().audio.decode_wav(_canonical_wav(info, samples_bytes), dtype=dtype).numpy()
  except Exception as err:  # tf.errors.*, and UnicodeDecodeError from binary messages
    raise AudioDecodeError(path, f"truncated or corrupt WAV ({_short(err)})") from err
  samples = decoded.astype(np.float32)
  if dtype == tf.uint8:
    samples -= 128.0  # unsigned 8-bit PCM is offset by 128
  return samples / scale, info.rate


def _decode_flac(data: bytes, path: str) -> Tuple[np.ndarray, int]:
  start = data.find(b"fLaC", 0, _id3v2_size(data) + 4)
  if start < 0:
    raise AudioDecodeError(path, "not a FLAC file (no 'fLaC' signature)")
  rate, _, bits, total = _flac_streaminfo(data, start, path)
  if bits <= 8:
    dtype, offset, scale = tf.uint8, 128.0, 128.0  # tfio returns 8-bit FLAC offset by 128
  elif bits <= 16:
    dtype, offset, scale = tf.int16, 0.0, 2.0 ** 15
  else:
    dtype, offset, scale = tf.int32, 0.0, 2.0 ** 31  # left-justified in 32 bits
  try:
    decoded = _tfio().audio.decode_flac(data[start:], dtype=dtype).numpy()
  except Exception as err:
    raise AudioDecodeError(path, f"truncated or corrupt FLAC ({_short(err)})") from err
  if total and decoded.shape[0] < total:
    raise AudioDecodeError(path, f"truncated FLAC: decoded {decoded.shape[0]} of {total} "
                           "samples declared in STREAMINFO")
  return (decoded.astype(np.float32) - offset) / scale, rate


def _decode_ogg(data: bytes, path: str) -> Tuple[np.ndarray, int]:
  rate = _vorbis_rate(data, path)
  try:
    decoded = _tfio().audio.decode_vorbis(data).numpy()
  except Exception as err:
    raise AudioDecodeError(path, f"truncated or corrupt Ogg Vorbis ({_short(err)})") from err
  return decoded.astype(np.float32), rate


def _decode_mp3(data: bytes, path: str, from_signature: bool) -> Tuple[np.ndarray, int]:
  rate = _mp3_rate(data, path, confirmed_only=not from_signature)
  try:
    decoded = _tfio().audio.decode_mp3(data).numpy()
  except Exception as err:
    what = "truncated or corrupt MP3" if from_signature else "not audio or corrupt MP3"
    raise AudioDecodeError(path, f"{what} ({_short(err)})") from err
  return decoded.astype(np.float32), rate


def decode_audio_bytes(data: bytes, name: str = "<bytes>") -> Tuple[np.ndarray, int]:
  """Decode an in-memory file at its native rate.

  Args:
    data: the complete file contents.
    name: path or name used in error messages and as the format fallback (extension).

  Returns:
    ``(samples, rate)``: float32 ``[frames, channels]`` in [-1, 1] and the sample rate.

  Raises:
    AudioDecodeError: empty input, unknown format, truncated/corrupt stream, zero
      samples after decoding or NaN/Inf samples.
  """
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise TypeError(f"{name}: expected bytes, got {type(data).__name__}")
  data = bytes(data)
  if not data:
    raise AudioDecodeError(name, "file is empty (0 bytes)")
  by_content = _format_from_content(data)
  fmt = by_content or detect_format(data, name)
  if fmt is None:
    raise AudioDecodeError(name, "not audio: no WAV/FLAC/Ogg/MP3 signature and no known "
                           "extension")
  if by_content is None and fmt != "mp3":
    # Without a signature only MP3 (raw frames) can still be valid; the rest are not audio.
    raise AudioDecodeError(name, f"not audio: extension says {fmt} but the content has no "
                           f"{fmt.upper()} signature")
  if fmt == "wav":
    samples, rate = _decode_wav(data, name)
  elif fmt == "flac":
    samples, rate = _decode_flac(data, name)
  elif fmt == "ogg":
    samples, rate = _decode_ogg(data, name)
  else:
    samples, rate = _decode_mp3(data, name, from_signature=by_content is not None)
  if samples.ndim != 2 or samples.shape[1] < 1:
    raise AudioDecodeError(name, f"corrupt stream (decoded shape {samples.shape})")
  if samples.shape[0] == 0:
    raise AudioDecodeError(name, "0 samples after decoding (empty or corrupt file)")
  if not np.all(np.isfinite(samples)):
    bad = int(np.size(samples) - np.count_nonzero(np.isfinite(samples)))
    raise AudioDecodeError(name, f"{bad} NaN/Inf samples after decoding (corrupt file)")
  return samples, int(rate)


def read_bytes(path: str) -> bytes:
  """The contents of a local or remote (``gs://`` …) file via ``tf.io.gfile``.

  Args:
    path: any path ``tf.io.gfile`` understands.

  Returns:
    The file's bytes.

  Raises:
    AudioDecodeError: missing file, a directory, or an unreadable file.
  """
  try:
    if not tf.io.gfile.exists(path):
      raise AudioDecodeError(path, "file not found")
    if tf.io.gfile.isdir(path):
      raise AudioDecodeError(path, "is a directory, not an audio file")
    with tf.io.gfile.GFile(path, "rb") as f:
      return f.read()
  except AudioDecodeError:
    raise
  except Exception as err:  # permissions, remote file systems, …
    raise AudioDecodeError(path, f"cannot read file ({_short(err)})") from err


def decode_audio(path: str) -> Tuple[np.ndarray, int]:
  """Read and decode a file at its native rate (``tf.io.gfile`` paths, e.g. ``gs://``).

  Args:
    path: the audio file.

  Returns:
    ``(samples, rate)``: float32 ``[frames, channels]`` and the native sample rate.

  Raises:
    AudioDecodeError: see :func:`decode_audio_bytes` and :func:`read_bytes`.
  """
  return decode_audio_bytes(read_bytes(path), path)


# --------------------------------------------------------------------------------------
# Mono and resampling.
# --------------------------------------------------------------------------------------


def to_mono(samples: np.ndarray, channel_mode: str = "first") -> np.ndarray:
  """``[frames, channels]`` → ``[frames]``.

  Args:
    samples: decoded samples.
    channel_mode: "first" keeps channel 0 (the authors' ``getSpecgram.m``); "mean"
      averages all channels (a documented option).

  Returns:
    float32 ``[frames]``.
  """
  if channel_mode not in CHANNEL_MODES:
    raise ValueError(f"channel_mode must be one of {CHANNEL_MODES}, got {channel_mode!r}")
  samples = np.asarray(samples, np.float32)
  if samples.ndim == 1:
    return samples
  if channel_mode == "first":
    return np.ascontiguousarray(samples[:, 0])
  return samples.mean(axis=1, dtype=np.float64).astype(np.float32)


def _poly_ratio(rate_in: int, rate_out: int) -> Tuple[int, int]:
  rate_in, rate_out = int(rate_in), int(rate_out)
  if rate_in <= 0 or rate_out <= 0:
    raise ValueError(f"sample rates must be > 0, got {rate_in} -> {rate_out}")
  g = math.gcd(rate_in, rate_out)
  return rate_out // g, rate_in // g


def resampled_length(num_samples: int, rate_in: int, rate_out: int) -> int:
  """``ceil(num_samples · rate_out / rate_in)``, the length MATLAB's ``resample`` gives."""
  return -(-int(num_samples) * int(rate_out) // int(rate_in))


def resample(waveform: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
  """Resample a mono waveform with a zero-phase polyphase Kaiser FIR (MATLAB-like).

  Output sample m is the band-limited input at time ``m / rate_out`` (no delay), and
  the output has ``ceil(n · rate_out / rate_in)`` samples like MATLAB's ``resample``.

  Args:
    waveform: float32 ``[samples]``.
    rate_in: its sample rate (Hz).
    rate_out: the wanted rate (Hz).

  Returns:
    float32 ``[ceil(n * rate_out / rate_in)]``; the input itself when the rates agree.
  """
  x = np.asarray(waveform, np.float32)
  if x.ndim != 1:
    raise ValueError(f"resample expects a 1-D waveform, got shape {x.shape}")
  up, down = _poly_ratio(rate_in, rate_out)
  if up == down or x.size == 0:
    return x
  from scipy import signal  # deferred: only decoding at another rate needs it
  return np.ascontiguousarray(signal.resample_poly(x, up, down), dtype=np.float32)


def resample_segment(read, num_samples: int, rate_in: int, rate_out: int,
                     start: int, stop: int) -> np.ndarray:
  """Output samples ``[start, stop)`` of ``resample`` of a long waveform, read in pieces.

  The polyphase filter's phase repeats every ``down = rate_in / gcd`` input samples, so a
  piece that begins at a multiple of ``down`` and carries the filter's half length of
  context on both sides yields exactly the one-shot outputs (zeros outside the signal,
  as the one-shot call pads).

  Args:
    read: ``read(lo, hi) -> float32 [hi - lo]`` input samples, zeros outside
      ``[0, num_samples)``.
    num_samples: input length.
    rate_in: input rate (Hz).
    rate_out: output rate (Hz).
    start: first output sample.
    stop: one past the last output sample (clipped to the resampled length).

  Returns:
    float32 ``[min(stop, resampled_length) - start]``.
  """
  up, down = _poly_ratio(rate_in, rate_out)
  stop = min(int(stop), resampled_length(num_samples, rate_in, rate_out))
  start = int(start)
  if stop <= start:
    return np.zeros(0, np.float32)
  if up == down:
    return np.ascontiguousarray(read(start, stop), dtype=np.float32)
  from scipy import signal
  half_len = 10 * max(up, down)  # resample_poly's default filter half length
  lo = (start * down - half_len) // up - 1
  lo = (lo // down) * down  # a multiple of `down`: the filter phase of the one-shot call
  hi = -(-((stop - 1) * down + half_len) // up) + 1
  piece = np.asarray(read(lo, hi), np.float32)
  offset = lo // down * up  # output index of the piece's first output sample
  y = signal.resample_poly(piece, up, down)
  return np.ascontiguousarray(y[start - offset:stop - offset], dtype=np.float32)


# --------------------------------------------------------------------------------------
# Entry points.
# --------------------------------------------------------------------------------------


def load_audio_from_bytes(data: bytes, name: str = "<bytes>",
                          sample_rate: int = DEFAULT_SAMPLE_RATE,
                          channel_mode: str = "first") -> np.ndarray:
  """In-memory variant of :func:`load_audio` (Beam workers, the tag CLI, uploads).

  Args:
    data: the complete file contents.
    name: path or name used in error messages and as the format fallback.
    sample_rate: output rate (Hz).
    channel_mode: "first" (the authors' code) or "mean".

  Returns:
    float32 mono ``[samples]`` at ``sample_rate``.

  Raises:
    AudioDecodeError: any unusable input (see :func:`decode_audio_bytes`).
  """
  if channel_mode not in CHANNEL_MODES:
    raise ValueError(f"channel_mode must be one of {CHANNEL_MODES}, got {channel_mode!r}")
  samples, rate = decode_audio_bytes(data, name)
  mono = to_mono(samples, channel_mode)
  try:
    return resample(mono, rate, sample_rate)
  except Exception as err:
    raise AudioDecodeError(name, f"cannot resample {rate} Hz -> {sample_rate} Hz "
                           f"({_short(err)})") from err


def load_audio(path: str, sample_rate: int = DEFAULT_SAMPLE_RATE,
               channel_mode: str = "first") -> np.ndarray:
  """Decode any WAV/FLAC/Ogg Vorbis/MP3 file to a mono float32 waveform (SPEC §1).

  Args:
    path: local or ``tf.io.gfile`` path (``gs://`` works).
    sample_rate: output rate (Hz), 22,050 by default.
    channel_mode: "first" keeps the first channel (the authors' code); "mean" averages.

  Returns:
    float32 ``[samples]`` at ``sample_rate``.

  Raises:
    AudioDecodeError: missing file, 0 bytes, not audio, truncated/corrupt, zero samples
      after decoding, NaN/Inf samples. The message starts with the path.
  """
  return load_audio_from_bytes(read_bytes(path), path, sample_rate, channel_mode)
