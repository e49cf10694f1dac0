"""The benchmark result line (``benchmarks/result_line.py``) and ``make bench``'s table
(``benchmarks/run_all.py``), on fabricated results: no TensorFlow, no real benchmark."""

import json
import os
import sys
import textwrap

import numpy as np
import pytest

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "benchmarks")
sys.path.insert(0, BENCH_DIR)

import result_line  # noqa: E402
import run_all  # noqa: E402


def _outcome(name, measurements=None, error="", returncode=0, tail=()):
  result = None
  if measurements is not None:
    result = result_line.parse_line(result_line.format_line(name, measurements))
  return run_all.Outcome(run_all.Script(name, f"/x/bench_{name}.py"), returncode, 1.5,
                         result, error, list(tail), f"/x/logs/{name}.log")


# --------------------------------------------------------------------------------------
# result_line: statuses.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, target, status", [
    (42.0, "< 50", "pass"),
    (50.0, "< 50", "fail"),
    (50.0, "<= 50", "pass"),
    (39.9, ">= 40", "fail"),
    (40, ">= 40", "pass"),
    (True, "== true", "pass"),
    (False, "== true", "fail"),
    (3.0, None, "info"),
])
def test_status_of_a_value_target(value, target, status):
  m = result_line.measurement("m", value, "ms", target=target)
  assert m["status"] == status
  assert (m["target"] is None) == (target is None)


def test_status_of_a_ratio_target_uses_the_ratio_not_the_value():
  # 30 GFLOP/s against a 100 GFLOP/s reference: ratio 0.3 misses >= 0.5 although the
  # value itself would pass ">= 0.5".
  m = result_line.measurement("cd1", 30.0, "GFLOP/s", reference="matmul",
                              reference_value=100.0, target=">= 0.5", target_on="ratio")
  assert m["ratio"] == pytest.approx(0.3)
  assert m["ratio_of"] == "measured / reference"
  assert m["status"] == "fail"
  assert m["target"] == {"on": "ratio", "op": ">=", "threshold": 0.5, "unit": ""}
  assert m["reference"] == {"what": "matmul", "value": 100.0, "unit": "GFLOP/s"}
  m = result_line.measurement("cd1", 60.0, "GFLOP/s", reference="matmul",
                              reference_value=100.0, target=">= 0.5", target_on="ratio")
  assert m["status"] == "pass"


def test_target_not_applicable_reports_na_but_keeps_the_numbers():
  m = result_line.measurement("frontend", 80.0, "ms", reference="stft",
                              reference_value=20.0, target="< 50", applies=False)
  assert m["status"] == "n/a"
  assert m["value"] == 80.0 and m["ratio"] == 4.0
  assert m["target"]["threshold"] == 50.0


def test_explicit_ratio_and_what_it_divides():
  m = result_line.measurement("metrics", 20.0, "ms", reference="sklearn",
                              reference_value=400.0, ratio=400.0 / 20.0,
                              ratio_of="reference / measured", target=">= 10",
                              target_on="ratio")
  assert (m["ratio"], m["ratio_of"], m["status"]) == (20.0, "reference / measured", "pass")


def test_no_reference_means_no_ratio():
  m = result_line.measurement("corpus", 12.0, "s")
  assert m["reference"] is None and m["ratio"] is None and m["ratio_of"] is None


def test_zero_reference_gives_no_ratio_and_a_ratio_target_fails():
  m = result_line.measurement("x", 1.0, "s", reference="r", reference_value=0.0,
                              target=">= 1", target_on="ratio")
  assert m["ratio"] is None
  assert m["status"] == "fail" and "no ratio measured" in m["note"]


# --------------------------------------------------------------------------------------
# result_line: NaN, NumPy, round trip.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), np.nan])
def test_non_finite_value_becomes_null_and_cannot_pass(bad):
  m = result_line.measurement("x", bad, "ms", target="< 50", note="median")
  assert m["value"] is None
  assert m["status"] == "fail"
  assert m["note"] == "median; no value measured"
  # Not applicable stays n/a: a missing number is not a missed target there.
  assert result_line.measurement("x", bad, "ms", target="< 50",
                                 applies=False)["status"] == "n/a"


def test_nan_reference_gives_null_reference_and_ratio_and_strict_json():
  m = result_line.measurement("librosa", 12.0, "ms", reference="librosa",
                              reference_value=float("nan"))
  assert m["reference"]["value"] is None and m["ratio"] is None
  line = result_line.format_line("frontend", [m])
  assert "NaN" not in line and "Infinity" not in line
  json.loads(line[len(result_line.PREFIX):])  # strict JSON


def test_numpy_scalars_become_json_numbers_and_booleans():
  m = result_line.measurement("x", np.float32(2.5), "s", reference="r",
                              reference_value=np.float64(5.0))
  assert type(m["value"]) is float and m["ratio"] == 0.5
  check = result_line.measurement("identical", np.bool_(True), target="== true")
  assert check["value"] is True and check["status"] == "pass"


def test_values_keep_six_significant_digits():
  assert result_line.measurement("x", 1 / 3, "s")["value"] == 0.333333
  assert result_line.measurement("x", 123456789.0, "s")["value"] == 123457000.0


def test_emit_then_find_result_round_trip(capsys):
  measurements = [
      result_line.measurement("front end, 30-s clip", 21.5, "ms", reference="stft",
                              reference_value=4.3, target="< 50", note="1395x real time"),
      result_line.measurement("identical", True, target="== true"),
      result_line.measurement("librosa", float("nan"), "ms"),
  ]
  config = {"seconds": 30.0, "runs": 5, "clips": [40, 600]}
  print("human-readable output first")
  result_line.emit("frontend", measurements, config)
  print("a line after it")
  parsed = result_line.find_result(capsys.readouterr().out, "bench_frontend.py")
  assert parsed == {"benchmark": "frontend", "config": config,
                    "measurements": measurements}


def test_find_result_takes_the_last_line_and_none_without_one():
  first = result_line.format_line("a", [result_line.measurement("m", 1.0)])
  last = result_line.format_line("a", [result_line.measurement("m", 2.0)])
  assert result_line.find_result(f"{first}\nnoise\n{last}\n")["measurements"][0][
      "value"] == 2.0
  assert result_line.find_result("just text\nBENCHMARK_RESULTS are below\n") is None


def test_parse_line_fills_optional_keys():
  line = result_line.PREFIX + json.dumps(
      {"benchmark": "b", "measurements": [{"name": "m", "value": 1, "status": "info"}]})
  m = result_line.parse_line(line)["measurements"][0]
  assert m == {"name": "m", "value": 1, "unit": "", "reference": None, "ratio": None,
               "ratio_of": None, "target": None, "status": "info", "note": ""}


# --------------------------------------------------------------------------------------
# result_line: errors.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("target, message", [
    ("<50", "expected '<op> <number>'"),
    ("~ 3", "expected '<op> <number>'"),
    ("< 50 ms", "expected '<op> <number>'"),
    ("> true", "needs '=='"),
    ("< fast", "is not a number"),
    ("< nan", "must be finite"),
])
def test_malformed_target(target, message):
  with pytest.raises(ValueError, match=message):
    result_line.measurement("x", 1.0, target=target)


@pytest.mark.parametrize("kwargs, message", [
    ({"value": "12"}, "not a number"),
    ({"value": object()}, "not a number"),
    ({"value": 1.0, "target_on": "reference"}, "target_on"),
])
def test_malformed_measurement(kwargs, message):
  with pytest.raises(ValueError, match=message):
    result_line.measurement("x", **kwargs)


def _line(measurements, benchmark="b"):
  return result_line.PREFIX + json.dumps({"benchmark": benchmark,
                                          "measurements": measurements})


@pytest.mark.parametrize("line, message", [
    ('RESULT {"measurements": []}', "does not start with"),
    (result_line.PREFIX + '{"benchmark": "b", "measurements": [', "malformed JSON"),
    (result_line.PREFIX + "NaN", "no 'measurements' list"),
    (result_line.PREFIX + '{"benchmark": "b"}', "no 'measurements' list"),
    (_line([5]), "expected an object"),
    (_line([{"name": "m", "value": 1}]), r"without \['status'\]"),
    (_line([{"name": "m", "value": 1, "status": "ok"}]), "status 'ok' not in"),
    (_line([{"name": "m", "value": 1, "status": "info", "reference": "matmul"}]),
     "reference of 'm' is str"),
    (_line([{"name": "m", "value": 1, "status": "pass", "target": {"op": "<"}}]),
     "target of 'm'"),
    (_line([{"name": "m", "value": "fast", "status": "info"}]), "value of 'm'"),
])
def test_malformed_line(line, message):
  with pytest.raises(ValueError, match=message) as error:
    result_line.parse_line(line, "bench_x.py")
  assert str(error.value).startswith("bench_x.py: ")


def test_find_result_raises_on_a_malformed_last_line():
  with pytest.raises(ValueError, match="malformed JSON"):
    result_line.find_result("ok\n" + result_line.PREFIX + "{oops\n", "bench_x.py")


# --------------------------------------------------------------------------------------
# run_all: numbers, targets, rows, report.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, text", [
    (None, "—"), (True, "yes"), (False, "no"), (0, "0"), (0.5, "0.5"), (0.123456, "0.123"),
    (0.00123, "0.00123"), (0.9999, "1"), (1.234, "1.23"), (12.34, "12.3"), (123.4, "123"),
    (12345.6, "12,346"), (-2.5, "-2.50"),
])
def test_format_number(value, text):
  assert run_all.format_number(value) == text


@pytest.mark.parametrize("target, text", [
    ("< 50", "< 50 ms"), ("<= 30", "≤ 30 ms"), (">= 1024", "≥ 1,024 ms"),
    ("== true", "yes"),
])
def test_format_target_of_a_value(target, text):
  assert run_all.format_target(
      result_line.measurement("x", 1.0, "ms", target=target)["target"]) == text


def test_format_target_of_a_ratio_and_none():
  m = result_line.measurement("x", 1.0, "ms", reference="r", reference_value=2.0,
                              target=">= 1.6", target_on="ratio")
  assert run_all.format_target(m["target"]) == "ratio ≥ 1.6"
  assert run_all.format_target(None) == ""


def test_table_rows_one_per_measurement_and_one_per_failed_script():
  outcomes = [
      _outcome("frontend", [
          result_line.measurement("front end, 30-s clip", 21.5, "ms", reference="stft",
                                  reference_value=4.3, target="< 50", note="1395x"),
          result_line.measurement("batched | per clip", 10.0, "ms"),
      ]),
      _outcome("local_features", [
          result_line.measurement("CD-1 epoch", 30.0, "GFLOP/s", reference="2048² matmul",
                                  reference_value=100.0, target=">= 0.5",
                                  target_on="ratio"),
          result_line.measurement("encode", 40.0, "ms", target="<= 30", applies=False),
          result_line.measurement("metrics", 20.0, "ms", reference="sklearn",
                                  reference_value=400.0, ratio=20.0,
                                  ratio_of="reference / measured"),
      ]),
      _outcome("serving", None, error="exit status 1, no result line", returncode=1,
               tail=["Traceback (most recent call last):", "RuntimeError: boom"]),
      _outcome("song_dnn", None, error="no BENCHMARK_RESULT line"),
      _outcome("preprocess", [result_line.measurement("2 vs 1", 380.0, "x real time")],
               error="timed out after 1200 s", returncode=None),
  ]
  rows = run_all.table_rows(outcomes)
  assert [r[0] for r in rows] == [
      "frontend: front end, 30-s clip", "frontend: batched | per clip",
      "local_features: CD-1 epoch", "local_features: encode", "local_features: metrics",
      "serving", "song_dnn", "preprocess: 2 vs 1", "preprocess"]
  assert rows[0] == ["frontend: front end, 30-s clip", "21.5 ms", "stft: 4.30 ms", "5.00",
                     "< 50 ms", "✔ pass; 1395x"]
  assert rows[1][2:6] == ["—", "—", "", ""]
  assert rows[2][3:] == ["0.3", "ratio ≥ 0.5", "✘ fail"]
  assert rows[3][4:] == ["≤ 30 ms", "n/a"]
  assert rows[4][3] == "20.0 (reference / measured)"
  assert rows[5] == ["serving", "—", "—", "—", "", "✘ exit status 1, no result line"]
  assert rows[6][-1] == "✘ no BENCHMARK_RESULT line"
  assert rows[8][-1] == "✘ timed out after 1200 s"

  table = run_all.markdown_table(rows).splitlines()
  assert len(table) == 2 + len(rows)
  # Every line has the header's 6 cells: the "|" of a name is escaped.
  assert {line.replace("\\|", "").count("|") for line in table} == {7}
  assert "batched \\| per clip" in table[3]


def test_report_has_the_machine_the_table_and_the_failures():
  machine = {"cpu": "Test CPU @ 2.0GHz", "simd": "AVX2", "cores": 4, "usable_cores": 2,
             "ram_gb": 7.8, "python": "3.11.7", "tensorflow": "2.15.0", "numpy": "1.26",
             "keras": "2.15.0", "apache_beam": "2.52.0", "commit": "abc1234",
             "platform": "Linux-x86_64"}
  outcomes = [_outcome("frontend", [result_line.measurement("front end", 21.5, "ms",
                                                            target="< 50")]),
              _outcome("serving", None, error="exit status 1, no result line",
                       returncode=1, tail=["RuntimeError: boom"])]
  text = run_all.report(outcomes, machine, "2024-01-02 03:04 UTC", (1.0, 0.5, 0.25),
                        (1.5, 0.75, 0.5), quick=True, seconds=90.0)
  assert text.startswith("## deepbof benchmarks (quick smoke run)\n")
  assert ("- machine: Test CPU @ 2.0GHz, AVX2; 4 cores (2 usable); 7.8 GB RAM; "
          "Linux-x86_64") in text
  assert "TensorFlow 2.15.0" in text and "commit abc1234" in text
  assert "1.5 min; load average (1/5/15 min) before 1.00 / 0.50 / 0.25" in text
  assert "| frontend: front end | 21.5 ms | — | — | < 50 ms | ✔ pass |" in text
  assert "| serving | — | — | — |  | ✘ exit status 1, no result line |" in text
  assert "FAILED (exit status 1, no result line)" in text
  assert "  RuntimeError: boom" in text
  assert "- quick: reduced sizes and repeats (a smoke test)" in text


def test_select_only_quick_and_timeouts():
  paths = run_all.discover(BENCH_DIR)
  names = [run_all.script_name(p) for p in paths]
  assert names[:2] == ["frontend", "local_features"]  # short ones first
  assert set(names) >= {"frontend", "preprocess", "local_features", "serving",
                        "demo_corpus", "song_dnn"}
  full = {s.name: s for s in run_all.select(paths, None, quick=False, timeout=None)}
  assert full["preprocess"].timeout == run_all.TIMEOUTS["preprocess"]
  assert full["frontend"].args == [] and full["frontend"].timeout == run_all.DEFAULT_TIMEOUT
  quick = run_all.select(paths, ["serving", "frontend"], quick=True, timeout=None)
  assert [s.name for s in quick] == ["frontend", "serving"]
  assert quick[1].args == run_all.QUICK_ARGS["serving"]
  assert {s.timeout for s in quick} == {run_all.QUICK_TIMEOUT}
  assert run_all.select(paths, ["frontend"], True, 7.0)[0].timeout == 7.0
  with pytest.raises(ValueError, match=r"unknown benchmark\(s\) \['fronted'\]"):
    run_all.select(paths, ["fronted"], quick=False, timeout=None)


def test_every_quick_argument_names_a_benchmark():
  names = {run_all.script_name(p) for p in run_all.discover(BENCH_DIR)}
  assert set(run_all.QUICK_ARGS) <= names
  assert set(run_all.ORDER) == names


# --------------------------------------------------------------------------------------
# run_all end to end on fake scripts (a few short Python processes).
# --------------------------------------------------------------------------------------


def _write(directory, name, body):
  path = directory / name
  path.write_text(textwrap.dedent(body))
  return str(path)


def test_run_all_on_a_fake_bench_dir(tmp_path, capsys):
  bench = tmp_path / "bench"
  bench.mkdir()
  _write(bench, "bench_good.py", """\
      import result_line  # found through run_all's PYTHONPATH
      print("human-readable table")
      result_line.emit("good", [
          result_line.measurement("rate", 60.0, "clips/s", reference="roofline",
                                  reference_value=120.0, target=">= 40"),
          result_line.measurement("memory", 2048.0, "MB", target="< 1024")])
      """)
  _write(bench, "bench_silent.py", 'print("finished, but no result line")\n')
  _write(bench, "bench_crash.py", 'print("starting")\nraise SystemExit("crashed: no data")\n')
  _write(bench, "bench_garbled.py", 'print("BENCHMARK_RESULT {not json")\n')
  _write(bench, "helper.py", 'raise SystemExit("not a benchmark: never run")\n')
  output = tmp_path / "out" / "latest.md"

  status = run_all.main(["--bench_dir", str(bench), "--output", str(output),
                         "--timeout", "120"])
  printed = capsys.readouterr().out
  assert status == 1  # three scripts without a usable result
  assert "[good] human-readable table" in printed
  assert "benchmarks without a result: ['crash', 'garbled', 'silent']" in printed
  assert "benchmarks with a missed target: ['good']" in printed

  text = output.read_text()
  assert text in printed
  assert "| good: rate | 60.0 clips/s | roofline: 120 clips/s | 0.5 | ≥ 40 clips/s | ✔ pass |" \
      in text
  assert "| good: memory | 2,048 MB | — | — | < 1,024 MB | ✘ fail |" in text
  assert "| silent | — | — | — |  | ✘ no BENCHMARK_RESULT line |" in text
  assert "| crash | — | — | — |  | ✘ exit status 1, no result line |" in text
  assert "malformed JSON" in text and "helper" not in text
  assert "  crashed: no data" in text  # the tail of the failed script

  raw = json.loads((tmp_path / "out" / "latest.json").read_text())
  by_name = {s["name"]: s for s in raw["scripts"]}
  assert sorted(by_name) == ["crash", "garbled", "good", "silent"]
  assert by_name["good"]["result"]["measurements"][0]["status"] == "pass"
  assert by_name["crash"]["returncode"] == 1 and by_name["silent"]["returncode"] == 0
  assert (tmp_path / "out" / "logs" / "good.log").read_text().count("BENCHMARK_RESULT") == 1

  # --fail_on_miss: a missed target alone makes the run fail.
  (bench / "bench_silent.py").unlink()
  (bench / "bench_crash.py").unlink()
  (bench / "bench_garbled.py").unlink()
  assert run_all.main(["--bench_dir", str(bench), "--output", str(output)]) == 0
  assert run_all.main(["--bench_dir", str(bench), "--output", str(output),
                       "--fail_on_miss"]) == 1


def test_run_script_stops_a_script_at_its_timeout(tmp_path):
  path = _write(tmp_path, "bench_sleepy.py", """\
      import time
      print("sleeping", flush=True)
      time.sleep(60)
      """)
  outcome = run_all.run_script(run_all.Script("sleepy", path, timeout=2.0),
                               str(tmp_path / "logs"), stream=None)
  assert outcome.returncode is None and not outcome.ok
  assert outcome.error == "timed out after 2 s"
  assert outcome.seconds < 30
  assert outcome.tail == ["sleeping"]
  assert run_all.table_rows([outcome])[0][-1] == "✘ timed out after 2 s"


def test_bench_dir_errors(tmp_path, capsys):
  with pytest.raises(SystemExit):
    run_all.main(["--bench_dir", str(tmp_path / "missing")])
  assert "not a directory" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    run_all.main(["--bench_dir", str(tmp_path)])
  assert "no bench_*.py scripts" in capsys.readouterr().err


def test_cpu_isa_names_every_extension_the_kernels_depend_on():
  assert run_all.cpu_isa({"avx", "avx2", "fma"}) == "AVX2"
  assert run_all.cpu_isa({"avx2", "avx512f", "avx512bw", "amx_tile", "amx_bf16"}) == (
      "AVX2 + AVX-512 + AMX")
  assert run_all.cpu_isa({"avx", "sse4_2"}) == "AVX"
  assert run_all.cpu_isa({"sse2"}) == ""
