"""The deepmat-style AdaDelta against a NumPy transcription of the authors' update."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deepbof_tf.training import optimizers


def _deepmat_adadelta(theta, grads, rho, eps):
  """The authors' update, step by step: rho = 0 on the very first update of the run."""
  theta = np.array(theta, np.float64)
  grads_sq = np.zeros_like(theta)
  steps_sq = np.zeros_like(theta)
  trajectory = []
  for n, g in enumerate(grads):
    r = 0.0 if n == 0 else rho
    grads_sq = r * grads_sq + (1 - r) * g ** 2
    step = -np.sqrt(steps_sq + eps) / np.sqrt(grads_sq + eps) * g
    steps_sq = r * steps_sq + (1 - r) * step ** 2
    theta = theta + step
    trajectory.append(theta.copy())
  return trajectory


def _keras_adadelta(theta, grads, rho, eps):
  theta = np.array(theta, np.float64)
  grads_sq = np.zeros_like(theta)
  steps_sq = np.zeros_like(theta)
  for g in grads:
    grads_sq = rho * grads_sq + (1 - rho) * g ** 2
    step = -np.sqrt(steps_sq + eps) / np.sqrt(grads_sq + eps) * g
    steps_sq = rho * steps_sq + (1 - rho) * step ** 2
    theta = theta + step
  return theta


@pytest.mark.parametrize("rho,eps", [(0.99, 1e-8), (0.9, 1e-6)])
def test_deepmat_adadelta_matches_numpy_reference(rho, eps):
  rng = np.random.default_rng(0)
  theta0 = rng.standard_normal((4, 3)).astype(np.float32)
  grads = [rng.standard_normal((4, 3)).astype(np.float32) * s for s in (1.0, 0.1, 3.0, 0.5, 2.0)]
  variable = keras.Variable(theta0)
  opt = optimizers.DeepmatAdadelta(learning_rate=1.0, rho=rho, epsilon=eps)
  expected = _deepmat_adadelta(theta0, grads, rho, eps)
  for n, g in enumerate(grads):
    opt.apply_gradients([(tf.constant(g), variable)])
    np.testing.assert_allclose(variable.numpy(), expected[n], rtol=0, atol=1e-6)
  # The warm start matters: Keras' Adadelta from the same start ends elsewhere.
  keras_end = _keras_adadelta(theta0, grads, rho, eps)
  assert np.max(np.abs(keras_end - expected[-1])) > 1e-3


def test_keras_adadelta_stays_selectable_and_matches_its_reference():
  rng = np.random.default_rng(1)
  theta0 = rng.standard_normal(5).astype(np.float32)
  grads = [rng.standard_normal(5).astype(np.float32) for _ in range(3)]
  variable = keras.Variable(theta0)
  opt = optimizers.make_adadelta("adadelta_keras", 1.0, 0.99, 1e-8)
  assert isinstance(opt, keras.optimizers.Adadelta)
  for g in grads:
    opt.apply_gradients([(tf.constant(g), variable)])
  np.testing.assert_allclose(variable.numpy(), _keras_adadelta(theta0, grads, 0.99, 1e-8),
                             rtol=0, atol=1e-6)
  with pytest.raises(ValueError, match="optimizer must be one of"):
    optimizers.make_adadelta("sgd", 1.0, 0.99, 1e-8)


def test_deepmat_adadelta_in_a_compiled_model_and_serialization():
  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
  opt = optimizers.DeepmatAdadelta(rho=0.95, epsilon=1e-7)
  model.compile(optimizer=opt, loss="mse")
  x = np.random.default_rng(2).standard_normal((16, 3)).astype(np.float32)
  model.fit(x, x[:, :2], epochs=2, batch_size=8, verbose=0)
  assert int(opt.iterations.numpy()) == 4
  clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
  assert isinstance(clone, optimizers.DeepmatAdadelta)
  assert (clone.rho, clone.epsilon) == (0.95, 1e-7)
  # Same variable count as Keras' Adadelta: checkpoints of either have the same layout.
  ref = keras.optimizers.Adadelta()
  ref.build(model.trainable_variables)
  assert len(opt.variables) == len(ref.variables)
