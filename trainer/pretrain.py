"""Stage ``pretrain``: greedy layer-wise ReLU-RBM pretraining of the song-level DNN.

Reads ``model_dir/bof/train.npz``, applies the input normalization
(``dnn.input_normalization``, none by default), trains RBM 1 (binary-, Gaussian- or
ReLU-visible, ReLU hidden) on it and RBMs 2… (ReLU–ReLU) on the ReLU activations of the
layer below, and writes ``model_dir/pretrain/rbm_{i}.npz``. A layer whose file was
written by the same configuration on the same input is reused, so a killed run resumes
at the first unfinished layer. Under ``--strategy=mirrored`` (or several GPUs) every
minibatch is split over the replicas (``ReLURBMTrainer``, docs/multi-device.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Dict

import numpy as np
import tensorflow as tf

from deepbof_tf import config as config_lib
from deepbof_tf.training import model_dir as layout
from deepbof_tf.layers.standardize import normalize_inputs
from deepbof_tf.training import distribute
from deepbof_tf.training import pretraining


def _layer_fingerprint(config: config_lib.TrainConfig, layer_index: int,
                       inputs: np.ndarray) -> str:
  digest = hashlib.sha256()
  digest.update(json.dumps({"pretrain": config_lib.to_dict(config.pretrain),
                            "units": config.dnn.hidden_units,
                            "normalization": config.dnn.input_normalization,
                            "layer": layer_index}, sort_keys=True).encode())
  digest.update(np.ascontiguousarray(inputs, np.float32).tobytes())
  return digest.hexdigest()


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
  _, x_train, _ = layout.load_bof(model_dir, "train")
  mean, std = layout.standardization(model_dir, x_train, config.dnn.input_normalization)
  inputs = normalize_inputs(x_train, config.dnn.input_normalization, mean, std)
  first_visible = pretraining.first_layer_visible(config.pretrain,
                                                  config.dnn.input_normalization)
  summary: Dict[str, Any] = {"layers": []}
  distribution = None
  for i in range(config.dnn.num_hidden_layers):
    path = layout.rbm_path(model_dir, i)
    fingerprint = _layer_fingerprint(config, i, inputs)
    layer = None
    if tf.io.gfile.exists(path):
      stored = layout.read_npz(path)
      if str(stored["fingerprint"]) == fingerprint:
        layer = stored
        logging.info("pretrain: reusing %s", path)
    if layer is None:
      logging.info("pretrain: RBM %d (%s visible, %d → %d units) on %d examples", i + 1,
                   first_visible if i == 0 else "ReLU", inputs.shape[1],
                   config.dnn.hidden_units, inputs.shape[0])
      if distribution is None:
        distribution = distribute.distribution_strategy(strategy)
      rbm, history = pretraining.pretrain_layer(inputs, i, config.dnn.hidden_units,
                                                config.pretrain, first_visible=first_visible,
                                                strategy=distribution)
      layer = {"kernel": rbm.kernel.numpy(), "hidden_bias": rbm.hidden_bias.numpy(),
               "visible_bias": rbm.visible_bias.numpy(),
               "reconstruction_error": np.asarray(history["reconstruction_error"],
                                                  np.float32),
               "fingerprint": np.asarray(fingerprint)}
      layout.write_npz(path, **layer)
    errors = np.asarray(layer["reconstruction_error"])
    summary["layers"].append({"path": path, "final_reconstruction_error":
                              float(errors[-1]) if errors.size else None})
    inputs = pretraining.up_pass(layer["kernel"], layer["hidden_bias"], inputs)
  if distribution is not None:
    summary["replicas"] = distribute.num_replicas(distribution)
  return summary
