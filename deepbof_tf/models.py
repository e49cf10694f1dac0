"""Model builders: the local-feature (bag-of-features) encoder and the song-level DNN.

Two sections, one per stage of SPEC: §3–4 (local features, encoder) and §5 (DNN).
"""

from __future__ import annotations

# --- Local feature encoder (SPEC §3–4) -------------------------------------------------
# The encoder maps log_mel [B, F, n_mels] (+ n_frames [B]) to bag_of_features [B, H];
# model_dir/local/ holds its parameters as plain NumPy + JSON (written by the
# learn-local-features stage). Imports of this section live here so the two sections
# stay independent.
import json as _lf_json  # noqa: E402
import posixpath as _lf_posixpath  # noqa: E402
from typing import Any as _LfAny, Dict as _LfDict, Optional as _LfOptional  # noqa: E402

LOCAL_DIR = "local"
LOCAL_FEATURES_FILE = "local_features.npz"
LOCAL_FEATURES_INFO = "local_features.json"


def local_dir(model_dir: str) -> str:
  """``model_dir/local``: PCA, sparse RBM, training logs and plots of SPEC §3."""
  return _lf_posixpath.join(model_dir, LOCAL_DIR)


def build_bof_encoder(pca, rbm, pool_frames: int = 43, block_frames: int = 8,
                      name: str = "bof_encoder"):
  """The bag-of-features encoder of SPEC §4 from a fitted PCA and sparse RBM.

  The returned layer maps ``log_mel [B, F, n_mels]`` and optional ``n_frames [B]``
  (padded batches) to ``bag_of_features [B, num_hidden]``; ``pooled_hidden`` gives the
  per-window max-pooled vectors for chunked/streaming encoding (see
  ``deepbof_tf.layers.bag_of_features``). Core TF ops only; works in a
  ``tf.function`` with a ``[None, None, n_mels]`` input.

  Args:
    pca: an adapted ``PCAWhitening``.
    rbm: a trained ``SparseRBM``.
    pool_frames: max-pooling window in block positions (43 ≈ 1 s).
    block_frames: frames per spectral block (8).
    name: layer name.
  """
  from deepbof_tf.layers.bag_of_features import BagOfFeaturesEncoder
  return BagOfFeaturesEncoder(pca, rbm, pool_frames=pool_frames,
                              block_frames=block_frames, name=name)


def save_local_features(model_dir: str, pca, rbm, *, block_frames: int, n_mels: int,
                        pool_frames: int, info: _LfOptional[_LfDict[str, _LfAny]] = None
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
  import io
  import numpy as np
  import tensorflow as tf
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
  for name, payload, mode in (
      (LOCAL_FEATURES_FILE, buffer.getvalue(), "wb"),
      (LOCAL_FEATURES_INFO, _lf_json.dumps(meta, indent=2, sort_keys=True) + "\n", "w")):
    path = _lf_posixpath.join(directory, name)
    with tf.io.gfile.GFile(path + ".tmp", mode) as f:
      f.write(payload)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
  return _lf_posixpath.join(directory, LOCAL_FEATURES_INFO)


def load_local_features(model_dir: str):
  """``(pca, rbm, meta)`` rebuilt from ``model_dir/local/`` (see ``save_local_features``).

  Args:
    model_dir: the model directory.
  """
  import io
  import numpy as np
  import tensorflow as tf
  from deepbof_tf.layers.pca import PCAWhitening
  from deepbof_tf.layers.sparse_rbm import SparseRBM
  directory = local_dir(model_dir)
  info_path = _lf_posixpath.join(directory, LOCAL_FEATURES_INFO)
  if not tf.io.gfile.exists(info_path):
    raise FileNotFoundError(f"{info_path}: no learned local features; run deepbof-train "
                            "--stages=learn-local-features first")
  with tf.io.gfile.GFile(info_path, "r") as f:
    meta = _lf_json.load(f)
  with tf.io.gfile.GFile(_lf_posixpath.join(directory, LOCAL_FEATURES_FILE), "rb") as f:
    with np.load(io.BytesIO(f.read()), allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  pca = PCAWhitening(retained_variance=meta["retained_variance"], epsilon=meta["epsilon"],
                     name="pca_whitening")
  pca.set_statistics(arrays["pca_mean"], arrays["pca_eigenvalues"],
                     arrays["pca_eigenvectors"])
  rbm = SparseRBM(num_hidden=meta["num_hidden"], name="sparse_rbm")
  rbm.set_weights_from(arrays["kernel"], arrays["hidden_bias"], arrays["visible_bias"])
  return pca, rbm, meta


def load_bof_encoder(model_dir: str, pool_frames: _LfOptional[int] = None):
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



# --- Song-level DNN (SPEC §5) ----------------------------------------------------------
