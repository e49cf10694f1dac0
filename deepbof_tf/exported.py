"""Client side of a ``deepbof-export`` SavedModel: its layout, its signatures, chunking.

Everything that *uses* an export without building one lives here, so that the tagging
tools (``deepbof-tag``, ``deepbof-tag-catalog``, ``deepbof-similar``) share one
implementation of the contract written by ``serving/export_lib.py``:

* the layout: a TF Serving model base path with integer version directories, each a
  SavedModel with ``assets/deepbof_export.json`` (front end, block and pooling sizes,
  embedding size, tags, the longest one-shot request);
* the signature names (defined in ``deepbof_tf.signatures``);
* :class:`ExportedModel`: one-shot tagging of in-memory clips through
  ``serving_padded``, and the chunked two-pass path of ``deepbof_tf.streaming`` through
  ``stream_peak``/``stream_encode``, whose pooled windows combine into exactly the
  one-shot bag-of-features; ``probabilities_from_embedding`` then gives the tags.

Only TensorFlow's SavedModel loader is used (``tf.saved_model.load``): the export is a
plain ``tf.Module``, which Keras 3's ``load_model`` does not read.
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from deepbof_tf.config import FrontendConfig
# The signature names are defined in deepbof_tf.signatures; re-exported here with the
# rest of the contract.
from deepbof_tf.signatures import (  # noqa: F401  (re-exported)
    DEFAULT_SIGNATURE, HEAD_SIGNATURE, PADDED_SIGNATURE, STREAM_ENCODE_SIGNATURE,
    STREAM_ENCODE_SPECTRUM_SIGNATURE, STREAM_PEAK_SIGNATURE, STREAM_SPECTRUM_SIGNATURE,
    TAGS_SIGNATURE, WAV_SIGNATURE)

EXPORT_INFO_FILE = "deepbof_export.json"


class _LocalFiles:
  """The ``tf.io.gfile`` calls of this module, for a local path, through ``os``: the
  catalogue's launcher resolves an export without importing TensorFlow."""

  exists = staticmethod(os.path.exists)
  isdir = staticmethod(os.path.isdir)
  listdir = staticmethod(os.listdir)
  GFile = staticmethod(open)


def _files(path: str):
  """``tf.io.gfile`` for a URL (``gs://…``), :class:`_LocalFiles` for a local path."""
  if "://" not in path:
    return _LocalFiles
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  (URLs only)
  return tf.io.gfile


def existing_versions(export_dir: str) -> List[int]:
  """Integer version subdirectories of a TF Serving model base path, ascending."""
  files = _files(export_dir)
  if not files.isdir(export_dir):
    return []
  names = [name.rstrip("/") for name in files.listdir(export_dir)]
  return sorted(int(name) for name in names if name.isdigit())


def resolve_version_dir(path: str) -> str:
  """A SavedModel directory: ``path`` itself, or its newest integer version.

  Args:
    path: a version directory (with ``saved_model.pb``) or a model base path.
  """
  if _files(path).exists(posixpath.join(path, "saved_model.pb")):
    return path
  versions = existing_versions(path)
  if not versions:
    raise FileNotFoundError(f"{path}: neither a SavedModel (no saved_model.pb) nor a "
                            "directory of integer versions; run deepbof-export first")
  return posixpath.join(path, str(versions[-1]))


def read_export_info(version_dir: str) -> Dict[str, Any]:
  """The ``assets/deepbof_export.json`` of an export version directory."""
  path = posixpath.join(version_dir, "assets", EXPORT_INFO_FILE)
  files = _files(path)
  if not files.exists(path):
    raise FileNotFoundError(f"{path}: not a deepbof export (no {EXPORT_INFO_FILE})")
  with files.GFile(path, "r") as f:
    return json.load(f)


def load_saved_model(version_dir: str, info: Optional[Dict[str, Any]] = None):
  """``tf.saved_model.load`` of an export, after registering the ops it needs.

  An export made with ``--fused_frontend`` uses the ``DeepbofLogMel`` op, which exists
  only once ``deepbof_tf.native.frontend_op`` is loaded.

  Args:
    version_dir: the export's version directory.
    info: its ``read_export_info`` (read here when None).
  """
  import tensorflow as tf
  if info is None:
    info = read_export_info(version_dir)
  if info.get("fused_frontend"):
    from deepbof_tf.native import frontend_op
    frontend_op.load()
  return tf.saved_model.load(version_dir)


def top_tags(probabilities: np.ndarray, tags: Sequence[str], top_k: int,
             threshold: float = 0.0) -> List[Tuple[str, float]]:
  """The ``top_k`` most probable tags with probability ≥ ``threshold`` (0: all).

  Ties are broken by tag index (the vocabulary order), as in the P@K metric.
  """
  order = sorted(range(len(tags)), key=lambda i: (-float(probabilities[i]), i))
  chosen = [(tags[i], float(probabilities[i])) for i in order
            if float(probabilities[i]) >= threshold]
  return chosen[:top_k] if top_k > 0 else chosen


# Memory for the STFT magnitudes the first streaming pass keeps for the second
# (ExportedModel.iter_pooled_windows): 64 MB, 12 minutes of audio.
SPECTRUM_MEMORY_BYTES = 64 << 20


class ExportedModel:
  """A loaded ``deepbof-export`` SavedModel and the settings it was exported with.

  Args:
    model: an export version directory or base directory (newest version).
  """

  def __init__(self, model: str):
    self.version_dir = resolve_version_dir(model)
    self.info = read_export_info(self.version_dir)
    self.config = FrontendConfig(**self.info["frontend"])
    self.block_frames = int(self.info["block_frames"])
    self.pool_frames = int(self.info["pool_frames"])
    self.min_samples = int(self.info["min_samples"])
    self.embedding_size = int(self.info["embedding_size"])
    self.max_request_samples = int(self.info.get("max_request_samples", 0)) or None
    self.channel_mode = self.info.get("channel_mode", "first")
    loaded = load_saved_model(self.version_dir, self.info)
    self._loaded = loaded  # keeps the signatures' variables alive
    signatures = loaded.signatures
    self._padded = signatures[PADDED_SIGNATURE]
    self._peak = signatures[STREAM_PEAK_SIGNATURE]
    self._encode = signatures[STREAM_ENCODE_SIGNATURE]
    # Exports written before these signatures existed stream with the two above only.
    self._spectrum = signatures.get(STREAM_SPECTRUM_SIGNATURE)
    self._encode_spectrum = signatures.get(STREAM_ENCODE_SPECTRUM_SIGNATURE)
    self._head = signatures[HEAD_SIGNATURE]
    self.tags = [t.decode("utf-8") for t in signatures[TAGS_SIGNATURE]()["tags"].numpy()]

  @property
  def sample_rate(self) -> int:
    return self.config.sample_rate

  def windows_per_seconds(self, seconds: float) -> int:
    """Pooling windows in about ``seconds`` (at least 1)."""
    window = self.pool_frames * self.config.hop_length / self.config.sample_rate
    return max(1, int(round(seconds / window)))

  def one_shot_limit(self, chunk_seconds: float) -> int:
    """The longest clip (samples) tagged in one piece; longer ones are chunked."""
    limit = int(chunk_seconds * self.sample_rate)
    return min(limit, self.max_request_samples) if self.max_request_samples else limit

  def check_length(self, num_samples: int, path: str) -> None:
    if num_samples < self.min_samples:
      raise ValueError(
          f"{path}: too short: {num_samples} samples ({num_samples / self.sample_rate:.3f} s)"
          f"; the model needs at least {self.min_samples} samples (one "
          f"{self.block_frames}-frame block)")

  def tag_batch(self, waveforms: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """One-shot tagging of in-memory clips: ``(probabilities [B, T], embedding [B, H])``.

    The clips are zero-padded to the longest and sent with their lengths through
    ``serving_padded`` (padding does not change any clip's result).
    """
    import tensorflow as tf
    lengths = np.array([w.shape[0] for w in waveforms], np.int32)
    batch = np.zeros([len(waveforms), int(lengths.max())], np.float32)
    for i, w in enumerate(waveforms):
      batch[i, :w.shape[0]] = w
    out = self._padded(waveform=tf.constant(batch), num_samples=tf.constant(lengths))
    return out["probabilities"].numpy(), out["embedding"].numpy()

  def tag_waveforms(self, waveforms: Sequence[np.ndarray], max_padding: float = 0.25
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """:meth:`tag_batch` on clips of any lengths, grouped so that padding stays small.

    The clips are sorted by length and sent in groups whose padded size exceeds their
    samples by at most ``max_padding`` (a 4-minute track is not padded with 30-s
    clips); each result equals the clip's own :meth:`tag_batch` (padding changes no
    clip's numbers).

    Returns:
      ``(probabilities [B, T], embedding [B, H])`` in the input order.
    """
    lengths = [int(w.shape[0]) for w in waveforms]
    order = sorted(range(len(waveforms)), key=lambda i: lengths[i])
    groups: List[List[int]] = []
    total = 0
    for i in order:  # ascending: the newest member is the group's longest
      if groups and (len(groups[-1]) + 1) * lengths[i] <= (1 + max_padding) * (
          total + lengths[i]):
        groups[-1].append(i)
        total += lengths[i]
      else:
        groups.append([i])
        total = lengths[i]
    probabilities: List[Optional[np.ndarray]] = [None] * len(waveforms)
    embeddings: List[Optional[np.ndarray]] = [None] * len(waveforms)
    for group in groups:
      p, e = self.tag_batch([waveforms[i] for i in group])
      for i, pi, ei in zip(group, p, e):
        probabilities[i], embeddings[i] = pi, ei
    return np.stack(probabilities), np.stack(embeddings)

  def iter_pooled_windows(self, source, windows_per_chunk: int,
                          progress: Optional[Any] = None,
                          spectrum_bytes: int = SPECTRUM_MEMORY_BYTES
                          ) -> Iterator[np.ndarray]:
    """The max-pooling windows ``[w, H]`` of a recording, one array per chunk.

    Two passes over the chunks of ``deepbof_tf.streaming.plan_chunks``: the STFT
    maximum of the whole recording (the spectral floor needs it), then floor, AGC,
    log-mel, blocks, encoder and window maxima with the AGC state and the last
    ``block_frames − 1`` log-mel frames carried from chunk to chunk. The first pass
    keeps the chunks' STFT magnitudes while they fit in ``spectrum_bytes`` (88 KB per
    second of audio: 64 MB is 12 minutes) and the second pass encodes those from the
    magnitudes (``stream_encode_spectrum``) instead of computing their STFT again; the
    chunks beyond it, and every chunk of an export without those signatures, are
    encoded from their samples. The results are the same either way.

    Args:
      source: a ``deepbof_tf.streaming`` waveform (``num_samples``, ``read``).
      windows_per_chunk: pooling windows per streaming step.
      progress: optional tqdm bar advanced by one per chunk and pass.
      spectrum_bytes: memory for kept magnitudes (0: keep none).
    """
    import tensorflow as tf
    from deepbof_tf import streaming
    plan = streaming.plan_chunks(source.num_samples, windows_per_chunk, self.config,
                                 self.block_frames, self.pool_frames)
    if progress is not None:
      progress.reset(total=2 * len(plan))
    peak = 0.0
    kept: List[Optional[tf.Tensor]] = []
    bins = self.config.n_fft // 2 + 1
    room = int(spectrum_bytes) if self._spectrum is not None else 0
    for chunk in plan:  # pass 1: the whole recording's STFT maximum (the floor's max)
      segment = tf.constant(source.read(*streaming.segment_bounds(chunk, self.config)))
      size = (chunk.frame_stop - chunk.frame_start) * bins * 4
      if size <= room:
        magnitude = self._spectrum(segment=segment)["magnitude"]
        peak = max(peak, float(tf.reduce_max(magnitude)))
        kept.append(magnitude)
        room -= size
      else:
        peak = max(peak, float(self._peak(segment=segment)["peak"]))
        kept.append(None)
      if progress is not None:
        progress.update()
    state = tf.zeros([self.config.agc_n_bands], tf.float32)
    context = tf.zeros([0, self.config.n_mels], tf.float32)
    peak_tensor = tf.constant(peak, tf.float32)
    for index, chunk in enumerate(plan):  # pass 2: floor, AGC, log-mel, blocks, encoder
      magnitude, kept[index] = kept[index], None  # freed as soon as it is encoded
      if magnitude is not None:
        out = self._encode_spectrum(magnitude=magnitude, peak=peak_tensor,
                                    agc_state=state, context=context)
      else:
        segment = source.read(*streaming.segment_bounds(chunk, self.config))
        out = self._encode(segment=tf.constant(segment), peak=peak_tensor,
                           agc_state=state, context=context)
      state, context = out["agc_state"], out["context"]
      if progress is not None:
        progress.update()
      yield out["pooled"].numpy()

  def pooled_windows(self, source, windows_per_chunk: int,
                     progress: Optional[Any] = None) -> np.ndarray:
    """All max-pooling windows ``[W, H]`` of a recording (:meth:`iter_pooled_windows`)."""
    return np.concatenate(list(self.iter_pooled_windows(source, windows_per_chunk,
                                                        progress)), axis=0)

  def probabilities(self, embedding: np.ndarray) -> np.ndarray:
    """The DNN on bag-of-features ``[N, H]`` → ``[N, n_tags]``."""
    import tensorflow as tf
    return self._head(embedding=tf.constant(embedding, tf.float32))["probabilities"].numpy()

  def tag_file(self, path: str, chunk_seconds: float,
               channel_mode: Optional[str] = None) -> Tuple[float, np.ndarray, np.ndarray]:
    """Tags one audio file: ``(duration_seconds, probabilities [T], embedding [H])``.

    Decoded once (``streaming.ResampledNativeWaveform``): a clip up to
    ``chunk_seconds`` in one piece, a longer one resampled once into a store and
    encoded chunk by chunk.

    Raises:
      deepbof_tf.audio.AudioDecodeError, ValueError: the file cannot be tagged (the
        message names it and the problem).
    """
    from deepbof_tf import streaming
    source = streaming.ResampledNativeWaveform(path, self.sample_rate,
                                               channel_mode or self.channel_mode)
    try:
      duration = source.num_samples / self.sample_rate
      self.check_length(source.num_samples, path)
      if source.num_samples <= self.one_shot_limit(chunk_seconds):
        probabilities, embedding = self.tag_batch([source.read(0, source.num_samples)])
        return duration, probabilities[0], embedding[0]
      store = streaming.resampled_store(source)  # both passes read it: resampled once
      try:
        pooled = self.pooled_windows(store, self.windows_per_seconds(chunk_seconds))
      finally:
        store.close()
      embedding = streaming.mean_of_windows([pooled])
      return duration, self.probabilities(embedding[None])[0], embedding
    finally:
      source.close()
