"""The grids of settings behind the paper's experiment figures.

A :class:`Settings` is one point of the design space the paper explores (block size
and sampling of the feature-learning blocks, RBM sparsity, pooling window, DNN depth,
initialisation and per-layer weight costs); every field defaults to the value of
``deepbof_tf.config`` (the authors' configuration), so a grid only names what it varies. A :class:`Grid` is the
list of cells of one figure plus how its box plot is laid out (x axis, one panel per
value of a secondary factor).

  blocks_sampling   Fig. 4    block frames {2, 4, 6, 8, 10} × sampling {onset, random}
  layers_init       Fig. 5    hidden layers {1, 2, 3} × init {pretrained, random}
  sparsity_pooling  Fig. 6    sparsity {0.007, 0.01, 0.02, 0.03} × pooling 0.25–4 s
  weight_cost       Fig. 7–8  per-layer weight costs of the 3-layer DNN: all 27
                              combinations of {0.001, 0.01, 0.1}, reported as the paper
                              compares them: the best (by validation AUC-tag) of the
                              "WC Inc" family, of "WC Dec", of the uniform ones and of
                              all 27 (:data:`WEIGHT_COST_FAMILIES`)
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Dict, Optional, Sequence, Tuple

from deepbof_tf import config as config_lib

_SAMPLING = config_lib.SamplingConfig()
_LOCAL = config_lib.LocalFeatureConfig()
_DNN = config_lib.DNNConfig()
_PRETRAIN = config_lib.PretrainConfig()
FRAME_RATE = config_lib.FrontendConfig().frame_rate  # frames per second (22050 / 512)

# The paper's grids (its Figs. 4–8).
BLOCK_FRAMES = (2, 4, 6, 8, 10)
SAMPLING_SCHEMES = ("onset", "random")
HIDDEN_LAYERS = (1, 2, 3)
INITS = ("pretrained", "random")
SPARSITY_TARGETS = (0.007, 0.01, 0.02, 0.03)
POOL_FRAMES = (11, 22, 43, 86, 172)  # 0.25, 0.5, 1, 2, 4 s at 22,050 / 512 frames per s
WEIGHT_COST_VALUES = (0.001, 0.01, 0.1)
ALL_WEIGHT_COSTS = tuple(itertools.product(WEIGHT_COST_VALUES, repeat=3))
# The paper's "WC Inc" is a family, not one setting: 0.001 at the bottom and
# non-decreasing upward, the 6 combinations the authors' run_tagatune_dnn.m loops over;
# the paper reports the best of them. "WC Dec" mirrors it (non-increasing, 0.001 at the
# top). The uniform settings belong to neither family but (0.001, 0.001, 0.001) to both.
WEIGHT_COST_FAMILIES: Dict[str, Tuple[Tuple[float, ...], ...]] = {
    "WC Inc": tuple(c for c in ALL_WEIGHT_COSTS if c[0] == WEIGHT_COST_VALUES[0]
                    and c[0] <= c[1] <= c[2]),
    "WC Dec": tuple(c for c in ALL_WEIGHT_COSTS if c[2] == WEIGHT_COST_VALUES[0]
                    and c[0] >= c[1] >= c[2]),
    "uniform": tuple(c for c in ALL_WEIGHT_COSTS if len(set(c)) == 1),
    "all": ALL_WEIGHT_COSTS,
}

# Column names of the settings (results.csv) and the pseudo-factor of a cell's label.
SETTING = "setting"


@dataclasses.dataclass(frozen=True)
class Settings:
  """Every knob an experiment varies; the defaults are ``deepbof_tf.config``'s.

  Args:
    sampling: block sampling scheme of ``deepbof-preprocess`` ("onset" or "random").
    block_frames: frames per feature-learning block.
    sparsity_target: target activation ρ of the local sparse RBM.
    pool_frames: bag-of-features max-pooling window in frames.
    num_hidden_layers: hidden layers of the song-level DNN.
    init: "pretrained" (stacked RBMs) or "random".
    weight_costs: RBM weight cost per DNN layer, bottom first.
  """

  sampling: str = _SAMPLING.scheme
  block_frames: int = _SAMPLING.block_frames
  sparsity_target: float = _LOCAL.rbm.sparsity_target
  pool_frames: int = _LOCAL.pooling.pool_frames
  num_hidden_layers: int = _DNN.num_hidden_layers
  init: str = _DNN.init
  weight_costs: Tuple[float, ...] = tuple(_PRETRAIN.weight_costs)

  def __post_init__(self):
    if self.sampling not in SAMPLING_SCHEMES:
      raise ValueError(f"sampling must be one of {SAMPLING_SCHEMES}, got {self.sampling!r}")
    if self.init not in INITS:
      raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
    if self.block_frames < 1 or self.pool_frames < 1 or self.num_hidden_layers < 1:
      raise ValueError(f"block_frames, pool_frames and num_hidden_layers must be >= 1: "
                       f"{self}")
    if not 0 < self.sparsity_target < 1:
      raise ValueError(f"sparsity_target must be in (0, 1), got {self.sparsity_target}")
    if len(self.weight_costs) < self.num_hidden_layers:
      raise ValueError(f"weight_costs {self.weight_costs} has fewer entries than "
                       f"{self.num_hidden_layers} hidden layers")

  @property
  def pool_seconds(self) -> float:
    return self.pool_frames / FRAME_RATE

  def as_row(self) -> Dict[str, Any]:
    """The settings as results.csv columns (weight costs joined by '/')."""
    row = dataclasses.asdict(self)
    row["weight_costs"] = format_weight_costs(self.weight_costs)
    row["pool_seconds"] = round(self.pool_seconds, 2)
    return row


SETTINGS_COLUMNS = ("sampling", "block_frames", "sparsity_target", "pool_frames",
                    "pool_seconds", "num_hidden_layers", "init", "weight_costs")


def format_weight_costs(weight_costs: Sequence[float]) -> str:
  return "/".join(f"{w:g}" for w in weight_costs)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One setting of a grid.

  Args:
    label: a short human name ("onset, 8 frames", "WC Inc").
    settings: the full settings of the cell.
  """

  label: str
  settings: Settings


@dataclasses.dataclass(frozen=True)
class Grid:
  """The cells of one of the paper's experiments and the layout of its figure.

  Args:
    name: the ``--grid`` name.
    figure: the paper's figure(s) it reproduces.
    question: what the experiment asks, one line.
    factors: the varied settings (``Settings`` field names, or ``"setting"`` for the
      cell label), in the order the results table lists them.
    x_factor: the factor along each panel's x axis.
    panel_factor: one panel per value of this factor (None: one panel).
    cells: the settings, in plotting order.
  """

  name: str
  figure: str
  question: str
  factors: Tuple[str, ...]
  x_factor: str
  panel_factor: Optional[str]
  cells: Tuple[Cell, ...]

  def __post_init__(self):
    labels = [c.label for c in self.cells]
    if len(set(labels)) != len(labels):
      raise ValueError(f"grid {self.name}: duplicate cell labels {labels}")
    settings = [c.settings for c in self.cells]
    if len(set(settings)) != len(settings):
      raise ValueError(f"grid {self.name}: two cells have the same settings")
    for factor in (*self.factors, self.x_factor, self.panel_factor):
      if factor is not None and factor != SETTING and factor not in SETTINGS_COLUMNS:
        raise ValueError(f"grid {self.name}: unknown factor {factor!r}")


def factor_value(cell: Cell, factor: str) -> Any:
  """The value of ``factor`` (a Settings column or ``"setting"``) for ``cell``."""
  if factor == SETTING:
    return cell.label
  return cell.settings.as_row()[factor]


def _blocks_sampling() -> Grid:
  cells = tuple(Cell(f"{scheme}, {frames} frames",
                     Settings(sampling=scheme, block_frames=frames))
                for scheme in SAMPLING_SCHEMES for frames in BLOCK_FRAMES)
  return Grid("blocks_sampling", "Fig. 4", "block size and onset vs random sampling of "
              "the feature-learning blocks", ("sampling", "block_frames"),
              x_factor="block_frames", panel_factor="sampling", cells=cells)


def _layers_init() -> Grid:
  cells = tuple(Cell(f"{layers} layer{'s' if layers > 1 else ''}, {init}",
                     Settings(num_hidden_layers=layers, init=init))
                for init in INITS for layers in HIDDEN_LAYERS)
  return Grid("layers_init", "Fig. 5", "DNN depth and RBM pretraining vs random "
              "initialisation", ("num_hidden_layers", "init"),
              x_factor="num_hidden_layers", panel_factor="init", cells=cells)


def _sparsity_pooling() -> Grid:
  cells = tuple(Cell(f"rho {rho:g}, pool {pool} frames ({pool / FRAME_RATE:.2g} s)",
                     Settings(sparsity_target=rho, pool_frames=pool))
                for pool in POOL_FRAMES for rho in SPARSITY_TARGETS)
  return Grid("sparsity_pooling", "Fig. 6", "sparsity of the local RBM and the "
              "bag-of-features pooling window", ("pool_frames", "pool_seconds",
                                                 "sparsity_target"),
              x_factor="sparsity_target", panel_factor="pool_seconds", cells=cells)


def _weight_cost_label(costs: Tuple[float, ...]) -> str:
  if len(set(costs)) == 1:
    return f"WC {costs[0]:g}"
  return "WC " + format_weight_costs(costs)


def _weight_cost(combinations: Sequence[Tuple[float, ...]], name: str, figure: str
                 ) -> Grid:
  cells = tuple(Cell(_weight_cost_label(costs), Settings(weight_costs=tuple(costs)))
                for costs in combinations)
  return Grid(name, figure, "per-layer weight costs of the pretraining RBMs of the "
              "3-layer DNN", (SETTING, "weight_costs"), x_factor=SETTING,
              panel_factor=None, cells=cells)


def _build_grids() -> Dict[str, Grid]:
  grids = [
      _blocks_sampling(),
      _layers_init(),
      _sparsity_pooling(),
      _weight_cost(ALL_WEIGHT_COSTS, "weight_cost", "Figs. 7–8"),
  ]
  return {grid.name: grid for grid in grids}


GRIDS: Dict[str, Grid] = _build_grids()


def grid(name: str) -> Grid:
  """The grid called ``name``; a clear error lists the known ones."""
  if name not in GRIDS:
    raise ValueError(f"unknown grid {name!r}; known: {', '.join(GRIDS)}")
  return GRIDS[name]
