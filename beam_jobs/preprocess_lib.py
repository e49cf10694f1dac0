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
an existing non-empty ``output_dir`` is refused unless ``overwrite`` (the run protocol
of both Beam jobs: ``beam_jobs.job_io``).

DoFns import TensorFlow and the front end in ``setup()``, take every setting as a
constructor argument (never absl FLAGS) and reach files only through ``tf.io.gfile``,
so they run unchanged on the DirectRunner (also ``multi_processing``) and on Dataflow.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import posixpath
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from beam_jobs import job_io
from beam_jobs import sinks
from beam_jobs import worker_threads
from beam_jobs.job_io import beam  # apache_beam, imported with crcmod's warning dropped
from deepbof_tf import __version__
from deepbof_tf import sampling
from deepbof_tf.audio import CHANNEL_MODES
from deepbof_tf.config import FrontendConfig, SamplingConfig, to_dict
from deepbof_tf.data import manifests
from deepbof_tf.data import schema

# The run protocol's error output, error files and summary file (beam_jobs.job_io).
ERROR_TAG = job_io.ERROR_TAG
ERRORS_SUFFIX = job_io.ERRORS_SUFFIX
SUMMARY_FILE = job_io.SUMMARY_FILE
ERRORS_PREFIX = "errors"
STAGES = ("read", "decode", "features", "validate")
DEFAULT_PROGRESS_SECONDS = 15.0
TOOL = "deepbof-preprocess"  # the console script; its progress lines start with it
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
    if self.channel_mode not in CHANNEL_MODES:
      raise ValueError(f"channel_mode must be {' or '.join(map(repr, CHANNEL_MODES))}, "
                       f"got {self.channel_mode!r}")
    if self.num_shards < 0:
      raise ValueError(f"num_shards must be >= 0, got {self.num_shards}")
    if self.top_n_tags < 0:
      raise ValueError(f"top_n_tags must be >= 0, got {self.top_n_tags}")
    if not self.output_dir:
      raise ValueError("output_dir must not be empty")


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
           "audio_path": job_io.resolve_audio_path(audio_root, e.path),
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
    progress_dir: where the worker counts its finished clips
      (``job_io.ProgressCounter``; None: no counting).
  """

  def __init__(self, frontend: FrontendConfig, channel_mode: str = "first",
               block_frames: int = 8, intra_op_threads: int = 1,
               progress_dir: Optional[str] = None):
    self._progress_dir = progress_dir
    self._frontend_config = frontend
    self._channel_mode = channel_mode
    self._block_frames = block_frames
    self._intra_op_threads = intra_op_threads
    self._read = job_io.counter("clips_read")
    self._failed = job_io.counter("clips_failed")
    self._failed_by_stage = {stage: job_io.counter(f"failed_{stage}") for stage in STAGES}
    self._features_ok = job_io.counter("clips_featurized")

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
    self._progress = (job_io.ProgressCounter(self._progress_dir) if self._progress_dir
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
    self._written = job_io.counter(f"{kind}_written")

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
    path_prefix = job_io.join(out_dir, prefix or split)
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
    self._blocks = job_io.counter("blocks_sampled")
    self._clips = job_io.counter("clips_sampled")

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
      job_io.join(work_dir, schema.CLIPS_DIR), "clips", schema.SPLITS, config.num_shards)
  error_files, _ = write_records(
      errors | "KeyErrors" >> beam.Map(lambda e: ("errors", e["path"], e)), "Errors",
      job_io.join(work_dir, schema.ERRORS_DIR), "errors", ["errors"], 0,
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
      blocks, "Blocks", job_io.join(work_dir, schema.BLOCKS_DIR), "blocks", ["train"],
      config.num_shards)

  return (pipeline
          | "SummaryOnce" >> beam.Create([None])
          | "Summary" >> beam.ParDo(
              _WriteSummaryDoFn(job_io.join(work_dir, SUMMARY_FILE)),
              beam.pvalue.AsList(clip_files), beam.pvalue.AsList(clip_counts),
              beam.pvalue.AsList(block_files), beam.pvalue.AsList(block_counts),
              beam.pvalue.AsList(error_files), beam.pvalue.AsSingleton(num_passes),
              beam.pvalue.AsSingleton(total_segments),
              beam.pvalue.AsSingleton(num_candidates), beam.pvalue.AsSingleton(threshold),
              beam.pvalue.AsList(featurized_by_split)))


# --------------------------------------------------------------------------------------
# Launcher: the manifest's clips, counts, metadata.json (the run protocol: job_io).
# --------------------------------------------------------------------------------------


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
  used, source = job_io.reported_counts(from_outputs, counters)
  used["reconciled"] = (
      used["clips_read"] == used["clips_written"] + used["clips_failed"])
  used["matches_outputs"] = all(used[k] == from_outputs[k] for k in from_outputs)
  used["counters_source"] = source
  used["beam_counters"] = dict(sorted((counters or {}).items()))
  return used


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


def read_manifest(config: PreprocessConfig) -> manifests.Manifest:
  """The manifest ``config`` names, parsed with its options.

  Args:
    config: the run's configuration.
  """
  return manifests.read_manifest(
      config.manifest, config.manifest_format, top_n_tags=config.top_n_tags,
      drop_untagged=config.drop_untagged, skip_bad_rows=config.skip_bad_rows)


def checked_clip_records(config: PreprocessConfig,
                         manifest: manifests.Manifest) -> List[Dict[str, Any]]:
  """The manifest's :func:`clip_records`, refused when there are none.

  Args:
    config: the run's configuration.
    manifest: the parsed manifest.

  Raises:
    ValueError: the manifest lists no clips.
  """
  records = clip_records(manifest, config.audio_root)
  if not records:
    raise ValueError(f"{config.manifest}: the manifest lists no clips"
                     + (f" ({len(manifest.skipped)} malformed rows skipped)"
                        if manifest.skipped else ""))
  logging.info("%s: %d clips (%s), %d tags", config.manifest, len(records),
               manifest.split_counts(), len(manifest.tags))
  return records


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
  job_io.check_output_dir(output_dir, config.overwrite)
  if manifest is None:
    manifest = read_manifest(config)
  records = checked_clip_records(config, manifest)
  start = time.time()
  with job_io.work_dir_of(output_dir) as work_dir:
    options = PipelineOptions(list(beam_args))
    runner = job_io.make_runner(options)
    progress_dir = job_io.progress_dir_of(work_dir, runner, config.progress_seconds)
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_pipeline(pipeline, records, config, len(manifest.tags), work_dir, progress_dir)
    result = job_io.run_with_progress(pipeline, progress_dir, len(records),
                                      config.progress_seconds, TOOL)
    counters = job_io.query_counters(result)
    summary = job_io.pop_summary(work_dir)
    errors = job_io.read_error_records(work_dir)
    counts = reconcile(summary, errors, len(records), counters)
    metadata = build_metadata(config, manifest, summary, errors, counts,
                              time.time() - start)
    job_io.finish_and_publish(work_dir, output_dir, metadata, config.overwrite)
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
