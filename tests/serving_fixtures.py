"""Shared helpers of the serving tests: a tiny random-weight model directory and export.

The model directory is written through the public APIs of ``deepbof_tf`` (an adapted
``PCAWhitening``, a ``SparseRBM``, ``models.save_local_features``,
``models.build_song_dnn`` saved as ``tagger.keras``, ``models.save_tag_names``), so the
export under test reads exactly what ``deepbof-train`` writes. Sizes are small for
speed (PCA keeps ~16 dimensions, 64 hidden units) but every code path is the real one.
The export is built once per test session and shared.
"""

from __future__ import annotations

import io
import os
import wave
from typing import Dict, Optional

import numpy as np

TAGS = ("rock", "piano", "guitar", "vocal", "techno", "quiet")
NUM_HIDDEN = 64
SAMPLE_RATE = 22050

_CACHE: Dict[str, str] = {}


def make_model_dir(model_dir: str, seed: int = 0, num_hidden: int = NUM_HIDDEN,
                   pool_frames: int = 43) -> str:
  """Writes a random-weight model directory like ``deepbof-train`` does."""
  from deepbof_tf import model_dir as layout
  from deepbof_tf import models
  from deepbof_tf.config import DNNConfig
  from deepbof_tf.layers.pca import PCAWhitening
  from deepbof_tf.layers.sparse_rbm import SparseRBM

  rng = np.random.default_rng(seed)
  # Low-rank "blocks" so PCA keeps few components (fast encoder, realistic shapes).
  latent = rng.standard_normal([600, 16]) * np.linspace(3.0, 0.5, 16)
  blocks = latent @ rng.standard_normal([16, 1024]) * 0.1 + 0.5
  blocks += 0.01 * rng.standard_normal(blocks.shape)
  pca = PCAWhitening(retained_variance=0.9, epsilon=0.01)
  pca.adapt(blocks.astype(np.float32))
  rbm = SparseRBM(num_hidden=num_hidden)
  rbm.set_weights_from(rng.normal(0.0, 0.3, [pca.output_dim, num_hidden]),
                       rng.normal(-1.0, 0.5, [num_hidden]), np.zeros(pca.output_dim))
  os.makedirs(model_dir, exist_ok=True)
  models.save_local_features(model_dir, pca, rbm, block_frames=8, n_mels=128,
                             pool_frames=pool_frames, info={"test": "random weights"})
  tagger = models.build_song_dnn(
      len(TAGS), DNNConfig(num_hidden_layers=1, hidden_units=16), input_dim=num_hidden,
      mean=np.full(num_hidden, 0.3, np.float32), std=np.full(num_hidden, 0.1, np.float32),
      seed=seed)
  tagger.save(os.path.join(model_dir, layout.TAGGER_FILE))
  models.save_tag_names(model_dir, TAGS)
  return model_dir


def shared_export(tmp_path_factory) -> Dict[str, str]:
  """``{"model_dir", "export_dir", "version_dir"}`` of the session's test export."""
  if not _CACHE:
    from serving import export_lib
    root = tmp_path_factory.mktemp("serving_model")
    model_dir = make_model_dir(str(root / "model"))
    export_dir = str(root / "export")
    _CACHE.update(model_dir=model_dir, export_dir=export_dir,
                  version_dir=export_lib.export(model_dir, export_dir))
  return dict(_CACHE)


def music_like_signal(seconds: float, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """A deterministic music-like test waveform: chords, clicks and noise, float32."""
  rng = np.random.default_rng(seed)
  n = int(round(seconds * sample_rate))
  t = np.arange(n) / sample_rate
  x = np.zeros(n)
  for i, f0 in enumerate(rng.uniform(110.0, 880.0, 4)):
    x += 0.15 * np.sin(2 * np.pi * f0 * t + i) * (1.0 + 0.5 * np.sin(2 * np.pi * (0.3 + i) * t))
  clicks = (np.sin(2 * np.pi * 2.0 * t) > 0.995).astype(np.float64)
  x += 0.3 * clicks * rng.standard_normal(n)
  x += 0.02 * rng.standard_normal(n)
  return x.astype(np.float32)


def wav_bytes(samples: np.ndarray, sample_rate: int = SAMPLE_RATE,
              channels: Optional[np.ndarray] = None) -> bytes:
  """16-bit PCM WAV bytes of ``samples`` (or of a [n, channels] array)."""
  data = samples if channels is None else channels
  data = np.asarray(data, np.float64)
  if data.ndim == 1:
    data = data[:, None]
  pcm = np.clip(np.round(data * 32768.0), -32768, 32767).astype("<i2")
  buffer = io.BytesIO()
  with wave.open(buffer, "wb") as f:
    f.setnchannels(pcm.shape[1])
    f.setsampwidth(2)
    f.setframerate(sample_rate)
    f.writeframes(pcm.tobytes())
  return buffer.getvalue()


def pcm16(samples: np.ndarray) -> np.ndarray:
  """``samples`` quantised as ``wav_bytes`` stores them and ``decode_wav`` reads them."""
  return (np.clip(np.round(np.asarray(samples, np.float64) * 32768.0), -32768, 32767)
          / 32768.0).astype(np.float32)
