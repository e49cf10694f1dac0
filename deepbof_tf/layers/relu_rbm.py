"""ReLU RBMs as Keras layers: the pretrained layers of the song-level DNN.

The flavours of the authors' ``train_rbm.m`` plus a Gaussian-visible one:
  * layer 1: **binary visible / ReLU hidden** (the paper) for inputs in [0, 1], or
    **Gaussian visible / ReLU hidden** (Nair & Hinton's original NReLU RBM) for
    standardized inputs;
  * layers 2–3: **ReLU visible / ReLU hidden**, on the ReLU activations below.

``ReLURBM.call`` is the deterministic up-pass ``relu(vW + c)`` (kernel W is
[visible, hidden] as in Keras); ``visible_mean`` the mean-field reconstruction
``σ(hWᵀ + b)`` (binary), ``relu(hWᵀ + b)`` (ReLU) or ``hWᵀ + b`` (Gaussian). The layer
is serializable like any Keras layer (registered as ``deepbof>ReLURBM``). Its weights
are learned by CD-1 in ``deepbof_tf.training.relu_rbm_trainer``.

See docs/model.md#song-level-dnn.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import keras
from keras import ops

VISIBLE_TYPES = ("binary", "relu", "gaussian")


@keras.saving.register_keras_serializable(package="deepbof")
class ReLURBM(keras.layers.Layer):
  """An RBM with ReLU hidden units; ``call`` is the deterministic up-pass ``relu(vW + c)``.

  Args:
    units: number of hidden units (512 in the paper).
    visible: "binary" or "gaussian" (layer 1) or "relu" (layers 2–3) visible units.
    init_stddev: W ~ init_stddev·N(0, 1) (0.01, the code's initMult); biases start at 0.
    seed: seed of the weight initialisation.
    **kwargs: forwarded to ``keras.layers.Layer``.
  """

  def __init__(self, units: int, visible: str = "binary", init_stddev: float = 0.01,
               seed: Optional[int] = None, **kwargs):
    super().__init__(**kwargs)
    if units < 1:
      raise ValueError(f"ReLURBM units must be >= 1, got {units}")
    if visible not in VISIBLE_TYPES:
      raise ValueError(f"ReLURBM visible must be one of {VISIBLE_TYPES}, got {visible!r}")
    self.units = int(units)
    self.visible = visible
    self.init_stddev = float(init_stddev)
    self.seed = seed

  def build(self, input_shape):
    visible_units = int(input_shape[-1])
    self.kernel = self.add_weight(
        name="kernel", shape=(visible_units, self.units),
        initializer=keras.initializers.RandomNormal(stddev=self.init_stddev,
                                                    seed=self.seed))
    self.hidden_bias = self.add_weight(name="hidden_bias", shape=(self.units,),
                                       initializer="zeros")
    self.visible_bias = self.add_weight(name="visible_bias", shape=(visible_units,),
                                        initializer="zeros")
    super().build(input_shape)

  def call(self, inputs):
    return ops.relu(ops.matmul(inputs, self.kernel) + self.hidden_bias)

  def visible_mean(self, hidden):
    """Mean-field reconstruction of the visible units from hidden activations."""
    pre = ops.matmul(hidden, ops.transpose(self.kernel)) + self.visible_bias
    return visible_activation(self.visible, pre, ops)

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.units,)

  def get_config(self) -> Dict[str, Any]:
    config = super().get_config()
    config.update(units=self.units, visible=self.visible, init_stddev=self.init_stddev,
                  seed=self.seed)
    return config


def visible_activation(visible: str, pre, backend):
  """Mean-field visible reconstruction: sigmoid (binary), relu, or identity (Gaussian).

  Args:
    visible: the visible type (``VISIBLE_TYPES``).
    pre: the pre-activation ``hWᵀ + b``.
    backend: a module with ``sigmoid`` and ``relu`` (``keras.ops`` or ``tf.nn``).
  """
  if visible == "binary":
    return backend.sigmoid(pre)
  if visible == "relu":
    return backend.relu(pre)
  return pre
