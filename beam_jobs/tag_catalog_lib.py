"""The catalogue tagging pipeline: audio files → tags and embeddings (Apache Beam).

Library module of ``deepbof-tag-catalog`` (the absl entry point is ``tag_catalog.py``;
the output's schema is in docs/catalog.md). Every number comes from the exported
SavedModel (``deepbof-export``), loaded in the workers with ``tf.saved_model.load``,
so the catalogue holds what ``deepbof-tag`` prints for the same files.

Data flow:

1. The inputs are a file pattern (``fileio.MatchFiles``, local or ``gs://``) or a
   manifest (``deepbof_tf.data.manifests``, the preprocess CSV and MagnaTagATune
   formats); the paths are spread over the workers (``Reshuffle``).
2. :class:`DecodeAudioDoFn` decodes each file once at its native rate
   (``deepbof_tf.streaming.ResampledNativeWaveform``: libsndfile or FFmpeg, chosen by
   content; the length is what decodes). A recording up to ``one_shot_seconds`` is
   resampled whole and goes to the one-shot branch; a longer one is encoded right
   there (4.). The decode runs in a decoder child process
   (``beam_jobs.decode_process``) that is killed and restarted when one file takes
   longer than ``file_timeout_s``: that file becomes a "timeout" error and the
   worker goes on.
3. One-shot: Beam's ``RunInference`` with its TensorFlow model handler
   (:class:`DeepBofModelHandler`, batched by ``min_batch_size``/``max_batch_size`` and
   at most ``max_batch_size × chunk_seconds`` of audio per batch) runs
   ``serving_padded`` on groups of similar lengths: probabilities and the
   bag-of-features.
4. Chunked: the recording is resampled once into a store (memory, or a temporary
   file) and the export's two streaming passes (``stream_spectrum``, then
   ``stream_encode_spectrum`` on the kept magnitudes, the AGC state and the last
   block's frames carried from chunk to chunk, which is why one file's chunks run in
   order in one DoFn call) read one chunk at a time from it; one partial result per chunk goes out, keyed by path: the
   chunk index, the sum of its max-pooling windows and their count.
   :class:`BagOfFeaturesCombineFn` (``CombinePerKey``) adds them up and checks that
   every chunk arrived; sum / count is exactly the one-shot bag-of-features (the mean
   of all pooling windows). ``RunInference`` then runs the model's head
   (``probabilities_from_embedding``) on the combined bag-of-features, batched.
5. Both branches give ``(path, num_samples, probabilities, embedding)``;
   :class:`FormatRecordDoFn` adds the top-k tags and the records are written twice,
   as sharded gzip TFRecords of ``tf.train.Example`` (``WriteToTFRecord``) and as
   Parquet (``WriteToParquet`` with :func:`parquet_schema`).
   With ``segment_seconds`` (docs/catalog.md, "Search by excerpt") a record also holds
   the track's segment embeddings (``deepbof_tf.segments``), from the windows of the
   track's embedding: the chunked path adds per-segment window sums to each partial
   (:class:`SegmentedBagOfFeaturesCombineFn`), the one-shot path encodes each clip's
   windows with the streaming signatures (:func:`segmented_waveform_inference_fn`).
   Without it nothing of this runs and the outputs are those of earlier versions.
6. A failing input becomes one error record ``{path, stage, error}`` (stages
   :data:`STAGES`) written to ``errors/errors-*.jsonl``; a ``_summary.json`` with the
   counts of inputs, records and errors lets the launcher reconcile them
   (matched = tagged + failed) with the Beam counters and write ``metadata.json``.

A catalogue grows (docs/catalog.md, "Growing a catalogue"): its launcher,
``beam_jobs.catalog_runs``, lists the input, chooses the files the catalogue does not
hold and runs this pipeline once per slice of ``part_max_files`` of them, each slice's
outputs written into a work directory that becomes a part of the catalogue. DoFns take
every setting as a constructor argument and import TensorFlow in ``setup()``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from beam_jobs import decode_process
from beam_jobs import job_io
from beam_jobs import worker_threads
from beam_jobs.job_io import beam  # apache_beam, imported with crcmod's warning dropped
from apache_beam.io import fileio
from apache_beam.ml.inference import base as inference_base

from deepbof_tf import audio
from deepbof_tf import catalog_parts
from deepbof_tf import exported
from deepbof_tf import framing
from deepbof_tf import segments
from deepbof_tf.config import (DEFAULT_CATALOG_TOP_K, DEFAULT_CHUNK_SECONDS,
                               DEFAULT_TAG_BATCH_SIZE)

# Recordings up to this long are tagged in one piece, batched across files; longer
# ones are resampled once and encoded chunk by chunk in bounded memory. Measured on
# 4-minute tracks (docs/benchmarks.md): chunked, the worker's peak memory is that of
# 30-s clips; in one piece it grows with the track (+33 %) and is no faster in Beam.
DEFAULT_ONE_SHOT_SECONDS = DEFAULT_CHUNK_SECONDS
# The longest one file's decode may take (TagCatalogConfig.file_timeout_s).
DEFAULT_FILE_TIMEOUT_S = 600.0
from deepbof_tf.data import schema

# The run protocol's (beam_jobs.job_io): the error output, its files, the metadata file.
ERROR_TAG = job_io.ERROR_TAG
ERRORS_DIR = schema.ERRORS_DIR
ERRORS_SUFFIX = job_io.ERRORS_SUFFIX
METADATA_FILE = schema.METADATA_FILE
PARTIALS_TAG = "partials"
STAGES = ("read", "decode", "timeout", "validate", "encode", "combine", "inference")
SUMMARY_FILE = job_io.SUMMARY_FILE  # read back by job_io.pop_summary
PARQUET_DIR = catalog_parts.PARQUET_DIR
TFRECORD_DIR = catalog_parts.TFRECORD_DIR
SHARD_PREFIX = "tags"
PARQUET_SUFFIX = ".parquet"
TFRECORD_SUFFIX = ".tfrecord.gz"
INPUT_FORMATS = ("auto", "pattern", "csv", "mtt")
FORMAT_VERSION = 1
# Incremental runs (docs/catalog.md): files per part, and what makes a file "the same".
DEFAULT_PART_MAX_FILES = 5000
# A local run starts one more worker process only for this many more files: a worker's
# start-up (Python, Beam, TensorFlow, the model) costs about as much as tagging 50
# 30-s clips, so a small daily increment is tagged in the launching process
# (docs/benchmarks.md, "Incremental catalogue").
DEFAULT_MIN_FILES_PER_WORKER = 50
IDENTITIES = ("stat", "content")

# The record fields (Parquet columns and tf.train.Example keys alike).
PATH = "path"
DURATION = "duration_seconds"
PROBABILITIES = "probabilities"
TOP_TAGS = "top_tags"
TOP_PROBABILITIES = "top_probabilities"
EMBEDDING = "embedding"


@dataclasses.dataclass(frozen=True)
class TagCatalogConfig:
  """Everything one catalogue run depends on (the flags of ``deepbof-tag-catalog``).

  Args:
    model: a ``deepbof-export`` version directory or base directory (newest version).
    input: a file pattern (``dir/*.mp3``, ``gs://bucket/audio/**``; a directory means
      every file under it) or a manifest.
    output_dir: the catalogue directory to create.
    input_format: "pattern", "csv" (``path,split,tags``), "mtt" (MagnaTagATune
      ``annotations_final.csv``) or "auto" (a ``.csv`` file is a manifest, MTT if
      named ``annotations_final.csv``; anything else is a pattern).
    audio_root: prefix of relative manifest paths.
    top_k: tags kept per file in ``top_tags`` (every probability is stored anyway).
    chunk_seconds: the chunk length of recordings longer than ``one_shot_seconds``,
      and the unit of a batch: RunInference's batches hold about
      ``max_batch_size × chunk_seconds`` of audio.
    one_shot_seconds: recordings up to this long (capped by the export's longest
      one-shot request) are decoded once and tagged in one piece, batched with other
      files by length; longer ones are encoded chunk by chunk.
    channel_mode: "first" or "mean"; None: as the model's training data (the export).
    min_batch_size: RunInference's smallest batch.
    max_batch_size: RunInference's largest batch (clips or bags-of-features).
    num_shards: output files per format; 0 lets the runner choose.
    overwrite: replace an existing non-empty ``output_dir``.
    intra_op_threads: TensorFlow threads per worker process (Beam parallelises over
      processes).
    file_timeout_s: the longest one file's decode may take, in seconds; a file that
      takes longer becomes an error of stage "timeout" and the job goes on. The decode
      then runs in a decoder child process per DoFn instance
      (``beam_jobs.decode_process``), which is killed and restarted on a timeout: a
      decoder hung in C code (FFmpeg, libsndfile) cannot be interrupted in the worker
      itself. 0: no limit, and the file is decoded in the worker process as before.
      The default, 600 s, is a fixed bound rather than one derived from the
      duration, since the duration is only known once the file has decoded (a broken
      header can promise anything); it is about 25 times what a one-hour recording
      takes to decode and resample on one loaded core (docs/catalog.md), and bounds
      a stalled worker to 10 minutes. The limit covers the decode and the
      resampling (all of the file's reads, from its open to the last one, including
      the copy of its samples to the worker); it does not cover the encoding, which
      runs the model in the worker on samples that are already decoded, finite and
      of a known length: a model call takes time in proportion to that length and
      does not hang on unusual input the way a decoder parsing a file can.
    identity: what makes an input file the one the catalogue holds: "stat" (path,
      size and modification time) or "content" (path, size and the sha256 of its
      bytes, read on every run; a new modification time alone re-tags nothing).
    force: re-tag every file the input lists, held or not.
    prune: drop from the catalogue the files the input no longer lists.
    part_max_files: the most files one part holds; the files to tag are cut into
      slices of this many, each tagged by one pipeline run and published as a part.
    segment_seconds: if set, every record also holds one embedding per segment of
      about this many seconds of the track (``deepbof_tf.segments``; docs/catalog.md,
      "Search by excerpt"): the columns ``segment_starts``, ``segment_windows`` and
      ``segment_embeddings``. None (the default): no segments, the outputs of a
      catalogue without them. A catalogue holds one setting (another is refused).
    min_files_per_worker: local runs (the FnApiRunner) start at most one worker per
      this many files of a part, and tag a part of fewer than twice as many in the
      launching process (``--direct_running_mode=in_memory``, one worker); 0 keeps
      ``--direct_num_workers`` and ``--direct_running_mode`` as given. The outputs do
      not depend on it.
  """

  model: str
  input: str
  output_dir: str
  input_format: str = "auto"
  audio_root: str = ""
  top_k: int = DEFAULT_CATALOG_TOP_K
  chunk_seconds: float = DEFAULT_CHUNK_SECONDS
  one_shot_seconds: float = DEFAULT_ONE_SHOT_SECONDS
  channel_mode: Optional[str] = None
  min_batch_size: int = 1
  max_batch_size: int = DEFAULT_TAG_BATCH_SIZE
  num_shards: int = 0
  overwrite: bool = False
  intra_op_threads: int = 1
  file_timeout_s: float = DEFAULT_FILE_TIMEOUT_S
  identity: str = "stat"
  force: bool = False
  prune: bool = False
  part_max_files: int = DEFAULT_PART_MAX_FILES
  segment_seconds: Optional[float] = None
  min_files_per_worker: int = DEFAULT_MIN_FILES_PER_WORKER

  def __post_init__(self):
    if self.input_format not in INPUT_FORMATS:
      raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got "
                       f"{self.input_format!r}")
    if self.channel_mode not in (None, *audio.CHANNEL_MODES):
      raise ValueError(f"channel_mode must be {' or '.join(map(repr, audio.CHANNEL_MODES))}"
                       f", got {self.channel_mode!r}")
    if self.chunk_seconds < 1.0:
      raise ValueError(f"chunk_seconds must be >= 1, got {self.chunk_seconds}")
    if self.one_shot_seconds < 1.0:
      raise ValueError(f"one_shot_seconds must be >= 1, got {self.one_shot_seconds}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 1 <= self.min_batch_size <= self.max_batch_size:
      raise ValueError(f"need 1 <= min_batch_size <= max_batch_size, got "
                       f"{self.min_batch_size}, {self.max_batch_size}")
    if self.min_files_per_worker < 0:
      raise ValueError(f"min_files_per_worker must be >= 0, got "
                       f"{self.min_files_per_worker}")
    if self.num_shards < 0:
      raise ValueError(f"num_shards must be >= 0, got {self.num_shards}")
    if not self.file_timeout_s >= 0:
      raise ValueError(f"file_timeout_s must be >= 0, got {self.file_timeout_s}")
    if self.identity not in IDENTITIES:
      raise ValueError(f"identity must be one of {IDENTITIES}, got {self.identity!r}")
    if self.part_max_files < 1:
      raise ValueError(f"part_max_files must be >= 1, got {self.part_max_files}")
    if not self.model or not self.input or not self.output_dir:
      raise ValueError("model, input and output_dir must not be empty")
    segments.check_segment_seconds(self.segment_seconds)


def resolved_input_format(config: TagCatalogConfig) -> str:
  """``config.input_format`` with "auto" decided from the input's name."""
  if config.input_format != "auto":
    return config.input_format
  name = config.input.rstrip("/").rsplit("/", 1)[-1].lower()
  if name.endswith(".csv") and not any(c in config.input for c in "*?["):
    return "mtt" if name == "annotations_final.csv" else "csv"
  return "pattern"


def input_pattern(path: str) -> str:
  """The ``MatchFiles`` pattern of an input: a directory means every file under it
  (``**`` matches across subdirectories, ``*`` within one)."""
  fs = job_io.file_system(path)
  if not any(c in path for c in "*?[") and fs.isdir(path):
    return job_io.join(path.rstrip("/"), "**")
  return path


# --------------------------------------------------------------------------------------
# Errors and counters.
# --------------------------------------------------------------------------------------


def error_record(path: str, stage: str, error: Any) -> Dict[str, str]:
  """``{path, stage, error}``; the message starts with the path and says the problem."""
  message = str(error) or type(error).__name__
  if isinstance(error, BaseException):
    message = decode_process.error_message(error)  # as the decoder process says it
  if not message.startswith(path):
    message = f"{path}: {message}"
  return {"path": path, "stage": stage, "error": message}


def _stage_of(error: BaseException, path: str) -> str:
  """"read" for a missing or unreadable file, "decode" for anything about its content."""
  return decode_process.read_or_decode_stage(error, path)


# --------------------------------------------------------------------------------------
# RunInference's model handler on the export.
# --------------------------------------------------------------------------------------


def _attributed(model, batch, run_batch, run_one) -> List[Any]:
  """Runs a whole batch; if it fails, each example alone, so only a bad one fails."""
  try:
    return run_batch(batch)
  except Exception:  # pylint: disable=broad-except
    out = []
    for example in batch:
      try:
        out.extend(run_batch([example]))
      except Exception as error:  # pylint: disable=broad-except
        out.append({"error": run_one(error)})
    return out


_MODELS: Dict[str, exported.ExportedModel] = {}
_MODELS_LOCK = threading.Lock()


def shared_model(model_uri: str, intra_op_threads: int = 1) -> exported.ExportedModel:
  """The export loaded once per worker process, for every step that runs it.

  ``RunInference`` (clips, the head) and the chunk encoder of :class:`DecodeAudioDoFn`
  use the same loaded SavedModel: one copy of its graphs and weights per process (a
  second copy costs ~100 MB of worker memory). Its signatures may be called from
  several threads at once.
  """
  with _MODELS_LOCK:
    if model_uri not in _MODELS:
      worker_threads.limit_threads(intra_op_threads)
      _MODELS[model_uri] = exported.ExportedModel(model_uri)
    return _MODELS[model_uri]


def _waveform_samples(element) -> int:
  """A (keyed) waveform's weight in a batch: its samples."""
  waveform = element[1] if isinstance(element, tuple) else element
  return max(1, int(np.shape(waveform)[0]))


def waveform_inference_fn(model: exported.ExportedModel, batch: Sequence[np.ndarray],
                          inference_args: Dict[str, Any],
                          model_id: Optional[str] = None
                          ) -> Iterable[inference_base.PredictionResult]:
  """RunInference on whole recordings: ``serving_padded`` on zero-padded groups.

  Each example is a float32 waveform at the model's rate; the batch is sent in groups
  of similar lengths (``ExportedModel.tag_waveforms``). The result's ``example`` is its
  length (the waveform itself is not carried on) and its ``inference`` a dict of
  ``probabilities`` and ``embedding`` (or ``error``).
  """
  del inference_args

  def run_batch(waveforms):
    probabilities, embeddings = model.tag_waveforms(list(waveforms))
    return [{"probabilities": p, "embedding": e} for p, e in zip(probabilities, embeddings)]

  outputs = _attributed(model, batch, run_batch, str)
  return [inference_base.PredictionResult(int(w.shape[0]), out, model_id)
          for w, out in zip(batch, outputs)]


def window_clock(model: exported.ExportedModel) -> segments.WindowClock:
  """Where the export's pooling windows lie in time (``deepbof_tf.segments``)."""
  return segments.WindowClock(model.pool_frames, model.config.hop_length,
                              model.sample_rate)


def segmented_waveform_inference_fn(model: exported.ExportedModel,
                                    batch: Sequence[np.ndarray],
                                    inference_args: Dict[str, Any],
                                    model_id: Optional[str] = None,
                                    segment_seconds: float = 0.0
                                    ) -> Iterable[inference_base.PredictionResult]:
  """RunInference on whole recordings of a catalogue with segments.

  The segments need every pooling window, which ``serving_padded`` does not return,
  so each recording's windows come from the export's streaming signatures on its
  samples in memory (``ExportedModel.pooled_windows``, one chunk: the path of long
  recordings, which gives the one-shot numbers to float rounding); the track's
  bag-of-features is their mean, so it and the segments come from one computation,
  and the model's head then runs on the batch's bags-of-features. Each result's
  ``inference`` has ``probabilities``, ``embedding`` and the segment fields of
  ``deepbof_tf.segments.finish`` (or ``error``).
  """
  del inference_args
  from deepbof_tf import streaming
  clock = window_clock(model)

  def encode(waveform):
    n = int(waveform.shape[0])
    whole = max(1, -(-framing.frame_count(n, model.config) // model.pool_frames))
    pooled = model.pooled_windows(streaming.InMemoryWaveform(waveform, model.sample_rate),
                                  whole)
    out = segments.segments_of_windows(pooled, segment_seconds, clock)
    out["embedding"] = streaming.mean_of_windows([pooled])
    return out

  def run_batch(waveforms):
    outs = [encode(w) for w in waveforms]
    probabilities = model.probabilities(np.stack([o["embedding"] for o in outs]))
    return [dict(o, probabilities=p) for o, p in zip(outs, probabilities)]

  outputs = _attributed(model, batch, run_batch, str)
  return [inference_base.PredictionResult(int(w.shape[0]), out, model_id)
          for w, out in zip(batch, outputs)]


def embedding_inference_fn(model: exported.ExportedModel,
                           batch: Sequence[Mapping[str, Any]],
                           inference_args: Dict[str, Any],
                           model_id: Optional[str] = None
                           ) -> Iterable[inference_base.PredictionResult]:
  """RunInference on combined bags-of-features: the model's head, batched.

  Each example is ``{"embedding": float32 [H], "num_samples": int}``.
  """
  del inference_args

  def run_batch(examples):
    probabilities = model.probabilities(np.stack([e["embedding"] for e in examples]))
    outs = [{"probabilities": p, "embedding": e["embedding"]}
            for p, e in zip(probabilities, examples)]
    for out, e in zip(outs, examples):  # a catalogue with segments: carried on
      out.update({k: e[k] for k in segments.SEGMENT_FIELDS if k in e})
    return outs

  outputs = _attributed(model, batch, run_batch, str)
  return [inference_base.PredictionResult(int(e["num_samples"]), out, model_id)
          for e, out in zip(batch, outputs)]


class DeepBofModelHandler(inference_base.ModelHandler):
  """RunInference's model handler for a ``deepbof-export`` SavedModel.

  Beam's ``TFModelHandlerTensor`` loads with ``tf.keras.models.load_model`` (with
  Keras 3 it cannot read a plain SavedModel), and its module imports tensorflow_hub,
  which needs setuptools' ``pkg_resources`` (absent from the setuptools 84 installed
  here) and pulls in tf-keras; this small handler loads the export with
  ``tf.saved_model.load`` (``deepbof_tf.exported.ExportedModel``) and runs one of its
  signatures through ``inference_fn``, with the same contract as the TF handler's
  ``inference_fn`` (``(model, batch, inference_args, model_id) → PredictionResults``).
  Batching (``BatchElements`` with ``min_batch_size``/``max_batch_size``), sharing the
  model between a worker's threads, the dead-letter output and the inference metrics
  are RunInference's own.

  Args:
    model_uri: the export (version or base directory).
    inference_fn: :func:`waveform_inference_fn` or :func:`embedding_inference_fn`.
    intra_op_threads: TensorFlow threads of the worker process.
    min_batch_size, max_batch_size: RunInference's batching.
    max_batch_samples: if set, a batch also holds at most this many samples in all
      (one longer recording is a batch of its own): the memory of a batch of long
      tracks is that of a batch of clips.
  """

  def __init__(self, model_uri: str, inference_fn, intra_op_threads: int = 1,
               min_batch_size: int = 1, max_batch_size: int = DEFAULT_TAG_BATCH_SIZE,
               max_batch_samples: Optional[int] = None):
    weights = ({} if max_batch_samples is None else
               {"max_batch_weight": int(max_batch_samples),
                "element_size_fn": _waveform_samples})
    super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size,
                     **weights)
    self._model_uri = model_uri
    self._inference_fn = inference_fn
    self._intra_op_threads = intra_op_threads

  def load_model(self) -> exported.ExportedModel:
    return shared_model(self._model_uri, self._intra_op_threads)

  def run_inference(self, batch: Sequence[Any], model: exported.ExportedModel,
                    inference_args: Optional[Dict[str, Any]] = None
                    ) -> Iterable[inference_base.PredictionResult]:
    return self._inference_fn(model, batch, inference_args or {}, self._model_uri)

  def update_model_path(self, model_path: Optional[str] = None):
    self._model_uri = model_path or self._model_uri

  def get_num_bytes(self, batch: Sequence[Any]) -> int:
    return sum(int(getattr(e, "nbytes", 0)) or 8 for e in batch)

  def get_metrics_namespace(self) -> str:
    return "deepbof_RunInference"


# --------------------------------------------------------------------------------------
# DoFns.
# --------------------------------------------------------------------------------------


class DecodeAudioDoFn(beam.DoFn):
  """Decodes one file once; a long recording is encoded chunk by chunk right here.

  Main output: ``(path, waveform float32)`` for recordings up to ``one_shot_samples``
  (tagged by ``RunInference``). Tagged output ``partials``: for a longer recording,
  ``(path, {"chunk", "num_chunks", "window_sum" float64 [H], "num_windows",
  "num_samples"})`` per chunk, emitted once the whole file has been encoded (a file
  that fails half-way emits only its error record). Tagged output ``errors``: one record
  per failed input ("read": missing/unreadable; "decode": empty, not audio, truncated,
  NaN/Inf samples, or the decoder process died on it; "timeout": the decode took longer
  than ``file_timeout_s``; "validate": shorter than one block; "encode": the export
  failed).

  With ``file_timeout_s`` > 0 the file is opened and resampled in this instance's
  decoder child process (``beam_jobs.decode_process.DecoderProcess``, started once,
  restarted after a timeout or a crash), which is killed when one file's decode takes
  longer; the worker gets the same samples through a pipe. The encoding of a long
  recording runs here, on the decoded samples, outside the limit (see
  :class:`TagCatalogConfig`).

  A long recording is resampled once into a store (memory, or a temporary file when
  long) and the export's two streaming passes read its chunks from there
  (``deepbof_tf.exported.ExportedModel.iter_pooled_windows``): one decode and one
  resampling per file, one chunk's samples in TensorFlow at a time. The export is
  loaded on the first long recording, so a worker that sees none never loads it.

  Args:
    sample_rate: the model's rate.
    channel_mode: "first" or "mean".
    min_samples: the shortest recording the model takes.
    one_shot_samples: the longest recording tagged in one piece.
    model_uri: the export (for the chunked encoding).
    chunk_seconds: chunk length (rounded to whole pooling windows).
    intra_op_threads: TensorFlow threads of the worker process.
    memory_limit: bytes of samples a store keeps in memory (None: the library's).
    file_timeout_s: the longest one file's decode may take, in seconds (0: no limit,
      decoded in this process).
    segment_seconds: if set, each partial also holds ``"segments"``: the chunk's
      window sums per segment (``deepbof_tf.segments.chunk_segment_sums``).
  """

  def __init__(self, sample_rate: int, channel_mode: str, min_samples: int,
               one_shot_samples: int, model_uri: Optional[str] = None,
               chunk_seconds: float = DEFAULT_CHUNK_SECONDS, intra_op_threads: int = 1,
               memory_limit: Optional[int] = None, file_timeout_s: float = 0.0,
               segment_seconds: Optional[float] = None):
    self._sample_rate = sample_rate
    self._channel_mode = channel_mode
    self._min_samples = min_samples
    self._one_shot_samples = one_shot_samples
    self._model_uri = model_uri
    self._chunk_seconds = chunk_seconds
    self._intra_op_threads = intra_op_threads
    self._memory_limit = memory_limit
    self._file_timeout_s = float(file_timeout_s)
    self._segment_seconds = segment_seconds
    self._matched = job_io.counter("files_matched")
    self._short = job_io.counter("files_one_shot")
    self._long = job_io.counter("files_chunked")
    self._chunks = job_io.counter("chunks_encoded")

  def setup(self):
    from deepbof_tf import streaming
    self._streaming = streaming
    self._model = None
    self._decoder = (decode_process.DecoderProcess(self._file_timeout_s)
                     if self._file_timeout_s > 0 else None)

  def teardown(self):
    if getattr(self, "_decoder", None) is not None:
      self._decoder.stop()

  def _open(self, path: str):
    """The file decoded here, or in the decoder process when there is a limit."""
    if self._decoder is None:
      return self._streaming.ResampledNativeWaveform(path, self._sample_rate,
                                                     self._channel_mode)
    return self._decoder.open(path, self._sample_rate, self._channel_mode)

  def _fail(self, path, stage, error):
    logging.warning("%s: %s failed: %s", path, stage, error)
    return beam.pvalue.TaggedOutput(ERROR_TAG, error_record(path, stage, error))

  def _loaded_model(self) -> exported.ExportedModel:
    if self._model is None:
      if self._model_uri is None:
        raise ValueError("a recording longer than one_shot_samples, and no model_uri")
      self._model = shared_model(self._model_uri, self._intra_op_threads)
    return self._model

  def process(self, path: str) -> Iterator[Any]:
    self._matched.inc()
    try:
      source = self._open(path)
    except decode_process.DecodeTimeout as e:
      yield self._fail(path, "timeout", str(e))
      return
    except Exception as e:  # pylint: disable=broad-except
      yield self._fail(path, _stage_of(e, path), e)
      return
    store = waveform = error = None
    try:  # the decoded file is closed before anything is emitted (its memory freed)
      n = source.num_samples
      if n < self._min_samples:
        error = ("validate", ValueError(
            f"{path}: too short: {n} samples ({n / self._sample_rate:.3f} s); the model "
            f"needs at least {self._min_samples} samples (one block)"))
      elif n <= self._one_shot_samples:
        waveform = source.read(0, n)
      else:
        store = self._streaming.resampled_store(source, self._memory_limit)
    except decode_process.DecodeTimeout as e:
      error = ("timeout", str(e))
    except Exception as e:  # pylint: disable=broad-except
      error = ("decode", e)
    finally:
      source.close()
    if error is not None:
      yield self._fail(path, *error)
    elif waveform is not None:
      self._short.inc()
      yield path, waveform
    else:
      yield from self._encode_chunks(path, store)

  def _encode_chunks(self, path: str, store) -> Iterator[Any]:
    self._long.inc()
    partials = []
    by_segment = []  # per chunk, its windows' sums per segment (segment_seconds)
    try:
      model = self._loaded_model()
      windows_per_chunk = model.windows_per_seconds(self._chunk_seconds)
      first_window = 0
      for pooled in model.iter_pooled_windows(store, windows_per_chunk):
        partials.append((np.asarray(pooled, np.float64).sum(axis=0), pooled.shape[0]))
        if self._segment_seconds:
          by_segment.append(segments.chunk_segment_sums(
              pooled, first_window, self._segment_seconds, window_clock(model)))
        first_window += int(pooled.shape[0])
    except Exception as e:  # pylint: disable=broad-except
      yield self._fail(path, "encode", e)
      return
    finally:
      store.close()
    for index, (window_sum, count) in enumerate(partials):
      self._chunks.inc()
      partial = {
          "chunk": index, "num_chunks": len(partials), "window_sum": window_sum,
          "num_windows": int(count), "num_samples": int(store.num_samples)}
      if by_segment:
        partial["segments"] = by_segment[index]
      yield beam.pvalue.TaggedOutput(PARTIALS_TAG, (path, partial))


class BagOfFeaturesCombineFn(beam.CombineFn):
  """Per file: the chunks' window sums and counts → the bag-of-features.

  The accumulator is ``[window_sum float64 [H] | None, num_windows, chunks seen (set),
  num_chunks, num_samples]``. The output is ``{"embedding": float32 [H], "num_samples"}``
  (sum / count, the mean of all pooling windows as one-shot), or ``{"error": …}`` when
  a chunk is missing or repeated.
  """

  def create_accumulator(self):
    return [None, 0, [], 0, 0]

  def add_input(self, acc, partial):
    acc[0] = partial["window_sum"] if acc[0] is None else acc[0] + partial["window_sum"]
    acc[1] += partial["num_windows"]
    acc[2].append(partial["chunk"])
    acc[3] = partial["num_chunks"]
    acc[4] = partial["num_samples"]
    return acc

  def merge_accumulators(self, accumulators):
    out = self.create_accumulator()
    for acc in accumulators:
      if acc[0] is not None:
        out[0] = acc[0] if out[0] is None else out[0] + acc[0]
      out[1] += acc[1]
      out[2].extend(acc[2])
      out[3] = max(out[3], acc[3])
      out[4] = max(out[4], acc[4])
    return out

  def extract_output(self, acc):
    window_sum, count, chunks, num_chunks, num_samples = acc
    if sorted(chunks) != list(range(num_chunks)) or count == 0:
      return {"error": f"chunks {sorted(chunks)} received of {num_chunks} expected",
              "num_samples": num_samples}
    return {"embedding": (window_sum / count).astype(np.float32),
            "num_samples": num_samples}


class SegmentedBagOfFeaturesCombineFn(BagOfFeaturesCombineFn):
  """:class:`BagOfFeaturesCombineFn` that also adds the chunks' per-segment sums.

  The accumulator has a sixth slot, ``{segment: (window_sum, count, first window)}``
  (``deepbof_tf.segments.add_sums``); the output also has the segment fields of
  ``deepbof_tf.segments.finish`` (each segment's mean over its windows, which may come
  from two chunks).

  Args:
    clock: the export's ``deepbof_tf.segments.WindowClock``.
  """

  def __init__(self, clock: segments.WindowClock):
    self._clock = clock

  def create_accumulator(self):
    return super().create_accumulator() + [{}]

  def add_input(self, acc, partial):
    super().add_input(acc, partial)
    segments.add_sums(acc[5], partial["segments"])
    return acc

  def merge_accumulators(self, accumulators):
    accumulators = list(accumulators)
    out = super().merge_accumulators(accumulators)
    for acc in accumulators:
      segments.add_sums(out[5], acc[5])
    return out

  def extract_output(self, acc):
    out = super().extract_output(acc[:5])
    if "error" not in out:
      out.update(segments.finish(acc[5], self._clock))
    return out


def _split_combined(element):
  path, combined = element
  if "error" in combined:
    yield beam.pvalue.TaggedOutput(ERROR_TAG, error_record(path, "combine",
                                                           combined["error"]))
  else:
    yield path, combined


class FormatRecordDoFn(beam.DoFn):
  """``(path, PredictionResult)`` → the catalogue record, or an ``inference`` error.

  Args:
    tags: the model's tag vocabulary.
    top_k: tags kept in ``top_tags``.
    sample_rate: the model's rate (for ``duration_seconds``).
  """

  def __init__(self, tags: Sequence[str], top_k: int, sample_rate: int):
    self._tags = list(tags)
    self._top_k = top_k
    self._sample_rate = sample_rate
    self._tagged = job_io.counter("files_tagged")

  def process(self, element) -> Iterator[Any]:
    path, result = element
    out = result.inference
    if "error" in out:
      yield beam.pvalue.TaggedOutput(ERROR_TAG, error_record(path, "inference",
                                                             out["error"]))
      return
    probabilities = np.asarray(out["probabilities"], np.float32)
    embedding = np.asarray(out["embedding"], np.float32)
    if not (np.isfinite(probabilities).all() and np.isfinite(embedding).all()):
      yield beam.pvalue.TaggedOutput(ERROR_TAG, error_record(
          path, "inference", "non-finite probabilities or embedding"))
      return
    segment_fields = {}
    if segments.SEGMENT_EMBEDDINGS in out:  # a catalogue with segments
      parts = np.asarray(out[segments.SEGMENT_EMBEDDINGS], np.float32)
      if not np.isfinite(parts).all():
        yield beam.pvalue.TaggedOutput(ERROR_TAG, error_record(
            path, "inference", "non-finite segment embeddings"))
        return
      segment_fields = {
          segments.SEGMENT_STARTS: np.asarray(out[segments.SEGMENT_STARTS],
                                              np.float32).tolist(),
          segments.SEGMENT_WINDOWS: [int(c) for c in out[segments.SEGMENT_WINDOWS]],
          segments.SEGMENT_EMBEDDINGS: parts.tolist()}
    chosen = exported.top_tags(probabilities, self._tags, self._top_k)
    self._tagged.inc()
    yield {PATH: path, DURATION: float(result.example) / self._sample_rate,
           PROBABILITIES: probabilities.tolist(), TOP_TAGS: [t for t, _ in chosen],
           TOP_PROBABILITIES: [p for _, p in chosen], EMBEDDING: embedding.tolist(),
           **segment_fields}


def _failed_batch_errors(element) -> Iterator[Dict[str, str]]:
  """RunInference's dead letters ``(batch, exception)`` → one error per file."""
  batch, error = element
  for item in batch:
    path = item[0] if isinstance(item, tuple) else str(item)
    yield error_record(path, "inference", error)


class CountFailuresDoFn(beam.DoFn):
  """Counts the error records (Beam counter ``files_failed``), whatever stage made them."""

  def __init__(self):
    self._failed = job_io.counter("files_failed")

  def process(self, record):
    self._failed.inc()
    yield record


class SerializeExampleDoFn(beam.DoFn):
  """A catalogue record → a serialized ``tf.train.Example`` (keys as the Parquet columns)."""

  def setup(self):
    import tensorflow as tf
    self._tf = tf

  def process(self, record):
    train = self._tf.train

    def floats(values):
      return train.Feature(float_list=train.FloatList(value=values))

    def strings(values):
      return train.Feature(bytes_list=train.BytesList(value=[v.encode("utf-8")
                                                           for v in values]))

    feature = {
        PATH: strings([record[PATH]]), DURATION: floats([record[DURATION]]),
        PROBABILITIES: floats(record[PROBABILITIES]), TOP_TAGS: strings(record[TOP_TAGS]),
        TOP_PROBABILITIES: floats(record[TOP_PROBABILITIES]),
        EMBEDDING: floats(record[EMBEDDING])}
    if segments.SEGMENT_EMBEDDINGS in record:  # flat: [segments × embedding_size]
      feature[segments.SEGMENT_STARTS] = floats(record[segments.SEGMENT_STARTS])
      feature[segments.SEGMENT_WINDOWS] = train.Feature(int64_list=train.Int64List(
          value=record[segments.SEGMENT_WINDOWS]))
      feature[segments.SEGMENT_EMBEDDINGS] = floats(
          [x for row in record[segments.SEGMENT_EMBEDDINGS] for x in row])
    yield train.Example(features=train.Features(feature=feature)).SerializeToString()


def parquet_schema(with_segments: bool = False):
  """The Parquet schema of a catalogue (docs/catalog.md; ``catalog_parts``'s).

  Args:
    with_segments: add the columns of a catalogue with segments (``segment_starts``
      list<float32>, ``segment_windows`` list<int32>, ``segment_embeddings``
      list<list<float32>>, one inner list per segment).
  """
  schema = catalog_parts.parquet_schema()
  if not with_segments:
    return schema
  import pyarrow as pa
  return pa.schema(list(schema) + [
      (segments.SEGMENT_STARTS, pa.list_(pa.float32())),
      (segments.SEGMENT_WINDOWS, pa.list_(pa.int32())),
      (segments.SEGMENT_EMBEDDINGS, pa.list_(pa.list_(pa.float32())))])


def tfrecord_feature_spec(n_tags: int, embedding_size: int,
                          with_segments: bool = False) -> Dict[str, Any]:
  """``tf.io.parse_single_example`` features of a catalogue TFRecord.

  Args:
    n_tags, embedding_size: from ``metadata.json``.
    with_segments: add the segment features (all of variable length, so sparse;
      ``segment_embeddings`` is flat, ``[segments × embedding_size]``: reshape it to
      ``[-1, embedding_size]``).
  """
  import tensorflow as tf
  spec = {
      PATH: tf.io.FixedLenFeature([], tf.string),
      DURATION: tf.io.FixedLenFeature([], tf.float32),
      PROBABILITIES: tf.io.FixedLenFeature([n_tags], tf.float32),
      TOP_TAGS: tf.io.VarLenFeature(tf.string),
      TOP_PROBABILITIES: tf.io.VarLenFeature(tf.float32),
      EMBEDDING: tf.io.FixedLenFeature([embedding_size], tf.float32),
  }
  if with_segments:
    spec.update({segments.SEGMENT_STARTS: tf.io.VarLenFeature(tf.float32),
                 segments.SEGMENT_WINDOWS: tf.io.VarLenFeature(tf.int64),
                 segments.SEGMENT_EMBEDDINGS: tf.io.VarLenFeature(tf.float32)})
  return spec


class _WriteSummaryDoFn(beam.DoFn):
  """Writes the counts computed from the pipeline's outputs to ``_summary.json``."""

  def __init__(self, path: str):
    self._path = path

  def process(self, unused, matched, tagged, failed, failed_by_stage):
    from deepbof_tf.data import schema
    summary = {"files_matched": matched, "files_tagged": tagged, "files_failed": failed,
               "failed_by_stage": dict(failed_by_stage)}
    schema.write_json(self._path, summary)


# --------------------------------------------------------------------------------------
# The pipeline.
# --------------------------------------------------------------------------------------


def build_pipeline(pipeline: beam.Pipeline, config: TagCatalogConfig,
                   paths: Optional[Sequence[str]], info: Mapping[str, Any],
                   version_dir: str, work_dir: str):
  """Adds the catalogue steps to ``pipeline``; every output goes under ``work_dir``.

  Args:
    pipeline: the Beam pipeline.
    config: the run's configuration.
    paths: the files of a manifest, or None to match ``config.input`` as a pattern.
    info: the export's ``deepbof_export.json``.
    version_dir: the export's version directory.
    work_dir: the (temporary) catalogue directory.
  """
  sample_rate = int(info["frontend"]["sample_rate"])
  channel_mode = config.channel_mode or info.get("channel_mode", "first")
  one_shot = int(config.one_shot_seconds * sample_rate)
  if info.get("max_request_samples"):
    one_shot = min(one_shot, int(info["max_request_samples"]))
  tags = list(info["tags"])
  if paths is None:
    files = (pipeline
             | "Match" >> fileio.MatchFiles(input_pattern(config.input))
             | "Paths" >> beam.Map(lambda m: m.path))
  else:
    files = pipeline | "Paths" >> beam.Create(list(paths))
  files = files | "SpreadFiles" >> beam.Reshuffle()

  segment_seconds = config.segment_seconds
  probed = files | "Decode" >> beam.ParDo(DecodeAudioDoFn(
      sample_rate, channel_mode, int(info["min_samples"]), one_shot, version_dir,
      config.chunk_seconds, config.intra_op_threads,
      file_timeout_s=config.file_timeout_s,
      segment_seconds=segment_seconds)).with_outputs(
          ERROR_TAG, PARTIALS_TAG, main="short")

  def handler(inference_fn, max_batch_samples=None):
    return inference_base.KeyedModelHandler(DeepBofModelHandler(
        version_dir, inference_fn, config.intra_op_threads, config.min_batch_size,
        config.max_batch_size, max_batch_samples))

  batch_samples = int(config.max_batch_size * config.chunk_seconds * sample_rate)
  clip_fn = (functools.partial(segmented_waveform_inference_fn,
                               segment_seconds=segment_seconds)
             if segment_seconds else waveform_inference_fn)
  short_results, short_dlq = (
      probed.short
      | "TagClips" >> inference_base.RunInference(
          handler(clip_fn, batch_samples)).with_exception_handling())

  combine_fn = (SegmentedBagOfFeaturesCombineFn(segments.WindowClock.of_export(info))
                if segment_seconds else BagOfFeaturesCombineFn())
  combined = (probed[PARTIALS_TAG]
              | "CombineChunks" >> beam.CombinePerKey(combine_fn)
              | "CheckChunks" >> beam.FlatMap(_split_combined).with_outputs(
                  ERROR_TAG, main="embeddings"))
  long_results, long_dlq = (
      combined.embeddings
      | "TagEmbeddings" >> inference_base.RunInference(
          handler(embedding_inference_fn)).with_exception_handling())

  formatted = ((short_results, long_results)
               | "AllResults" >> beam.Flatten()
               | "Format" >> beam.ParDo(FormatRecordDoFn(
                   tags, config.top_k, sample_rate)).with_outputs(ERROR_TAG,
                                                                  main="records"))
  records = formatted.records
  dead_letters = ((short_dlq.failed_inferences, long_dlq.failed_inferences)
                  | "DeadLetters" >> beam.Flatten()
                  | "DeadLetterErrors" >> beam.FlatMap(_failed_batch_errors))
  errors = ((probed[ERROR_TAG], combined[ERROR_TAG],
             formatted[ERROR_TAG], dead_letters)
            | "AllErrors" >> beam.Flatten()
            | "CountFailures" >> beam.ParDo(CountFailuresDoFn()))

  _ = (records
       | "WriteParquet" >> beam.io.WriteToParquet(
           job_io.join(work_dir, PARQUET_DIR, SHARD_PREFIX),
           parquet_schema(bool(segment_seconds)),
           file_name_suffix=PARQUET_SUFFIX, num_shards=config.num_shards))
  _ = (records
       | "ToExamples" >> beam.ParDo(SerializeExampleDoFn())
       | "WriteTFRecord" >> beam.io.WriteToTFRecord(
           job_io.join(work_dir, TFRECORD_DIR, SHARD_PREFIX),
           file_name_suffix=TFRECORD_SUFFIX, num_shards=config.num_shards))
  _ = (errors
       | "ErrorLines" >> beam.Map(lambda e: json.dumps(e, sort_keys=True))
       | "WriteErrors" >> beam.io.WriteToText(
           job_io.join(work_dir, ERRORS_DIR, ERRORS_DIR), file_name_suffix=ERRORS_SUFFIX,
           num_shards=config.num_shards))

  matched = files | "CountMatched" >> beam.combiners.Count.Globally()
  tagged = records | "CountTagged" >> beam.combiners.Count.Globally()
  failed = errors | "CountFailed" >> beam.combiners.Count.Globally()
  by_stage = (errors
              | "StageOf" >> beam.Map(lambda e: e["stage"])
              | "CountStages" >> beam.combiners.Count.PerElement())
  return (pipeline
          | "SummaryOnce" >> beam.Create([None])
          | "Summary" >> beam.ParDo(
              _WriteSummaryDoFn(job_io.join(work_dir, SUMMARY_FILE)),
              beam.pvalue.AsSingleton(matched), beam.pvalue.AsSingleton(tagged),
              beam.pvalue.AsSingleton(failed), beam.pvalue.AsList(by_stage)))
