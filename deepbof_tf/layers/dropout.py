"""Dropout whose masks do not depend on how a batch is split over replicas.

Two conventions (``DNNConfig.dropout_scaling``):

* ``"weights"`` — the authors' deepmat (non-inverted): training multiplies by a 0/1
  mask, P(keep) = 1 − rate, without rescaling; inference multiplies by (1 − rate).
  deepmat halves the weights *leaving* a dropped layer at test time
  (``tagatune_mlp_classify.m``: ``W{l-1}/2``); scaling the layer's output instead is
  the same network, since the next layer is linear in it: (0.5·h)·W = h·(W/2).
* ``"inverted"`` — Keras' ``Dropout``: training divides the kept units by (1 − rate),
  inference is the identity.
"""

from __future__ import annotations

import keras
import tensorflow as tf

SCALINGS = ("inverted", "weights")


@keras.saving.register_keras_serializable(package="deepbof")
class ReplicaDropout(keras.layers.Dropout):
  """``keras.layers.Dropout`` that draws one mask for the global batch under a strategy.

  On one device this is Keras' ``Dropout``, call for call. Under ``MirroredStrategy``
  Keras' layer makes every replica draw the same mask for its own part of the batch;
  here every replica draws the mask of the *whole* batch from the same seed and keeps
  its own rows, so a mirrored run applies exactly the masks a one-device run applies to
  the same batch (the replicas' batch sizes are all-gathered, so an uneven last batch
  is cut at the right rows).

  With ``scaling="weights"`` the masks are 0/1 (kept with probability 1 − rate) and
  inference scales by (1 − rate): the authors' non-inverted dropout (module docstring).

  Args:
    rate: fraction of the inputs set to 0.
    noise_shape: as Keras' (must be None under a multi-replica strategy).
    seed: the layer's seed.
    scaling: "inverted" (Keras; the default of this layer, so models saved before the
      option existed load unchanged) or "weights" (the authors').
    **kwargs: forwarded to ``keras.layers.Dropout``.
  """

  def __init__(self, rate, noise_shape=None, seed=None, scaling: str = "inverted",
               **kwargs):
    super().__init__(rate, noise_shape=noise_shape, seed=seed, **kwargs)
    if scaling not in SCALINGS:
      raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    self.scaling = scaling

  def get_config(self):
    return {**super().get_config(), "scaling": self.scaling}

  def call(self, inputs, training=False):
    if self.scaling == "weights":
      return self._call_non_inverted(inputs, training)
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync if context is not None else 1
    if not training or self.rate <= 0 or replicas == 1:
      return super().call(inputs, training=training)
    if self.noise_shape is not None:
      raise ValueError("ReplicaDropout: noise_shape is not supported across replicas")
    rows = tf.shape(inputs)[:1]
    sizes = context.all_gather(rows, axis=0)  # every replica's batch size, in order
    replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
    offset = tf.reduce_sum(sizes[:replica])
    whole = tf.concat([[tf.reduce_sum(sizes)], tf.shape(inputs)[1:]], axis=0)
    mask = keras.random.dropout(tf.ones(whole, inputs.dtype), self.rate,
                                seed=self.seed_generator)
    return inputs * mask[offset:offset + rows[0]]

  def _call_non_inverted(self, inputs, training):
    if self.rate <= 0:
      return inputs
    if not training:
      return inputs * tf.cast(1.0 - self.rate, inputs.dtype)
    if self.noise_shape is not None:
      raise ValueError("ReplicaDropout(scaling='weights'): noise_shape is not supported")
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync if context is not None else 1
    if replicas == 1:
      return inputs * self.keep_mask(tf.shape(inputs), inputs.dtype)
    rows = tf.shape(inputs)[:1]
    sizes = context.all_gather(rows, axis=0)
    replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
    offset = tf.reduce_sum(sizes[:replica])
    whole = tf.concat([[tf.reduce_sum(sizes)], tf.shape(inputs)[1:]], axis=0)
    return inputs * self.keep_mask(whole, inputs.dtype)[offset:offset + rows[0]]

  def keep_mask(self, shape, dtype):
    """A 0/1 mask of ``shape``, 1 with probability 1 − rate (one seed-generator step
    per call)."""
    uniform = keras.random.uniform(shape, seed=self.seed_generator)
    return tf.cast(uniform >= self.rate, dtype)
