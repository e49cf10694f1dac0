"""Decoding in a child process, stopped when a file takes too long (``--file_timeout_s``).

A decoder that hangs on one odd file (inside FFmpeg or libsndfile, in C code that no
Python thread can interrupt) would stall its Beam worker forever. With a limit, the
catalogue job (``beam_jobs.tag_catalog_lib.DecodeAudioDoFn``, docs/catalog.md) decodes
in a :class:`DecoderProcess`: one child process per DoFn instance, started once and
reused for every file, that opens a path
(``deepbof_tf.streaming.ResampledNativeWaveform``: the whole decode at the native
rate happens there) and answers the worker's reads of
resampled samples over a pipe. If the answers for one file take longer than the limit
(counted from the open), the child is killed and :class:`DecodeTimeout` is raised;
the next file starts a new child. A child that dies (a decoder crash) fails only its
file (:class:`DecoderError`), and the worker lives on.

The worker sees a :class:`RemoteWaveform` with the reads of a ``ResampledNativeWaveform``
(``num_samples``, ``read``, ``resampled``, ``close``), so the one-shot read and
``deepbof_tf.streaming.resampled_store`` (a long recording's store, filled block by
block) run unchanged in the worker and give the same samples, bit for bit. Errors are
formatted in the child as the worker formats them (:func:`error_message`,
:func:`read_or_decode_stage`), so the error records are the same too.

Cost on the normal path: the child's start (about half a second, once per DoFn
instance, outside any file's limit) and one copy of the samples through the pipe per
read (a 30-s clip is 2.6 MB).

The test-only hook :data:`HANG_PATTERN_ENV` makes the child sleep on matching files, so
that tests can hang a decoder for real without a broken codec.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing import connection as mp_connection
from typing import Any, Optional, Tuple

import numpy as np

# Test-only: a child whose environment sets this to a file-name pattern (fnmatch, on
# the base name) sleeps for an hour before opening a matching file, like a decoder
# hung in C code. Nothing in the project sets it outside tests.
HANG_PATTERN_ENV = "DEEPBOF_TEST_DECODER_HANG"
HANG_SECONDS = 3600.0
# How long a new child may take to import its decoders and say it is ready (not
# counted in any file's limit).
START_TIMEOUT_S = 120.0
PARENT_CHECK_S = 1.0  # how often a child checks that its worker is still alive
# The pipe's socket buffers: a 30-s clip at 22,050 Hz (2.6 MB) crosses in few steps.
SOCKET_BUFFER_BYTES = 4 << 20


_blas_limits = None  # the child's BLAS limiter, kept for its lifetime


class DecodeTimeout(Exception):
  """A file's decode took longer than the limit; its decoder process was stopped."""


class DecoderError(ValueError):
  """A file's error as reported by the decoder process (or the process's death).

  The message is the one the worker would have formatted for the original exception
  (:func:`error_message`).

  Args:
    message: the formatted message.
    stage: "read" or "decode" (:func:`read_or_decode_stage` of the original).
  """

  def __init__(self, message: str, stage: str = "decode"):
    super().__init__(message)
    self.stage = stage


def error_message(error: BaseException) -> str:
  """An exception as an error record says it (before the path is put in front).

  TensorFlow errors are shortened (``deepbof_tf.audio.short_error``), a ``ValueError``
  (``deepbof_tf.audio.AudioDecodeError`` among them) is its message, anything else is
  prefixed with its type.
  """
  message = str(error) or type(error).__name__
  tf = sys.modules.get("tensorflow")  # a TensorFlow error means TensorFlow is loaded
  if tf is not None and isinstance(error, tf.errors.OpError):
    from deepbof_tf import audio
    return audio.short_error(error)
  if not isinstance(error, ValueError):
    return f"{type(error).__name__}: {message}"
  return message


def read_or_decode_stage(error: BaseException, path: str) -> str:
  """"read" for a missing or unreadable file, "decode" for anything about its content."""
  if isinstance(error, DecoderError):
    return error.stage
  text = str(error)
  if text.startswith(f"{path}: file not found") or "cannot read file" in text or (
      "is a directory" in text):
    return "read"
  return "decode"


# --------------------------------------------------------------------------------------
# The worker's side.
# --------------------------------------------------------------------------------------


def _stop(process: Optional[subprocess.Popen], conn) -> None:
  """Kills a child (if still running) and closes its pipe."""
  if conn is not None:
    conn.close()
  if process is not None and process.poll() is None:
    process.kill()
    try:
      process.wait(timeout=30)
    except subprocess.TimeoutExpired:  # a zombie the OS will reap with the worker
      logging.warning("decoder process %d did not exit after SIGKILL", process.pid)


class RemoteWaveform:
  """One file open in a :class:`DecoderProcess`: a ``ResampledNativeWaveform``'s reads.

  Every read waits at most until the file's deadline (its open plus the limit).

  Attributes:
    path: the file.
    sample_rate: the output rate.
    num_samples: its length at ``sample_rate``.
  """

  def __init__(self, decoder: "DecoderProcess", path: str, sample_rate: int,
               num_samples: int, deadline: Optional[float], file_id: int):
    self.path = path
    self.sample_rate = int(sample_rate)
    self.num_samples = int(num_samples)
    self._decoder = decoder
    self._deadline = deadline
    self._file_id = file_id

  def read(self, start: int, stop: int) -> np.ndarray:
    """Samples ``[start, stop)``, zeros outside the waveform (NaN/Inf: DecoderError)."""
    return self._decoder.samples(("read", int(start), int(stop)), self.path,
                                 self._deadline, self._file_id)

  def resampled(self, start: int, stop: int) -> np.ndarray:
    """Samples ``[start, min(stop, num_samples))`` as they are (no NaN/Inf check)."""
    return self._decoder.samples(("resampled", int(start), int(stop)), self.path,
                                 self._deadline, self._file_id)

  def close(self) -> None:
    self._decoder.close_file(self._file_id)


class DecoderProcess:
  """A decoder child process with a time limit per file (not thread-safe: one per DoFn).

  The child starts on the first :meth:`open` and after every stop (a timeout, a
  crash); between files it stays up, so a file costs no process start.

  Args:
    file_timeout_s: the longest a file may take, from its open to its last read
      (seconds; 0: no limit).
    start_timeout_s: the longest a new child may take to be ready.
  """

  def __init__(self, file_timeout_s: float, start_timeout_s: float = START_TIMEOUT_S):
    if file_timeout_s < 0:
      raise ValueError(f"file_timeout_s must be >= 0, got {file_timeout_s}")
    self.file_timeout_s = float(file_timeout_s)
    self.start_timeout_s = float(start_timeout_s)
    self.starts = 0  # children started (1 + restarts)
    self._process: Optional[subprocess.Popen] = None
    self._conn = None
    self._finalizer = None
    self._file_id = 0
    self._open_file: Optional[int] = None

  @property
  def pid(self) -> Optional[int]:
    """The running child's process id, or None."""
    return self._process.pid if self.alive() else None

  def alive(self) -> bool:
    return self._process is not None and self._process.poll() is None

  def _start(self) -> None:
    self.stop()
    parent_socket, child_socket = socket.socketpair()
    for sock in (parent_socket, child_socket):
      for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
          sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        except OSError:  # the system's maximum applies
          pass
    parent = mp_connection.Connection(parent_socket.detach())
    child = mp_connection.Connection(child_socket.detach())
    # Appended, not prepended: an installed beam_jobs (a Dataflow worker's wheel) is
    # found as the worker found it; a source checkout is found even without PYTHONPATH.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (f"import sys; sys.path.append({root!r}); "
            "from beam_jobs import decode_process; decode_process.main()")
    try:
      process = subprocess.Popen(
          [sys.executable, "-c", code, str(child.fileno()), str(os.getpid()),
           str(blas_threads())],
          pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
          stdout=subprocess.DEVNULL)
    finally:
      child.close()
    self._process, self._conn = process, parent
    self._finalizer = weakref.finalize(self, _stop, process, parent)
    self.starts += 1
    if not parent.poll(self.start_timeout_s):
      self.stop()
      raise RuntimeError(f"the decoder process was not ready within "
                         f"{self.start_timeout_s:g} s")
    try:
      parent.recv()  # ("ready",)
    except (EOFError, OSError) as e:
      code = process.wait()
      self.stop()
      raise RuntimeError(f"the decoder process exited at start (code {code})") from e

  def stop(self) -> None:
    """Kills the child, if any (a later :meth:`open` starts a new one)."""
    if self._finalizer is not None:
      self._finalizer()  # _stop(process, conn), once
    self._process = self._conn = self._finalizer = None
    self._open_file = None

  def _timed_out(self, path: str) -> DecodeTimeout:
    self.stop()
    return DecodeTimeout(
        f"{path}: decoding took longer than the limit of {self.file_timeout_s:g} s per "
        "file (--file_timeout_s); its decoder process was stopped (the next file gets "
        "a new one)")

  def _died(self, path: str) -> DecoderError:
    code = None
    if self._process is not None:
      try:
        code = self._process.wait(timeout=10)
      except subprocess.TimeoutExpired:  # its pipe broke, yet it runs: stopped below
        pass
    self.stop()
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"code {code}"
    return DecoderError(f"{path}: the decoder process exited while decoding it ({how})",
                        "decode")

  def _send(self, request: Tuple[Any, ...], path: str) -> None:
    try:
      self._conn.send(request)
    except (OSError, EOFError) as e:
      raise self._died(path) from e

  def _wait(self, path: str, deadline: Optional[float]) -> None:
    """Returns once the child's next message is there; raises on timeout."""
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
      ready = self._conn.poll(timeout)
    except (OSError, EOFError):
      ready = True  # recv reports it
    if not ready:
      raise self._timed_out(path)

  def _reply(self, path: str, deadline: Optional[float]) -> Tuple[Any, ...]:
    self._wait(path, deadline)
    try:
      reply = self._conn.recv()
    except (OSError, EOFError) as e:
      raise self._died(path) from e
    if reply[0] == "error":
      raise DecoderError(reply[2], reply[1])
    return reply

  def open(self, path: str, sample_rate: int, channel_mode: str = "first"
           ) -> RemoteWaveform:
    """Decodes ``path`` in the child (``ResampledNativeWaveform(path, …)``).

    Raises:
      DecodeTimeout: the decode took longer than the limit (the child was stopped).
      DecoderError: the file's error (with its stage), or the child died on it.
      RuntimeError: a new child did not start.
    """
    if not self.alive():
      self._start()
    self._file_id += 1
    deadline = (time.monotonic() + self.file_timeout_s if self.file_timeout_s > 0
                else None)
    self._open_file = self._file_id
    self._send(("open", path, int(sample_rate), channel_mode), path)
    try:
      _, num_samples = self._reply(path, deadline)
    except DecoderError:
      self._open_file = None
      raise
    return RemoteWaveform(self, path, sample_rate, num_samples, deadline, self._file_id)

  def samples(self, request: Tuple[Any, ...], path: str, deadline: Optional[float],
              file_id: int) -> np.ndarray:
    """The child's answer to a ``("read" | "resampled", start, stop)`` request on the
    open file ``file_id``."""
    if file_id != self._open_file or not self.alive():
      raise DecoderError(f"{path}: not open in the decoder process", "decode")
    self._send(request, path)
    _, count = self._reply(path, deadline)
    out = np.empty(int(count), np.float32)
    view = memoryview(out).cast("B")  # the raw bytes go straight into ``out``
    received = 0
    while received < len(view):
      self._wait(path, deadline)
      try:
        n = os.readv(self._conn.fileno(), [view[received:]])
      except OSError as e:
        raise self._died(path) from e
      if n == 0:
        raise self._died(path)
      received += n
    return out

  def close_file(self, file_id: int) -> None:
    """Lets the child free a file's decoded samples (no answer is awaited)."""
    if file_id != self._open_file or not self.alive():
      return
    self._open_file = None
    try:
      self._conn.send(("close",))
    except (OSError, EOFError):
      pass  # the next open finds the child gone and starts a new one


# --------------------------------------------------------------------------------------
# The child's side.
# --------------------------------------------------------------------------------------


def _exit_with_parent(parent_pid: int) -> None:
  """Ends the child when its worker is gone (even while a decode hangs)."""
  while True:
    time.sleep(PARENT_CHECK_S)
    if os.getppid() != parent_pid:
      os._exit(1)  # pylint: disable=protected-access


def _hang_if_asked(path: str) -> None:
  pattern = os.environ.get(HANG_PATTERN_ENV)
  if pattern and fnmatch.fnmatch(os.path.basename(path), pattern):
    time.sleep(HANG_SECONDS)


def serve(conn: mp_connection.Connection) -> None:
  """Answers a worker's requests until its pipe closes.

  Requests: ``("open", path, sample_rate, channel_mode)`` → ``("opened", num_samples)``;
  ``("read" | "resampled", start, stop)`` → ``("samples", count)`` then the
  ``4 × count`` raw bytes of the float32 samples; ``("close",)`` → nothing. A failure
  answers ``("error", stage, message)``.
  """
  from deepbof_tf import streaming
  source = None

  def close():
    nonlocal source
    if source is not None:
      try:
        source.close()
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("%s: close failed: %s", source.path, e)
      source = None

  while True:
    try:
      request = conn.recv()
    except (EOFError, OSError):
      break
    kind = request[0]
    if kind == "open":
      close()
      _, path, sample_rate, channel_mode = request
      _hang_if_asked(path)
      try:
        source = streaming.ResampledNativeWaveform(path, sample_rate, channel_mode)
      except Exception as e:  # pylint: disable=broad-except
        conn.send(("error", read_or_decode_stage(e, path), error_message(e)))
      else:
        conn.send(("opened", int(source.num_samples)))
    elif kind in ("read", "resampled"):
      _, start, stop = request
      try:
        if source is None:
          raise ValueError("no file is open")
        samples = np.ascontiguousarray(
            source.read(start, stop) if kind == "read" else source.resampled(start, stop),
            np.float32)
      except Exception as e:  # pylint: disable=broad-except
        conn.send(("error", "decode", error_message(e)))
      else:
        conn.send(("samples", int(samples.shape[0])))
        view, sent = memoryview(samples).cast("B"), 0
        while sent < len(view):  # raw, right after the message that announces them
          sent += os.write(conn.fileno(), view[sent:])
    elif kind == "close":
      close()
  close()


def blas_threads() -> int:
  """This process's BLAS thread count (0: no BLAS loaded, or unknown)."""
  from threadpoolctl import threadpool_info  # pylint: disable=import-outside-toplevel
  counts = [pool["num_threads"] for pool in threadpool_info()
            if pool.get("user_api") == "blas"]
  return min(counts) if counts else 0


def main(argv: Optional[list] = None) -> None:
  """The child's entry point: ``argv`` = [program, pipe descriptor, parent pid, BLAS
  threads].

  The child computes with its worker's BLAS thread count (``beam_jobs.worker_threads``
  caps a worker at one): the resampler's matrix products then round as they would in
  the worker, bit for bit, and two workers' children do not spin on each other's cores.
  """
  argv = sys.argv if argv is None else argv
  conn = mp_connection.Connection(int(argv[1]))
  threading.Thread(target=_exit_with_parent, args=(int(argv[2]),), daemon=True).start()
  threads = int(argv[3]) if len(argv) > 3 else 0
  if threads > 0:
    from threadpoolctl import threadpool_limits  # pylint: disable=import-outside-toplevel
    import numpy  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
    global _blas_limits
    _blas_limits = threadpool_limits(limits=threads, user_api="blas")
  # The decoders are imported before "ready", so no file's limit pays for them.
  from deepbof_tf import audio, streaming  # noqa: F401  pylint: disable=unused-import
  for name in ("soundfile", "av"):
    try:
      __import__(name)
    except ImportError:
      pass
  conn.send(("ready",))
  serve(conn)
