"""Stage ``pretrain``: greedy layer-wise pretraining of the song-level DNN with ReLU RBMs.

:func:`pretrain` reads ``model_dir/bof/train.npz``, applies the input normalization
(``dnn.input_normalization``, none by default), trains RBM 1 (binary-, Gaussian- or
ReLU-visible, ReLU hidden) on it and RBMs 2… (ReLU–ReLU) on the ReLU activations of the
layer below, and writes ``model_dir/pretrain/rbm_{i}.npz``. A layer whose file was
written by the same configuration on the same input is reused, so a killed run resumes
at the first unfinished layer. Under ``--strategy=mirrored`` (or several GPUs) every
minibatch is split over the replicas (``ReLURBMTrainer``, docs/multi-device.md).

See docs/model.md#song-level-dnn.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from deepbof_tf import config as config_lib
from deepbof_tf import model_dir as layout
from deepbof_tf.config import PretrainConfig
from deepbof_tf.data import bof_io
from deepbof_tf.layers.relu_rbm import ReLURBM
from deepbof_tf.layers.standardize import normalize_inputs
from deepbof_tf.training import distribute
from deepbof_tf.training import song_inputs
from deepbof_tf.training.relu_rbm_trainer import ReLURBMSchedule, ReLURBMTrainer


def rbm_schedule(config: PretrainConfig, layer_index: int, visible: str = "binary"
                 ) -> ReLURBMSchedule:
  """The hyperparameters of RBM ``layer_index`` (0-based) with ``visible`` units.

  The learning rates follow the visible type, as in the authors' ``init_rbm.m``
  (which sets 0.003 → 0.001 for every ReLU RBM without binary inputs): binary visible
  units get ``binary_relu_*`` (0.03 → 0.01), Gaussian and ReLU visible units get
  ``relu_relu_*`` (0.003 → 0.001). The weight cost is the layer's entry of
  ``weight_costs``.

  Args:
    config: the pretraining config.
    layer_index: 0-based position in the stack.
    visible: "binary", "gaussian" or "relu".
  """
  if layer_index >= len(config.weight_costs):
    raise ValueError(f"pretrain.weight_costs has {len(config.weight_costs)} entries; "
                     f"layer {layer_index + 1} needs one")
  binary = visible == "binary"
  return ReLURBMSchedule(
      epochs=config.epochs,
      batch_size=config.batch_size,
      learning_rate=(config.binary_relu_learning_rate if binary
                     else config.relu_relu_learning_rate),
      min_learning_rate=(config.binary_relu_min_learning_rate if binary
                         else config.relu_relu_min_learning_rate),
      learning_rate_decay=config.learning_rate_decay,
      initial_momentum=config.initial_momentum,
      final_momentum=config.final_momentum,
      momentum_switch_fraction=config.momentum_switch_fraction,
      weight_cost=float(config.weight_costs[layer_index]),
      shuffle=config.shuffle)


def first_layer_visible(config: PretrainConfig, input_normalization: str) -> str:
  """The visible type of RBM 1: ``config.first_layer_visible``, "auto" resolved.

  "auto" is "gaussian" for standardized inputs and "binary" (the paper) for inputs in
  [0, 1] ("none" or "clip_max" normalization). The authors' binary-visible RBM feeds the
  real-valued data straight into its positive statistics and reconstructs through a
  sigmoid; on standardized data the reconstructions cannot follow the negative
  inputs and the weights grow without bound, so it is only used on [0, 1] data.

  Args:
    config: the pretraining config.
    input_normalization: ``DNNConfig.input_normalization``.
  """
  if config.first_layer_visible != "auto":
    return config.first_layer_visible
  return "gaussian" if input_normalization == "standardize" else "binary"


def pretrain_layer(data: np.ndarray, layer_index: int, units: int,
                   config: PretrainConfig, log_every: int = 10,
                   first_visible: str = "binary",
                   strategy: Optional[tf.distribute.Strategy] = None
                   ) -> Tuple[ReLURBM, Dict[str, Any]]:
  """Trains RBM ``layer_index`` of the stack on ``data`` (the input of that layer).

  Args:
    data: [examples, visible]: the normalized bag-of-features for layer 0, the
      ReLU activations of the layer below otherwise.
    layer_index: 0-based position; 0 has ``first_visible`` units, the others ReLU.
    units: hidden units (512).
    config: the pretraining config.
    log_every: log every this many epochs (0: never).
    first_visible: visible type of layer 0 (see ``first_layer_visible``).
    strategy: the ``tf.distribute`` strategy (None: the current one); under several
      replicas every minibatch is split over them (``ReLURBMTrainer``).

  Returns:
    (the trained layer, {"reconstruction_error": [...per epoch]}).
  """
  seed = int(config.seed)
  visible = first_visible if layer_index == 0 else "relu"
  rbm = ReLURBM(units, visible=visible,
                init_stddev=config.init_stddev, seed=seed * 1000 + layer_index,
                name=f"rbm_{layer_index + 1}")
  trainer = ReLURBMTrainer(rbm, rbm_schedule(config, layer_index, visible), seed=seed,
                           layer_index=layer_index, strategy=strategy)
  history = trainer.fit(data, log_every=log_every)
  return rbm, history


def up_pass(kernel: np.ndarray, hidden_bias: np.ndarray, data: np.ndarray,
            batch_size: int = 4096) -> np.ndarray:
  """``relu(data·W + c)``: the deterministic input of the next RBM (as the authors' code).

  Args:
    kernel: [visible, hidden].
    hidden_bias: [hidden].
    data: [examples, visible].
    batch_size: rows per matmul (bounds memory).
  """
  out = [np.maximum(data[i:i + batch_size] @ kernel + hidden_bias, 0)
         for i in range(0, data.shape[0], batch_size)]
  return np.concatenate(out, axis=0).astype(np.float32)


def layer_fingerprint(config: config_lib.TrainConfig, layer_index: int,
                      inputs: np.ndarray) -> str:
  """The fingerprint of RBM ``layer_index``'s configuration and input (``rbm_{i}.npz``).

  Args:
    config: the operative configuration.
    layer_index: 0-based position in the stack.
    inputs: the layer's input (the normalized bag-of-features for layer 0).
  """
  return layout.fingerprint({"pretrain": config_lib.to_dict(config.pretrain),
                            "units": config.dnn.hidden_units,
                            "normalization": config.dnn.input_normalization,
                            "layer": layer_index}, inputs)


def pretrain(data_dir: str, model_dir: str, config: config_lib.TrainConfig,
             strategy: str = "auto") -> Dict[str, Any]:
  """Pretrains ``config.dnn.num_hidden_layers`` RBMs; returns a summary.

  Args:
    data_dir: the preprocessed dataset (unused here; kept for the stage signature).
    model_dir: the model directory (reads ``bof/train.npz``).
    config: the operative configuration.
    strategy: "auto", "default" or "mirrored" (``distribute.distribution_strategy``);
      an execution choice, not part of the layers' fingerprints.
  """
  del data_dir
  if config.dnn.head != "dnn" or config.dnn.init != "pretrained":
    reason = f"head={config.dnn.head}, init={config.dnn.init}"
    logging.info("pretrain: nothing to do (%s)", reason)
    return {"skipped": reason}
  _, x_train, _ = song_inputs.load_bof(model_dir, "train")
  mean, std = song_inputs.standardization(model_dir, x_train,
                                          config.dnn.input_normalization)
  inputs = normalize_inputs(x_train, config.dnn.input_normalization, mean, std)
  first_visible = first_layer_visible(config.pretrain, config.dnn.input_normalization)
  summary: Dict[str, Any] = {"layers": []}
  distribution = None
  for i in range(config.dnn.num_hidden_layers):
    path = layout.rbm_path(model_dir, i)
    fingerprint = layer_fingerprint(config, i, inputs)
    layer = None
    if tf.io.gfile.exists(path):
      stored = bof_io.read_npz(path)
      if str(stored["fingerprint"]) == fingerprint:
        layer = stored
        logging.info("pretrain: reusing %s", path)
    if layer is None:
      logging.info("pretrain: RBM %d (%s visible, %d → %d units) on %d examples", i + 1,
                   first_visible if i == 0 else "ReLU", inputs.shape[1],
                   config.dnn.hidden_units, inputs.shape[0])
      if distribution is None:
        distribution = distribute.distribution_strategy(strategy)
      rbm, history = pretrain_layer(inputs, i, config.dnn.hidden_units, config.pretrain,
                                    first_visible=first_visible, strategy=distribution)
      layer = {"kernel": rbm.kernel.numpy(), "hidden_bias": rbm.hidden_bias.numpy(),
               "visible_bias": rbm.visible_bias.numpy(),
               "reconstruction_error": np.asarray(history["reconstruction_error"],
                                                  np.float32),
               "fingerprint": np.asarray(fingerprint)}
      bof_io.write_npz(path, **layer)
    errors = np.asarray(layer["reconstruction_error"])
    summary["layers"].append({"path": path, "final_reconstruction_error":
                              float(errors[-1]) if errors.size else None})
    inputs = up_pass(layer["kernel"], layer["hidden_bias"], inputs)
  if distribution is not None:
    summary["replicas"] = distribute.num_replicas(distribution)
  return summary
