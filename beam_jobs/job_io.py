"""The run protocol of the Beam jobs: ``deepbof-preprocess`` and ``deepbof-tag-catalog``.

Both jobs run the same way (docs/data.md, docs/catalog.md); this module is that way,
step by step, and each job's library module adds its own pipeline and metadata:

1. Beam is imported once, here, with the import-time warning about crcmod dropped
   (:data:`beam`; the TFRecord sink uses google-crc32c instead).
2. Paths are local or URLs (``gs://…``); :func:`file_system` gives ``tf.io.gfile`` for
   URLs and the OS for local paths, so a local launcher never imports TensorFlow for
   them.
3. An existing non-empty output directory is refused unless ``overwrite``
   (:func:`check_output_dir`). Everything is written into a work directory
   ``<output>.incomplete-<id>`` (:func:`work_dir_of`), which records its owner so that
   the next run removes the work directories of killed runs
   (:func:`remove_stale_work_dirs`).
4. The runner: Beam's FnApiRunner for local runs (:func:`make_runner`), where the
   workers count finished inputs in small files that a reporter thread adds up and
   prints (:class:`ProgressCounter`, :class:`ProgressReporter`).
5. After the pipeline: the Beam counters (:func:`query_counters`), the pipeline's
   ``_summary.json`` (:func:`pop_summary`) and the error records ``errors/*.jsonl``
   (:func:`read_error_records`), from which the job reconciles its counts and builds
   ``metadata.json``.
6. ``metadata.json`` is written last (it marks a complete output) and the work
   directory is published by rename (:func:`finish_and_publish`, :func:`publish`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import posixpath
import shutil
import socket
import time
import uuid
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from deepbof_tf.data import schema
from deepbof_tf.io_utils import write_atomic


# --------------------------------------------------------------------------------------
# Importing Beam.
# --------------------------------------------------------------------------------------


class DropCrcmodWarning(logging.Filter):
  """Beam's TFRecord module warns at import that crcmod is missing; its sink uses
  google-crc32c (a dependency) instead."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "crcmod package not found" not in record.getMessage()


def import_beam_quietly():
  """Imports ``apache_beam`` with :class:`DropCrcmodWarning` on the root logger.

  The filter is on only while Beam's modules load; the first import decides, so a job
  module imports Beam through this module (``from beam_jobs.job_io import beam``).

  Returns:
    The ``apache_beam`` module.
  """
  crcmod_filter = DropCrcmodWarning()
  logging.getLogger().addFilter(crcmod_filter)
  try:
    import apache_beam  # pylint: disable=import-outside-toplevel
  finally:
    logging.getLogger().removeFilter(crcmod_filter)
  return apache_beam


beam = import_beam_quietly()

from apache_beam.metrics import Metrics  # noqa: E402  (after Beam's quiet import)
from apache_beam.metrics.metric import MetricsFilter  # noqa: E402

METRICS_NAMESPACE = "deepbof"
# The jobs' tagged output of error records, their files' suffix and the summary file.
ERROR_TAG = "errors"
ERRORS_SUFFIX = ".jsonl"
SUMMARY_FILE = "_summary.json"
PROGRESS_DIR = "_progress"
# Work directories: <output>.incomplete-<id>, with the owner's record.
OWNER_FILE = ".owner.json"
INCOMPLETE = ".incomplete-"
UNOWNED_MAX_AGE_SECONDS = 24 * 3600
# The --runner values that run on this machine (None: no --runner given).
LOCAL_RUNNER_NAMES = (None, "DirectRunner", "direct", "FnApiRunner")


# --------------------------------------------------------------------------------------
# Paths and file systems (tf.io.gfile: local paths and gs:// alike).
# --------------------------------------------------------------------------------------


def is_url(path: str) -> bool:
  """True for a URL (``gs://…``), False for a local path.

  Args:
    path: a file or directory name.
  """
  return "://" in path


def join(base: str, *parts: str) -> str:
  """``base/part/…``: ``posixpath`` for URLs, ``os.path`` for local paths.

  Args:
    base: a directory (local or URL).
    *parts: the names to append.
  """
  return posixpath.join(base, *parts) if is_url(base) else os.path.join(base, *parts)


def resolve_audio_path(audio_root: str, path: str) -> str:
  """The file to read for a manifest ``path``: absolute paths and URLs are kept.

  Args:
    audio_root: the prefix of relative manifest paths ("" keeps them as they are).
    path: a manifest's path.
  """
  if is_url(path) or os.path.isabs(path) or not audio_root:
    return path
  return join(audio_root, path)


def gfile():
  """``tf.io.gfile`` (imports TensorFlow on first use)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  (heavy)
  return tf.io.gfile


class LocalFileSystem:
  """The subset of ``tf.io.gfile`` the launchers use, for local paths.

  The launcher of a local run then never imports TensorFlow (seconds of start-up
  before the workers can start); URLs (gs://…) go through ``tf.io.gfile``.
  """

  exists = staticmethod(os.path.exists)
  isdir = staticmethod(os.path.isdir)
  listdir = staticmethod(os.listdir)
  remove = staticmethod(os.remove)
  rmtree = staticmethod(shutil.rmtree)
  GFile = staticmethod(open)

  @staticmethod
  def makedirs(path: str) -> None:
    os.makedirs(path, exist_ok=True)

  @staticmethod
  def glob(pattern: str) -> List[str]:
    return glob.glob(pattern)


def file_system(path: str):
  """:class:`LocalFileSystem` for a local ``path``, ``tf.io.gfile`` for a URL.

  Args:
    path: the file or directory to be reached.
  """
  return gfile() if is_url(path) else LocalFileSystem


# --------------------------------------------------------------------------------------
# Counters.
# --------------------------------------------------------------------------------------


def counter(name: str):
  """The Beam counter ``name`` of the jobs' namespace (:data:`METRICS_NAMESPACE`).

  Args:
    name: the counter's name (``clips_read``, ``files_tagged``, …).
  """
  return Metrics.counter(METRICS_NAMESPACE, name)


def query_counters(result) -> Optional[Dict[str, int]]:
  """Committed (else attempted) Beam counters summed over steps; None if unsupported.

  Args:
    result: the finished pipeline's ``PipelineResult``.
  """
  try:
    counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
  except Exception:  # pylint: disable=broad-except
    return None
  out: Dict[str, int] = {}
  for found in counters.get("counters", []):
    value = found.committed if found.committed is not None else found.attempted
    out[found.key.metric.name] = out.get(found.key.metric.name, 0) + int(value or 0)
  return out or None


def reported_counts(from_outputs: Mapping[str, int],
                    counters: Optional[Mapping[str, int]]) -> Tuple[Dict[str, int], str]:
  """The counts a run reports: the Beam counters where the runner has them.

  Args:
    from_outputs: the counts computed from the written outputs, by name.
    counters: the Beam counters (:func:`query_counters`), or None.

  Returns:
    ``(counts, source)``: the counters of the names of ``from_outputs`` (else the
    outputs' own counts) and where they came from.
  """
  if counters:
    return ({name: int(counters.get(name, 0)) for name in from_outputs},
            "beam_metrics")
  return dict(from_outputs), "outputs (the runner reported no Beam counters)"


# --------------------------------------------------------------------------------------
# Runner choice.
# --------------------------------------------------------------------------------------


def is_local_runner(options) -> bool:
  """True when the pipeline options ask for a runner on this machine (or for none).

  Args:
    options: the pipeline options.
  """
  from apache_beam.options.pipeline_options import StandardOptions
  return options.view_as(StandardOptions).runner in LOCAL_RUNNER_NAMES


def fn_api_runner(options):
  """Beam's FnApiRunner, provisioned with ``options`` as DirectRunner provisions it.

  Args:
    options: the pipeline options (``--direct_num_workers``,
      ``--direct_running_mode`` …).
  """
  from apache_beam.portability.api import beam_provision_api_pb2
  from apache_beam.runners.portability.fn_api_runner import fn_runner
  from apache_beam.runners.portability.portable_runner import JobServiceHandle
  encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
  return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
      beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def make_runner(options):
  """Beam's FnApiRunner for local runs; None lets Beam pick the requested runner.

  Beam 2.72's DirectRunner first tries the Prism runner, which downloads a binary from
  GitHub at run time (we never use the network at run time) and otherwise falls back
  to the FnApiRunner. Local runs therefore use the FnApiRunner directly, with the
  same provisioning DirectRunner gives it, so ``--direct_num_workers`` and
  ``--direct_running_mode`` work as usual.

  Args:
    options: the pipeline options.
  """
  return fn_api_runner(options) if is_local_runner(options) else None


def sized_local_args(beam_args: Sequence[str], num_inputs: int,
                     min_inputs_per_worker: int) -> Tuple[List[str], Optional[str]]:
  """``beam_args`` with no more local workers than ``num_inputs`` can keep busy.

  A local run (the FnApiRunner) gets at most one worker per ``min_inputs_per_worker``
  inputs; cut down to one, it runs in this process (``--direct_running_mode=in_memory``),
  so a small run starts no worker process at all. Other runners,
  ``min_inputs_per_worker`` 0 and a run that asks for no more workers than that (one
  worker process included) are left as they are.

  Args:
    beam_args: the pipeline's command-line options.
    num_inputs: the inputs of this run.
    min_inputs_per_worker: the inputs that pay for one worker's start-up.

  Returns:
    ``(args, note)``: the options to run with (the given ones, with the worker options
    appended, last wins) and a sentence saying what changed, or None.
  """
  from apache_beam.options.pipeline_options import DirectOptions
  from apache_beam.options.pipeline_options import PipelineOptions
  args = list(beam_args)
  options = PipelineOptions(args)
  if min_inputs_per_worker <= 0 or not is_local_runner(options):
    return args, None
  direct = options.view_as(DirectOptions)
  requested = direct.direct_num_workers or os.cpu_count() or 1
  workers = max(1, min(requested, num_inputs // min_inputs_per_worker))
  if workers >= requested:
    return args, None
  if workers == 1:
    args += ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
    where = "in this process"
  else:
    args += [f"--direct_num_workers={workers}"]
    where = f"with {workers} of the {requested} workers asked for"
  return args, (f"{num_inputs} file(s) to tag: tagged {where} (at least "
                f"{min_inputs_per_worker} files per worker)")


def run_and_wait(pipeline):
  """Runs ``pipeline`` and waits until it has finished; returns its result.

  Args:
    pipeline: the built ``beam.Pipeline``.
  """
  result = pipeline.run()
  result.wait_until_finish()
  return result


# --------------------------------------------------------------------------------------
# Progress of local runs.
# --------------------------------------------------------------------------------------


class ProgressCounter:
  """A worker's count of finished inputs in a small file of the progress directory.

  Each DoFn instance owns one file and rewrites its count after every input; the
  launching process adds the files up (:class:`ProgressReporter`). Local runs only: the
  directory is on this machine's disk.

  Args:
    directory: the run's progress directory (:func:`progress_dir_of`).
  """

  def __init__(self, directory: str):
    os.makedirs(directory, exist_ok=True)
    self._path = os.path.join(directory, f"{os.getpid()}-{uuid.uuid4().hex[:8]}.count")
    self._done = 0

  def tick(self) -> None:
    """Counts one more finished input."""
    self._done += 1
    write_atomic(self._path, str(self._done))


def count_progress(directory: str) -> int:
  """Inputs finished so far: the sum of the workers' counts.

  Args:
    directory: the run's progress directory.
  """
  done = 0
  for path in glob.glob(os.path.join(directory, "*.count")):
    try:
      with open(path) as f:
        done += int(f.read() or 0)
    except (OSError, ValueError):
      continue  # being replaced right now
  return done


def format_progress(done: int, total: int, seconds: float) -> str:
  """``clips 120/600 (20 %), 4.1 clips/s, about 1 min 57 s left``.

  Args:
    done: clips finished.
    total: clips in all.
    seconds: time since the start.
  """
  rate = done / seconds if seconds > 0 else 0.0
  text = f"clips {done}/{total} ({100 * done / max(total, 1):.0f} %), {rate:.1f} clips/s"
  if 0 < done < total and rate > 0:
    left = int(round((total - done) / rate))
    text += f", about {left // 60} min {left % 60:02d} s left" if left >= 60 else (
        f", about {left} s left")
  return text


class ProgressReporter:
  """Prints :func:`format_progress` to stderr every ``interval`` seconds, in a thread.

  A context manager: the thread runs while the body does, and the final count is
  printed on exit.

  Args:
    directory: the run's progress directory.
    total: inputs in all.
    interval: seconds between two lines.
    tool: the console script, in front of each line (``deepbof-preprocess``).
    stream: where to print (default: ``sys.stderr`` at the time of printing).
  """

  def __init__(self, directory: str, total: int, interval: float, tool: str,
               stream=None):
    import threading
    self._directory, self._total, self._interval = directory, total, interval
    self._tool = tool
    self._stream = stream
    self._start = time.time()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="deepbof-progress",
                                    daemon=True)

  def _print(self) -> None:
    import sys
    stream = self._stream or sys.stderr
    done = count_progress(self._directory)
    line = format_progress(done, self._total, time.time() - self._start)
    print(f"{self._tool}: {line}", file=stream, flush=True)

  def _run(self) -> None:
    while not self._stop.wait(self._interval):
      self._print()

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *unused):
    self._stop.set()
    self._thread.join()
    self._print()  # the final count


def progress_dir_of(work_dir: str, runner, interval: float) -> Optional[str]:
  """Where the workers count finished inputs, or None when progress cannot be shown.

  Progress needs the workers' counts on this machine: local runners, local paths.

  Args:
    work_dir: the run's work directory.
    runner: :func:`make_runner`'s runner (None: not a local run).
    interval: seconds between two progress lines (0: never).
  """
  if runner is None or interval <= 0 or is_url(work_dir):
    return None
  return join(work_dir, PROGRESS_DIR)


def run_with_progress(pipeline, progress_dir: Optional[str], total: int,
                      interval: float, tool: str):
  """:func:`run_and_wait`, printing the progress while it runs (if ``progress_dir``).

  The progress directory is removed once the pipeline has finished.

  Args:
    pipeline: the built ``beam.Pipeline``.
    progress_dir: :func:`progress_dir_of` (None: no progress).
    total: inputs in all.
    interval: seconds between two progress lines.
    tool: the console script, in front of each line.
  """
  if progress_dir is None:
    return run_and_wait(pipeline)
  os.makedirs(progress_dir, exist_ok=True)
  with ProgressReporter(progress_dir, total, interval, tool):
    result = run_and_wait(pipeline)
  shutil.rmtree(progress_dir, ignore_errors=True)
  return result


# --------------------------------------------------------------------------------------
# Work directories, and the litter of killed runs.
#
# A run killed with SIGKILL (or by a crash of the machine) cannot remove its work
# directory, so the next run does: claim_work_dir records the owner (host, boot,
# process id and the process's start time) in OWNER_FILE, and remove_stale_work_dirs
# removes the siblings whose owner is gone — a process of this host and boot that no
# longer exists, or any process of an earlier boot of this host. A work directory of a
# live run, of another host, or without an owner record is left alone (the last only
# once it is a day old, which covers runs of versions that did not write the record).
# --------------------------------------------------------------------------------------


def _boot_id() -> str:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return ""


def _process_start(pid: int) -> Optional[str]:
  """The start time (clock ticks since boot) of process ``pid``; None if it is gone."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      stat = f.read()
  except FileNotFoundError:
    return None
  except OSError:
    return ""
  # Field 22 (starttime) comes after the parenthesised command name, which may hold spaces.
  return stat.rsplit(")", 1)[1].split()[19]


def owner_record() -> Dict[str, Any]:
  """Who is running: host, boot id, pid and the pid's start time."""
  pid = os.getpid()
  return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": pid,
          "process_start": _process_start(pid) or "", "created": time.time()}


def claim_work_dir(output_dir: str) -> str:
  """Creates ``<output_dir>.incomplete-<id>`` with this process's owner record.

  Args:
    output_dir: the output directory of the job (local or remote).
  """
  work_dir = f"{output_dir.rstrip('/')}{INCOMPLETE}{uuid.uuid4().hex[:8]}"
  fs = file_system(work_dir)  # a local run's launcher starts without TensorFlow
  fs.makedirs(work_dir)
  with fs.GFile(posixpath.join(work_dir, OWNER_FILE), "w") as f:
    f.write(json.dumps(owner_record()) + "\n")
  return work_dir


def owner_is_gone(owner: Dict[str, Any]) -> bool:
  """True when the process that wrote ``owner`` cannot be running any more.

  Args:
    owner: an :func:`owner_record`.
  """
  if owner.get("host") != socket.gethostname():
    return False  # another machine: we cannot tell
  if owner.get("boot_id") and _boot_id() and owner["boot_id"] != _boot_id():
    return True  # this host rebooted since
  start = _process_start(int(owner.get("pid", -1)))
  if start is None:
    return True  # no such process
  recorded = owner.get("process_start")
  return bool(recorded) and bool(start) and start != recorded  # the pid was reused


def _left_by_a_killed_run(path: str) -> bool:
  """True when the work directory ``path`` is stale: its owner is gone, or it has no
  owner record and is older than :data:`UNOWNED_MAX_AGE_SECONDS`.

  Raises:
    ValueError, OSError, tf.errors.OpError: the directory is being written or removed
      by someone else right now.
  """
  fs = file_system(path)  # a local run's launcher starts without TensorFlow
  owner_path = posixpath.join(path, OWNER_FILE)
  if fs.exists(owner_path):
    with fs.GFile(owner_path, "r") as f:
      return owner_is_gone(json.load(f))
  mtime_ns = gfile().stat(path).mtime_nsec if is_url(path) else os.stat(path).st_mtime_ns
  age = time.time() - mtime_ns / 1e9
  return age > UNOWNED_MAX_AGE_SECONDS


def _io_errors(path: str) -> Tuple[type, ...]:
  """What reaching ``path`` raises while another process writes or removes it
  (``tf.io.gfile``'s ``OpError`` too for a URL)."""
  if not is_url(path):
    return (ValueError, OSError)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  (URLs only)
  return (ValueError, OSError, tf.errors.OpError)


def remove_stale_work_dirs(output_dir: str) -> List[str]:
  """Removes the ``<output_dir>.incomplete-*`` siblings of killed runs; returns them.

  Args:
    output_dir: the output directory of the job (local or remote).
  """
  output_dir = output_dir.rstrip("/")
  parent, name = posixpath.split(output_dir)
  parent = parent or "."
  fs = file_system(parent)  # a local run's launcher starts without TensorFlow
  if not fs.isdir(parent):
    return []
  removed = []
  for entry in fs.listdir(parent):
    entry = entry.rstrip("/")
    if not entry.startswith(name + INCOMPLETE):
      continue
    path = posixpath.join(parent, entry)
    try:
      stale = _left_by_a_killed_run(path)
    except _io_errors(path):
      continue  # being written or removed by someone else right now
    if stale:
      logging.warning("removing %s, left by a run that was killed", path)
      fs.rmtree(path)
      removed.append(path)
  return removed


def is_nonempty_dir(path: str) -> bool:
  """True when ``path`` exists and is a file or a directory with entries.

  Args:
    path: a local path or URL.
  """
  fs = file_system(path)
  return fs.exists(path) and (not fs.isdir(path) or bool(fs.listdir(path)))


def check_output_dir(output_dir: str, overwrite: bool) -> None:
  """Refuses an existing non-empty ``output_dir`` unless ``overwrite``.

  Args:
    output_dir: the job's output directory.
    overwrite: whether the run may replace it.

  Raises:
    FileExistsError: ``output_dir`` exists and is not empty, and not ``overwrite``.
  """
  if is_nonempty_dir(output_dir) and not overwrite:
    raise FileExistsError(
        f"{output_dir}: output directory exists and is not empty; choose another "
        "--output_dir or pass --overwrite to replace it")


def remove_work_dir(work_dir: str) -> None:
  """Removes a failed run's work directory; a failure to do so is only logged.

  Args:
    work_dir: the work directory.
  """
  fs = file_system(work_dir)
  if fs.exists(work_dir):
    try:
      fs.rmtree(work_dir)
    except Exception:  # pylint: disable=broad-except
      logging.exception("could not remove %s", work_dir)


@contextlib.contextmanager
def work_dir_of(output_dir: str) -> Iterator[str]:
  """A fresh work directory next to ``output_dir``, removed if the body fails.

  Work directories of earlier runs that were killed (their owner is gone) are removed
  first (:func:`remove_stale_work_dirs`); the body writes everything into the yielded
  one and ends with :func:`finish_and_publish`.

  Args:
    output_dir: the job's output directory.
  """
  remove_stale_work_dirs(output_dir)
  work_dir = claim_work_dir(output_dir)
  try:
    yield work_dir
  except BaseException:
    remove_work_dir(work_dir)
    raise


# --------------------------------------------------------------------------------------
# What the pipeline left in the work directory.
# --------------------------------------------------------------------------------------


def pop_summary(work_dir: str) -> Dict[str, Any]:
  """Reads and removes the pipeline's ``_summary.json`` from ``work_dir``.

  Args:
    work_dir: the run's work directory.
  """
  fs = file_system(work_dir)
  path = join(work_dir, SUMMARY_FILE)
  with fs.GFile(path, "r") as f:
    summary = json.load(f)
  fs.remove(path)
  return summary


def read_error_records(work_dir: str) -> List[Dict[str, Any]]:
  """The ``{path, stage, error}`` records of ``work_dir/errors/*.jsonl`` (both jobs).

  Args:
    work_dir: a work directory or a published output directory.

  Returns:
    The records of every error file, in the order of the files' names and their lines.
  """
  fs = file_system(work_dir)
  records = []
  for path in sorted(fs.glob(join(work_dir, schema.ERRORS_DIR, f"*{ERRORS_SUFFIX}"))):
    with fs.GFile(path, "r") as f:
      records.extend(json.loads(line) for line in f if line.strip())
  return records


# --------------------------------------------------------------------------------------
# Publishing a finished run.
# --------------------------------------------------------------------------------------


def copy_tree(src: str, dst: str, last: str) -> None:
  """Copies ``src`` to ``dst`` file by file; the top-level file ``last`` goes last.

  Args:
    src: the directory to copy.
    dst: where to.
    last: the name of a top-level file of ``src`` to copy after every other file.
  """
  files = gfile()
  final_copy = None
  for root, _, names in files.walk(src):
    rel = root[len(src):].strip("/")
    target_root = join(dst, rel) if rel else dst
    files.makedirs(target_root)
    for name in names:
      pair = (join(root, name), join(target_root, name))
      if not rel and name == last:
        final_copy = pair
      else:
        files.copy(*pair, overwrite=True)
  if final_copy is not None:
    files.copy(*final_copy, overwrite=True)


def _move_aside(output_dir: str) -> Optional[str]:
  """Clears the name ``output_dir`` for a rename; returns where the old one went.

  An empty directory is removed (None); anything else is renamed to a unique
  ``<output_dir>.old-<id>`` sibling.
  """
  if not os.path.exists(output_dir):
    return None
  if os.path.isdir(output_dir) and not os.listdir(output_dir):
    os.rmdir(output_dir)
    return None
  old = f"{output_dir}.old-{uuid.uuid4().hex[:8]}"
  os.rename(output_dir, old)
  return old


def _publish_by_rename(work_dir: str, output_dir: str) -> None:
  """Local file systems: one directory rename (an old output is deleted after it)."""
  old = _move_aside(output_dir)
  os.rename(work_dir, output_dir)
  if old is not None:
    shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)


def _publish_by_copy(work_dir: str, output_dir: str) -> None:
  """Object stores: a copy with ``metadata.json`` last, then the work dir removed."""
  files = gfile()
  if files.exists(output_dir):
    files.rmtree(output_dir)
  copy_tree(work_dir, output_dir, last=schema.METADATA_FILE)
  files.rmtree(work_dir)


def publish(work_dir: str, output_dir: str, overwrite: bool) -> None:
  """Moves the finished ``work_dir`` to ``output_dir``.

  Local file systems: one directory rename (an existing ``output_dir`` is first moved
  aside and deleted after the swap). Object stores (gs://…), where directories cannot
  be renamed atomically: files are copied with ``metadata.json`` last, so a dataset
  without ``metadata.json`` is never complete (``read_metadata`` refuses it).

  Args:
    work_dir: the finished temporary dataset directory.
    output_dir: its final name.
    overwrite: replace an existing non-empty ``output_dir``.
  """
  check_output_dir(output_dir, overwrite)
  if is_url(output_dir):
    _publish_by_copy(work_dir, output_dir)
  else:
    _publish_by_rename(work_dir, output_dir)


def finish_and_publish(work_dir: str, output_dir: str, metadata: Mapping[str, Any],
                       overwrite: bool, metadata_file: str = schema.METADATA_FILE
                       ) -> None:
  """Writes ``metadata.json`` last (it marks a complete output), then publishes.

  The owner record goes first: a published output is nobody's work directory.

  Args:
    work_dir: the finished work directory.
    output_dir: its final name.
    metadata: the job's ``metadata.json``.
    overwrite: replace an existing non-empty ``output_dir``.
    metadata_file: the name of the metadata file.
  """
  file_system(work_dir).remove(join(work_dir, OWNER_FILE))
  write_atomic(join(work_dir, metadata_file),
               json.dumps(metadata, indent=2, sort_keys=True) + "\n")
  publish(work_dir, output_dir, overwrite)
