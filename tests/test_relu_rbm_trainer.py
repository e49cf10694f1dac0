"""ReLU-RBM training: the CD-1 step against a NumPy reference, the trainer, its schedule."""

import numpy as np
import pytest
import tensorflow as tf

from deepbof_tf.config import PretrainConfig
from deepbof_tf.layers import relu_rbm
from deepbof_tf.training import pretraining
from deepbof_tf.training import relu_rbm_trainer
from deepbof_tf.training import schedule


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _numpy_cd1(W, c, b, dW, dc, db, v, noise, binary, lr, mom, wc):
  """The CD-1 step of the authors' train_rbm.m, rewritten in NumPy with W [visible, hidden]."""
  B = v.shape[0]
  a = v @ W + c
  pos = np.maximum(a, 0)
  h = np.maximum(a + np.sqrt(_sigmoid(a)) * noise, 0)
  vn = h @ W.T + b
  vn = _sigmoid(vn) if binary else np.maximum(vn, 0)
  hn = np.maximum(vn @ W + c, 0)
  dW = mom * dW + lr * ((v.T @ pos - vn.T @ hn) / B - wc * W)
  db = mom * db + lr / B * (v - vn).sum(0)
  dc = mom * dc + lr / B * (pos - hn).sum(0)
  error = np.mean(((v - vn) ** 2).sum(1))
  return W + dW, c + dc, b + db, dW, dc, db, error


@pytest.mark.parametrize("binary", [True, False])
def test_cd1_step_matches_numpy_reference_with_shared_noise(rng, binary):
  nv, nh, batch = 12, 7, 9
  v = rng.normal(size=(batch, nv)) if binary else np.abs(rng.normal(size=(batch, nv)))
  W = 0.3 * rng.normal(size=(nv, nh))
  c, b = 0.1 * rng.normal(size=nh), 0.1 * rng.normal(size=nv)
  dW, dc, db = (0.01 * rng.normal(size=s) for s in ((nv, nh), (nh,), (nv,)))
  noise = rng.normal(size=(batch, nh))
  lr, mom, wc = 0.03, 0.9, 0.01
  args = [x.astype(np.float32) for x in (W, c, b, dW, dc, db, v, noise)]
  state, error = relu_rbm_trainer.cd1_update(*[tf.constant(a) for a in args], visible=("binary" if binary else "relu"),
                                     learning_rate=lr, momentum=mom, weight_cost=wc)
  expected = _numpy_cd1(W, c, b, dW, dc, db, v, noise, binary, lr, mom, wc)
  for ours, theirs in zip(list(state) + [error], expected):
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-5, atol=1e-5)
  # The step really moves the parameters (the test cannot pass with a no-op update).
  assert np.abs(np.asarray(state[0]) - W).max() > 1e-4


def test_trainer_epoch_equals_repeated_numpy_steps(rng):
  """A whole tf.function epoch equals the NumPy steps fed with the trainer's draws."""
  nv, nh, batch, n = 6, 5, 4, 13  # 3 batches, 1 example dropped
  data = rng.normal(size=(n, nv)).astype(np.float32)
  config = relu_rbm_trainer.ReLURBMSchedule(epochs=2, batch_size=batch, learning_rate=0.05,
                                    min_learning_rate=0.04, weight_cost=0.01, shuffle=True)
  rbm = relu_rbm.ReLURBM(nh, visible="binary", seed=3)
  rbm.build((None, nv))
  W = rbm.kernel.numpy().astype(np.float64)
  c, b = np.zeros(nh), np.zeros(nv)
  dW, dc, db = np.zeros((nv, nh)), np.zeros(nh), np.zeros(nv)
  trainer = relu_rbm_trainer.ReLURBMTrainer(rbm, config, seed=11, layer_index=1)
  history = trainer.fit(data, log_every=0)

  for epoch in range(2):
    order = np.random.default_rng((11, 1, epoch)).permutation(n)[:12]
    lr = schedule.learning_rate(epoch, 0.05, 0.99, 0.04)
    mom = schedule.momentum(epoch, 2, 0.5, 0.9, 0.2)
    errors = []
    for k in range(3):
      seed = relu_rbm_trainer.noise_seed(11, 1, epoch, k)
      noise = tf.random.stateless_normal((batch, nh), seed=seed).numpy().astype(np.float64)
      v = data[order[k * batch:(k + 1) * batch]].astype(np.float64)
      W, c, b, dW, dc, db, e = _numpy_cd1(W, c, b, dW, dc, db, v, noise, True, lr, mom, 0.01)
      errors.append(e)
    assert history["reconstruction_error"][epoch] == pytest.approx(np.mean(errors), rel=1e-4)
  np.testing.assert_allclose(rbm.kernel.numpy(), W, atol=1e-5)
  np.testing.assert_allclose(rbm.hidden_bias.numpy(), c, atol=1e-5)
  np.testing.assert_allclose(rbm.visible_bias.numpy(), b, atol=1e-5)


def test_training_reduces_reconstruction_error_and_is_seeded(rng):
  # Non-negative inputs with low-rank structure for a ReLU–ReLU RBM.
  data = np.maximum(rng.normal(size=(400, 4)) @ rng.normal(size=(4, 20)), 0).astype(
      np.float32)
  config = relu_rbm_trainer.ReLURBMSchedule(epochs=15, batch_size=20, learning_rate=0.003,
                                    min_learning_rate=0.001, weight_cost=0.001)

  def train(seed):
    rbm = relu_rbm.ReLURBM(16, visible="relu", seed=seed)
    history = relu_rbm_trainer.ReLURBMTrainer(rbm, config, seed=seed).fit(data, log_every=0)
    return rbm, history["reconstruction_error"]

  rbm_a, errors = train(5)
  assert errors[-1] < 0.7 * errors[0]
  rbm_b, errors_b = train(5)
  np.testing.assert_array_equal(rbm_a.kernel.numpy(), rbm_b.kernel.numpy())
  assert errors == errors_b
  rbm_c, _ = train(6)
  assert not np.allclose(rbm_a.kernel.numpy(), rbm_c.kernel.numpy())


def test_invalid_arguments():
  rbm = relu_rbm.ReLURBM(4)
  trainer = relu_rbm_trainer.ReLURBMTrainer(rbm, relu_rbm_trainer.ReLURBMSchedule(batch_size=100))
  with pytest.raises(ValueError, match="at least batch_size"):
    trainer.fit(np.zeros((10, 3), np.float32))


def test_cd1_step_gaussian_visible_matches_numpy(rng):
  nv, nh, batch = 8, 5, 6
  v = rng.normal(size=(batch, nv))
  W = 0.3 * rng.normal(size=(nv, nh))
  c, b = np.zeros(nh), np.zeros(nv)
  zeros = [np.zeros((nv, nh)), np.zeros(nh), np.zeros(nv)]
  noise = rng.normal(size=(batch, nh))
  args = [x.astype(np.float32) for x in (W, c, b, *zeros, v, noise)]
  state, _ = relu_rbm_trainer.cd1_update(*[tf.constant(a) for a in args], visible="gaussian",
                                 learning_rate=0.01, momentum=0.5, weight_cost=0.001)
  a = v @ W + c
  h = np.maximum(a + np.sqrt(_sigmoid(a)) * noise, 0)
  vn = h @ W.T + b  # linear reconstruction
  hn = np.maximum(vn @ W + c, 0)
  expected_w = W + 0.01 * ((v.T @ np.maximum(a, 0) - vn.T @ hn) / batch - 0.001 * W)
  np.testing.assert_allclose(np.asarray(state[0]), expected_w, rtol=1e-5, atol=1e-5)


def test_schedule_defaults_are_the_authors_layer_1_config():
  # One set of defaults: PretrainConfig's, read by ReLURBMSchedule for layer 1.
  assert relu_rbm_trainer.ReLURBMSchedule() == pretraining.rbm_schedule(
      PretrainConfig(), 0, "binary")
