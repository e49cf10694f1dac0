"""The launcher of ``deepbof-tag-catalog``: a run that brings a catalogue up to date.

The pipeline (``beam_jobs.tag_catalog_lib``) tags the files it is given; this module
chooses them, runs the pipeline once per part and keeps the catalogue's record
(docs/catalog.md, "Growing a catalogue"):

1. :func:`run` lists the input (:func:`list_inputs`: a pattern is matched here, as
   ``fileio.MatchFiles`` matches it, a manifest gives its paths), each file with its
   identity (``IDENTITIES``: size and modification time, or size and sha256), and
   refuses a catalogue made with another export (:func:`export_fingerprint`).
2. :func:`update_catalog` drops the files the input no longer lists (``prune``), then
   tags the files the catalogue does not hold (:func:`is_held`; every file with
   ``force``) in slices of ``part_max_files``: each slice is one pipeline run
   (:func:`tag_part`) into a work directory that is renamed to ``parts/part-NNNNNN``
   when complete, as ``deepbof-preprocess`` publishes its output (the run protocol of
   both jobs: ``beam_jobs.job_io``), and ``catalog.json`` is rewritten to list it
   before the next slice starts. The older part that held a path tagged again is
   rewritten without it (the record and its parts: ``beam_jobs.catalog_record``).
3. A part's counts come from the pipeline's ``_summary.json``, its outputs and the
   Beam counters (:func:`reconcile`: matched = tagged + failed) and go into its
   ``metadata.json`` (:func:`build_metadata`); :func:`format_counts` prints them.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

from beam_jobs import catalog_record
from beam_jobs import job_io
from beam_jobs.job_io import beam  # apache_beam, imported with crcmod's warning dropped
from beam_jobs.tag_catalog_lib import (ERRORS_DIR, ERRORS_SUFFIX, FORMAT_VERSION,
                                       METADATA_FILE, PARQUET_DIR, PARQUET_SUFFIX,
                                       TFRECORD_DIR, TFRECORD_SUFFIX, TagCatalogConfig,
                                       build_pipeline, input_pattern,
                                       resolved_input_format)
from deepbof_tf import __version__
from deepbof_tf import catalog_parts
from deepbof_tf import exported
from deepbof_tf import segments
from deepbof_tf.data import manifests


# --------------------------------------------------------------------------------------
# The inputs and their identities.
# --------------------------------------------------------------------------------------


def manifest_paths(config: TagCatalogConfig, input_format: str) -> List[str]:
  """The audio files a manifest lists (relative paths joined to ``audio_root``)."""
  manifest = manifests.read_manifest(config.input, input_format, top_n_tags=0)
  paths = [job_io.resolve_audio_path(config.audio_root, e.path) for e in manifest.entries]
  return list(dict.fromkeys(paths))


def export_fingerprint(version_dir: str) -> str:
  """A stable fingerprint of an export: sha256 of its graph, variables index and info.

  ``saved_model.pb``, ``variables/variables.index`` (which names the variables' data
  and its checksums) and the export's ``deepbof_export.json``, each preceded by its
  name; a file an export lacks is left out.

  Args:
    version_dir: the export's version directory.
  """
  import hashlib
  digest = hashlib.sha256()
  for rel in ("saved_model.pb", "variables/variables.index",
              f"assets/{exported.EXPORT_INFO_FILE}"):
    path = job_io.join(version_dir, *rel.split("/"))
    if catalog_parts.exists(path):
      digest.update(rel.encode() + b"\0")
      digest.update(catalog_parts.read_bytes(path))
  return digest.hexdigest()


def _sha256_of(path: str) -> Optional[str]:
  import hashlib
  try:
    if job_io.is_url(path):
      return hashlib.sha256(catalog_parts.read_bytes(path)).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()
  except (OSError, ValueError):
    return None


def _stat(path: str) -> Dict[str, Any]:
  """``{path, size, mtime_ns}`` of one input; None values for a file that is missing."""
  if job_io.is_url(path):
    from apache_beam.io.filesystems import FileSystems
    try:
      (found,) = FileSystems.match([path])[0].metadata_list[:1] or [None]
    except Exception:  # pylint: disable=broad-except
      found = None
    if found is None:
      return {"path": path, "size": None, "mtime_ns": None}
    return {"path": path, "size": int(found.size_in_bytes),
            "mtime_ns": int(round(float(found.last_updated_in_seconds) * 1e9))}
  try:
    st = os.stat(path)
  except OSError:
    return {"path": path, "size": None, "mtime_ns": None}
  return {"path": path, "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def list_inputs(config: TagCatalogConfig, input_format: str) -> List[Dict[str, Any]]:
  """The input files with their identities (:data:`IDENTITIES`), in sorted order.

  A pattern is matched here, in the launcher, as ``fileio.MatchFiles`` matches it (a
  directory means every file under it); a manifest's files are its paths.

  Raises:
    ValueError: the manifest lists no files.
  """
  if input_format == "pattern":
    from apache_beam.io.filesystems import FileSystems
    try:
      found = FileSystems.match([input_pattern(config.input)])[0].metadata_list
    except Exception:  # pylint: disable=broad-except  (BeamIOError: nothing there)
      found = []
    paths = sorted({m.path for m in found
                    if job_io.is_url(m.path) or not os.path.isdir(m.path)})
  else:
    paths = manifest_paths(config, input_format)
    if not paths:
      raise ValueError(f"{config.input}: the manifest lists no files")
  listed = [_stat(path) for path in paths]
  if config.identity == "content":
    for entry in listed:
      entry["sha256"] = _sha256_of(entry["path"]) if entry["size"] is not None else None
  return listed


def is_held(held: Optional[Mapping[str, Any]], entry: Mapping[str, Any],
            identity: str) -> bool:
  """Whether the catalogue's line ``held`` of a path is the file ``entry`` describes.

  Only a tagged file is held: a failure is retried on every run.

  Args:
    held: the path's ``inputs.jsonl`` line in the catalogue, or None.
    entry: the file as listed now (:func:`list_inputs`).
    identity: "stat" (size and modification time) or "content" (size and sha256).
  """
  if held is None or held.get("status") != catalog_parts.TAGGED:
    return False
  if entry.get("size") is None or held.get("size") != entry["size"]:
    return False
  if identity == "content":
    return entry.get("sha256") is not None and held.get("sha256") == entry["sha256"]
  return held.get("mtime_ns") == entry.get("mtime_ns")


# --------------------------------------------------------------------------------------
# Counts and metadata.
# --------------------------------------------------------------------------------------


def read_errors(catalog_dir: str) -> List[Dict[str, Any]]:
  """The error records of a catalogue (every part), or of a part's work directory."""
  return catalog_parts.read_errors(catalog_dir)


def reconcile(summary: Mapping[str, Any], errors: Sequence[Mapping[str, Any]],
              parquet_rows: int, counters: Optional[Mapping[str, int]]) -> Dict[str, Any]:
  """The counts (Beam counters when the runner reports them) checked against the outputs.

  Returns:
    ``files_matched``, ``files_tagged``, ``files_failed``, ``reconciled`` (matched =
    tagged + failed), ``matches_outputs`` (the counts equal the written rows and error
    lines) and where the counts came from.
  """
  from_outputs = {"files_matched": int(summary["files_matched"]),
                  "files_tagged": int(parquet_rows), "files_failed": len(errors)}
  used, source = job_io.reported_counts(from_outputs, counters)
  used["reconciled"] = used["files_matched"] == used["files_tagged"] + used["files_failed"]
  used["matches_outputs"] = (all(used[k] == from_outputs[k] for k in from_outputs)
                             and summary["files_tagged"] == parquet_rows
                             and summary["files_failed"] == len(errors))
  used["counters_source"] = source
  used["beam_counters"] = dict(sorted((counters or {}).items()))
  return used


def build_metadata(config: TagCatalogConfig, input_format: str, info: Mapping[str, Any],
                   version_dir: str, work_dir: str, errors: Sequence[Mapping[str, Any]],
                   counts: Mapping[str, Any], elapsed_seconds: float) -> Dict[str, Any]:
  """The catalogue's ``metadata.json`` (docs/catalog.md)."""
  failed_by_stage: Dict[str, int] = {}
  for e in errors:
    failed_by_stage[e["stage"]] = failed_by_stage.get(e["stage"], 0) + 1
  sample_rate = int(info["frontend"]["sample_rate"])
  window = int(info["pool_frames"]) * int(info["frontend"]["hop_length"]) / sample_rate
  model = config.model if job_io.is_url(config.model) else os.path.abspath(config.model)
  version = version_dir if job_io.is_url(version_dir) else os.path.abspath(version_dir)

  def rel(directory, suffix):
    return [p[len(work_dir):].lstrip("/")
            for p in catalog_record.output_files(work_dir, directory, suffix)]

  metadata = {
      "format_version": FORMAT_VERSION,
      "package_version": __version__,
      "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "model": model,
      "model_version_dir": version,
      "tags": list(info["tags"]),
      "n_tags": len(info["tags"]),
      "embedding_size": int(info["embedding_size"]),
      "sample_rate": sample_rate,
      "channel_mode": config.channel_mode or info.get("channel_mode", "first"),
      "chunk_seconds": config.chunk_seconds,
      "windows_per_chunk": max(1, int(round(config.chunk_seconds / window))),
      "one_shot_seconds": config.one_shot_seconds,
      "top_k": config.top_k,
      "input": config.input,
      "input_format": input_format,
      "audio_root": config.audio_root,
      "num_files": counts["files_tagged"],
      "num_failed": counts["files_failed"],
      "failed_by_stage": failed_by_stage,
      "counters": dict(counts),
      "files": {"parquet": rel(PARQUET_DIR, PARQUET_SUFFIX),
                "tfrecord": rel(TFRECORD_DIR, TFRECORD_SUFFIX),
                "errors": rel(ERRORS_DIR, ERRORS_SUFFIX)},
      "elapsed_seconds": round(elapsed_seconds, 3),
  }
  if config.segment_seconds:  # only then: metadata without segments is as it was
    metadata[segments.METADATA_KEY] = float(config.segment_seconds)
  return metadata


def read_metadata(catalog_dir: str) -> Dict[str, Any]:
  """A catalogue's ``metadata.json`` (its presence marks a complete catalogue)."""
  fs = job_io.file_system(catalog_dir)
  path = job_io.join(catalog_dir, METADATA_FILE)
  if not fs.exists(path):
    raise FileNotFoundError(f"{catalog_dir}: not a catalogue (no {METADATA_FILE}); run "
                            "deepbof-tag-catalog first")
  with fs.GFile(path, "r") as f:
    return json.load(f)


# --------------------------------------------------------------------------------------
# Runs: one pipeline run per part, the record committed after each.
# --------------------------------------------------------------------------------------


def tag_part(config: TagCatalogConfig, input_format: str, info: Mapping[str, Any],
             version_dir: str, beam_args: Sequence[str], part_dir: str,
             entries: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
  """Tags the files ``entries`` with one pipeline run and publishes them as a part.

  Returns:
    The part's ``metadata.json``.
  """
  from apache_beam.options.pipeline_options import PipelineOptions
  start = time.time()
  paths = [entry["path"] for entry in entries]
  args, note = job_io.sized_local_args(beam_args, len(entries), config.min_files_per_worker)
  if note:
    logging.info("%s", note)
  with job_io.work_dir_of(part_dir) as work_dir:
    options = PipelineOptions(args)
    pipeline = beam.Pipeline(runner=job_io.make_runner(options), options=options)
    build_pipeline(pipeline, config, paths, info, version_dir, work_dir)
    result = job_io.run_and_wait(pipeline)
    counters = job_io.query_counters(result)
    summary = job_io.pop_summary(work_dir)
    errors = read_errors(work_dir)
    rows = catalog_record.parquet_rows(
        catalog_record.output_files(work_dir, PARQUET_DIR, PARQUET_SUFFIX))
    counts = reconcile(summary, errors, rows, counters)
    failed = {e["path"] for e in errors}
    catalog_record.write_inputs(work_dir, [dict(entry, status=catalog_parts.FAILED
                                  if entry["path"] in failed else catalog_parts.TAGGED)
                             for entry in entries])
    metadata = build_metadata(config, input_format, info, version_dir, work_dir,
                              errors, counts, time.time() - start)
    job_io.finish_and_publish(work_dir, part_dir, metadata, False, METADATA_FILE)
  return metadata


def _check_model(output_dir: str, record: Mapping[str, Any], fingerprint: str,
                 model: str) -> None:
  if record["model_fingerprint"] != fingerprint:
    raise ValueError(
        f"{output_dir}: the catalogue was made with another model (export fingerprint "
        f"{record['model_fingerprint'][:12]}…, {model} has {fingerprint[:12]}…); start "
        "a new catalogue for this model with another --output_dir (or replace this one "
        "with --overwrite)")


def update_catalog(config: TagCatalogConfig, input_format: str, info: Mapping[str, Any],
                   version_dir: str, fingerprint: str, beam_args: Sequence[str],
                   catalog_dir: str, listed: Sequence[Mapping[str, Any]]) -> None:
  """Brings the catalogue ``catalog_dir`` up to date with the files ``listed``.

  Prunes (``config.prune``) the files no longer listed, then tags the files it does
  not hold (all of them with ``config.force``) in slices of ``config.part_max_files``,
  each published as a part and committed to ``catalog.json`` before the next starts.
  """
  base = build_metadata(config, input_format, info, version_dir, catalog_dir, [],
                        {"files_matched": 0, "files_tagged": 0, "files_failed": 0,
                         "reconciled": True, "matches_outputs": True,
                         "counters_source": "no parts", "beam_counters": {}}, 0.0)
  base["files"] = {kind: [] for kind in catalog_parts.FILE_KINDS}
  record = catalog_parts.read_record(catalog_dir) or catalog_record.new_record(fingerprint)
  _check_model(catalog_dir, record, fingerprint, config.model)
  catalog_record.remove_unlisted_parts(catalog_dir, record)
  held = catalog_parts.read_inputs(catalog_dir)
  owners = {path: line["part"] for path, line in held.items()}
  listed_paths = {entry["path"] for entry in listed}
  pruned = sorted(set(held) - listed_paths) if config.prune else []
  todo = [entry for entry in listed
          if config.force or not is_held(held.get(entry["path"]), entry, config.identity)]
  last_run = {"files_listed": len(listed), "files_held": len(listed) - len(todo),
              "files_to_tag": len(todo), "files_pruned": len(pruned), "parts_added": [],
              "identity": config.identity, "force": config.force,
              "part_max_files": config.part_max_files}
  record.pop("last_run", None)
  if pruned:
    _, replaced = catalog_record.drop_paths(catalog_dir, record, owners, pruned)
    catalog_record.commit_record(catalog_dir, record, base, replaced)
    owners = {p: line["part"] for p, line in catalog_parts.read_inputs(catalog_dir).items()}
  for i in range(0, len(todo), config.part_max_files):
    entries = todo[i:i + config.part_max_files]
    name = catalog_record.take_part_name(record)
    part_dir = job_io.join(catalog_record.parts_root(catalog_dir), name)
    metadata = tag_part(config, input_format, info, version_dir, beam_args, part_dir,
                        entries)
    _, replaced = catalog_record.drop_paths(catalog_dir, record, owners,
                             [entry["path"] for entry in entries])
    record["parts"].append(catalog_record.part_entry(name, metadata))
    last_run["parts_added"].append(name)
    catalog_record.commit_record(catalog_dir, record, base, replaced)
    owners = {p: line["part"] for p, line in catalog_parts.read_inputs(catalog_dir).items()}
  record["last_run"] = last_run
  catalog_record.commit_record(catalog_dir, record, base)


def run(config: TagCatalogConfig, beam_args: Sequence[str] = ()) -> Dict[str, Any]:
  """Tags what the catalogue does not hold yet; returns its ``metadata.json``.

  A new ``output_dir`` becomes a catalogue of parts (docs/catalog.md); an existing one
  of the same model gets the files it does not hold, in new parts. With ``overwrite``
  an existing output is replaced: the new catalogue is built next to it and renamed
  over it at the end (as before incremental catalogues existed).

  Args:
    config: the run's configuration.
    beam_args: Beam pipeline options (``--runner``, ``--direct_num_workers``, …).

  Raises:
    FileExistsError: ``output_dir`` exists and is not a catalogue with parts (without
      ``overwrite``).
    FileNotFoundError: the model is not an export, or the manifest is missing.
    ValueError: no input matched, a bad manifest, or a catalogue of another model.
  """
  output_dir = config.output_dir.rstrip("/")
  job_io.remove_stale_work_dirs(output_dir)  # of killed runs with --overwrite
  record = catalog_parts.read_record(output_dir)
  if record is None and not config.overwrite and job_io.is_nonempty_dir(output_dir):
    raise FileExistsError(
        f"{output_dir}: output directory exists and is not a catalogue with parts (no "
        f"{catalog_parts.CATALOG_FILE}); choose another --output_dir or pass "
        "--overwrite to replace it")
  version_dir = exported.resolve_version_dir(config.model)
  info = exported.read_export_info(version_dir)
  fingerprint = export_fingerprint(version_dir)
  if record is not None and not config.overwrite:
    _check_model(output_dir, record, fingerprint, config.model)
    segments.check_catalog(output_dir, _metadata_if_any(output_dir),
                           config.segment_seconds)
  input_format = resolved_input_format(config)
  listed = list_inputs(config, input_format)
  if not listed:
    raise ValueError(f"{config.input}: matched no files")
  args = (config, input_format, info, version_dir, fingerprint, beam_args)
  if config.overwrite and job_io.is_nonempty_dir(output_dir):
    with job_io.work_dir_of(output_dir) as staging:
      update_catalog(*args, staging, listed)
      job_io.file_system(staging).remove(job_io.join(staging, job_io.OWNER_FILE))
      job_io.publish(staging, output_dir, overwrite=True)
  else:
    update_catalog(*args, output_dir, listed)
  return catalog_parts.read_metadata(output_dir)


def _metadata_if_any(catalog_dir: str) -> Optional[Dict[str, Any]]:
  """The catalogue's ``metadata.json``, or None before its first commit."""
  path = job_io.join(catalog_dir, METADATA_FILE)
  return catalog_parts.read_json(path) if catalog_parts.exists(path) else None


def format_counts(metadata: Mapping[str, Any]) -> str:
  """A short human-readable report of a finished run."""
  c = metadata["counters"]
  return "\n".join([
      f"files matched {c['files_matched']} = tagged {c['files_tagged']} + failed "
      f"{c['files_failed']}: {'reconciled' if c['reconciled'] else 'NOT RECONCILED'} "
      f"(source: {c['counters_source']}; match the outputs: {c['matches_outputs']})",
      f"failed inputs {metadata['num_failed']}: {metadata['failed_by_stage']}",
  ] + _last_run_lines(metadata))


def _last_run_lines(metadata: Mapping[str, Any]) -> List[str]:
  run_ = metadata.get("last_run")
  if not run_:
    return []
  return [f"this run: listed {run_['files_listed']}, held already {run_['files_held']}, "
          f"tagged {run_['files_to_tag']} in {len(run_['parts_added'])} new part(s), "
          f"pruned {run_['files_pruned']}; the catalogue has {len(metadata['parts'])} "
          "part(s)"]
