"""deepbof-demo's step bookkeeping: skip finished steps, rerun what depends on a rerun.

The demo is a linear chain (``plan.Chain``) on the experiments' runner. The whole
chain itself runs in ``make demo`` (and its pieces in their own tests); here each step
is a tiny Python command that appends to a file, so what ran is countable.
"""

import json
import os
import sys

import pytest

from deepbof_tools.demo import cli as demo
from deepbof_tools.experiments import plan as plan_lib


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


def _run(out: str, steps, force: bool = False, output_dirs=None):
  chain = plan_lib.Chain(out)
  for name, command in steps:
    chain.add(name, command, output_dir=(output_dirs or {}).get(name))
  runner = demo.runner(chain, force)
  runner.run()
  return runner


def _chain(out: str, counter: str, force: bool = False, second: str = "b"):
  return _run(out, [("first", _step(counter, "a")), ("second", _step(counter, second)),
                    ("third", _step(counter, "c"))], force)


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
  assert stamp["deps"].keys() == {"first"}  # a step depends on every step before it
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


def test_failed_step_names_itself_its_log_and_stops_the_chain(tmp_path, capsys):
  out, counter = str(tmp_path / "out"), str(tmp_path / "ran.txt")
  with pytest.raises(SystemExit) as error:
    _run(out, [("ok", _step(counter, "a")), ("broken", _step(counter, "x", exit_code=3)),
               ("after", _step(counter, "z"))])
  message = str(error.value)
  assert "'broken' failed with exit code 3" in message
  assert os.path.join(out, "logs", "broken.log") in message
  assert "=== stage x" in capsys.readouterr().err  # the log's tail is shown
  assert _ran(counter) == ["a", "x"]  # the step after it did not run
  with open(os.path.join(out, ".stamps", "broken.json")) as f:
    assert json.load(f)["status"] == "failed"  # not a finished step
  # A rerun retries the failed step (and what follows) only.
  _run(out, [("ok", _step(counter, "a")), ("broken", _step(counter, "y")),
             ("after", _step(counter, "z"))])
  assert _ran(counter) == ["a", "x", "y", "z"]


def test_outputs_of_a_rerun_step_are_cleared_first(tmp_path):
  out, counter = str(tmp_path / "out"), str(tmp_path / "ran.txt")
  target = tmp_path / "product"
  target.mkdir()
  (target / "stale.txt").write_text("from an older run")
  _run(out, [("make", _step(counter, "a"))], output_dirs={"make": str(target)})
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


def test_demo_and_sweeps_run_the_same_commands_for_the_stages_they_share(tmp_path):
  """One definition of the chain's commands: the demo's corpus and default dataset are
  the very nodes a demo-scale sweep plans (same command, so the same stamp key)."""
  from deepbof_tf import config as config_lib
  from deepbof_tools.demo.corpus import DemoCorpusConfig
  from deepbof_tools.experiments import grids as grids_lib
  from deepbof_tools.experiments import runner as runner_lib
  out = str(tmp_path)
  demo_chain = demo.plan_demo(out, config_lib.preset("demo"),
                              num_clips=DemoCorpusConfig.num_clips,
                              clip_seconds=DemoCorpusConfig.clip_seconds, seed=0,
                              num_workers=2)
  sweep = plan_lib.plan_sweep(grids_lib.GRIDS["blocks_sampling"], out, scale="demo")
  assert demo_chain.nodes["corpus"].command == sweep.nodes["corpus"].command
  assert (runner_lib.node_key(demo_chain.nodes["corpus"])
          == runner_lib.node_key(sweep.nodes["corpus"]))
  sweep_data = sweep.nodes["data/onset-b8-seed0"]
  demo_data = demo_chain.nodes["preprocess"]
  # Both preprocess the corpus with the same flags; only the dataset directory differs.
  strip = lambda command: [a for a in command if not a.startswith("--output_dir=")]
  assert strip(demo_data.command) == strip(sweep_data.command)
  train = demo_chain.nodes["train"].command
  assert train[0] == "deepbof-train" and "--preset=demo" in train and "--seed=0" in train
  assert list(demo_chain.nodes) == ["corpus", "preprocess", "train", "evaluate",
                                    "baseline", "export"]
  assert demo_chain.nodes["export"].deps == ("corpus", "preprocess", "train", "evaluate",
                                             "baseline")
