"""deepbof against the authors' own code: the same updates from the same draws.

``tests/data/authors_updates.npz`` was produced by running the authors' MATLAB code
(github.com/juhannam/deepbof: ``init_rbm.m``, ``train_rbm.m``, ``default_mlp.m``,
``tagatune_mlp.m``, ``tagatune_mlp_classify.m``) under GNU Octave with
``reference/authors/make_fixtures.py``, which records every ``rand``/``randn`` draw.
Here the same inputs, initial weights and draws go through deepbof's own trainers:

* RBM pretraining: a binary-visible and a ReLU-visible RBM, 6 epochs of batches of
  100 in file order (330 examples, the last 30 dropped every epoch), the default
  schedules (0.03 → 0.01 and 0.003 → 0.001, ×0.99 per epoch, momentum 0.5 → 0.9
  after epochs/5, the given weight costs), ``ReLURBMTrainer.fit`` with the authors'
  noise replayed;
* fine-tuning: the network initialised as ``tagatune_dnn.m`` does it (hidden layer i
  gets RBM i+1's visible bias), 3 epochs of ``finetuning.finetune`` (deepmat
  AdaDelta, minibatches of 128 in file order, non-inverted dropout with the authors'
  masks, the best validation epoch kept), then the test-time forward pass (weights
  leaving hidden layers halved).

Tolerances: the authors' code computes in float64, deepbof in float32. Measured: the
RBMs after 18 CD-1 updates agree to 2e-7 of the largest weight, the network after 9
AdaDelta updates to 3e-8 absolute (weights up to 0.45). The bounds are 10x (RBMs:
2e-6 of the largest value) and 30x (fine-tuning: 1e-6). For scale, fine-tuning with
the RBMs' hidden biases instead of the authors' mapping, or with shuffled batches,
moves the same weights by 3e-3 to 1e-2 (docs/model.md#reference-test).
"""

import os

import numpy as np
import pytest

from deepbof_tf import models
from deepbof_tf.config import DNNConfig, FinetuneConfig, PretrainConfig
from deepbof_tf.layers.relu_rbm import ReLURBM
from deepbof_tf.training import finetuning, pretraining
from deepbof_tf.training.relu_rbm_trainer import ReLURBMTrainer

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "authors_updates.npz")


@pytest.fixture(scope="module")
def ref():
  with np.load(FIXTURE) as data:
    return {k: data[k] for k in data.files}


def _replay(noise: np.ndarray, epochs: int, batch: int) -> np.ndarray:
  # MATLAB randn(size(pos_sigmoid)) is [hidden, batch] per update; ours [batch, hidden].
  hidden, rows, updates = noise.shape
  assert rows == batch and updates % epochs == 0
  return noise.transpose(2, 1, 0).reshape(epochs, updates // epochs, batch, hidden)


def _train_rbm(ref, layer: int, data: np.ndarray, visible: str) -> ReLURBM:
  epochs = int(ref["rbm_epochs"][0])
  config = PretrainConfig(epochs=epochs, weight_costs=tuple(ref["rbm_weight_costs"]))
  schedule = pretraining.rbm_schedule(config, layer - 1, visible)
  # The authors' learning rates for this visible type are our defaults.
  np.testing.assert_allclose([schedule.learning_rate, schedule.min_learning_rate],
                             ref[f"rbm{layer}_lr"], rtol=1e-12)
  assert not schedule.shuffle  # file order, as train_rbm.m
  init = ref[f"rbm{layer}_init"]  # [hidden, visible]
  rbm = ReLURBM(init.shape[0], visible=visible, name=f"rbm_{layer}")
  rbm.build((None, init.shape[1]))
  rbm.kernel.assign(init.T.astype(np.float32))
  np.testing.assert_array_equal(rbm.hidden_bias.numpy(), 0)  # inithidbiases = 0
  np.testing.assert_array_equal(rbm.visible_bias.numpy(), 0)
  trainer = ReLURBMTrainer(rbm, schedule, layer_index=layer - 1)
  trainer.fit(data.astype(np.float32), log_every=0,
              replay_noise=_replay(ref[f"rbm{layer}_noise"], epochs, schedule.batch_size))
  return rbm


def _assert_rbm(rbm: ReLURBM, ref, layer: int) -> None:
  weight = ref[f"rbm{layer}_weight"]
  np.testing.assert_allclose(rbm.kernel.numpy(), weight.T, rtol=0,
                             atol=2e-6 * np.abs(weight).max())
  for ours, key in ((rbm.hidden_bias, "hbias"), (rbm.visible_bias, "vbias")):
    theirs = ref[f"rbm{layer}_{key}"]
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=0,
                               atol=2e-6 * max(np.abs(theirs).max(), 1e-3))


def test_binary_visible_rbm_equals_the_authors_train_rbm(ref):
  rbm = _train_rbm(ref, 1, ref["x"], "binary")
  _assert_rbm(rbm, ref, 1)


def test_relu_visible_rbm_equals_the_authors_train_rbm(ref):
  # Its input is the up-pass of the authors' RBM 1 (deep_feature_learning.m).
  x2 = pretraining.up_pass(ref["rbm1_weight"].T, ref["rbm1_hbias"], ref["x"])
  np.testing.assert_allclose(
      x2, np.maximum(ref["x"] @ ref["rbm1_weight"].T + ref["rbm1_hbias"], 0), atol=1e-6)
  rbm = _train_rbm(ref, 2, x2, "relu")
  _assert_rbm(rbm, ref, 2)


def _authors_rbms(ref):
  return [{"kernel": ref[f"rbm{l}_weight"].T, "hidden_bias": ref[f"rbm{l}_hbias"],
           "visible_bias": ref[f"rbm{l}_vbias"]} for l in (1, 2)]


def _network(ref):
  hidden = ref["rbm1_weight"].shape[0]
  model = models.build_song_dnn(ref["y"].shape[1], DNNConfig(num_hidden_layers=2,
                                                             hidden_units=hidden),
                                input_dim=ref["x"].shape[1])
  models.initialize_from_rbms(model, _authors_rbms(ref))  # the default mapping
  output = model.get_layer("probabilities")  # default_mlp's random draw
  output.kernel.assign(ref["init_W3"].astype(np.float32))
  output.bias.assign(ref["init_b3"].astype(np.float32))
  return model


def _layers(model):
  return [model.get_layer(n) for n in ("hidden_1", "hidden_2", "probabilities")]


def test_pretrained_network_starts_as_tagatune_dnn_sets_it(ref):
  model = _network(ref)
  for i, layer in enumerate(_layers(model), start=1):
    np.testing.assert_array_equal(layer.kernel.numpy(), ref[f"init_W{i}"].astype(np.float32))
    np.testing.assert_array_equal(layer.bias.numpy(), ref[f"init_b{i}"].astype(np.float32))
  assert np.abs(ref["init_b1"]).max() > 0 and not np.abs(ref["init_b2"]).any()


class _Record:
  def __init__(self):
    import keras

    class Recorder(keras.callbacks.Callback):
      def __init__(self, sink):
        super().__init__()
        self.sink = sink

      def on_epoch_end(self, epoch, logs=None):
        self.sink.append([np.array(w) for w in self.model.get_weights()])

    self.epochs = []
    self.callback = Recorder(self.epochs)


def test_fine_tuning_equals_the_authors_tagatune_mlp(ref, tmp_path):
  model = _network(ref)
  # deepmat draws hidden layer 1's mask, then hidden layer 2's, at every update.
  rows = ref["mask_rows"]
  masks = np.split(ref["masks"], np.cumsum(rows)[:-1])
  assert [len(m) for m in masks[:6]] == [128, 128, 128, 128, 74, 74]  # ceil(330/128)
  queues = {"dropout_1": iter(masks[0::2]), "dropout_2": iter(masks[1::2])}
  for name, queue in queues.items():
    layer = model.get_layer(name)
    layer.keep_mask = (lambda q: lambda shape, dtype: np.asarray(next(q), np.float32))(queue)
  record = _Record()
  epochs = len([k for k in ref if k.startswith("epoch") and k.endswith("_W1")])
  result = finetuning.finetune(
      model, ref["x"], ref["y"], ref["x_valid"], ref["y_valid"],
      FinetuneConfig(epochs=epochs, tensorboard=False, checkpoint_every_seconds=0),
      work_dir=str(tmp_path), callbacks=[record.callback], run_eagerly=True)
  for queue in queues.values():  # every recorded mask was used, none more
    assert next(queue, None) is None
  assert len(record.epochs) == epochs
  for e, weights in enumerate(record.epochs, start=1):
    for i in range(3):
      for ours, key in ((weights[2 * i], f"epoch{e}_W{i + 1}"),
                        (weights[2 * i + 1], f"epoch{e}_b{i + 1}")):
        np.testing.assert_allclose(ours, ref[key], rtol=0, atol=1e-6, err_msg=key)
  # The best validation epoch is the authors' (their AUC-tag per epoch, ours alike).
  best = [e for e in range(1, epochs + 1)
          if np.allclose(ref[f"epoch{e}_W1"], ref["best_W1"], rtol=0, atol=0)]
  assert result["best_epoch"] + 1 in best
  for i, layer in enumerate(_layers(model), start=1):
    np.testing.assert_allclose(layer.kernel.numpy(), ref[f"best_W{i}"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(layer.bias.numpy(), ref[f"best_b{i}"], rtol=0, atol=1e-6)
  # Test time: tagatune_mlp_classify halves the weights leaving each hidden layer and
  # returns the output layer's pre-sigmoid values (the ranking metrics are the same).
  np.testing.assert_allclose(model.predict(ref["x_test"].astype(np.float32), verbose=0),
                             1 / (1 + np.exp(-ref["test_estimate"])), rtol=0, atol=1e-6)
