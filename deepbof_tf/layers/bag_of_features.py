"""Bag-of-features encoding of a clip (docs/model.md#bag-of-features) as Keras layers.

``log_mel [B, F, n_mels]`` → every 8-frame block at stride 1 (``BlockExtraction``)
→ PCA whitening → sparse RBM ``h = σ(Wᵀv + c)`` → max over non-overlapping windows
of ``pool_frames`` block positions (the last window may be short) → mean over the
windows (``BagOfFeaturesPooling``) → ``bag_of_features [B, num_hidden]``.

Block count: a clip of T frames has ``T − block_frames + 1`` blocks (T − 7 for 8-frame
blocks: every block that fits). The authors' chunking (``convertToChunk.m``) yields
one fewer, dropping the last block; we keep it. A clip shorter than
``block_frames`` frames has no block and is an error (a graph assertion naming the
problem). Padded batches: frames at or after a clip's ``n_frames`` never enter a
block, a window or the mean, so a padded batch gives each clip exactly its unpadded
result.

Streaming: windows start at block positions 0, P, 2P, … of the clip. To encode a clip
in chunks, give chunk k the frames ``[k·L, k·L + L + block_frames − 1)`` with ``L`` a
multiple of P (the last chunk may be shorter): its ``pooled_hidden`` windows are then
exactly the one-shot windows, and the bag-of-features is the sum of all chunks'
pooled windows divided by the total window count (``combine_pooled``).

Only core TensorFlow ops, no Python loops over frames: the encoder runs inside a
``tf.function``/SavedModel with a ``[None, None, n_mels]`` input.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from deepbof_tf.config import DEFAULT_BLOCK_FRAMES, DEFAULT_POOL_FRAMES

# Imported so that a serialized encoder can deserialize its sub-layers.
from deepbof_tf.layers.pca import PCAWhitening  # noqa: F401
from deepbof_tf.layers.sparse_rbm import SparseRBM  # noqa: F401


def num_blocks(n_frames, block_frames: int = 8):
  """Number of stride-1 blocks of a clip: ``n_frames − block_frames + 1`` (≥ 0).

  Args:
    n_frames: frame count(s) (int, NumPy array or tensor).
    block_frames: frames per block.
  """
  if isinstance(n_frames, tf.Tensor):
    return tf.maximum(n_frames - block_frames + 1, 0)
  if isinstance(n_frames, np.ndarray):
    return np.maximum(n_frames - block_frames + 1, 0)
  return max(int(n_frames) - block_frames + 1, 0)


def num_windows(n_blocks, pool_frames: int = DEFAULT_POOL_FRAMES):
  """Number of pooling windows: ``ceil(n_blocks / pool_frames)`` (last may be short).

  Args:
    n_blocks: block count(s) (int, NumPy array or tensor).
    pool_frames: window length in block positions.
  """
  if isinstance(n_blocks, (tf.Tensor, np.ndarray)):
    return (n_blocks + pool_frames - 1) // pool_frames
  return -(-int(n_blocks) // pool_frames)


def combine_pooled(pooled: Sequence[tf.Tensor], counts: Sequence[tf.Tensor]) -> tf.Tensor:
  """Bag-of-features from per-chunk pooled windows (see the module docstring).

  Args:
    pooled: per chunk, [B, W_k, H] window maxima (``pooled_hidden``'s first output).
    counts: per chunk, [B] number of valid windows (its second output).

  Returns:
    [B, H] mean over all valid windows of all chunks.
  """
  total = 0.0
  windows = 0
  for chunk, count in zip(pooled, counts):
    valid = tf.range(tf.shape(chunk)[1])[None, :] < tf.cast(count, tf.int32)[:, None]
    total += tf.reduce_sum(tf.where(valid[..., None], chunk, tf.zeros_like(chunk)), 1)
    windows += tf.cast(count, chunk.dtype)
  return total / windows[:, None]


def _lengths(inputs: tf.Tensor, n_frames: Optional[tf.Tensor]) -> tf.Tensor:
  if n_frames is None:
    return tf.fill(tf.shape(inputs)[:1], tf.shape(inputs)[1])
  return tf.reshape(tf.cast(n_frames, tf.int32), [-1])


@keras.saving.register_keras_serializable(package="deepbof")
class BlockExtraction(keras.layers.Layer):
  """Every ``block_frames``-frame block of ``log_mel`` at stride 1, flattened.

  [B, F, n_mels] → [B, F − block_frames + 1, block_frames·n_mels], each block
  flattened row-major [frame, mel] (= the authors' column-major ``temp(:)`` of a
  [mel, frame] patch, and the layout of the block TFRecords).

  Args:
    block_frames: frames per block (8).
    **kwargs: forwarded to ``keras.layers.Layer``.
  """

  def __init__(self, block_frames: int = DEFAULT_BLOCK_FRAMES, **kwargs):
    super().__init__(**kwargs)
    if block_frames < 1:
      raise ValueError(f"block_frames must be >= 1, got {block_frames}")
    self.block_frames = int(block_frames)

  def call(self, log_mel):
    log_mel = tf.convert_to_tensor(log_mel)
    n_mels = log_mel.shape[-1]
    if n_mels is None:
      raise ValueError("BlockExtraction: the mel dimension of log_mel must be known")
    blocks = tf.signal.frame(log_mel, self.block_frames, 1, axis=1)
    return tf.reshape(blocks, tf.concat(
        [tf.shape(blocks)[:2], [self.block_frames * n_mels]], axis=0))

  def compute_output_shape(self, input_shape):
    frames = input_shape[1]
    blocks = None if frames is None else max(frames - self.block_frames + 1, 0)
    return (input_shape[0], blocks, self.block_frames * input_shape[2])

  def get_config(self) -> Dict[str, Any]:
    config = super().get_config()
    config.update(block_frames=self.block_frames)
    return config


@keras.saving.register_keras_serializable(package="deepbof")
class BagOfFeaturesPooling(keras.layers.Layer):
  """Max over windows of ``pool_frames`` positions, then the mean over windows.

  ``call(hidden [B, N, H], n_blocks [B] or None) → [B, H]``. Windows start at
  positions 0, P, 2P, …; the last one may be short; positions ≥ n_blocks are
  padding and ignored.

  Args:
    pool_frames: window length in block positions (default: the configuration's,
      86 ≈ 2 s).
    **kwargs: forwarded to ``keras.layers.Layer``.
  """

  def __init__(self, pool_frames: int = DEFAULT_POOL_FRAMES, **kwargs):
    super().__init__(**kwargs)
    if pool_frames < 1:
      raise ValueError(f"pool_frames must be >= 1, got {pool_frames}")
    self.pool_frames = int(pool_frames)

  def pooled(self, hidden, n_blocks=None, activation=None) -> Tuple[tf.Tensor, tf.Tensor]:
    """Window maxima [B, W, H] and the number of valid windows [B].

    Windows past a clip's last block are zero-filled and not counted.

    Args:
      hidden: [B, N, H] per-position activations.
      n_blocks: [B] valid positions per clip (None: all N).
      activation: a monotone non-decreasing function applied to the window maxima
        (``max f(h) = f(max h)``), so that ``hidden`` may be pre-activations; None:
        ``hidden`` are the activations.
    """
    hidden = tf.convert_to_tensor(hidden)
    n_blocks = _lengths(hidden, n_blocks)
    size = self.pool_frames
    shape = tf.shape(hidden)
    positions = shape[1]
    full = positions // size  # windows of exactly `size` positions
    windows = (positions + size - 1) // size
    lowest = tf.constant(hidden.dtype.min, hidden.dtype)
    # Positions past a clip's end never win a maximum. Only padded batches have them,
    # so the full-size select runs only then.
    hidden = tf.cond(
        tf.reduce_all(n_blocks >= positions), lambda: hidden,
        lambda: tf.where((tf.range(positions)[None, :] < n_blocks[:, None])[..., None],
                         hidden, lowest))
    # The full windows with oneDNN's max pooling (one read of the activations, several times
    # faster than pad + reshape + reduce_max on 30-s clips); the short last one apart.
    head = tf.cond(
        full > 0,
        lambda: tf.nn.max_pool2d(hidden[:, :, None, :], [size, 1], [size, 1], "VALID")[:, :, 0],
        lambda: tf.zeros(tf.stack([shape[0], 0, shape[2]]), hidden.dtype))
    tail = tf.reduce_max(hidden[:, full * size:], axis=1, keepdims=True)
    maxima = tf.concat([head, tail], axis=1)[:, :windows]
    if activation is not None:
      maxima = activation(maxima)
    counts = num_windows(n_blocks, size)
    window_valid = tf.range(windows)[None, :] < counts[:, None]
    maxima = tf.where(window_valid[..., None], maxima, tf.zeros_like(maxima))
    return maxima, counts

  def call(self, hidden, n_blocks=None, activation=None):
    maxima, counts = self.pooled(hidden, n_blocks, activation)
    return tf.reduce_sum(maxima, axis=1) / tf.cast(counts, maxima.dtype)[:, None]

  def compute_output_shape(self, input_shape):
    return (input_shape[0], input_shape[2])

  def get_config(self) -> Dict[str, Any]:
    config = super().get_config()
    config.update(pool_frames=self.pool_frames)
    return config


@keras.saving.register_keras_serializable(package="deepbof")
class BagOfFeaturesEncoder(keras.layers.Layer):
  """``log_mel [B, F, n_mels]`` (+ ``n_frames [B]``) → ``bag_of_features [B, H]``.

  Blocks → ``PCAWhitening`` → ``SparseRBM`` → ``BagOfFeaturesPooling``.

  Args:
    pca: an adapted ``PCAWhitening`` (or its serialized config).
    rbm: a ``SparseRBM`` (or its serialized config).
    pool_frames: pooling window in block positions (the configuration's default).
    block_frames: frames per block (8).
    **kwargs: forwarded to ``keras.layers.Layer``.
  """

  def __init__(self, pca, rbm, pool_frames: int = DEFAULT_POOL_FRAMES,
               block_frames: int = DEFAULT_BLOCK_FRAMES, **kwargs):
    super().__init__(**kwargs)
    if isinstance(pca, dict):
      pca = keras.saving.deserialize_keras_object(pca)
    if isinstance(rbm, dict):
      rbm = keras.saving.deserialize_keras_object(rbm)
    self.pca = pca
    self.rbm = rbm
    self.pool_frames = int(pool_frames)
    self.block_frames = int(block_frames)
    # The sub-layers compute in this layer's dtype policy, not the global one.
    self.pooling = BagOfFeaturesPooling(pool_frames, name="pooling",
                                        dtype=self.dtype_policy)

  def build(self, input_shape):
    n_mels = input_shape[-1]
    if n_mels is None:
      raise ValueError("BagOfFeaturesEncoder: the mel dimension must be known")
    if not self.pca.built:
      self.pca.build((None, self.block_frames * n_mels))
    elif self.pca.input_dim != self.block_frames * n_mels:
      raise ValueError(f"BagOfFeaturesEncoder: PCA expects blocks of {self.pca.input_dim}"
                       f" values, {self.block_frames} frames × {n_mels} mels give "
                       f"{self.block_frames * n_mels}")
    if not self.rbm.built:
      self.rbm.build((None, self.pca.output_dim))
    super().build(input_shape)

  def hidden(self, log_mel, n_frames=None) -> Tuple[tf.Tensor, tf.Tensor]:
    """Hidden activations of every block position and the block counts.

    Args:
      log_mel: [B, F, n_mels] (padded) compressed mel spectrograms.
      n_frames: [B] valid frames per clip (None: all F).

    Returns:
      ``(hidden [B, N, H], n_blocks [B])`` with N = F − block_frames + 1.
    """
    pre_activation, n_blocks = self._pre_activations(log_mel, n_frames)
    return self.rbm.activation(pre_activation), n_blocks

  def _pre_activations(self, log_mel, n_frames) -> Tuple[tf.Tensor, tf.Tensor]:
    """The RBM's ``v · W`` of every block (no bias) and the block counts."""
    log_mel = tf.cast(tf.convert_to_tensor(log_mel), self.compute_dtype)
    if log_mel.shape.rank == 2:
      raise ValueError("BagOfFeaturesEncoder: log_mel must be batched [B, F, n_mels]; "
                       "use log_mel[None] for one clip")
    n_frames = _lengths(log_mel, n_frames)
    check = tf.debugging.assert_greater_equal(
        n_frames, self.block_frames,
        message=f"BagOfFeaturesEncoder: a clip has fewer frames than block_frames="
                f"{self.block_frames}; such clips have no block to encode")
    with tf.control_dependencies([check]):
      n_blocks = tf.identity(num_blocks(n_frames, self.block_frames))
    # Equal to self.pca(BlockExtraction(block_frames)(log_mel)) without the blocks.
    return self.rbm.pre_activation(self.pca.project_blocks(log_mel, self.block_frames)), n_blocks

  def pooled_hidden(self, log_mel, n_frames=None) -> Tuple[tf.Tensor, tf.Tensor]:
    """Per-window max-pooled hidden vectors and window counts (for streaming).

    Args:
      log_mel: [B, F, n_mels] (padded) compressed mel spectrograms.
      n_frames: [B] valid frames per clip (None: all F).

    Returns:
      ``(pooled [B, W, H], n_windows [B])``; windows past a clip's end are zeros.
    """
    pre_activation, n_blocks = self._pre_activations(log_mel, n_frames)
    # The bias and sigmoid are monotone: pool the pre-activations and activate only the
    # window maxima (30 x 1024 values for a 30-s clip instead of 1286 x 1024).
    return self.pooling.pooled(pre_activation, n_blocks, activation=self.rbm.activation)

  def call(self, log_mel, n_frames=None):
    pre_activation, n_blocks = self._pre_activations(log_mel, n_frames)
    return self.pooling(pre_activation, n_blocks, activation=self.rbm.activation)

  def compute_output_shape(self, input_shape):
    return (input_shape[0], self.rbm.num_hidden)

  def get_config(self) -> Dict[str, Any]:
    config = super().get_config()
    config.update(pca=keras.saving.serialize_keras_object(self.pca),
                  rbm=keras.saving.serialize_keras_object(self.rbm),
                  pool_frames=self.pool_frames, block_frames=self.block_frames)
    return config
