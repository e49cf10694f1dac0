"""The record of a catalogue with parts, and the rewriting of its parts (docs/catalog.md).

``catalog.json`` lists the parts that count, and every input path is in exactly one of
them; ``deepbof_tf.catalog_parts`` reads that layout, this module writes it for the
launcher (``beam_jobs.catalog_runs``):

* :func:`new_record`, :func:`take_part_name`, :func:`part_entry`: the record and the
  entries of its parts;
* :func:`commit_record`: ``catalog.json`` rewritten atomically, then the catalogue's
  ``metadata.json`` over all parts (:func:`merged_metadata`), then the parts the record
  no longer lists deleted;
* :func:`remove_unlisted_parts`: what a killed run left in ``parts/``;
* :func:`drop_paths` and :func:`rewrite_part`: a part published again without some
  paths (tagged again, or pruned), its untouched files copied and the others filtered.

It runs no pipeline: it uses the run protocol (``beam_jobs.job_io``: file systems, work
directories, publish) and the names of the pipeline's outputs
(``beam_jobs.tag_catalog_lib``); pyarrow and TensorFlow (to filter a TFRecord file) are
imported on first use.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from beam_jobs import job_io
from beam_jobs.tag_catalog_lib import METADATA_FILE, PARQUET_DIR, PARQUET_SUFFIX, PATH
from deepbof_tf import catalog_parts


# --------------------------------------------------------------------------------------
# The outputs of a part.
# --------------------------------------------------------------------------------------


def output_files(work_dir: str, directory: str, suffix: str) -> List[str]:
  """The files ``work_dir/directory/*suffix`` (a part's outputs of one kind), sorted."""
  fs = job_io.file_system(work_dir)
  return sorted(fs.glob(job_io.join(work_dir, directory, f"*{suffix}")))


def parquet_rows(paths: Sequence[str]) -> int:
  """The rows of the Parquet files ``paths`` (local or URLs), from their footers."""
  import pyarrow.parquet as pq
  total = 0
  for path in paths:
    if job_io.is_url(path):
      import tensorflow as tf
      with tf.io.gfile.GFile(path, "rb") as f:
        import io as _io
        total += pq.read_metadata(_io.BytesIO(f.read())).num_rows
    else:
      total += pq.read_metadata(path).num_rows
  return total


# --------------------------------------------------------------------------------------
# The record: catalog.json, the catalogue's metadata.json, the parts it lists.
# --------------------------------------------------------------------------------------


def parts_root(catalog_dir: str) -> str:
  """``catalog_dir/parts``, the directory of the parts."""
  return job_io.join(catalog_dir, catalog_parts.PARTS_DIR)


def new_record(fingerprint: str) -> Dict[str, Any]:
  """The ``catalog.json`` of a catalogue without parts."""
  return {"format_version": catalog_parts.CATALOG_FORMAT_VERSION,
          "model_fingerprint": fingerprint, "next_part": 0, "parts": [],
          "totals": {"files": 0, "files_tagged": 0, "files_failed": 0}}


def part_entry(name: str, metadata: Mapping[str, Any]) -> Dict[str, Any]:
  """The record's entry of part ``name``: its files and counts, from its metadata."""
  c = metadata["counters"]
  return {"name": name, "files": metadata["files"], "files_matched": c["files_matched"],
          "files_tagged": c["files_tagged"], "files_failed": c["files_failed"]}


def merged_metadata(catalog_dir: str, record: Mapping[str, Any],
                    base: Mapping[str, Any]) -> Dict[str, Any]:
  """The catalogue's ``metadata.json``: its parts' metadata, counts summed.

  The settings (model, tags, top_k, …) are the newest part's (``base`` for a
  catalogue without parts); ``files`` lists every part's files relative to the
  catalogue; ``counters`` sums the parts' (reconciled: matched = tagged + failed over
  all parts, and in every part).
  """
  names = [part["name"] for part in record["parts"]]
  parts = [catalog_parts.read_json(job_io.join(parts_root(catalog_dir), name,
                                               METADATA_FILE)) for name in names]
  out = dict(parts[-1] if parts else base)
  counts = {"files_matched": 0, "files_tagged": 0, "files_failed": 0}
  beam_counters: Dict[str, int] = {}
  failed_by_stage: Dict[str, int] = {}
  files: Dict[str, List[str]] = {kind: [] for kind in catalog_parts.FILE_KINDS}
  reconciled = matches = True
  sources = []
  for name, part in zip(names, parts):
    c = part["counters"]
    for key in counts:
      counts[key] += int(c[key])
    for key, value in c.get("beam_counters", {}).items():
      beam_counters[key] = beam_counters.get(key, 0) + int(value)
    for key, value in part["failed_by_stage"].items():
      failed_by_stage[key] = failed_by_stage.get(key, 0) + int(value)
    for kind in files:
      files[kind].extend(f"{catalog_parts.PARTS_DIR}/{name}/{rel}"
                         for rel in part["files"][kind])
    reconciled = reconciled and bool(c["reconciled"])
    matches = matches and bool(c["matches_outputs"])
    if c["counters_source"] not in sources:
      sources.append(c["counters_source"])
  counts["reconciled"] = reconciled and (
      counts["files_matched"] == counts["files_tagged"] + counts["files_failed"])
  counts["matches_outputs"] = matches
  counts["counters_source"] = "; ".join(sources) or "no parts"
  counts["beam_counters"] = dict(sorted(beam_counters.items()))
  out.update({
      "num_files": counts["files_tagged"], "num_failed": counts["files_failed"],
      "failed_by_stage": failed_by_stage, "counters": counts, "files": files,
      "elapsed_seconds": round(sum(float(p["elapsed_seconds"]) for p in parts), 3),
      "parts": names, "model_fingerprint": record["model_fingerprint"],
      "catalog_format_version": record["format_version"]})
  if "last_run" in record:
    out["last_run"] = record["last_run"]
  return out


def commit_record(catalog_dir: str, record: Dict[str, Any], base: Mapping[str, Any],
                  dropped: Sequence[str] = ()) -> None:
  """Publishes ``record``: ``catalog.json`` (atomically), then ``metadata.json``; the
  parts it no longer lists (``dropped``) are deleted after.

  Args:
    catalog_dir: the catalogue directory.
    record: the new ``catalog.json``.
    base: the metadata of a catalogue without parts (:func:`merged_metadata`).
    dropped: names of parts that the new record replaced.
  """
  from deepbof_tf import io_utils
  record["totals"] = {
      "files": sum(p["files_matched"] for p in record["parts"]),
      "files_tagged": sum(p["files_tagged"] for p in record["parts"]),
      "files_failed": sum(p["files_failed"] for p in record["parts"])}
  job_io.file_system(catalog_dir).makedirs(catalog_dir)
  io_utils.write_json(job_io.join(catalog_dir, catalog_parts.CATALOG_FILE), record)
  io_utils.write_json(job_io.join(catalog_dir, METADATA_FILE),
                      merged_metadata(catalog_dir, record, base))
  fs = job_io.file_system(catalog_dir)
  for name in dropped:
    path = job_io.join(parts_root(catalog_dir), name)
    if fs.exists(path):
      fs.rmtree(path)


def remove_unlisted_parts(catalog_dir: str, record: Mapping[str, Any]) -> List[str]:
  """Deletes part directories that ``catalog.json`` does not list (published by a run
  killed before its record was rewritten, or replaced parts left behind) and the work
  directories of killed runs; returns what was removed.

  A part's work directory without an owner record is removed too: its run was killed
  between ``job_io.finish_and_publish``'s removal of the record and the rename (or
  between the directory's creation and the record's write), since one run at a time
  updates a catalogue (docs/catalog.md).
  """
  root = parts_root(catalog_dir)
  fs = job_io.file_system(root)
  if not fs.exists(root):
    return []
  listed = {part["name"] for part in record["parts"]}
  removed = []
  for entry in sorted(fs.listdir(root)):
    entry = entry.rstrip("/")
    if job_io.INCOMPLETE in entry:
      path = job_io.join(root, entry)
      owner = job_io.join(path, job_io.OWNER_FILE)
      if not fs.exists(owner) or job_io.owner_is_gone(catalog_parts.read_json(owner)):
        logging.warning("removing %s, left by a run that was killed", path)
        fs.rmtree(path)
        removed.append(entry)
    elif catalog_parts.part_number(entry) is not None and entry not in listed:
      logging.warning("removing %s, a part the catalogue does not list", entry)
      fs.rmtree(job_io.join(root, entry))
      removed.append(entry)
  return removed


def take_part_name(record: Dict[str, Any]) -> str:
  """The next part's name; the record's ``next_part`` moves on (names are never reused)."""
  number = int(record["next_part"])
  record["next_part"] = number + 1
  return catalog_parts.part_name(number)


# --------------------------------------------------------------------------------------
# Parts rewritten without some paths (tagged again, or pruned).
# --------------------------------------------------------------------------------------


def write_inputs(work_dir: str, lines: Sequence[Mapping[str, Any]]) -> None:
  """Writes a part's ``inputs.jsonl`` (one line per input file) atomically."""
  from deepbof_tf import io_utils
  io_utils.write_atomic(job_io.join(work_dir, catalog_parts.INPUTS_FILE),
                        "".join(json.dumps(dict(line), sort_keys=True) + "\n"
                                for line in lines))


def _counts_of_outputs(work_dir: str, matched: int, source: str,
                       beam_counters: Mapping[str, int]) -> Dict[str, Any]:
  errors = catalog_parts.read_errors(work_dir)
  rows = parquet_rows(output_files(work_dir, PARQUET_DIR, PARQUET_SUFFIX))
  return {"files_matched": matched, "files_tagged": rows, "files_failed": len(errors),
          "reconciled": matched == rows + len(errors), "matches_outputs": True,
          "counters_source": source, "beam_counters": dict(beam_counters)}


def rewrite_part(catalog_dir: str, name: str, drop: Iterable[str],
                 new_name: str) -> Optional[Dict[str, Any]]:
  """Publishes part ``new_name``: part ``name`` without the rows of the paths ``drop``.

  Parquet and TFRecord files that hold none of them are copied as they are; the
  others, the error files and ``inputs.jsonl`` are filtered. Counts come from the
  outputs (``beam_counters`` are the old part's, as its runs counted them).

  Returns:
    The new part's ``metadata.json``, or None when nothing of the part is left (then
    no part is written).
  """
  drop = set(drop)
  old_dir = job_io.join(parts_root(catalog_dir), name)
  new_dir = job_io.join(parts_root(catalog_dir), new_name)
  old = catalog_parts.read_json(job_io.join(old_dir, METADATA_FILE))
  held = catalog_parts.read_jsonl(job_io.join(old_dir, catalog_parts.INPUTS_FILE))
  inputs = [line for line in held if line["path"] not in drop]
  if not inputs:
    return None
  import pyarrow.compute as pc
  import pyarrow.parquet as pq
  fs = job_io.file_system(old_dir)
  with job_io.work_dir_of(new_dir) as work_dir:
    for kind in catalog_parts.FILE_KINDS:
      for rel in old["files"][kind]:
        src, dst = job_io.join(old_dir, rel), job_io.join(work_dir, rel)
        fs.makedirs(job_io.join(work_dir, rel.rsplit("/", 1)[0]))
        if kind == "parquet":
          table = pq.read_table(src) if not job_io.is_url(src) else None
          if table is None:
            import io as _io
            table = pq.read_table(_io.BytesIO(catalog_parts.read_bytes(src)))
          keep = pc.invert(pc.is_in(table.column(PATH), value_set=_pa_strings(drop)))
          if pc.all(keep).as_py():
            _copy(src, dst)
          else:
            with fs.GFile(dst, "wb") as f:
              pq.write_table(table.filter(keep), f)
        elif kind == "tfrecord":
          _filter_tfrecords(src, dst, drop)
        else:
          lines = [line for line in catalog_parts.read_jsonl(src)
                   if line["path"] not in drop]
          with fs.GFile(dst, "w") as f:
            f.write("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
    write_inputs(work_dir, inputs)
    counts = _counts_of_outputs(
        work_dir, len(inputs), f"outputs (rewritten from {name} without "
        f"{len(held) - len(inputs)} files tagged again or pruned)",
        old["counters"].get("beam_counters", {}))
    failed_by_stage: Dict[str, int] = {}
    for e in catalog_parts.read_errors(work_dir):
      failed_by_stage[e["stage"]] = failed_by_stage.get(e["stage"], 0) + 1
    metadata = dict(old, counters=counts, num_files=counts["files_tagged"],
                    num_failed=counts["files_failed"], failed_by_stage=failed_by_stage,
                    rewritten_from=name)
    job_io.finish_and_publish(work_dir, new_dir, metadata, False, METADATA_FILE)
  return metadata


def _copy(src: str, dst: str) -> None:
  if job_io.is_url(src) or job_io.is_url(dst):
    job_io.gfile().copy(src, dst, overwrite=True)
  else:
    import shutil
    shutil.copyfile(src, dst)


def _pa_strings(values: Iterable[str]):
  import pyarrow as pa
  return pa.array(sorted(values), pa.string())


def _filter_tfrecords(src: str, dst: str, drop: set) -> None:
  """Copies the gzip TFRecord file ``src`` to ``dst`` without the records of ``drop``."""
  import tensorflow as tf
  records = [r.numpy() for r in tf.data.TFRecordDataset(src, compression_type="GZIP")]
  kept = [r for r in records if tf.train.Example.FromString(r).features.feature[
      PATH].bytes_list.value[0].decode("utf-8") not in drop]
  if len(kept) == len(records):
    tf.io.gfile.copy(src, dst, overwrite=True)
    return
  with tf.io.TFRecordWriter(dst, options="GZIP") as writer:
    for r in kept:
      writer.write(r)


def drop_paths(catalog_dir: str, record: Dict[str, Any], owners: Mapping[str, str],
               paths: Iterable[str]) -> Tuple[List[Dict[str, Any]], List[str]]:
  """Rewrites the parts that hold ``paths`` without them (not yet committed).

  Args:
    catalog_dir: the catalogue directory.
    record: the catalogue's record; its ``parts`` and ``next_part`` are updated.
    owners: path → the name of the part that holds it.
    paths: the paths to drop.

  Returns:
    ``(new part entries, names of the replaced parts)``.
  """
  by_part: Dict[str, set] = {}
  for path in paths:
    if path in owners:
      by_part.setdefault(owners[path], set()).add(path)
  added, replaced, parts = [], [], []
  for entry in record["parts"]:  # a rewritten part takes its predecessor's place
    name = entry["name"]
    if name not in by_part:
      parts.append(entry)
      continue
    new_name = take_part_name(record)
    metadata = rewrite_part(catalog_dir, name, by_part[name], new_name)
    replaced.append(name)
    if metadata is not None:
      added.append(part_entry(new_name, metadata))
      parts.append(added[-1])
  record["parts"] = parts
  return added, replaced
