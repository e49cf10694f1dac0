"""Search by excerpt: the tracks of a catalogue with a stretch most like a query.

A catalogue made with ``deepbof-tag-catalog --segment_seconds=S`` holds one embedding
per segment of every track (``deepbof_tf.segments``; docs/catalog.md, "Search by
excerpt"). An excerpt, embedded whole (one bag-of-features, as ``deepbof-tag`` embeds a
clip), is compared with every segment by the cosine of ``deepbof_tf.similarity`` (the
same normalizations as the track index, fitted on the segments), and the answer is
grouped by track: each track once, with its best segment's start.

* :func:`load_segments` reads the segment columns into a :class:`SegmentTable`;
* :func:`build_index` / :func:`load_index` make the segment-level
  ``similarity.SimilarityIndex`` (in memory, or saved in ``CATALOG/index_segments/``),
  whose row names are :func:`segment_keys` so that a saved index is checked against the
  catalogue;
* :func:`search` asks the index for segments until ``k`` distinct tracks are found
  (filters are per track, spread to their segments);
* :func:`command` is ``deepbof-similar --segments``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from typing import Any, Dict, List, Optional, Sequence, TextIO

import numpy as np

from deepbof_tf import catalog_parts
from deepbof_tf import segments
from deepbof_tf import similarity

SEGMENT_INDEX_DIR = "index_segments"


@dataclasses.dataclass
class SegmentTable:
  """The segments of a catalogue, flattened over its tracks.

  Attributes:
    metadata: the catalogue's ``metadata.json``.
    paths: ``[N]`` track paths, in the catalogue's row order.
    columns: the other track columns read (``embedding`` ``[N, H]``, ``top_tags``,
      ``probabilities`` …), as ``similarity.load_catalog`` gives them.
    track: ``[M]`` the track row of each segment.
    starts: ``[M]`` float32 segment starts in seconds.
    windows: ``[M]`` pooling windows per segment.
    embeddings: ``[M, H]`` float32 segment embeddings.
  """

  metadata: Dict[str, Any]
  paths: List[str]
  columns: Dict[str, Any]
  track: np.ndarray
  starts: np.ndarray
  windows: np.ndarray
  embeddings: np.ndarray

  @property
  def segment_seconds(self) -> float:
    return float(self.metadata[segments.METADATA_KEY])

  def track_mask_to_segments(self, keep: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """A bool mask over tracks ``[N]`` (or ``[Q, N]``) spread to their segments."""
    if keep is None:
      return None
    keep = np.asarray(keep, bool)
    return keep[..., self.track]


def segment_keys(paths: Sequence[str], track: np.ndarray,
                 starts: np.ndarray) -> List[str]:
  """The index's row names: ``path@start`` (start in seconds, 3 decimals)."""
  return [f"{paths[t]}@{float(s):.3f}" for t, s in zip(track, starts)]


def load_segments(catalog_dir: str, columns: Sequence[str] = ("path", "embedding",
                                                              "top_tags")
                  ) -> SegmentTable:
  """Reads a catalogue's segments and the track columns ``columns``.

  Raises:
    FileNotFoundError: not a catalogue.
    ValueError: the catalogue has no segments (made without ``--segment_seconds``).
  """
  import pyarrow as pa
  import pyarrow.parquet as pq
  metadata = similarity.read_catalog_metadata(catalog_dir)
  if segments.catalog_segment_seconds(metadata) is None:
    raise ValueError(f"{catalog_dir}: the catalogue has no segments; make it with "
                     "deepbof-tag-catalog --segment_seconds=10 (a new catalogue, or "
                     "--overwrite) to search by excerpt")
  wanted = list(dict.fromkeys(list(columns) + ["path", segments.SEGMENT_STARTS,
                                               segments.SEGMENT_WINDOWS,
                                               segments.SEGMENT_EMBEDDINGS]))
  tables = [pq.read_table(io.BytesIO(catalog_parts.read_bytes(
      catalog_parts.join(catalog_dir, rel))), columns=wanted)
            for rel in metadata["files"]["parquet"]]
  size = int(metadata["embedding_size"])
  out: Dict[str, Any] = {}
  if tables:
    table = pa.concat_tables(tables)
    for name in columns:
      values = table.column(name).to_pylist()
      out[name] = (np.asarray(values, np.float32).reshape(-1, size)
                   if name == "embedding" else values)
    counts = np.asarray(table.column(segments.SEGMENT_STARTS).combine_chunks()
                        .value_lengths().to_numpy(zero_copy_only=False), np.int64)
    starts = _flat(table.column(segments.SEGMENT_STARTS), 1, np.float32)
    windows = _flat(table.column(segments.SEGMENT_WINDOWS), 1, np.int64)
    embeddings = _flat(table.column(segments.SEGMENT_EMBEDDINGS), 2,
                       np.float32).reshape(-1, size)
    paths = table.column("path").to_pylist()
  else:
    counts = np.zeros([0], np.int64)
    starts, windows = np.zeros([0], np.float32), np.zeros([0], np.int64)
    embeddings = np.zeros([0, size], np.float32)
    paths = []
    for name in columns:
      out[name] = np.zeros([0, size], np.float32) if name == "embedding" else []
  if not (starts.shape[0] == windows.shape[0] == embeddings.shape[0] == counts.sum()):
    raise ValueError(f"{catalog_dir}: the segment columns disagree in length")
  track = np.repeat(np.arange(len(paths)), counts)
  return SegmentTable(metadata, paths, out, track, starts, windows, embeddings)


def _flat(column, depth: int, dtype) -> np.ndarray:
  """The values of a (nested) list column, flattened ``depth`` times."""
  values = column.combine_chunks()
  for _ in range(depth):
    values = values.flatten()
  return np.asarray(values.to_numpy(zero_copy_only=False), dtype)


def index_dir(catalog_dir: str) -> str:
  """Where a catalogue's segment index lives (``CATALOG/index_segments/``)."""
  return catalog_parts.join(catalog_dir, SEGMENT_INDEX_DIR)


def build_index(table: SegmentTable, exact_max_items: int = similarity.EXACT_MAX_ITEMS,
                normalization: str = similarity.CATALOG_NORMALIZATION
                ) -> similarity.SimilarityIndex:
  """The segment-level index: one row per segment, named by :func:`segment_keys`."""
  index = similarity.SimilarityIndex.build(
      table.embeddings, segment_keys(table.paths, table.track, table.starts),
      exact_max_items=exact_max_items, normalization=normalization)
  index.info["segment_seconds"] = table.segment_seconds
  return index


def load_index(catalog_dir: str, table: SegmentTable) -> similarity.SimilarityIndex:
  """The saved segment index of a catalogue, checked against its segments.

  Raises:
    FileNotFoundError: none saved.
    ValueError: it does not match the catalogue (rebuilt since).
  """
  index = similarity.SimilarityIndex.load(index_dir(catalog_dir))
  if index.paths != segment_keys(table.paths, table.track, table.starts):
    raise ValueError(f"{index_dir(catalog_dir)} does not match the catalogue's segments "
                     "(it was rebuilt since); run deepbof-similar --build --segments")
  return index


def search(index: similarity.SimilarityIndex, table: SegmentTable, query: np.ndarray,
           k: int, exclude_track: Optional[int] = None,
           keep_tracks: Optional[np.ndarray] = None) -> List[Dict[str, Any]]:
  """The ``k`` tracks with the segments most similar to ``query``, best first.

  Each track appears once, with its best segment (the first of its segments in the
  index's order); segments are asked for ``k`` at a time and then twice as many until
  ``k`` distinct tracks are found or every segment was searched.

  Args:
    index: :func:`build_index`'s (or :func:`load_index`'s).
    table: the catalogue's :class:`SegmentTable`.
    query: ``[H]`` or ``[1, H]`` embedding (transformed by the index).
    k: tracks to answer.
    exclude_track: a track row left out (the query's own).
    keep_tracks: optional bool mask over the tracks ``[N]`` that may be answered.

  Returns:
    ``[{"track": row, "path", "score": cosine, "start": seconds, "segment": row}]``.
  """
  query = np.asarray(query, np.float32).reshape(1, -1)
  n = len(index.paths)
  keep = np.ones([len(table.paths)], bool) if keep_tracks is None else np.array(
      keep_tracks, bool)
  if exclude_track is not None:
    keep[exclude_track] = False
  mask = table.track_mask_to_segments(keep)
  if k <= 0 or n == 0 or not mask.any():
    return []
  want = min(k, n)
  while True:
    (found,) = index.search(query, want, keep=mask)
    best: Dict[int, Dict[str, Any]] = {}
    for row, score in found:
      track = int(table.track[row])
      if track not in best:
        best[track] = {"track": track, "path": table.paths[track], "score": float(score),
                       "start": float(table.starts[row]), "segment": int(row)}
    if len(best) >= k or want >= n:
      return list(best.values())[:k]
    want = min(2 * want, n)


def command(catalog_dir: str, query: Optional[str], *, build: bool = False,
            top_k: int = similarity.DEFAULT_NEIGHBOURS, output: str = "table",
            model: Optional[str] = None, chunk_seconds: float = 30.0,
            channel_mode: Optional[str] = None,
            exact_max_items: int = similarity.EXACT_MAX_ITEMS,
            normalization: str = similarity.CATALOG_NORMALIZATION,
            where: Sequence[str] = (), metadata_csv: Optional[str] = None,
            exclude_same: Sequence[str] = (), stdout: Optional[TextIO] = None,
            stderr: Optional[TextIO] = None) -> int:
  """``deepbof-similar --segments``: builds the segment index and/or answers a query.

  ``query`` is an audio excerpt (embedded whole with the catalogue's model, or
  ``model``) or a path of the catalogue (its track embedding, that track left out). The
  answer has rank, cosine, path, the start of the track's best segment in seconds and
  its top tags; ``where`` and ``exclude_same`` filter tracks as without segments.

  Returns:
    The exit status: 0, or 1 after an error message on ``stderr``.
  """
  stdout = stdout or sys.stdout
  stderr = stderr or sys.stderr

  def fail(message: str) -> int:
    print(f"deepbof-similar: error: {message}", file=stderr)
    return 1

  wanted = ("path", "embedding", "top_tags") + (("probabilities",) if where else ())
  try:
    table = load_segments(catalog_dir, wanted)
  except (FileNotFoundError, KeyError, ValueError) as error:
    return fail(str(error))
  if not table.embeddings.shape[0]:
    return fail(f"{catalog_dir}: the catalogue holds no segments (no tracks)")
  keep = None
  try:
    if where:
      keep = similarity.tag_mask(table.columns["probabilities"], table.metadata["tags"],
                                 where)
    track_metadata = (similarity.read_track_metadata(metadata_csv) if metadata_csv
                      else None)
    if exclude_same:
      similarity.same_value_mask([], track_metadata, None, exclude_same)  # the columns
  except (FileNotFoundError, ValueError) as error:
    return fail(str(error))
  if build:
    index = build_index(table, exact_max_items, normalization)
    index.save(index_dir(catalog_dir))
    print(f"indexed {len(index.paths)} segments of {len(table.paths)} tracks "
          f"({index.kind}, {index.info['dim']}-d, cosine, {index.normalization}) into "
          f"{index_dir(catalog_dir)}", file=stderr)
    if not query:
      return 0
  else:
    try:
      index = load_index(catalog_dir, table)
    except FileNotFoundError:
      index = build_index(table, table.embeddings.shape[0], normalization)  # exact
    except ValueError as error:
      return fail(str(error))
  rows = {p: i for i, p in enumerate(table.paths)}
  row = rows.get(query)
  if row is None:
    import os
    row = rows.get(os.path.abspath(query)) if "://" not in query else None
  if row is not None:
    embedding = table.columns["embedding"][row]
    source = "catalogue (track embedding)"
  else:
    import tensorflow as tf
    if not tf.io.gfile.exists(query):
      return fail(f"{query}: neither a path of the catalogue nor an existing file")
    from deepbof_tf import exported
    model = model or table.metadata.get("model_version_dir") or table.metadata.get(
        "model")
    try:
      tagger = exported.ExportedModel(model)
      if tagger.embedding_size != table.embeddings.shape[1]:
        return fail(f"{model}: embeddings of size {tagger.embedding_size}, the "
                    f"catalogue's are {table.embeddings.shape[1]}")
      _, _, embedding = tagger.tag_file(query, chunk_seconds,
                                        channel_mode or table.metadata.get("channel_mode"))
    except (OSError, ValueError, KeyError) as error:
      return fail(str(error))
    source = f"embedded with {model}"
  if exclude_same:
    same = similarity.same_value_mask(
        table.paths, track_metadata, table.paths[row] if row is not None else query,
        exclude_same)
    keep = same if keep is None else keep & same
  found = search(index, table, embedding, top_k, exclude_track=row, keep_tracks=keep)
  neighbours = [{"rank": rank, "path": f["path"], "score": round(f["score"], 6),
                 "start": round(f["start"], 3),
                 "top_tags": table.columns["top_tags"][f["track"]]}
                for rank, f in enumerate(found, 1)]
  if output == "json":
    stdout.write(json.dumps({"query": query, "query_embedding": source,
                             "index": index.kind, "normalization": index.normalization,
                             "segments": True,
                             "segment_seconds": table.segment_seconds,
                             "neighbours": neighbours}, indent=2) + "\n")
  else:
    for n in neighbours:
      tags = " ".join(n["top_tags"][:5])
      stdout.write(f"{n['rank']}\t{n['score']:.4f}\t{n['path']}\t{n['start']:.2f}\t"
                   f"{tags}\n")
  return 0
