"""The SparseRBM layer: its forward pass, reconstruction and Keras serialization."""

import os

import keras
import numpy as np

from deepbof_tf.config import SparseRBMConfig
from deepbof_tf.layers.sparse_rbm import SparseRBM
from deepbof_tf.training.sparse_rbm_trainer import SparseRBMTrainer


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def test_layer_forward_and_serialization(rng, tmp_path):
  trainer = SparseRBMTrainer(7, SparseRBMConfig(num_hidden=5))
  trainer.hidden_bias.assign(rng.standard_normal(5).astype(np.float32))
  trainer.visible_bias.assign(rng.standard_normal(7).astype(np.float32))
  layer = trainer.layer()
  v = rng.standard_normal((4, 7)).astype(np.float32)
  w, c = trainer.kernel.numpy(), trainer.hidden_bias.numpy()
  np.testing.assert_allclose(layer(v).numpy(), _sigmoid(v @ w + c), atol=1e-6)
  h = (rng.random((4, 5)) > 0.5).astype(np.float32)
  np.testing.assert_allclose(layer.visible_mean(h).numpy(),
                             h @ w.T + trainer.visible_bias.numpy(), atol=1e-6)
  inputs = keras.Input((7,))
  model = keras.Model(inputs, layer(inputs))
  path = os.path.join(tmp_path, "rbm.keras")
  model.save(path)
  restored = keras.models.load_model(path)
  np.testing.assert_array_equal(restored.predict(v, verbose=0), model.predict(v, verbose=0))
  assert SparseRBM.from_config(layer.get_config()).num_hidden == 5
