"""A grid of settings as a DAG of the pipeline's command lines, sharing common stages.

Stages and what a node of each is keyed by (so that cells share it):

  corpus                the demo corpus (``--scale=demo`` without ``--manifest``), once
  preprocess            one dataset per (sampling, block frames, seed)
  learn-local-features  one PCA + sparse RBM per (dataset, sparsity target)
  encode                one bag-of-features per (local features, pooling window)
  song-level            pretrain, finetune, evaluate: one per (cell, seed)

Node directories are named after the settings they depend on, not after the grid, so
grids run into the same output directory share their common nodes (the default
onset / 8-frame dataset, the ρ = 0.02 RBM, the 3-layer "WC Inc" model, ...). A node
that needs a parent's files gets copies of them (``Node.copies``) — the encoder's
parameters into an encode node, the bag-of-features into a song-level node — so
every node owns one directory and can be rerun on its own.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

from deepbof_tf import config as config_lib
from deepbof_tools.corpus_config import DemoCorpusConfig
from deepbof_tools.experiments import commands
from deepbof_tools.experiments import grids as grids_lib
from deepbof_tools.experiments.commands import DataSource

CORPUS = "corpus"
PREPROCESS = "preprocess"
LEARN_LOCAL_FEATURES = "learn-local-features"
ENCODE = "encode"
SONG_LEVEL = "song-level"
STAGES = (CORPUS, PREPROCESS, LEARN_LOCAL_FEATURES, ENCODE, SONG_LEVEL)
SONG_LEVEL_STAGES = "pretrain,finetune,evaluate"

SCALES = ("demo", "paper")
# The demo corpus is a fixed dataset: its seed does not follow --seeds.
DEMO_CORPUS_SEED = 0


@dataclasses.dataclass(frozen=True)
class Node:
  """One command of the sweep.

  Args:
    name: unique, path-like (``data/onset-b8-seed0``); names the stamp and the log.
    stage: one of ``STAGES``.
    command: argv; a leading ``deepbof-*`` name is resolved to the console script.
    output_dir: the directory the node owns (None: it writes into a parent's).
    deps: names of the nodes that must have finished first.
    copies: (source, destination) files copied in before the command runs.
    resumable: keep a partial ``output_dir`` of an interrupted run (the trainer
      continues from its checkpoints); otherwise it is removed first.
  """

  name: str
  stage: str
  command: Tuple[str, ...]
  output_dir: Optional[str]
  deps: Tuple[str, ...] = ()
  copies: Tuple[Tuple[str, str], ...] = ()
  resumable: bool = False


@dataclasses.dataclass(frozen=True)
class CellRun:
  """One cell × seed of a grid and the node that trains and evaluates it.

  Args:
    grid: the grid's name.
    cell: the cell.
    seed: the seed of every stage of its chain.
    node: name of its song-level node.
    model_dir: where its ``metrics.json`` appears.
  """

  grid: str
  cell: grids_lib.Cell
  seed: int
  node: str
  model_dir: str


@dataclasses.dataclass
class Plan:
  """The nodes of a sweep in a runnable (topological) order and its cells.

  Args:
    grid: the grid.
    output_dir: the sweep's directory.
    scale: "demo" or "paper" (the ``deepbof_tf.config.PRESETS`` entry).
    seeds: the seeds every cell is repeated with.
    nodes: name → node, parents before children.
    cells: every cell × seed.
  """

  grid: grids_lib.Grid
  output_dir: str
  scale: str
  seeds: Tuple[int, ...]
  nodes: Dict[str, Node]
  cells: List[CellRun]

  def counts(self) -> Dict[str, int]:
    """Nodes per stage, in pipeline order (stages without nodes included as 0)."""
    counts = {stage: 0 for stage in STAGES}
    for node in self.nodes.values():
      counts[node.stage] += 1
    return counts

  def children(self) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {name: [] for name in self.nodes}
    for node in self.nodes.values():
      for dep in node.deps:
        out[dep].append(node.name)
    return out


@dataclasses.dataclass
class Chain:
  """Nodes that run one after the other, each depending on all before it (the demo).

  Args:
    output_dir: where the stamps and logs go.
    nodes: name → node, in order.
  """

  output_dir: str
  nodes: Dict[str, Node] = dataclasses.field(default_factory=dict)

  def add(self, name: str, command: Sequence[str], output_dir: Optional[str] = None
          ) -> None:
    """Appends a step that runs after (and is redone after a rerun of) every earlier one."""
    if name in self.nodes:
      raise ValueError(f"chain: step {name!r} added twice")
    self.nodes[name] = Node(name, name, tuple(command), output_dir,
                            deps=tuple(self.nodes))


def _g(value: float) -> str:
  return f"{value:g}"


class _Builder:
  """Adds nodes once by name, checking that a shared name means the same command."""

  def __init__(self, output_dir: str, scale: str, source: DataSource, num_workers: int,
               preprocess_args: Sequence[str], train_args: Sequence[str]):
    self.out = output_dir
    self.scale = scale
    self.preset = config_lib.preset(scale)
    self.source = source
    self.num_workers = num_workers
    self.preprocess_args = tuple(preprocess_args)
    self.train_args = tuple(train_args)
    self.nodes: Dict[str, Node] = {}

  def add(self, node: Node) -> str:
    existing = self.nodes.get(node.name)
    if existing is not None and existing != node:
      raise AssertionError(f"plan: node {node.name} planned twice with different "
                           f"commands:\n{existing.command}\n{node.command}")
    self.nodes[node.name] = node
    return node.name

  def corpus(self) -> Tuple[Optional[str], DataSource]:
    """The demo corpus node (or None with a given manifest) and the source it gives."""
    if self.source.manifest is not None:
      return None, self.source
    directory = os.path.join(self.out, "corpus")
    name = self.add(Node("corpus", CORPUS, commands.demo_corpus(
        directory, num_clips=DemoCorpusConfig.num_clips,
        clip_seconds=DemoCorpusConfig.clip_seconds, seed=DEMO_CORPUS_SEED,
        num_workers=self.num_workers), directory))
    return name, DataSource(os.path.join(directory, "annotations_final.csv"), "mtt",
                            os.path.join(directory, "audio"))

  def preprocess(self, settings: grids_lib.Settings, seed: int) -> str:
    corpus, source = self.corpus()
    key = f"{settings.sampling}-b{settings.block_frames}-seed{seed}"
    directory = os.path.join(self.out, "data", key)
    command = commands.preprocess(
        source, directory, sampling=settings.sampling, block_frames=settings.block_frames,
        num_blocks=self.preset.num_blocks, seed=seed, num_workers=self.num_workers,
        extra=self.preprocess_args)
    return self.add(Node(f"data/{key}", PREPROCESS, command, directory,
                         deps=(corpus,) if corpus else ()))

  def _train(self, data_node: str, model_dir: str, stages: str, seed: int,
             flags: Sequence[str]) -> Tuple[str, ...]:
    return commands.train(self.nodes[data_node].output_dir, model_dir, stages=stages,
                          preset=self.scale, seed=seed, flags=flags, extra=self.train_args)

  def local_features(self, settings: grids_lib.Settings, seed: int) -> str:
    data = self.preprocess(settings, seed)
    key = (f"{settings.sampling}-b{settings.block_frames}-"
           f"rho{_g(settings.sparsity_target)}-seed{seed}")
    directory = os.path.join(self.out, "local", key)
    command = self._train(data, directory, LEARN_LOCAL_FEATURES, seed,
                          [f"--sparsity_target={_g(settings.sparsity_target)}"])
    return self.add(Node(f"local/{key}", LEARN_LOCAL_FEATURES, command, directory,
                         deps=(data,), resumable=True))

  def encode(self, settings: grids_lib.Settings, seed: int) -> str:
    local = self.local_features(settings, seed)
    data = self.nodes[local].deps[0]
    key = (f"{settings.sampling}-b{settings.block_frames}-"
           f"rho{_g(settings.sparsity_target)}-pool{settings.pool_frames}-seed{seed}")
    directory = os.path.join(self.out, "bof", key)
    source = os.path.join(self.nodes[local].output_dir, "local")
    # The encoder reads only these two files of local/ (deepbof_tf.models).
    copies = tuple((os.path.join(source, f), os.path.join(directory, "local", f))
                   for f in ("local_features.npz", "local_features.json"))
    command = self._train(data, directory, ENCODE, seed, [
        f"--sparsity_target={_g(settings.sparsity_target)}",
        f"--pool_frames={settings.pool_frames}"])
    return self.add(Node(f"bof/{key}", ENCODE, command, directory, deps=(local,),
                         copies=copies, resumable=True))

  def song_level(self, settings: grids_lib.Settings, seed: int) -> str:
    encode = self.encode(settings, seed)
    data = self.nodes[self.nodes[encode].deps[0]].deps[0]
    key = (f"{settings.sampling}-b{settings.block_frames}-"
           f"rho{_g(settings.sparsity_target)}-pool{settings.pool_frames}-"
           f"L{settings.num_hidden_layers}-{settings.init}-"
           f"wc{'-'.join(_g(w) for w in settings.weight_costs)}-seed{seed}")
    directory = os.path.join(self.out, "models", key)
    source = os.path.join(self.nodes[encode].output_dir, "bof")
    copies = tuple((os.path.join(source, f"{split}.{ext}"),
                    os.path.join(directory, "bof", f"{split}.{ext}"))
                   for split in ("train", "valid", "test") for ext in ("npz", "json"))
    # The local-feature flags change nothing in these stages; they make config.json
    # describe the features the model was trained on.
    command = self._train(data, directory, SONG_LEVEL_STAGES, seed, [
        f"--sparsity_target={_g(settings.sparsity_target)}",
        f"--pool_frames={settings.pool_frames}",
        f"--num_hidden_layers={settings.num_hidden_layers}", f"--init={settings.init}",
        f"--weight_costs={','.join(_g(w) for w in settings.weight_costs)}"])
    return self.add(Node(f"models/{key}", SONG_LEVEL, command, directory,
                         deps=(encode,), copies=copies, resumable=True))


def plan_sweep(grid: grids_lib.Grid, output_dir: str, scale: str = "demo",
               seeds: Sequence[int] = (0,), source: DataSource = DataSource(),
               num_workers: int = 2, preprocess_args: Sequence[str] = (),
               train_args: Sequence[str] = ()) -> Plan:
  """The DAG of commands that runs every cell of ``grid`` for every seed.

  Args:
    grid: the grid (``grids.GRIDS``).
    output_dir: the sweep's directory (absolute paths are put into the commands).
    scale: "demo" (the demo preset; the demo corpus unless ``source`` names a
      manifest) or "paper" (the paper preset; ``source.manifest`` required).
    seeds: every cell is run once per seed, each stage seeded with it.
    source: the manifest and audio to preprocess.
    num_workers: Beam worker processes (and corpus rendering processes).
    preprocess_args: extra flags for every ``deepbof-preprocess``.
    train_args: extra flags for every ``deepbof-train``.
  """
  if scale not in SCALES:
    raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
  if scale == "paper" and source.manifest is None:
    raise ValueError("--scale=paper needs --manifest and --audio_root (e.g. "
                     "MagnaTagATune's annotations_final.csv with --manifest_format=mtt); "
                     "only the demo scale builds its own corpus")
  seeds = tuple(int(s) for s in seeds)
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct and non-empty, got {seeds}")
  output_dir = os.path.abspath(output_dir)
  builder = _Builder(output_dir, scale, source, num_workers, preprocess_args, train_args)
  cells = []
  # Seed-major order: a first complete pass over the grid comes before repetitions.
  for seed in seeds:
    for cell in grid.cells:
      name = builder.song_level(cell.settings, seed)
      cells.append(CellRun(grid.name, cell, seed, name, builder.nodes[name].output_dir))
  return Plan(grid, output_dir, scale, seeds, builder.nodes, cells)


def format_plan(plan: Plan, status: Optional[Dict[str, str]] = None) -> str:
  """The plan as text: every node with its command, then the counts per stage.

  Args:
    plan: the plan.
    status: optional node name → short status shown next to it ("done", ...).
  """
  lines = [f"Plan of grid {plan.grid.name} ({plan.grid.figure}: {plan.grid.question}); "
           f"scale {plan.scale}, seeds {','.join(map(str, plan.seeds))}, "
           f"{len(plan.grid.cells)} cells × {len(plan.seeds)} seed(s) = "
           f"{len(plan.cells)} models, in {plan.output_dir}"]
  for stage in STAGES:
    nodes = [n for n in plan.nodes.values() if n.stage == stage]
    if not nodes:
      continue
    lines.append(f"\n{stage} ({len(nodes)}):")
    for node in nodes:
      mark = f" [{status[node.name]}]" if status and node.name in status else ""
      lines.append(f"  {node.name}{mark}\n      {' '.join(node.command)}")
  counts = plan.counts()
  lines.append("\nruns per stage: " + ", ".join(f"{stage} {counts[stage]}"
                                                 for stage in STAGES))
  if status:
    done = sum(1 for s in status.values() if s == "done")
    lines.append(f"already finished: {done} of {len(plan.nodes)} nodes")
  return "\n".join(lines)
