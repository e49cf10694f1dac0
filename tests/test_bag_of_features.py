"""Bag-of-features encoder against a NumPy reference written here."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from deepbof_tf import models
from deepbof_tf.layers.bag_of_features import (BagOfFeaturesPooling, BlockExtraction,
                                               combine_pooled, num_blocks, num_windows)
from deepbof_tf.layers.pca import PCAWhitening
from deepbof_tf.layers.sparse_rbm import SparseRBM

N_MELS, BLOCK, POOL, HIDDEN = 16, 4, 5, 24


def _encoder_parts(rng, n_mels=N_MELS, block=BLOCK, hidden=HIDDEN):
  dim = block * n_mels
  x = rng.standard_normal((3000, dim)) @ rng.standard_normal((dim, dim)) + 1.5
  pca = PCAWhitening(0.9, 0.01, name="pca_whitening")
  pca.adapt(x.astype(np.float32))
  rbm = SparseRBM(hidden, name="sparse_rbm")
  rbm.set_weights_from(0.3 * rng.standard_normal((pca.output_dim, hidden)),
                       rng.standard_normal(hidden) - 1.0, np.zeros(pca.output_dim))
  return pca, rbm


def _reference(log_mel, pca, rbm, block=BLOCK, pool=POOL):
  """Bag-of-features in NumPy: every stride-1 block → PCA → σ → max per window → mean."""
  log_mel = np.asarray(log_mel, np.float64)
  t = log_mel.shape[0]
  # The authors' column-major temp(:) of the [mel, frame] patch.
  blocks = np.stack([log_mel[i:i + block].T.flatten(order="F")
                     for i in range(t - block + 1)])
  mean = pca.mean.numpy().astype(np.float64)
  d = pca.eigenvalues.numpy().astype(np.float64)
  e = pca.eigenvectors.numpy().astype(np.float64)
  whitened = ((blocks - mean) @ e) / np.sqrt(d + pca.epsilon)
  hidden = 1 / (1 + np.exp(-(whitened @ rbm.kernel.numpy() + rbm.hidden_bias.numpy())))
  windows = [hidden[s:s + pool].max(axis=0) for s in range(0, len(hidden), pool)]
  return np.mean(windows, axis=0), np.stack(windows)


LENGTHS = [BLOCK, BLOCK + 1, BLOCK + POOL - 1, BLOCK + POOL, BLOCK + 2 * POOL + 2, 37]


def test_block_layout_is_row_major_frame_mel(rng):
  log_mel = rng.standard_normal((1, 11, N_MELS)).astype(np.float32)
  blocks = BlockExtraction(BLOCK)(log_mel).numpy()
  assert blocks.shape == (1, num_blocks(11, BLOCK), BLOCK * N_MELS) == (1, 8, 64)
  for t in range(8):
    np.testing.assert_array_equal(blocks[0, t], log_mel[0, t:t + BLOCK].reshape(-1))


def test_counts():
  assert num_blocks(1292, 8) == 1285 and num_blocks(7, 8) == 0
  assert num_windows(1285, 43) == 30 and num_windows(43, 43) == 1 and num_windows(44, 43) == 2
  assert int(num_blocks(tf.constant(20), 8)) == 13
  np.testing.assert_array_equal(num_blocks(np.array([5, 8, 50]), 8), [0, 1, 43])
  np.testing.assert_array_equal(num_windows(np.array([1, 43, 44]), 43), [1, 1, 2])


@pytest.mark.parametrize("length", LENGTHS)
def test_single_clip_matches_numpy(rng, length):
  pca, rbm = _encoder_parts(rng)
  encoder = models.build_bof_encoder(pca, rbm, pool_frames=POOL, block_frames=BLOCK)
  log_mel = rng.standard_normal((length, N_MELS)).astype(np.float32)
  expected, windows = _reference(log_mel, pca, rbm)
  np.testing.assert_allclose(encoder(log_mel[None]).numpy()[0], expected, atol=2e-6)
  pooled, counts = encoder.pooled_hidden(log_mel[None])
  assert int(counts[0]) == num_windows(length - BLOCK + 1, POOL) == len(windows)
  np.testing.assert_allclose(pooled.numpy()[0], windows, atol=2e-6)


def test_padded_batch_equals_unpadded(rng):
  pca, rbm = _encoder_parts(rng)
  encoder = models.build_bof_encoder(pca, rbm, pool_frames=POOL, block_frames=BLOCK)
  clips = [rng.standard_normal((t, N_MELS)).astype(np.float32) for t in LENGTHS]
  padded = np.full((len(clips), max(LENGTHS) + 3, N_MELS), 7.0, np.float32)  # junk pad
  for i, clip in enumerate(clips):
    padded[i, :len(clip)] = clip
  serve = tf.function(lambda x, n: encoder(x, n), input_signature=[
      tf.TensorSpec([None, None, N_MELS]), tf.TensorSpec([None], tf.int32)])
  batch = serve(padded, np.array(LENGTHS, np.int32)).numpy()
  assert batch.shape == (len(LENGTHS), HIDDEN)
  for i, clip in enumerate(clips):
    np.testing.assert_allclose(batch[i], _reference(clip, pca, rbm)[0], atol=2e-6)
    np.testing.assert_allclose(batch[i], encoder(clip[None]).numpy()[0], atol=1e-6)


def test_chunked_encoding_combines_to_one_shot(rng):
  pca, rbm = _encoder_parts(rng)
  encoder = models.build_bof_encoder(pca, rbm, pool_frames=POOL, block_frames=BLOCK)
  log_mel = rng.standard_normal((1, 53, N_MELS)).astype(np.float32)  # 50 blocks
  chunk = 2 * POOL  # block positions per chunk, a multiple of the pool
  pooled, counts = [], []
  for start in range(0, num_blocks(53, BLOCK), chunk):
    frames = log_mel[:, start:start + chunk + BLOCK - 1]
    p, c = encoder.pooled_hidden(frames)
    pooled.append(p)
    counts.append(c)
  np.testing.assert_allclose(combine_pooled(pooled, counts).numpy(),
                             encoder(log_mel).numpy(), atol=1e-6)


def test_short_clip_is_a_clear_error(rng):
  pca, rbm = _encoder_parts(rng)
  encoder = models.build_bof_encoder(pca, rbm, pool_frames=POOL, block_frames=BLOCK)
  with pytest.raises(tf.errors.InvalidArgumentError, match="fewer frames than block"):
    encoder(np.zeros((2, 10, N_MELS), np.float32), np.array([10, BLOCK - 1]))


def test_pooling_ignores_padding_for_any_sign():
  hidden = np.array([[[-3.0], [-1.0], [-2.0], [-9.0], [5.0]]], np.float32)
  pooling = BagOfFeaturesPooling(2)
  # 3 valid positions: windows [-3, -1] → -1, [-2] → -2; mean -1.5.
  np.testing.assert_allclose(pooling(hidden, np.array([3])).numpy(), [[-1.5]])
  np.testing.assert_allclose(pooling(hidden).numpy(), [[(-1.0 - 2.0 + 5.0) / 3]])


def test_encoder_serialization_round_trip(rng, tmp_path):
  pca, rbm = _encoder_parts(rng)
  encoder = models.build_bof_encoder(pca, rbm, pool_frames=POOL, block_frames=BLOCK)
  log_mel = keras.Input((None, N_MELS), name="log_mel")
  n_frames = keras.Input((), dtype="int32", name="n_frames")
  model = keras.Model([log_mel, n_frames], encoder(log_mel, n_frames))
  path = os.path.join(tmp_path, "encoder.keras")
  model.save(path)
  restored = keras.models.load_model(path)
  x = rng.standard_normal((3, 20, N_MELS)).astype(np.float32)
  n = np.array([20, 13, BLOCK], np.int32)
  np.testing.assert_array_equal(restored.predict([x, n], verbose=0),
                                model.predict([x, n], verbose=0))
  for layer in (BlockExtraction(3), BagOfFeaturesPooling(7)):
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_save_and_load_local_features(rng, tmp_path):
  pca, rbm = _encoder_parts(rng, n_mels=128, block=8, hidden=32)
  models.save_local_features(str(tmp_path), pca, rbm, block_frames=8, n_mels=128,
                             pool_frames=43, info={"note": "test"})
  encoder = models.load_bof_encoder(str(tmp_path))
  assert encoder.pool_frames == 43 and encoder.block_frames == 8
  log_mel = rng.standard_normal((1, 100, 128)).astype(np.float32)
  expected = _reference(log_mel[0], pca, rbm, block=8, pool=43)[0]
  np.testing.assert_allclose(encoder(log_mel).numpy()[0], expected, atol=2e-6)
  assert models.load_bof_encoder(str(tmp_path), pool_frames=11).pool_frames == 11
  with pytest.raises(FileNotFoundError, match="learn-local-features"):
    models.load_bof_encoder(os.path.join(tmp_path, "missing"))


def test_pca_of_every_block_as_one_convolution_equals_blocks_then_pca(rng):
  pca, _ = _encoder_parts(rng)
  log_mel = rng.standard_normal((2, 13, N_MELS)).astype(np.float32)
  expected = pca(BlockExtraction(BLOCK)(log_mel)).numpy()
  ours = pca.project_blocks(log_mel, BLOCK).numpy()
  assert ours.shape == expected.shape == (2, 13 - BLOCK + 1, pca.output_dim)
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
  with pytest.raises(ValueError, match="do not make the layer's"):
    pca.project_blocks(log_mel, BLOCK + 1)
  # An empty batch (a replica's share of a short last batch) stays empty and well shaped.
  empty = tf.function(lambda x: pca.project_blocks(x, BLOCK), input_signature=[
      tf.TensorSpec([None, None, N_MELS], tf.float32)])(log_mel[:0])
  assert empty.shape == (0, 13 - BLOCK + 1, pca.output_dim)


def test_rbm_activation_of_the_pre_activation_is_the_layer(rng):
  _, rbm = _encoder_parts(rng)
  visible = rng.standard_normal((2, 7, rbm.kernel.shape[0])).astype(np.float32)
  np.testing.assert_allclose(rbm.activation(rbm.pre_activation(visible)).numpy(),
                             rbm(visible).numpy(), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(rbm.pre_activation(visible[0]).numpy(),
                             visible[0] @ rbm.kernel.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positions,n_blocks", [(23, [23, 9]), (3, [3, 2]), (10, [10, 10])])
def test_pooling_pre_activations_then_activating_equals_pooling_activations(rng, positions,
                                                                            n_blocks):
  # max σ(z + c) = σ(max z + c): the encoder pools pre-activations and activates only
  # the window maxima. Padding positions, short last windows, fewer positions than a
  # window.
  pooling = BagOfFeaturesPooling(POOL)
  bias = tf.constant(rng.standard_normal(6).astype(np.float32))
  activation = lambda z: tf.sigmoid(tf.nn.bias_add(z, bias))  # noqa: E731
  pre = tf.constant(3 * rng.standard_normal((2, positions, 6)).astype(np.float32))
  n_blocks = tf.constant(n_blocks)
  maxima, counts = pooling.pooled(pre, n_blocks, activation=activation)
  expected, expected_counts = pooling.pooled(activation(pre), n_blocks)
  np.testing.assert_array_equal(counts.numpy(), expected_counts.numpy())
  np.testing.assert_allclose(maxima.numpy(), expected.numpy(), rtol=0, atol=1e-7)
  np.testing.assert_allclose(pooling(pre, n_blocks, activation=activation).numpy(),
                             pooling(activation(pre), n_blocks).numpy(), rtol=0, atol=1e-7)
