"""The ReLURBM layer: the up-pass, the reconstructions and Keras serialization."""

import numpy as np
import pytest

import keras
from deepbof_tf.layers import relu_rbm


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def test_up_pass_and_reconstruction(rng):
  rbm = relu_rbm.ReLURBM(3, visible="binary", seed=0)
  v = rng.normal(size=(5, 4)).astype(np.float32)
  h = np.asarray(rbm(v))
  W, c, b = rbm.kernel.numpy(), rbm.hidden_bias.numpy(), rbm.visible_bias.numpy()
  np.testing.assert_allclose(h, np.maximum(v @ W + c, 0), atol=1e-6)
  np.testing.assert_allclose(np.asarray(rbm.visible_mean(h)), _sigmoid(h @ W.T + b),
                             atol=1e-6)


def test_save_load_roundtrip(tmp_path, rng):
  inputs = keras.Input((6,))
  model = keras.Model(inputs, relu_rbm.ReLURBM(4, visible="relu", seed=1,
                                               name="rbm")(inputs))
  model.get_layer("rbm").hidden_bias.assign(rng.normal(size=4).astype(np.float32))
  path = str(tmp_path / "rbm.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  x = np.abs(rng.normal(size=(3, 6))).astype(np.float32)
  np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                             atol=1e-6)
  assert loaded.get_layer("rbm").visible == "relu"


def test_invalid_visible_type():
  with pytest.raises(ValueError, match="visible"):
    relu_rbm.ReLURBM(4, visible="poisson")


def test_gaussian_visible_reconstruction_is_linear(rng):
  rbm = relu_rbm.ReLURBM(3, visible="gaussian", seed=0)
  v = rng.normal(size=(5, 4)).astype(np.float32)
  h = np.asarray(rbm(v))
  W, b = rbm.kernel.numpy(), rbm.visible_bias.numpy()
  np.testing.assert_allclose(np.asarray(rbm.visible_mean(h)), h @ W.T + b, atol=1e-6)
