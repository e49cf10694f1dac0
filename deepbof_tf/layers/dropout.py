"""Dropout whose masks do not depend on how a batch is split over replicas."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="deepbof")
class ReplicaDropout(keras.layers.Dropout):
  """``keras.layers.Dropout`` that draws one mask for the global batch under a strategy.

  On one device this is Keras' ``Dropout``, call for call. Under ``MirroredStrategy``
  Keras' layer makes every replica draw the same mask for its own part of the batch;
  here every replica draws the mask of the *whole* batch from the same seed and keeps
  its own rows, so a mirrored run applies exactly the masks a one-device run applies to
  the same batch (the replicas' batch sizes are all-gathered, so an uneven last batch
  is cut at the right rows).

  Args:
    rate: fraction of the inputs set to 0.
    noise_shape: as Keras' (must be None under a multi-replica strategy).
    seed: the layer's seed.
    **kwargs: forwarded to ``keras.layers.Dropout``.
  """

  def call(self, inputs, training=False):
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
