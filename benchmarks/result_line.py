"""The machine-readable line every benchmark script prints last, and its parser.

Each ``bench_*.py`` keeps its human-readable output and ends with exactly one line::

  BENCHMARK_RESULT {"benchmark": "frontend", "config": {...}, "measurements": [...]}

``measurements`` is a list of objects with the keys

* ``name``: what was measured (one line, no ``|``);
* ``value``, ``unit``: the measurement (a number, or a boolean for checks);
* ``reference``: ``{"what", "value", "unit"}`` measured in the same run, or ``null``;
* ``ratio``, ``ratio_of``: the ratio that survives a shared machine and what it divides
  (``"measured / reference"`` unless the script says otherwise);
* ``target``: ``{"on": "value" | "ratio", "op": one of < <= > >= ==, "threshold",
  "unit"}`` or ``null``;
* ``status``: ``"pass"``, ``"fail"``, ``"n/a"`` (a target written for other sizes than
  this run's) or ``"info"`` (no target);
* ``note``: free text, may be empty.

``benchmarks/run_all.py`` collects these lines into one table. The module has no
dependency beyond the standard library, so every script can import it.
"""

from __future__ import annotations

import json
import math
import operator
from typing import Any, Dict, List, Optional, Sequence

PREFIX = "BENCHMARK_RESULT "

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
        "==": operator.eq}
STATUSES = ("pass", "fail", "n/a", "info")
_MEASUREMENT_KEYS = ("name", "value", "unit", "reference", "ratio", "ratio_of", "target",
                     "status", "note")


def _clean(value: Any) -> Any:
  """NaN and infinities become ``None`` (JSON has neither); NumPy scalars become floats
  (NumPy booleans become booleans)."""
  if isinstance(value, bool) or value is None:
    return value
  if getattr(getattr(value, "dtype", None), "kind", "") == "b":  # numpy.bool_
    return bool(value)
  if isinstance(value, (str, bytes)):  # float("12") would pass a string as a number
    raise ValueError(f"measurement value {value!r}: not a number, boolean or None")
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"measurement value {value!r}: not a number, boolean or None") from None
  # Six significant digits: far below the run-to-run noise, and the line stays readable.
  return float(f"{number:.6g}") if math.isfinite(number) else None


def parse_target(target: str) -> tuple:
  """Splits a target such as ``">= 0.5"`` into ``(op, threshold)``.

  Args:
    target: an operator (``<``, ``<=``, ``>``, ``>=``, ``==``), a space and a number
      (or ``true``/``false`` with ``==``).

  Returns:
    ``(op, threshold)`` with ``threshold`` a float or a bool.

  Raises:
    ValueError: if the text is not of that form.
  """
  parts = target.split()
  if len(parts) != 2 or parts[0] not in _OPS:
    raise ValueError(f"target {target!r}: expected '<op> <number>' with op in {list(_OPS)}")
  op, text = parts
  if text.lower() in ("true", "false"):
    if op != "==":
      raise ValueError(f"target {target!r}: a boolean threshold needs '=='")
    return op, text.lower() == "true"
  try:
    threshold = float(text)
  except ValueError:
    raise ValueError(f"target {target!r}: threshold {text!r} is not a number") from None
  if not math.isfinite(threshold):
    raise ValueError(f"target {target!r}: the threshold must be finite")
  return op, threshold


def measurement(name: str, value: Any, unit: str = "", *,
                reference: Optional[str] = None, reference_value: Any = None,
                reference_unit: Optional[str] = None, ratio: Any = None,
                ratio_of: Optional[str] = None, target: Optional[str] = None,
                target_on: str = "value", applies: bool = True,
                note: str = "") -> Dict[str, Any]:
  """One measurement of a result line, with its status decided here.

  Args:
    name: what was measured.
    value: the measured number (or a boolean for a check).
    unit: the unit of ``value``.
    reference: what the reference is (measured in the same run), or None.
    reference_value: the reference's value.
    reference_unit: its unit (default: ``unit``).
    ratio: the ratio to report; default ``value / reference_value``.
    ratio_of: what ``ratio`` divides; default ``"measured / reference"``.
    target: e.g. ``"< 50"`` or ``">= 0.5"``; None for an informative measurement.
    target_on: ``"value"`` or ``"ratio"``: which number the target is about.
    applies: False when the run's sizes differ from those the target was written for
      (status ``"n/a"``, the numbers are still reported).
    note: free text for the table's footnotes.

  Returns:
    A JSON-ready dict with the keys listed in the module docstring.

  Raises:
    ValueError: on a malformed target or a non-numeric value.
  """
  if target_on not in ("value", "ratio"):
    raise ValueError(f"{name}: target_on={target_on!r}, expected 'value' or 'ratio'")
  value = _clean(value)
  ref = None
  if reference is not None:
    ref = {"what": reference, "value": _clean(reference_value),
           "unit": unit if reference_unit is None else reference_unit}
    if ratio is None and isinstance(value, float) and isinstance(ref["value"], float) \
        and ref["value"] != 0:
      ratio = value / ref["value"]
  ratio = _clean(ratio)
  if ratio is not None and ratio_of is None:
    ratio_of = "measured / reference"
  target_dict = None
  status = "info"
  if target is not None:
    op, threshold = parse_target(target)
    target_dict = {"on": target_on, "op": op, "threshold": threshold,
                   "unit": unit if target_on == "value" else ""}
    checked = value if target_on == "value" else ratio
    if not applies:
      status = "n/a"
    elif checked is None:
      status = "fail"  # nothing measured cannot pass
      note = (note + "; " if note else "") + f"no {target_on} measured"
    else:
      status = "pass" if _OPS[op](checked, threshold) else "fail"
  return {"name": name, "value": value, "unit": unit, "reference": ref, "ratio": ratio,
          "ratio_of": ratio_of, "target": target_dict, "status": status, "note": note}


def format_line(benchmark: str, measurements: Sequence[Dict[str, Any]],
                config: Optional[Dict[str, Any]] = None) -> str:
  """The result line (without a newline).

  Args:
    benchmark: the script's short name (``bench_frontend.py`` → ``"frontend"``).
    measurements: dicts made by :func:`measurement`.
    config: the sizes and flags of the run, for the record.
  """
  payload = {"benchmark": benchmark, "config": config or {},
             "measurements": list(measurements)}
  return PREFIX + json.dumps(payload, allow_nan=False, sort_keys=False, default=str)


def emit(benchmark: str, measurements: Sequence[Dict[str, Any]],
         config: Optional[Dict[str, Any]] = None) -> None:
  """Prints the result line (flushed: ``run_all`` reads the script's stdout live).

  Args:
    benchmark: the script's short name.
    measurements: dicts made by :func:`measurement`.
    config: the sizes and flags of the run.
  """
  print(format_line(benchmark, measurements, config), flush=True)


def _check_measurement(item: Any, where: str) -> Dict[str, Any]:
  if not isinstance(item, dict):
    raise ValueError(f"{where}: measurement is {type(item).__name__}, expected an object")
  missing = [k for k in ("name", "value", "status") if k not in item]
  if missing:
    raise ValueError(f"{where}: measurement without {missing}")
  if item["status"] not in STATUSES:
    raise ValueError(f"{where}: status {item['status']!r} not in {STATUSES}")
  reference, target = item.get("reference"), item.get("target")
  if reference is not None and not isinstance(reference, dict):
    raise ValueError(f"{where}: reference of {item['name']!r} is "
                     f"{type(reference).__name__}, expected an object or null")
  if target is not None and not (isinstance(target, dict)
                                 and {"on", "op", "threshold"} <= target.keys()):
    raise ValueError(f"{where}: target of {item['name']!r} is {target!r}, expected an "
                     "object with 'on', 'op' and 'threshold', or null")
  for key in ("value", "ratio"):
    number = item.get(key)
    if number is not None and not isinstance(number, (bool, int, float)):
      raise ValueError(f"{where}: {key} of {item['name']!r} is {number!r}, expected a "
                       "number, a boolean or null")
  return {k: item.get(k) for k in _MEASUREMENT_KEYS} | {
      "unit": item.get("unit") or "", "note": item.get("note") or ""}


def parse_line(line: str, where: str = "result line") -> Dict[str, Any]:
  """Parses one result line.

  Args:
    line: a line starting with ``BENCHMARK_RESULT ``.
    where: a name for error messages (e.g. the script's path).

  Returns:
    ``{"benchmark", "config", "measurements"}`` with every measurement's keys filled.

  Raises:
    ValueError: if the line does not start with the prefix or its JSON is malformed.
  """
  line = line.strip()
  if not line.startswith(PREFIX):
    raise ValueError(f"{where}: does not start with {PREFIX.strip()!r}")
  try:
    payload = json.loads(line[len(PREFIX):])
  except json.JSONDecodeError as error:
    raise ValueError(f"{where}: malformed JSON in the result line ({error})") from None
  if not isinstance(payload, dict) or not isinstance(payload.get("measurements"), list):
    raise ValueError(f"{where}: the result line holds no 'measurements' list")
  return {"benchmark": str(payload.get("benchmark", "")),
          "config": payload.get("config") or {},
          "measurements": [_check_measurement(m, where) for m in payload["measurements"]]}


def find_result(output: str, where: str = "output") -> Optional[Dict[str, Any]]:
  """The last result line in a script's output, parsed; None if there is none.

  Args:
    output: the script's whole stdout (and stderr).
    where: a name for error messages.

  Raises:
    ValueError: if the last result line is malformed.
  """
  lines: List[str] = [l for l in output.splitlines() if l.startswith(PREFIX)]
  return parse_line(lines[-1], where) if lines else None
