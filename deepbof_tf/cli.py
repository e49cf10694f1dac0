"""Shared plumbing of the absl console scripts (``deepbof-train``, ``deepbof-tag``, ...)."""

from __future__ import annotations

import atexit
import difflib
import logging
import os
import re
import shutil
import sys
import threading
from typing import Any, Callable, List, Mapping, Optional, Sequence

from absl import app
from absl import flags


def console_script(name: str) -> str:
  """The console script ``name`` next to this interpreter (the venv), else on PATH.

  The demo and the experiment sweeps run the pipeline's own commands in subprocesses;
  this finds them in the same environment as the caller.
  """
  candidate = os.path.join(os.path.dirname(sys.executable), name)
  if os.path.exists(candidate):
    return candidate
  found = shutil.which(name)
  if not found:
    raise FileNotFoundError(f"console script {name!r} not found next to {sys.executable} "
                            "or on PATH; is the package installed (pip install -e .)?")
  return found


HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull", "--helpxml")


def run_console_script(main: Callable[[Sequence[str]], Optional[int]],
                       define_flags: Optional[Callable[[], None]], doc: str,
                       flags_parser: Optional[Callable[[List[str]], List[str]]] = None
                       ) -> None:
  """Defines a tool's flags and runs its absl ``main`` so that ``--help`` shows the tool.

  A console script runs a generated wrapper as ``__main__``, while absl's ``--help``
  prints the docstring and the key flags of ``__main__``: the tool's docstring and the
  flags ``define_flags`` adds are registered there.

  Args:
    main: the absl main function.
    define_flags: defines the tool's flags (at run time, so that importing the module
      defines nothing), or None if the module defines them at import.
    doc: the usage text (the tool module's ``__doc__``).
    flags_parser: optional absl flags parser (e.g. one that forwards unknown flags).
  """
  before = set(flags.FLAGS)
  if define_flags is not None:
    define_flags()
  for name in sorted(set(flags.FLAGS) - before):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  main_module = sys.modules["__main__"]
  if not main_module.__doc__:
    main_module.__doc__ = doc
  try:
    if flags_parser is None:
      app.run(main)
    else:
      app.run(main, flags_parser=flags_parser)
  except SystemExit as stop:
    # absl exits with 1 after printing --help; asking for help is not an error.
    if stop.code == 1 and any(a in HELP_FLAGS for a in sys.argv[1:]):
      raise SystemExit(0) from None
    raise


def beam_flags_parser(doc: str, our_flags: Sequence[str],
                      define_flags: Optional[Callable[[], None]] = None
                      ) -> Callable[[List[str]], List[str]]:
  """The absl flags parser of a Beam job: the tool's flags parsed, the rest for Beam.

  Every flag the tool does not define is a Beam pipeline option, so a near miss of one
  of the tool's own flags (``--num_block``) would be silently ignored; it is refused
  instead. ``--help`` prints the tool's docstring and its flags.

  Args:
    doc: the tool's usage text.
    our_flags: the names of the tool's flags (filled in by ``define_flags``).
    define_flags: defines the tool's flags first (idempotent), or None.
  """

  def parse(argv: List[str]) -> List[str]:
    if define_flags is not None:
      define_flags()
    if any(arg in HELP_FLAGS for arg in argv[1:]):
      print(doc)
      for name in our_flags:
        flag = flags.FLAGS[name]
        print(f"  --{name}: {flag.help}\n    (default: {flag.default!r})")
      print("\nBeam pipeline options: see --helpfull or Beam's documentation.")
      sys.exit(0)
    rest = flags.FLAGS(argv, known_only=True)
    known = [f"--{name}" for name in our_flags] + [f"--no{name}" for name in our_flags]
    for arg in rest[1:]:
      name = arg.split("=", 1)[0]
      close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
      if close and name not in known:
        raise app.UsageError(f"unknown flag {name}; did you mean {close[0]}?")
    return rest

  return parse


def run_beam_job(tool: str, argv: Sequence[str], make_config: Callable[[], Any],
                 run: Callable[..., Mapping[str, Any]],
                 format_counts: Callable[[Mapping[str, Any]], str],
                 on_done: Optional[Callable[[Any, Mapping[str, Any]], None]] = None
                 ) -> int:
  """The absl ``main`` of a Beam job: config from the flags, run, report the counts.

  Args:
    tool: the console script's name (prefixes error lines).
    argv: ``[argv0] + the Beam pipeline options``.
    make_config: the job's config from the parsed flags (ValueError: a usage error).
    run: ``run(config, beam_args=...)`` → the written ``metadata.json``.
    format_counts: the counts of the metadata, for the console.
    on_done: called with (config, metadata) before the counts are printed.

  Returns:
    The exit status: 0, 1 (the job refused to run: the error is printed) or 2 (the
    counts do not reconcile).
  """
  logging.getLogger().setLevel(logging.INFO)
  try:
    config = make_config()
  except ValueError as e:
    raise app.UsageError(str(e))
  try:
    metadata = run(config, beam_args=list(argv[1:]))
  except (FileExistsError, FileNotFoundError, ValueError) as e:
    print(f"{tool}: error: {e}", file=sys.stderr)
    return 1
  if on_done is not None:
    on_done(config, metadata)
  print(format_counts(metadata))
  print(f"wrote {config.output_dir}")
  return 0 if metadata["counters"]["reconciled"] else 2


# --- quiet start-up --------------------------------------------------------------------
# What TensorFlow's C++ runtime, Beam's workers and their type-hint checker print on
# every start, none of which is about the user's data. Dropped from the console tools'
# stderr unless --verbosity >= 1 (absl's flag) or DEEPBOF_VERBOSE=1 asks for it.
_NOISE_LINES = re.compile(
    r"^(?:"
    r"[IWE]\d{4} [\d:.]+\s+\d+ (?:port|cudart_stub|cpu_feature_guard|cuda_platform|"
    r"cuda_executor|cuda_diagnostics|cuda_dnn|cuda_fft|cuda_blas|gpu_device|"
    r"gpu_timer|dso_loader|tensorrt[\w/]*|computation_placer)\.cc:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions:"
    r"|(?:WARNING|INFO):(?:root|__main__|apache_beam[\w.]*):"
    r"|[IW]\d{4} [\d:.]+\s+\d+ (?:local_job_service|native_type_compatibility|"
    r"functional_saver|signature_serialization|fingerprinting_utils|builder_impl|"
    r"__init__|iobase|worker_handlers)\.py:\d+\]"
    r")")
_QUIET_ENV = "DEEPBOF_VERBOSE"


def is_noise(line: str) -> bool:
  """True for a start-up or harness line of TensorFlow or Beam (see ``_NOISE_LINES``)."""
  return bool(_NOISE_LINES.match(line))


def _wants_verbose(argv: Sequence[str]) -> bool:
  if os.environ.get(_QUIET_ENV, "") not in ("", "0"):
    return True
  for arg in argv[1:]:
    if arg.startswith("--verbosity=") or arg.startswith("-v="):
      try:
        return int(arg.split("=", 1)[1]) >= 1
      except ValueError:
        return True
    if arg in ("--verbosity", "-v"):
      return True
  return False


def quiet_startup(argv: Optional[Sequence[str]] = None) -> bool:
  """Filters TensorFlow's and Beam's start-up chatter out of this process's stderr.

  Works at the file-descriptor level (the C++ runtime writes to fd 2 directly, before
  any Python logging exists), so it must run before TensorFlow is imported; child
  processes that inherit fd 2 (Beam's workers) are filtered too. Every other line goes
  through unchanged and in order. Nothing happens when the user asked for verbose
  output (``--verbosity=1`` or more, or ``DEEPBOF_VERBOSE=1``).

  Args:
    argv: the command line (default ``sys.argv``).

  Returns:
    True if the filter was installed.
  """
  argv = sys.argv if argv is None else argv
  if _wants_verbose(argv) or getattr(quiet_startup, "_installed", False):
    return False
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  try:
    real_stderr = os.dup(2)
    read_end, write_end = os.pipe()
  except OSError:
    return False
  sys.stderr.flush()
  os.dup2(write_end, 2)
  os.close(write_end)

  def pump():
    # Reads until every writer has closed fd 2; never stops early, so a writer can
    # never block on a full pipe (even when our own stderr has gone away).
    with os.fdopen(read_end, "rb", buffering=0) as source, \
        os.fdopen(real_stderr, "wb", buffering=0) as sink:
      pending, sink_ok = b"", True

      def emit(data: bytes) -> None:
        nonlocal sink_ok
        if sink_ok and data:
          try:
            sink.write(data)
          except OSError:  # e.g. the reader of our stderr went away: drop, keep draining
            sink_ok = False

      while True:
        chunk = source.read(65536)
        if not chunk:
          break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        kept = [line for line in lines
                if not is_noise(line.decode("utf-8", "replace"))]
        if kept:
          emit(b"\n".join(kept) + b"\n")
        if b"\r" in pending:  # a progress bar redrawing its line: show it now
          cut = pending.rindex(b"\r") + 1
          emit(pending[:cut])
          pending = pending[cut:]
      if pending and not is_noise(pending.decode("utf-8", "replace")):
        emit(pending)

  thread = threading.Thread(target=pump, name="deepbof-stderr-filter", daemon=True)
  thread.start()

  def restore():
    # Hand fd 2 back and let the pump drain what was written before.
    try:
      sys.stderr.flush()
    except (ValueError, OSError):
      pass
    saved = os.dup(real_stderr) if _fd_open(real_stderr) else None
    if saved is not None:
      os.dup2(saved, 2)
      os.close(saved)
    thread.join(timeout=2.0)

  atexit.register(restore)
  quiet_startup._installed = True  # type: ignore[attr-defined]
  return True


def _fd_open(fd: int) -> bool:
  try:
    os.fstat(fd)
    return True
  except OSError:
    return False


def quiet_console_script() -> None:
  """:func:`quiet_startup` when this process is one of the ``deepbof-*`` console tools.

  The tool packages (``beam_jobs``, ``trainer``, ``serving``) call this on import, so
  the filter is in place before TensorFlow loads; imported as libraries (tests, user
  code, ``python -m``) they change nothing.
  """
  if os.path.basename(sys.argv[0] if sys.argv else "").startswith("deepbof-"):
    quiet_startup()
