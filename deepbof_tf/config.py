"""Typed configurations; the defaults are the authors' configuration (docs/model.md).

Every stage of the data flow reads one of these dataclasses; the trainer composes them
into :class:`TrainConfig` and writes the operative configuration next to its outputs
(``model_dir/config.json``). Defaults are the authors' code values unless a comment
says otherwise. Each class validates itself in ``__post_init__`` so that a bad value
fails when the config is built, not hours into a run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Dict, Mapping, Tuple, Type, TypeVar

T = TypeVar("T")

REMOVED_MAX_MODE = (
    "input_normalization 'max' was removed: it divided every feature by its maximum over "
    "the training split, which is not the authors' normalization. Use 'none' (the "
    "authors' final scripts, the default), 'clip_max' (each clip divided by its own "
    "maximum: the authors' input_normalization option) or 'standardize'")


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class FrontendConfig:
  """Audio front end (one clip → log-mel + novelty; docs/model.md#front-end).

  Args:
    sample_rate: rate every clip is resampled to (Hz).
    n_fft: STFT window and FFT size (samples); the signal is padded by n_fft/2 zeros
      on both sides.
    hop_length: STFT hop (samples).
    symmetric_window: MATLAB's ``hann(1024)`` as used by the authors' code is the
      *symmetric* Hann window (True, default). False uses the periodic Hann window
      (a documented deviation some libraries make).
    floor_ratio: after the magnitude, ``S += floor_ratio * max(S)`` over the clip.
    agc: apply the time–frequency automatic gain control (docs/model.md#agc).
    agc_t_scale: AGC attack/decay time constant in seconds.
    agc_f_scale: AGC frequency scale; gives max(10, 20/f_scale) bands of width
      f_scale*nbands/10.
    agc_epsilon: added to the envelope before dividing (``S / (E + eps)``).
    n_mels: bands of the Slaney mel filterbank of the main representation.
    log_gain: C in the compression ``log10(1 + C·mel)``.
    novelty_n_mels: bands of the mel filterbank of the onset detection function.
    novelty_log_gain: C of the novelty path's ``log10(1 + C·mel)``.
  """

  sample_rate: int = 22050
  n_fft: int = 1024
  hop_length: int = 512
  symmetric_window: bool = True
  floor_ratio: float = 1e-4
  agc: bool = True
  agc_t_scale: float = 0.5
  agc_f_scale: float = 2.0
  agc_epsilon: float = 0.01
  n_mels: int = 128
  log_gain: float = 10.0
  novelty_n_mels: int = 40
  novelty_log_gain: float = 100.0

  def __post_init__(self):
    _check(self.sample_rate > 0, f"sample_rate must be > 0, got {self.sample_rate}")
    _check(self.n_fft > 0 and self.n_fft % 2 == 0,
           f"n_fft must be a positive even number, got {self.n_fft}")
    _check(0 < self.hop_length <= self.n_fft,
           f"hop_length must be in (0, n_fft], got {self.hop_length}")
    _check(self.floor_ratio >= 0, f"floor_ratio must be >= 0, got {self.floor_ratio}")
    _check(self.agc_t_scale > 0, f"agc_t_scale must be > 0, got {self.agc_t_scale}")
    _check(self.agc_f_scale > 0, f"agc_f_scale must be > 0, got {self.agc_f_scale}")
    _check(self.n_mels > 0 and self.novelty_n_mels > 0, "mel band counts must be > 0")

  @property
  def agc_n_bands(self) -> int:
    """AGC bands, as in tf_agc: nbands = max(10, 20/f_scale)."""
    return int(max(10, round(20.0 / self.agc_f_scale)))

  @property
  def agc_width(self) -> float:
    """AGC band width (tf_agc): mwidth = f_scale*nbands/10 (2.0 for the default f_scale)."""
    return self.agc_f_scale * self.agc_n_bands / 10.0

  @property
  def frame_rate(self) -> float:
    return self.sample_rate / self.hop_length


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Feature-learning block sampling (docs/model.md#block-sampling).

  Args:
    scheme: "onset" (the code's onset_sync_max: the block at the novelty maximum of
      each segment) or "random" (a uniformly random block in each segment).
    block_frames: frames per spectral block (8 → 1024-dim blocks).
    segment_frames: non-overlapping segment length for sampling (43 ≈ 1 s).
    num_blocks: global budget over the training split; a seeded subsample keeps this
      many (all of them if there are fewer candidates).
    blocks_per_clip: candidate blocks drawn per clip before the global subsample.
      0 (default) follows the authors' get_samples.m: every clip gets the same number
      of passes over its segments, ceil(num_blocks / segments of the whole training
      split), so the candidates cover the budget with the fewest repeats. k > 0 takes
      exactly k candidates from each clip (ceil(k / segments) passes, then a seeded
      subset of k), which caps the share of long clips. Passes are capped at
      segment_frames (every start of every segment taken).
    seed: seed of the random scheme and of the global subsample.
  """

  scheme: str = "onset"
  block_frames: int = 8
  segment_frames: int = 43
  num_blocks: int = 200_000
  blocks_per_clip: int = 0
  seed: int = 0

  def __post_init__(self):
    _check(self.scheme in ("onset", "random"),
           f"sampling scheme must be 'onset' or 'random', got {self.scheme!r}")
    _check(self.block_frames > 0, f"block_frames must be > 0, got {self.block_frames}")
    _check(self.segment_frames >= 1, f"segment_frames must be >= 1, got {self.segment_frames}")
    _check(self.num_blocks > 0, f"num_blocks must be > 0, got {self.num_blocks}")
    _check(self.blocks_per_clip >= 0, "blocks_per_clip must be >= 0")


@dataclasses.dataclass(frozen=True)
class PCAConfig:
  """PCA whitening of spectral blocks (docs/model.md#pca-whitening).

  Args:
    retained_variance: keep the leading principal components whose cumulative share
      of the variance first exceeds this fraction (0.9).
    epsilon: added to the eigenvalues before the inverse square root,
      ``V = diag((d + ε)^-½)·Eᵀ`` (0.01).
    batch_size: blocks per batch of the streaming mean/covariance pass.
  """

  retained_variance: float = 0.9
  epsilon: float = 0.01
  batch_size: int = 4096

  def __post_init__(self):
    _check(0 < self.retained_variance <= 1,
           f"retained_variance must be in (0, 1], got {self.retained_variance}")
    _check(self.epsilon >= 0, f"epsilon must be >= 0, got {self.epsilon}")
    _check(self.batch_size > 0, f"batch_size must be > 0, got {self.batch_size}")


@dataclasses.dataclass(frozen=True)
class SparseRBMConfig:
  """Gaussian–binary sparse RBM, CD-1 with the code's schedule (docs/model.md#sparse-rbm).

  Args:
    num_hidden: binary hidden units (1024).
    batch_size: CD-1 minibatch (100); a last incomplete batch is dropped (code).
    epochs: passes over the blocks (300).
    learning_rate: learning rate of the first epoch (0.007; the paper's text says 0.03).
    learning_rate_decay: ×decay after every epoch (0.99).
    min_learning_rate: floor of the annealed learning rate (0.003).
    initial_momentum: momentum of the first epochs (0.5).
    final_momentum: momentum after the switch (0.9).
    momentum_switch_fraction: the final momentum applies once the 1-based epoch exceeds
      epochs·fraction (maxEpoch/5 in the code).
    weight_cost: L2 weight cost µ on W only (0.001).
    sparsity_target: target mean activation ρ of every hidden unit (0.02).
    sparsity_decay: running mean ``q ← decay·q + (1 − decay)·mean_batch(p(h|v))`` (0.99).
    sparsity_gain: the hidden-bias increment gets ``−gain·lr·(q − ρ)`` each step (3).
    init_stddev: W ~ init_stddev·N(0, 1); biases start at 0 (0.01).
    shuffle: permute the blocks once (seeded) before cutting the fixed minibatches.
      The authors batch in file order; our block shards have no meaningful order, so
      a seeded permutation keeps one clip's blocks from filling a batch. False keeps
      the order of the block TFRecords.
    seed: seed of the initial weights, the permutation and the CD-1 sampling.
  """

  num_hidden: int = 1024
  batch_size: int = 100
  epochs: int = 300
  learning_rate: float = 0.007
  learning_rate_decay: float = 0.99
  min_learning_rate: float = 0.003
  initial_momentum: float = 0.5
  final_momentum: float = 0.9
  momentum_switch_fraction: float = 0.2
  weight_cost: float = 0.001
  sparsity_target: float = 0.02
  sparsity_decay: float = 0.99
  sparsity_gain: float = 3.0
  init_stddev: float = 0.01
  shuffle: bool = True
  seed: int = 0

  def __post_init__(self):
    _check(self.num_hidden > 0, "num_hidden must be > 0")
    _check(self.batch_size > 0, "batch_size must be > 0")
    _check(self.epochs >= 0, "epochs must be >= 0")
    _check(0 < self.sparsity_target < 1, "sparsity_target must be in (0, 1)")
    _check(0 <= self.sparsity_decay < 1, "sparsity_decay must be in [0, 1)")
    _check(self.learning_rate > 0 and self.min_learning_rate >= 0,
           "learning rates must be positive")
    _check(0 < self.learning_rate_decay <= 1, "learning_rate_decay must be in (0, 1]")


@dataclasses.dataclass(frozen=True)
class PoolingConfig:
  """Bag-of-features pooling: max over pool_frames, then the mean (paper §III-C).

  Args:
    pool_frames: max-pooling window in block positions. 86 ≈ 2 s is the authors' final
      script (``run_tagatune_dnn.m``); their ``default_options.m`` has 43 ≈ 1 s, and
      the paper's grid is 11, 22, 43, 86, 172 (1–2 s best). Windows start at the
      clip's first block and the last one may be short.
  """

  pool_frames: int = 86

  def __post_init__(self):
    _check(self.pool_frames >= 1, f"pool_frames must be >= 1, got {self.pool_frames}")


# Defaults of the layer and function signatures that take these values directly.
DEFAULT_BLOCK_FRAMES = SamplingConfig().block_frames
DEFAULT_POOL_FRAMES = PoolingConfig().pool_frames

# Tagging with an export (deepbof-tag, deepbof-tag-catalog, deepbof-similar): clips up
# to this long go through the one-shot signature, longer ones are streamed in chunks of
# about this length; clips per one-shot batch; tags kept per file in a catalogue.
DEFAULT_CHUNK_SECONDS = 30.0
DEFAULT_TAG_BATCH_SIZE = 16
DEFAULT_CATALOG_TOP_K = 10



@dataclasses.dataclass(frozen=True)
class LocalFeatureConfig:
  """Everything of the unsupervised local-feature stage (learn-local-features, encode).

  Args:
    pca: PCA whitening.
    rbm: the sparse RBM and its CD-1 schedule.
    pooling: bag-of-features pooling of the encode stage.
    encode_batch_size: clips per padded batch when encoding.
    num_plot_filters: RBM filters (largest weight norm first) drawn in filters.png.
    histogram_blocks: training blocks used for the hidden-activation histogram.
  """

  pca: PCAConfig = dataclasses.field(default_factory=PCAConfig)
  rbm: SparseRBMConfig = dataclasses.field(default_factory=SparseRBMConfig)
  pooling: PoolingConfig = dataclasses.field(default_factory=PoolingConfig)
  encode_batch_size: int = 8
  num_plot_filters: int = 100
  histogram_blocks: int = 10000

  def __post_init__(self):
    _check(self.encode_batch_size > 0, "encode_batch_size must be > 0")
    _check(self.num_plot_filters >= 0, "num_plot_filters must be >= 0")
    _check(self.histogram_blocks > 0, "histogram_blocks must be > 0")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """Greedy layer-wise RBM pretraining of the song-level DNN (docs/model.md#song-level-dnn).

  Layer 1 is binary-visible/ReLU-hidden, layers 2–3 ReLU/ReLU, trained by CD-1 with
  noisy-ReLU hidden samples on the (by default raw) bag-of-features. The learning rates
  anneal ×learning_rate_decay per epoch down to their floors.

  Args:
    epochs: CD-1 epochs per layer (200).
    batch_size: minibatch size (100).
    weight_costs: L2 weight cost per layer, bottom first; "WC Inc" (0.001, 0.01, 0.1)
      is the paper's recommendation (0.001 at the bottom, non-decreasing upward).
      Needs at least ``dnn.num_hidden_layers`` entries.
    binary_relu_learning_rate: initial learning rate of a binary-visible layer 1.
    binary_relu_min_learning_rate: its floor.
    relu_relu_learning_rate: initial learning rate of the ReLU-visible layers 2–3 and
      of a Gaussian-visible layer 1 (the authors' rule: every RBM without binary
      inputs gets 0.003 → 0.001).
    relu_relu_min_learning_rate: their floor.
    learning_rate_decay: ×decay per epoch (0.99).
    initial_momentum: momentum before the switch (0.5).
    final_momentum: momentum after the switch (0.9).
    momentum_switch_fraction: switch after epochs·fraction epochs (maxEpoch/5).
    init_stddev: W ~ init_stddev·N(0, 1); biases start at 0.
    shuffle: False (the authors' code; default) visits the examples in file order
      every epoch and drops the same trailing examples; True reshuffles them every
      epoch (seeded) and drops a different remainder (docs/deviations.md).
    first_layer_visible: visible units of RBM 1: "binary" (the paper; sigmoid
      reconstructions, right for inputs in [0, 1]), "gaussian" (linear reconstructions,
      right for standardized inputs), "relu" (the bottom-RBM alternative of the
      paper's §IV-D.2, learning rates as the ReLU–ReLU layers) or "auto": gaussian
      when ``dnn.input_normalization`` is "standardize", binary otherwise (so the
      default is the authors' binary-visible RBM on the raw bag-of-features). A binary-visible
      RBM on standardized inputs diverges (its sigmoid reconstructions cannot reach
      the negative inputs, so the weights grow without bound), hence "auto".
    seed: seed of the weight init, the noise draws and the shuffles.
  """

  epochs: int = 200
  batch_size: int = 100
  weight_costs: Tuple[float, ...] = (0.001, 0.01, 0.1)
  binary_relu_learning_rate: float = 0.03
  binary_relu_min_learning_rate: float = 0.01
  relu_relu_learning_rate: float = 0.003
  relu_relu_min_learning_rate: float = 0.001
  learning_rate_decay: float = 0.99
  initial_momentum: float = 0.5
  final_momentum: float = 0.9
  momentum_switch_fraction: float = 0.2
  init_stddev: float = 0.01
  shuffle: bool = False
  first_layer_visible: str = "auto"
  seed: int = 0

  def __post_init__(self):
    _check(self.epochs >= 0, f"pretrain.epochs must be >= 0, got {self.epochs}")
    _check(self.batch_size >= 1, f"pretrain.batch_size must be >= 1, got {self.batch_size}")
    _check(len(self.weight_costs) >= 1 and all(w >= 0 for w in self.weight_costs),
           f"pretrain.weight_costs must be non-empty and >= 0, got {self.weight_costs}")
    _check(min(self.binary_relu_learning_rate, self.relu_relu_learning_rate) > 0,
           "pretrain learning rates must be > 0")
    _check(0 < self.learning_rate_decay <= 1,
           f"pretrain.learning_rate_decay must be in (0, 1], got {self.learning_rate_decay}")
    _check(self.init_stddev > 0, "pretrain.init_stddev must be > 0")
    _check(self.first_layer_visible in ("auto", "binary", "gaussian", "relu"),
           "pretrain.first_layer_visible must be 'auto', 'binary', 'gaussian' or "
           f"'relu', got {self.first_layer_visible!r}")


PRETRAINED_BIASES = ("next_visible", "hidden")
DROPOUT_SCALINGS = ("weights", "inverted")


@dataclasses.dataclass(frozen=True)
class DNNConfig:
  """Song-level DNN (docs/model.md#song-level-dnn).

  Args:
    num_hidden_layers: 1–3 hidden layers (the paper's ablation); more are allowed.
    hidden_units: ReLU units per hidden layer (512).
    dropout: dropout rate after every hidden layer (0.5).
    input_dropout: dropout on the (normalized) input; the paper says "hidden and
      input layers", the authors' code drops hidden units only (default 0).
    init: "pretrained" (weights of the RBMs, biases per ``pretrained_biases``) or
      "random" (Glorot-uniform weights and zero biases, seeded: the authors'
      ``default_mlp.m``).
    pretrained_biases: the biases a pretrained network starts from. "next_visible"
      (the authors' ``tagatune_dnn.m``; default): hidden layer i gets the *visible*
      bias of RBM i+1 and the top hidden layer 0, the RBMs' hidden biases are unused.
      "hidden": each hidden layer gets its own RBM's hidden bias (the textbook DBN
      mapping). docs/deviations.md has the measured effect.
    dropout_scaling: "weights" (the authors' non-inverted dropout; default): training
      multiplies by a 0/1 mask without rescaling, and inference scales every hidden
      layer's output by (1 − dropout), which is deepmat's halving of the weights
      leaving it. "inverted" (Keras' ``Dropout``): training divides the kept units by
      (1 − dropout), inference is the identity. The same function class, but not the
      same parameters, so a network initialised from the RBMs starts at another
      effective scale and AdaDelta's steps differ (docs/deviations.md).
    input_normalization: the first layer of the model: "none" (the raw
      bag-of-features, in [0, 1]: the authors' final scripts; default), "clip_max"
      (each clip divided by its own maximum: the authors' ``input_normalization``
      option) or "standardize" ((x − mean)/std with the training split's statistics;
      ours). See docs/model.md#input-normalization.
    head: "dnn" (this network) or "logreg" (per-tag logistic regression on the
      standardized bag-of-features, a baseline; no pretraining).
  """

  num_hidden_layers: int = 3
  hidden_units: int = 512
  dropout: float = 0.5
  input_dropout: float = 0.0
  init: str = "pretrained"
  pretrained_biases: str = "next_visible"
  dropout_scaling: str = "weights"
  input_normalization: str = "none"
  head: str = "dnn"

  def __post_init__(self):
    _check(self.num_hidden_layers >= 1, "num_hidden_layers must be >= 1")
    _check(self.hidden_units >= 1, "hidden_units must be >= 1")
    _check(self.init in ("pretrained", "random"),
           f"init must be 'pretrained' or 'random', got {self.init!r}")
    _check(self.pretrained_biases in PRETRAINED_BIASES,
           f"pretrained_biases must be one of {PRETRAINED_BIASES}, got "
           f"{self.pretrained_biases!r}")
    _check(self.dropout_scaling in DROPOUT_SCALINGS,
           f"dropout_scaling must be one of {DROPOUT_SCALINGS}, got "
           f"{self.dropout_scaling!r}")
    _check(self.input_normalization != "max", REMOVED_MAX_MODE)
    _check(self.input_normalization in ("none", "clip_max", "standardize"),
           "input_normalization must be 'none', 'clip_max' or 'standardize', got "
           f"{self.input_normalization!r}")
    _check(self.head in ("dnn", "logreg"),
           f"head must be 'dnn' or 'logreg', got {self.head!r}")
    _check(0 <= self.dropout < 1, "dropout must be in [0, 1)")
    _check(0 <= self.input_dropout < 1, "input_dropout must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  """Supervised fine-tuning: AdaDelta, cross-entropy, best validation epoch.

  Args:
    epochs: fine-tuning epochs; 0 (default) derives them from ``updates``. The
      ``paper`` preset sets the code's 100.
    updates: the fine-tuning budget in AdaDelta updates when ``epochs`` is 0:
      ``epochs = ceil(updates / ceil(train clips / batch_size))``. 11,500 is the
      authors' 100 epochs of 115 minibatches (MagnaTagATune's 14,660 training clips),
      so a data set of any size gets as many updates as the paper's run
      (docs/model.md#fine-tuning); the best validation epoch is kept either way.
    batch_size: minibatch size (128).
    shuffle: False (the authors' deepmat; default) visits the training clips in file
      order every epoch; True draws a seeded permutation per epoch.
    optimizer: "adadelta_deepmat" (the authors' AdaDelta: ρ = 0 on the first update, so
      both running averages start at the first squared gradient and step; default) or
      "adadelta_keras" (``keras.optimizers.Adadelta``, averages start at 0).
    learning_rate: AdaDelta step multiplier (1.0, AdaDelta's own formulation; Keras'
      default is 0.001).
    adadelta_rho: decay of AdaDelta's running averages (0.99 in the code).
    adadelta_epsilon: AdaDelta's epsilon (1e-8 in the code).
    early_stopping_patience: stop after this many epochs without a better
      validation AUC-tag; 0 disables early stopping.
    mixed_precision: float16 compute with float32 variables (GPU only; ignored on CPU).
    tensorboard: write TensorBoard logs to model_dir/finetune/tensorboard.
    checkpoint_every_seconds: the least time between two resumable checkpoints (the
      last epoch is always written; 0: after every epoch).
    logreg_c_values: inverse L2 strengths tried by the logistic-regression head; the
      one with the best validation AUC-tag is kept.
    seed: seed of the random init, dropout and the per-epoch shuffles.
  """

  epochs: int = 0
  updates: int = 11_500
  batch_size: int = 128
  shuffle: bool = False
  optimizer: str = "adadelta_deepmat"
  learning_rate: float = 1.0
  adadelta_rho: float = 0.99
  adadelta_epsilon: float = 1e-8
  early_stopping_patience: int = 0
  mixed_precision: bool = False
  tensorboard: bool = True
  checkpoint_every_seconds: float = 60.0
  logreg_c_values: Tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)
  seed: int = 0

  def num_epochs(self, train_examples: int) -> int:
    """The epochs this config trains on ``train_examples`` clips (``epochs`` or from
    ``updates``)."""
    if self.epochs > 0:
      return int(self.epochs)
    batches = max(1, math.ceil(int(train_examples) / self.batch_size))
    return max(1, math.ceil(self.updates / batches))

  def __post_init__(self):
    _check(self.epochs >= 0, f"finetune.epochs must be >= 0 (0: from updates), got "
           f"{self.epochs}")
    _check(self.epochs > 0 or self.updates >= 1,
           f"finetune.updates must be >= 1 when finetune.epochs is 0, got {self.updates}")
    _check(self.batch_size >= 1, f"finetune.batch_size must be >= 1, got {self.batch_size}")
    _check(self.optimizer in ("adadelta_deepmat", "adadelta_keras"),
           "finetune.optimizer must be 'adadelta_deepmat' or 'adadelta_keras', got "
           f"{self.optimizer!r}")
    _check(self.learning_rate > 0, "finetune.learning_rate must be > 0")
    _check(0 < self.adadelta_rho < 1, "finetune.adadelta_rho must be in (0, 1)")
    _check(self.early_stopping_patience >= 0,
           "finetune.early_stopping_patience must be >= 0 (0 disables it)")
    _check(len(self.logreg_c_values) >= 1 and all(c > 0 for c in self.logreg_c_values),
           f"finetune.logreg_c_values must be non-empty and > 0, got {self.logreg_c_values}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The operative configuration of one `deepbof-train` run.

  Args:
    local: the local-feature stage (PCA whitening, sparse RBM, pooling).
    pretrain: RBM pretraining of the DNN.
    dnn: the song-level network.
    finetune: supervised fine-tuning.
    seed: the run's seed; ``deepbof-train --seed`` sets it and every stage's seed.
  """

  local: LocalFeatureConfig = dataclasses.field(default_factory=LocalFeatureConfig)
  pretrain: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
  dnn: DNNConfig = dataclasses.field(default_factory=DNNConfig)
  finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
  seed: int = 0

  def __post_init__(self):
    _check(self.dnn.head != "dnn" or self.dnn.init != "pretrained" or
           len(self.pretrain.weight_costs) >= self.dnn.num_hidden_layers,
           f"pretrain.weight_costs has {len(self.pretrain.weight_costs)} entries for "
           f"{self.dnn.num_hidden_layers} hidden layers; give one per layer")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """Execution settings of the exported SavedModel (``deepbof-export``'s flags).

  Args:
    clips_in_flight: clips of one request computed at the same time inside the
      SavedModel; each goes through the front end and the encoder alone, which keeps
      its intermediates in cache (2 suits 2 cores).
    max_request_seconds: the longest clip the one-shot signatures accept; a longer one
      is refused with INVALID_ARGUMENT before it is computed (long audio goes through
      the streaming signatures).
    fused_frontend: the one-shot signatures compute the front end with the fused
      kernel ``DeepbofLogMel`` (``deepbof_tf.native.frontend_op``), 2.5–3× faster than
      core ops (the whole signature about 1.5× on 2 cores); such a SavedModel loads only where that library is loaded, not in a
      stock TF Serving binary (serving/README.md#fused-front-end). Off by default.
  """

  clips_in_flight: int = 2
  max_request_seconds: float = 600.0
  fused_frontend: bool = False


@dataclasses.dataclass(frozen=True)
class Preset:
  """A named configuration for a dataset size.

  Args:
    name: the preset's name (``--preset``).
    description: one line saying what it changes and why (printed by the tools).
    num_blocks: the feature-learning block budget of ``deepbof-preprocess``.
    train_overrides: dotted ``TrainConfig`` overrides (applied before ``--config``,
      ``--set`` and the convenience flags, which all win over the preset).
  """

  name: str
  description: str
  num_blocks: int
  train_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# The authors' final script, run_tagatune_dnn.m (MagnaTagATune), value by value. The
# dataclass defaults already are these; the preset spells them out so that it stays the
# authors' configuration whatever a default becomes. Sampling (8-frame onset blocks) is
# the preprocess job's default; the weight costs are one member of the WC Inc family the
# script loops over (deepbof-experiment --grid=weight_cost runs all of them).
PAPER_TRAIN_OVERRIDES: Mapping[str, Any] = {
    "local.rbm.num_hidden": 1024,
    "local.rbm.sparsity_target": 0.02,
    "local.pooling.pool_frames": 86,
    "dnn.num_hidden_layers": 3,
    "dnn.hidden_units": 512,
    "dnn.dropout": 0.5,
    "dnn.input_normalization": "none",
    "dnn.init": "pretrained",
    "dnn.pretrained_biases": "next_visible",
    "dnn.dropout_scaling": "weights",
    "pretrain.first_layer_visible": "binary",
    "pretrain.shuffle": False,
    "pretrain.binary_relu_learning_rate": 0.03,
    "pretrain.binary_relu_min_learning_rate": 0.01,
    "pretrain.relu_relu_learning_rate": 0.003,
    "pretrain.relu_relu_min_learning_rate": 0.001,
    "pretrain.epochs": 200,
    "finetune.optimizer": "adadelta_deepmat",
    "finetune.learning_rate": 1.0,
    "finetune.adadelta_rho": 0.99,
    "finetune.adadelta_epsilon": 1e-8,
    "finetune.epochs": 100,
    "finetune.batch_size": 128,
    "finetune.shuffle": False,
    "finetune.early_stopping_patience": 0,
}

PRESETS: Dict[str, Preset] = {
    "paper": Preset("paper", "the authors' run_tagatune_dnn.m (MagnaTagATune scale): "
                    "200,000 blocks, pooling 86, raw input, binary-visible RBM 1, RBM "
                    "visible biases as hidden biases, non-inverted dropout, file-order "
                    "batches, deepmat AdaDelta, 100 fine-tuning epochs",
                    num_blocks=200_000, train_overrides=PAPER_TRAIN_OVERRIDES),
    # The embedded demo corpus (600 clips of 15 s, ~430 for training): the block budget
    # is scaled to the corpus (~24,000 onset candidates exist), and fine-tuning gets the
    # paper's number of updates rather than its 100 epochs (the default
    # finetune.updates; docs/model.md#fine-tuning). Everything else is the paper
    # preset's, except that RBM 1 follows the input normalization ("auto": binary on
    # the default raw input), so that a run with
    # --set=dnn.input_normalization=standardize gets a Gaussian-visible RBM 1.
    "demo": Preset("demo", "demo scale: 20,000 blocks (paper 200,000) and the paper's "
                   "11,500 fine-tuning updates (paper: 100 epochs of MagnaTagATune); "
                   "every other value the paper's",
                   num_blocks=20_000,
                   train_overrides={**{k: v for k, v in PAPER_TRAIN_OVERRIDES.items()
                                       if k not in ("pretrain.first_layer_visible",
                                                    "finetune.epochs")},
                                    "finetune.epochs": 0}),
}


def describe(config: "TrainConfig") -> str:
  """The operative configuration in a few lines, the paper's terms (printed by the tools).

  Args:
    config: the operative configuration.
  """
  local, pre, dnn, fine = config.local, config.pretrain, config.dnn, config.finetune
  first = pre.first_layer_visible
  if first == "auto":
    first = "gaussian" if dnn.input_normalization == "standardize" else "binary"
  binary = first == "binary"
  first_rates = ((pre.binary_relu_learning_rate, pre.binary_relu_min_learning_rate)
                 if binary else (pre.relu_relu_learning_rate, pre.relu_relu_min_learning_rate))
  lines = [
      f"local features: PCA {local.pca.retained_variance:.0%} of the variance, sparse RBM "
      f"{local.rbm.num_hidden} units, sparsity {local.rbm.sparsity_target}, "
      f"{local.rbm.epochs} epochs",
      f"pooling: {local.pooling.pool_frames} frames",
      f"DNN: {dnn.head}, {dnn.num_hidden_layers} x {dnn.hidden_units} ReLU, dropout "
      f"{dnn.dropout}, input normalization {dnn.input_normalization}, init {dnn.init}",
  ]
  if dnn.head == "dnn" and dnn.init == "pretrained":
    costs = ", ".join(f"{w:g}" for w in pre.weight_costs[:dnn.num_hidden_layers])
    lines.append(
        f"pretraining: RBM 1 {first}-visible {first_rates[0]:g} -> {first_rates[1]:g}, "
        f"RBMs 2+ ReLU-visible {pre.relu_relu_learning_rate:g} -> "
        f"{pre.relu_relu_min_learning_rate:g}, {pre.epochs} epochs, weight costs ({costs})")
    biases = ("RBM i+1's visible bias for hidden layer i, 0 on top (the authors')"
              if dnn.pretrained_biases == "next_visible" else "each RBM's hidden bias")
    order = "file order" if not pre.shuffle else "reshuffled every epoch"
    lines.append(f"pretrained biases: {biases}; RBM batches in {order}")
  dropout = ("non-inverted (0/1 masks; outputs x(1 - rate) at test, the authors')"
             if dnn.dropout_scaling == "weights" else "inverted (Keras)")
  budget = (f"{fine.epochs} epochs" if fine.epochs > 0 else
            f"{fine.updates:,} updates (epochs from the training set's size)")
  order = "file order" if not fine.shuffle else "reshuffled every epoch"
  lines.append(
      f"fine-tuning: {fine.optimizer} (rho {fine.adadelta_rho:g}, epsilon "
      f"{fine.adadelta_epsilon:g}, lr {fine.learning_rate:g}), {budget}, batch "
      f"{fine.batch_size} in {order}, dropout {dnn.dropout:g} {dropout}, the best "
      "validation AUC-tag epoch kept")
  return "\n".join(lines)


def preset(name: str) -> Preset:
  """The preset called ``name``; a clear error lists the known ones."""
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name]


def to_dict(config: Any) -> Dict[str, Any]:
  """A JSON-serialisable dict of a (nested) config dataclass."""
  return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: Type[T], values: Mapping[str, Any]) -> T:
  """Builds ``cls`` from a (nested, possibly partial) dict; unknown keys are errors."""
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = set(values) - set(fields)
  if unknown:
    raise ValueError(f"unknown {cls.__name__} field(s): {sorted(unknown)}; "
                     f"known: {sorted(fields)}")
  defaults = cls()
  kwargs = {}
  for name, value in values.items():
    default = getattr(defaults, name)
    if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
      kwargs[name] = from_dict(type(default), value)
    elif isinstance(default, tuple) and isinstance(value, (list, tuple)):
      kwargs[name] = tuple(value)
    else:
      kwargs[name] = value
  return cls(**kwargs)


def override(config: T, dotted: Mapping[str, Any]) -> T:
  """Returns ``config`` with ``{"local.rbm.epochs": 10, ...}`` overrides applied."""
  nested: Dict[str, Any] = {}
  for key, value in dotted.items():
    parts = key.split(".")
    node = nested
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  merged = _merge(to_dict(config), nested)
  return from_dict(type(config), merged)


def _merge(base: Dict[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
  out = dict(base)
  for key, value in update.items():
    if isinstance(value, Mapping) and isinstance(out.get(key), dict):
      out[key] = _merge(out[key], value)
    else:
      out[key] = value
  return out
