"""deepbof-demo's step bookkeeping: skip finished steps, rerun what depends on a rerun.

The whole chain itself runs in ``make demo`` (and its pieces in their own tests); here
each step is a tiny Python command that appends to a file, so what ran is countable.
"""

import json
import os
import sys

import pytest

from deepbof_tf import demo


def _step(counter: str, tag: str, exit_code: int = 0):
  code = (f"import sys; open({counter!r}, 'a').write({tag!r} + '\\n'); "
          f"print('=== stage {tag}', file=sys.stderr); print('table of {tag}'); "
          f"sys.exit({exit_code})")
  return [sys.executable, "-c", code]


def _ran(counter: str):
  if not os.path.exists(counter):
    return []
  with open(counter) as f:
    return f.read().split()


def _chain(out: str, counter: str, force: bool = False, second: str = "b"):
  steps = demo._Steps(out, force)
  steps.run("first", _step(counter, "a"))
  steps.run("second", _step(counter, second))
  steps.run("third", _step(counter, "c"))
  return steps


def test_second_run_skips_every_finished_step(tmp_path, capsys):
  out, counter = str(tmp_path / "out"), str(tmp_path / "ran.txt")
  first = _chain(out, counter)
  assert _ran(counter) == ["a", "b", "c"]
  assert first.skipped == []
  second = _chain(out, counter)
  assert _ran(counter) == ["a", "b", "c"]  # nothing ran again
  assert second.skipped == ["first", "second", "third"]
  assert "skipped (--force reruns it)" in capsys.readouterr().out
  with open(os.path.join(out, ".stamps", "second.json")) as f:
    stamp = json.load(f)
  assert stamp["command"] == _step(counter, "b") and len(stamp["run_id"]) == 32
  with open(os.path.join(out, "logs", "first.log")) as f:
    assert "=== stage a" in f.read()


def test_changed_step_reruns_itself_and_everything_after_it(tmp_path):
  out, counter = str(tmp_path / "out"), str(tmp_path / "ran.txt")
  _chain(out, counter)
  steps = _chain(out, counter, second="b2")
  # "third" has the same command, but its input (the second step) was redone.
  assert _ran(counter) == ["a", "b", "c", "b2", "c"]
  assert steps.skipped == ["first"]


def test_force_reruns_everything(tmp_path):
  out, counter = str(tmp_path / "out"), str(tmp_path / "ran.txt")
  _chain(out, counter)
  steps = _chain(out, counter, force=True)
  assert _ran(counter) == ["a", "b", "c", "a", "b", "c"]
  assert steps.skipped == []


def test_failed_step_names_itself_its_log_and_leaves_no_stamp(tmp_path, capsys):
  out, counter = str(tmp_path / "out"), str(tmp_path / "ran.txt")
  steps = demo._Steps(out, False)
  steps.run("ok", _step(counter, "a"))
  with pytest.raises(SystemExit) as error:
    steps.run("broken", _step(counter, "x", exit_code=3))
  message = str(error.value)
  assert "'broken' failed with exit code 3" in message
  assert os.path.join(out, "logs", "broken.log") in message
  assert "=== stage x" in capsys.readouterr().err  # the log's tail is shown
  assert not os.path.exists(os.path.join(out, ".stamps", "broken.json"))
  # A rerun retries the failed step only.
  again = demo._Steps(out, False)
  again.run("ok", _step(counter, "a"))
  again.run("broken", _step(counter, "y"))
  assert _ran(counter) == ["a", "x", "y"]


def test_outputs_of_a_rerun_step_are_cleared_first(tmp_path):
  out, counter = str(tmp_path / "out"), str(tmp_path / "ran.txt")
  target = tmp_path / "product"
  target.mkdir()
  (target / "stale.txt").write_text("from an older run")
  demo._Steps(out, False).run("make", _step(counter, "a"), outputs=[str(target)])
  assert not target.exists()


def test_step_output_is_shown_kept_and_replayed_when_skipped(tmp_path, capsys):
  out, counter = str(tmp_path / "out"), str(tmp_path / "ran.txt")
  _chain(out, counter)
  first = capsys.readouterr().out
  assert "table of a" in first and "table of c" in first
  with open(os.path.join(out, "logs", "second.out")) as f:
    assert f.read().strip() == "table of b"
  _chain(out, counter)
  second = capsys.readouterr().out
  assert _ran(counter) == ["a", "b", "c"]  # nothing ran, yet the tables are shown
  assert "third: its output then:" in second and "table of c" in second
