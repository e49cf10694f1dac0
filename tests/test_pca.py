"""PCAWhitening against a NumPy eigendecomposition written here."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from deepbof_tf.layers.pca import CovarianceAccumulator, PCAWhitening, pca_statistics


def _correlated(rng, n=4000, dim=48, rank_decay=0.8):
  """Gaussian data with a decaying spectrum and a non-zero mean."""
  basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
  scales = rank_decay ** np.arange(dim)
  return (rng.standard_normal((n, dim)) * scales) @ basis.T + rng.normal(3.0, 1.0, dim)


def _numpy_pca(x, retained, eps):
  mean = x.mean(axis=0)
  centred = x - mean
  cov = centred.T @ centred / x.shape[0]
  d, e = np.linalg.eigh(cov)
  d, e = d[::-1], e[:, ::-1]
  share = np.cumsum(d) / d.sum()
  k = int(np.argmax(share > retained)) + 1
  e = e[:, :k]
  # The layer's sign convention: each eigenvector's largest-|entry| is positive.
  e = e * np.sign(e[np.argmax(np.abs(e), axis=0), np.arange(k)])
  return mean, d[:k], e


def test_accumulator_matches_numpy_covariance(rng):
  x = _correlated(rng, n=1037, dim=20)
  acc = CovarianceAccumulator(20)
  for start in range(0, len(x), 100):  # uneven last batch
    acc.update(x[start:start + 100])
  centred = x - x.mean(0)
  np.testing.assert_allclose(acc.mean, x.mean(0), rtol=0, atol=1e-12)
  np.testing.assert_allclose(acc.covariance(), centred.T @ centred / len(x),
                             rtol=1e-10, atol=1e-12)
  assert acc.count == 1037


@pytest.mark.parametrize("retained", [0.5, 0.9, 0.99])
def test_adapt_matches_numpy(rng, retained):
  x = _correlated(rng)
  layer = PCAWhitening(retained_variance=retained, epsilon=0.01)
  # Streaming adapt from an unbatched dataset: never one array of all blocks.
  layer.adapt(tf.data.Dataset.from_tensor_slices(x.astype(np.float32)), batch_size=256)
  mean, d, e = _numpy_pca(x.astype(np.float32).astype(np.float64), retained, 0.01)
  assert layer.output_dim == d.shape[0]
  assert layer.output_dim < x.shape[1]
  np.testing.assert_allclose(layer.mean.numpy(), mean, atol=1e-5)
  np.testing.assert_allclose(layer.eigenvalues.numpy(), d, rtol=1e-4)
  # Same subspace and, with the sign rule, the same vectors up to that rule.
  ours = layer.eigenvectors.numpy()
  np.testing.assert_allclose(ours, e, atol=1e-3)
  biggest = np.argmax(np.abs(ours), axis=0)
  assert np.all(ours[biggest, np.arange(ours.shape[1])] > 0)
  # The layer computes diag((d+eps)^-1/2) E^T (x - mean).
  expected = ((x - mean) @ e) / np.sqrt(d + 0.01)
  np.testing.assert_allclose(layer(x.astype(np.float32)).numpy(), expected,
                             rtol=1e-3, atol=1e-3)


def test_whitened_covariance_is_near_identity(rng):
  x = _correlated(rng, n=20000, dim=32, rank_decay=0.9)
  layer = PCAWhitening(retained_variance=0.9, epsilon=0.0)
  layer.adapt(x.astype(np.float32), batch_size=1000)
  y = layer(x.astype(np.float32)).numpy().astype(np.float64)
  cov = np.cov(y, rowvar=False, bias=True)
  np.testing.assert_allclose(cov, np.eye(layer.output_dim), atol=2e-3)
  # With epsilon the variances shrink to d/(d+eps), still uncorrelated.
  layer_eps = PCAWhitening(retained_variance=0.9, epsilon=0.01)
  layer_eps.adapt(x.astype(np.float32))
  y = layer_eps(x.astype(np.float32)).numpy().astype(np.float64)
  d = layer_eps.eigenvalues.numpy()
  cov = np.cov(y, rowvar=False, bias=True)
  np.testing.assert_allclose(np.diag(cov), d / (d + 0.01), rtol=2e-3)
  off = cov - np.diag(np.diag(cov))
  assert np.max(np.abs(off)) < 2e-3


def test_inverse_round_trip(rng):
  x = _correlated(rng, n=3000, dim=24).astype(np.float32)
  full = PCAWhitening(retained_variance=1.0, epsilon=0.01)
  full.adapt(x)
  assert full.output_dim == 24
  np.testing.assert_allclose(full.inverse(full(x)).numpy(), x, atol=2e-4, rtol=1e-5)
  # With fewer components, inverse∘call is the orthogonal projection onto them.
  part = PCAWhitening(retained_variance=0.9, epsilon=0.01)
  part.adapt(x)
  e = part.eigenvectors.numpy().astype(np.float64)
  mean = part.mean.numpy()
  projected = (x - mean) @ e @ e.T + mean
  np.testing.assert_allclose(part.inverse(part(x)).numpy(), projected, atol=2e-4)
  # Directions (add_mean=False) are linear.
  direction = rng.standard_normal((3, part.output_dim)).astype(np.float32)
  np.testing.assert_allclose(
      part.inverse(direction, add_mean=False).numpy(),
      (direction * np.sqrt(part.eigenvalues.numpy() + 0.01)) @ e.T, atol=1e-5)


def test_retained_rule_is_strictly_greater(rng):
  # Eigenvalues 4, 3, 2, 1 (sum 10): shares 0.4, 0.7, 0.9, 1.0. "More than 0.9" needs 4.
  cov = np.diag([4.0, 3.0, 2.0, 1.0])
  d, _ = pca_statistics(cov, 0.9)
  assert d.shape[0] == 4
  d, _ = pca_statistics(cov, 0.85)
  assert d.shape[0] == 3


def test_unadapted_layer_errors_and_bad_input():
  with pytest.raises(ValueError, match="adapt"):
    PCAWhitening()(np.zeros((2, 8), np.float32))
  with pytest.raises(ValueError, match="no blocks"):
    PCAWhitening().adapt(np.zeros((0, 8), np.float32))
  with pytest.raises(ValueError, match="retained_variance"):
    PCAWhitening(retained_variance=0.0)


def test_serialization_round_trip(rng, tmp_path):
  x = _correlated(rng, n=2000, dim=16).astype(np.float32)
  layer = PCAWhitening(name="pca")
  layer.adapt(x)
  config = layer.get_config()
  assert config["output_dim"] == layer.output_dim
  inputs = keras.Input((16,))
  model = keras.Model(inputs, layer(inputs))
  path = os.path.join(tmp_path, "pca.keras")
  model.save(path)
  restored = keras.models.load_model(path)
  np.testing.assert_array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0))
  clone = PCAWhitening.from_config(config)
  clone.build((None, 16))
  clone.set_weights(layer.get_weights())
  np.testing.assert_array_equal(clone(x).numpy(), layer(x).numpy())


def test_inverse_and_visible_mean_under_a_mixed_float16_policy(rng):
  import keras
  from deepbof_tf.layers.sparse_rbm import SparseRBM
  x = rng.standard_normal((50, 12)).astype(np.float32)
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy("mixed_float16")
  try:
    pca = PCAWhitening(retained_variance=0.99)
    pca.adapt(x)
    whitened = pca(x)
    assert whitened.dtype == tf.float16
    back = pca.inverse(whitened)
    assert back.dtype == tf.float16 and back.shape == x.shape
    rbm = SparseRBM(num_hidden=5)
    hidden = rbm(whitened)
    mean = rbm.visible_mean(hidden)
    assert mean.dtype == tf.float16 and mean.shape == whitened.shape
  finally:
    keras.config.set_dtype_policy(previous)
