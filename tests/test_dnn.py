"""Song-level DNN: builder, RBM initialisation, standardization, loss, data order, logreg head."""

import numpy as np
import pytest

import keras
from deepbof_tf import model_dir as layout
from deepbof_tf import models
from deepbof_tf.config import DNNConfig, PretrainConfig
from deepbof_tf.layers.standardize import (ClipMaxNormalization, Standardization,
                                           normalize_inputs, standardization_statistics)
from deepbof_tf.training import finetuning, logreg, pretraining


def _rbm_weights(rng, dims):
  return [(rng.normal(size=(a, b)).astype(np.float32), rng.normal(size=b).astype(np.float32),
           rng.normal(size=a).astype(np.float32)) for a, b in zip(dims[:-1], dims[1:])]


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_architecture(layers):
  config = DNNConfig(num_hidden_layers=layers, hidden_units=16)
  model = models.build_song_dnn(5, config, input_dim=12)
  assert model.input_shape == (None, 12) and model.output_shape == (None, 5)
  assert model.inputs[0].name == models.BAG_OF_FEATURES
  dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
  assert [l.units for l in dense] == [16] * layers + [5]
  assert all(l.activation.__name__ == "relu" for l in dense[:-1])
  assert dense[-1].activation.__name__ == "sigmoid" and dense[-1].name == "probabilities"
  dropouts = [l for l in model.layers if isinstance(l, keras.layers.Dropout)]
  assert [d.rate for d in dropouts] == [0.5] * layers
  # The default input is the raw bag-of-features (the authors' final scripts).
  assert model.layers[1].name == models.hidden_layer_name(0)
  standardized = models.build_song_dnn(5, DNNConfig(num_hidden_layers=layers, hidden_units=16,
                                                    input_normalization="standardize"),
                                       input_dim=12)
  assert isinstance(standardized.layers[1], Standardization)
  clip_max = models.build_song_dnn(5, DNNConfig(num_hidden_layers=layers, hidden_units=16,
                                                input_normalization="clip_max"),
                                   input_dim=12)
  assert isinstance(clip_max.layers[1], ClipMaxNormalization)


def _as_mappings(rbms):
  return [{"kernel": k, "hidden_bias": c, "visible_bias": b} for k, c, b in rbms]


def test_initialize_gives_hidden_layer_i_the_visible_bias_of_rbm_i_plus_1(rng):
  # The authors' tagatune_dnn.m: M.biases{i} = rbmModel.visbiases (deepmat's biases{1}
  # is the input layer's), so hidden layer i gets RBM i+1's visible bias and the top
  # hidden layer keeps 0.
  model = models.build_song_dnn(4, DNNConfig(num_hidden_layers=3, hidden_units=6),
                                input_dim=10)
  output_before = model.get_layer("probabilities").kernel.numpy().copy()
  rbms = _rbm_weights(rng, [10, 6, 6, 6])
  models.initialize_from_rbms(model, _as_mappings(rbms))
  for i, (kernel, _, _) in enumerate(rbms):
    np.testing.assert_array_equal(model.get_layer(models.hidden_layer_name(i)).kernel.numpy(),
                                  kernel)
  np.testing.assert_array_equal(model.get_layer("hidden_1").bias.numpy(), rbms[1][2])
  np.testing.assert_array_equal(model.get_layer("hidden_2").bias.numpy(), rbms[2][2])
  np.testing.assert_array_equal(model.get_layer("hidden_3").bias.numpy(), np.zeros(6))
  np.testing.assert_array_equal(model.get_layer("probabilities").kernel.numpy(),
                                output_before)


def test_initialize_with_hidden_biases(rng):
  model = models.build_song_dnn(4, DNNConfig(num_hidden_layers=3, hidden_units=6),
                                input_dim=10)
  rbms = _rbm_weights(rng, [10, 6, 6, 6])
  models.initialize_from_rbms(model, _as_mappings(rbms), biases="hidden")
  for i, (kernel, hidden_bias, _) in enumerate(rbms):
    layer = model.get_layer(models.hidden_layer_name(i))
    np.testing.assert_array_equal(layer.kernel.numpy(), kernel)
    np.testing.assert_array_equal(layer.bias.numpy(), hidden_bias)
  with pytest.raises(ValueError, match="biases must be"):
    models.initialize_from_rbms(model, _as_mappings(rbms), biases="visible")


def test_one_layer_network_from_next_visible_keeps_a_zero_bias(rng):
  model = models.build_song_dnn(4, DNNConfig(num_hidden_layers=1, hidden_units=6),
                                input_dim=10)
  rbms = _rbm_weights(rng, [10, 6])
  models.initialize_from_rbms(model, _as_mappings(rbms))
  np.testing.assert_array_equal(model.get_layer("hidden_1").bias.numpy(), np.zeros(6))


def test_initialize_rejects_wrong_shapes(rng):
  model = models.build_song_dnn(4, DNNConfig(num_hidden_layers=1, hidden_units=6),
                                input_dim=10)
  with pytest.raises(ValueError, match="hidden_1 needs"):
    models.initialize_from_rbms(model, [{"kernel": np.zeros((9, 6)),
                                         "hidden_bias": np.zeros(6),
                                         "visible_bias": np.zeros(9)}])


@pytest.mark.parametrize("scaling,factor", [("weights", 0.5), ("inverted", 1.0)])
def test_forward_pass_matches_numpy_with_standardization_inside(rng, scaling, factor):
  # Non-inverted dropout: at inference every hidden layer's output is scaled by
  # (1 - rate), which is deepmat's W{l-1}/2 for the weights leaving it.
  x_train = rng.random((50, 8)).astype(np.float32)
  mean, std = standardization_statistics(x_train)
  np.testing.assert_allclose(mean, x_train.mean(0), atol=1e-6)
  np.testing.assert_allclose(std, x_train.std(0), atol=1e-6)
  model = models.build_song_dnn(3, DNNConfig(num_hidden_layers=2, hidden_units=5,
                                             input_normalization="standardize",
                                             dropout_scaling=scaling),
                                input_dim=8, mean=mean, std=std)
  x = rng.random((7, 8)).astype(np.float32)
  h = (x - mean) / std
  for name in ("hidden_1", "hidden_2"):
    layer = model.get_layer(name)
    h = np.maximum(h @ layer.kernel.numpy() + layer.bias.numpy(), 0) * factor
  out = model.get_layer("probabilities")
  expected = 1 / (1 + np.exp(-(h @ out.kernel.numpy() + out.bias.numpy())))
  np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)


def test_normalization_modes(rng):
  data = rng.random((30, 4))
  data[:, 2] = 0.25  # constant feature: scale falls back to 1
  mean, std = standardization_statistics(data, "standardize")
  assert std[2] == 1.0 and mean[2] == pytest.approx(0.25)
  np.testing.assert_allclose(std[[0, 1, 3]], data.std(0)[[0, 1, 3]], rtol=1e-6)
  for mode in ("none", "clip_max"):  # no statistics
    mean, std = standardization_statistics(data, mode)
    np.testing.assert_allclose(mean, 0)
    np.testing.assert_allclose(std, 1)
  with pytest.raises(ValueError, match="must be one of"):
    standardization_statistics(data, "minmax")
  model = models.build_song_dnn(2, DNNConfig(num_hidden_layers=1, hidden_units=3,
                                             input_normalization="none"), input_dim=4)
  assert not any(isinstance(l, (Standardization, ClipMaxNormalization))
                 for l in model.layers)


@pytest.mark.parametrize("mode", ["none", "clip_max", "standardize"])
def test_each_normalization_mode_matches_numpy(rng, mode):
  x_train = rng.random((40, 6)).astype(np.float32)
  x = rng.random((9, 6)).astype(np.float32)
  x[4] = 0.0  # an all-zero clip: clip_max leaves it as it is
  mean, std = standardization_statistics(x_train, mode)
  if mode == "none":
    expected = x
  elif mode == "clip_max":  # each clip by its own maximum (the authors' option)
    peak = x.max(axis=1, keepdims=True)
    expected = x / np.where(peak > 0, peak, 1)
  else:
    expected = (x - x_train.mean(0)) / x_train.std(0)
  np.testing.assert_allclose(normalize_inputs(x, mode, mean, std), expected, rtol=1e-5,
                             atol=1e-6)
  # The model's first layer computes the same.
  model = models.build_song_dnn(2, DNNConfig(num_hidden_layers=1, hidden_units=3,
                                             input_normalization=mode),
                                input_dim=6, mean=mean, std=std)
  first = keras.Model(model.inputs, model.get_layer(models.hidden_layer_name(0)).input)
  np.testing.assert_allclose(first.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
  if mode == "clip_max":
    np.testing.assert_allclose(expected[[0, 1, 2, 3, 5, 6, 7, 8]].max(axis=1), 1.0, rtol=1e-6)


def test_removed_max_mode_names_the_replacements():
  for build in (lambda: DNNConfig(input_normalization="max"),
                lambda: normalize_inputs(np.ones((2, 2)), "max", 0.0, 1.0)):
    with pytest.raises(ValueError, match="'max' was removed.*'clip_max'.*'standardize'"):
      build()


def test_tagger_save_and_load(tmp_path, rng):
  x_train = rng.random((20, 6)).astype(np.float32)
  mean, std = standardization_statistics(x_train)
  model = models.build_song_dnn(3, DNNConfig(num_hidden_layers=2, hidden_units=4,
                                             input_normalization="standardize"),
                                input_dim=6, mean=mean, std=std, seed=3)
  model.save(str(tmp_path / layout.TAGGER_FILE))
  models.save_tag_names(str(tmp_path), ["rock", "piano", "vocal"])
  loaded = models.load_tagger(str(tmp_path))
  np.testing.assert_allclose(loaded.predict(x_train, verbose=0),
                             model.predict(x_train, verbose=0), atol=1e-6)
  assert models.load_tag_names(str(tmp_path)) == ["rock", "piano", "vocal"]
  np.testing.assert_allclose(loaded.get_layer("standardization").mean.numpy(), mean)
  with pytest.raises(FileNotFoundError, match="no trained tagger"):
    models.load_tagger(str(tmp_path / "missing"))


def test_random_init_is_seeded():
  config = DNNConfig(num_hidden_layers=2, hidden_units=4)
  a = models.build_song_dnn(3, config, input_dim=6, seed=1).get_weights()
  b = models.build_song_dnn(3, config, input_dim=6, seed=1).get_weights()
  c = models.build_song_dnn(3, config, input_dim=6, seed=2).get_weights()
  for wa, wb in zip(a, b):
    np.testing.assert_array_equal(wa, wb)
  assert not np.allclose(a[2], c[2])


def test_tag_cross_entropy_sums_over_tags(rng):
  y = (rng.random((4, 5)) < 0.5).astype(np.float32)
  p = rng.uniform(0.05, 0.95, size=(4, 5)).astype(np.float32)
  expected = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(1)
  np.testing.assert_allclose(np.asarray(finetuning.tag_cross_entropy(y, p)), expected,
                             rtol=1e-5)


def test_epoch_dataset_default_is_the_file_order_every_epoch():
  # deepmat: batch mb is examples (mb-1)*128+1 … min(mb*128, N), every epoch.
  x = np.arange(10, dtype=np.float32)[:, None]
  y = np.zeros((10, 1), np.float32)
  batches = [b[0].numpy()[:, 0].tolist() for b in finetuning.epoch_dataset(x, y, 4, 7, 0, 2)]
  assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] * 2
  resumed = [b[0].numpy()[:, 0].tolist() for b in finetuning.epoch_dataset(x, y, 4, 7, 1, 2)]
  assert resumed == batches[3:]


def test_epoch_dataset_is_a_permutation_per_epoch_and_resumable():
  x = np.arange(10, dtype=np.float32)[:, None]
  y = np.zeros((10, 1), np.float32)
  full = [b[0].numpy()[:, 0] for b in finetuning.epoch_dataset(x, y, 4, 7, 0, 3,
                                                               shuffle=True)]
  assert len(full) == 9  # 3 epochs × ceil(10/4)
  for e in range(3):
    epoch = np.concatenate(full[3 * e:3 * e + 3])
    assert sorted(epoch.tolist()) == list(range(10))
  assert not np.array_equal(np.concatenate(full[:3]), np.concatenate(full[3:6]))
  resumed = [b[0].numpy()[:, 0] for b in finetuning.epoch_dataset(x, y, 4, 7, 2, 3,
                                                                  shuffle=True)]
  for a, b in zip(resumed, full[6:]):
    np.testing.assert_array_equal(a, b)


def test_first_layer_visible_resolution():
  assert pretraining.first_layer_visible(PretrainConfig(), "standardize") == "gaussian"
  assert pretraining.first_layer_visible(PretrainConfig(), "clip_max") == "binary"
  assert pretraining.first_layer_visible(PretrainConfig(), "none") == "binary"
  explicit = PretrainConfig(first_layer_visible="binary")
  assert pretraining.first_layer_visible(explicit, "standardize") == "binary"
  relu = PretrainConfig(first_layer_visible="relu")  # the paper's §IV-D.2 alternative
  assert pretraining.first_layer_visible(relu, "none") == "relu"
  schedule = pretraining.rbm_schedule(relu, 0, "relu")
  assert (schedule.learning_rate, schedule.min_learning_rate) == (0.003, 0.001)
  schedule = pretraining.rbm_schedule(PretrainConfig(), 0, "binary")
  assert (schedule.learning_rate, schedule.min_learning_rate, schedule.weight_cost) == (
      0.03, 0.01, 0.001)
  schedule = pretraining.rbm_schedule(PretrainConfig(), 0, "gaussian")
  assert (schedule.learning_rate, schedule.min_learning_rate, schedule.weight_cost) == (
      0.003, 0.001, 0.001)
  schedule = pretraining.rbm_schedule(PretrainConfig(), 2, "relu")
  assert (schedule.learning_rate, schedule.min_learning_rate, schedule.weight_cost) == (
      0.003, 0.001, 0.1)


def test_logreg_head_matches_sklearn_per_tag(rng):
  from sklearn.linear_model import LogisticRegression
  x = rng.normal(size=(120, 5))
  w = rng.normal(size=(5, 3))
  y = ((x @ w + 0.3 * rng.normal(size=(120, 3))) > 0).astype(np.float32)
  y[:, 2] = 0  # single-class tag: prior-only
  fitted = logreg.fit_logreg_head(x[:80], y[:80], x[80:], y[80:], c_values=(0.1,))
  for j in range(2):
    reference = LogisticRegression(C=0.1, max_iter=500).fit(x[:80], y[:80, j])
    np.testing.assert_allclose(fitted["kernel"][:, j], reference.coef_[0], atol=1e-3)
    assert fitted["bias"][j] == pytest.approx(reference.intercept_[0], abs=1e-3)
  np.testing.assert_array_equal(fitted["kernel"][:, 2], 0)
  assert fitted["bias"][2] < -5
  mean, std = np.zeros(5), np.ones(5)
  tagger = models.build_logreg_tagger(fitted["kernel"], fitted["bias"], mean, std)
  logits = x @ fitted["kernel"] + fitted["bias"]
  np.testing.assert_allclose(tagger.predict(x.astype(np.float32), verbose=0),
                             1 / (1 + np.exp(-logits)), atol=1e-5)


def test_validation_callback_keeps_best_weights_and_stops_early(rng):
  x = rng.normal(size=(40, 3)).astype(np.float32)
  y = (x[:, :2] > 0).astype(np.float32)
  model = models.build_song_dnn(2, DNNConfig(num_hidden_layers=1, hidden_units=4),
                                input_dim=3)
  model.compile(optimizer="sgd", loss="binary_crossentropy")
  callback = finetuning.ValidationAUC(x, y, patience=2)
  callback.set_model(model)
  aucs = iter([0.6, 0.8, 0.7, 0.75])
  original = finetuning.metrics.tagging_metrics
  finetuning.metrics.tagging_metrics = lambda *a, **k: {"auc_tag": next(aucs)}
  try:
    snapshots = []
    for epoch in range(4):
      model.get_layer("hidden_1").bias.assign(np.full(4, float(epoch), np.float32))
      snapshots.append(model.get_weights())
      callback.on_epoch_end(epoch, {"loss": 1.0})
  finally:
    finetuning.metrics.tagging_metrics = original
  assert callback.best_epoch == 1 and callback.best_auc == pytest.approx(0.8)
  assert model.stop_training  # epochs 2 and 3 did not improve, patience 2
  callback.restore_best()
  np.testing.assert_array_equal(model.get_layer("hidden_1").bias.numpy(), np.full(4, 1.0))
  assert callback.history["val_auc_tag"] == [0.6, 0.8, 0.7, 0.75]


def test_replica_dropout_is_keras_dropout_on_one_device():
  from deepbof_tf.layers.dropout import ReplicaDropout
  x = np.random.default_rng(0).random((7, 11)).astype(np.float32)
  ours, theirs = ReplicaDropout(0.5, seed=3), keras.layers.Dropout(0.5, seed=3)
  for _ in range(3):  # the seed generators advance alike
    np.testing.assert_array_equal(ours(x, training=True).numpy(),
                                  theirs(x, training=True).numpy())
  np.testing.assert_array_equal(ours(x, training=False).numpy(), x)
  clone = ReplicaDropout.from_config(ours.get_config())
  assert (clone.rate, clone.seed) == (0.5, 3)


def test_non_inverted_dropout_masks_without_rescaling_and_scales_at_inference():
  from deepbof_tf.layers.dropout import ReplicaDropout
  x = np.random.default_rng(0).uniform(1, 2, (64, 50)).astype(np.float32)
  layer = ReplicaDropout(0.5, seed=3, scaling="weights")
  masks = []
  for _ in range(3):
    out = layer(x, training=True).numpy()
    kept = out != 0
    np.testing.assert_array_equal(out[kept], x[kept])  # no 1/(1 - rate)
    masks.append(kept)
  assert not np.array_equal(masks[0], masks[1])  # the generator advances
  assert 0.45 < np.mean(masks) < 0.55
  np.testing.assert_allclose(layer(x, training=False).numpy(), 0.5 * x, rtol=1e-7)
  clone = ReplicaDropout.from_config(layer.get_config())
  assert (clone.rate, clone.seed, clone.scaling) == (0.5, 3, "weights")
  quarter = ReplicaDropout(0.25, seed=3, scaling="weights")
  np.testing.assert_allclose(quarter(x, training=False).numpy(), 0.75 * x, rtol=1e-7)
  assert 0.70 < np.mean(quarter(x, training=True).numpy() != 0) < 0.80
  with pytest.raises(ValueError, match="scaling must be"):
    ReplicaDropout(0.5, scaling="halved")


def test_network_with_non_inverted_dropout_equals_inverted_with_scaled_weights(rng):
  # The same function class: the authors' network (weights W, outputs halved at test)
  # equals an inverted-dropout network whose weights leaving the hidden layers are W/2.
  config = DNNConfig(num_hidden_layers=2, hidden_units=6)
  theirs = models.build_song_dnn(3, config, input_dim=8, seed=4)
  ours = models.build_song_dnn(3, DNNConfig(num_hidden_layers=2, hidden_units=6,
                                            dropout_scaling="inverted"), input_dim=8, seed=4)
  weights = theirs.get_weights()
  scaled = [w / 2 if i in (2, 4) else w for i, w in enumerate(weights)]  # kernels 2, out
  ours.set_weights(scaled)
  x = rng.random((5, 8)).astype(np.float32)
  np.testing.assert_allclose(ours.predict(x, verbose=0), theirs.predict(x, verbose=0),
                             rtol=1e-5)


def test_saved_models_from_before_the_option_keep_inverted_dropout():
  from deepbof_tf.layers.dropout import ReplicaDropout
  config = ReplicaDropout(0.5, seed=1).get_config()
  config.pop("scaling")
  assert ReplicaDropout.from_config(config).scaling == "inverted"
