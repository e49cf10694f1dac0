"""Runs every benchmark in ``benchmarks/`` and prints one table of their results.

Each ``bench_*.py`` runs as its own process, one after another (so they do not compete
for the cores), with a timeout; its output is shown live (prefixed with its name) and
kept in a log. Its last ``BENCHMARK_RESULT`` line (see ``result_line.py``) becomes
rows of one markdown table: measured value, the reference measured in the same run,
their ratio, the target and the status. The table is headed by the machine it
ran on (CPU, cores, RAM, TensorFlow version, commit, date, load average before and
after) and written to ``--output`` (default ``build/bench/latest.md``, git-ignored)
with the raw results next to it (``.json``). A script that fails, times out or prints
no result line gets a row saying so; the others still run.

Usage::

  .venv/bin/python benchmarks/run_all.py [--only=frontend,serving] [--quick]
      [--output=build/bench/latest.md] [--timeout=SECONDS] [--fail_on_miss]
      [--bench_dir=DIR | --scripts=a.py,b.py] [--list]

(``make bench BENCH_ARGS="--quick"`` passes the same flags.) ``--quick`` passes smaller
sizes or fewer repeats to every script (a smoke run of a few minutes); a target written
for sizes other than the run's is then reported as ``n/a``. Exit status: 0 when every
script produced its result line, 1 otherwise (also on a missed target with
``--fail_on_miss``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, TextIO

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import result_line  # noqa: E402

# Order of a full run: short ones first, so a broken setup shows within a minute.
ORDER = ("frontend", "local_features", "song_dnn", "startup", "similarity_quality",
         "serving", "demo_corpus", "preprocess", "catalog", "catalog_incremental",
         "long_tracks", "index_scale")

# Smaller sizes for --quick, through each script's own flags.
QUICK_ARGS: Dict[str, List[str]] = {
    "frontend": ["--runs", "5"],
    "preprocess": ["--clips=4,8", "--seconds=10"],
    "local_features": ["--batches=50", "--repeats=2"],
    "song_dnn": ["--clips=500", "--repeats=1", "--metric_clips=500"],
    "serving": ["--runs", "2", "--hour_seconds", "120"],
    "demo_corpus": ["--num_clips", "24", "--clip_seconds", "5", "--no_progress"],
    "catalog": ["--clips=3,6", "--seconds=10", "--index_items=5000", "--index_dim=128",
                "--queries=100"],
    "catalog_incremental": ["--files=40", "--added=4", "--seconds=10"],
    "long_tracks": ["--clips=4,8", "--tracks=1,2", "--track_seconds=60", "--repeats=1"],
    "startup": ["--runs=1"],
    "similarity_quality": ["--synthetic_tracks=400", "--synthetic_groups=20"],
    "index_scale": ["--quick"],
}

# Seconds before a script is stopped (a quiet 2-core machine needs about a quarter of
# this; preprocess ~4 min, demo corpus ~2.5 min; the index at a million items ~20 min).
TIMEOUTS = {"preprocess": 1200.0, "demo_corpus": 900.0, "catalog": 1800.0,
            "catalog_incremental": 2400.0, "long_tracks": 1200.0, "index_scale": 3600.0}
DEFAULT_TIMEOUT = 600.0
QUICK_TIMEOUT = 300.0

DEFAULT_OUTPUT = os.path.join(ROOT, "build", "bench", "latest.md")

STATUS_MARKS = {"pass": "✔ pass", "fail": "✘ fail", "n/a": "n/a", "info": ""}


@dataclasses.dataclass
class Script:
  """One benchmark script to run.

  Args:
    name: short name (``bench_frontend.py`` → ``frontend``), as ``--only`` takes it.
    path: the script's path.
    args: extra command-line arguments.
    timeout: seconds before it is stopped.
  """
  name: str
  path: str
  args: List[str] = dataclasses.field(default_factory=list)
  timeout: float = DEFAULT_TIMEOUT


@dataclasses.dataclass
class Outcome:
  """What running one script gave.

  Args:
    script: the script.
    returncode: its exit status (None if it was stopped at the timeout).
    seconds: wall time.
    result: its parsed result line, or None.
    error: why there is no usable result ('' when there is one).
    tail: the last lines of its output (for the report of a failure).
    log_path: where its whole output was written.
  """
  script: Script
  returncode: Optional[int]
  seconds: float
  result: Optional[Dict[str, Any]]
  error: str
  tail: List[str]
  log_path: str

  @property
  def ok(self) -> bool:
    return self.result is not None and not self.error


def script_name(path: str) -> str:
  """``.../bench_frontend.py`` → ``frontend``."""
  base = os.path.basename(path)
  base = base[:-3] if base.endswith(".py") else base
  return base[len("bench_"):] if base.startswith("bench_") else base


def discover(directory: str = HERE) -> List[str]:
  """The ``bench_*.py`` scripts of ``directory``, in :data:`ORDER` then by name."""
  paths = glob.glob(os.path.join(directory, "bench_*.py"))
  rank = {name: i for i, name in enumerate(ORDER)}
  return sorted(paths, key=lambda p: (rank.get(script_name(p), len(ORDER)), p))


def select(paths: Sequence[str], only: Optional[Sequence[str]], quick: bool,
           timeout: Optional[float]) -> List[Script]:
  """The scripts to run, with their arguments and timeouts.

  Args:
    paths: script paths.
    only: short names to keep (None: all).
    quick: pass :data:`QUICK_ARGS`.
    timeout: seconds for every script (None: :data:`TIMEOUTS` or the defaults).

  Raises:
    ValueError: if ``only`` names a script that is not in ``paths``.
  """
  by_name = {script_name(p): p for p in paths}
  if only:
    unknown = [n for n in only if n not in by_name]
    if unknown:
      raise ValueError(f"--only: unknown benchmark(s) {unknown}; available: "
                       f"{sorted(by_name)}")
  scripts = []
  for name, path in by_name.items():
    if only and name not in only:
      continue
    if timeout is not None:
      seconds = timeout
    elif quick:
      seconds = QUICK_TIMEOUT
    else:
      seconds = TIMEOUTS.get(name, DEFAULT_TIMEOUT)
    scripts.append(Script(name, path, list(QUICK_ARGS.get(name, [])) if quick else [],
                          seconds))
  return scripts


# --------------------------------------------------------------------------------------
# Running.
# --------------------------------------------------------------------------------------


def _stop(process: subprocess.Popen) -> None:
  """Stops the script and everything it started (its own process group)."""
  for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
    try:
      os.killpg(process.pid, sig)
    except ProcessLookupError:
      return
    try:
      process.wait(timeout=wait)
      return
    except subprocess.TimeoutExpired:
      continue


def run_script(script: Script, log_dir: str, stream: Optional[TextIO] = sys.stdout,
               tail_lines: int = 15) -> Outcome:
  """Runs one script with its timeout; never raises for the script's own failures.

  Args:
    script: what to run.
    log_dir: its whole output goes to ``log_dir/<name>.log``.
    stream: where its output is echoed live, each line prefixed with ``[name]``
      (None: not echoed).
    tail_lines: how many last lines an :class:`Outcome` keeps.
  """
  os.makedirs(log_dir, exist_ok=True)
  log_path = os.path.join(log_dir, f"{script.name}.log")
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  # The checkout first (for scripts outside it), then this folder: a script of any
  # --bench_dir can import result_line.
  env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, HERE, env.get("PYTHONPATH")) if p)
  command = [sys.executable, script.path] + script.args
  lines: List[str] = []
  start = time.perf_counter()
  with open(log_path, "w") as log:
    log.write("$ " + " ".join(command) + "\n")
    try:
      # A new session: on a timeout the whole group (e.g. Beam's worker processes) stops.
      process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, errors="replace",
                                 start_new_session=True)
    except OSError as error:
      return Outcome(script, None, 0.0, None, f"could not start: {error}", [], log_path)

    def pump():
      for line in process.stdout:
        lines.append(line.rstrip("\n"))
        log.write(line)
        if stream is not None:
          stream.write(f"[{script.name}] {line}")
          stream.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
      process.wait(timeout=script.timeout)
    except subprocess.TimeoutExpired:
      timed_out = True
      _stop(process)
    except KeyboardInterrupt:
      _stop(process)
      raise
    reader.join(timeout=30.0)
  seconds = time.perf_counter() - start
  returncode = None if timed_out else process.returncode
  result, error = None, ""
  try:
    result = result_line.find_result("\n".join(lines), script.path)
  except ValueError as parse_error:
    error = str(parse_error)
  if timed_out:
    error = f"timed out after {script.timeout:.0f} s"
  elif result is None and not error:
    error = (f"exit status {returncode}, no result line" if returncode
             else "no BENCHMARK_RESULT line")
  return Outcome(script, returncode, seconds, result, error, lines[-tail_lines:], log_path)


# --------------------------------------------------------------------------------------
# The machine and the table.
# --------------------------------------------------------------------------------------


def _read(path: str) -> str:
  try:
    with open(path) as f:
      return f.read()
  except OSError:
    return ""


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def _git(*args: str) -> str:
  try:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=10).stdout.strip()
  except (OSError, subprocess.TimeoutExpired):
    return ""


def cpu_isa(flags) -> str:
  """The vector/matrix extensions that decide which kernels run: "AVX2 + AVX-512 + AMX"."""
  names = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512"),
                                   ("amx_tile", "AMX")) if flag in flags]
  if not names and "avx" in flags:
    names = ["AVX"]
  return " + ".join(names)


def machine_info() -> Dict[str, Any]:
  """CPU model, cores, RAM, versions and commit of this machine and checkout."""
  cpuinfo = _read("/proc/cpuinfo")
  model, flags = "", set()
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(":")
    if key.strip() == "model name" and not model:
      model = value.strip()
    elif key.strip() == "flags" and not flags:
      flags = set(value.split())
  model = model or platform.processor() or platform.machine()
  simd = cpu_isa(flags)
  mem_kb = 0
  for line in _read("/proc/meminfo").splitlines():
    if line.startswith("MemTotal:"):
      mem_kb = int(line.split()[1])
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    usable = os.cpu_count() or 0
  commit = _git("rev-parse", "--short", "HEAD")
  dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
  return {
      "cpu": model or "unknown", "simd": simd, "cores": os.cpu_count() or 0,
      "usable_cores": usable, "ram_gb": round(mem_kb / 1024 ** 2, 1),
      "python": platform.python_version(), "tensorflow": _version("tensorflow"),
      "numpy": _version("numpy"), "keras": _version("keras"),
      "apache_beam": _version("apache-beam"),
      "commit": commit + (" + uncommitted changes" if dirty and commit else ""),
      "platform": platform.platform(),
  }


def format_number(value: Any) -> str:
  """A readable number: 3 significant digits, thousands separators, yes/no for checks."""
  if value is None:
    return "—"
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, str):
    return value
  magnitude = abs(value)
  if magnitude >= 1000:
    return f"{value:,.0f}"
  if magnitude >= 100:
    return f"{value:.0f}"
  if magnitude >= 10:
    return f"{value:.1f}"
  if magnitude >= 1:
    return f"{value:.2f}"
  if magnitude == 0:
    return "0"
  return f"{value:.3g}"


def _with_unit(value: Any, unit: str) -> str:
  text = format_number(value)
  return f"{text} {unit}" if unit and text != "—" else text


def _cell(text: str) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def format_target(target: Optional[Dict[str, Any]]) -> str:
  """``{"on": "ratio", "op": ">=", "threshold": 0.5}`` → ``ratio ≥ 0.5``."""
  if not target:
    return ""
  op = {"<=": "≤", ">=": "≥"}.get(target["op"], target["op"])
  threshold = target["threshold"]
  text = format_number(threshold)
  if isinstance(threshold, bool):
    return text
  # As the targets are written: "< 50 ms", "ratio ≥ 0.5", not "< 50.0 ms".
  text = f"{threshold:,g}" if abs(threshold) < 1e6 else text
  if target["on"] == "ratio":
    return f"ratio {op} {text}"
  unit = target.get("unit") or ""
  return f"{op} {text}" + (f" {unit}" if unit else "")


def table_rows(outcomes: Sequence[Outcome]) -> List[List[str]]:
  """The rows of the results table (one per measurement, one per failed script)."""
  rows = []
  for outcome in outcomes:
    name = outcome.script.name
    if outcome.result is None:
      rows.append([name, "—", "—", "—", "", f"✘ {outcome.error}"])
      continue
    for m in outcome.result["measurements"]:
      ref = m["reference"]
      reference = "—"
      if ref:
        reference = f"{ref.get('what', '')}: {_with_unit(ref.get('value'), ref.get('unit', ''))}"
      ratio = format_number(m["ratio"]) if m["ratio"] is not None else "—"
      if m["ratio"] is not None and m.get("ratio_of") not in (None, "measured / reference"):
        ratio += f" ({m['ratio_of']})"
      status = STATUS_MARKS.get(m["status"], m["status"])
      if m["note"]:
        status = f"{status}; {m['note']}" if status else m["note"]
      rows.append([f"{name}: {m['name']}", _with_unit(m["value"], m["unit"]), reference,
                   ratio, format_target(m["target"]), status])
    if outcome.error:  # a result line, but also a problem (e.g. stopped afterwards)
      rows.append([name, "—", "—", "—", "", f"✘ {outcome.error}"])
  return rows


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
  header = ["benchmark", "measured", "reference (same run)", "ratio", "target",
            "status / note"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def _load(values: Sequence[float]) -> str:
  return " / ".join(f"{v:.2f}" for v in values)


def report(outcomes: Sequence[Outcome], machine: Dict[str, Any], started: str,
           load_before: Sequence[float], load_after: Sequence[float], quick: bool,
           seconds: float) -> str:
  """The whole markdown report: machine header, table, per-script summary."""
  cpu = machine["cpu"] + (f", {machine['simd']}" if machine.get("simd") else "")
  cores = f"{machine['cores']} cores"
  if machine.get("usable_cores") and machine["usable_cores"] != machine["cores"]:
    cores += f" ({machine['usable_cores']} usable)"
  lines = [
      f"## deepbof benchmarks ({'quick smoke run' if quick else 'full run'})",
      "",
      f"- machine: {cpu}; {cores}; {machine['ram_gb']:g} GB RAM; {machine['platform']}",
      f"- software: TensorFlow {machine['tensorflow']}, Keras {machine['keras']}, "
      f"NumPy {machine['numpy']}, Apache Beam {machine['apache_beam']}, "
      f"Python {machine['python']}; commit {machine['commit'] or 'unknown'}",
      f"- date: {started}; {seconds / 60:.1f} min; load average (1/5/15 min) before "
      f"{_load(load_before)}, after {_load(load_after)}",
  ]
  if quick:
    lines.append("- quick: reduced sizes and repeats (a smoke test); a target written "
                 "for other sizes reads n/a")
  lines += ["", markdown_table(table_rows(outcomes)), "",
            "Ratios are measured / reference unless stated; on a shared machine compare "
            "ratios, not absolutes.", "", "Scripts:", ""]
  for outcome in outcomes:
    state = "ok" if outcome.ok else f"FAILED ({outcome.error})"
    args = " ".join(outcome.script.args)
    lines.append(f"- `{os.path.relpath(outcome.script.path, ROOT)}{' ' + args if args else ''}`: "
                 f"{state}, {outcome.seconds:.0f} s, exit status "
                 f"{'—' if outcome.returncode is None else outcome.returncode}; log "
                 f"{os.path.relpath(outcome.log_path, ROOT)}")
    if not outcome.ok and outcome.tail:
      lines += ["", "  ```", *("  " + l for l in outcome.tail), "  ```"]
  return "\n".join(lines) + "\n"


def run_all(scripts: Sequence[Script], output: str, log_dir: Optional[str] = None,
            quick: bool = False, stream: Optional[TextIO] = sys.stdout) -> List[Outcome]:
  """Runs the scripts one after another, writes the report and its JSON, prints it.

  Args:
    scripts: what to run, in order.
    output: the markdown report's path (the raw results go to the same path with
      ``.json``).
    log_dir: the scripts' logs (default: ``logs/`` next to ``output``).
    quick: a smoke run (said in the report).
    stream: where progress and the report are printed (None: silent).

  Returns:
    One :class:`Outcome` per script.
  """
  output = os.path.abspath(output)
  log_dir = log_dir or os.path.join(os.path.dirname(output), "logs")
  machine = machine_info()
  started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  load_before = os.getloadavg()
  start = time.perf_counter()
  outcomes = []
  for i, script in enumerate(scripts):
    if stream is not None:
      stream.write(f"\n=== [{i + 1}/{len(scripts)}] {script.name}: "
                   f"{' '.join([os.path.relpath(script.path, ROOT)] + script.args)} "
                   f"(timeout {script.timeout:.0f} s) ===\n")
      stream.flush()
    outcome = run_script(script, log_dir, stream)
    outcomes.append(outcome)
    if stream is not None:
      stream.write(f"=== {script.name}: {'ok' if outcome.ok else outcome.error}, "
                   f"{outcome.seconds:.0f} s ===\n")
  seconds = time.perf_counter() - start
  text = report(outcomes, machine, started, load_before, os.getloadavg(), quick, seconds)
  os.makedirs(os.path.dirname(output), exist_ok=True)
  with open(output, "w") as f:
    f.write(text)
  raw = {"machine": machine, "date": started, "quick": quick, "seconds": seconds,
         "load_before": load_before, "load_after": os.getloadavg(),
         "scripts": [{"name": o.script.name, "args": o.script.args,
                      "returncode": o.returncode, "seconds": o.seconds, "error": o.error,
                      "result": o.result, "log": o.log_path} for o in outcomes]}
  with open(os.path.splitext(output)[0] + ".json", "w") as f:
    json.dump(raw, f, indent=1)
  if stream is not None:
    stream.write("\n" + text + f"\n(written to {output})\n")
    stream.flush()
  return outcomes


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", default="",
                      help="comma-separated short names, e.g. frontend,serving")
  parser.add_argument("--quick", action="store_true",
                      help="smaller sizes: a smoke run; targets read n/a")
  parser.add_argument("--output", default=DEFAULT_OUTPUT,
                      help="markdown report (raw results: same name, .json)")
  parser.add_argument("--log_dir", default=None,
                      help="the scripts' logs (default: logs/ next to --output)")
  parser.add_argument("--timeout", type=float, default=None,
                      help="seconds per script (default: per script, see TIMEOUTS)")
  parser.add_argument("--bench_dir", default=HERE,
                      help="folder whose bench_*.py scripts run (default: benchmarks/)")
  parser.add_argument("--scripts", default="",
                      help="comma-separated script paths instead of --bench_dir's")
  parser.add_argument("--fail_on_miss", action="store_true",
                      help="exit status 1 also when a target is missed")
  parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
  args = parser.parse_args(argv)

  if args.scripts:
    paths = [p for p in args.scripts.split(",") if p]
  elif not os.path.isdir(args.bench_dir):
    parser.error(f"--bench_dir={args.bench_dir}: not a directory")
  else:
    paths = discover(args.bench_dir)
    if not paths:
      parser.error(f"--bench_dir={args.bench_dir}: no bench_*.py scripts")
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    parser.error(f"--scripts: no such file(s) {missing}")
  only = [n.strip() for n in args.only.split(",") if n.strip()] or None
  try:
    scripts = select(paths, only, args.quick, args.timeout)
  except ValueError as error:
    parser.error(str(error))
  if args.list:
    for script in scripts:
      print(f"{script.name:16s} {os.path.relpath(script.path, ROOT)} "
            f"{' '.join(script.args)}")
    return 0
  outcomes = run_all(scripts, args.output, args.log_dir, args.quick, stream=sys.stdout)
  failed = [o.script.name for o in outcomes if not o.ok]
  missed = [o.script.name for o in outcomes if o.result and any(
      m["status"] == "fail" for m in o.result["measurements"])]
  if failed:
    print(f"benchmarks without a result: {failed}")
  if missed:
    print(f"benchmarks with a missed target: {missed}")
  return 1 if failed or (args.fail_on_miss and missed) else 0


if __name__ == "__main__":
  sys.exit(main())
