"""The two decoders behind ``deepbof_tf.audio``: libsndfile and FFmpeg (through PyAV).

``deepbof_tf.audio`` picks one per file from its content (docs/audio.md has the table):

* **libsndfile** (the ``soundfile`` package) for WAV, AIFF, FLAC, Ogg Vorbis/Opus/FLAC
  and MP3 with a Xing/Info/VBRI header: the fastest here, and its MP3 decoder is
  mpg123, the decoder the authors' MATLAB ``mp3read`` called;
* **FFmpeg** (PyAV, whose wheels bundle it) for everything else: AAC/M4A/MP4, ALAC,
  WebM/Matroska (Opus, Vorbis), WMA, AC-3, ADTS AAC, CAF, other Ogg codecs, and MP3
  *without* a VBR header (libsndfile takes such a file's length from an estimate based
  on its size and stops decoding there: measured, a 20-s VBR file gave 6.6 s).

Both give float32 blocks ``[frames, channels]`` at the file's own rate, integer PCM
scaled by 2^(bits−1) as libsndfile scales it (so the two agree to the bit on PCM, and to
float rounding on the lossy codecs both read; ``tests/test_decoders.py``).

Every message a decoder writes is attributed to its file: FFmpeg's log is captured per
call (PyAV's log capture), and mpg123, which libsndfile lets print to the process's
standard error, is captured there while an MP3 is decoded. Warnings are returned with
the stream (:attr:`Stream.messages`) and logged with the path; an FFmpeg message at
error level means the decoder reported an error, and the file is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from typing import IO, Iterator, List, Optional

import numpy as np

LIBSNDFILE = "libsndfile"
FFMPEG = "ffmpeg"
DECODERS = (LIBSNDFILE, FFMPEG)

# Frames per decoded block (libsndfile); FFmpeg yields its own frames, gathered to
# about this many.
BLOCK_FRAMES = 1 << 17

_LOG = logging.getLogger(__name__)


class DecoderError(Exception):
  """The decoder refused or failed on the stream; ``message`` is its own words."""

  def __init__(self, decoder: str, message: str, opening: bool = False):
    super().__init__(f"{decoder}: {message}")
    self.decoder = decoder
    self.message = message
    self.opening = opening


class Stream:
  """An opened audio stream of one file.

  Attributes:
    decoder: ``"libsndfile"`` or ``"ffmpeg"``.
    rate: sample rate (Hz).
    channels: channel count.
    codec: the codec's name as the decoder gives it (e.g. ``"aac"``, ``"MPEG_LAYER_III"``).
    messages: the decoder's warnings, in order (without the path).
  """

  decoder = ""

  def __init__(self, path: str):
    self.path = path
    self.rate = 0
    self.channels = 0
    self.codec = ""
    self.messages: List[str] = []

  def blocks(self) -> Iterator[np.ndarray]:
    """float32 ``[frames, channels]`` blocks from the start to the end of the stream.

    Raises:
      DecoderError: the decoder reported an error.
    """
    raise NotImplementedError

  def close(self) -> None:
    pass

  def _note(self, message: str, level: int = logging.WARNING) -> None:
    message = message.strip()
    if message and message not in self.messages:
      self.messages.append(message)
      _LOG.log(level, "%s: %s: %s", self.path, self.decoder, message)


# --------------------------------------------------------------------------------------
# libsndfile.
# --------------------------------------------------------------------------------------

_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _captured_stderr(sink: List[str], active: bool):
  """Collects what C code writes to file descriptor 2 (mpg123's notes) into ``sink``.

  One thread at a time (the descriptor is the process's); a no-op when not ``active``.
  """
  if not active:
    yield
    return
  with _STDERR_LOCK, tempfile.TemporaryFile() as spool:
    try:
      saved = os.dup(2)
    except OSError:  # no standard error at all: nothing to capture
      yield
      return
    try:
      os.dup2(spool.fileno(), 2)
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      spool.seek(0)
      sink.extend(line for line in spool.read().decode("utf-8", "replace").splitlines()
                  if line.strip())


class LibsndfileStream(Stream):
  """A stream decoded by libsndfile (``soundfile.SoundFile`` on a file object).

  Args:
    fileobj: the file, seekable, positioned anywhere.
    path: for messages.
    capture_stderr: capture what the decoder prints (mpg123) while it runs.
  """

  decoder = LIBSNDFILE

  def __init__(self, fileobj: IO[bytes], path: str, capture_stderr: bool = False):
    super().__init__(path)
    import soundfile
    self._capture = capture_stderr
    fileobj.seek(0)
    printed: List[str] = []
    try:
      with _captured_stderr(printed, capture_stderr):
        self._file = soundfile.SoundFile(fileobj)
    except Exception as err:  # LibsndfileError, and RuntimeError from the callbacks
      raise DecoderError(LIBSNDFILE, _libsndfile_message(err), opening=True) from err
    finally:
      for line in printed:
        self._note(line)
    self.rate = int(self._file.samplerate)
    self.channels = int(self._file.channels)
    self.codec = str(self._file.subtype)

  def blocks(self) -> Iterator[np.ndarray]:
    while True:
      printed: List[str] = []
      try:
        with _captured_stderr(printed, self._capture):
          block = self._file.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
      except Exception as err:
        raise DecoderError(LIBSNDFILE, _libsndfile_message(err)) from err
      finally:
        for line in printed:
          self._note(line)
      if block.shape[0] == 0:
        return
      yield block

  def close(self) -> None:
    self._file.close()


def _libsndfile_message(err: BaseException) -> str:
  return str(getattr(err, "error_string", "") or err).strip() or type(err).__name__


# --------------------------------------------------------------------------------------
# FFmpeg (PyAV).
# --------------------------------------------------------------------------------------

# Integer sample formats and their full scale (libsndfile's float conversion).
_INT_SCALE = {"s16": 2.0 ** 15, "s32": 2.0 ** 31, "s64": 2.0 ** 63}


def _frame_samples(frame) -> np.ndarray:
  """A PyAV ``AudioFrame`` as float32 ``[samples, channels]``."""
  array = frame.to_ndarray()
  channels = len(frame.layout.channels)
  if frame.format.is_planar:
    array = array.T
  else:
    array = array.reshape(-1, channels)
  name = frame.format.name.rstrip("p")
  if name == "u8":
    return ((array.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
  if name in _INT_SCALE:
    return (array.astype(np.float64) / _INT_SCALE[name]).astype(np.float32)
  return np.ascontiguousarray(array, dtype=np.float32)


def _ffmpeg_level() -> None:
  import av.logging
  if av.logging.get_level() is None:  # PyAV's default drops every message
    av.logging.set_level(av.logging.WARNING)
  # PyAV holds back a repeated message and emits it when the next different one comes,
  # which may be during another file's decoding: each message goes to its own file.
  av.logging.set_skip_repeated(False)


class FFmpegStream(Stream):
  """A stream decoded by FFmpeg through PyAV (the first audio stream of the container).

  Args:
    fileobj: the file, seekable.
    path: for messages.
  """

  decoder = FFMPEG

  def __init__(self, fileobj: IO[bytes], path: str):
    super().__init__(path)
    import av
    _ffmpeg_level()
    fileobj.seek(0)
    with self._captured():
      try:
        self._container = av.open(fileobj, mode="r", metadata_errors="ignore")
      except Exception as err:
        raise DecoderError(FFMPEG, self._error_text(err), opening=True) from err
    streams = self._container.streams.audio
    kind = getattr(self._container.format, "name", None) or "media"
    if not streams or streams[0].codec_context is None:
      self._container.close()
      raise DecoderError(FFMPEG, (f"no decoder for the audio codec of the {kind} container"
                                  if streams else f"no audio stream in the {kind} container"),
                         opening=True)
    self._stream = streams[0]
    context = self._stream.codec_context
    self.codec = context.name
    # HE-AAC reports the core rate before decoding; the first frame says the truth.
    self._first = None
    with self._captured():
      try:
        self._frames = self._decoded()
        self._first = next(self._frames, None)
      except DecoderError:
        self._container.close()
        raise
    if self._first is None:
      self.rate, self.channels = int(context.sample_rate or 0), int(context.channels or 0)
    else:
      self.rate = int(self._first.sample_rate)
      self.channels = len(self._first.layout.channels)

  @contextlib.contextmanager
  def _captured(self):
    """FFmpeg's messages while the block runs: warnings noted, errors raised."""
    import av.logging
    with av.logging.Capture() as logs:
      try:
        yield
      except BaseException:
        self._sort(logs)  # the exception in flight says what went wrong
        raise
    errors = self._sort(logs)
    if errors:
      raise DecoderError(FFMPEG, errors[-1])

  def _sort(self, logs) -> List[str]:
    import av.logging
    errors = []
    for level, _, message in logs:
      message = message.strip()
      if level <= av.logging.ERROR:
        errors.append(message)
        self._note(message)
      elif level <= av.logging.WARNING:  # e.g. "Estimating duration from bitrate"
        self._note(message, logging.INFO)
    return errors

  def _error_text(self, err: BaseException) -> str:
    text = str(err)
    if "last error log:" in text:
      text = text.rsplit("last error log:", 1)[1].split("]", 1)[-1]
    elif ":" in text:
      text = text.split("]", 1)[-1].split(":", 1)[0]
    return text.strip() or type(err).__name__

  def _decoded(self):
    try:
      for packet in self._container.demux(self._stream):
        for frame in packet.decode():
          yield frame
    except Exception as err:  # av.error.FFmpegError and subclasses
      raise DecoderError(FFMPEG, self._error_text(err)) from err

  def blocks(self) -> Iterator[np.ndarray]:
    import av
    resampler = None
    pending: List[np.ndarray] = []
    size = 0
    frames = self._frames
    first, self._first = self._first, None
    while True:
      with self._captured():
        frame = first if first is not None else next(frames, None)
        first = None
        if frame is not None and (frame.sample_rate != self.rate
                                  or len(frame.layout.channels) != self.channels):
          # A stream whose rate or layout changes midway: converted to the first ones.
          if resampler is None:
            self._note(f"the stream changes to {frame.sample_rate} Hz, "
                       f"{len(frame.layout.channels)} channels; converted to "
                       f"{self.rate} Hz, {self.channels} channels")
            resampler = av.AudioResampler(format="flt", layout=self.channels,
                                          rate=self.rate)
          converted = [_frame_samples(f) for f in resampler.resample(frame)]
        elif frame is not None:
          converted = [_frame_samples(frame)]
      if frame is None:
        break
      for samples in converted:
        pending.append(samples)
        size += samples.shape[0]
      if size >= BLOCK_FRAMES:
        yield np.concatenate(pending)
        pending, size = [], 0
    if pending:
      yield np.concatenate(pending)

  def close(self) -> None:
    self._container.close()


def open_stream(fileobj: IO[bytes], path: str, decoder: str,
                capture_stderr: bool = False) -> Stream:
  """Opens ``fileobj`` with ``decoder`` (one of :data:`DECODERS`).

  Args:
    fileobj: the file, seekable (a local file, ``io.BytesIO`` or a ``tf.io.gfile`` file).
    path: the file's path, for messages.
    decoder: ``"libsndfile"`` or ``"ffmpeg"``.
    capture_stderr: (libsndfile) capture what the decoder prints (mpg123).

  Raises:
    DecoderError: the decoder cannot open the stream (``opening`` is True).
  """
  if decoder == LIBSNDFILE:
    return LibsndfileStream(fileobj, path, capture_stderr)
  if decoder == FFMPEG:
    return FFmpegStream(fileobj, path)
  raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
