"""SavedModel export of a trained deepbof model for TF Serving and ``deepbof-tag``.

The export is a ``tf.Module`` (:class:`DeepBofServingModule`) whose ``@tf.function``
serve methods have named ``TensorSpec`` inputs (the tensorflow/models ``export_base``
pattern). The whole model — front end, bag-of-features encoder and song-level DNN
(docs/model.md) — is inside the graph, built from ``deepbof_tf`` with core
TensorFlow ops only (TF Serving has no tensorflow-io kernels; decoding compressed
formats and resampling happen client-side).

Signatures (inputs → outputs):

* ``serving_default``: ``waveform`` float32 ``[batch, samples]`` mono at the model's
  sample rate (22,050 Hz), every row a whole clip → ``probabilities`` ``[batch, n_tags]``,
  ``embedding`` ``[batch, H]`` (the bag-of-features, H = 1024).
* ``serving_padded``: ``waveform`` ``[batch, samples]`` + ``num_samples`` int32
  ``[batch]`` (row b holds a clip of ``num_samples[b]`` samples, the rest is padding)
  → same outputs. A separate signature rather than an optional input: TF Serving's
  request batching concatenates every input along the batch axis, which a default
  tensor cannot follow.
* ``predict_wav``: ``wav`` string ``[batch]``, each a whole WAV file (16-bit PCM as
  ``tf.audio.decode_wav`` supports, any channel count; the *first* channel is used as
  in the authors' code) at the model's sample rate → same outputs. Another sample
  rate is an InvalidArgument error: resampling is client-side.
* ``tags``: no input → ``tags`` string ``[n_tags]``, the ordered tag names (also the
  asset ``assets/tags.txt``, one per line).
* ``stream_peak``, ``stream_encode``, ``stream_spectrum``, ``stream_encode_spectrum``,
  ``probabilities_from_embedding``: the chunk-level
  steps of ``deepbof_tf.streaming`` with the exported weights, used by ``deepbof-tag``
  for recordings of any length (see that module). Streaming therefore runs the same
  traced library code and the same variables as ``serving_default``: the export is
  the single source of truth for every number ``deepbof-tag`` prints.

Bad requests fail with InvalidArgument and a message naming the problem (empty batch,
NaN/Inf samples, clips shorter than one block, ``num_samples`` out of range, wrong
WAV sample rate); wrong dtypes are rejected by the signature itself.

The export's settings (front end, block and pooling sizes, tags) are also written to
``assets/deepbof_export.json`` for clients.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import shutil
import tempfile
from typing import Any, Dict, Optional, Sequence, Tuple

import tensorflow as tf

from deepbof_tf import framing, frontend, streaming
from deepbof_tf.native import frontend_op
from deepbof_tf.config import ExportConfig, FrontendConfig
from deepbof_tf.io_utils import write_json
from deepbof_tf import model_dir as model_dir_layout

# The layout and the signature names are the export's contract with its clients; they
# live in deepbof_tf.exported and deepbof_tf.signatures (the tagging tools read exports
# without this module).
from deepbof_tf.exported import (  # noqa: E402,F401  (re-exported)
    EXPORT_INFO_FILE, existing_versions, read_export_info, resolve_version_dir)
from deepbof_tf.signatures import (  # noqa: E402,F401  (re-exported)
    DEFAULT_SIGNATURE, HEAD_SIGNATURE, PADDED_SIGNATURE, STREAM_ENCODE_SIGNATURE,
    STREAM_ENCODE_SPECTRUM_SIGNATURE, STREAM_PEAK_SIGNATURE, STREAM_SPECTRUM_SIGNATURE,
    TAGS_SIGNATURE, WAV_SIGNATURE)

TAGS_ASSET_FILE = "tags.txt"
FRONTEND_FILE = model_dir_layout.FRONTEND_FILE  # written by deepbof-train
# The longest clip the one-shot signatures accept by default (deepbof-export
# --max_request_seconds); longer audio goes through the streaming signatures.
DEFAULT_MAX_REQUEST_SECONDS = ExportConfig.max_request_seconds
DEFAULT_CLIPS_IN_FLIGHT = ExportConfig.clips_in_flight
DEFAULT_FUSED_FRONTEND = ExportConfig.fused_frontend


def min_samples(config: FrontendConfig, block_frames: int) -> int:
  """The shortest clip with one block: ``frame_count(n) >= block_frames``.

  ``deepbof_tf.framing.min_samples_for_frames``, from the one definition of the frame
  count.

  Args:
    config: the front-end configuration.
    block_frames: frames per block.
  """
  return framing.min_samples_for_frames(block_frames, config)


class DeepBofServingModule(tf.Module):
  """The exported model: front end → bag-of-features encoder → DNN, plus streaming steps.

  Args:
    encoder: a ``BagOfFeaturesEncoder`` (``deepbof_tf.models.load_bof_encoder``).
    tagger: the Keras tagger ``bag_of_features → probabilities``
      (``deepbof_tf.models.load_tagger``).
    tag_names: the ordered tag names (one per output unit).
    frontend_config: the front end the model was trained with.
    tags_asset: path of a text file with one tag per line, exported as an asset.
    info_asset: path of the JSON description exported as an asset.
    clips_in_flight: clips of a request computed at the same time (``tf.map_fn``'s
      ``parallel_iterations``). A request's clips go through the front end and the
      encoder one clip each: batched, their [frames, bins] and [blocks, block_dim]
      intermediates for 16 clips (~100 MB) fall out of the CPU caches and the graph
      becomes memory-bound (2.3× slower at batch 16 on 2 cores). 2 was best on 2 cores;
      each clip's ops still use TF's intra-op threads.
    max_request_seconds: the longest clip the one-shot signatures accept; a longer
      request fails with INVALID_ARGUMENT before the front end allocates anything for
      it (a 20-minute clip needs ~1.6 GB of intermediates). Long audio goes through the
      streaming signatures (``deepbof-tag`` does that by itself).
    fused_frontend: compute the one-shot signatures' log-mel spectrograms with the
      fused kernel ``DeepbofLogMel`` (``deepbof_tf.native.frontend_op``) instead of core
      ops: the front end 2.5–3× faster, the whole signature about 1.5× on 2 cores, but
      the SavedModel then loads only where that library is loaded (not in a stock TF
      Serving binary). The streaming signatures keep core ops. See
      serving/README.md#fused-front-end.
  """

  def __init__(self, encoder, tagger, tag_names: Sequence[str],
               frontend_config: FrontendConfig, tags_asset: Optional[str] = None,
               info_asset: Optional[str] = None,
               clips_in_flight: int = DEFAULT_CLIPS_IN_FLIGHT,
               max_request_seconds: float = DEFAULT_MAX_REQUEST_SECONDS,
               fused_frontend: bool = DEFAULT_FUSED_FRONTEND):
    super().__init__(name="deepbof")
    if clips_in_flight < 1:
      raise ValueError(f"clips_in_flight must be >= 1, got {clips_in_flight}")
    if max_request_seconds <= 0:
      raise ValueError(f"max_request_seconds must be > 0, got {max_request_seconds}")
    self._clips_in_flight = int(clips_in_flight)
    self._fused_frontend = bool(fused_frontend)
    if self._fused_frontend:
      frontend_op.load()  # fails here, at export time, where the kernel is unavailable
    self._max_request_seconds = float(max_request_seconds)
    self._max_samples = int(round(max_request_seconds * frontend_config.sample_rate))
    num_tags = int(tagger.outputs[0].shape[-1]) if hasattr(tagger, "outputs") else None
    if num_tags is not None and num_tags != len(tag_names):
      raise ValueError(f"the tagger has {num_tags} outputs but {len(tag_names)} tag "
                       "names were given")
    self.encoder = encoder
    self.tagger = tagger
    self._config = frontend_config
    self._tag_names = list(tag_names)
    self._block_frames = int(encoder.block_frames)
    self._min_samples = min_samples(frontend_config, self._block_frames)
    if tags_asset is not None:
      self.tags_asset = tf.saved_model.Asset(tags_asset)
    if info_asset is not None:
      self.info_asset = tf.saved_model.Asset(info_asset)
    n_mels = frontend_config.n_mels
    bands = frontend_config.agc_n_bands
    # The signatures, traced once here so that a broken model fails at export time.
    self.serve = tf.function(self._serve, input_signature=[
        tf.TensorSpec([None, None], tf.float32, name="waveform")])
    self.serve_padded = tf.function(self._serve_padded, input_signature=[
        tf.TensorSpec([None, None], tf.float32, name="waveform"),
        tf.TensorSpec([None], tf.int32, name="num_samples")])
    self.serve_wav = tf.function(self._serve_wav, input_signature=[
        tf.TensorSpec([None], tf.string, name="wav")])
    self.tags = tf.function(self._tags, input_signature=[])
    self.stream_peak = tf.function(self._stream_peak, input_signature=[
        tf.TensorSpec([None], tf.float32, name="segment")])
    self.stream_encode = tf.function(self._stream_encode, input_signature=[
        tf.TensorSpec([None], tf.float32, name="segment"),
        tf.TensorSpec([], tf.float32, name="peak"),
        tf.TensorSpec([bands], tf.float32, name="agc_state"),
        tf.TensorSpec([None, n_mels], tf.float32, name="context")])
    self.stream_spectrum = tf.function(self._stream_spectrum, input_signature=[
        tf.TensorSpec([None], tf.float32, name="segment")])
    self.stream_encode_spectrum = tf.function(self._stream_encode_spectrum,
                                              input_signature=[
        tf.TensorSpec([None, frontend_config.n_fft // 2 + 1], tf.float32, name="magnitude"),
        tf.TensorSpec([], tf.float32, name="peak"),
        tf.TensorSpec([bands], tf.float32, name="agc_state"),
        tf.TensorSpec([None, n_mels], tf.float32, name="context")])
    self.probabilities_from_embedding = tf.function(
        self._probabilities_from_embedding, input_signature=[
            tf.TensorSpec([None, encoder.rbm.num_hidden], tf.float32, name="embedding")])

  def signatures(self) -> Dict[str, Any]:
    """Signature name → concrete function, for ``tf.saved_model.save``."""
    return {
        DEFAULT_SIGNATURE: self.serve.get_concrete_function(),
        PADDED_SIGNATURE: self.serve_padded.get_concrete_function(),
        WAV_SIGNATURE: self.serve_wav.get_concrete_function(),
        TAGS_SIGNATURE: self.tags.get_concrete_function(),
        STREAM_PEAK_SIGNATURE: self.stream_peak.get_concrete_function(),
        STREAM_ENCODE_SIGNATURE: self.stream_encode.get_concrete_function(),
        STREAM_SPECTRUM_SIGNATURE: self.stream_spectrum.get_concrete_function(),
        STREAM_ENCODE_SPECTRUM_SIGNATURE: self.stream_encode_spectrum.get_concrete_function(),
        HEAD_SIGNATURE: self.probabilities_from_embedding.get_concrete_function(),
    }

  # --- one-shot prediction -----------------------------------------------------------

  def _checked(self, waveform: tf.Tensor, num_samples: tf.Tensor):
    """Request validation; every later op depends on it so the message is the error."""
    sr = self._config.sample_rate
    batch = tf.shape(waveform)[0]
    samples = tf.shape(waveform)[1]
    checks = [
        tf.debugging.assert_less_equal(
            samples, self._max_samples,
            message=(f"request too long: at most {self._max_samples} samples "
                     f"({self._max_request_seconds:g} s at {sr} Hz) per clip in one "
                     "request; send longer audio through the stream_* signatures "
                     "(deepbof-tag does) or export with a larger --max_request_seconds; "
                     "samples =")),
        tf.debugging.assert_positive(
            batch, message="empty batch: waveform must have shape [batch >= 1, samples]"),
        tf.debugging.assert_equal(
            tf.shape(num_samples)[0], batch,
            message="num_samples must have one entry per waveform row"),
        tf.debugging.assert_less_equal(
            num_samples, samples,
            message="num_samples exceeds the number of samples per waveform row"),
        tf.debugging.assert_greater_equal(
            num_samples, self._min_samples,
            message=(f"waveform too short: the model needs at least {self._min_samples} "
                     f"samples ({self._block_frames} STFT frames = one block, "
                     f"{self._min_samples / sr:.3f} s at {sr} Hz); num_samples =")),
    ]
    with tf.control_dependencies(checks):
      return tf.identity(waveform), tf.identity(num_samples)

  @staticmethod
  def _finite_embeddings(embedding: tf.Tensor) -> tf.Tensor:
    """Refuses a request with a clip whose embedding is not finite: that clip was bad.

    A NaN or Inf sample, or one so large that the spectrum's squares overflow float32
    (beyond ±1e16), spreads through the clip's maximum into every value of its
    spectrogram and so of its embedding; audio in any sane range gives a finite one.
    Checking the [batch, 1024] outputs costs nothing, where assert_all_finite on the
    request (CheckNumerics, one thread) took 22 ms of a 16 x 30 s batch with the whole
    request waiting for it. The check stays outside the per-clip loop: an assertion
    inside it made the loop run its clips one after the other (25 ms more per batch).
    """
    finite = tf.reduce_all(tf.math.is_finite(embedding), axis=1)
    check = tf.debugging.Assert(
        tf.reduce_all(finite),
        ["waveform contains NaN or Inf samples (or samples beyond ±1e16; audio is in "
         "[-1, 1]): clips", tf.where(tf.logical_not(finite))[:, 0]])
    with tf.control_dependencies([check]):
      return tf.identity(embedding)

  def _predict(self, waveform: tf.Tensor, num_samples: tf.Tensor) -> Dict[str, tf.Tensor]:
    waveform, num_samples = self._checked(waveform, num_samples)
    if self._fused_frontend:
      # The kernel takes the whole request and spreads it over the intra-op threads.
      log_mel_all = frontend_op.log_mel_batch(waveform, num_samples, self._config)
      n_frames_all = frontend.frame_count(num_samples, self._config)

      def embed(index):  # one clip's encoder: see clips_in_flight
        return self.encoder(log_mel_all[index][tf.newaxis],
                            n_frames_all[index][tf.newaxis])[0]
    else:
      def embed(index):  # one clip: see clips_in_flight
        log_mel, _, n_frames = frontend.compute_features_batch(
            waveform[index][tf.newaxis], num_samples[index][tf.newaxis], self._config)
        return self.encoder(log_mel, n_frames)[0]

    embedding = self._finite_embeddings(tf.map_fn(
        embed, tf.range(tf.shape(waveform)[0]),
        fn_output_signature=tf.TensorSpec([self.encoder.rbm.num_hidden], tf.float32),
        parallel_iterations=self._clips_in_flight))
    probabilities = self.tagger(embedding, training=False)
    return {"probabilities": tf.identity(probabilities, name="probabilities"),
            "embedding": tf.identity(embedding, name="embedding")}

  def _serve(self, waveform):
    num_samples = tf.fill(tf.shape(waveform)[:1], tf.shape(waveform)[1])
    return self._predict(waveform, num_samples)

  def _serve_padded(self, waveform, num_samples):
    return self._predict(waveform, num_samples)

  def _serve_wav(self, wav):
    sr = self._config.sample_rate
    tf.debugging.assert_positive(tf.size(wav), message="empty batch: no WAV file given")

    def decode(contents):
      audio, rate = tf.audio.decode_wav(contents)
      check = tf.debugging.assert_equal(
          rate, sr, message=(f"WAV sample rate must be {sr} Hz (the model's rate; "
                             "resample client-side, e.g. with deepbof-tag); got"))
      with tf.control_dependencies([check]):
        # The authors' code keeps the first channel.
        return tf.identity(audio[:, 0])

    waveforms = tf.map_fn(decode, wav, fn_output_signature=tf.RaggedTensorSpec(
        shape=[None], dtype=tf.float32, ragged_rank=0))
    num_samples = tf.cast(waveforms.row_lengths(), tf.int32)
    return self._predict(waveforms.to_tensor(), num_samples)

  def _tags(self):
    return {"tags": tf.constant(self._tag_names, dtype=tf.string)}

  # --- streaming steps -----------------------------------------------------------------

  def _stream_peak(self, segment):
    check = tf.debugging.assert_greater_equal(
        tf.size(segment), self._config.n_fft,
        message=f"segment must hold at least n_fft={self._config.n_fft} samples")
    with tf.control_dependencies([check]):
      return {"peak": streaming.segment_peak(segment, self._config)}

  def _stream_encode(self, segment, peak, agc_state, context):
    check = tf.debugging.assert_greater_equal(
        tf.size(segment), self._config.n_fft,
        message=f"segment must hold at least n_fft={self._config.n_fft} samples")
    with tf.control_dependencies([check]):
      pooled, state, carried = streaming.encode_segment(
          self.encoder, segment, peak, agc_state, context, self._config)
    return {"pooled": pooled, "agc_state": state, "context": carried}

  def _stream_spectrum(self, segment):
    check = tf.debugging.assert_greater_equal(
        tf.size(segment), self._config.n_fft,
        message=f"segment must hold at least n_fft={self._config.n_fft} samples")
    with tf.control_dependencies([check]):
      return {"magnitude": streaming.segment_spectrum(segment, self._config)}

  def _stream_encode_spectrum(self, magnitude, peak, agc_state, context):
    check = tf.debugging.assert_positive(
        tf.shape(magnitude)[0], message="magnitude must hold at least one frame")
    with tf.control_dependencies([check]):
      pooled, state, carried = streaming.encode_spectrum(
          self.encoder, magnitude, peak, agc_state, context, self._config)
    return {"pooled": pooled, "agc_state": state, "context": carried}

  def _probabilities_from_embedding(self, embedding):
    return {"probabilities": self.tagger(embedding, training=False)}


# --- model directory → module ---------------------------------------------------------


def load_audio_settings(model_dir: str, data_dir: Optional[str] = None
                        ) -> Tuple[FrontendConfig, str]:
  """The front end and channel mode a model was trained with.

  Looked up in ``model_dir/frontend.json``, then in ``data_dir/metadata.json``
  (``"frontend"`` and ``"channel_mode"``, written by ``deepbof-preprocess``); the
  defaults (the authors' configuration) and ``"first"`` otherwise (with a warning).

  Args:
    model_dir: the trained model directory.
    data_dir: the preprocessed dataset the model was trained on (optional).
  """
  from deepbof_tf import config as config_lib
  candidates = [posixpath.join(model_dir, FRONTEND_FILE)]
  if data_dir:
    candidates.append(posixpath.join(data_dir, "metadata.json"))
  for path in candidates:
    if tf.io.gfile.exists(path):
      with tf.io.gfile.GFile(path, "r") as f:
        values = json.load(f)
      channel_mode = values.get("channel_mode", "first")
      values = values.get("frontend", values)
      values = {k: v for k, v in values.items() if k != "channel_mode"}
      return config_lib.from_dict(FrontendConfig, values), channel_mode
  from absl import logging
  logging.warning("no front-end configuration in %s; exporting with the default front "
                  "end (pass --data_dir to use the dataset's metadata.json)", candidates)
  return FrontendConfig(), "first"


def build_module(model_dir: str, work_dir: str, data_dir: Optional[str] = None,
                 pool_frames: Optional[int] = None,
                 clips_in_flight: int = DEFAULT_CLIPS_IN_FLIGHT,
                 max_request_seconds: float = DEFAULT_MAX_REQUEST_SECONDS,
                 fused_frontend: bool = DEFAULT_FUSED_FRONTEND) -> DeepBofServingModule:
  """Builds the serving module of a trained model directory.

  Args:
    model_dir: the ``--model_dir`` of ``deepbof-train`` (``local/``, ``tagger.keras``,
      ``tags.json``).
    work_dir: a directory for the asset files (copied into the export).
    data_dir: the dataset the model was trained on, for its front-end settings.
    pool_frames: override the encoder's pooling window (None: as trained).
    clips_in_flight: see ``DeepBofServingModule``.
    max_request_seconds: see ``DeepBofServingModule``.
    fused_frontend: see ``DeepBofServingModule``.
  """
  import keras
  from deepbof_tf import models
  # The export is float32 at its signatures whatever the global policy (a training run
  # may have set mixed_float16): every layer is built here under float32.
  previous_policy = keras.config.dtype_policy()
  keras.config.set_dtype_policy("float32")
  try:
    encoder = models.load_bof_encoder(model_dir, pool_frames=pool_frames)
    tagger = models.load_tagger(model_dir)
  finally:
    keras.config.set_dtype_policy(previous_policy)
  tag_names = models.load_tag_names(model_dir)
  config, channel_mode = load_audio_settings(model_dir, data_dir)
  tags_path = os.path.join(work_dir, TAGS_ASSET_FILE)
  with open(tags_path, "w", encoding="utf-8") as f:
    f.write("".join(f"{tag}\n" for tag in tag_names))
  info_path = os.path.join(work_dir, EXPORT_INFO_FILE)
  write_json(info_path, export_info(config, encoder, tag_names, channel_mode,
                                    clips_in_flight, max_request_seconds, fused_frontend))
  return DeepBofServingModule(encoder, tagger, tag_names, config, tags_path, info_path,
                              clips_in_flight=clips_in_flight,
                              max_request_seconds=max_request_seconds,
                              fused_frontend=fused_frontend)


def export_info(config: FrontendConfig, encoder, tag_names: Sequence[str],
                channel_mode: str = "first",
                clips_in_flight: int = DEFAULT_CLIPS_IN_FLIGHT,
                max_request_seconds: float = DEFAULT_MAX_REQUEST_SECONDS,
                fused_frontend: bool = DEFAULT_FUSED_FRONTEND) -> Dict[str, Any]:
  """The JSON description of an export (``assets/deepbof_export.json``)."""
  import deepbof_tf
  return {
      "deepbof_version": deepbof_tf.__version__,
      "frontend": dataclasses.asdict(config),
      # How the training audio was made mono; deepbof-tag uses it by default.
      "channel_mode": channel_mode,
      "block_frames": int(encoder.block_frames),
      "pool_frames": int(encoder.pool_frames),
      "embedding_size": int(encoder.rbm.num_hidden),
      "min_samples": min_samples(config, int(encoder.block_frames)),
      "clips_in_flight": int(clips_in_flight),
      "max_request_seconds": float(max_request_seconds),
      "max_request_samples": int(round(max_request_seconds * config.sample_rate)),
      # True: the one-shot signatures use the DeepbofLogMel op (load
      # deepbof_tf.native.frontend_op before tf.saved_model.load).
      "fused_frontend": bool(fused_frontend),
      "tags": list(tag_names),
      "signatures": [DEFAULT_SIGNATURE, PADDED_SIGNATURE, WAV_SIGNATURE, TAGS_SIGNATURE,
                     STREAM_PEAK_SIGNATURE, STREAM_ENCODE_SIGNATURE,
                     STREAM_SPECTRUM_SIGNATURE, STREAM_ENCODE_SPECTRUM_SIGNATURE,
                     HEAD_SIGNATURE],
  }


# --- versions and writing ---------------------------------------------------------------



def next_version(export_dir: str) -> int:
  """One more than the newest existing version (1 for a new model base path)."""
  versions = existing_versions(export_dir)
  return versions[-1] + 1 if versions else 1



def export(model_dir: str, export_dir: str, version: Optional[int] = None,
           data_dir: Optional[str] = None, pool_frames: Optional[int] = None,
           clips_in_flight: int = DEFAULT_CLIPS_IN_FLIGHT,
           max_request_seconds: float = DEFAULT_MAX_REQUEST_SECONDS,
           fused_frontend: bool = DEFAULT_FUSED_FRONTEND) -> str:
  """Exports ``model_dir`` to ``export_dir/<version>/`` and returns that path.

  The SavedModel is written to a temporary directory next to the target and renamed
  into place, so TF Serving (which polls ``export_dir``) never sees a partial version.

  Args:
    model_dir: the trained model directory.
    export_dir: the TF Serving model base path.
    version: the integer version; None takes the next one after the existing versions
      (1 for a new ``export_dir``). An existing version is never overwritten.
    data_dir: the dataset the model was trained on (front-end settings).
    pool_frames: override the encoder's pooling window.
    clips_in_flight: clips of a request computed at once (``DeepBofServingModule``).
    max_request_seconds: the longest clip of a one-shot request
      (``DeepBofServingModule``).
    fused_frontend: the fused front-end kernel in the one-shot signatures
      (``DeepBofServingModule``; not loadable by a stock TF Serving binary).
  """
  versions = existing_versions(export_dir)
  if version is None:
    version = next_version(export_dir)
  if version < 0:
    raise ValueError(f"version must be a non-negative integer, got {version}")
  target = posixpath.join(export_dir, str(version))
  if tf.io.gfile.exists(target):
    raise FileExistsError(f"{target} exists; choose another --version (existing: "
                          f"{versions}) or leave --version unset for the next one")
  tf.io.gfile.makedirs(export_dir)
  work_dir = tempfile.mkdtemp(prefix="deepbof_export_assets_")
  temp_target = posixpath.join(export_dir, f".tmp-{version}-{os.getpid()}")
  try:
    module = build_module(model_dir, work_dir, data_dir, pool_frames, clips_in_flight,
                          max_request_seconds, fused_frontend)
    tf.saved_model.save(module, temp_target, signatures=module.signatures())
    tf.io.gfile.rename(temp_target, target, overwrite=False)
  finally:
    shutil.rmtree(work_dir, ignore_errors=True)
    if tf.io.gfile.exists(temp_target):
      tf.io.gfile.rmtree(temp_target)
  return target


