"""Runs a DAG of commands: one subprocess per node, stamps, logs, failures, progress.

The one step runner of the tooling: ``deepbof-experiment`` runs a sweep's DAG with it
and ``deepbof-demo`` a linear chain (``plan.chain``), showing each step's output.

Every node that finishes leaves a stamp ``DIR/.stamps/<node>.json`` with its command,
its wall time and a run id. A node is *up to date* when its stamp says it finished,
its command (and the files it copies in) are unchanged and its parents' run ids are
the ones it ran after — so a parent that was rerun makes its children rerun too. A
rerun or resumed sweep skips up-to-date nodes unless ``force``.

A node that fails leaves a "failed" stamp (command, exit code, log path); the sweep
goes on with every node that does not depend on it, and the nodes that do are
reported as blocked (or, with ``stop_on_failure``, the run stops there with the
log's tail). Each node's output (stdout and stderr) goes to ``DIR/logs/<node>.log``;
the console gets one line when a node starts and one when it ends, with its time and
an estimate of what is left. With ``show_output`` a node's stdout (its tables, its
tags) is shown as it comes and kept in ``DIR/logs/<node>.out`` — and shown again when
the node is skipped — while its stderr goes to the log, with the lines matching
``echo`` (stage headers) and a heartbeat of the latest line shown.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from typing import Callable, Dict, List, Optional, Pattern, Sequence, Set

from deepbof_tf import cli
from deepbof_tf.io_utils import write_atomic
from deepbof_tools.experiments import plan as plan_lib

DONE = "done"
UP_TO_DATE = "up to date"
FAILED = "failed"
BLOCKED = "blocked"
PENDING = "pending"
STALE = "stale"


# A ``deepbof-*`` command name → the console script of this environment.
resolve_script = cli.console_script


def node_key(node: plan_lib.Node) -> str:
  """A digest of what the node runs: its command (unresolved) and the files it copies."""
  payload = json.dumps({"command": list(node.command),
                        "copies": [list(c) for c in node.copies]}, sort_keys=True)
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class Failure:
  """A node that did not finish.

  Args:
    node: its name.
    stage: its stage.
    status: "failed" (it ran and exited non-zero) or "blocked" (a parent failed).
    command: its command line.
    exit_code: the exit code (None if blocked).
    log: its log file.
    reason: one line (the failing parent of a blocked node).
  """

  node: str
  stage: str
  status: str
  command: str
  exit_code: Optional[int]
  log: str
  reason: str = ""


class Stamps:
  """The stamps and logs of one output directory."""

  def __init__(self, output_dir: str):
    self.output_dir = output_dir
    self.stamp_dir = os.path.join(output_dir, ".stamps")
    self.log_dir = os.path.join(output_dir, "logs")

  def stamp_path(self, name: str) -> str:
    return os.path.join(self.stamp_dir, name + ".json")

  def log_path(self, name: str) -> str:
    return os.path.join(self.log_dir, name + ".log")

  def output_path(self, name: str) -> str:
    """Where a node's stdout is kept when the runner shows it (``show_output``)."""
    return os.path.join(self.log_dir, name + ".out")

  def read(self, name: str) -> Optional[Dict]:
    path = self.stamp_path(name)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)

  def write(self, name: str, record: Dict) -> None:
    # Written whole then renamed: a killed sweep never leaves half a stamp.
    write_atomic(self.stamp_path(name), json.dumps(record, indent=2))

  def status(self, node: plan_lib.Node) -> str:
    """"done" (up to date), "failed", "stale" (finished, but inputs changed) or "pending"."""
    stamp = self.read(node.name)
    if stamp is None:
      return PENDING
    if stamp.get("key") != node_key(node):
      return STALE
    if stamp.get("status") == FAILED:
      return FAILED
    for dep in node.deps:
      parent = self.read(dep)
      if (parent is None or parent.get("status") != DONE
          or stamp.get("deps", {}).get(dep) != parent.get("run_id")):
        return STALE
    return DONE


# absl's log prefix, e.g. "I1124 06:07:45.428982 140317709904768 train.py:227] ".
_ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ")


def _clean(line: str) -> str:
  line = _ABSL_PREFIX.sub("", line.strip())
  return line if len(line) <= 150 else line[:147] + "..."


def _run_shown(argv: Sequence[str], env: Dict[str, str], log_path: str, output_path: str,
               label: str, echo: Optional[Pattern[str]], heartbeat: float) -> int:
  """Runs ``argv`` with stdout shown and kept in ``output_path``, stderr in ``log_path``.

  Lines of stderr matching ``echo`` are shown as they come; every ``heartbeat`` seconds
  without output, the latest log line (e.g. an epoch or a progress bar) is shown.
  """
  process = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env)

  def copy_stdout() -> None:
    with open(output_path, "wb") as kept:
      for chunk in iter(lambda: process.stdout.read1(1 << 14), b""):
        kept.write(chunk)
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()

  latest = [""]
  shown = [time.monotonic()]

  def pump() -> None:
    pending = b""
    with open(log_path, "ab") as log:
      for chunk in iter(lambda: process.stderr.read1(1 << 14), b""):
        log.write(chunk)
        log.flush()
        *lines, pending = re.split(rb"[\r\n]", pending + chunk)
        for raw in lines:
          line = raw.decode("utf-8", "replace").strip()
          if not line:
            continue
          latest[0] = line
          if echo is not None and echo.search(line):
            print(f"  {label}: {_clean(line)}", flush=True)
            shown[0] = time.monotonic()

  threads = [threading.Thread(target=copy_stdout, daemon=True),
             threading.Thread(target=pump, daemon=True)]
  for thread in threads:
    thread.start()
  start = time.monotonic()
  while process.poll() is None:
    time.sleep(0.5)
    if time.monotonic() - shown[0] >= heartbeat and latest[0]:
      print(f"  {label} ({time.monotonic() - start:.0f} s): {_clean(latest[0])}",
            flush=True)
      shown[0] = time.monotonic()
  for thread in threads:
    thread.join()
  return process.returncode


def _what(node: plan_lib.Node) -> str:
  return node.name if node.stage == node.name else f"{node.stage} {node.name}"


class Runner:
  """Runs the nodes of a plan in order.

  Args:
    plan: the nodes to run: a sweep's :class:`plan.Plan` or a :class:`plan.Chain`
      (anything with ``nodes``, parents before children, and ``output_dir``).
    force: rerun every node, up to date or not (each from scratch).
    resolve: maps a ``deepbof-*`` command name to an executable.
    echo: where progress lines go.
    env: extra environment variables for the subprocesses.
    label: the prefix of the progress lines ("experiment", "demo").
    show_output: show each node's stdout and keep it apart (module docstring).
    echo_pattern: with ``show_output``, stderr lines shown as they come.
    heartbeat: with ``show_output``, seconds between shows of the latest log line.
    stop_on_failure: raise ``SystemExit`` (with the log's tail on stderr) when a node
      fails, instead of going on with the nodes that do not depend on it.
  """

  def __init__(self, plan, force: bool = False,
               resolve: Callable[[str], str] = resolve_script,
               echo: Callable[[str], None] = lambda line: print(line, flush=True),
               env: Optional[Dict[str, str]] = None, label: str = "experiment",
               show_output: bool = False, echo_pattern: Optional[Pattern[str]] = None,
               heartbeat: float = 20.0, stop_on_failure: bool = False):
    self.plan = plan
    self.force = force
    self.resolve = resolve
    self.echo = echo
    self.label = label
    self.show_output = show_output
    self.echo_pattern = echo_pattern
    self.heartbeat = heartbeat
    self.stop_on_failure = stop_on_failure
    self.stamps = Stamps(plan.output_dir)
    # Merged as mappings: ``env`` may override TF_CPP_MIN_LOG_LEVEL too.
    self.env = {**os.environ,
                "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
                **(env or {})}
    self.outcome: Dict[str, str] = {}
    self.failures: List[Failure] = []
    self.seconds: Dict[str, float] = {}

  def _say(self, message: str) -> None:
    self.echo(f"[{self.label} {datetime.datetime.now():%H:%M:%S}] {message}")

  def _argv(self, command: Sequence[str]) -> List[str]:
    first = command[0]
    if first.startswith("deepbof-"):
      first = self.resolve(first)
    return [first, *command[1:]]

  def _up_to_date(self) -> Set[str]:
    """The nodes a run skips: done, with no ancestor that runs again first.

    A child's stamp still matches the run id of a stale parent until that parent
    reruns, so ``Stamps.status`` alone would count it as up to date.
    """
    if self.force:
      return set()
    skip: Set[str] = set()
    for name, node in self.plan.nodes.items():  # parents before children
      if all(d in skip for d in node.deps) and self.stamps.status(node) == DONE:
        skip.add(name)
    return skip

  def _stage_means(self) -> Dict[str, float]:
    """Mean wall time per stage over the finished nodes of this plan (all runs)."""
    sums: Dict[str, List[float]] = {}
    for node in self.plan.nodes.values():
      stamp = self.stamps.read(node.name)
      if stamp and stamp.get("status") == DONE and "seconds" in stamp:
        sums.setdefault(node.stage, []).append(float(stamp["seconds"]))
    return {stage: sum(v) / len(v) for stage, v in sums.items()}

  def _remaining(self, names: Sequence[str]) -> str:
    means = self._stage_means()
    skip = self._up_to_date()
    known, unknown = 0.0, 0
    for name in names:
      if name not in skip:
        stage = self.plan.nodes[name].stage
        if stage in means:
          known += means[stage]
        else:
          unknown += 1
    if not known and not unknown:
      return "nothing left"
    text = f"~{known / 60:.0f} min left" if known else ""
    if unknown:
      text += f"{' + ' if text else ''}{unknown} node(s) of untimed stages"
    return text

  def _prepare(self, node: plan_lib.Node) -> None:
    """Clears the node's directory unless it may resume, then copies its inputs in."""
    status = self.stamps.status(node)
    if self.force or status in (STALE, FAILED) or not node.resumable:
      if node.output_dir and os.path.isdir(node.output_dir):
        shutil.rmtree(node.output_dir)
    for source, destination in node.copies:
      if not os.path.exists(source):
        continue  # the command names what is missing (e.g. a split without clips)
      os.makedirs(os.path.dirname(destination), exist_ok=True)
      shutil.copy2(source, destination)

  def _run_node(self, node: plan_lib.Node, index: int, total: int,
                names: Sequence[str]) -> None:
    log_path = self.stamps.log_path(node.name)
    blocked_by = [d for d in node.deps if self.outcome.get(d) not in (DONE, UP_TO_DATE)]
    if blocked_by:
      self.outcome[node.name] = BLOCKED
      self.failures.append(Failure(node.name, node.stage, BLOCKED, " ".join(node.command),
                                   None, log_path, f"parent {blocked_by[0]} did not finish"))
      self._say(f"({index}/{total}) {_what(node)}: blocked "
                f"({blocked_by[0]} did not finish)")
      return
    if not self.force and self.stamps.status(node) == DONE:
      self.outcome[node.name] = UP_TO_DATE
      if self.show_output:
        self._say(f"({index}/{total}) {node.name}: already done by an earlier run with "
                  "the same command and inputs, skipped (--force reruns it)")
        self._replay(node.name)
      return
    self._prepare(node)
    shown = f": {' '.join(node.command)}" if self.show_output else ""
    self._say(f"({index}/{total}) {_what(node)}: started (log: {log_path}){shown}")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.perf_counter()
    try:
      argv = self._argv(node.command)
      with open(log_path, "w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        if not self.show_output:
          code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                check=False).returncode
      if self.show_output:
        code = _run_shown(argv, self.env, log_path, self.stamps.output_path(node.name),
                          node.name, self.echo_pattern, self.heartbeat)
    except OSError as error:  # e.g. the console script is missing
      with open(log_path, "a") as log:
        log.write(f"{error}\n")
      code = 127
    seconds = time.perf_counter() - start
    self.seconds[node.name] = seconds
    parents = {dep: (self.stamps.read(dep) or {}).get("run_id") for dep in node.deps}
    record = {"key": node_key(node), "command": list(node.command), "deps": parents,
              "seconds": round(seconds, 1), "log": log_path,
              "finished": datetime.datetime.now().isoformat(timespec="seconds")}
    if code == 0:
      self.stamps.write(node.name, dict(record, status=DONE, run_id=uuid.uuid4().hex))
      self.outcome[node.name] = DONE
      self._say(f"({index}/{total}) {_what(node)}: done in {seconds:.0f} s; "
                f"{self._remaining(names[index:])}")
    else:
      self.stamps.write(node.name, dict(record, status=FAILED, exit_code=code))
      self.outcome[node.name] = FAILED
      self.failures.append(Failure(node.name, node.stage, FAILED, " ".join(node.command),
                                   code, log_path))
      if self.stop_on_failure:
        with open(log_path, errors="replace") as log:
          sys.stderr.write("".join(log.readlines()[-40:]))
        raise SystemExit(f"[{self.label}] step {node.name!r} failed with exit code {code} "
                         f"(full log: {log_path}): {' '.join(node.command)}")
      self._say(f"({index}/{total}) {_what(node)}: FAILED with exit code "
                f"{code} after {seconds:.0f} s (log: {log_path}); the sweep goes on")

  def _replay(self, name: str) -> None:
    """Shows what a skipped node printed when it ran (its tables, its tags)."""
    path = self.stamps.output_path(name)
    if os.path.exists(path) and os.path.getsize(path):
      self._say(f"{name}: its output then:")
      with open(path, "rb") as kept:
        sys.stdout.buffer.write(kept.read())
      sys.stdout.flush()

  @property
  def skipped(self) -> List[str]:
    """The nodes this run found up to date, in order."""
    return [name for name, status in self.outcome.items() if status == UP_TO_DATE]

  def run(self) -> Dict[str, str]:
    """Runs (or skips) every node; returns node name → done/up to date/failed/blocked."""
    names = list(self.plan.nodes)
    if not self.outcome:
      skipped = self._up_to_date()
      self._say(f"{len(names)} nodes, {len(skipped)} up to date (skipped; --force reruns "
                f"them); {self._remaining(names)}")
    for index, name in enumerate(names, 1):
      if name not in self.outcome:  # nodes added to the plan since the last run()
        self._run_node(self.plan.nodes[name], index, len(names), names)
    ran = sum(1 for s in self.outcome.values() if s == DONE)
    up_to_date = sum(1 for s in self.outcome.values() if s == UP_TO_DATE)
    self._say(f"finished: {ran} ran, {up_to_date} up to date, "
              f"{sum(1 for f in self.failures if f.status == FAILED)} failed, "
              f"{sum(1 for f in self.failures if f.status == BLOCKED)} blocked; "
              f"{sum(self.seconds.values()) / 60:.1f} min")
    return dict(self.outcome)
