"""Work directories that are published by rename, and the litter of killed runs.

A job that must never show a half-written output writes it into a sibling work
directory ``<output>.incomplete-<id>`` and renames it into place when it is complete.
A run killed with SIGKILL (or by a crash of the machine) cannot remove its work
directory, so the next run does: :func:`claim_work_dir` records the owner (host, boot,
process id and the process's start time) in ``.owner.json``, and
:func:`remove_stale_work_dirs` removes the siblings whose owner is gone — a process of
this host and boot that no longer exists, or any process of an earlier boot of this
host. A work directory of a live run, of another host, or without an owner record is
left alone (the last only once it is a day old, which covers runs of versions that did
not write the record).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import time
import uuid
from typing import Any, Dict, List, Optional


OWNER_FILE = ".owner.json"
INCOMPLETE = ".incomplete-"
UNOWNED_MAX_AGE_SECONDS = 24 * 3600


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
  """Creates ``<output_dir>.incomplete-<id>`` with this process's owner record."""
  import tensorflow as tf  # deferred: --help and the launcher start without it
  work_dir = f"{output_dir.rstrip('/')}{INCOMPLETE}{uuid.uuid4().hex[:8]}"
  tf.io.gfile.makedirs(work_dir)
  with tf.io.gfile.GFile(posixpath.join(work_dir, OWNER_FILE), "w") as f:
    f.write(json.dumps(owner_record()) + "\n")
  return work_dir


def owner_is_gone(owner: Dict[str, Any]) -> bool:
  """True when the process that wrote ``owner`` cannot be running any more."""
  if owner.get("host") != socket.gethostname():
    return False  # another machine: we cannot tell
  if owner.get("boot_id") and _boot_id() and owner["boot_id"] != _boot_id():
    return True  # this host rebooted since
  start = _process_start(int(owner.get("pid", -1)))
  if start is None:
    return True  # no such process
  recorded = owner.get("process_start")
  return bool(recorded) and bool(start) and start != recorded  # the pid was reused


def remove_stale_work_dirs(output_dir: str) -> List[str]:
  """Removes the ``<output_dir>.incomplete-*`` siblings of killed runs; returns them.

  Args:
    output_dir: the output directory of the job (local or remote).
  """
  import tensorflow as tf  # deferred: --help and the launcher start without it
  output_dir = output_dir.rstrip("/")
  parent, name = posixpath.split(output_dir)
  parent = parent or "."
  if not tf.io.gfile.isdir(parent):
    return []
  removed = []
  for entry in tf.io.gfile.listdir(parent):
    entry = entry.rstrip("/")
    if not entry.startswith(name + INCOMPLETE):
      continue
    path = posixpath.join(parent, entry)
    owner_path = posixpath.join(path, OWNER_FILE)
    try:
      if tf.io.gfile.exists(owner_path):
        with tf.io.gfile.GFile(owner_path, "r") as f:
          stale = owner_is_gone(json.load(f))
      else:
        age = time.time() - tf.io.gfile.stat(path).mtime_nsec / 1e9
        stale = age > UNOWNED_MAX_AGE_SECONDS
    except (ValueError, OSError, tf.errors.OpError):
      continue  # being written or removed by someone else right now
    if stale:
      logging.warning("removing %s, left by a run that was killed", path)
      tf.io.gfile.rmtree(path)
      removed.append(path)
  return removed
