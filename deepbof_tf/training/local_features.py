"""Stages ``learn-local-features`` and ``encode``: the local features and the bag-of-features.

``learn_local_features`` reads the sampled blocks (``data_dir/blocks``), fits the PCA
whitening in one streaming pass, trains the sparse RBM by CD-1 and writes
``model_dir/local/`` (the layout is ``deepbof_tf.model_dir``): the fitted PCA (reused
by a resumed run), per-epoch training state (``tf.train.Checkpoint``), per-epoch
metrics, TensorBoard scalars, the encoder's parameters (written last) and the plots.

``encode`` writes the bag-of-features of every clip of every split to
``model_dir/bof/{split}.npz`` (``deepbof_tf.data.bof_io``).

Both stages take the ``tf.distribute`` strategy of ``deepbof-train --strategy``
(docs/multi-device.md). Both stages are resumable and fingerprinted: a finished step
whose configuration and inputs are unchanged is reused; a killed RBM run continues from
its last epoch checkpoint with the same final weights; a changed configuration
recomputes.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from typing import Any, Dict, List

from absl import logging
import numpy as np
import tensorflow as tf

from deepbof_tf import config as config_lib
from deepbof_tf import model_dir as layout
from deepbof_tf import models
from deepbof_tf import plots
from deepbof_tf import seeds
from deepbof_tf.data import bof_io
from deepbof_tf.data import readers
from deepbof_tf.data import schema
from deepbof_tf.io_utils import write_json
from deepbof_tf.layers.pca import PCAWhitening
from deepbof_tf.training import distribute
from deepbof_tf.training import sparse_rbm_trainer as sparse_rbm_lib


def _files_signature(files: List[str]) -> List[List[Any]]:
  return [[posixpath.basename(f), tf.io.gfile.stat(f).length] for f in files]


def _read_json(path: str) -> Dict[str, Any]:
  with tf.io.gfile.GFile(path, "r") as f:
    return json.load(f)


def _whitened_blocks(data_dir: str, pca: PCAWhitening, batch_size: int) -> np.ndarray:
  blocks = readers.block_dataset(data_dir).map(lambda e: e[schema.BLOCK])
  whiten = tf.function(pca.__call__)
  chunks = [whiten(b).numpy() for b in blocks.batch(batch_size)]
  return np.concatenate(chunks, axis=0)


def _fit_pca(data_dir: str, path: str, config: config_lib.PCAConfig,
             fingerprint: str) -> PCAWhitening:
  pca = PCAWhitening(config.retained_variance, config.epsilon, name="pca_whitening",
                     dtype="float32")
  if tf.io.gfile.exists(path):
    stored = bof_io.read_npz(path)
    if str(stored["fingerprint"]) == fingerprint:
      logging.info("learn-local-features: reusing the PCA of %s", path)
      pca.set_statistics(stored["mean"], stored["eigenvalues"], stored["eigenvectors"])
      pca.num_adapted = int(stored["num_blocks"])
      return pca
  start = time.perf_counter()
  pca.adapt(readers.block_dataset(data_dir).map(lambda e: e[schema.BLOCK])
            .batch(config.batch_size))
  logging.info("learn-local-features: PCA of %d blocks keeps %d of %d dimensions "
               "(%.1f s)", pca.num_adapted, pca.output_dim, pca.input_dim,
               time.perf_counter() - start)
  bof_io.write_npz(path, mean=pca.mean.numpy(), eigenvalues=pca.eigenvalues.numpy(),
            eigenvectors=pca.eigenvectors.numpy(), num_blocks=np.int64(pca.num_adapted),
            fingerprint=np.asarray(fingerprint))
  return pca


def learn_local_features(data_dir: str, model_dir: str,
                         config: config_lib.TrainConfig,
                         rbm_backend: str = "auto", strategy: str = "auto"
                         ) -> Dict[str, Any]:
  """PCA whitening + sparse RBM on the sampled blocks; returns a summary.

  Args:
    data_dir: output directory of ``deepbof-preprocess`` (blocks + metadata.json).
    model_dir: the model directory; writes ``model_dir/local/``.
    config: the operative configuration (``config.local``).
    rbm_backend: how CD-1 runs (``SparseRBMTrainer`` backends: auto, native,
      tensorflow). An execution choice like the device, so not part of the config or
      of the fingerprints: a checkpoint of one backend resumes on the other.
    strategy: "auto", "default" or "mirrored" (``distribute.distribution_strategy``):
      the TensorFlow backend splits every minibatch over the replicas; the native
      kernel is CPU-only and runs on one device (``auto`` picks the TensorFlow backend
      under several replicas). Also an execution choice outside the fingerprints.
  """
  local = config.local
  metadata = schema.read_metadata(data_dir)
  block_frames = int(metadata["block_frames"])
  n_mels = int(metadata.get("n_mels", 128))
  directory = layout.local_dir(model_dir)
  tf.io.gfile.makedirs(directory)
  block_files = _files_signature(readers.block_files(data_dir))
  pca_fingerprint = layout.fingerprint({"pca": config_lib.to_dict(local.pca),
                                        "blocks": block_files})
  rbm_fingerprint = layout.fingerprint({"pca": pca_fingerprint,
                                        "rbm": config_lib.to_dict(local.rbm)})
  info_path = posixpath.join(directory, layout.LOCAL_FEATURES_INFO)
  if tf.io.gfile.exists(info_path):
    info = _read_json(info_path)["info"]
    if info.get("fingerprint") == rbm_fingerprint:
      logging.info("learn-local-features: %s is up to date; nothing to do", info_path)
      return dict(info["summary"], skipped=True)

  pca = _fit_pca(data_dir, posixpath.join(directory, layout.PCA_FILE), local.pca,
                 pca_fingerprint)
  blocks = _whitened_blocks(data_dir, pca, local.pca.batch_size)
  if local.rbm.shuffle:
    order = np.random.default_rng(
        seeds.stable_seed("blocks", local.rbm.seed)).permutation(len(blocks))
    blocks = blocks[order]

  checkpoint_dir = posixpath.join(directory, layout.CHECKPOINT_DIR)
  marker = posixpath.join(checkpoint_dir, layout.FINGERPRINT_FILE)
  if tf.io.gfile.exists(marker) and _read_json(marker).get("fingerprint") != rbm_fingerprint:
    logging.info("learn-local-features: configuration or blocks changed; discarding %s",
                 checkpoint_dir)
    tf.io.gfile.rmtree(checkpoint_dir)
  tf.io.gfile.makedirs(checkpoint_dir)
  write_json(marker, {"fingerprint": rbm_fingerprint})

  logging.info("learn-local-features: sparse RBM %d → %d units on %d blocks, %d epochs",
               pca.output_dim, local.rbm.num_hidden, len(blocks), local.rbm.epochs)
  trainer = sparse_rbm_lib.SparseRBMTrainer(
      pca.output_dim, local.rbm, backend=rbm_backend,
      strategy=distribute.distribution_strategy(strategy))
  history = trainer.fit(blocks, checkpoint_dir=checkpoint_dir,
                        tensorboard_dir=posixpath.join(directory, layout.TENSORBOARD_DIR),
                        history_dir=directory)
  rbm = trainer.layer()

  sample = blocks[:local.histogram_blocks]
  mean_activation = np.asarray(tf.reduce_mean(rbm(sample), axis=0))
  target = local.rbm.sparsity_target
  plots.plot_activation_histogram(mean_activation,
                                  posixpath.join(directory, layout.ACTIVATION_HISTOGRAM_PLOT),
                                  target=target)
  if local.num_plot_filters:
    filters = sparse_rbm_lib.dewhitened_filters(pca, rbm.kernel.numpy(),
                                                local.num_plot_filters)
    plots.plot_filters(filters, posixpath.join(directory, layout.FILTERS_PLOT),
                       block_frames=block_frames, n_mels=n_mels,
                       title=f"Sparse RBM filters (dewhitened), largest {len(filters)} "
                             "by weight norm")
  if history:
    plots.plot_training_curves(history,
                               posixpath.join(directory, layout.TRAINING_CURVES_PLOT),
                               target=target)
  summary = {
      "num_blocks": int(len(blocks)),
      "pca_dim": int(pca.output_dim),
      "block_dim": int(pca.input_dim),
      "epochs": len(history),
      "first_reconstruction_error": history[0]["reconstruction_error"] if history else None,
      "final_reconstruction_error": history[-1]["reconstruction_error"] if history else None,
      "final_mean_activation": history[-1]["mean_activation"] if history else None,
      "sample_mean_activation": float(mean_activation.mean()),
      "sparsity_target": target,
      "rbm_backend": trainer.backend,
      "replicas": trainer.replicas,
      "local_dir": directory,
  }
  models.save_local_features(
      model_dir, pca, rbm, block_frames=block_frames, n_mels=n_mels,
      pool_frames=local.pooling.pool_frames,
      info={"fingerprint": rbm_fingerprint, "summary": summary,
            "config": config_lib.to_dict(local)})
  logging.info("learn-local-features: done: %s", json.dumps(summary))
  return summary


def encode(data_dir: str, model_dir: str, config: config_lib.TrainConfig,
           strategy: str = "auto") -> Dict[str, Any]:
  """Writes ``model_dir/bof/{split}.npz`` for every split with clips; returns a summary.

  Clips shorter than one block (``n_frames < block_frames``) have no bag-of-features;
  they are skipped, logged and counted in the summary.

  Args:
    data_dir: output directory of ``deepbof-preprocess`` (clips + metadata.json).
    model_dir: the model directory (reads ``local/``, writes ``bof/``).
    config: the operative configuration (``config.local``).
    strategy: "auto", "default" or "mirrored" (``distribute.distribution_strategy``):
      under several replicas each batch of clips is split over them
      (``distribute.ReplicaMap``); every clip's bag-of-features is computed alone, so
      the output is the one-device output up to float rounding.
  """
  local = config.local
  pool_frames = local.pooling.pool_frames
  distribution = distribute.distribution_strategy(strategy)
  with distribution.scope():
    encoder = models.load_bof_encoder(model_dir, pool_frames=pool_frames)
  metadata = schema.read_metadata(data_dir)
  n_mels = int(metadata.get("n_mels", 128))
  block_frames = encoder.block_frames
  with tf.io.gfile.GFile(posixpath.join(layout.local_dir(model_dir),
                                        layout.LOCAL_FEATURES_FILE), "rb") as f:
    parameters_digest = hashlib.sha256(f.read()).hexdigest()
  encode_fn = tf.function(
      lambda log_mel, n_frames: encoder(log_mel, n_frames),
      input_signature=[tf.TensorSpec([None, None, n_mels], tf.float32),
                       tf.TensorSpec([None], tf.int32)])
  if distribute.num_replicas(distribution) > 1:
    # ReplicaMap wraps the replicas' run in its own tf.function.
    encode_fn = distribute.ReplicaMap(
        distribution, lambda log_mel, n_frames: encoder(log_mel, n_frames))
  summary: Dict[str, Any] = {"splits": {},
                             "replicas": distribute.num_replicas(distribution)}
  for split in schema.SPLITS:
    if not (tf.io.gfile.glob(schema.clip_pattern(data_dir, split)) or tf.io.gfile.glob(
        schema.clip_pattern(data_dir, split, schema.UNCOMPRESSED_SUFFIX))):
      logging.info("encode: no clips for split %r; skipped", split)
      continue
    path = layout.bof_path(model_dir, split)
    sidecar = path[:-len(".npz")] + ".json"
    fingerprint = layout.fingerprint({
        "parameters": parameters_digest, "pool_frames": pool_frames,
        "clips": _files_signature(readers.clip_files(data_dir, split))})
    if (tf.io.gfile.exists(path) and tf.io.gfile.exists(sidecar)
        and _read_json(sidecar).get("fingerprint") == fingerprint):
      logging.info("encode: %s is up to date; skipped", path)
      summary["splits"][split] = dict(_read_json(sidecar), skipped=True)
      continue
    start = time.perf_counter()
    clips = readers.clip_dataset(data_dir, split)
    short: List[str] = []

    def long_enough(example):
      return example[schema.N_FRAMES] >= block_frames

    for example in clips.filter(lambda e: tf.logical_not(long_enough(e))):
      short.append(example[schema.CLIP_ID].numpy().decode("utf-8"))
      logging.warning("encode: clip %s of split %s has %d frames < block_frames=%d; "
                      "skipped", short[-1], split, int(example[schema.N_FRAMES]),
                      block_frames)
    batches = (clips.filter(long_enough)
               .map(lambda e: {k: e[k] for k in (schema.CLIP_ID, schema.LOG_MEL,
                                                 schema.N_FRAMES, schema.LABELS)})
               .padded_batch(local.encode_batch_size)
               .prefetch(2))
    clip_ids, bags, labels = [], [], []
    for batch in batches:
      bags.append(np.asarray(encode_fn(batch[schema.LOG_MEL], batch[schema.N_FRAMES])))
      clip_ids.extend(c.decode("utf-8") for c in batch[schema.CLIP_ID].numpy())
      labels.append(batch[schema.LABELS].numpy())
    if not clip_ids:
      raise ValueError(f"{data_dir}: split {split!r} has no clip with at least "
                       f"{block_frames} frames to encode")
    bof_io.write_bof(path, clip_ids, np.concatenate(bags), np.concatenate(labels))
    record = {"fingerprint": fingerprint, "num_clips": len(clip_ids),
              "skipped_short_clips": short, "pool_frames": pool_frames,
              "seconds": round(time.perf_counter() - start, 2)}
    write_json(sidecar, record)
    logging.info("encode: %s: %d clips (%d too short) in %.1f s", path, len(clip_ids),
                 len(short), record["seconds"])
    summary["splits"][split] = record
  return summary

