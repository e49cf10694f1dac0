"""Test files of every format a catalogue holds, and of the awkward kinds real files are.

Encoders: libsndfile (``soundfile``) for WAV/AIFF/FLAC/Ogg/MP3 and FFmpeg through PyAV
(the wheels bundle its encoders) for AAC/M4A, ALAC, WebM/Opus, WMA, AC-3 and ADTS AAC.
The byte-level helpers build what encoders do not: ID3v2 tags with cover art, APE tags,
an Ogg page with a changed granule position (CRC recomputed), cut files.
"""

from __future__ import annotations

import io
import struct
from typing import Optional

import av
import numpy as np
import soundfile as sf

# container (PyAV format name), codec, sample format the encoder takes, bit rate
FFMPEG_FORMATS = {
    "m4a": ("ipod", "aac", 128000),
    "alac.m4a": ("ipod", "alac", None),
    "webm": ("webm", "libopus", 96000),
    "wma": ("asf", "wmav2", 128000),
    "ac3": ("ac3", "ac3", 192000),
    "aac": ("adts", "aac", 128000),
}


def encode_ffmpeg(samples: np.ndarray, rate: int, kind: str) -> bytes:
  """``samples`` (float32 ``[n]`` or ``[n, channels]``) encoded by FFmpeg as ``kind``."""
  container, codec, bit_rate = FFMPEG_FORMATS[kind]
  x = np.asarray(samples, np.float32)
  if x.ndim == 1:
    x = x[:, None]
  layout = {1: "mono", 2: "stereo", 6: "5.1"}[x.shape[1]]
  out = io.BytesIO()
  with av.open(out, "w", format=container) as c:
    stream = c.add_stream(codec, rate=rate)
    stream.layout = layout
    if bit_rate:
      stream.bit_rate = bit_rate
    sample_format = stream.codec_context.codec.audio_formats[0].name
    stream.format = sample_format
    resampler = av.AudioResampler(format=sample_format, layout=layout, rate=rate)
    for i in range(0, x.shape[0], 4096):
      frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[i:i + 4096].T),
                                         format="fltp", layout=layout)
      frame.sample_rate = rate
      frame.pts = i
      for converted in resampler.resample(frame):
        for packet in stream.encode(converted):
          c.mux(packet)
    for converted in resampler.resample(None):
      for packet in stream.encode(converted):
        c.mux(packet)
    for packet in stream.encode(None):
      c.mux(packet)
  return out.getvalue()


def encode_sndfile(samples: np.ndarray, rate: int, fmt: str,
                   subtype: Optional[str] = None, **kwargs) -> bytes:
  """``samples`` written by libsndfile (``fmt``: WAV, AIFF, FLAC, OGG, MP3)."""
  out = io.BytesIO()
  sf.write(out, samples, rate, format=fmt, subtype=subtype, **kwargs)
  return out.getvalue()


def _syncsafe(n: int) -> bytes:
  return bytes([(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F])


def id3v2_with_cover(image_bytes: int = 60000, seed: int = 0) -> bytes:
  """An ID3v2.3 tag with a title and a (random-bodied) JPEG cover of ``image_bytes``."""
  rng = np.random.default_rng(seed)
  image = b"\xff\xd8\xff\xe0" + rng.bytes(image_bytes)
  title = b"\x00" + "A title".encode("latin-1")
  apic = b"\x00image/jpeg\x00\x03cover\x00" + image
  frames = b""
  for frame_id, body in ((b"TIT2", title), (b"APIC", apic)):
    frames += frame_id + struct.pack(">I", len(body)) + b"\x00\x00" + body
  return b"ID3\x03\x00\x00" + _syncsafe(len(frames)) + frames


def ape_tag() -> bytes:
  """An APEv2 tag (items, then the 32-byte footer) as taggers append it."""
  items = b""
  for key, value in ((b"Artist", b"Somebody"), (b"Album", b"Something")):
    items += struct.pack("<II", len(value), 0) + key + b"\x00" + value
  size = len(items) + 32
  footer = b"APETAGEX" + struct.pack("<IIII", 2000, size, 2, 0) + b"\x00" * 8
  return items + footer


def id3v1_tag() -> bytes:
  return b"TAG" + b"A title".ljust(30, b"\x00") + b"\x00" * 95


def without_vbr_header(mp3: bytes) -> bytes:
  """An MP3 with its first (Xing/Info) frame dropped: no VBR header any more."""
  from deepbof_tf import audio
  header = audio._mp3_header(mp3, 0)  # pylint: disable=protected-access
  assert header is not None and any(t in mp3[:header[2]] for t in (b"Xing", b"Info"))
  return mp3[header[2]:]


_OGG_CRC = []


def _ogg_crc(data: bytes) -> int:
  if not _OGG_CRC:
    for i in range(256):
      r = i << 24
      for _ in range(8):
        r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
      _OGG_CRC.append(r & 0xFFFFFFFF)
  crc = 0
  for byte in data:
    crc = ((crc << 8) ^ _OGG_CRC[((crc >> 24) ^ byte) & 0xFF]) & 0xFFFFFFFF
  return crc


def ogg_pages(data: bytes):
  """``(offset, length)`` of every page."""
  i, pages = 0, []
  while i + 27 <= len(data) and data[i:i + 4] == b"OggS":
    segments = data[i + 26]
    length = 27 + segments + sum(data[i + 27:i + 27 + segments])
    pages.append((i, length))
    i += length
  return pages


def ogg_with_last_granule(data: bytes, extra: int) -> bytes:
  """The Ogg file with its last page's granule position moved by ``extra`` samples."""
  offset, length = ogg_pages(data)[-1]
  page = bytearray(data[offset:offset + length])
  (granule,) = struct.unpack("<q", page[6:14])
  page[6:14] = struct.pack("<q", granule + extra)
  page[22:26] = b"\x00\x00\x00\x00"
  page[22:26] = struct.pack("<I", _ogg_crc(bytes(page)))
  return data[:offset] + bytes(page) + data[offset + length:]


def ogg_cut_mid_page(data: bytes) -> bytes:
  """The Ogg file cut in the middle of its third-to-last page."""
  offset, length = ogg_pages(data)[-3]
  return data[:offset + length // 2]


def mp3_cut_mid_frame(data: bytes) -> bytes:
  """The MP3 cut in the middle of a frame, about two thirds of the way."""
  from deepbof_tf import audio
  i = audio._id3v2_size(data)  # pylint: disable=protected-access
  target = len(data) * 2 // 3
  while True:
    header = audio._mp3_header(data, i)  # pylint: disable=protected-access
    assert header is not None and header[2] > 0
    if i + header[2] > target:
      return data[:i + header[2] // 2]
    i += header[2]
