"""Model builders: the local-feature (bag-of-features) encoder and the song-level DNN.

Two sections, one per stage of the model (docs/model.md): the local features and their
bag-of-features encoder, and the song-level DNN.
"""

from __future__ import annotations

import io
import json
import posixpath
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from deepbof_tf.config import DEFAULT_BLOCK_FRAMES, DEFAULT_POOL_FRAMES, DNNConfig
from deepbof_tf.layers.bag_of_features import BagOfFeaturesEncoder
from deepbof_tf.layers.dropout import ReplicaDropout
from deepbof_tf.layers.pca import PCAWhitening
from deepbof_tf.layers.sparse_rbm import SparseRBM
from deepbof_tf.layers.standardize import ClipMaxNormalization
from deepbof_tf.layers.standardize import Standardization
from deepbof_tf.io_utils import write_atomic
from deepbof_tf.io_utils import write_json
from deepbof_tf.model_dir import LOCAL_FEATURES_FILE
from deepbof_tf.model_dir import LOCAL_FEATURES_INFO
from deepbof_tf.model_dir import TAGGER_FILE
from deepbof_tf.model_dir import TAGS_FILE
from deepbof_tf.model_dir import local_dir

# --- Local feature encoder -------------------------------------------------------------
# The encoder maps log_mel [B, F, n_mels] (+ n_frames [B]) to bag_of_features [B, H];
# model_dir/local/ holds its parameters as plain NumPy + JSON (written by the
# learn-local-features stage); the file names are ``deepbof_tf.model_dir``'s.


def build_bof_encoder(pca, rbm, pool_frames: int = DEFAULT_POOL_FRAMES,
                      block_frames: int = DEFAULT_BLOCK_FRAMES,
                      name: str = "bof_encoder"):
  """The bag-of-features encoder from a fitted PCA and sparse RBM.

  The returned layer maps ``log_mel [B, F, n_mels]`` and optional ``n_frames [B]``
  (padded batches) to ``bag_of_features [B, num_hidden]``; ``pooled_hidden`` gives the
  per-window max-pooled vectors for chunked/streaming encoding (see
  ``deepbof_tf.layers.bag_of_features``). Core TF ops only; works in a
  ``tf.function`` with a ``[None, None, n_mels]`` input.

  Args:
    pca: an adapted ``PCAWhitening``.
    rbm: a trained ``SparseRBM``.
    pool_frames: max-pooling window in block positions (the configuration's default,
      86 ≈ 2 s).
    block_frames: frames per spectral block (8).
    name: layer name.
  """
  return BagOfFeaturesEncoder(pca, rbm, pool_frames=pool_frames,
                              block_frames=block_frames, name=name, dtype="float32")


def save_local_features(model_dir: str, pca, rbm, *, block_frames: int, n_mels: int,
                        pool_frames: int, info: Optional[Dict[str, Any]] = None
                        ) -> str:
  """Writes the encoder's parameters to ``model_dir/local/local_features.{npz,json}``.

  The ``.npz`` holds ``pca_mean``, ``pca_eigenvalues``, ``pca_eigenvectors`` (the
  retained components as columns), ``kernel`` [k, H], ``hidden_bias``,
  ``visible_bias``; the ``.json`` the shapes and settings (plus ``info``). The JSON
  is written last, so its presence means the stage finished.

  Args:
    model_dir: the model directory.
    pca: the adapted ``PCAWhitening``.
    rbm: the trained ``SparseRBM``.
    block_frames: frames per block.
    n_mels: mel bands per frame.
    pool_frames: default pooling window of the encoder.
    info: extra JSON-serialisable facts (training summary, config).

  Returns:
    The path of the JSON file.
  """
  directory = local_dir(model_dir)
  tf.io.gfile.makedirs(directory)
  arrays = dict(pca_mean=pca.mean.numpy(), pca_eigenvalues=pca.eigenvalues.numpy(),
                pca_eigenvectors=pca.eigenvectors.numpy(), kernel=rbm.kernel.numpy(),
                hidden_bias=rbm.hidden_bias.numpy(),
                visible_bias=rbm.visible_bias.numpy())
  buffer = io.BytesIO()
  np.savez(buffer, **{k: np.asarray(v, np.float32) for k, v in arrays.items()})
  meta = dict(block_frames=int(block_frames), n_mels=int(n_mels),
              pool_frames=int(pool_frames), retained_variance=pca.retained_variance,
              epsilon=pca.epsilon, pca_dim=int(pca.output_dim),
              num_hidden=int(rbm.num_hidden), info=info or {})
  write_atomic(posixpath.join(directory, LOCAL_FEATURES_FILE), buffer.getvalue())
  return write_json(posixpath.join(directory, LOCAL_FEATURES_INFO), meta)


def load_local_features(model_dir: str):
  """``(pca, rbm, meta)`` rebuilt from ``model_dir/local/`` (see ``save_local_features``).

  Args:
    model_dir: the model directory.
  """
  directory = local_dir(model_dir)
  info_path = posixpath.join(directory, LOCAL_FEATURES_INFO)
  if not tf.io.gfile.exists(info_path):
    raise FileNotFoundError(f"{info_path}: no learned local features; run deepbof-train "
                            "--stages=learn-local-features first")
  with tf.io.gfile.GFile(info_path, "r") as f:
    meta = json.load(f)
  with tf.io.gfile.GFile(posixpath.join(directory, LOCAL_FEATURES_FILE), "rb") as f:
    with np.load(io.BytesIO(f.read()), allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  # float32 regardless of a global mixed-precision policy: whitening needs the precision.
  pca = PCAWhitening(retained_variance=meta["retained_variance"], epsilon=meta["epsilon"],
                     name="pca_whitening", dtype="float32")
  pca.set_statistics(arrays["pca_mean"], arrays["pca_eigenvalues"],
                     arrays["pca_eigenvectors"])
  rbm = SparseRBM(num_hidden=meta["num_hidden"], name="sparse_rbm", dtype="float32")
  rbm.set_weights_from(arrays["kernel"], arrays["hidden_bias"], arrays["visible_bias"])
  return pca, rbm, meta


def load_bof_encoder(model_dir: str, pool_frames: Optional[int] = None):
  """The bag-of-features encoder of a trained ``model_dir`` (``build_bof_encoder``).

  Args:
    model_dir: the model directory (reads ``local/local_features.{npz,json}``).
    pool_frames: pooling window; None uses the one stored at training time.
  """
  pca, rbm, meta = load_local_features(model_dir)
  encoder = build_bof_encoder(pca, rbm, pool_frames=pool_frames or meta["pool_frames"],
                              block_frames=meta["block_frames"])
  encoder.build((None, None, meta["n_mels"]))
  return encoder


# --- Song-level DNN --------------------------------------------------------------------
# The tagger maps the raw bag-of-features [B, 1024] to per-tag probabilities [B, n_tags];
# the input normalization, if any (none by default), is its first layer, so exports need
# nothing else.
# Imports of this section live here so the two sections stay independent.


BAG_OF_FEATURES = "bag_of_features"
PROBABILITIES = "probabilities"


def hidden_layer_name(index: int) -> str:
  """Name of the 0-based ``index``-th hidden Dense layer of the song-level DNN."""
  return f"hidden_{index + 1}"


def build_song_dnn(num_tags: int, config=None, input_dim: int = 1024,
                   mean: Optional[np.ndarray] = None, std: Optional[np.ndarray] = None,
                   seed: int = 0):
  """The song-level DNN (docs/model.md#song-level-dnn) as a Keras functional model.

  ``bag_of_features`` → [the input normalization: Standardization for "standardize",
  ClipMaxNormalization for "clip_max", nothing for "none"] →
  [Dropout(input_dropout)] →
  num_hidden_layers × (Dense(hidden_units, ReLU) → Dropout(dropout), non-inverted
  by default: ``config.dropout_scaling``) →
  Dense(num_tags, sigmoid) named ``probabilities``. Weights are Glorot-uniform and
  biases zero (Keras defaults) with explicit seeds; ``initialize_from_rbms`` replaces
  them with pretrained ones. Under a mixed-float16 policy the standardization and the
  output layer stay float32.

  Args:
    num_tags: output units, one per tag.
    config: a ``DNNConfig`` (defaults: 3 × 512, dropout 0.5, raw inputs).
    input_dim: bag-of-features dimension (1024).
    mean: standardization offset (zeros if None); used by "standardize" only.
    std: normalization scale (ones if None).
    seed: seed of the initialisers and dropout masks.
  """
  config = config or DNNConfig()
  if num_tags < 1:
    raise ValueError(f"build_song_dnn needs at least one tag, got num_tags={num_tags}")
  inputs = keras.Input(shape=(input_dim,), name=BAG_OF_FEATURES)
  x = inputs
  if config.input_normalization == "standardize":
    x = Standardization(mean=mean, std=std, dtype="float32", name="standardization")(x)
  elif config.input_normalization == "clip_max":
    x = ClipMaxNormalization(dtype="float32", name="clip_max")(x)
  if config.input_dropout > 0:
    x = ReplicaDropout(config.input_dropout, seed=seed * 1000 + 999,
                       scaling=config.dropout_scaling, name="input_dropout")(x)
  for i in range(config.num_hidden_layers):
    x = keras.layers.Dense(
        config.hidden_units, activation="relu", name=hidden_layer_name(i),
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed * 1000 + 2 * i))(x)
    x = ReplicaDropout(config.dropout, seed=seed * 1000 + 2 * i + 1,
                       scaling=config.dropout_scaling, name=f"dropout_{i + 1}")(x)
  outputs = keras.layers.Dense(
      num_tags, activation="sigmoid", dtype="float32", name=PROBABILITIES,
      kernel_initializer=keras.initializers.GlorotUniform(seed=seed * 1000 + 500))(x)
  return keras.Model(inputs, outputs, name="song_dnn")


def initialize_from_rbms(model, rbms: Sequence[Mapping[str, np.ndarray]],
                         biases: str = "next_visible") -> None:
  """Copies pretrained RBM weights into the hidden layers of a song-level DNN.

  Hidden layer i gets RBM i's kernel. Its bias depends on ``biases``:

  * "next_visible" — the authors' ``tagatune_dnn.m`` (``M.biases{i} =
    rbmModel.visbiases`` with deepmat's layer 1 the input): hidden layer i gets the
    *visible* bias of RBM i+1, the top hidden layer keeps 0, and the RBMs' hidden
    biases are not used. This is what the paper's results were obtained with.
  * "hidden" — each hidden layer gets its own RBM's hidden bias (the DBN textbook).

  The output layer keeps its random initialisation either way.

  Args:
    model: a model from ``build_song_dnn``.
    rbms: one mapping per hidden layer, bottom first, with ``kernel`` [in, units],
      ``hidden_bias`` [units] and ``visible_bias`` [in].
    biases: "next_visible" (default) or "hidden".
  """
  if biases not in ("next_visible", "hidden"):
    raise ValueError(f"biases must be 'next_visible' or 'hidden', got {biases!r}")
  for i, rbm in enumerate(rbms):
    layer = model.get_layer(hidden_layer_name(i))
    expected = tuple(layer.kernel.shape)
    kernel = np.asarray(rbm["kernel"], np.float32)
    if biases == "hidden":
      bias = np.asarray(rbm["hidden_bias"], np.float32)
      source = f"RBM {i + 1}'s hidden bias"
    elif i + 1 < len(rbms):
      bias = np.asarray(rbms[i + 1]["visible_bias"], np.float32)
      source = f"RBM {i + 2}'s visible bias"
    else:
      bias = np.zeros(expected[1:], np.float32)
      source = "zeros"
    if kernel.shape != expected or bias.shape != expected[1:]:
      raise ValueError(f"RBM {i + 1} has kernel {kernel.shape} and {source} "
                       f"{bias.shape}; {layer.name} needs {expected}")
    layer.kernel.assign(kernel)
    layer.bias.assign(bias)


def build_logreg_tagger(kernel: np.ndarray, bias: np.ndarray,
                        mean: Optional[np.ndarray] = None,
                        std: Optional[np.ndarray] = None):
  """Per-tag logistic regression on the (standardized) bag-of-features as a Keras model.

  Same interface as the DNN (``bag_of_features`` → ``probabilities``), so evaluation,
  export and serving treat both heads alike.

  Args:
    kernel: [input_dim, num_tags] coefficients (on standardized inputs if mean/std).
    bias: [num_tags] intercepts.
    mean: standardization mean, or None for no standardization layer.
    std: standardization std (with mean).
  """
  kernel = np.asarray(kernel, np.float32)
  inputs = keras.Input(shape=(kernel.shape[0],), name=BAG_OF_FEATURES)
  x = inputs
  if mean is not None:
    x = Standardization(mean=mean, std=std, dtype="float32", name="standardization")(x)
  dense = keras.layers.Dense(kernel.shape[1], activation="sigmoid", dtype="float32",
                             name=PROBABILITIES)
  outputs = dense(x)
  dense.kernel.assign(kernel)
  dense.bias.assign(np.asarray(bias, np.float32))
  return keras.Model(inputs, outputs, name="logreg_tagger")


def save_tag_names(model_dir: str, tags: Sequence[str]) -> None:
  """Writes the ordered tag vocabulary to ``model_dir/tags.json``."""
  write_json(posixpath.join(model_dir, TAGS_FILE), {"tags": list(tags)})


def load_tag_names(model_dir: str) -> List[str]:
  """The ordered tag names of a trained model directory (``model_dir/tags.json``)."""
  path = posixpath.join(model_dir, TAGS_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path}: no tag list; train the model first "
                            "(deepbof-train --stages=finetune writes it)")
  with tf.io.gfile.GFile(path, "r") as f:
    return list(json.load(f)["tags"])


def load_tagger(model_dir: str):
  """The trained tagger of ``model_dir``: ``bag_of_features [B, D]`` → ``probabilities [B, T]``.

  The standardization is inside the model; tag names come from ``load_tag_names``.

  Args:
    model_dir: the ``--model_dir`` of ``deepbof-train``.
  """
  path = posixpath.join(model_dir, TAGGER_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path}: no trained tagger; run deepbof-train "
                            "--stages=finetune first")
  return keras.models.load_model(path, compile=False)
