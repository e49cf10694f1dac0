"""A catalogue's similarity index for millions of tracks: versioned, segmented, updated
in place, compressed above a size threshold (docs/catalog.md#the-index).

``deepbof_tf.similarity.SimilarityIndex`` holds one faiss index over every embedding in
memory and is rebuilt from the whole catalogue; at 10 million tracks of 1,024 floats that
is 41 GB read from Parquet for every query. This index is instead:

* **versioned and swapped atomically.** ``CATALOG/index/CURRENT`` names the live
  version; ``index/versions/vNNNNNN.json`` (a manifest: kind, normalization, its frozen
  statistics, the segments, the catalogue parts each covers, the tombstoned parts, the
  library, the creation time) lists immutable ``index/segments/<name>/`` directories
  and one ``index/bases/<name>/`` (the normalization's statistics and, for a compressed
  kind, the trained empty faiss index). A build writes new files only, then replaces
  ``CURRENT`` (write a temporary file, rename over): readers load the version
  ``CURRENT`` names and keep answering from it while another version is built. Files
  no longer referenced by the newest :data:`KEEP_VERSIONS` versions are deleted.
* **self-contained.** A segment holds the transformed float32 vectors (``vectors.npy``,
  memory-mapped: exact scoring, re-ranking, catalogue-path queries), the per-row tag
  probabilities (``probabilities.npy``, tag-major, memory-mapped: ``--where``), the
  top tags (``top_tags.npy``, indices into the manifest's ``tags``), the paths
  (``paths.bin`` + ``path_offsets.npy``, and a hash table ``path_hashes.npy`` /
  ``path_rows.npy`` for path look-ups) and, for a compressed kind, ``index.faiss``. A
  query reads the index only, never the catalogue's Parquet.
* **updated without a rebuild.** :func:`update_catalog_index` compares ``catalog.json``
  with the live version: parts it does not cover become one new segment (added to a
  copy of the trained faiss index; the normalization's statistics stay those of the
  first build), parts the catalogue no longer lists are tombstoned (left out at query
  time). Segments are merged (from their stored vectors, without reading the
  catalogue): all but the largest when there are more than :data:`MAX_SEGMENTS`, all
  when more than :data:`MAX_TOMBSTONE_FRACTION` of the rows are tombstoned; another
  model fingerprint, another normalization, the exact kind outgrowing
  :data:`EXACT_MAX_ITEMS` or ``rebuild=True`` rebuild it.
* **compressed above** :data:`EXACT_MAX_ITEMS` rows. Up to it the kind is ``exact``: a
  NumPy scan of the memory-mapped vectors (no faiss index, no copy). Above it
  ``ivfpqfs`` (the default: ``faiss.IndexIVFPQFastScan``, inner product, 4-bit codes
  of :data:`FASTSCAN_DIMS_PER_SUBQUANTIZER`-d sub-vectors: 256 bytes per 1,024-d
  track, ``IVF1024,PQ512x4fs`` at 1M), ``ivfpq`` (``faiss.IndexIVFPQ``, 8-bit codes
  of :data:`PQ_DIMS_PER_SUBQUANTIZER` dimensions: 64 bytes) or ``ivfsq8`` (int8
  scalar quantization, 1 byte per dimension): faiss proposes ``refine_factor × k``
  candidates from ``nprobe`` of ``nlist`` inverted lists and they are re-ranked
  exactly against the float32 vectors, so every returned score is the exact cosine.
  docs/experiments/index-study.md chose the default kind and its parameters at
  1,000,000 × 1,024 (recall@10 0.958, 272 bytes a track in RAM); the 8-bit kinds
  were several times slower per query there.
  HNSW is not a kind here: its graph holds every float32 vector in memory (41 GB at
  10M) and cannot be trained once and extended per segment the way IVF can.
* **filtered.** ``keep`` masks (``--where`` on the stored probabilities,
  ``--exclude_same`` from a metadata CSV, the tombstones) go into faiss as an
  ``IDSelectorBitmap``, so the inverted lists yield kept rows only; a query that finds
  fewer than ``k`` doubles ``nprobe`` until it has them or every list was probed, and
  a segment whose kept rows are few (≤ :data:`FILTER_EXACT_MAX_ROWS`) is scanned
  exactly instead.

The compressed kinds' defaults (:data:`NLIST_PER_SQRT_N`, :data:`NPROBE`,
:data:`REFINE_FACTOR`, :data:`FASTSCAN_DIMS_PER_SUBQUANTIZER` for ``ivfpqfs``; the
``IVF8_`` ones and :data:`PQ_DIMS_PER_SUBQUANTIZER` for the 8-bit kinds) are named
constants, measured by ``benchmarks/bench_index_scale.py``; :class:`CompressionParams` overrides them
per build and :meth:`CatalogIndex.search` per query.

Library use without a catalogue (e.g. a benchmark): :func:`build_index` over
:class:`PartRows`, :func:`add_parts` to add (and ``drop``) parts, then
``CatalogIndex.open(directory).search(queries, k)`` (a batch of queries at once).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import math
import os
import shutil
import uuid
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from deepbof_tf import catalog_parts
from deepbof_tf import similarity
from deepbof_tf.io_utils import write_atomic

FORMAT_VERSION = 1
CURRENT_FILE = "CURRENT"
VERSIONS_DIR = "versions"
SEGMENTS_DIR = "segments"
BASES_DIR = "bases"
SEGMENT_FILE = "segment.json"
VECTORS_FILE = "vectors.npy"
FAISS_FILE = "index.faiss"
TRAINED_FILE = "trained.faiss"
PROBABILITIES_FILE = "probabilities.npy"
TOP_TAGS_FILE = "top_tags.npy"
PATHS_BIN_FILE = "paths.bin"
PATH_OFFSETS_FILE = "path_offsets.npy"
PATH_HASHES_FILE = "path_hashes.npy"
PATH_ROWS_FILE = "path_rows.npy"
NEIGHBOUR_SIMILARITY_FILE = "neighbour_similarity.npy"
STATISTICS_FILE = "normalization.npz"

EXACT = "exact"
IVFPQFS = "ivfpqfs"
IVFPQ = "ivfpq"
IVFSQ8 = "ivfsq8"
KINDS = (EXACT, IVFPQFS, IVFPQ, IVFSQ8)
COMPRESSED_KINDS = (IVFPQFS, IVFPQ, IVFSQ8)
# Up to this many rows a query scans every (memory-mapped) vector: 50,000 × 1,024
# float32 is 200 MB, tens of milliseconds per query on one core and no training.
EXACT_MAX_ITEMS = 50_000
DEFAULT_COMPRESSION = IVFPQFS
# The default kind, as docs/experiments/index-study.md chose it at 1,000,000 × 1,024
# (IVF1024,PQ512x4fs, nprobe 16, R 20: recall@10 0.958 after the re-rank, 272 bytes
# a vector in RAM): nlist ≈ 1.024·√N inverted lists (1,024 at 1M); nprobe of them
# probed per query; refine_factor × k candidates re-ranked exactly; 4-bit fast-scan
# PQ codes of 2-d sub-vectors (half a byte per 2 dimensions). nprobe 12, not the
# study's 16: with the index's own inner-product k-means the lists are better (recall
# 0.968 at 16), and 12 keeps recall@10 ≈ 0.96 at ~1.3× the single-query rate
# (docs/benchmarks.md, "Index at scale").
NLIST_PER_SQRT_N = 1.024
NPROBE = 12
REFINE_FACTOR = 20
FASTSCAN_DIMS_PER_SUBQUANTIZER = 2
FASTSCAN_NBITS = 4
# The 8-bit kinds (ivfpq, ivfsq8) keep their earlier defaults; the study found them
# several times slower per query than the fast-scan kind at the same recall.
IVF8_NLIST_PER_SQRT_N = 4.0
IVF8_NPROBE = 64
IVF8_REFINE_FACTOR = 10
PQ_DIMS_PER_SUBQUANTIZER = 16
PQ_NBITS = 8
TRAIN_POINTS_PER_LIST = 40
FASTSCAN_TRAIN_POINTS_PER_LIST = 64
FASTSCAN_TRAIN_MIN_POINTS = 65_536
TRAIN_MAX_POINTS = 262_144
TRAIN_SEED = 0
# A segment whose kept rows are at most this many is scanned exactly under a filter.
FILTER_EXACT_MAX_ROWS = 20_000
# Compaction (merge every segment into one) beyond these.
MAX_SEGMENTS = 8
MAX_TOMBSTONE_FRACTION = 0.2
KEEP_VERSIONS = 2
ONE_SHOT_PART = "one-shot"
_QUERY_BLOCK = 64
# Rows per matrix-vector product of the re-rank (see exact_cosines).
RERANK_BLOCK = 128
_ROW_BLOCK = 65_536


# --------------------------------------------------------------------------------------
# Files (local or gs:// through tf.io.gfile).
# --------------------------------------------------------------------------------------


_faiss = similarity.faiss_module


def _sorted_ids(ids: np.ndarray) -> np.ndarray:
  """The valid (``>= 0``) ids of one faiss result row, sorted, without repeats (a
  sort and a comparison: cheaper per query than ``np.unique``'s hashing)."""
  out = np.sort(ids[ids >= 0])
  if len(out) > 1:
    out = out[np.concatenate([[True], out[1:] != out[:-1]])]
  return out


def _check_normalization(normalization: str) -> None:
  if normalization not in similarity.NORMALIZATIONS:
    raise ValueError(f"unknown normalization {normalization!r}; one of "
                     f"{', '.join(similarity.NORMALIZATIONS)}")


def _gfile():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  (URLs only)
  return tf.io.gfile


def _join(base: str, *parts: str) -> str:
  return catalog_parts.join(base, *parts)


def _exists(path: str) -> bool:
  return catalog_parts.exists(path)


def _listdir(path: str) -> List[str]:
  if catalog_parts.is_url(path):
    gfile = _gfile()
    return [n.rstrip("/") for n in gfile.listdir(path)] if gfile.exists(path) else []
  return sorted(os.listdir(path)) if os.path.isdir(path) else []


def _remove_tree(path: str) -> None:
  if catalog_parts.is_url(path):
    gfile = _gfile()
    if gfile.isdir(path):
      gfile.rmtree(path)
    elif gfile.exists(path):
      gfile.remove(path)
  elif os.path.isdir(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.exists(path):
    os.remove(path)


def _save_npy(path: str, array: np.ndarray) -> None:
  buffer = io.BytesIO()
  np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
  write_atomic(path, buffer.getvalue())


def _load_npy(path: str, mmap: bool = True) -> np.ndarray:
  """A ``.npy`` file, memory-mapped when local (a URL is read into memory)."""
  if catalog_parts.is_url(path) or not mmap:
    return np.load(io.BytesIO(catalog_parts.read_bytes(path)), allow_pickle=False)
  try:
    array = np.load(path, mmap_mode="r", allow_pickle=False)
  except ValueError:  # an empty array cannot be mapped
    return np.load(path, allow_pickle=False)
  return array if array.size else np.load(path, allow_pickle=False)


def _write_json(path: str, value: Any) -> None:
  write_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _unique(prefix: str, number: int) -> str:
  return f"{prefix}{number:06d}-{uuid.uuid4().hex[:8]}"


def _path_hash(paths: Sequence[str]) -> np.ndarray:
  return np.array([int.from_bytes(hashlib.blake2b(p.encode("utf-8"), digest_size=8)
                                  .digest(), "little") for p in paths], np.uint64)


# --------------------------------------------------------------------------------------
# What goes into an index.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class PartRows:
  """The rows of one catalogue part (or any named batch of tracks), in memory.

  Args:
    name: the part's name (its rows are tombstoned together when it is dropped).
    paths: one path per row.
    embeddings: ``[n, H]`` float32, as the catalogue stores them (not normalised).
    probabilities: ``[n, n_tags]`` tag probabilities (for ``--where``), or None.
    top_tags: per row, its top tags (names of the index's ``tags``), or None.
  """
  name: str
  paths: Sequence[str]
  embeddings: np.ndarray
  probabilities: Optional[np.ndarray] = None
  top_tags: Optional[Sequence[Sequence[str]]] = None

  @property
  def rows(self) -> int:
    return len(self.paths)

  def load(self) -> "PartRows":
    return self


@dataclasses.dataclass
class CatalogPart:
  """A part of a catalogue on disk, read (Parquet) only when :meth:`load` is called."""
  name: str
  parquet: Sequence[str]
  embedding_size: int
  rows: int

  def load(self) -> PartRows:
    import pyarrow as pa
    import pyarrow.parquet as pq
    columns = ["path", "embedding", "probabilities", "top_tags"]
    tables = [pq.read_table(io.BytesIO(catalog_parts.read_bytes(p)), columns=columns)
              for p in self.parquet]
    table = (pa.concat_tables(tables) if tables
             else catalog_parts.parquet_schema().empty_table().select(columns))
    embeddings = _list_column(table.column("embedding"), self.embedding_size)
    probabilities = table.column("probabilities")
    width = max((len(v) for v in probabilities.to_pylist()[:1]), default=0)
    return PartRows(self.name, table.column("path").to_pylist(), embeddings,
                    _list_column(probabilities, width),
                    table.column("top_tags").to_pylist())


def _list_column(column, width: int) -> np.ndarray:
  """A Parquet list<float32> column as ``[n, width]`` float32."""
  import pyarrow as pa
  array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
  if len(array) == 0 or width == 0:
    return np.zeros([len(array), width], np.float32)
  values = array.flatten().to_numpy(zero_copy_only=False)
  return np.asarray(values, np.float32).reshape(len(array), width)


def catalog_parts_of(catalog_dir: str) -> Tuple[Dict[str, Any], List[CatalogPart]]:
  """``(info, parts)`` of a catalogue: its tags, embedding size, model fingerprint and
  creation time (``info``) and its parts in the record's order (a one-shot catalogue is
  one part named after its creation time)."""
  import pyarrow.parquet as pq
  metadata = catalog_parts.read_metadata(catalog_dir)
  record = catalog_parts.read_record(catalog_dir)
  size = int(metadata["embedding_size"])

  def rows(paths: Sequence[str]) -> int:
    total = 0
    for p in paths:
      if catalog_parts.is_url(p):
        total += pq.ParquetFile(io.BytesIO(catalog_parts.read_bytes(p))).metadata.num_rows
      else:
        total += pq.ParquetFile(p).metadata.num_rows
    return total

  parts = []
  if record is None:
    files = [_join(catalog_dir, rel) for rel in metadata["files"]["parquet"]]
    name = f"{ONE_SHOT_PART}-{metadata.get('created_utc')}"
    parts.append(CatalogPart(name, files, size, rows(files)))
  else:
    for part in record["parts"]:
      files = [_join(catalog_dir, catalog_parts.PARTS_DIR, part["name"], rel)
               for rel in part["files"]["parquet"]]
      parts.append(CatalogPart(part["name"], files, size, rows(files)))
  info = {"tags": list(metadata.get("tags", [])), "embedding_size": size,
          "model_fingerprint": (record or {}).get("model_fingerprint"),
          "catalog_created_utc": metadata.get("created_utc")}
  return info, parts


@dataclasses.dataclass
class CompressionParams:
  """The compressed kinds' parameters (None: the kind's defaults, for ``N`` rows).

  Args:
    kind: :data:`IVFPQFS` (the default), :data:`IVFPQ` or :data:`IVFSQ8`.
    nlist: inverted lists (default ``NLIST_PER_SQRT_N·√N`` for ``ivfpqfs``,
      ``IVF8_NLIST_PER_SQRT_N·√N`` for the others; at most ``N / 39``).
    pq_m: PQ sub-quantizers (a divisor of the dimension; default
      ``dim / FASTSCAN_DIMS_PER_SUBQUANTIZER`` for ``ivfpqfs``,
      ``dim / PQ_DIMS_PER_SUBQUANTIZER`` for ``ivfpq``).
    pq_nbits: bits per sub-quantizer code (``ivfpq``: default :data:`PQ_NBITS`;
      ``ivfpqfs``: :data:`FASTSCAN_NBITS`, the only one fast scan has).
    nprobe: lists probed per query (stored in the manifest as the default; default
      :data:`NPROBE` for ``ivfpqfs``, :data:`IVF8_NPROBE` for the others).
    refine_factor: candidates re-ranked exactly, per neighbour asked for (default
      :data:`REFINE_FACTOR` / :data:`IVF8_REFINE_FACTOR`).
    train_points: training sample size (default ``TRAIN_POINTS_PER_LIST·nlist``;
      ``ivfpqfs``: ``FASTSCAN_TRAIN_POINTS_PER_LIST·nlist``, at least
      :data:`FASTSCAN_TRAIN_MIN_POINTS`; at most ``TRAIN_MAX_POINTS``).
  """
  kind: str = DEFAULT_COMPRESSION
  nlist: Optional[int] = None
  pq_m: Optional[int] = None
  pq_nbits: Optional[int] = None
  nprobe: Optional[int] = None
  refine_factor: Optional[int] = None
  train_points: Optional[int] = None

  def resolved(self, rows: int, dim: int) -> Dict[str, Any]:
    if self.kind not in COMPRESSED_KINDS:
      raise ValueError(f"compressed kind must be one of {COMPRESSED_KINDS}, got "
                       f"{self.kind!r}")
    fast = self.kind == IVFPQFS
    per_sqrt_n = NLIST_PER_SQRT_N if fast else IVF8_NLIST_PER_SQRT_N
    nlist = self.nlist or int(round(per_sqrt_n * math.sqrt(max(rows, 1))))
    nlist = max(1, min(nlist, rows // 39 if rows >= 39 else 1))
    nprobe = self.nprobe or (NPROBE if fast else IVF8_NPROBE)
    refine = self.refine_factor or (REFINE_FACTOR if fast else IVF8_REFINE_FACTOR)
    out = {"kind": self.kind, "nlist": int(nlist), "nprobe": int(nprobe),
           "refine_factor": int(refine)}
    nbits = 0
    if self.kind in (IVFPQ, IVFPQFS):
      if fast:
        nbits = FASTSCAN_NBITS
        if self.pq_nbits not in (None, FASTSCAN_NBITS):
          raise ValueError(f"{IVFPQFS} codes have {FASTSCAN_NBITS} bits, not "
                           f"{self.pq_nbits}")
      else:
        nbits = self.pq_nbits or PQ_NBITS
      per = FASTSCAN_DIMS_PER_SUBQUANTIZER if fast else PQ_DIMS_PER_SUBQUANTIZER
      m = self.pq_m or max(1, dim // per)
      while dim % m:
        m -= 1
      out.update(pq_m=int(m), pq_nbits=int(nbits))
    if self.train_points:
      train = self.train_points
    elif fast:
      train = max(FASTSCAN_TRAIN_POINTS_PER_LIST * nlist, FASTSCAN_TRAIN_MIN_POINTS)
    else:
      train = TRAIN_POINTS_PER_LIST * nlist
    if nbits:
      train = max(train, 39 * (1 << nbits))
    out["train_points"] = int(min(train, TRAIN_MAX_POINTS, rows))
    return out


def _factory_string(params: Mapping[str, Any]) -> str:
  if params["kind"] == IVFPQFS:
    return f"IVF{params['nlist']},PQ{params['pq_m']}x{params['pq_nbits']}fs"
  if params["kind"] == IVFPQ:
    return f"IVF{params['nlist']},PQ{params['pq_m']}x{params['pq_nbits']}"
  return f"IVF{params['nlist']},SQ8"


@dataclasses.dataclass
class UpdateReport:
  """What :func:`update_catalog_index` (or :func:`build_index` / :func:`add_parts`) did.

  ``action``: ``build`` (a full one), ``update`` (a segment added and/or parts
  tombstoned), ``compact`` (an update whose segments were then merged) or
  ``unchanged`` (no new version).
  """
  action: str
  version: str
  kind: str
  normalization: str
  dim: int
  num_items: int
  added_rows: int = 0
  segment: Optional[str] = None
  tombstoned_rows: int = 0
  segments: int = 0
  reason: str = ""
  directory: str = ""

  def summary(self) -> str:
    """One line for a person."""
    head = (f"indexed {self.num_items} tracks ({self.kind}, {self.dim}-d, cosine, "
            f"{self.normalization}) into {self.directory}")
    if self.action == "unchanged":
      return (f"{head}: up to date, version {self.version} unchanged (added 0 rows, "
              f"tombstoned 0)")
    what = {"build": "built", "update": "updated", "compact": "updated and compacted"}
    return (f"{head}: {what[self.action]} version {self.version}"
            + (f" ({self.reason})" if self.reason else "")
            + f": added {self.added_rows} rows"
            + (f" in segment {self.segment}" if self.segment else "")
            + f", tombstoned {self.tombstoned_rows}; {self.segments} segment(s)")


# --------------------------------------------------------------------------------------
# Reading: one version.
# --------------------------------------------------------------------------------------


def read_current(directory: str) -> Optional[str]:
  """The live version's name (``CURRENT``), or None when no version was published."""
  path = _join(directory, CURRENT_FILE)
  if not _exists(path):
    return None
  return catalog_parts.read_bytes(path).decode("utf-8").strip() or None


def read_manifest(directory: str, version: Optional[str] = None) -> Dict[str, Any]:
  """A version's manifest (default: the live one).

  Raises:
    FileNotFoundError: no version was published.
  """
  version = version or read_current(directory)
  if version is None:
    raise FileNotFoundError(f"{directory}: no similarity index ({CURRENT_FILE}); build it "
                            "with deepbof-similar --build")
  return catalog_parts.read_json(_join(directory, VERSIONS_DIR, f"{version}.json"))


def is_old_layout(directory: str) -> bool:
  """An index written by ``SimilarityIndex.save`` (``index.json`` at the top), with no
  version published over it."""
  return (read_current(directory) is None
          and _exists(_join(directory, similarity.INFO_FILE)))


class _Segment:
  """One immutable segment, its arrays memory-mapped."""

  def __init__(self, directory: str, name: str, offset: int,
               dead_parts: Iterable[str], load_faiss: bool):
    self.name = name
    self.dir = _join(directory, SEGMENTS_DIR, name)
    self.info = catalog_parts.read_json(_join(self.dir, SEGMENT_FILE))
    self.rows = int(self.info["rows"])
    self.offset = offset
    # A plain ndarray over the mapping (np.memmap's Python-level __getitem__ costs
    # microseconds on every re-rank gather).
    self.vectors = np.asarray(_load_npy(_join(self.dir, VECTORS_FILE)))
    self._plain_params: Dict[int, Any] = {}
    self.probabilities = _load_npy(_join(self.dir, PROBABILITIES_FILE))
    self.top_tags = _load_npy(_join(self.dir, TOP_TAGS_FILE))
    self.path_offsets = _load_npy(_join(self.dir, PATH_OFFSETS_FILE))
    self.path_hashes = _load_npy(_join(self.dir, PATH_HASHES_FILE))
    self.path_rows = _load_npy(_join(self.dir, PATH_ROWS_FILE))
    paths_file = _join(self.dir, PATHS_BIN_FILE)
    if catalog_parts.is_url(paths_file) or self.rows == 0:
      self.paths_bin = np.frombuffer(catalog_parts.read_bytes(paths_file), np.uint8)
    else:
      self.paths_bin = np.memmap(paths_file, np.uint8, mode="r")
    ns = _join(self.dir, NEIGHBOUR_SIMILARITY_FILE)
    self.neighbour_similarity = (_load_npy(ns, mmap=False).astype(np.float64)
                                 if self.info.get("csls") else None)
    self.index = None
    if load_faiss and self.info.get("faiss"):
      faiss = _faiss()
      self.index = faiss.deserialize_index(
          np.frombuffer(catalog_parts.read_bytes(_join(self.dir, FAISS_FILE)), np.uint8))
    dead = set(dead_parts)
    self.live_filter: Optional[Tuple[np.ndarray, np.ndarray]] = None
    self.live = None
    for part in self.info["parts"]:
      if part["name"] in dead:
        if self.live is None:
          self.live = np.ones([self.rows], bool)
        self.live[part["start"]:part["stop"]] = False

  def path(self, row: int) -> str:
    start, stop = int(self.path_offsets[row]), int(self.path_offsets[row + 1])
    return bytes(self.paths_bin[start:stop]).decode("utf-8")

  def rows_of(self, path: str) -> List[int]:
    h = _path_hash([path])[0]
    lo = int(np.searchsorted(self.path_hashes, h, "left"))
    hi = int(np.searchsorted(self.path_hashes, h, "right"))
    return [int(r) for r in self.path_rows[lo:hi] if self.path(int(r)) == path]


def exact_cosines(vectors: np.ndarray, rows: np.ndarray, query: np.ndarray
                  ) -> np.ndarray:
  """The re-rank: ``vectors[rows] @ query`` (float32 products, returned as float64)
  for sorted ``rows`` of the memory-mapped vectors (the reads go forward in the file),
  :data:`RERANK_BLOCK` rows at a time: above that OpenBLAS wakes its threads for the
  matrix-vector product, several times the CPU per query on a busy machine
  (docs/experiments/index-study.md)."""
  out = np.empty([len(rows)], np.float64)
  for s in range(0, len(rows), RERANK_BLOCK):
    out[s:s + RERANK_BLOCK] = np.asarray(vectors[rows[s:s + RERANK_BLOCK]],
                                         np.float32) @ query
  return out


class CatalogIndex:
  """The live (or a named) version of a catalogue's index, ready for queries.

  Rows are numbered across segments in the manifest's order; tombstoned rows keep
  their numbers and are never returned. Open with :meth:`open`.
  """

  def __init__(self, directory: str, manifest: Mapping[str, Any], load_faiss: bool = True):
    self.directory = directory
    self.manifest = dict(manifest)
    self.segments: List[_Segment] = []
    offset = 0
    dead = self.manifest.get("tombstoned_parts", [])
    for entry in self.manifest["segments"]:
      segment = _Segment(directory, entry["name"], offset, dead, load_faiss)
      self.segments.append(segment)
      offset += segment.rows
    self.num_rows = offset
    self._starts = np.array([s.offset for s in self.segments] + [offset], np.int64)
    base = self.manifest.get("base")
    self.mean = None
    if self.manifest["normalization"].startswith("centred"):
      with np.load(io.BytesIO(catalog_parts.read_bytes(
          _join(directory, BASES_DIR, base, STATISTICS_FILE)))) as f:
        self.mean = np.asarray(f["mean"], np.float32)

  @classmethod
  def open(cls, directory: str, version: Optional[str] = None) -> "CatalogIndex":
    """The version ``CURRENT`` names (or ``version``) of the index in ``directory``.

    Raises:
      FileNotFoundError: no version was published (the message says to run
        ``deepbof-similar --build``, also for an index of the old one-directory layout).
    """
    if version is None and is_old_layout(directory):
      raise FileNotFoundError(f"{directory}: an index of the old layout (index.json, no "
                              f"{CURRENT_FILE}); run deepbof-similar --build to bring it "
                              "up to date")
    return cls(directory, read_manifest(directory, version))

  # ------------------------------------------------------------------ properties
  @property
  def version(self) -> str:
    return self.manifest["version"]

  @property
  def kind(self) -> str:
    return self.manifest["kind"]

  @property
  def normalization(self) -> str:
    return self.manifest["normalization"]

  @property
  def dim(self) -> int:
    return int(self.manifest["dim"])

  @property
  def tags(self) -> List[str]:
    return list(self.manifest.get("tags", []))

  @property
  def num_items(self) -> int:
    """Rows that can be returned (not tombstoned)."""
    return int(self.manifest["num_items"])

  def _locate(self, row: int) -> Tuple[_Segment, int]:
    i = int(np.searchsorted(self._starts, row, "right")) - 1
    if row < 0 or row >= self.num_rows:
      raise IndexError(f"row {row} not in [0, {self.num_rows})")
    return self.segments[i], row - self.segments[i].offset

  def path(self, row: int) -> str:
    """The catalogue path of a row."""
    segment, local = self._locate(row)
    return segment.path(local)

  def top_tags(self, row: int) -> List[str]:
    """The row's top tags, as the catalogue stores them."""
    segment, local = self._locate(row)
    tags = self.tags
    return [tags[int(t)] for t in segment.top_tags[local] if t >= 0]

  def vector(self, row: int) -> np.ndarray:
    """The row as the index holds it (transformed: unit norm, centred when the index
    is)."""
    segment, local = self._locate(row)
    return np.array(segment.vectors[local], np.float32)

  def is_live(self, row: int) -> bool:
    segment, local = self._locate(row)
    return segment.live is None or bool(segment.live[local])

  def row_of(self, path: str) -> Optional[int]:
    """The live row of a catalogue path (also as an absolute or relative local path),
    or None."""
    candidates = [path]
    if not catalog_parts.is_url(path):
      candidates += [os.path.abspath(path)]
      if os.path.isabs(path):
        candidates.append(os.path.relpath(path))
    for p in candidates:
      for segment in reversed(self.segments):  # the newest segment holds the newest row
        for local in segment.rows_of(p):
          if segment.live is None or segment.live[local]:
            return segment.offset + local
    return None

  def live_mask(self) -> np.ndarray:
    """Bool ``[num_rows]``: the rows not tombstoned."""
    return np.concatenate([s.live if s.live is not None else np.ones([s.rows], bool)
                           for s in self.segments] or [np.zeros([0], bool)])

  def where_mask(self, conditions: Sequence[str]) -> np.ndarray:
    """Rows whose stored tag probabilities satisfy every ``TAG>X`` condition (as
    :func:`deepbof_tf.similarity.tag_mask`, reading one tag's column per condition)."""
    tags = self.tags
    mask = np.ones([self.num_rows], bool)
    for condition in conditions:
      tag, operator, value = similarity.parse_where(condition, tags)
      column = tags.index(tag)
      values = np.concatenate(
          [np.asarray(s.probabilities[column], np.float32) if s.probabilities.shape[0]
           else np.zeros([s.rows], np.float32) for s in self.segments]
          or [np.zeros([0], np.float32)])
      mask &= similarity.WHERE_OPERATORS[operator](values, np.float32(value))
    return mask

  def same_value_mask(self, track_metadata: Mapping[str, Mapping[str, str]],
                      query_path: Optional[str], columns: Sequence[str]) -> np.ndarray:
    """As :func:`deepbof_tf.similarity.same_value_mask`: rows that do not share the
    query's non-empty value of any of ``columns`` (looked up by path, so only the
    metadata's rows are visited)."""
    mask = np.ones([self.num_rows], bool)
    for column, value in similarity.query_values(track_metadata, query_path, columns):
      for path, row in track_metadata.items():
        if row.get(column, "") == value:
          for segment in self.segments:
            for local in segment.rows_of(path):
              mask[segment.offset + local] = False
    return mask

  def transform(self, embeddings: np.ndarray) -> np.ndarray:
    """Embeddings as the index holds its rows (the frozen statistics of the build)."""
    return similarity.transformed(embeddings, self.mean)

  # ------------------------------------------------------------------ search
  def search(self, queries: np.ndarray, k: int,
             exclude_rows: Optional[Sequence[Optional[int]]] = None,
             keep: Optional[np.ndarray] = None, nprobe: Optional[int] = None,
             refine_factor: Optional[int] = None, transformed: bool = False
             ) -> List[List[Tuple[int, float]]]:
    """The ``k`` most similar live rows of each query: ``[(row, cosine), …]`` best
    first (as :meth:`deepbof_tf.similarity.SimilarityIndex.search`).

    The cosine is exact for every kind (the stored float32 vectors: float64 products
    for the exact kind, float32 ones, returned as float64, for the re-rank of the
    compressed kinds); the
    ``csls`` normalizations order by it minus half the row's mean neighbour cosine.

    Args:
      queries: ``[Q, H]`` embeddings (transformed here unless ``transformed``).
      k: neighbours per query.
      exclude_rows: per query, a row to leave out (the query's own catalogue entry).
      keep: optional bool ``[num_rows]`` or ``[Q, num_rows]``: the rows that may be
        neighbours.
      nprobe: inverted lists probed (compressed kinds; default: the manifest's).
      refine_factor: candidates re-ranked per neighbour (compressed kinds).
      transformed: the queries are already in the index's space (e.g.
        :meth:`vector`).
    """
    q = np.asarray(queries, np.float32).reshape(-1, self.dim)
    q = np.ascontiguousarray(q if transformed else self.transform(q), np.float32)
    n_q = q.shape[0]
    if keep is not None:
      keep = np.asarray(keep, bool)
      if keep.shape[-1] != self.num_rows or keep.ndim not in (1, 2) or (
          keep.ndim == 2 and keep.shape[0] != n_q):
        raise ValueError(f"keep has shape {keep.shape}; expected [{self.num_rows}] or "
                         f"[{n_q}, {self.num_rows}]")
    if k <= 0 or n_q == 0:
      return [[] for _ in range(n_q)]
    extra = 1 if exclude_rows is not None and any(r is not None for r in exclude_rows) else 0
    params = self.manifest.get("params", {})
    nprobe = int(nprobe or params.get("nprobe", NPROBE))
    refine = int(refine_factor or params.get("refine_factor", REFINE_FACTOR))
    found: List[List[Tuple[float, float, int]]] = [[] for _ in range(n_q)]
    for segment in self.segments:
      sl = slice(segment.offset, segment.offset + segment.rows)
      mask = None if keep is None else keep[..., sl]
      if segment.live is not None:
        mask = segment.live if mask is None else mask & segment.live
      if segment.rows == 0:
        continue
      results = self._search_segment(segment, q, k + extra, mask, nprobe, refine)
      for i, rows in enumerate(results):
        found[i].extend(rows)
    out = []
    for i in range(n_q):
      skip = exclude_rows[i] if exclude_rows is not None else None
      rows = [t for t in found[i] if t[2] != skip]
      rows.sort(key=lambda t: (-t[0], t[2]))
      out.append([(r, c) for _, c, r in rows[:k]])
    return out

  def _rank(self, segment: _Segment, local: np.ndarray, cos: np.ndarray) -> np.ndarray:
    if segment.neighbour_similarity is None:
      return cos
    return cos - 0.5 * segment.neighbour_similarity[local]

  def _exact(self, segment: _Segment, q: np.ndarray, kk: int,
             mask: Optional[np.ndarray], rows: Optional[np.ndarray] = None
             ) -> List[List[Tuple[float, float, int]]]:
    """Exact top-``kk`` of a segment (or of its ``rows``): float32 scan, the best
    candidates re-scored in float64."""
    out: List[List[Tuple[float, float, int]]] = [[] for _ in range(q.shape[0])]
    ns = segment.neighbour_similarity
    want = max(4 * kk, kk + 16)
    for q0 in range(0, q.shape[0], _QUERY_BLOCK):
      qb = q[q0:q0 + _QUERY_BLOCK]
      cand_ids, cand_scores = [], []
      universe = rows if rows is not None else None
      total = segment.rows if universe is None else len(universe)
      for r0 in range(0, total, _ROW_BLOCK):
        ids = (np.arange(r0, min(total, r0 + _ROW_BLOCK)) if universe is None
               else universe[r0:r0 + _ROW_BLOCK])
        block = (segment.vectors[r0:r0 + len(ids)] if universe is None
                 else segment.vectors[np.sort(ids)])
        if universe is not None:
          ids = np.sort(ids)
        scores = np.asarray(qb @ np.asarray(block, np.float32).T, np.float32)
        if ns is not None:
          scores = scores - 0.5 * ns[ids][None].astype(np.float32)
        if mask is not None:
          m = mask[ids] if mask.ndim == 1 else mask[q0:q0 + len(qb)][:, ids]
          scores = np.where(np.broadcast_to(m, scores.shape), scores, -np.inf)
        c = min(want, scores.shape[1])
        top = np.argpartition(-scores, c - 1, axis=1)[:, :c]
        cand_ids.append(ids[top])
        cand_scores.append(np.take_along_axis(scores, top, axis=1))
      if not cand_ids:
        continue
      ids_all = np.concatenate(cand_ids, axis=1)
      sc_all = np.concatenate(cand_scores, axis=1)
      for j in range(len(qb)):
        valid = np.isfinite(sc_all[j])
        local = ids_all[j][valid]
        if not local.size:
          continue
        order = np.argsort(-sc_all[j][valid], kind="stable")[:want]
        local = np.unique(local[order])
        cos = np.asarray(segment.vectors[local], np.float64) @ qb[j].astype(np.float64)
        rank = self._rank(segment, local, cos)
        best = np.lexsort((local, -rank))[:kk]
        out[q0 + j] = [(float(rank[b]), float(cos[b]), segment.offset + int(local[b]))
                       for b in best]
    return out

  def _search_segment(self, segment: _Segment, q: np.ndarray, kk: int,
                      mask: Optional[np.ndarray], nprobe: int, refine: int
                      ) -> List[List[Tuple[float, float, int]]]:
    if segment.index is None:
      return self._exact(segment, q, kk, mask)
    faiss = _faiss()
    nlist = int(segment.index.nlist)
    masks = [None] * q.shape[0] if mask is None else (
        [mask] * q.shape[0] if mask.ndim == 1 else list(mask))
    out: List[List[Tuple[float, float, int]]] = [[] for _ in range(q.shape[0])]
    groups: Dict[int, List[int]] = {}
    for i, m in enumerate(masks):  # queries sharing a mask are searched as one batch
      groups.setdefault(id(m), []).append(i)
    for members in groups.values():
      m = masks[members[0]]
      bits = None
      if m is not None:
        if m is segment.live and segment.live_filter is not None:
          kept, bits = segment.live_filter  # the tombstones: computed once
        else:
          kept, bits = np.flatnonzero(m), np.packbits(m, bitorder="little")
          if m is segment.live:
            segment.live_filter = (kept, bits)
        if len(kept) <= FILTER_EXACT_MAX_ROWS:
          rows = self._exact(segment, q[members], kk, None, rows=kept)
          for i, r in zip(members, rows):
            out[i] = r
          continue
      probe = min(nprobe, nlist)
      todo = list(members)
      while todo:
        selector = None
        if bits is not None:  # faiss reads the rows' bits, LSB first
          selector = faiss.IDSelectorBitmap(segment.rows, faiss.swig_ptr(bits))
        if selector is None:  # the unfiltered parameters: made once per nprobe
          search_params = segment._plain_params.get(probe)
          if search_params is None:
            search_params = faiss.SearchParametersIVF(nprobe=probe)
            segment._plain_params[probe] = search_params
        else:
          search_params = faiss.SearchParametersIVF(nprobe=probe, sel=selector)
        want = min(segment.rows, refine * kk)
        _, ids = segment.index.search(q[todo], want, params=search_params)
        again = []
        for i, row_ids in zip(todo, ids):
          local = _sorted_ids(row_ids)
          if len(local) < min(kk, want) and probe < nlist:
            again.append(i)
            continue
          cos = exact_cosines(segment.vectors, local, q[i])
          rank = self._rank(segment, local, cos)
          best = np.lexsort((local, -rank))[:kk]
          out[i] = [(float(rank[b]), float(cos[b]), segment.offset + int(local[b]))
                    for b in best]
        todo = again
        probe = min(2 * probe, nlist)
        del selector
    return out


# --------------------------------------------------------------------------------------
# Writing: segments, bases, versions, the swap, garbage collection.
# --------------------------------------------------------------------------------------


def _top_tag_indices(top_tags: Optional[Sequence[Sequence[str]]], rows: int,
                     tags: List[str]) -> np.ndarray:
  if top_tags is None:
    return np.full([rows, 0], -1, np.int16)
  width = max((len(t) for t in top_tags), default=0)
  out = np.full([rows, width], -1, np.int16)
  column = {t: i for i, t in enumerate(tags)}
  for r, names in enumerate(top_tags):
    for j, name in enumerate(names):
      if name not in column:  # a name outside the vocabulary: kept, appended
        column[name] = len(tags)
        tags.append(name)
      out[r, j] = column[name]
  return out


def _new_array(path: str, shape: Tuple[int, ...], dtype) -> np.ndarray:
  """A ``.npy`` file filled in place (local: a writable memory map, so a segment of
  millions of rows is never held in memory; a URL: in memory, saved by
  :func:`_finish_array`)."""
  if catalog_parts.is_url(path) or 0 in shape:
    return np.zeros(shape, dtype)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def _finish_array(path: str, array: np.ndarray) -> None:
  if isinstance(array, np.memmap):
    array.flush()
  else:
    _save_npy(path, array)


def _write_segment(directory: str, number: int, sources: Iterable[Tuple[PartRows, Any]],
                   rows: int, mean: Optional[np.ndarray], trained: Optional[bytes],
                   tags: List[str], dim: int) -> Dict[str, Any]:
  """Writes a new segment directory, one part at a time; returns its manifest entry.

  Args:
    directory: the index directory.
    number: the segment's number (its name adds a random suffix).
    sources: ``(part, vectors)`` pairs: a part's rows and either None (its raw
      embeddings are transformed with ``mean``) or its already transformed vectors.
    rows: the total number of rows of ``sources``.
    mean: the centring vector (None: no centring).
    trained: the serialized trained, empty faiss index (None: the exact kind).
    tags: the tag names; a top tag outside them is appended.
    dim: the embedding size.
  """
  name = _unique("s", number)
  seg_dir = _join(directory, SEGMENTS_DIR, name)
  n_tags = len(tags)
  vectors = _new_array(_join(seg_dir, VECTORS_FILE), (rows, dim), np.float32)
  probabilities = _new_array(_join(seg_dir, PROBABILITIES_FILE), (n_tags, rows),
                             np.float32)
  index = None
  if trained is not None:
    index = _faiss().deserialize_index(np.frombuffer(trained, np.uint8))
  paths: List[str] = []
  ranges, tops = [], []
  for part, transformed_rows in sources:
    start = len(paths)
    n = part.rows
    if start + n > rows:
      raise ValueError(f"more rows than the {rows} announced")
    paths.extend(part.paths)
    ranges.append({"name": part.name, "start": start, "stop": start + n})
    if transformed_rows is None:
      emb = np.asarray(part.embeddings, np.float32).reshape(-1, dim)
      transformed_rows = similarity.transformed(emb, mean)
    x = np.ascontiguousarray(transformed_rows, np.float32).reshape(-1, dim)
    if x.shape[0] != n:
      raise ValueError(f"part {part.name}: {x.shape[0]} embeddings but {n} paths")
    vectors[start:start + n] = x
    p = part.probabilities
    if p is not None and np.asarray(p).size and n_tags:
      probabilities[:, start:start + n] = np.asarray(p, np.float32).reshape(n, -1)[
          :, :n_tags].T
    tops.append(_top_tag_indices(part.top_tags, n, tags))
    if index is not None:
      for r0 in range(0, n, _ROW_BLOCK):
        index.add(x[r0:r0 + _ROW_BLOCK])
  if len(paths) != rows:
    raise ValueError(f"{len(paths)} rows written, {rows} announced")
  width = max((t.shape[1] for t in tops), default=0)
  top = np.full([rows, width], -1, np.int16)
  start = 0
  for t in tops:
    top[start:start + t.shape[0], :t.shape[1]] = t
    start += t.shape[0]
  encoded = [p.encode("utf-8") for p in paths]
  offsets = np.zeros([rows + 1], np.int64)
  offsets[1:] = np.cumsum([len(e) for e in encoded])
  hashes = _path_hash(paths)
  order = np.argsort(hashes, kind="stable")
  _finish_array(_join(seg_dir, VECTORS_FILE), vectors)
  _finish_array(_join(seg_dir, PROBABILITIES_FILE), probabilities)
  del vectors, probabilities
  _save_npy(_join(seg_dir, TOP_TAGS_FILE), top)
  write_atomic(_join(seg_dir, PATHS_BIN_FILE), b"".join(encoded))
  _save_npy(_join(seg_dir, PATH_OFFSETS_FILE), offsets)
  _save_npy(_join(seg_dir, PATH_HASHES_FILE), hashes[order])
  _save_npy(_join(seg_dir, PATH_ROWS_FILE), order.astype(np.int64))
  if index is not None:
    write_atomic(_join(seg_dir, FAISS_FILE), _faiss().serialize_index(index).tobytes())
  info = {"name": name, "rows": rows, "dim": dim, "parts": ranges,
          "faiss": index is not None, "csls": False, "created_utc": _now()}
  _write_json(_join(seg_dir, SEGMENT_FILE), info)
  return {"name": name, "rows": rows, "parts": [r["name"] for r in ranges]}


def _train(sample: np.ndarray, params: Mapping[str, Any]) -> bytes:
  faiss = _faiss()
  index = faiss.index_factory(int(sample.shape[1]), _factory_string(params),
                              faiss.METRIC_INNER_PRODUCT)
  index.train(np.ascontiguousarray(sample, np.float32))
  return faiss.serialize_index(index).tobytes()


def _next_number(directory: str, sub: str, prefix: str) -> int:
  numbers = []
  for name in _listdir(_join(directory, sub)):
    digits = name[len(prefix):len(prefix) + 6]
    if name.startswith(prefix) and digits.isdigit():
      numbers.append(int(digits))
  return max(numbers, default=0) + 1


def _publish_current(directory: str, version: str) -> None:
  """Makes ``version`` the live one: ``CURRENT`` is written to a temporary file and
  renamed over the old one (atomic on a local file system; on gs:// one object
  replaced)."""
  write_atomic(_join(directory, CURRENT_FILE), version + "\n")


def _publish(directory: str, manifest: Dict[str, Any], keep_versions: int) -> None:
  number = _next_number(directory, VERSIONS_DIR, "v")
  version = f"v{number:06d}"
  manifest["version"] = version
  manifest["previous"] = read_current(directory)
  manifest["created_utc"] = _now()
  manifest["library"] = _library()
  _write_json(_join(directory, VERSIONS_DIR, f"{version}.json"), manifest)
  _publish_current(directory, version)
  collect_garbage(directory, keep_versions)


def _library() -> str:
  from deepbof_tf import __version__ as version  # pylint: disable=import-outside-toplevel
  faiss = _faiss()
  return f"deepbof_tf {version}, faiss {faiss.__version__}"


def collect_garbage(directory: str, keep_versions: int = KEEP_VERSIONS) -> List[str]:
  """Deletes what the newest ``keep_versions`` versions (the live one and those before
  it) do not reference: older manifests, segments, bases, and an index of the old
  one-directory layout. Returns the deleted paths.

  A reader that already opened an older version keeps its memory-mapped arrays (a
  deleted file stays readable while mapped on a local file system).
  """
  live = read_current(directory)
  if live is None:
    return []
  names = sorted(n[:-len(".json")] for n in _listdir(_join(directory, VERSIONS_DIR))
                 if n.endswith(".json") and n.startswith("v"))
  kept: List[str] = []
  segments, bases = set(), set()
  name: Optional[str] = live
  while name and name in names and len(kept) < max(1, keep_versions):
    kept.append(name)  # the live version and those it was built from
    manifest = read_manifest(directory, name)
    segments.update(s["name"] for s in manifest["segments"])
    if manifest.get("base"):
      bases.add(manifest["base"])
    name = manifest.get("previous")
  deleted = []
  for name in names:
    if name not in kept and name < live:
      deleted.append(_join(directory, VERSIONS_DIR, f"{name}.json"))
  for sub, used in ((SEGMENTS_DIR, segments), (BASES_DIR, bases)):
    for name in _listdir(_join(directory, sub)):
      if name not in used:
        deleted.append(_join(directory, sub, name))
  for name in (similarity.INFO_FILE, similarity.INDEX_FILE, similarity.PATHS_FILE,
               similarity.NORMALIZATION_FILE):
    if _exists(_join(directory, name)):
      deleted.append(_join(directory, name))
  for path in deleted:
    _remove_tree(path)
  return deleted


# --------------------------------------------------------------------------------------
# Building and updating.
# --------------------------------------------------------------------------------------


def build_index(directory: str, parts: Sequence[Any], *, dim: int,
                normalization: str = similarity.CATALOG_NORMALIZATION,
                tags: Sequence[str] = (), exact_max_items: int = EXACT_MAX_ITEMS,
                params: Optional[CompressionParams] = None,
                csls_neighbours: int = similarity.CSLS_NEIGHBOURS,
                extra: Optional[Mapping[str, Any]] = None,
                keep_versions: int = KEEP_VERSIONS, reason: str = "") -> UpdateReport:
  """A full build: new statistics (and a newly trained quantizer above
  ``exact_max_items`` rows), new segments, a new version made live.

  Args:
    directory: the index directory (``CATALOG/index``).
    parts: :class:`PartRows` or :class:`CatalogPart` (anything with ``name``, ``rows``
      and ``load() -> PartRows``), in order. Each is loaded twice (statistics and
      training sample, then the segment, written part by part into memory-mapped
      files), so memory stays bounded by a part (plus the paths and the faiss codes).
    dim: the embedding size.
    normalization: ``raw``, ``centred``, ``csls`` or ``centred_csls``.
    tags: the probability columns' tag names.
    exact_max_items: the largest index of the exact kind.
    params: the compressed kind's parameters (default :class:`CompressionParams`).
    csls_neighbours: the local-scaling neighbourhood of the ``csls`` ones.
    extra: more keys for the manifest (e.g. the model's fingerprint).
    keep_versions: versions kept by the garbage collection.
    reason: why (printed).
  """
  _check_normalization(normalization)
  total = sum(int(p.rows) for p in parts)
  params = params or CompressionParams()
  compressed = total > exact_max_items
  resolved = params.resolved(total, dim) if compressed else {"kind": EXACT}
  rng = np.random.default_rng(TRAIN_SEED)
  train_n = resolved.get("train_points", 0)
  centred = normalization.startswith("centred")
  sums = np.zeros([dim], np.float64)
  samples = []
  if centred or compressed:  # pass 1: the mean unit embedding, a training sample
    for part in parts:
      rows = part.load()
      x = similarity.normalized(np.asarray(rows.embeddings, np.float32).reshape(-1, dim))
      sums += x.astype(np.float64).sum(axis=0)
      if compressed and len(x):
        take = min(len(x), int(math.ceil(train_n * len(x) / max(total, 1))))
        samples.append(np.asarray(rows.embeddings, np.float32).reshape(-1, dim)[
            np.sort(rng.choice(len(x), take, replace=False))])
  mean = (sums / total).astype(np.float32) if centred and total else (
      np.zeros([dim], np.float32) if centred else None)
  base = _unique("b", _next_number(directory, BASES_DIR, "b"))
  trained = None
  if compressed:
    sample = similarity.transformed(np.concatenate(samples), mean)
    trained = _train(sample, resolved)
    write_atomic(_join(directory, BASES_DIR, base, TRAINED_FILE), trained)
  if centred:
    buffer = io.BytesIO()
    np.savez(buffer, mean=mean)
    write_atomic(_join(directory, BASES_DIR, base, STATISTICS_FILE), buffer.getvalue())
  tag_list = list(tags)
  entries = [_write_segment(directory, _next_number(directory, SEGMENTS_DIR, "s"),
                            ((part.load(), None) for part in parts), total, mean,
                            trained, tag_list, dim)]
  manifest = {"format_version": FORMAT_VERSION, "kind": resolved["kind"], "dim": dim,
              "metric": "cosine", "normalization": normalization, "base": base,
              "statistics": STATISTICS_FILE if centred else None,
              "trained": TRAINED_FILE if compressed else None,
              "params": {k: v for k, v in resolved.items() if k != "kind"},
              "exact_max_items": int(exact_max_items), "segments": entries,
              "tombstoned_parts": [], "tags": tag_list, "num_rows": total,
              "num_items": total, "built_utc": _now(), **dict(extra or {})}
  if normalization.endswith("csls"):
    manifest["csls_neighbours"] = int(csls_neighbours)
    _fill_csls(directory, manifest, [e["name"] for e in entries])
  _publish(directory, manifest, keep_versions)
  return UpdateReport("build", manifest["version"], manifest["kind"], normalization, dim,
                      total, added_rows=total, segment=entries[0]["name"], segments=1,
                      reason=reason, directory=directory)


def _fill_csls(directory: str, manifest: Mapping[str, Any], names: Sequence[str]) -> None:
  """Writes the mean neighbour cosine of every row of the segments ``names`` (against
  every live row of ``manifest``) before the version is published; older segments keep
  theirs."""
  neighbours = int(manifest["csls_neighbours"])
  plain = dict(manifest, normalization=manifest["normalization"].replace("csls", "")
               .rstrip("_") or "raw")
  index = CatalogIndex(directory, plain)
  for segment in index.segments:  # neighbours by the plain cosine
    segment.neighbour_similarity = None
  for segment in index.segments:
    if segment.name not in names:
      continue
    values = np.zeros([segment.rows], np.float64)
    for r0 in range(0, segment.rows, 1024):
      rows = list(range(segment.offset + r0, segment.offset + min(segment.rows, r0 + 1024)))
      found = index.search(np.asarray(segment.vectors[r0:r0 + 1024], np.float32),
                           neighbours, exclude_rows=rows, transformed=True)
      values[r0:r0 + len(rows)] = [np.mean([c for _, c in f]) if f else 0.0
                                   for f in found]
    _save_npy(_join(segment.dir, NEIGHBOUR_SIMILARITY_FILE), values)
    info = dict(segment.info, csls=True)
    _write_json(_join(segment.dir, SEGMENT_FILE), info)


def add_parts(directory: str, parts: Sequence[Any], drop: Sequence[str] = (), *,
              max_segments: int = MAX_SEGMENTS,
              max_tombstone_fraction: float = MAX_TOMBSTONE_FRACTION,
              compact: bool = False, keep_versions: int = KEEP_VERSIONS,
              extra: Optional[Mapping[str, Any]] = None) -> UpdateReport:
  """Adds ``parts`` as one new segment of the live version and tombstones the parts
  named in ``drop``, without retraining or new statistics; publishes a new version
  (compacted when it has more than ``max_segments`` segments or tombstones more than
  ``max_tombstone_fraction`` of its rows, or when ``compact``).

  Args:
    directory: the index directory.
    parts: new parts (as :func:`build_index`'s); a name the version already covers is
      an error.
    drop: names of covered parts whose rows are left out from now on.
    max_segments, max_tombstone_fraction: the compaction triggers.
    compact: merge the segments into one whatever the triggers say.
    keep_versions: versions kept by the garbage collection.
    extra: manifest keys to set (e.g. the catalogue's creation time).
  """
  manifest = read_manifest(directory)
  covered = {p for s in manifest["segments"] for p in s["parts"]}
  dead = set(manifest.get("tombstoned_parts", []))
  for part in parts:
    if part.name in covered:
      raise ValueError(f"part {part.name} is already in version {manifest['version']}")
  unknown = [d for d in drop if d not in covered]
  if unknown:
    raise ValueError(f"cannot drop {', '.join(unknown)}: not in version "
                     f"{manifest['version']}")
  current = CatalogIndex(directory, manifest, load_faiss=False)
  new_dead = [d for d in drop if d not in dead]
  tombstoned = 0
  for segment in current.segments:
    for r in segment.info["parts"]:
      if r["name"] in new_dead:
        tombstoned += r["stop"] - r["start"]
  dim = int(manifest["dim"])
  trained = None
  if manifest.get("trained"):
    trained = catalog_parts.read_bytes(_join(directory, BASES_DIR, manifest["base"],
                                             manifest["trained"]))
  tags = list(manifest.get("tags", []))
  added = sum(int(p.rows) for p in parts)
  manifest = dict(manifest, **dict(extra or {}))
  manifest["tombstoned_parts"] = sorted(dead | set(new_dead))
  entry = None
  if parts:
    entry = _write_segment(directory, _next_number(directory, SEGMENTS_DIR, "s"),
                           ((p.load(), None) for p in parts), added, current.mean,
                           trained, tags, dim)
    manifest["segments"] = list(manifest["segments"]) + [entry]
  manifest["tags"] = tags
  manifest["num_rows"] = int(manifest["num_rows"]) + added
  manifest["num_items"] = int(manifest["num_items"]) + added - tombstoned
  if entry and manifest["normalization"].endswith("csls"):
    _fill_csls(directory, manifest, [entry["name"]])
  dead_rows = manifest["num_rows"] - manifest["num_items"]
  action, reason = "update", ""
  segments = [e["name"] for e in manifest["segments"]]
  merge: List[str] = []
  if compact:
    merge, reason = segments, "asked"
  elif manifest["num_rows"] and dead_rows / manifest["num_rows"] > max_tombstone_fraction:
    merge, reason = segments, f"{dead_rows} of {manifest['num_rows']} rows tombstoned"
  elif len(segments) > max_segments:  # the largest segment stays as it is
    largest = max(manifest["segments"], key=lambda e: e["rows"])["name"]
    merge = [n for n in segments if n != largest]
    reason = f"{len(segments)} segments > {max_segments}"
  if merge:
    manifest = _compacted(directory, manifest, trained, merge)
    action = "compact"
    if entry is not None and entry["name"] in merge:
      entry = next(e for e in manifest["segments"] if e["name"] not in segments)
  _publish(directory, manifest, keep_versions)
  return UpdateReport(action, manifest["version"], manifest["kind"],
                      manifest["normalization"], dim, int(manifest["num_items"]),
                      added_rows=added, segment=entry["name"] if entry else None,
                      tombstoned_rows=tombstoned, segments=len(manifest["segments"]),
                      reason=f"compacted: {reason}" if reason else "",
                      directory=directory)


def _compacted(directory: str, manifest: Dict[str, Any], trained: Optional[bytes],
               merge: Sequence[str]) -> Dict[str, Any]:
  """The manifest with the live rows of the segments ``merge`` merged into one new
  segment (streamed from their stored vectors: no catalogue read, no retraining; the
  csls statistics are kept) in the place of the first of them."""
  index = CatalogIndex(directory, manifest, load_faiss=False)
  tags = list(manifest.get("tags", []))
  dead = set(manifest["tombstoned_parts"])
  merged = [s for s in index.segments if s.name in merge]
  ranges = [(segment, r) for segment in merged for r in segment.info["parts"]
            if r["name"] not in dead and r["stop"] > r["start"]]
  rows = sum(r["stop"] - r["start"] for _, r in ranges)

  def sources():
    for segment, r in ranges:
      start, stop = r["start"], r["stop"]
      part = PartRows(
          r["name"], [segment.path(i) for i in range(start, stop)],
          np.zeros([stop - start, 0], np.float32),
          np.asarray(segment.probabilities[:, start:stop], np.float32).T,
          [[tags[int(t)] for t in segment.top_tags[i] if t >= 0]
           for i in range(start, stop)])
      yield part, np.asarray(segment.vectors[start:stop], np.float32)

  dim = int(manifest["dim"])
  entry = _write_segment(directory, _next_number(directory, SEGMENTS_DIR, "s"),
                         sources(), rows, None, trained, tags, dim)
  ns = [segment.neighbour_similarity[r["start"]:r["stop"]] for segment, r in ranges
        if segment.neighbour_similarity is not None]
  if manifest["normalization"].endswith("csls"):
    seg_dir = _join(directory, SEGMENTS_DIR, entry["name"])
    _save_npy(_join(seg_dir, NEIGHBOUR_SIMILARITY_FILE),
              np.concatenate(ns) if ns else np.zeros([0], np.float64))
    info = catalog_parts.read_json(_join(seg_dir, SEGMENT_FILE))
    _write_json(_join(seg_dir, SEGMENT_FILE), dict(info, csls=True))
  gone = {r["name"] for segment in merged for r in segment.info["parts"]}
  segments, placed = [], False
  for e in manifest["segments"]:
    if e["name"] not in merge:
      segments.append(e)
    elif not placed:
      segments.append(entry)
      placed = True
  num_rows = sum(e["rows"] for e in segments)
  return dict(manifest, segments=segments, tags=tags, num_rows=num_rows,
              tombstoned_parts=sorted(dead - gone))


def update_catalog_index(catalog_dir: str,
                         normalization: str = similarity.CATALOG_NORMALIZATION,
                         rebuild: bool = False, exact_max_items: int = EXACT_MAX_ITEMS,
                         params: Optional[CompressionParams] = None,
                         max_segments: int = MAX_SEGMENTS,
                         max_tombstone_fraction: float = MAX_TOMBSTONE_FRACTION,
                         keep_versions: int = KEEP_VERSIONS) -> UpdateReport:
  """Brings ``CATALOG/index`` up to date with the catalogue (``deepbof-similar
  --build``): the first time (or with ``rebuild``, another model fingerprint, another
  ``normalization``, or an exact index grown past ``exact_max_items``) a full build;
  later the parts ``catalog.json`` lists that the live version lacks become a new
  segment and those it no longer lists are tombstoned (nothing to do: no new version).

  Args:
    catalog_dir: a ``deepbof-tag-catalog`` output directory.
    normalization: the index's normalization (another one than the live version's
      rebuilds).
    rebuild: rebuild whatever the live version is.
    exact_max_items, params: the kind and its parameters of a (re)build.
    max_segments, max_tombstone_fraction: the compaction triggers of an update.
    keep_versions: versions kept by the garbage collection.
  """
  _check_normalization(normalization)
  directory = similarity.index_dir(catalog_dir)
  info, parts = catalog_parts_of(catalog_dir)
  extra = {"model_fingerprint": info["model_fingerprint"],
           "catalog_created_utc": info["catalog_created_utc"]}
  manifest = None
  reason = "first build"
  if read_current(directory) is not None:
    manifest = read_manifest(directory)
    total = sum(p.rows for p in parts)
    if rebuild:
      reason = "--rebuild"
    elif manifest.get("model_fingerprint") != info["model_fingerprint"]:
      reason = "another model fingerprint"
    elif manifest["normalization"] != normalization:
      reason = f"normalization {manifest['normalization']} → {normalization}"
    elif int(manifest["dim"]) != info["embedding_size"]:
      reason = "another embedding size"
    elif manifest["kind"] == EXACT and total > exact_max_items:
      reason = f"{total} tracks > {exact_max_items}: a compressed index"
    else:
      reason = ""
  elif is_old_layout(directory):
    reason = "an index of the old layout"
  if manifest is None or reason:
    return build_index(directory, parts, dim=info["embedding_size"],
                       normalization=normalization, tags=info["tags"],
                       exact_max_items=exact_max_items, params=params, extra=extra,
                       keep_versions=keep_versions, reason=reason)
  covered = [p for s in manifest["segments"] for p in s["parts"]]
  dead = set(manifest.get("tombstoned_parts", []))
  listed = {p.name for p in parts}
  new = [p for p in parts if p.name not in set(covered)]
  drop = [name for name in covered if name not in listed and name not in dead]
  if not new and not drop:
    return UpdateReport("unchanged", manifest["version"], manifest["kind"],
                        manifest["normalization"], int(manifest["dim"]),
                        int(manifest["num_items"]), segments=len(manifest["segments"]),
                        directory=directory)
  return add_parts(directory, new, drop, max_segments=max_segments,
                   max_tombstone_fraction=max_tombstone_fraction,
                   keep_versions=keep_versions, extra=extra)


def stale_parts(catalog_dir: str, index: CatalogIndex) -> Tuple[List[str], List[str]]:
  """``(new, dropped)``: the parts ``catalog.json`` lists that ``index`` lacks, and the
  live ones it covers that the catalogue no longer lists (reads ``catalog.json`` only).
  """
  record = catalog_parts.read_record(catalog_dir)
  if record is None:
    return [], []
  listed = [p["name"] for p in record["parts"]]
  covered = [p for s in index.manifest["segments"] for p in s["parts"]]
  dead = set(index.manifest.get("tombstoned_parts", []))
  return ([n for n in listed if n not in set(covered)],
          [n for n in covered if n not in set(listed) and n not in dead])
