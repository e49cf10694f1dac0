"""CD-1 training of the ReLU RBMs (``deepbof_tf.layers.ReLURBM``) of the song-level DNN.

The flavours of the authors' ``train_rbm.m`` plus a Gaussian-visible one:
  * layer 1: **binary visible / ReLU hidden** (the paper) for inputs in [0, 1], or
    **Gaussian visible / ReLU hidden** (Nair & Hinton's original NReLU RBM) for
    standardized inputs — see "binary visible units on real-valued inputs" below;
  * layers 2–3: **ReLU visible / ReLU hidden**, on the ReLU activations below.

CD-1 as the authors' code does it (facts, in our own formulation; kernel W is
[visible, hidden] as in Keras):
  * positive phase: ``a = vW + c``; the statistics use the noise-free ``relu(a)``;
  * hidden sample (noisy ReLU, Nair & Hinton 2010): ``h = max(0, a + sqrt(σ(a))·n)``
    with ``n ~ N(0, 1)``, i.e. Gaussian noise of **variance** σ(a) (std sqrt(σ(a)));
    the paper's ``N(0, σ(x))`` names the variance;
  * negative visible: the mean, not a sample: ``σ(hWᵀ + b)`` for binary visible
    units, ``relu(hWᵀ + b)`` for ReLU visible units, ``hWᵀ + b`` for Gaussian ones;
  * negative hidden: ``relu(v⁻W + c)`` (noise-free);
  * updates with momentum and an L2 weight cost on W only:
    ``ΔW ← m·ΔW + lr·((vᵀrelu(a) − v⁻ᵀh⁻)/B − λ·W)``, ``Δb ← m·Δb + lr/B·Σ(v − v⁻)``,
    ``Δc ← m·Δc + lr/B·Σ(relu(a) − h⁻)``; no sparsity term (the authors' deep-network
    RBMs set the sparsity target to 0, which switches their sparsity update off).

Binary visible units on real-valued inputs: the authors' code never binarises or
clips the data of a binary-visible RBM; the positive statistics use the real values
as they are and only the reconstruction goes through the sigmoid. We mirror that.
Their inputs are the raw (or max-normalized) bag-of-features, which lie in [0, 1].
On standardized inputs the sigmoid reconstructions cannot follow the negative values,
the visible biases run off and ``vᵀrelu(vW + c)`` grows W without bound (measured:
max |W| ≈ 150 after 5 epochs at lr 0.03, and the next RBM overflows), so standardized
inputs get Gaussian visible units (``PretrainConfig.first_layer_visible="auto"``),
trained with the ReLU–ReLU learning rates (0.003 → 0.001): at 0.03 a Gaussian-visible
RBM diverges within two epochs on a real, standardized bag-of-features (its rarely
active features standardize to values in the hundreds).

Training runs one ``tf.function`` per epoch (a ``tf.range`` loop over the minibatches).
The noise draws are stateless and seeded by (seed, layer, epoch, batch), and the
batches go in file order (``shuffle=True``: the epoch's permutation comes from
``deepbof_tf.seeds.generator(seed, layer, epoch)``, i.e.
``numpy.random.default_rng((seed, layer, epoch))``), so the same config and seed give
the same weights. Under a multi-replica ``tf.distribute`` strategy every minibatch is
split over the replicas, each drawing the noise of the whole minibatch and keeping its
rows (``ReLURBMTrainer``; docs/multi-device.md).

The schedule defaults (``ReLURBMSchedule``) are layer 1's in the authors'
configuration, read from ``deepbof_tf.config.PretrainConfig``.

See docs/model.md#song-level-dnn.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from deepbof_tf import seeds
from deepbof_tf.config import PretrainConfig
from deepbof_tf.layers.relu_rbm import ReLURBM, visible_activation
from deepbof_tf.training import distribute
from deepbof_tf.training import schedule

# The authors' pretraining configuration: the source of ReLURBMSchedule's defaults.
_AUTHORS = PretrainConfig()


@dataclasses.dataclass(frozen=True)
class ReLURBMSchedule:
  """Hyperparameters of one ReLU RBM; the defaults are layer 1's (binary visible units).

  The defaults are read from ``PretrainConfig``'s (the authors' configuration, which
  holds the numbers); ``pretraining.rbm_schedule`` makes the schedule of any layer of
  a given ``PretrainConfig``.

  Args:
    epochs: training epochs (``PretrainConfig.epochs``).
    batch_size: minibatch size (``PretrainConfig.batch_size``); the remainder of each
      epoch is dropped as in the authors' code (which drops the same trailing examples
      every epoch).
    learning_rate: learning rate of epoch 0 (``PretrainConfig.binary_relu_learning_rate``;
      ``relu_relu_learning_rate`` for ReLU or Gaussian visible units).
    min_learning_rate: floor of the annealed learning rate
      (``binary_relu_min_learning_rate`` / ``relu_relu_min_learning_rate``).
    learning_rate_decay: ×decay per epoch.
    initial_momentum: momentum before the switch.
    final_momentum: momentum after epoch ``epochs·momentum_switch_fraction``.
    momentum_switch_fraction: the switch point as a fraction of ``epochs`` (the code's
      maxEpoch/5).
    weight_cost: L2 weight cost on W (layer 1's entry of ``PretrainConfig.weight_costs``;
      the "WC Inc" grid).
    shuffle: False (the authors' code): the examples in their order every epoch; True
      reshuffles them every epoch (seeded).
  """

  epochs: int = _AUTHORS.epochs
  batch_size: int = _AUTHORS.batch_size
  learning_rate: float = _AUTHORS.binary_relu_learning_rate
  min_learning_rate: float = _AUTHORS.binary_relu_min_learning_rate
  learning_rate_decay: float = _AUTHORS.learning_rate_decay
  initial_momentum: float = _AUTHORS.initial_momentum
  final_momentum: float = _AUTHORS.final_momentum
  momentum_switch_fraction: float = _AUTHORS.momentum_switch_fraction
  weight_cost: float = _AUTHORS.weight_costs[0]
  shuffle: bool = _AUTHORS.shuffle


def cd1_update(kernel: tf.Tensor, hidden_bias: tf.Tensor, visible_bias: tf.Tensor,
               kernel_inc: tf.Tensor, hidden_bias_inc: tf.Tensor,
               visible_bias_inc: tf.Tensor, visible_data: tf.Tensor, noise: tf.Tensor, *,
               visible: str, learning_rate, momentum, weight_cost
               ) -> Tuple[Tuple[tf.Tensor, ...], tf.Tensor]:
  """One CD-1 step of a ReLU-hidden RBM as pure tensor math (see the module docstring).

  Args:
    kernel: W, [visible, hidden].
    hidden_bias: c, [hidden].
    visible_bias: b, [visible].
    kernel_inc: momentum buffer of W.
    hidden_bias_inc: momentum buffer of c.
    visible_bias_inc: momentum buffer of b.
    visible_data: v, [batch, visible].
    noise: standard-normal draws, [batch, hidden] (injected so tests can share them).
    visible: "binary" (sigmoid), "relu" or "gaussian" (identity, unit variance)
      reconstruction of the visible units.
    learning_rate: step size of this epoch.
    momentum: momentum of this epoch.
    weight_cost: L2 weight cost on W.

  Returns:
    ((new kernel, hidden_bias, visible_bias, kernel_inc, hidden_bias_inc,
    visible_bias_inc), reconstruction error = mean over the batch of Σ(v − v⁻)²).
  """
  batch = tf.cast(tf.shape(visible_data)[0], visible_data.dtype)
  statistics = cd1_statistics(kernel, hidden_bias, visible_bias, visible_data, noise,
                              visible=visible)
  state = apply_cd1_statistics(
      kernel, hidden_bias, visible_bias, kernel_inc, hidden_bias_inc, visible_bias_inc,
      statistics[:3], batch, learning_rate=learning_rate, momentum=momentum,
      weight_cost=weight_cost)
  return state, tf.reduce_mean(statistics[3])


def cd1_statistics(kernel: tf.Tensor, hidden_bias: tf.Tensor, visible_bias: tf.Tensor,
                   visible_data: tf.Tensor, noise: tf.Tensor, *, visible: str
                   ) -> Tuple[tf.Tensor, ...]:
  """The batch sums of one CD-1 step (additive over any split of the batch's rows).

  Args:
    kernel: W, [visible, hidden].
    hidden_bias: c, [hidden].
    visible_bias: b, [visible].
    visible_data: v, [rows, visible].
    noise: standard-normal draws, [rows, hidden].
    visible: the visible type (see ``cd1_update``).

  Returns:
    (vᵀrelu(a) − v⁻ᵀh⁻ [visible, hidden], Σ(v − v⁻) [visible], Σ(relu(a) − h⁻) [hidden],
    per-row squared reconstruction error Σ_j (v − v⁻)² [rows]).
  """
  pre_hidden = tf.matmul(visible_data, kernel) + hidden_bias
  positive_hidden = tf.nn.relu(pre_hidden)
  hidden_sample = tf.nn.relu(pre_hidden + tf.sqrt(tf.sigmoid(pre_hidden)) * noise)
  pre_visible = tf.matmul(hidden_sample, kernel, transpose_b=True) + visible_bias
  negative_visible = visible_activation(visible, pre_visible, tf.nn)
  negative_hidden = tf.nn.relu(tf.matmul(negative_visible, kernel) + hidden_bias)

  positive_prods = tf.matmul(visible_data, positive_hidden, transpose_a=True)
  negative_prods = tf.matmul(negative_visible, negative_hidden, transpose_a=True)
  return (positive_prods - negative_prods,
          tf.reduce_sum(visible_data - negative_visible, axis=0),
          tf.reduce_sum(positive_hidden - negative_hidden, axis=0),
          tf.reduce_sum(tf.square(visible_data - negative_visible), axis=1))


def apply_cd1_statistics(kernel, hidden_bias, visible_bias, kernel_inc, hidden_bias_inc,
                         visible_bias_inc, statistics, batch, *, learning_rate,
                         momentum, weight_cost) -> Tuple[tf.Tensor, ...]:
  """The momentum update of ``cd1_update`` from the (summed) batch statistics.

  Args:
    kernel, hidden_bias, visible_bias: the parameters.
    kernel_inc, hidden_bias_inc, visible_bias_inc: their momentum buffers.
    statistics: the first three outputs of ``cd1_statistics``, summed over the batch.
    batch: the (global) batch size B, as a float tensor.
    learning_rate: step size of this epoch.
    momentum: momentum of this epoch.
    weight_cost: L2 weight cost on W.

  Returns:
    (new kernel, hidden_bias, visible_bias, kernel_inc, hidden_bias_inc,
    visible_bias_inc).
  """
  prods, visible_sum, hidden_sum = statistics
  kernel_inc = momentum * kernel_inc + learning_rate * (
      prods / batch - weight_cost * kernel)
  visible_bias_inc = momentum * visible_bias_inc + (learning_rate / batch) * visible_sum
  hidden_bias_inc = momentum * hidden_bias_inc + (learning_rate / batch) * hidden_sum
  return (kernel + kernel_inc, hidden_bias + hidden_bias_inc,
          visible_bias + visible_bias_inc, kernel_inc, hidden_bias_inc,
          visible_bias_inc)


def noise_seed(seed: int, layer_index: int, epoch, batch) -> tf.Tensor:
  """The stateless seed of the noise draws of one minibatch (int64 throughout).

  ``stateless_fold_in`` returns different seeds for int32 and int64 data, so every
  component is cast to int64 here; the trainer and the tests both call this.

  Args:
    seed: the run's seed.
    layer_index: 0-based position of the RBM in the stack.
    epoch: 0-based epoch (Python int or scalar tensor).
    batch: 0-based minibatch index within the epoch.
  """
  base = tf.constant([seed, layer_index], dtype=tf.int64)
  epoch_seed = tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int64))
  return tf.random.experimental.stateless_fold_in(epoch_seed, tf.cast(batch, tf.int64))


class ReLURBMTrainer:
  """CD-1 training of one :class:`ReLURBM` (one ``tf.function`` per epoch).

  Under a multi-replica ``strategy`` (docs/multi-device.md) the RBM's variables and
  momentum buffers are mirrored and every minibatch is split over the replicas
  (``distribute.replica_rows``; any batch size works). Each replica draws the noise of
  the *whole* minibatch from the one-device seed and keeps its rows, computes the
  additive CD-1 statistics of its rows (``cd1_statistics``), the statistics are summed
  over the replicas and the update divides by the global batch size: the same update as
  on one device up to the order of float additions.

  Args:
    rbm: the layer to train (built here from the data's width if needed; build it
      inside ``strategy.scope()`` yourself, or leave it unbuilt).
    config: its hyperparameters.
    seed: seed of the noise draws and of the per-epoch shuffles.
    layer_index: position in the stack, folded into the seeds so layers differ.
    strategy: a ``tf.distribute`` strategy (None: the current one).
  """

  def __init__(self, rbm: ReLURBM, config: ReLURBMSchedule, seed: int = 0,
               layer_index: int = 0,
               strategy: Optional[tf.distribute.Strategy] = None):
    self.rbm = rbm
    self.config = config
    self.seed = int(seed)
    self.layer_index = int(layer_index)
    self.strategy = strategy or tf.distribute.get_strategy()
    self.replicas = distribute.num_replicas(self.strategy)
    self._epoch_fn: Optional[Callable] = None

  def _build_epoch_fn(self, num_visible: int) -> Callable:
    rbm = self.rbm
    hidden = rbm.units
    with self.strategy.scope():
      kernel_inc = tf.Variable(tf.zeros((num_visible, hidden)), trainable=False)
      hidden_bias_inc = tf.Variable(tf.zeros((hidden,)), trainable=False)
      visible_bias_inc = tf.Variable(tf.zeros((num_visible,)), trainable=False)
    self._increments = (kernel_inc, hidden_bias_inc, visible_bias_inc)
    weight_cost = float(self.config.weight_cost)
    if self.replicas > 1:
      return self._build_distributed_epoch_fn(hidden, weight_cost)

    @tf.function(reduce_retracing=True)
    def run_epoch(batches, epoch, learning_rate, momentum, replay=None):
      num_batches = tf.shape(batches)[0]
      total_error = tf.constant(0.0)
      for b in tf.range(num_batches):
        batch_seed = noise_seed(self.seed, self.layer_index, epoch, b)
        data = batches[b]
        if replay is None:
          noise = tf.random.stateless_normal((tf.shape(data)[0], hidden), seed=batch_seed)
        else:
          noise = replay[b]
        state, error = cd1_update(
            rbm.kernel.value, rbm.hidden_bias.value, rbm.visible_bias.value,
            kernel_inc, hidden_bias_inc, visible_bias_inc, data, noise,
            visible=rbm.visible, learning_rate=learning_rate, momentum=momentum,
            weight_cost=weight_cost)
        rbm.kernel.assign(state[0])
        rbm.hidden_bias.assign(state[1])
        rbm.visible_bias.assign(state[2])
        kernel_inc.assign(state[3])
        hidden_bias_inc.assign(state[4])
        visible_bias_inc.assign(state[5])
        total_error += error
      return total_error / tf.cast(num_batches, tf.float32)

    return run_epoch

  def _build_distributed_epoch_fn(self, hidden: int, weight_cost: float) -> Callable:
    """The epoch of ``_build_epoch_fn`` with every minibatch split over the replicas."""
    rbm, strategy, replicas = self.rbm, self.strategy, self.replicas
    kernel_inc, hidden_bias_inc, visible_bias_inc = self._increments
    batch_size = int(self.config.batch_size)
    total = tf.distribute.ReduceOp.SUM

    @tf.function(reduce_retracing=True)
    def run_distributed_epoch(replica_batches, num_batches, epoch, learning_rate, momentum):
      # replica_batches: per replica its rows of every minibatch, [num_batches, rows, D].
      total_error = tf.constant(0.0)
      batch = tf.constant(float(batch_size))
      for b in tf.range(num_batches):
        batch_seed = noise_seed(self.seed, self.layer_index, epoch, b)

        def replica_statistics(batches):
          context = tf.distribute.get_replica_context()
          data = batches[b]
          start = distribute.replica_row_start(batch_size,
                                               context.replica_id_in_sync_group, replicas)
          # The one-device draw for the whole minibatch; this replica keeps its rows.
          noise = tf.random.stateless_normal((batch_size, hidden), seed=batch_seed)
          noise = noise[start:start + tf.shape(data)[0]]
          prods, visible_sum, hidden_sum, errors = cd1_statistics(
              rbm.kernel.value, rbm.hidden_bias.value, rbm.visible_bias.value, data,
              noise, visible=rbm.visible)
          return prods, visible_sum, hidden_sum, tf.reduce_sum(errors)

        sums = [strategy.reduce(total, value, axis=None)
                for value in strategy.run(replica_statistics, args=(replica_batches,))]
        state = apply_cd1_statistics(
            rbm.kernel.value, rbm.hidden_bias.value, rbm.visible_bias.value,
            kernel_inc, hidden_bias_inc, visible_bias_inc, sums[:3], batch,
            learning_rate=learning_rate, momentum=momentum, weight_cost=weight_cost)
        for variable, value in zip((rbm.kernel, rbm.hidden_bias, rbm.visible_bias,
                                    kernel_inc, hidden_bias_inc, visible_bias_inc), state):
          variable.assign(value)
        total_error += sums[3] / batch
      return total_error / tf.cast(num_batches, tf.float32)

    return run_distributed_epoch

  def fit(self, data: np.ndarray, log_every: int = 10,
          on_epoch_end: Optional[Callable[[int, float], None]] = None,
          replay_noise: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """Trains the RBM on ``data`` ([examples, visible], float32).

    Args:
      data: training inputs (standardized bag-of-features, or the ReLU activations
        of the layer below).
      log_every: log the reconstruction error every this many epochs (0: never).
      on_epoch_end: optional ``fn(epoch, reconstruction_error)``.
      replay_noise: standard-normal draws to use instead of the seeded ones,
        ``[epochs, batches, batch_size, hidden]`` (one device only): how the reference
        test replays the authors' own draws (tests/test_authors_reference.py).

    Returns:
      {"reconstruction_error": [per-epoch mean over batches]}.
    """
    data = np.asarray(data, dtype=np.float32)
    config = self.config
    if data.ndim != 2:
      raise ValueError(f"RBM data must be [examples, visible], got shape {data.shape}")
    num_batches = data.shape[0] // config.batch_size
    if num_batches == 0:
      raise ValueError(f"RBM pretraining needs at least batch_size={config.batch_size} "
                       f"examples, got {data.shape[0]}; lower pretrain.batch_size")
    if not self.rbm.built:
      with self.strategy.scope():
        self.rbm.build((None, data.shape[1]))
    if self._epoch_fn is None:
      self._epoch_fn = self._build_epoch_fn(data.shape[1])
      distribute.log_replica_split(f"RBM layer {self.layer_index + 1}",
                                   config.batch_size, self.replicas)
    data_tensor = tf.constant(data)
    used = num_batches * config.batch_size
    if replay_noise is not None:
      expected = (config.epochs, num_batches, config.batch_size, self.rbm.units)
      if self.replicas > 1 or tuple(np.shape(replay_noise)) != expected:
        raise ValueError(f"replay_noise must be {expected} on one device, got "
                         f"{np.shape(replay_noise)} on {self.replicas} replicas")
    errors = []
    for epoch in range(config.epochs):
      if config.shuffle:
        order = seeds.generator(self.seed, self.layer_index, epoch).permutation(
            data.shape[0])[:used]
      else:
        order = np.arange(used)
      batches = tf.reshape(tf.gather(data_tensor, order),
                           (num_batches, config.batch_size, data.shape[1]))
      lr = schedule.learning_rate(epoch, config.learning_rate, config.learning_rate_decay,
                                  config.min_learning_rate)
      mom = schedule.momentum(epoch, config.epochs, config.initial_momentum,
                              config.final_momentum, config.momentum_switch_fraction)
      args = (tf.constant(epoch, tf.int64), tf.constant(lr, tf.float32),
              tf.constant(mom, tf.float32))
      if self.replicas > 1:
        args = (distribute.distribute_rows(self.strategy, batches, axis=1),
                tf.constant(num_batches)) + args
      else:
        args = (batches,) + args
      if replay_noise is not None:
        args += (tf.constant(replay_noise[epoch], tf.float32),)
      error = float(self._epoch_fn(*args))
      if not np.isfinite(error):
        raise FloatingPointError(
            f"RBM layer {self.layer_index + 1} diverged at epoch {epoch} "
            f"(reconstruction error {error}); lower its learning rate")
      errors.append(error)
      if on_epoch_end is not None:
        on_epoch_end(epoch, error)
      if log_every and (epoch % log_every == 0 or epoch == config.epochs - 1):
        logging.info("RBM layer %d epoch %d/%d: lr %.5f momentum %.2f recon error %.4f",
                     self.layer_index + 1, epoch + 1, config.epochs, lr, mom, error)
    return {"reconstruction_error": errors}
