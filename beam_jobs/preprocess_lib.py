"""The preprocessing pipeline: manifest → log-mel + novelty per clip → TFRecords.

Library module of ``deepbof-preprocess`` (the absl entry point is ``preprocess.py``).
Data flow (the output's schema is in docs/data.md):

1. The launcher reads the manifest (``deepbof_tf.data.manifests``) and creates a
   PCollection of small clip records (id, paths, split, labels).
2. :class:`ComputeFeaturesDoFn` reads, decodes and resamples each file, computes the
   front end (``deepbof_tf.frontend``) and validates the result. A failing input
   becomes one error record ``{path, stage, error}`` on a tagged output; the pipeline
   goes on.
3. Clips are serialized (``schema.serialize_clip_example``) and written by Beam's own
   TFRecord file sink, one per split (:func:`write_records`): gzip files
   ``clips/{split}-SSSSS-of-NNNNN.tfrecord.gz``, by default one per bundle so the
   payloads stream through each worker and no step holds the dataset in memory. The
   sink writes temporary files and renames them once their bundles are committed, so
   a retried bundle never leaves a duplicate; an empty split still gets one empty
   file; shards are numbered by their smallest clip id (``beam_jobs.sinks``), so the
   same bundles give the same files whatever order they finished in.
4. Block sampling needs two global numbers: the passes per clip (from the
   segments of the whole training split) and the budget threshold (the
   ``num_blocks``-th smallest candidate key; see ``deepbof_tf.sampling``). Both are
   computed from per-clip segment counts only. The block payloads are then sampled by
   :class:`SampleBlocksDoFn` from the *written* train shards, so they too stream, and
   the blocks are cut from exactly the stored ``log_mel``.
5. Error records go to ``errors/errors-*.jsonl`` (Beam's ``WriteToText``); a ``_summary.json`` with the counts
   computed from the outputs lets the launcher write ``metadata.json`` and reconcile
   them with the Beam counters.

Everything is written under a temporary sibling of ``output_dir`` that :func:`run`
publishes by rename once the pipeline has succeeded and ``metadata.json`` is written;
an existing non-empty ``output_dir`` is refused unless ``overwrite``.

DoFns import TensorFlow and the front end in ``setup()``, take every setting as a
constructor argument (never absl FLAGS) and reach files only through ``tf.io.gfile``,
so they run unchanged on the DirectRunner (also ``multi_processing``) and on Dataflow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import glob
import json
import logging
import os
import posixpath
import shutil
import time
import uuid
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np


class _DropCrcmodWarning(logging.Filter):
  """Beam's TFRecord module warns at import that crcmod is missing; its sink uses
  google-crc32c (a dependency) instead."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "crcmod package not found" not in record.getMessage()


_crcmod_filter = _DropCrcmodWarning()
logging.getLogger().addFilter(_crcmod_filter)
try:
  import apache_beam as beam  # noqa: E402
finally:
  logging.getLogger().removeFilter(_crcmod_filter)

from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

from beam_jobs import sinks
from beam_jobs import worker_threads
from deepbof_tf import __version__
from deepbof_tf import sampling
from deepbof_tf import workdirs
from deepbof_tf.config import FrontendConfig, SamplingConfig, to_dict
from deepbof_tf.data import manifests
from deepbof_tf.data import schema

METRICS_NAMESPACE = "deepbof"
ERROR_TAG = "errors"
SUMMARY_FILE = "_summary.json"
ERRORS_PREFIX = "errors"
ERRORS_SUFFIX = ".jsonl"
STAGES = ("read", "decode", "features", "validate")
_PROGRESS_DIR = "_progress"
DEFAULT_PROGRESS_SECONDS = 15.0
# Beam's file sinks: {prefix}-SSSSS-of-NNNNN{suffix}, the dataset's file names.
SHARD_NAME_TEMPLATE = "-SSSSS-of-NNNNN"


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  """Everything one preprocessing run depends on (the flags of ``deepbof-preprocess``).

  Args:
    manifest: path or URL of the manifest.
    audio_root: directory (or URL prefix) that relative manifest paths are joined to.
    output_dir: the dataset directory to create.
    manifest_format: "csv" or "mtt" (MagnaTagATune ``annotations_final.csv``).
    top_n_tags: keep the N most frequent tags (0 keeps all).
    drop_untagged: drop clips that have none of the kept tags.
    skip_bad_rows: skip (and count) malformed manifest rows instead of failing.
    channel_mode: how multi-channel audio becomes mono: "first" (the authors' code)
      or "mean".
    num_shards: TFRecord files per split; 0 (default) writes one file per Beam bundle,
      which streams; > 0 regroups the records into that many files (a shuffle; Beam
      deals them out round-robin, so shard membership varies between runs).
    overwrite: replace an existing non-empty ``output_dir``.
    frontend: the audio front end (docs/model.md#front-end).
    sampling: block sampling (docs/model.md#block-sampling).
    intra_op_threads: TensorFlow threads per worker process; 1 by default because
      Beam parallelises over worker processes (one per core).
    progress_seconds: on local runners, print clips done / total, rate and time left
      to stderr this often (0: never). Dataflow has its own monitoring.
  """

  manifest: str
  audio_root: str
  output_dir: str
  manifest_format: str = "csv"
  top_n_tags: int = manifests.DEFAULT_TOP_N_TAGS
  drop_untagged: bool = False
  skip_bad_rows: bool = False
  channel_mode: str = "first"
  num_shards: int = 0
  overwrite: bool = False
  frontend: FrontendConfig = dataclasses.field(default_factory=FrontendConfig)
  sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
  intra_op_threads: int = 1
  progress_seconds: float = DEFAULT_PROGRESS_SECONDS

  def __post_init__(self):
    if self.manifest_format not in ("csv", "mtt"):
      raise ValueError(f"manifest_format must be 'csv' or 'mtt', got {self.manifest_format!r}")
    if self.channel_mode not in ("first", "mean"):
      raise ValueError(f"channel_mode must be 'first' or 'mean', got {self.channel_mode!r}")
    if self.num_shards < 0:
      raise ValueError(f"num_shards must be >= 0, got {self.num_shards}")
    if self.top_n_tags < 0:
      raise ValueError(f"top_n_tags must be >= 0, got {self.top_n_tags}")
    if not self.output_dir:
      raise ValueError("output_dir must not be empty")


# --------------------------------------------------------------------------------------
# Paths and file helpers (tf.io.gfile: local paths and gs:// alike).
# --------------------------------------------------------------------------------------


def _is_url(path: str) -> bool:
  return "://" in path


def _join(base: str, *parts: str) -> str:
  return posixpath.join(base, *parts) if _is_url(base) else os.path.join(base, *parts)


def resolve_audio_path(audio_root: str, path: str) -> str:
  """The file to read for a manifest ``path``: absolute paths and URLs are kept."""
  if _is_url(path) or os.path.isabs(path) or not audio_root:
    return path
  return _join(audio_root, path)


def _gfile():
  import tensorflow as tf  # deferred: heavy
  return tf.io.gfile


class _LocalFS:
  """The subset of ``tf.io.gfile`` the launcher uses, for local paths.

  The launcher of a local run then never imports TensorFlow (seconds of start-up
  before the workers can start); URLs (gs://…) go through ``tf.io.gfile``.
  """

  exists = staticmethod(os.path.exists)
  isdir = staticmethod(os.path.isdir)
  listdir = staticmethod(os.listdir)
  remove = staticmethod(os.remove)
  rmtree = staticmethod(shutil.rmtree)
  GFile = staticmethod(open)

  @staticmethod
  def makedirs(path: str) -> None:
    os.makedirs(path, exist_ok=True)

  @staticmethod
  def glob(pattern: str) -> List[str]:
    return glob.glob(pattern)


def _fs(path: str):
  return _gfile() if _is_url(path) else _LocalFS


def _counter(name: str):
  return Metrics.counter(METRICS_NAMESPACE, name)


# --------------------------------------------------------------------------------------
# Clip records.
# --------------------------------------------------------------------------------------


def clip_records(manifest: manifests.Manifest, audio_root: str) -> List[Dict[str, Any]]:
  """The pipeline's input elements: plain dicts, cheap to pickle and encode.

  Args:
    manifest: the parsed manifest.
    audio_root: prefix of relative manifest paths.
  """
  return [{"clip_id": e.clip_id, "path": e.path,
           "audio_path": resolve_audio_path(audio_root, e.path),
           "split": e.split, "labels": manifest.labels(e)}
          for e in manifest.entries]


def _error_record(record: Mapping[str, Any], stage: str, error: Any) -> Dict[str, Any]:
  message = str(error) or type(error).__name__
  if isinstance(error, BaseException) and not isinstance(error, ValueError):
    message = f"{type(error).__name__}: {message}"
  return {"path": record["path"], "stage": stage, "error": message,
          "clip_id": record["clip_id"], "split": record["split"],
          "audio_path": record["audio_path"]}


class ComputeFeaturesDoFn(beam.DoFn):
  """Reads, decodes and resamples one clip, computes its front end and validates it.

  Main output: the record extended by ``log_mel`` ``[frames, n_mels]`` and ``novelty``
  ``[frames]`` (float32 NumPy). Tagged output ``errors``: one record per failed input,
  with the stage that failed: "read" (missing/unreadable file), "decode" (not
  decodable audio, 0 samples), "features" (the front end raised), "validate" (fewer
  frames than one block, non-finite values, frame count not ``frame_count(n)``).

  Args:
    frontend: the front-end configuration.
    channel_mode: "first" or "mean".
    block_frames: a clip needs at least this many frames.
    intra_op_threads: TensorFlow intra-/inter-op threads of the worker process.
  """

  def __init__(self, frontend: FrontendConfig, channel_mode: str = "first",
               block_frames: int = 8, intra_op_threads: int = 1,
               progress_dir: Optional[str] = None):
    self._progress_dir = progress_dir
    self._frontend_config = frontend
    self._channel_mode = channel_mode
    self._block_frames = block_frames
    self._intra_op_threads = intra_op_threads
    self._read = _counter("clips_read")
    self._failed = _counter("clips_failed")
    self._failed_by_stage = {stage: _counter(f"failed_{stage}") for stage in STAGES}
    self._features_ok = _counter("clips_featurized")

  def setup(self):
    import tensorflow as tf
    worker_threads.limit_threads(self._intra_op_threads)
    from deepbof_tf import audio, frontend
    self._tf = tf
    self._audio = audio
    self._frame_count = frontend.frame_count
    # compute_features runs one cached tf.function with a [None] signature: one trace
    # per worker for every clip length.
    self._compute_features = frontend.compute_features
    self._progress = (ProgressCounter(self._progress_dir) if self._progress_dir
                      else None)

  def _fail(self, record, stage, error):
    self._failed.inc()
    self._failed_by_stage[stage].inc()
    logging.warning("%s: %s failed: %s", record["audio_path"], stage, error)
    return beam.pvalue.TaggedOutput(ERROR_TAG, _error_record(record, stage, error))

  def process(self, record: Dict[str, Any]) -> Iterator[Any]:
    yield from self._process(record)
    if self._progress is not None:
      self._progress.tick()

  def _process(self, record: Dict[str, Any]) -> Iterator[Any]:
    self._read.inc()
    path = record["audio_path"]
    gfile = self._tf.io.gfile
    try:
      if not gfile.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
      with gfile.GFile(path, "rb") as f:
        data = f.read()
    except Exception as e:  # pylint: disable=broad-except
      yield self._fail(record, "read", e)
      return
    try:
      waveform, decoded = self._audio.load_audio_with_info(
          path, data, sample_rate=self._frontend_config.sample_rate,
          channel_mode=self._channel_mode)
      waveform = np.asarray(waveform, dtype=np.float32).ravel()
      if waveform.size == 0:
        raise ValueError(f"{path}: 0 samples after decoding (empty or corrupt file)")
    except Exception as e:  # pylint: disable=broad-except
      yield self._fail(record, "decode", e)
      return
    try:
      log_mel, novelty = self._compute_features(waveform, self._frontend_config)
      log_mel = np.asarray(log_mel, dtype=np.float32)
      novelty = np.asarray(novelty, dtype=np.float32)
    except Exception as e:  # pylint: disable=broad-except
      yield self._fail(record, "features", e)
      return
    try:
      n_frames = log_mel.shape[0]
      expected = int(self._frame_count(waveform.size, self._frontend_config))
      if n_frames != expected or novelty.shape != (n_frames,):
        raise ValueError(f"{path}: front end returned {n_frames} frames (novelty "
                         f"{novelty.shape}), expected frame_count = {expected}")
      if n_frames < self._block_frames:
        raise ValueError(
            f"{path}: {n_frames} frames ({waveform.size} samples at "
            f"{self._frontend_config.sample_rate} Hz) is shorter than one "
            f"{self._block_frames}-frame block")
      if not (np.isfinite(log_mel).all() and np.isfinite(novelty).all()):
        raise ValueError(f"{path}: non-finite (NaN/Inf) values in log_mel or novelty")
    except Exception as e:  # pylint: disable=broad-except
      yield self._fail(record, "validate", e)
      return
    self._features_ok.inc()
    yield dict(record, log_mel=log_mel, novelty=novelty, decoder=decoded.decoder)


class ProgressCounter:
  """A worker's count of finished clips in a small file of the progress directory.

  Each DoFn instance owns one file and rewrites its count after every clip; the
  launching process adds the files up (:class:`ProgressReporter`). Local runs only: the
  directory is on this machine's disk.
  """

  def __init__(self, directory: str):
    os.makedirs(directory, exist_ok=True)
    self._path = os.path.join(directory, f"{os.getpid()}-{uuid.uuid4().hex[:8]}.count")
    self._done = 0

  def tick(self) -> None:
    self._done += 1
    tmp = self._path + ".tmp"
    with open(tmp, "w") as f:
      f.write(str(self._done))
    os.replace(tmp, self._path)


def count_progress(directory: str) -> int:
  """Clips finished so far: the sum of the workers' counts."""
  done = 0
  for path in glob.glob(os.path.join(directory, "*.count")):
    try:
      with open(path) as f:
        done += int(f.read() or 0)
    except (OSError, ValueError):
      continue  # being replaced right now
  return done


def format_progress(done: int, total: int, seconds: float) -> str:
  """``clips 120/600 (20 %), 4.1 clips/s, about 1 min 57 s left``."""
  rate = done / seconds if seconds > 0 else 0.0
  text = f"clips {done}/{total} ({100 * done / max(total, 1):.0f} %), {rate:.1f} clips/s"
  if 0 < done < total and rate > 0:
    left = int(round((total - done) / rate))
    text += f", about {left // 60} min {left % 60:02d} s left" if left >= 60 else (
        f", about {left} s left")
  return text


class ProgressReporter:
  """Prints :func:`format_progress` to stderr every ``interval`` seconds, in a thread."""

  def __init__(self, directory: str, total: int, interval: float, stream=None):
    import threading
    self._directory, self._total, self._interval = directory, total, interval
    self._stream = stream
    self._start = time.time()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="deepbof-progress",
                                    daemon=True)

  def _print(self) -> None:
    import sys
    stream = self._stream or sys.stderr
    done = count_progress(self._directory)
    line = format_progress(done, self._total, time.time() - self._start)
    print(f"deepbof-preprocess: {line}", file=stream, flush=True)

  def _run(self) -> None:
    while not self._stop.wait(self._interval):
      self._print()

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *unused):
    self._stop.set()
    self._thread.join()
    self._print()  # the final count


def serialize_clip(record: Mapping[str, Any]) -> Tuple[str, str, bytes]:
  """``(split, clip_id, serialized clip example)`` of a featurized record."""
  return (record["split"], record["clip_id"],
          schema.serialize_clip_example(record["clip_id"], record["path"],
                                        record["log_mel"], record["novelty"],
                                        record["labels"], record.get("decoder", "")))


def clip_stats(record: Mapping[str, Any], block_frames: int,
               segment_frames: int) -> Dict[str, Any]:
  """The small per-clip numbers the global sampling decisions need."""
  n_frames = int(record["log_mel"].shape[0])
  return {"clip_id": record["clip_id"], "split": record["split"], "n_frames": n_frames,
          "n_segments": sampling.num_segments(n_frames, block_frames, segment_frames)}


# --------------------------------------------------------------------------------------
# Sharded writing with Beam's file sinks.
# --------------------------------------------------------------------------------------


class _CountWritten(beam.DoFn):
  """Counts the records handed to a sink (the counter ``{kind}_written``)."""

  def __init__(self, kind: str):
    self._written = _counter(f"{kind}_written")

  def process(self, element):
    self._written.inc()
    yield element


def _shard_index(element: Tuple[str, str, Any], num_partitions: int,
                 splits: Sequence[str]) -> int:
  return list(splits).index(element[0])


def write_records(pcoll, label: str, out_dir: str, kind: str, splits: Sequence[str],
                  num_shards: int = 0, file_format: str = "tfrecord",
                  prefix: Optional[str] = None):
  """Writes ``(split, key, payload)`` elements with Beam's file sinks, one per split.

  Files are ``{out_dir}/{split}-SSSSS-of-NNNNN`` + ``.tfrecord.gz`` (Beam's TFRecord
  sink, gzip, shards numbered by their smallest key: ``beam_jobs.sinks``) or
  ``.jsonl`` (``WriteToText``, one JSON object per line, keys sorted).

  Args:
    pcoll: the ``(split, key, payload)`` elements (payload: serialized bytes, or a dict
      for JSON lines).
    label: a unique prefix of the transforms' labels.
    out_dir: the final directory (``clips``, ``blocks`` or ``errors`` of the dataset).
    kind: "clips", "blocks" or "errors" (also the counter ``{kind}_written``).
    splits: every split the elements may name; each TFRecord split gets at least one
      (empty) file, while JSON lines are written only when there are some (a run
      without failures has no error file).
    num_shards: files per split; 0 lets the runner write one per bundle (streaming),
      > 0 regroups the records into exactly that many files (a shuffle; Beam deals
      the records to the shards round-robin, so which shard holds a record varies
      from run to run).
    file_format: "tfrecord" or "jsonl".
    prefix: the file name prefix when ``splits`` has one element (None: the split).

  Returns:
    ``(files, counts)``: a PCollection of ``{split, path}`` per written file and one of
    ``(split, records)`` per split that has records.
  """
  counted = pcoll | f"{label}Count" >> beam.ParDo(_CountWritten(kind))
  counts = (counted
            | f"{label}SplitOf" >> beam.Map(lambda e: e[0])
            | f"{label}PerSplit" >> beam.combiners.Count.PerElement())
  parts = counted | f"{label}BySplit" >> beam.Partition(_shard_index, len(splits), splits)
  files = []
  for split, part in zip(splits, parts):
    path_prefix = _join(out_dir, prefix or split)
    if file_format == "tfrecord":
      names = (part
               | f"{label}{split}Keyed" >> beam.Map(lambda e: (e[1], e[2]))
               | f"{label}{split}Write" >> sinks.write_key_ordered_tfrecords(
                   path_prefix, schema.TFRECORD_SUFFIX, num_shards, SHARD_NAME_TEMPLATE))
    else:
      names = (part
               | f"{label}{split}Json" >> beam.Map(
                   lambda e: json.dumps(e[2], sort_keys=True))
               | f"{label}{split}Write" >> beam.io.WriteToText(
                   path_prefix, file_name_suffix=ERRORS_SUFFIX, num_shards=num_shards,
                   shard_name_template=SHARD_NAME_TEMPLATE, skip_if_empty=True))
    files.append(names | f"{label}{split}Files" >> beam.Map(
        lambda path, split: {"split": split, "path": path}, split))
  return files | f"{label}Files" >> beam.Flatten(), counts


# --------------------------------------------------------------------------------------
# Block sampling from the written train shards.
# --------------------------------------------------------------------------------------


class SampleBlocksDoFn(beam.DoFn):
  """Reads one written train clip shard and emits its sampled blocks.

  Args:
    sampling_config: the sampling configuration.
    n_tags: length of the clips' ``labels`` (needed to parse them).
    n_mels: mel bands of ``log_mel``.
  """

  def __init__(self, sampling_config: SamplingConfig, n_tags: int, n_mels: int):
    self._config = sampling_config
    self._n_tags = n_tags
    self._n_mels = n_mels
    self._blocks = _counter("blocks_sampled")
    self._clips = _counter("clips_sampled")

  def setup(self):
    import tensorflow as tf
    self._tf = tf
    n_tags, n_mels = self._n_tags, self._n_mels
    self._parse = tf.function(
        lambda s: schema.parse_clip(s, n_tags, n_mels),
        input_signature=[tf.TensorSpec([], tf.string)], autograph=False)

  def process(self, shard: Mapping[str, Any], num_passes: int,
              max_key: Optional[bytes]) -> Iterator[Tuple[str, str, bytes]]:
    tf = self._tf
    dataset = tf.data.TFRecordDataset(shard["path"], compression_type=schema.COMPRESSION)
    for serialized in dataset:
      parsed = self._parse(serialized)
      clip_id = parsed[schema.CLIP_ID].numpy().decode("utf-8")
      blocks = sampling.sample_clip_blocks(
          clip_id, parsed[schema.LOG_MEL].numpy(), parsed[schema.NOVELTY].numpy(),
          self._config, num_passes, max_key=max_key)
      self._clips.inc()
      for key, frame, block in blocks:
        self._blocks.inc()
        yield ("train", key.hex(), schema.serialize_block_example(clip_id, frame, block))


def _threshold_of(smallest: Sequence[bytes], num_blocks: int) -> Optional[bytes]:
  # Fewer candidates than the budget: keep them all.
  return smallest[-1] if len(smallest) >= num_blocks else None


def _candidate_keys(stats: Mapping[str, Any], config: SamplingConfig,
                    num_passes: int) -> List[bytes]:
  return [key for key, _, _ in sampling.clip_candidates(
      stats["clip_id"], stats["n_segments"], config, num_passes)]


# --------------------------------------------------------------------------------------
# The pipeline.
# --------------------------------------------------------------------------------------


class _WriteSummaryDoFn(beam.DoFn):
  """Writes the counts computed from the outputs to ``_summary.json``."""

  def __init__(self, path: str):
    self._path = path

  def process(self, unused_element, clip_files, clip_counts, block_files, block_counts,
              error_files, num_passes, total_segments, num_candidates, threshold,
              featurized_by_split):
    summary = {
        "clip_files": sorted(clip_files, key=lambda f: f["path"]),
        "clip_counts": dict(clip_counts),
        "block_files": sorted(block_files, key=lambda f: f["path"]),
        "num_blocks": sum(count for _, count in block_counts),
        "error_files": sorted(error_files, key=lambda f: f["path"]),
        "num_passes": num_passes,
        "total_segments": total_segments,
        "num_candidates": num_candidates,
        "budget_threshold": threshold.hex() if threshold is not None else None,
        "featurized_by_split": dict(featurized_by_split),
    }
    schema.write_json(self._path, summary)
    yield summary


def build_pipeline(pipeline: beam.Pipeline, records: Sequence[Mapping[str, Any]],
                   config: PreprocessConfig, n_tags: int, work_dir: str,
                   progress_dir: Optional[str] = None):
  """Adds the preprocessing steps to ``pipeline``; every output goes under ``work_dir``.

  Args:
    pipeline: the Beam pipeline.
    records: the clip records (:func:`clip_records`).
    config: the run's configuration.
    n_tags: size of the tag vocabulary (length of ``labels``).
    work_dir: the (temporary) dataset directory to write.
    progress_dir: where the workers count finished clips (None: no progress).

  Returns:
    The PCollection of the ``_summary.json`` payload (one element).
  """
  scfg = config.sampling
  results = (pipeline
             | "ClipRecords" >> beam.Create(list(records))
             | "ComputeFeatures" >> beam.ParDo(ComputeFeaturesDoFn(
                 config.frontend, config.channel_mode, scfg.block_frames,
                 config.intra_op_threads, progress_dir)).with_outputs(ERROR_TAG,
                                                                      main="clips"))
  clips, errors = results.clips, results[ERROR_TAG]

  clip_files, clip_counts = write_records(
      clips | "SerializeClips" >> beam.Map(serialize_clip), "Clips",
      _join(work_dir, schema.CLIPS_DIR), "clips", schema.SPLITS, config.num_shards)
  error_files, _ = write_records(
      errors | "KeyErrors" >> beam.Map(lambda e: ("errors", e["path"], e)), "Errors",
      _join(work_dir, schema.ERRORS_DIR), "errors", ["errors"], 0,
      file_format="jsonl", prefix=ERRORS_PREFIX)

  stats = clips | "ClipStats" >> beam.Map(clip_stats, scfg.block_frames,
                                          scfg.segment_frames)
  featurized_by_split = (stats
                         | "SplitOf" >> beam.Map(lambda s: s["split"])
                         | "CountSplits" >> beam.combiners.Count.PerElement())
  train_stats = stats | "TrainOnly" >> beam.Filter(lambda s: s["split"] == "train")
  total_segments = (train_stats
                    | "Segments" >> beam.Map(lambda s: s["n_segments"])
                    | "TotalSegments" >> beam.CombineGlobally(sum))
  num_passes = total_segments | "Passes" >> beam.Map(
      lambda total, n, s: sampling.auto_num_passes(n, total, s), scfg.num_blocks,
      scfg.segment_frames)
  keys = train_stats | "CandidateKeys" >> beam.FlatMap(
      _candidate_keys, scfg, beam.pvalue.AsSingleton(num_passes))
  num_candidates = keys | "CountCandidates" >> beam.combiners.Count.Globally()
  threshold = (keys
               | "SmallestKeys" >> beam.combiners.Top.Smallest(scfg.num_blocks)
               | "Threshold" >> beam.Map(_threshold_of, scfg.num_blocks))

  train_shards = (clip_files
                  | "TrainShards" >> beam.Filter(lambda f: f["split"] == "train")
                  | "SpreadShards" >> beam.Reshuffle())
  blocks = train_shards | "SampleBlocks" >> beam.ParDo(
      SampleBlocksDoFn(scfg, n_tags, config.frontend.n_mels),
      beam.pvalue.AsSingleton(num_passes), beam.pvalue.AsSingleton(threshold))
  block_files, block_counts = write_records(
      blocks, "Blocks", _join(work_dir, schema.BLOCKS_DIR), "blocks", ["train"],
      config.num_shards)

  return (pipeline
          | "SummaryOnce" >> beam.Create([None])
          | "Summary" >> beam.ParDo(
              _WriteSummaryDoFn(_join(work_dir, SUMMARY_FILE)),
              beam.pvalue.AsList(clip_files), beam.pvalue.AsList(clip_counts),
              beam.pvalue.AsList(block_files), beam.pvalue.AsList(block_counts),
              beam.pvalue.AsList(error_files), beam.pvalue.AsSingleton(num_passes),
              beam.pvalue.AsSingleton(total_segments),
              beam.pvalue.AsSingleton(num_candidates), beam.pvalue.AsSingleton(threshold),
              beam.pvalue.AsList(featurized_by_split)))


# --------------------------------------------------------------------------------------
# Launcher: output directory protocol, counters, metadata.json.
# --------------------------------------------------------------------------------------


def _is_nonempty_dir(path: str) -> bool:
  fs = _fs(path)
  return fs.exists(path) and (not fs.isdir(path) or bool(fs.listdir(path)))


def check_output_dir(output_dir: str, overwrite: bool) -> None:
  """Refuses an existing non-empty ``output_dir`` unless ``overwrite``."""
  if _is_nonempty_dir(output_dir) and not overwrite:
    raise FileExistsError(
        f"{output_dir}: output directory exists and is not empty; choose another "
        "--output_dir or pass --overwrite to replace it")


def _copy_tree(src: str, dst: str, last: str) -> None:
  """Copies ``src`` to ``dst`` file by file; the top-level file ``last`` goes last."""
  gfile = _gfile()
  final_copy = None
  for root, _, files in gfile.walk(src):
    rel = root[len(src):].strip("/")
    target_root = _join(dst, rel) if rel else dst
    gfile.makedirs(target_root)
    for name in files:
      pair = (_join(root, name), _join(target_root, name))
      if not rel and name == last:
        final_copy = pair
      else:
        gfile.copy(*pair, overwrite=True)
  if final_copy is not None:
    gfile.copy(*final_copy, overwrite=True)


@contextlib.contextmanager
def work_dir_of(output_dir: str) -> Iterator[str]:
  """A fresh work directory next to ``output_dir``, removed if the body fails.

  Work directories of earlier runs that were killed (their owner is gone) are removed
  first (``deepbof_tf.workdirs``); the body writes everything into the yielded one and
  ends with :func:`finish_and_publish`.
  """
  workdirs.remove_stale_work_dirs(output_dir)
  work_dir = workdirs.claim_work_dir(output_dir)
  try:
    yield work_dir
  except BaseException:
    fs = _fs(work_dir)
    if fs.exists(work_dir):
      try:
        fs.rmtree(work_dir)
      except Exception:  # pylint: disable=broad-except
        logging.exception("could not remove %s", work_dir)
    raise


def pop_summary(work_dir: str) -> Dict[str, Any]:
  """Reads and removes the pipeline's ``_summary.json`` from ``work_dir``."""
  fs = _fs(work_dir)
  path = _join(work_dir, SUMMARY_FILE)
  with fs.GFile(path, "r") as f:
    summary = json.load(f)
  fs.remove(path)
  return summary


def finish_and_publish(work_dir: str, output_dir: str, metadata: Mapping[str, Any],
                       overwrite: bool, metadata_file: str = schema.METADATA_FILE
                       ) -> None:
  """Writes ``metadata.json`` last (it marks a complete output), then publishes."""
  fs = _fs(work_dir)
  fs.remove(_join(work_dir, workdirs.OWNER_FILE))
  with fs.GFile(_join(work_dir, metadata_file), "w") as f:
    f.write(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
  publish(work_dir, output_dir, overwrite)


def publish(work_dir: str, output_dir: str, overwrite: bool) -> None:
  """Moves the finished ``work_dir`` to ``output_dir``.

  Local file systems: one directory rename (an existing ``output_dir`` is first moved
  aside and deleted after the swap). Object stores (gs://…), where directories cannot
  be renamed atomically: files are copied with ``metadata.json`` last, so a dataset
  without ``metadata.json`` is never complete (``read_metadata`` refuses it).

  Args:
    work_dir: the finished temporary dataset directory.
    output_dir: its final name.
    overwrite: replace an existing non-empty ``output_dir``.
  """
  check_output_dir(output_dir, overwrite)
  if not _is_url(output_dir):
    old = None
    if os.path.exists(output_dir):
      if os.path.isdir(output_dir) and not os.listdir(output_dir):
        os.rmdir(output_dir)
      else:
        old = f"{output_dir}.old-{uuid.uuid4().hex[:8]}"
        os.rename(output_dir, old)
    os.rename(work_dir, output_dir)
    if old is not None:
      shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
    return
  gfile = _gfile()
  if gfile.exists(output_dir):
    gfile.rmtree(output_dir)
  _copy_tree(work_dir, output_dir, last=schema.METADATA_FILE)
  gfile.rmtree(work_dir)


def _query_counters(result) -> Optional[Dict[str, int]]:
  """Committed (else attempted) Beam counters summed over steps; None if unsupported."""
  try:
    counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
  except Exception:  # pylint: disable=broad-except
    return None
  out: Dict[str, int] = {}
  for counter in counters.get("counters", []):
    value = counter.committed if counter.committed is not None else counter.attempted
    out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value or 0)
  return out or None


def reconcile(summary: Mapping[str, Any], errors: Sequence[Mapping[str, Any]],
              num_inputs: int, counters: Optional[Mapping[str, int]]) -> Dict[str, Any]:
  """Counts from the outputs checked against the Beam counters.

  Args:
    summary: the pipeline's ``_summary.json``.
    errors: the error records.
    num_inputs: clips in the manifest (the pipeline's input).
    counters: the Beam counters, or None when the runner does not report them.

  Returns:
    ``clips_read``, ``clips_written``, ``clips_failed``, ``blocks_written``, the
    source of each (``counters_source``) and whether they reconcile.
  """
  written = sum(summary["clip_counts"].values())
  from_outputs = {"clips_read": num_inputs, "clips_written": written,
                  "clips_failed": len(errors), "blocks_written": summary["num_blocks"]}
  if counters:
    used = {name: int(counters.get(name, 0)) for name in from_outputs}
    source = "beam_metrics"
  else:
    used = dict(from_outputs)
    source = "outputs (the runner reported no Beam counters)"
  used["reconciled"] = (
      used["clips_read"] == used["clips_written"] + used["clips_failed"])
  used["matches_outputs"] = all(used[k] == from_outputs[k] for k in from_outputs)
  used["counters_source"] = source
  used["beam_counters"] = dict(sorted((counters or {}).items()))
  return used


def read_error_records(work_dir: str) -> List[Dict[str, Any]]:
  """The ``{path, stage, error}`` records of ``work_dir/errors/*.jsonl`` (both jobs)."""
  fs = _fs(work_dir)
  records = []
  for path in sorted(fs.glob(_join(work_dir, schema.ERRORS_DIR, f"*{ERRORS_SUFFIX}"))):
    with fs.GFile(path, "r") as f:
      records.extend(json.loads(line) for line in f if line.strip())
  return records


def build_metadata(config: PreprocessConfig, manifest: manifests.Manifest,
                   summary: Mapping[str, Any], errors: Sequence[Mapping[str, Any]],
                   counts: Mapping[str, Any], elapsed_seconds: float) -> Dict[str, Any]:
  """The dataset's ``metadata.json`` (docs/data.md)."""
  fe = config.frontend
  split_counts = {split: 0 for split in schema.SPLITS}
  for split, count in summary["clip_counts"].items():
    split_counts[split] = split_counts.get(split, 0) + count
  failed_by_stage: Dict[str, int] = {}
  for e in errors:
    failed_by_stage[e["stage"]] = failed_by_stage.get(e["stage"], 0) + 1
  return {
      "format_version": 1,
      "package_version": __version__,
      "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "sample_rate": fe.sample_rate,
      "n_fft": fe.n_fft,
      "hop_length": fe.hop_length,
      "n_mels": fe.n_mels,
      "frontend": to_dict(fe),
      "agc": {"enabled": fe.agc, "t_scale": fe.agc_t_scale, "f_scale": fe.agc_f_scale,
              "epsilon": fe.agc_epsilon, "n_bands": fe.agc_n_bands,
              "width": fe.agc_width},
      "novelty": {"n_mels": fe.novelty_n_mels, "log_gain": fe.novelty_log_gain},
      "block_frames": config.sampling.block_frames,
      "sampling": dict(to_dict(config.sampling),
                       num_passes=summary["num_passes"],
                       train_segments=summary["total_segments"],
                       num_candidates=summary["num_candidates"],
                       budget_threshold=summary["budget_threshold"]),
      "tags": list(manifest.tags),
      "n_tags": len(manifest.tags),
      "split_counts": split_counts,
      "num_clips": sum(split_counts.values()),
      "num_blocks": summary["num_blocks"],
      "num_failed": len(errors),
      "failed_by_stage": failed_by_stage,
      "counters": dict(counts),
      "manifest": config.manifest,
      "manifest_format": config.manifest_format,
      "manifest_rows_skipped": len(manifest.skipped),
      "audio_root": config.audio_root,
      "top_n_tags": config.top_n_tags,
      "drop_untagged": config.drop_untagged,
      "channel_mode": config.channel_mode,
      "seed": config.sampling.seed,
      "files": {"clips": [posixpath.join(schema.CLIPS_DIR, posixpath.basename(f["path"]))
                          for f in summary["clip_files"]],
                "blocks": [posixpath.join(schema.BLOCKS_DIR, posixpath.basename(f["path"]))
                           for f in summary["block_files"]]},
      "elapsed_seconds": round(elapsed_seconds, 3),
  }


_LOCAL_RUNNER_NAMES = (None, "DirectRunner", "direct", "FnApiRunner")


def make_runner(options):
  """Beam's FnApiRunner for local runs; None lets Beam pick the requested runner.

  Beam 2.72's DirectRunner first tries the Prism runner, which downloads a binary from
  GitHub at run time (we never use the network at run time) and otherwise falls back
  to the FnApiRunner. Local runs therefore use the FnApiRunner directly, with the
  same provisioning DirectRunner gives it, so ``--direct_num_workers`` and
  ``--direct_running_mode`` work as usual.

  Args:
    options: the pipeline options.
  """
  from apache_beam.options.pipeline_options import StandardOptions
  if options.view_as(StandardOptions).runner not in _LOCAL_RUNNER_NAMES:
    return None
  from apache_beam.portability.api import beam_provision_api_pb2
  from apache_beam.runners.portability.fn_api_runner import fn_runner
  from apache_beam.runners.portability.portable_runner import JobServiceHandle
  encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
  return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
      beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def run(config: PreprocessConfig, beam_args: Sequence[str] = (),
        manifest: Optional[manifests.Manifest] = None) -> Dict[str, Any]:
  """Runs the whole preprocessing job and returns the written ``metadata.json``.

  Args:
    config: the run's configuration.
    beam_args: Beam pipeline options (``--runner``, ``--direct_num_workers``, …).
    manifest: an already parsed manifest (default: read ``config.manifest``).
  """
  from apache_beam.options.pipeline_options import PipelineOptions
  output_dir = config.output_dir.rstrip("/")
  check_output_dir(output_dir, config.overwrite)
  if manifest is None:
    manifest = manifests.read_manifest(
        config.manifest, config.manifest_format, top_n_tags=config.top_n_tags,
        drop_untagged=config.drop_untagged, skip_bad_rows=config.skip_bad_rows)
  records = clip_records(manifest, config.audio_root)
  if not records:
    raise ValueError(f"{config.manifest}: the manifest lists no clips"
                     + (f" ({len(manifest.skipped)} malformed rows skipped)"
                        if manifest.skipped else ""))
  logging.info("%s: %d clips (%s), %d tags", config.manifest, len(records),
               manifest.split_counts(), len(manifest.tags))
  start = time.time()
  with work_dir_of(output_dir) as work_dir:
    options = PipelineOptions(list(beam_args))
    runner = make_runner(options)
    # Progress needs the workers' counts on this machine: local runners, local paths.
    progress_dir = (_join(work_dir, _PROGRESS_DIR) if runner is not None and
                    config.progress_seconds > 0 and "://" not in work_dir else None)
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_pipeline(pipeline, records, config, len(manifest.tags), work_dir, progress_dir)
    if progress_dir is None:
      result = pipeline.run()
      result.wait_until_finish()
    else:
      os.makedirs(progress_dir, exist_ok=True)
      with ProgressReporter(progress_dir, len(records), config.progress_seconds):
        result = pipeline.run()
        result.wait_until_finish()
      shutil.rmtree(progress_dir, ignore_errors=True)
    counters = _query_counters(result)
    summary = pop_summary(work_dir)
    errors = read_error_records(work_dir)
    counts = reconcile(summary, errors, len(records), counters)
    metadata = build_metadata(config, manifest, summary, errors, counts,
                              time.time() - start)
    finish_and_publish(work_dir, output_dir, metadata, config.overwrite)
  return metadata


def format_counts(metadata: Mapping[str, Any]) -> str:
  """A short human-readable report of a finished run."""
  c = metadata["counters"]
  lines = [
      f"clips read {c['clips_read']} = written {c['clips_written']} + failed "
      f"{c['clips_failed']}: {'reconciled' if c['reconciled'] else 'NOT RECONCILED'} "
      f"(source: {c['counters_source']}; match the outputs: {c['matches_outputs']})",
      "clips per split: " + ", ".join(f"{k} {v}" for k, v in
                                      metadata["split_counts"].items()),
      f"blocks {metadata['num_blocks']} (budget {metadata['sampling']['num_blocks']}, "
      f"candidates {metadata['sampling']['num_candidates']}, passes "
      f"{metadata['sampling']['num_passes']})",
      f"failed inputs {metadata['num_failed']}: {metadata['failed_by_stage']}",
  ]
  return "\n".join(lines)
