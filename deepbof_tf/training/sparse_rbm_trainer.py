"""CD-1 training of the Gaussian–binary sparse RBM (``deepbof_tf.layers.SparseRBM``).

``SparseRBMTrainer`` learns the layer's weights with contrastive divergence (CD-1)
exactly as the authors' ``train_rbm.m`` does for Gaussian visible units:

  positive phase  p⁺ = σ(vW + c)                       (probabilities)
                  h  = 1[p⁺ > u],  u ~ U(0, 1)          (sampled states)
  negative phase  v⁻ = hWᵀ + b                          (Gaussian mean, no sampling)
                  p⁻ = σ(v⁻W + c)                       (probabilities)
  sparsity        q  ← 0.99·q + 0.01·mean_batch(p⁺)     (running mean, updated first)
  increments      ΔW ← m·ΔW + lr·((vᵀp⁺ − v⁻ᵀp⁻)/B − µ·W)
                  Δb ← m·Δb + lr·mean_batch(v − v⁻)
                  Δc ← m·Δc − 3·lr·(q − ρ) + lr·mean_batch(p⁺ − p⁻)
                  W += ΔW, b += Δb, c += Δc

As in the authors' code the sparsity term ``−3·lr·(q − ρ)`` enters the hidden-bias
*increment* (the code's update order), so it is carried by the momentum too.
Minibatches are fixed across epochs and a remainder smaller than a batch is dropped,
as in the code. A whole epoch runs in one ``tf.function`` (a ``tf.while_loop`` over
the device-resident minibatches), with statistics and momentum buffers updated by
``assign``.

Randomness is stateless: the uniform draws of step s of epoch e use the seed
``(stable_seed("sparse_rbm", "cd1", seed), e·num_batches + s)`` (``deepbof_tf.seeds``),
so a run resumed from a checkpoint draws exactly the numbers an uninterrupted run
would, without storing generator state.

Two backends run the same epoch. ``tensorflow`` is the ``tf.function`` above (any
device; the one used on GPU). ``native`` is the C kernel ``deepbof_tf.native._cd1``
(x86-64 with AVX2/FMA, built at install): each thread owns a range of hidden units
for the whole epoch, which more than doubles the CPU rate of the chain of five small
products per step that CD-1 is. It draws bit-identical uniforms (TF's Philox stream
for the same seeds) and follows the same update order, so the two agree to float
rounding (tested), and its results do not depend on the number of threads.
``auto`` (the default) takes ``native`` when it is available, no GPU is visible and
the strategy has one replica (``deepbof_tf.training.cd1_backend``).

Several devices (docs/multi-device.md): under a multi-replica ``tf.distribute``
strategy the TensorFlow backend mirrors the training state and splits every minibatch
by rows over the replicas (any batch size, e.g. 100 on 3 replicas as 33/33/34). Each
replica draws the uniforms of the whole minibatch from the one-device seed and keeps its
rows, the CD-1 sums are added over the replicas and divided by the global batch size,
so the run reproduces the one-device one up to the order of float additions. The
native kernel is CPU-only and stays on one device.

See docs/model.md#sparse-rbm.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from deepbof_tf.config import SparseRBMConfig
from deepbof_tf.layers.sparse_rbm import SparseRBM
from deepbof_tf.seeds import stable_seed
from deepbof_tf.training import cd1_backend
from deepbof_tf.training import distribute
from deepbof_tf.training import schedule
from deepbof_tf.training.cd1_backend import default_num_threads, resolve_backend
from deepbof_tf.training.rbm_history import HISTORY_FIELDS, write_history


class SparseRBMTrainer(tf.Module):
  """CD-1 training of a ``SparseRBM`` with the authors' schedule.

  The trainer owns the parameters, the momentum increments, the running mean ``q`` of
  the hidden probabilities, the epoch counter and the per-epoch history as
  ``tf.Variable``s, so one ``tf.train.Checkpoint`` of the trainer captures the whole
  training state. ``layer()`` returns the trained ``SparseRBM``.

  Args:
    num_visible: dimension D of the (whitened) input.
    config: hyperparameters (``SparseRBMConfig``; its defaults are the authors').
    seed: seed of the initial weights and of the CD-1 sampling; defaults to
      ``config.seed``.
    jit_compile: compile the TF epoch loop with XLA. Off by default: on CPU, TF's
      oneDNN matmuls plus the fused momentum kernels were faster than XLA's.
    backend: ``auto``, ``native`` or ``tensorflow`` (see the module docstring).
    num_threads: threads of the native backend (None: ``default_num_threads()``).
    strategy: a ``tf.distribute`` strategy (None: the current one). Under several
      replicas the TensorFlow backend mirrors the training state and splits every
      minibatch over the replicas (see "Several devices" in the module docstring);
      the native kernel is CPU-only and runs on one device whatever the strategy.
  """

  def __init__(self, num_visible: int, config: SparseRBMConfig = SparseRBMConfig(),
               seed: Optional[int] = None, jit_compile: bool = False,
               backend: str = "auto", num_threads: Optional[int] = None,
               strategy: Optional[tf.distribute.Strategy] = None):
    super().__init__(name="sparse_rbm_trainer")
    self.config = config
    strategy = strategy or tf.distribute.get_strategy()
    self.backend = resolve_backend(backend, distribute.num_replicas(strategy))
    if self.backend == "native" and distribute.num_replicas(strategy) > 1:
      logging.warning("SparseRBM: the native CD-1 kernel is CPU-only and runs on one "
                      "device; the %d-replica strategy is not used for this stage "
                      "(backend='tensorflow' distributes it)",
                      distribute.num_replicas(strategy))
      strategy = tf.distribute.get_strategy()
    self.strategy = strategy
    self.replicas = 1 if self.backend == "native" else distribute.num_replicas(strategy)
    if num_threads is not None and num_threads < 1:
      raise ValueError(f"SparseRBMTrainer: num_threads must be >= 1, got {num_threads}")
    self.num_threads = num_threads
    self.num_visible = int(num_visible)
    self.seed = config.seed if seed is None else int(seed)
    self._sample_seed = stable_seed("sparse_rbm", "cd1", self.seed)
    d, h = self.num_visible, config.num_hidden
    init_seed = [stable_seed("sparse_rbm", "init", self.seed) % (2**31), 0]
    with strategy.scope():
      self._create_variables(d, h, init_seed)
    self._epoch_fn = tf.function(
        self._train_epoch_distributed if self.replicas > 1 else self._train_epoch,
        jit_compile=jit_compile)

  def _create_variables(self, d: int, h: int, init_seed) -> None:
    config = self.config
    self.kernel = tf.Variable(
        config.init_stddev * tf.random.stateless_normal([d, h], seed=init_seed),
        name="kernel")
    self.hidden_bias = tf.Variable(tf.zeros([h]), name="hidden_bias")
    self.visible_bias = tf.Variable(tf.zeros([d]), name="visible_bias")
    self.kernel_increment = tf.Variable(tf.zeros([d, h]), name="kernel_increment")
    self.hidden_bias_increment = tf.Variable(tf.zeros([h]), name="hidden_bias_increment")
    self.visible_bias_increment = tf.Variable(tf.zeros([d]),
                                              name="visible_bias_increment")
    # Running mean q of p(h|v); 0 at the start, as in the authors' code.
    self.running_activation = tf.Variable(tf.zeros([h]), name="running_activation")
    self.epoch = tf.Variable(0, dtype=tf.int64, name="epoch")
    self.history = tf.Variable(tf.zeros([max(config.epochs, 1), len(HISTORY_FIELDS)],
                                        tf.float64), name="history")

  # -- one CD-1 step ---------------------------------------------------------------
  def step(self, visible, uniform, learning_rate, momentum):
    """One CD-1 update on a minibatch, with the sampling draws given.

    Args:
      visible: [B, D] whitened blocks.
      uniform: [B, H] U(0, 1) draws; hidden state j of example i is 1 iff
        p⁺[i, j] > uniform[i, j].
      learning_rate: scalar learning rate of this epoch.
      momentum: scalar momentum of this epoch.

    Returns:
      ``(reconstruction_error, mean_activation)`` of this batch: the mean over the
      batch of ‖v − v⁻‖² and the mean of p⁺.
    """
    cfg = self.config
    visible = tf.convert_to_tensor(visible, tf.float32)
    learning_rate = tf.cast(learning_rate, tf.float32)
    momentum = tf.cast(momentum, tf.float32)
    batch = tf.cast(tf.shape(visible)[0], tf.float32)
    kernel = self.kernel.read_value()
    hidden_bias = self.hidden_bias.read_value()

    # bias_add lets Grappler fuse matmul + bias (+ sigmoid) into one kernel.
    positive = tf.sigmoid(tf.nn.bias_add(tf.matmul(visible, kernel), hidden_bias))
    hidden_states = tf.cast(positive > uniform, tf.float32)
    negative_visible = tf.nn.bias_add(
        tf.matmul(hidden_states, kernel, transpose_b=True), self.visible_bias)
    negative = tf.sigmoid(tf.nn.bias_add(tf.matmul(negative_visible, kernel),
                                         hidden_bias))

    # lr·(vᵀp⁺ − v⁻ᵀp⁻)/B as one [D, 2B]·[2B, H] product; the scalar is applied to
    # the small [2B, D] operand instead of the [D, H] result. Two extra operand
    # columns, [1; −1] and [1; 0], make the same product also return
    # Σp⁺ − Σp⁻ and Σp⁺ (rows D and D+1), which saves three passes over [B, H].
    num_visible = tf.shape(visible)[1]
    visible_pair = tf.concat([visible, -negative_visible], axis=0) * (learning_rate / batch)
    ones = tf.ones_like(visible[:, :1])
    signs = tf.concat([tf.concat([ones, ones], axis=1),
                       tf.concat([-ones, tf.zeros_like(ones)], axis=1)], axis=0)
    product = tf.matmul(tf.concat([visible_pair, signs], axis=1),
                        tf.concat([positive, negative], axis=0), transpose_a=True)
    correlation = product[:num_visible]
    hidden_delta = product[num_visible] / batch
    mean_positive = product[num_visible + 1] / batch
    running = (cfg.sparsity_decay * self.running_activation
               + (1.0 - cfg.sparsity_decay) * mean_positive)
    self.running_activation.assign(running)
    sparsity_increment = -cfg.sparsity_gain * learning_rate * (running
                                                               - cfg.sparsity_target)
    kernel_step = correlation - (learning_rate * cfg.weight_cost) * kernel
    visible_step = learning_rate * tf.reduce_mean(visible - negative_visible, axis=0)
    hidden_step = sparsity_increment + learning_rate * hidden_delta
    # Δ ← m·Δ + step; θ ← θ + Δ, each as one fused kernel (ApplyMomentum computes
    # accum = accum·momentum + grad; var −= lr·accum, here with lr = −1).
    minus_one = tf.constant(-1.0, tf.float32)
    for variable, increment, step_value in (
        (self.kernel, self.kernel_increment, kernel_step),
        (self.visible_bias, self.visible_bias_increment, visible_step),
        (self.hidden_bias, self.hidden_bias_increment, hidden_step)):
      tf.raw_ops.ResourceApplyMomentum(var=variable.handle, accum=increment.handle,
                                       lr=minus_one, grad=step_value, momentum=momentum)

    error = tf.reduce_mean(tf.reduce_sum(tf.square(visible - negative_visible), axis=1))
    return error, tf.reduce_mean(mean_positive)

  # -- one epoch -------------------------------------------------------------------
  def _train_epoch(self, batches, epoch, learning_rate, momentum):
    num_batches = tf.shape(batches, out_type=tf.int64)[0]
    batch_size = tf.shape(batches)[1]
    epoch = tf.cast(epoch, tf.int64)
    sample_seed = tf.constant(self._sample_seed, tf.int64)

    def body(i, error_sum, activation_sum):
      seed = tf.stack([sample_seed, epoch * num_batches + i])
      uniform = tf.random.stateless_uniform([batch_size, self.config.num_hidden],
                                            seed=seed, dtype=tf.float32)
      error, activation = self.step(batches[i], uniform, learning_rate, momentum)
      return i + 1, error_sum + error, activation_sum + activation

    _, error_sum, activation_sum = tf.while_loop(
        lambda i, *_: i < num_batches, body,
        (tf.constant(0, tf.int64), tf.constant(0.0), tf.constant(0.0)))
    n = tf.cast(num_batches, tf.float32)
    return error_sum / n, activation_sum / n

  # -- one epoch over several replicas --------------------------------------------
  def _replica_statistics(self, visible, uniform, learning_rate, batch):
    """The additive CD-1 sums of one replica's rows (the rows of ``step``'s batch).

    Args:
      visible: [rows, D] this replica's rows of the minibatch.
      uniform: [rows, H] its rows of the minibatch's U(0, 1) draws.
      learning_rate: scalar learning rate of this epoch.
      batch: the global batch size B (float).

    Returns:
      (lr/B·(vᵀp⁺ − v⁻ᵀp⁻) [D, H], Σ(p⁺ − p⁻) [H], Σp⁺ [H], Σ(v − v⁻) [D],
      Σ‖v − v⁻‖²), each summed over the rows.
    """
    kernel = self.kernel.read_value()
    hidden_bias = self.hidden_bias.read_value()
    positive = tf.sigmoid(tf.nn.bias_add(tf.matmul(visible, kernel), hidden_bias))
    hidden_states = tf.cast(positive > uniform, tf.float32)
    negative_visible = tf.nn.bias_add(
        tf.matmul(hidden_states, kernel, transpose_b=True), self.visible_bias.read_value())
    negative = tf.sigmoid(tf.nn.bias_add(tf.matmul(negative_visible, kernel),
                                         hidden_bias))
    correlation = tf.matmul(
        tf.concat([visible, -negative_visible], axis=0) * (learning_rate / batch),
        tf.concat([positive, negative], axis=0), transpose_a=True)
    difference = visible - negative_visible
    return (correlation, tf.reduce_sum(positive - negative, axis=0),
            tf.reduce_sum(positive, axis=0), tf.reduce_sum(difference, axis=0),
            tf.reduce_sum(tf.square(difference)))

  def _train_epoch_distributed(self, replica_batches, num_batches, epoch, learning_rate,
                               momentum):
    """``_train_epoch`` with every minibatch split over the replicas.

    Each replica holds its ``distribute.replica_rows`` of every minibatch
    (``replica_batches``), draws the uniforms of the *whole* minibatch from the
    one-device seed and keeps its rows, and returns its sums; the sums are added over
    the replicas and the update (``step``'s, in its order) divides by the global batch
    size, so every block weighs the same whichever replica holds it.
    """
    cfg = self.config
    strategy, replicas = self.strategy, self.replicas
    batch_size = int(cfg.batch_size)
    batch = tf.constant(float(batch_size))
    num_batches = tf.cast(num_batches, tf.int64)
    epoch = tf.cast(epoch, tf.int64)
    sample_seed = tf.constant(self._sample_seed, tf.int64)
    learning_rate = tf.cast(learning_rate, tf.float32)
    momentum = tf.cast(momentum, tf.float32)
    total = tf.distribute.ReduceOp.SUM

    def body(i, error_sum, activation_sum):
      seed = tf.stack([sample_seed, epoch * num_batches + i])

      def replica_fn(batches):
        context = tf.distribute.get_replica_context()
        visible = batches[i]
        start = distribute.replica_row_start(batch_size,
                                             context.replica_id_in_sync_group, replicas)
        uniform = tf.random.stateless_uniform([batch_size, cfg.num_hidden], seed=seed,
                                              dtype=tf.float32)
        uniform = uniform[start:start + tf.shape(visible)[0]]
        return self._replica_statistics(visible, uniform, learning_rate, batch)

      sums = [strategy.reduce(total, value, axis=None)
              for value in strategy.run(replica_fn, args=(replica_batches,))]
      correlation, hidden_delta_sum, positive_sum, visible_delta_sum, error = sums
      mean_positive = positive_sum / batch
      running = (cfg.sparsity_decay * self.running_activation
                 + (1.0 - cfg.sparsity_decay) * mean_positive)
      self.running_activation.assign(running)
      sparsity_increment = -cfg.sparsity_gain * learning_rate * (running
                                                                 - cfg.sparsity_target)
      kernel_step = correlation - (learning_rate * cfg.weight_cost) * self.kernel
      visible_step = learning_rate * (visible_delta_sum / batch)
      hidden_step = sparsity_increment + learning_rate * (hidden_delta_sum / batch)
      for variable, increment, step_value in (
          (self.kernel, self.kernel_increment, kernel_step),
          (self.visible_bias, self.visible_bias_increment, visible_step),
          (self.hidden_bias, self.hidden_bias_increment, hidden_step)):
        increment.assign(momentum * increment + step_value)
        variable.assign(variable + increment)
      return (i + 1, error_sum + error / batch,
              activation_sum + tf.reduce_mean(mean_positive))

    _, error_sum, activation_sum = tf.while_loop(
        lambda i, *_: i < num_batches, body,
        (tf.constant(0, tf.int64), tf.constant(0.0), tf.constant(0.0)))
    n = tf.cast(num_batches, tf.float32)
    return error_sum / n, activation_sum / n

  # The training state the native kernel updates in place, in its argument order.
  _NATIVE_STATE = ("kernel", "hidden_bias", "visible_bias", "kernel_increment",
                   "hidden_bias_increment", "visible_bias_increment",
                   "running_activation")

  def _native_epoch(self, batches, epoch: int, learning_rate: float,
                    momentum: float):
    """The same epoch as ``_train_epoch`` through the C kernel (``backend='native'``)."""
    cfg = self.config
    batches = np.ascontiguousarray(np.asarray(batches), dtype=np.float32)
    if batches.ndim != 3 or batches.shape[2] != self.num_visible:
      raise ValueError(f"SparseRBMTrainer: batches must be [num_batches, B, "
                       f"{self.num_visible}], got {batches.shape}")
    num_batches, batch_size = batches.shape[:2]
    state = [np.array(getattr(self, name).numpy(), np.float32, order="C")
             for name in self._NATIVE_STATE]
    error, activation = cd1_backend._cd1.epoch(
        batches, *state, num_batches=num_batches, batch_size=batch_size,
        num_visible=self.num_visible, num_hidden=cfg.num_hidden,
        seed=self._sample_seed, step_offset=epoch * num_batches,
        learning_rate=learning_rate, momentum=momentum, weight_cost=cfg.weight_cost,
        sparsity_decay=cfg.sparsity_decay, sparsity_gain=cfg.sparsity_gain,
        sparsity_target=cfg.sparsity_target,
        num_threads=self.num_threads or default_num_threads())
    for name, value in zip(self._NATIVE_STATE, state):
      getattr(self, name).assign(value)
    return error, activation

  def train_epoch(self, batches: tf.Tensor, epoch: int) -> Dict[str, float]:
    """Runs 0-based ``epoch`` over [num_batches, B, D] minibatches; returns its metrics.

    Args:
      batches: the minibatches (see ``make_batches``; a NumPy array also works).
      epoch: 0-based epoch index (selects learning rate, momentum and random draws).
    """
    cfg = self.config
    learning_rate = schedule.learning_rate(epoch, cfg.learning_rate,
                                           cfg.learning_rate_decay,
                                           cfg.min_learning_rate)
    momentum = schedule.momentum(epoch, cfg.epochs, cfg.initial_momentum,
                                 cfg.final_momentum, cfg.momentum_switch_fraction)
    start = time.perf_counter()
    if self.backend == "native":
      error, activation = self._native_epoch(batches, epoch, learning_rate, momentum)
    elif self.replicas > 1:
      num_batches = int(batches.shape[0])
      error, activation = self._epoch_fn(
          distribute.distribute_rows(self.strategy, batches, axis=1),
          tf.constant(num_batches, tf.int64), tf.constant(epoch, tf.int64),
          tf.constant(learning_rate, tf.float32), tf.constant(momentum, tf.float32))
    else:
      error, activation = self._epoch_fn(batches, tf.constant(epoch, tf.int64),
                                         tf.constant(learning_rate, tf.float32),
                                         tf.constant(momentum, tf.float32))
    error, activation = float(error), float(activation)
    seconds = time.perf_counter() - start
    return dict(epoch=epoch, learning_rate=learning_rate, momentum=momentum,
                reconstruction_error=error, mean_activation=activation,
                running_activation=float(tf.reduce_mean(self.running_activation)),
                weight_norm=self.weight_norm(), seconds=seconds)

  def weight_norm(self) -> float:
    """Sum over hidden units of the L2 norm of their weight vectors (the authors' log)."""
    return float(tf.reduce_sum(tf.norm(self.kernel, axis=0)))

  def make_batches(self, blocks: np.ndarray) -> tf.Tensor:
    """Fixed [num_batches, B, D] minibatches of ``blocks`` (remainder dropped, as the code).

    Args:
      blocks: [N, D] whitened blocks, in the order they are to be batched.
    """
    blocks = np.asarray(blocks, np.float32)
    if blocks.ndim != 2 or blocks.shape[1] != self.num_visible:
      raise ValueError(f"SparseRBMTrainer: blocks must be [N, {self.num_visible}], "
                       f"got {blocks.shape}")
    batch_size = self.config.batch_size
    num_batches = blocks.shape[0] // batch_size
    if num_batches == 0:
      raise ValueError(f"SparseRBMTrainer: {blocks.shape[0]} blocks are fewer than one "
                       f"batch of {batch_size}")
    dropped = blocks.shape[0] - num_batches * batch_size
    if dropped:
      logging.info("SparseRBM: dropping the last %d of %d blocks (incomplete batch)",
                   dropped, blocks.shape[0])
    return tf.constant(blocks[:num_batches * batch_size].reshape(
        num_batches, batch_size, self.num_visible))

  # -- the whole run ---------------------------------------------------------------
  def fit(self, blocks: np.ndarray, checkpoint_dir: Optional[str] = None,
          tensorboard_dir: Optional[str] = None, history_dir: Optional[str] = None,
          on_epoch_end: Optional[Callable[[int, Dict[str, float]], None]] = None
          ) -> List[Dict[str, float]]:
    """Trains for ``config.epochs`` epochs, resuming from ``checkpoint_dir`` if present.

    After every epoch the full training state is checkpointed, the history is written
    as ``training_log.csv``/``training_log.json`` and TensorBoard scalars are logged.
    A run killed at any point restarts from its last finished epoch and ends with the
    same weights as an uninterrupted run.

    Args:
      blocks: [N, D] whitened training blocks (fixed order; batched by ``make_batches``).
      checkpoint_dir: directory of the epoch checkpoints (None: no checkpoints).
      tensorboard_dir: TensorBoard directory (None: no events).
      history_dir: directory of training_log.csv/.json (None: not written).
      on_epoch_end: called as ``fn(epoch, metrics)`` after each epoch is checkpointed.

    Returns:
      The per-epoch metrics of the whole run (including epochs of earlier runs).
    """
    batches = self.make_batches(blocks)
    if self.backend == "native":
      batches = batches.numpy()  # converted once, not every epoch
    logging.info("SparseRBM: CD-1 on the %s backend%s", self.backend,
                 f" ({self.num_threads or default_num_threads()} threads)"
                 if self.backend == "native" else
                 f" ({self.replicas} replicas)" if self.replicas > 1 else "")
    distribute.log_replica_split("SparseRBM", self.config.batch_size, self.replicas)
    manager = None
    if checkpoint_dir:
      checkpoint = tf.train.Checkpoint(trainer=self)
      manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=2)
      if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("SparseRBM: resumed from %s (epoch %d)", manager.latest_checkpoint,
                     int(self.epoch.numpy()))
    writer = tf.summary.create_file_writer(tensorboard_dir) if tensorboard_dir else None
    for epoch in range(int(self.epoch.numpy()), self.config.epochs):
      metrics = self.train_epoch(batches, epoch)
      # A scatter rather than a sliced assign: the history may be a mirrored variable.
      self.history.assign(tf.tensor_scatter_nd_update(
          self.history, [[epoch]], [[float(metrics[k]) for k in HISTORY_FIELDS]]))
      self.epoch.assign(epoch + 1)
      if manager is not None:
        manager.save(checkpoint_number=epoch + 1)
      if history_dir:
        write_history(self.history_rows(), history_dir)
      if writer is not None:
        with writer.as_default(step=epoch + 1):
          for key in HISTORY_FIELDS[1:]:
            tf.summary.scalar(f"sparse_rbm/{key}", metrics[key])
        writer.flush()
      logging.info(
          "SparseRBM epoch %d/%d: lr %.5f momentum %.2f reconstruction_error %.4f "
          "mean_activation %.4f (target %.3f) weight_norm %.2f (%.1f s)",
          epoch + 1, self.config.epochs, metrics["learning_rate"], metrics["momentum"],
          metrics["reconstruction_error"], metrics["mean_activation"],
          self.config.sparsity_target, metrics["weight_norm"], metrics["seconds"])
      if on_epoch_end is not None:
        on_epoch_end(epoch, metrics)
    if writer is not None:
      writer.close()
    return self.history_rows()

  def history_rows(self) -> List[Dict[str, float]]:
    """The metrics of the finished epochs as a list of dicts (HISTORY_FIELDS)."""
    done = int(self.epoch.numpy())
    rows = self.history.numpy()[:done]
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in zip(HISTORY_FIELDS, r)}
            for r in rows]

  def layer(self, name: str = "sparse_rbm") -> SparseRBM:
    """A built ``SparseRBM`` holding the current weights.

    Args:
      name: name of the returned layer.
    """
    rbm = SparseRBM(num_hidden=self.config.num_hidden,
                    init_stddev=self.config.init_stddev, name=name, dtype="float32")
    rbm.set_weights_from(self.kernel.numpy(), self.hidden_bias.numpy(),
                         self.visible_bias.numpy())
    return rbm


def dewhitened_filters(pca, kernel, count: Optional[int] = None) -> np.ndarray:
  """RBM filters mapped back to the block space, strongest (largest ‖W_j‖) first.

  Column j of W lives in the whitened space; ``pca.inverse(·, add_mean=False)`` maps
  it to a [block_frames·n_mels] spectral patch (as the paper's filter figure).

  Args:
    pca: the ``PCAWhitening`` the RBM was trained behind.
    kernel: [k, H] RBM weights.
    count: number of filters to return (None: all H).
  """
  kernel = np.asarray(kernel, np.float32)
  order = np.argsort(-np.linalg.norm(kernel, axis=0), kind="stable")
  if count is not None:
    order = order[:count]
  return np.asarray(pca.inverse(kernel[:, order].T, add_mean=False))
