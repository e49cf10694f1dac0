"""deepbof_tools.experiments: the grids' cells, the DAG of commands and what it shares, the
runner's stamps / staleness / failures on fake commands, results.csv, results.md and
the box plots from fabricated metrics, and the deepbof-experiment command line.

Nothing here trains: the runner runs tiny Python commands, and the metrics a sweep's
``deepbof-train --stages=...,evaluate`` would write are fabricated.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import stat
import subprocess
import sys
import uuid

import numpy as np
import pytest
from absl import app

from deepbof_tf import config as config_lib
from deepbof_tools.experiments import cli
from deepbof_tools.experiments import figures
from deepbof_tools.experiments import grids as grids_lib
from deepbof_tools.experiments import plan as plan_lib
from deepbof_tools.experiments import results as results_lib
from deepbof_tools.experiments import runner as runner_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRAIN_STAGES = (plan_lib.LEARN_LOCAL_FEATURES, plan_lib.ENCODE, plan_lib.SONG_LEVEL)

# What the paper's figures vary (Figs. 4–8): the grids must have exactly these cells.
EXPECTED_CELLS = {"blocks_sampling": 10, "layers_init": 6, "sparsity_pooling": 20,
                  "weight_cost": 27}
EXPECTED_VARIED = {
    "blocks_sampling": {"sampling", "block_frames"},
    "layers_init": {"num_hidden_layers", "init"},
    "sparsity_pooling": {"sparsity_target", "pool_frames"},
    "weight_cost": {"weight_costs"},
}
# The stored flags of a demo sweep with two seeds (DIR/sweeps.json, cli._sweep_args).
ARGS = {"scale": "demo", "seeds": [0, 1], "manifest": None, "manifest_format": "csv",
        "audio_root": "", "num_workers": 2, "preprocess_args": [], "train_args": []}


def _flags(command):
  """The ``--name=value`` arguments of a command as a dict."""
  return dict(a[2:].split("=", 1) for a in command if a.startswith("--") and "=" in a)


def _nodes(plan, stage):
  return [n for n in plan.nodes.values() if n.stage == stage]


# --- grids -----------------------------------------------------------------------


def test_every_grid_has_the_papers_cells():
  assert set(grids_lib.GRIDS) == set(EXPECTED_CELLS)
  default = grids_lib.Settings()
  for name, count in EXPECTED_CELLS.items():
    grid = grids_lib.grid(name)
    assert grid.name == name
    assert len(grid.cells) == count, name
    assert len({c.settings for c in grid.cells}) == count, name
    assert len({c.label for c in grid.cells}) == count, name
    # Only the grid's own knobs move; everything else stays the default.
    varied = {f.name for f in dataclasses.fields(grids_lib.Settings)
              if len({getattr(c.settings, f.name) for c in grid.cells}) > 1}
    assert varied == EXPECTED_VARIED[name], name
    fixed = {f.name for f in dataclasses.fields(grids_lib.Settings)} - varied
    for cell in grid.cells:
      for field in fixed:
        assert getattr(cell.settings, field) == getattr(default, field), (name, field)


def test_grid_values_are_the_papers():
  def values(name, *fields):
    return {tuple(getattr(c.settings, f) for f in fields)
            for c in grids_lib.grid(name).cells}

  assert values("blocks_sampling", "sampling", "block_frames") == set(
      itertools.product(("onset", "random"), (2, 4, 6, 8, 10)))
  assert values("layers_init", "num_hidden_layers", "init") == set(
      itertools.product((1, 2, 3), ("pretrained", "random")))
  assert values("sparsity_pooling", "sparsity_target", "pool_frames") == set(
      itertools.product((0.007, 0.01, 0.02, 0.03), (11, 22, 43, 86, 172)))
  weights = (0.001, 0.01, 0.1)
  assert values("weight_cost", "weight_costs") == {
      (c,) for c in itertools.product(weights, repeat=3)}
  by_label = {c.label: c.settings.weight_costs
              for c in grids_lib.grid("weight_cost").cells}
  assert by_label["WC 0.001/0.01/0.1"] == (0.001, 0.01, 0.1)
  assert by_label["WC 0.1/0.01/0.001"] == (0.1, 0.01, 0.001)
  assert {by_label[f"WC {w:g}"] for w in weights} == {(w, w, w) for w in weights}
  # The families the paper compares: the authors' WC Inc loop (0.001 at the bottom,
  # non-decreasing upward), its mirror WC Dec, the uniform settings, all 27.
  families = grids_lib.WEIGHT_COST_FAMILIES
  assert set(families["WC Inc"]) == {
      (0.001, 0.001, 0.001), (0.001, 0.001, 0.01), (0.001, 0.001, 0.1),
      (0.001, 0.01, 0.01), (0.001, 0.01, 0.1), (0.001, 0.1, 0.1)}
  assert set(families["WC Dec"]) == {tuple(reversed(c)) for c in families["WC Inc"]}
  assert set(families["uniform"]) == {(w, w, w) for w in weights}
  assert len(families["all"]) == 27
  # The pooling windows are 0.25 … 4 s at the frontend's frame rate.
  frame_rate = config_lib.FrontendConfig().frame_rate
  seconds = sorted({c.settings.pool_seconds
                    for c in grids_lib.grid("sparsity_pooling").cells})
  np.testing.assert_allclose(seconds, np.array([11, 22, 43, 86, 172]) / frame_rate)
  np.testing.assert_allclose(seconds, [0.25, 0.5, 1.0, 2.0, 4.0], rtol=0.03)


def test_default_settings_are_the_authors_and_a_cell_of_every_grid():
  default = grids_lib.Settings()
  assert (default.sampling, default.block_frames) == ("onset", 8)
  assert (default.sparsity_target, default.pool_frames) == (0.02, 86)  # the authors' final script
  assert (default.num_hidden_layers, default.init) == (3, "pretrained")
  assert default.weight_costs == (0.001, 0.01, 0.1)
  # ... and they are deepbof_tf.config's, not a copy that could drift.
  assert default.sampling == config_lib.SamplingConfig().scheme
  assert default.block_frames == config_lib.SamplingConfig().block_frames
  assert default.sparsity_target == config_lib.LocalFeatureConfig().rbm.sparsity_target
  assert default.pool_frames == config_lib.LocalFeatureConfig().pooling.pool_frames
  assert default.num_hidden_layers == config_lib.DNNConfig().num_hidden_layers
  assert default.init == config_lib.DNNConfig().init
  assert default.weight_costs == tuple(config_lib.PretrainConfig().weight_costs)
  # Every grid can hold the default (each varies knobs the default takes a value of),
  # and results.md's Δ column needs it as the reference: it is a cell of all of them.
  for grid in grids_lib.GRIDS.values():
    matches = [c for c in grid.cells if c.settings == default]
    assert len(matches) == 1, grid.name


@pytest.mark.parametrize("kwargs", [
    {"sampling": "uniform"}, {"init": "xavier"}, {"block_frames": 0},
    {"pool_frames": 0}, {"num_hidden_layers": 0}, {"sparsity_target": 0.0},
    {"sparsity_target": 1.0}, {"weight_costs": (0.01, 0.1)},
    {"num_hidden_layers": 4},  # 3 default weight costs for 4 layers
])
def test_bad_settings_raise(kwargs):
  with pytest.raises(ValueError):
    grids_lib.Settings(**kwargs)


def test_unknown_grid_lists_the_known_ones():
  with pytest.raises(ValueError, match="fig9") as info:
    grids_lib.grid("fig9")
  for name in grids_lib.GRIDS:
    assert name in str(info.value)


def test_bad_grids_raise():
  cell = grids_lib.Cell("a", grids_lib.Settings())
  other = grids_lib.Cell("a", grids_lib.Settings(init="random"))
  same = grids_lib.Cell("b", grids_lib.Settings())
  with pytest.raises(ValueError, match="duplicate cell labels"):
    grids_lib.Grid("g", "Fig. 0", "?", ("init",), "init", None, (cell, other))
  with pytest.raises(ValueError, match="same settings"):
    grids_lib.Grid("g", "Fig. 0", "?", ("init",), "init", None, (cell, same))
  with pytest.raises(ValueError, match="unknown factor"):
    grids_lib.Grid("g", "Fig. 0", "?", ("depth",), "init", None, (cell,))


# --- plan ------------------------------------------------------------------------


@pytest.mark.parametrize("grid_name, shared", [
    # corpus, preprocess, learn-local-features, encode (per seed); song level = cells
    ("blocks_sampling", (1, 10, 10, 10)),
    ("layers_init", (1, 1, 1, 1)),
    ("sparsity_pooling", (1, 1, 4, 20)),
    ("weight_cost", (1, 1, 1, 1)),
])
def test_plan_shares_common_stages(tmp_path, grid_name, shared):
  grid = grids_lib.grid(grid_name)
  for seeds in ((0,), (0, 1)):
    plan = plan_lib.plan_sweep(grid, str(tmp_path), seeds=seeds)
    corpus, *per_seed = shared
    expected = dict(zip(plan_lib.STAGES, [corpus, *(n * len(seeds) for n in per_seed),
                                          len(grid.cells) * len(seeds)]))
    assert plan.counts() == expected, seeds
    assert len(plan.cells) == len(grid.cells) * len(seeds)
    # Seed-major: a whole pass over the grid before the next seed.
    assert [r.seed for r in plan.cells] == [s for s in seeds for _ in grid.cells]
    assert [r.cell for r in plan.cells] == list(grid.cells) * len(seeds)


@pytest.mark.parametrize("grid_name", sorted(EXPECTED_CELLS))
def test_plan_orders_parents_first_and_commands_carry_the_settings(tmp_path, grid_name):
  grid = grids_lib.grid(grid_name)
  plan = plan_lib.plan_sweep(grid, str(tmp_path), seeds=(0, 1))
  position = {name: i for i, name in enumerate(plan.nodes)}
  for name, node in plan.nodes.items():
    assert node.name == name
    for dep in node.deps:
      assert position[dep] < position[name], (dep, name)
  dirs = [n.output_dir for n in plan.nodes.values()]
  assert len(set(dirs)) == len(dirs)
  assert all(d.startswith(str(tmp_path) + os.sep) for d in dirs)

  preset = config_lib.preset("demo")
  corpus_dir = os.path.join(str(tmp_path), "corpus")
  for run in plan.cells:
    s = run.cell.settings
    song = plan.nodes[run.node]
    encode = plan.nodes[song.deps[0]]
    local = plan.nodes[encode.deps[0]]
    data = plan.nodes[local.deps[0]]
    corpus = plan.nodes[data.deps[0]]
    assert [n.stage for n in (corpus, data, local, encode, song)] == list(plan_lib.STAGES)
    assert run.model_dir == song.output_dir
    assert corpus.deps == ()

    flags = _flags(data.command)
    assert data.command[0] == "deepbof-preprocess"
    assert flags["sampling"] == s.sampling
    assert int(flags["block_frames"]) == s.block_frames
    assert int(flags["seed"]) == run.seed
    assert int(flags["num_blocks"]) == preset.num_blocks
    assert flags["output_dir"] == data.output_dir
    assert flags["manifest"] == os.path.join(corpus_dir, "annotations_final.csv")
    assert flags["manifest_format"] == "mtt"
    assert flags["audio_root"] == os.path.join(corpus_dir, "audio")
    assert flags["runner"] == "DirectRunner"

    for node in (local, encode, song):
      flags = _flags(node.command)
      assert node.command[0] == "deepbof-train"
      assert flags["data_dir"] == data.output_dir
      assert flags["model_dir"] == node.output_dir
      assert flags["preset"] == "demo"
      assert int(flags["seed"]) == run.seed
      assert float(flags["sparsity_target"]) == s.sparsity_target
      assert "--overwrite" in node.command
    assert _flags(local.command)["stages"] == "learn-local-features"
    assert _flags(encode.command)["stages"] == "encode"
    assert int(_flags(encode.command)["pool_frames"]) == s.pool_frames
    flags = _flags(song.command)
    assert flags["stages"] == "pretrain,finetune,evaluate"
    assert int(flags["pool_frames"]) == s.pool_frames
    assert int(flags["num_hidden_layers"]) == s.num_hidden_layers
    assert flags["init"] == s.init
    assert tuple(float(w) for w in flags["weight_costs"].split(",")) == s.weight_costs

    # A node gets copies of its parent's files, inside its own directory.
    for node, parent in ((encode, local), (song, encode)):
      assert node.copies and node.resumable
      for source, destination in node.copies:
        assert source.startswith(parent.output_dir + os.sep)
        assert destination.startswith(node.output_dir + os.sep)
        assert os.path.basename(source) == os.path.basename(destination)


def test_grids_in_one_directory_share_nodes(tmp_path):
  nodes = {}
  shared = set()
  default_models = set()
  for name in grids_lib.GRIDS:
    plan = plan_lib.plan_sweep(grids_lib.grid(name), str(tmp_path), seeds=(0, 1))
    for node_name, node in plan.nodes.items():
      if node_name in nodes:
        assert nodes[node_name] == node, node_name  # same command, deps and copies
        shared.add(node_name)
      nodes[node_name] = node
    default_models |= {r.node for r in plan.cells
                       if r.cell.settings == grids_lib.Settings() and r.seed == 0}
  # The default model is one node trained once for all five figures.
  assert len(default_models) == 1
  assert default_models <= shared
  assert "corpus" in shared and "data/onset-b8-seed0" in shared
  dirs = [n.output_dir for n in nodes.values()]
  assert len(set(dirs)) == len(dirs)


def test_plan_with_a_manifest_has_no_corpus(tmp_path):
  grid = grids_lib.grid("layers_init")
  with pytest.raises(ValueError, match="--manifest"):
    plan_lib.plan_sweep(grid, str(tmp_path), scale="paper")
  source = plan_lib.DataSource(str(tmp_path / "mtt" / "annotations_final.csv"), "mtt",
                               str(tmp_path / "mtt" / "audio"))
  for scale in plan_lib.SCALES:
    plan = plan_lib.plan_sweep(grid, str(tmp_path), scale=scale, source=source)
    assert plan.counts()[plan_lib.CORPUS] == 0
    for node in _nodes(plan, plan_lib.PREPROCESS):
      flags = _flags(node.command)
      assert node.deps == ()
      assert flags["manifest"] == source.manifest
      assert flags["manifest_format"] == source.manifest_format
      assert flags["audio_root"] == source.audio_root
      assert int(flags["num_blocks"]) == config_lib.preset(scale).num_blocks
    for stage in TRAIN_STAGES:
      for node in _nodes(plan, stage):
        assert _flags(node.command)["preset"] == scale


def test_plan_extra_args_and_bad_arguments(tmp_path):
  grid = grids_lib.grid("weight_cost")
  plan = plan_lib.plan_sweep(grid, str(tmp_path), preprocess_args=(
      "--runner=DataflowRunner", "--top_n_tags=10"), train_args=("--set=a.b=1",))
  for node in _nodes(plan, plan_lib.PREPROCESS):
    assert node.command[-2:] == ("--runner=DataflowRunner", "--top_n_tags=10")
    assert not any(a.startswith("--direct_") for a in node.command)
  for stage in TRAIN_STAGES:
    for node in _nodes(plan, stage):
      assert node.command[-1] == "--set=a.b=1"
  with pytest.raises(ValueError, match="scale"):
    plan_lib.plan_sweep(grid, str(tmp_path), scale="huge")
  for seeds in ((), (1, 1)):
    with pytest.raises(ValueError, match="seeds"):
      plan_lib.plan_sweep(grid, str(tmp_path), seeds=seeds)


# --- runner ----------------------------------------------------------------------


def _order(tmp_path):
  path = tmp_path / "order.txt"
  return path.read_text().split() if path.exists() else []


def _python(tmp_path, name, body="", exit_code=0):
  """A command that appends ``name`` to order.txt, runs ``body`` and exits."""
  code = "\n".join([
      "import os, sys",
      f"open({str(tmp_path / 'order.txt')!r}, 'a').write({name!r} + '\\n')",
      body,
      f"sys.exit({exit_code})"])
  return (sys.executable, "-c", code)


def _fake_tool(tmp_path):
  """An executable standing in for a ``deepbof-*`` console script."""
  path = tmp_path / "fake_tool.py"
  path.write_text("\n".join([
      f"#!{sys.executable}",
      "import os, sys",
      "flags = dict(a[2:].split('=', 1) for a in sys.argv[1:])",
      "open(flags['order'], 'a').write(flags['name'] + '\\n')",
      "os.makedirs(flags['out'], exist_ok=True)",
      "open(os.path.join(flags['out'], 'done.txt'), 'w').write('ok')",
      "print('DEEPBOF_TEST_VAR=' + os.environ.get('DEEPBOF_TEST_VAR', ''))",
      "print('TF_CPP_MIN_LOG_LEVEL=' + os.environ.get('TF_CPP_MIN_LOG_LEVEL', ''))",
      ""]))
  path.chmod(path.stat().st_mode | stat.S_IXUSR)

  def resolve(name):
    if name == "deepbof-fake-tool":
      return str(path)
    raise FileNotFoundError(f"console script {name!r} not found")
  return resolve


def _hand_plan(tmp_path, fail_a=False):
  """a → b → c (b copies a's file in; c is a ``deepbof-*`` tool) and an unrelated d,
  listed a, d, b, c."""
  out = str(tmp_path / "sweep")
  a_dir, b_dir, c_dir, d_dir = (os.path.join(out, "nodes", n) for n in "abcd")
  a = plan_lib.Node("stage-a/a", plan_lib.PREPROCESS, _python(tmp_path, "a", "\n".join([
      "print('boom: a fails')" if fail_a else "",
      f"os.makedirs({a_dir!r}, exist_ok=True)",
      f"open(os.path.join({a_dir!r}, 'data.txt'), 'w').write('A')"]),
      exit_code=3 if fail_a else 0), a_dir)
  b = plan_lib.Node("b", plan_lib.LEARN_LOCAL_FEATURES, _python(tmp_path, "b", "\n".join([
      # Fails unless the runner copied a's file in before running the command.
      f"data = open(os.path.join({b_dir!r}, 'in', 'data.txt')).read()",
      f"open(os.path.join({b_dir!r}, 'result.txt'), 'w').write(data + 'B')",
      "print('hello from b')"])), b_dir, deps=(a.name,),
      copies=((os.path.join(a_dir, "data.txt"), os.path.join(b_dir, "in", "data.txt")),))
  c = plan_lib.Node("c", plan_lib.ENCODE, (
      "deepbof-fake-tool", "--name=c", f"--out={c_dir}",
      f"--order={tmp_path / 'order.txt'}"), c_dir, deps=(b.name,))
  d = plan_lib.Node("d", plan_lib.CORPUS, _python(tmp_path, "d", "\n".join([
      f"os.makedirs({d_dir!r}, exist_ok=True)",
      f"open(os.path.join({d_dir!r}, 'd.txt'), 'w').write('D')"])), d_dir)
  return plan_lib.Plan(grids_lib.grid("layers_init"), out, "demo", (0,),
                       {n.name: n for n in (a, d, b, c)}, [])


def _replace_node(plan, name, **changes):
  nodes = dict(plan.nodes)
  nodes[name] = dataclasses.replace(nodes[name], **changes)
  return dataclasses.replace(plan, nodes=nodes)


def _runner(tmp_path, plan, lines, **kwargs):
  return runner_lib.Runner(plan, resolve=_fake_tool(tmp_path), echo=lines.append,
                           **kwargs)


def test_runner_runs_in_order_stamps_logs_and_skips_when_up_to_date(tmp_path):
  plan = _hand_plan(tmp_path)
  lines = []
  outcome = _runner(tmp_path, plan, lines, env={
      "DEEPBOF_TEST_VAR": "from-runner", "TF_CPP_MIN_LOG_LEVEL": "0"}).run()
  assert outcome == {name: runner_lib.DONE for name in plan.nodes}
  assert _order(tmp_path) == ["a", "d", "b", "c"]
  assert (tmp_path / "sweep" / "nodes" / "b" / "result.txt").read_text() == "AB"
  assert (tmp_path / "sweep" / "nodes" / "c" / "done.txt").read_text() == "ok"
  assert "finished: 4 ran, 0 up to date, 0 failed, 0 blocked" in lines[-1]

  stamps = runner_lib.Stamps(plan.output_dir)
  run_ids = {}
  for name, node in plan.nodes.items():
    stamp = stamps.read(name)
    assert stamp["status"] == runner_lib.DONE
    assert stamp["key"] == runner_lib.node_key(node)
    assert stamp["command"] == list(node.command)
    assert stamp["deps"] == {dep: run_ids[dep] for dep in node.deps}
    assert stamps.status(node) == runner_lib.DONE
    run_ids[name] = stamp["run_id"]
  assert os.path.exists(os.path.join(plan.output_dir, ".stamps", "stage-a", "a.json"))

  log_b = open(stamps.log_path("b")).read()
  assert log_b.startswith("$ " + sys.executable)
  assert "hello from b" in log_b
  log_c = open(stamps.log_path("c")).read()
  assert log_c.startswith("$ " + str(tmp_path / "fake_tool.py"))  # resolved
  assert "DEEPBOF_TEST_VAR=from-runner" in log_c
  assert "TF_CPP_MIN_LOG_LEVEL=0" in log_c  # env overrides the runner's default

  lines = []
  outcome = _runner(tmp_path, plan, lines).run()
  assert outcome == {name: runner_lib.UP_TO_DATE for name in plan.nodes}
  assert _order(tmp_path) == ["a", "d", "b", "c"]  # nothing ran again
  assert "4 nodes, 4 up to date" in lines[0]
  assert "finished: 0 ran, 4 up to date" in lines[-1]
  assert {n: stamps.read(n)["run_id"] for n in plan.nodes} == run_ids


def test_runner_reruns_a_changed_node_and_its_children(tmp_path):
  plan = _hand_plan(tmp_path)
  assert set(_runner(tmp_path, plan, []).run().values()) == {runner_lib.DONE}
  stamps = runner_lib.Stamps(plan.output_dir)
  before = {n: stamps.read(n)["run_id"] for n in plan.nodes}

  b = plan.nodes["b"]
  changed = _replace_node(plan, "b", command=b.command + ("--changed",))
  assert stamps.status(changed.nodes["b"]) == runner_lib.STALE
  lines = []
  outcome = _runner(tmp_path, changed, lines).run()
  assert outcome == {"stage-a/a": runner_lib.UP_TO_DATE, "d": runner_lib.UP_TO_DATE,
                     "b": runner_lib.DONE, "c": runner_lib.DONE}
  assert _order(tmp_path) == ["a", "d", "b", "c", "b", "c"]
  # c's stamp still named b's old run id before the run: it is not up to date.
  assert "4 nodes, 2 up to date" in lines[0]
  assert "finished: 2 ran, 2 up to date, 0 failed, 0 blocked" in lines[-1]
  after = {n: stamps.read(n)["run_id"] for n in plan.nodes}
  assert after["stage-a/a"] == before["stage-a/a"] and after["d"] == before["d"]
  assert after["b"] != before["b"] and after["c"] != before["c"]
  assert stamps.read("c")["deps"] == {"b": after["b"]}

  # Other copies change the key as much as another command does.
  moved = dataclasses.replace(b, copies=((b.copies[0][0], b.copies[0][1] + ".2"),))
  assert runner_lib.node_key(moved) != runner_lib.node_key(b)

  outcome = _runner(tmp_path, changed, [], force=True).run()
  assert outcome == {name: runner_lib.DONE for name in plan.nodes}
  assert _order(tmp_path)[6:] == ["a", "d", "b", "c"]
  assert all(stamps.read(n)["run_id"] != after[n] for n in plan.nodes)


def test_runner_clears_output_dirs_unless_resumable(tmp_path):
  plan = _hand_plan(tmp_path)
  plan = _replace_node(plan, "d", resumable=True)
  for name in ("stage-a/a", "d"):
    os.makedirs(plan.nodes[name].output_dir)
    open(os.path.join(plan.nodes[name].output_dir, "partial.txt"), "w").close()
  _runner(tmp_path, plan, []).run()
  # A pending resumable node keeps an interrupted run's files; others start clean.
  assert not os.path.exists(os.path.join(plan.nodes["stage-a/a"].output_dir,
                                         "partial.txt"))
  assert os.path.exists(os.path.join(plan.nodes["d"].output_dir, "partial.txt"))
  # A stale resumable node starts clean too.
  stale = _replace_node(plan, "d", command=plan.nodes["d"].command + ("--changed",))
  _runner(tmp_path, stale, []).run()
  assert not os.path.exists(os.path.join(plan.nodes["d"].output_dir, "partial.txt"))
  assert os.path.exists(os.path.join(plan.nodes["d"].output_dir, "d.txt"))


def test_runner_records_failures_blocks_children_and_goes_on(tmp_path):
  plan = _hand_plan(tmp_path, fail_a=True)
  lines = []
  runner = _runner(tmp_path, plan, lines)
  outcome = runner.run()
  assert outcome == {"stage-a/a": runner_lib.FAILED, "d": runner_lib.DONE,
                     "b": runner_lib.BLOCKED, "c": runner_lib.BLOCKED}
  assert _order(tmp_path) == ["a", "d"]
  assert [(f.node, f.status, f.exit_code) for f in runner.failures] == [
      ("stage-a/a", runner_lib.FAILED, 3), ("b", runner_lib.BLOCKED, None),
      ("c", runner_lib.BLOCKED, None)]
  assert "stage-a/a" in runner.failures[1].reason and "b" in runner.failures[2].reason
  assert "finished: 1 ran, 0 up to date, 1 failed, 2 blocked" in lines[-1]

  stamps = runner_lib.Stamps(plan.output_dir)
  stamp = stamps.read("stage-a/a")
  assert stamp["status"] == runner_lib.FAILED and stamp["exit_code"] == 3
  assert stamps.status(plan.nodes["stage-a/a"]) == runner_lib.FAILED
  assert stamps.read("b") is None and stamps.read("c") is None
  assert "boom: a fails" in open(stamp["log"]).read()

  # A failed node is retried by the next run; the unrelated one is not.
  fixed = _hand_plan(tmp_path)
  outcome = _runner(tmp_path, fixed, []).run()
  assert outcome == {"stage-a/a": runner_lib.DONE, "d": runner_lib.UP_TO_DATE,
                     "b": runner_lib.DONE, "c": runner_lib.DONE}


def test_runner_missing_console_script_fails_the_node(tmp_path):
  with pytest.raises(FileNotFoundError, match="deepbof-no-such-tool"):
    runner_lib.resolve_script("deepbof-no-such-tool")
  plan = _hand_plan(tmp_path)
  plan = _replace_node(plan, "c", command=("deepbof-no-such-tool", "--x=1"))
  runner = _runner(tmp_path, plan, [])
  assert runner.run()["c"] == runner_lib.FAILED
  assert runner.failures[0].exit_code == 127
  assert "deepbof-no-such-tool" in open(runner.stamps.log_path("c")).read()


# --- results and figures ---------------------------------------------------------

TAGS = ("rock", "piano", "beat", "quiet", "vocal", "choir")


def test_results_module_does_not_import_tensorflow():
  # Reading a sweep's results needs no TensorFlow: the model directory's names it
  # reads come from deepbof_tf.config, not from the training modules.
  code = ("import deepbof_tools.experiments.results, sys; "
          "assert 'tensorflow' not in sys.modules")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  assert result.returncode == 0, result.stderr
  assert results_lib.FINETUNE_DIR == "finetune"
  assert results_lib.HISTORY_FILE == "history.json"


def _metrics(rng):
  """A metrics.json as deepbof-train's evaluate stage writes it (NaN → null)."""
  per_tag = {tag: {"roc_auc": float(rng.uniform(0.5, 0.95)),
                   "pr_auc": float(rng.uniform(0.1, 0.6)), "positives": 3}
             for tag in TAGS}
  per_tag["silence"] = {"roc_auc": None, "pr_auc": None, "positives": 0}  # one class
  aucs = [v["roc_auc"] for v in per_tag.values() if v["roc_auc"] is not None]
  top = {name: float(rng.uniform(0.2, 0.9)) for name in results_lib.METRICS}
  top["auc_tag"] = float(np.mean(aucs))
  return {"split": "test", "method": "DNN", **top, "per_tag": per_tag,
          "num_clips": 40, "num_tags": len(per_tag),
          "baselines": {results_lib.BASELINE: {"auc_tag": float(rng.uniform(0.5, 0.9)),
                                               "pr_auc": float(rng.uniform(0.1, 0.5))}}}


def _run(plan, label, seed):
  return next(r for r in plan.cells if r.cell.label == label and r.seed == seed)


def _fabricate(output_dir, rng, failed=(), missing=(), no_metrics=(), stale=()):
  """The layers_init sweep of ARGS in ``output_dir`` as a run would leave it: stamps
  of every node (``failed`` ones failed, ``missing`` ones never run, ``stale`` ones
  under another command) and a metrics.json per finished model."""
  plan = cli.make_plan("layers_init", output_dir, ARGS)
  stamps = runner_lib.Stamps(output_dir)
  run_ids = {}
  for name, node in plan.nodes.items():
    if name in missing:
      continue
    record = {"key": "other" if name in stale else runner_lib.node_key(node),
              "command": list(node.command), "seconds": 1.0,
              "deps": {dep: run_ids.get(dep) for dep in node.deps},
              "log": stamps.log_path(name)}
    if name in failed:
      stamps.write(name, dict(record, status=runner_lib.FAILED, exit_code=1))
      continue
    run_ids[name] = uuid.uuid4().hex
    stamps.write(name, dict(record, status=runner_lib.DONE, run_id=run_ids[name]))
  written = {}
  for run in plan.cells:
    if run.node in no_metrics:
      continue
    written[run.node] = _metrics(rng)
    os.makedirs(run.model_dir, exist_ok=True)
    with open(os.path.join(run.model_dir, "metrics.json"), "w") as f:
      json.dump(written[run.node], f)
  return plan, written


@pytest.fixture
def sweep(tmp_path, rng):
  """A layers_init sweep (seeds 0, 1) where "2 layers, random" never finished (seed 0
  failed, seed 1 not run), "1 layer, pretrained" seed 1 left no metrics.json and
  "3 layers, random" seed 1 is stale."""
  output_dir = str(tmp_path / "sweep")
  plan = cli.make_plan("layers_init", output_dir, ARGS)
  odd = {"failed": _run(plan, "2 layers, random", 0),
         "not run": _run(plan, "2 layers, random", 1),
         "no metrics.json": _run(plan, "1 layer, pretrained", 1),
         "stale": _run(plan, "3 layers, random", 1)}
  plan, written = _fabricate(output_dir, rng, failed={odd["failed"].node},
                             missing={odd["not run"].node},
                             no_metrics={odd["no metrics.json"].node},
                             stale={odd["stale"].node})
  return plan, written, {run.node: status for status, run in odd.items()}


def test_collect_reads_stamps_and_metrics(sweep):
  plan, written, odd = sweep
  results = results_lib.collect(plan)
  assert [r.run for r in results] == plan.cells
  for result in results:
    expected = odd.get(result.run.node, results_lib.OK)
    assert result.status == expected, result.run.cell.label
    if expected == results_lib.OK:
      assert result.metrics == written[result.run.node]
      per_tag = written[result.run.node]["per_tag"]
      assert result.per_tag_auc() == {t: per_tag[t]["roc_auc"] for t in TAGS}
    else:
      assert result.metrics is None and result.per_tag_auc() == {}


def test_collect_reports_cells_behind_a_failed_stage_as_blocked(tmp_path, rng):
  plan = cli.make_plan("layers_init", str(tmp_path), ARGS)
  encode = _nodes(plan, plan_lib.ENCODE)[0]  # seed 0's bag-of-features
  plan, _ = _fabricate(str(tmp_path), rng, failed={encode.name},
                       missing={r.node for r in plan.cells})
  statuses = [(r.run.seed, r.status) for r in results_lib.collect(plan)]
  assert statuses == [(r.seed, "blocked" if r.seed == 0 else "not run")
                      for r in plan.cells]


def test_write_csv_has_a_row_per_cell_and_seed(sweep, tmp_path):
  plan, written, _ = sweep
  results = results_lib.collect(plan)
  path = str(tmp_path / "results.csv")
  results_lib.write_csv(results, path)
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    rows = list(reader)
  assert reader.fieldnames == list(results_lib.COLUMNS)
  assert len(rows) == len(plan.cells)
  frame_rate = config_lib.FrontendConfig().frame_rate
  for row, result in zip(rows, results):
    s = result.run.cell.settings
    assert row["grid"] == "layers_init"
    assert row["setting"] == result.run.cell.label
    assert int(row["seed"]) == result.run.seed
    assert row["status"] == result.status
    assert int(row["num_hidden_layers"]) == s.num_hidden_layers
    assert row["init"] == s.init
    assert row["sampling"] == "onset" and int(row["block_frames"]) == 8
    assert float(row["sparsity_target"]) == 0.02 and int(row["pool_frames"]) == 86
    assert float(row["pool_seconds"]) == pytest.approx(86 / frame_rate, abs=0.005)
    assert row["weight_costs"] == "0.001/0.01/0.1"
    assert row["model_dir"] == result.run.model_dir
    if result.status == results_lib.OK:
      metrics = written[result.run.node]
      for name in results_lib.METRICS:
        assert float(row[name]) == pytest.approx(metrics[name], rel=1e-5)
      baseline = metrics["baselines"][results_lib.BASELINE]
      assert float(row["logreg_auc_tag"]) == pytest.approx(baseline["auc_tag"], rel=1e-5)
      assert float(row["logreg_pr_auc"]) == pytest.approx(baseline["pr_auc"], rel=1e-5)
      assert int(row["num_test_clips"]) == 40 and int(row["num_tags"]) == len(TAGS) + 1
    else:
      assert all(row[name] == "" for name in (*results_lib.METRICS, "logreg_auc_tag"))


def _md_row(markdown, *values):
  prefix = "| " + " | ".join(map(str, values)) + " |"
  rows = [line for line in markdown.splitlines() if line.startswith(prefix)]
  assert len(rows) == 1, (prefix, markdown)
  return [c.strip() for c in rows[0].strip().strip("|").split("|")]


def test_summarize_gives_the_paired_difference_to_the_default(sweep):
  plan, written, _ = sweep
  grid = plan.grid
  results = results_lib.collect(plan)
  markdown = results_lib.summarize(grid, results)
  header = _md_row(markdown, "num_hidden_layers", "init")
  assert header[2:6] == ["runs", "val AUC-T", "AUC-T", "Δ AUC-T"]

  def aucs(label, seed):
    per_tag = written[_run(plan, label, seed).node]["per_tag"]
    return np.array([per_tag[t]["roc_auc"] for t in TAGS])

  # "1 layer, random" against "3 layers, pretrained", paired over (seed, tag).
  diffs = np.concatenate([aucs("1 layer, random", s) - aucs("3 layers, pretrained", s)
                          for s in (0, 1)])
  row = _md_row(markdown, 1, "random")
  assert row[2] == "2/2"
  auc_t = [written[_run(plan, "1 layer, random", s).node]["auc_tag"] for s in (0, 1)]
  assert row[4] == f"{np.mean(auc_t):.3f} ± {np.std(auc_t, ddof=1):.3f}"
  assert row[5] == (f"{diffs.mean():+.3f} ± "
                    f"{diffs.std(ddof=1) / math.sqrt(diffs.size):.3f}")
  assert row[6] == f"{(diffs > 0).sum()}/{(diffs < 0).sum()}"
  baseline = [written[_run(plan, "1 layer, random", s).node]["baselines"][
      results_lib.BASELINE]["auc_tag"] for s in (0, 1)]
  assert row[-1] == f"{np.mean(baseline):.3f}"

  reference = _md_row(markdown, 3, "pretrained")
  assert (reference[2], reference[5]) == ("2/2", "(reference)")
  assert _md_row(markdown, 1, "pretrained")[2] == "1/2"
  assert _md_row(markdown, 2, "random")[2:6] == ["0/2", "—", "—", "—"]
  # The pivot: hidden layers × init, mean AUC-T over the finished seeds.
  only_seed0 = written[_run(plan, "1 layer, pretrained", 0).node]["auc_tag"]
  pivot = _md_row(markdown, 1, f"{only_seed0:.3f}")
  assert pivot == ["1", f"{only_seed0:.3f}", f"{np.mean(auc_t):.3f}"]
  assert _md_row(markdown, "num_hidden_layers", "pretrained") == [
      "num_hidden_layers", "pretrained", "random"]
  missing = next(l for l in markdown.splitlines() if l.startswith("Not in the table"))
  assert "2 layers, random seed 0 (failed)" in missing
  assert "2 layers, random seed 1 (not run)" in missing
  assert "1 layer, pretrained seed 1 (no metrics.json)" in missing
  assert "3 layers, random seed 1 (stale)" in missing


def test_findings_measure_effect_spread_paired_difference_and_verdict(sweep, tmp_path):
  from deepbof_tools.experiments import findings
  plan, written, _ = sweep
  results = results_lib.collect(plan)
  by_name = {f.name: f for f in findings.FINDINGS}
  finding = by_name["pretrained vs random init, 3 hidden layers"]
  measured = findings.measure(finding, results)
  # Seed 1 of "3 layers, random" is stale in the fixture: only seed 0 pairs up.
  assert measured.seeds == [0]
  auc = lambda label, seed: written[_run(plan, label, seed).node]["auc_tag"]
  assert measured.effect == pytest.approx(auc("3 layers, pretrained", 0)
                                          - auc("3 layers, random", 0))
  assert math.isnan(measured.effect_std)  # one seed: no spread
  per_tag = lambda label: written[_run(plan, label, 0).node]["per_tag"]
  diffs = np.array([per_tag("3 layers, pretrained")[t]["roc_auc"]
                    - per_tag("3 layers, random")[t]["roc_auc"] for t in TAGS])
  assert measured.paired[0] == pytest.approx(diffs.mean())
  assert measured.paired[1] == pytest.approx(diffs.std(ddof=1) / math.sqrt(diffs.size))
  expected = ("within noise" if abs(diffs.mean()) <= 2 * measured.paired[1] else
              "holds" if diffs.mean() > 0 else "does not hold")
  assert measured.verdict == expected
  # A finding whose cells never ran is listed as not run.
  path = tmp_path / "findings.md"
  findings.write_markdown({"layers_init": results}, str(path))
  text = path.read_text()
  assert "RBM pretraining helps deeper networks" in text
  assert "Not run yet:" in text and "onset vs random sampling, 8-frame blocks" in text
  # Verdict rules.
  assert findings.verdict(0.01, float("nan"), (0.01, 0.002, 100, 70, 30)) == "holds"
  assert findings.verdict(-0.01, float("nan"), (-0.01, 0.002, 100, 30, 70)) == (
      "does not hold")
  assert findings.verdict(0.01, float("nan"), (0.003, 0.002, 100, 55, 45)) == "within noise"
  assert findings.verdict(0.01, 0.02, (0.01, 0.002, 100, 70, 30)) == "within noise"


def test_weight_cost_families_are_selected_on_validation_and_scored_on_test(tmp_path):
  grid = grids_lib.grid("weight_cost")
  plan = plan_lib.plan_sweep(grid, str(tmp_path / "wc"), seeds=(0, 1))
  tags = [f"t{i}" for i in range(4)]

  def metrics(test_auc):
    return {"auc_tag": test_auc, "pr_auc": test_auc / 2, "num_clips": 10, "num_tags": 4,
            "per_tag": {t: {"roc_auc": test_auc + 0.01 * i} for i, t in enumerate(tags)}}

  # A toy table: validation favours (0.001, 0.01, 0.1) among WC Inc, while test would
  # favour (0.001, 0.1, 0.1); the best of all is (0.1, 0.1, 0.01), a member of no family;
  # (0.001, 0.001, 0.1) misses its second seed, so it cannot be selected.
  val = {(0.001, 0.01, 0.1): 0.80, (0.001, 0.1, 0.1): 0.70, (0.1, 0.1, 0.01): 0.85,
         (0.1, 0.01, 0.001): 0.75, (0.01, 0.01, 0.01): 0.72, (0.001, 0.001, 0.1): 0.99}
  test = {(0.001, 0.1, 0.1): 0.95, (0.001, 0.01, 0.1): 0.60}
  results = []
  for run in plan.cells:
    costs = tuple(run.cell.settings.weight_costs)
    if costs == (0.001, 0.001, 0.1) and run.seed == 1:
      results.append(results_lib.CellResult(run, "failed"))
      continue
    results.append(results_lib.CellResult(run, results_lib.OK,
                                          metrics(test.get(costs, 0.5) + 0.01 * run.seed),
                                          val.get(costs, 0.5) + 0.001 * run.seed))
  chosen = {s.family: s for s in results_lib.select_families(
      results, grids_lib.WEIGHT_COST_FAMILIES)}
  assert chosen["WC Inc"].chosen == "WC 0.001/0.01/0.1"
  assert chosen["WC Inc"].members_run == 5  # one member lacks a seed
  assert chosen["WC Dec"].chosen == "WC 0.1/0.01/0.001"
  assert chosen["uniform"].chosen == "WC 0.01"
  assert chosen["all"].chosen == "WC 0.1/0.1/0.01"
  assert chosen["WC Inc"].val_auc_tag == pytest.approx(0.8005)
  assert sorted(r.metrics["auc_tag"] for r in chosen["WC Inc"].results) == pytest.approx(
      [0.60, 0.61])
  markdown = results_lib.summarize(grid, results)
  row = _md_row(markdown, "WC Inc", "5/6", "WC 0.001/0.01/0.1")
  assert row[3] == "0.800" and row[4] == "0.605 ± 0.007"


def test_plot_grid_draws_a_box_per_finished_setting(sweep, tmp_path, rng):
  plan, _, _ = sweep
  results = results_lib.collect(plan)
  path = tmp_path / "figures" / "layers_init.png"
  drawn = figures.plot_grid(plan.grid, results, str(path))
  finished = {r.run.cell.label for r in results if r.status == results_lib.OK}
  assert drawn == len(finished) == len(plan.grid.cells) - 1
  assert path.read_bytes()[:8] == PNG_SIGNATURE
  values = figures.per_setting_values(plan.grid, results)
  assert values["2 layers, random"] == []
  assert len(values["1 layer, random"]) == 2 * len(TAGS)  # tags × seeds
  assert len(values["1 layer, pretrained"]) == len(TAGS)

  # A one-panel grid (x = the setting's label), built without a sweep on disk.
  grid = grids_lib.grid("weight_cost")
  wc_plan = plan_lib.plan_sweep(grid, str(tmp_path / "wc"))
  wc_results = [results_lib.CellResult(run, results_lib.OK, _metrics(rng))
                for run in wc_plan.cells[1:]]
  path = tmp_path / "weight_cost.png"
  assert figures.plot_grid(grid, wc_results, str(path)) == len(grid.cells) - 1
  assert path.read_bytes()[:8] == PNG_SIGNATURE


# --- command line ----------------------------------------------------------------


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "deepbof_tools.experiments.cli", *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=120,
                        env=dict(os.environ, PYTHONPATH=ROOT))


def test_cli_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
  out = tmp_path / "sweep"
  result = _cli("--grid=layers_init", f"--output_dir={out}", "--dry_run", "--seeds=0,1")
  assert result.returncode == 0, result.stderr
  grid = grids_lib.grid("layers_init")
  seeds = 2
  # One corpus; one dataset, local-feature model and encoding per seed (the grid
  # varies only the song level); one model per cell and seed.
  expected = {plan_lib.CORPUS: 1, plan_lib.PREPROCESS: seeds,
              plan_lib.LEARN_LOCAL_FEATURES: seeds, plan_lib.ENCODE: seeds,
              plan_lib.SONG_LEVEL: len(grid.cells) * seeds}
  line = "runs per stage: " + ", ".join(f"{s} {n}" for s, n in expected.items())
  assert line in result.stdout.splitlines()
  assert f"= {len(grid.cells) * seeds} models" in result.stdout
  assert result.stdout.count("[pending]") == sum(expected.values())
  assert "already finished: 0 of" in result.stdout
  assert not out.exists()  # a dry run writes nothing, not even sweeps.json

  # Bad flags are usage errors naming the problem, not tracebacks.
  for flag, message in (("--scale=paper", "--manifest"), ("--seeds=0,x", "'x'")):
    result = _cli("--grid=layers_init", f"--output_dir={out}", "--dry_run", flag)
    assert result.returncode == 1, flag
    assert message in result.stderr and "Traceback" not in result.stderr, flag


def test_cli_write_reports(sweep):
  plan, _, odd = sweep
  output_dir = plan.output_dir
  cli.register(output_dir, "layers_init", ARGS)
  collected = cli.write_reports(output_dir)
  assert list(collected) == ["layers_init"]
  assert [r.status for r in collected["layers_init"]] == [
      odd.get(r.node, results_lib.OK) for r in plan.cells]

  with open(os.path.join(output_dir, "results.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  assert [(r["setting"], int(r["seed"])) for r in rows] == [
      (r.cell.label, r.seed) for r in plan.cells]
  markdown = open(os.path.join(output_dir, "results.md")).read()
  assert markdown.startswith("## Experiments (demo scale)")
  assert "### `layers_init` (Fig. 5)" in markdown
  with open(os.path.join(output_dir, "failures.json")) as f:
    failures = json.load(f)
  failed = next(n for n, status in odd.items() if status == "failed")
  assert failures == [{"node": failed, "stage": plan_lib.SONG_LEVEL,
                       "command": " ".join(plan.nodes[failed].command), "exit_code": 1,
                       "log": runner_lib.Stamps(output_dir).log_path(failed)}]
  with open(os.path.join(output_dir, "layers_init.png"), "rb") as f:
    assert f.read(8) == PNG_SIGNATURE


def test_register_refuses_grids_that_disagree_on_shared_nodes(tmp_path):
  output_dir = str(tmp_path / "sweep")
  cli.register(output_dir, "layers_init", ARGS)
  with pytest.raises(app.UsageError, match="layers_init.*scale"):
    cli.register(output_dir, "weight_cost",
                 dict(ARGS, scale="paper", manifest="/data/annotations_final.csv"))
  with pytest.raises(app.UsageError, match="manifest"):
    cli.register(output_dir, "weight_cost", dict(ARGS, manifest="/data/m.csv"))
  with pytest.raises(app.UsageError, match="num_workers"):
    cli.register(output_dir, "weight_cost", dict(ARGS, num_workers=8))
  assert list(cli.read_registry(output_dir)) == ["layers_init"]
  # Seeds only choose which nodes a grid has: they may differ.
  cli.register(output_dir, "weight_cost", dict(ARGS, seeds=[3]))
  registry = cli.read_registry(output_dir)
  assert set(registry) == {"layers_init", "weight_cost"}
  assert registry["weight_cost"]["seeds"] == [3]
  assert registry["layers_init"] == ARGS
