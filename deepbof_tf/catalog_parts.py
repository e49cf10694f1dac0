"""A catalogue of ``deepbof-tag-catalog`` read as one table, whatever its parts.

The layout (docs/catalog.md):

* ``OUTPUT/catalog.json``: the record (:data:`CATALOG_FILE`): its format version, the
  fingerprint of the model's export, the parts (name, counts, files) and the totals.
  It is rewritten atomically after each part, and it alone says which parts count.
* ``OUTPUT/parts/part-NNNNNN/``: immutable parts, each holding a one-shot catalogue's
  outputs (``parquet/``, ``tfrecord/``, ``errors/``, ``metadata.json``) plus
  ``inputs.jsonl``, one line per input file it covered (path, size, mtime_ns, sha256
  with ``--identity=content``, status ``tagged`` or ``failed``).
* ``OUTPUT/metadata.json``: the catalogue's metadata over all parts (the keys of a
  part's, counts summed, files relative to ``OUTPUT``), rewritten after catalog.json.

Every input path is in exactly one part of the record: a run that re-tags or drops a
path rewrites the older parts that held it into new parts without it (the switch is
one rewrite of catalog.json), so the visible rows are all the rows of the listed parts
and no reader filters anything. A directory without ``catalog.json`` (the one-shot
layout of earlier versions) is one part: itself.

This module imports no TensorFlow (``gs://`` paths use ``tf.io.gfile`` on first use)
and no Beam, so that the serving side reads catalogues with it too.
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any, Dict, List, Optional, Sequence

CATALOG_FILE = "catalog.json"
CATALOG_FORMAT_VERSION = 1
PARTS_DIR = "parts"
PART_PREFIX = "part-"
INPUTS_FILE = "inputs.jsonl"
METADATA_FILE = "metadata.json"
PARQUET_DIR = "parquet"
TFRECORD_DIR = "tfrecord"
ERRORS_DIR = "errors"
FILE_KINDS = ("parquet", "tfrecord", "errors")
TAGGED = "tagged"
FAILED = "failed"


def is_url(path: str) -> bool:
  """True for a URL (``gs://…``)."""
  return "://" in path


def join(base: str, *parts: str) -> str:
  """``base/part/…`` (``posixpath`` for URLs)."""
  return posixpath.join(base, *parts) if is_url(base) else os.path.join(base, *parts)


def _gfile():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  (URLs only)
  return tf.io.gfile


def exists(path: str) -> bool:
  """Whether ``path`` exists (local or URL)."""
  return _gfile().exists(path) if is_url(path) else os.path.exists(path)


def read_bytes(path: str) -> bytes:
  """The content of a local file or URL."""
  if is_url(path):
    with _gfile().GFile(path, "rb") as f:
      return f.read()
  with open(path, "rb") as f:
    return f.read()


def read_json(path: str) -> Dict[str, Any]:
  """A JSON file (local or URL)."""
  return json.loads(read_bytes(path).decode("utf-8"))


def read_jsonl(path: str) -> List[Dict[str, Any]]:
  """The records of a JSON-lines file (local or URL)."""
  return [json.loads(line) for line in read_bytes(path).decode("utf-8").splitlines()
          if line.strip()]


def part_name(number: int) -> str:
  """``part-000042``."""
  return f"{PART_PREFIX}{number:06d}"


def part_number(name: str) -> Optional[int]:
  """The number of a part's name; None for any other name."""
  digits = name[len(PART_PREFIX):]
  if name.startswith(PART_PREFIX) and digits.isdigit() and len(digits) == 6:
    return int(digits)
  return None


def read_record(catalog_dir: str) -> Optional[Dict[str, Any]]:
  """The catalogue's ``catalog.json``; None for a one-shot catalogue (or no catalogue)."""
  path = join(catalog_dir, CATALOG_FILE)
  return read_json(path) if exists(path) else None


def read_metadata(catalog_dir: str) -> Dict[str, Any]:
  """The catalogue's ``metadata.json`` (over all parts in the layout with parts).

  Raises:
    FileNotFoundError: ``catalog_dir`` is not a catalogue.
  """
  path = join(catalog_dir, METADATA_FILE)
  if not exists(path):
    raise FileNotFoundError(f"{catalog_dir}: not a catalogue (no {METADATA_FILE}); run "
                            "deepbof-tag-catalog first")
  return read_json(path)


def part_dirs(catalog_dir: str) -> List[str]:
  """The directories of the parts that count, in the record's order (oldest first).

  A one-shot catalogue (no ``catalog.json``) is one part: ``[catalog_dir]``.
  """
  record = read_record(catalog_dir)
  if record is None:
    return [catalog_dir]
  return [join(catalog_dir, PARTS_DIR, part["name"]) for part in record["parts"]]


def files(catalog_dir: str, kind: str) -> List[str]:
  """The output files of one kind (``parquet``, ``tfrecord``, ``errors``) of every part.

  Args:
    catalog_dir: the catalogue directory.
    kind: one of :data:`FILE_KINDS`.
  """
  if kind not in FILE_KINDS:
    raise ValueError(f"kind must be one of {FILE_KINDS}, got {kind!r}")
  record = read_record(catalog_dir)
  if record is None:
    return [join(catalog_dir, rel) for rel in read_metadata(catalog_dir)["files"][kind]]
  return [join(catalog_dir, PARTS_DIR, part["name"], rel)
          for part in record["parts"] for rel in part["files"][kind]]


def parquet_files(catalog_dir: str) -> List[str]:
  """Every Parquet file of the catalogue (all of their rows are visible)."""
  return files(catalog_dir, "parquet")


def tfrecord_files(catalog_dir: str) -> List[str]:
  """Every TFRecord file of the catalogue, for ``tf.data.TFRecordDataset(files,
  compression_type="GZIP")`` (all of their records are visible)."""
  return files(catalog_dir, "tfrecord")


def dataset(catalog_dir: str):
  """A ``pyarrow.dataset.Dataset`` over the catalogue's Parquet files (local or gs://)."""
  import pyarrow.dataset as ds
  paths = parquet_files(catalog_dir)
  if not paths:
    return ds.dataset(parquet_schema().empty_table())
  if is_url(paths[0]):  # read through tf.io.gfile, as every gs:// file of the package
    import io
    import pyarrow.parquet as pq
    return ds.dataset([pq.read_table(io.BytesIO(read_bytes(p))) for p in paths])
  return ds.dataset(paths, format="parquet")


def read_table(catalog_dir: str, columns: Optional[Sequence[str]] = None):
  """The visible rows of the catalogue as one ``pyarrow.Table`` (parts in order).

  Args:
    catalog_dir: the catalogue directory.
    columns: the columns to read (default: all).
  """
  return dataset(catalog_dir).to_table(columns=list(columns) if columns else None)


def parquet_schema():
  """The Parquet schema of a catalogue's rows (docs/catalog.md)."""
  import pyarrow as pa
  return pa.schema([
      ("path", pa.string()), ("duration_seconds", pa.float64()),
      ("probabilities", pa.list_(pa.float32())), ("top_tags", pa.list_(pa.string())),
      ("top_probabilities", pa.list_(pa.float32())), ("embedding", pa.list_(pa.float32())),
  ])


def read_errors(catalog_dir: str) -> List[Dict[str, Any]]:
  """The ``{path, stage, error}`` records of every part (of a work directory too)."""
  records: List[Dict[str, Any]] = []
  record = read_record(catalog_dir)
  if record is None:  # one part, or a work directory: errors/*.jsonl as written
    directory = join(catalog_dir, ERRORS_DIR)
    if is_url(directory):
      names = sorted(_gfile().glob(join(directory, "*.jsonl")))
    else:
      names = sorted(join(directory, n) for n in (os.listdir(directory)
                                                   if os.path.isdir(directory) else [])
                     if n.endswith(".jsonl"))
    for path in names:
      records.extend(read_jsonl(path))
    return records
  for directory in part_dirs(catalog_dir):
    records.extend(read_errors(directory))
  return records


def read_inputs(catalog_dir: str) -> Dict[str, Dict[str, Any]]:
  """``path → its inputs.jsonl line plus "part"`` over the parts of ``catalog.json``.

  Empty for a one-shot catalogue (it records no input identities).
  """
  record = read_record(catalog_dir)
  out: Dict[str, Dict[str, Any]] = {}
  for part in (record or {}).get("parts", []):
    for line in read_jsonl(join(catalog_dir, PARTS_DIR, part["name"], INPUTS_FILE)):
      out[line["path"]] = dict(line, part=part["name"])
  return out
