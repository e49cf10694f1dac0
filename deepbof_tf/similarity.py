"""Nearest-neighbour search over a catalogue's embeddings (cosine similarity, faiss).

A catalogue written by ``deepbof-tag-catalog`` stores the bag-of-features embedding of
every file (Parquet column ``embedding``). This module builds an index over them and
answers "which tracks are most similar to this one":

* embeddings are L2-normalised, so the inner product is the cosine similarity (a zero
  embedding stays zero and is similar to nothing);
* up to :data:`EXACT_MAX_ITEMS` tracks the index is exact (``faiss.IndexFlatIP``, a
  brute-force scan: at 10,000 × 1,024 one query reads 40 MB, a few milliseconds);
  above it, an HNSW graph (``faiss.IndexHNSWFlat`` with the inner-product metric,
  :data:`HNSW_M` links per node, :data:`HNSW_EF_CONSTRUCTION` and
  :data:`HNSW_EF_SEARCH`), whose recall@10 against the exact search
  ``benchmarks/bench_catalog.py`` measures (target ≥ 0.95);
* the index is written next to the catalogue (``index/``: the faiss index, the
  paths in index order and a JSON description) through ``tf.io.gfile``, so ``gs://``
  catalogues work too;
* a :data:`NORMALIZATIONS` transform against hubness (a few tracks being everybody's
  neighbour): ``centred`` subtracts the catalogue's mean unit embedding before the L2
  normalisation, ``csls`` re-ranks faiss candidates by cross-domain similarity local
  scaling (the cosine minus half the track's mean cosine to its own
  :data:`CSLS_NEIGHBOURS` nearest tracks), ``centred_csls`` does both. Their statistics
  are stored with the index (``normalization.npz``) and applied to every query;
  ``benchmarks/bench_similarity_quality.py`` measures them (docs/catalog.md);
* filters: :meth:`SimilarityIndex.search` takes a ``keep`` mask and searches wider
  until ``k`` kept tracks are found; :func:`tag_mask` (``rock>0.5`` on the stored
  probabilities) and :func:`same_value_mask` (leave out the query's album, artist …
  from a metadata CSV) build such masks.

faiss (``faiss-cpu``) is the library because it ships prebuilt wheels (CPython ABI3,
so 3.10–3.13) that work with NumPy 2, and has the exact and the approximate index
behind one interface (docs/catalog.md says why not hnswlib or ScaNN).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import posixpath
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from deepbof_tf.io_utils import write_atomic

EXACT_MAX_ITEMS = 10_000
DEFAULT_NEIGHBOURS = 10
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
INDEX_DIR = "index"
INDEX_FILE = "embeddings.faiss"
PATHS_FILE = "paths.json"
INFO_FILE = "index.json"
NORMALIZATION_FILE = "normalization.npz"
NORMALIZATIONS = ("raw", "centred", "csls", "centred_csls")
# What SimilarityIndex.build does unless told (plain cosine), and what a catalogue's
# index gets (build_catalog_index, deepbof-similar --build): centring measured lower
# hubness and better retrieval (docs/catalog.md#hubness).
DEFAULT_NORMALIZATION = "raw"
CATALOG_NORMALIZATION = "centred"
CSLS_NEIGHBOURS = 10
WIDEN_FACTOR = 4


@functools.lru_cache(maxsize=None)
def faiss_module():
  """faiss, imported (once) without its loader's INFO lines about CPU-specific builds."""
  import logging
  logging.getLogger("faiss.loader").setLevel(logging.WARNING)
  import faiss
  return faiss


def _is_url(path: str) -> bool:
  return "://" in path


def _join(base: str, *parts: str) -> str:
  return posixpath.join(base, *parts) if _is_url(base) else os.path.join(base, *parts)


def _read_bytes(path: str) -> bytes:
  if _is_url(path):
    import tensorflow as tf
    with tf.io.gfile.GFile(path, "rb") as f:
      return f.read()
  with open(path, "rb") as f:
    return f.read()


def _makedirs(path: str) -> None:
  if _is_url(path):
    import tensorflow as tf
    tf.io.gfile.makedirs(path)
  else:
    os.makedirs(path, exist_ok=True)


def read_catalog_metadata(catalog_dir: str) -> Dict[str, Any]:
  """A catalogue's ``metadata.json``; a directory without it is not a catalogue."""
  path = _join(catalog_dir, "metadata.json")
  try:
    return json.loads(_read_bytes(path).decode("utf-8"))
  except FileNotFoundError:
    raise FileNotFoundError(f"{catalog_dir}: not a catalogue (no metadata.json); run "
                            "deepbof-tag-catalog first") from None
  except Exception as error:  # gfile's NotFoundError and friends
    if "not found" in str(error).lower() or "no such file" in str(error).lower():
      raise FileNotFoundError(f"{catalog_dir}: not a catalogue (no metadata.json); run "
                              "deepbof-tag-catalog first") from None
    raise


def load_catalog(catalog_dir: str, columns: Sequence[str] = ("path", "embedding", "top_tags")
                 ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """``(metadata, columns)`` of a catalogue: its Parquet columns as lists/arrays.

  ``columns["embedding"]`` is float32 ``[N, H]``; rows are in the order of the
  Parquet files listed in ``metadata.json``.
  """
  import pyarrow as pa
  import pyarrow.parquet as pq
  metadata = read_catalog_metadata(catalog_dir)
  tables = [pq.read_table(io.BytesIO(_read_bytes(_join(catalog_dir, rel))),
                          columns=list(columns))
            for rel in metadata["files"]["parquet"]]
  table = pa.concat_tables(tables) if tables else None
  out: Dict[str, Any] = {}
  for name in columns:
    values = table.column(name).to_pylist() if table is not None else []
    if name == "embedding":
      size = int(metadata["embedding_size"])
      out[name] = (np.asarray(values, np.float32).reshape(-1, size) if values
                   else np.zeros([0, size], np.float32))
    else:
      out[name] = values
  return metadata, out


def normalized(embeddings: np.ndarray) -> np.ndarray:
  """Rows scaled to unit L2 norm (float32 copy); all-zero rows stay zero."""
  x = np.array(embeddings, np.float32, copy=True, ndmin=2)
  norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
  np.divide(x, norms, out=x, where=norms > 0)
  return x


def _check_normalization(normalization: str) -> None:
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"unknown normalization {normalization!r}; one of "
                     f"{', '.join(NORMALIZATIONS)}")


def centring_vector(embeddings: np.ndarray) -> np.ndarray:
  """The mean of the catalogue's unit-norm embeddings (float32 ``[H]``; zero rows count
  as zero)."""
  x = normalized(embeddings)
  if x.shape[0] == 0:
    return np.zeros([x.shape[1]], np.float32)
  return x.astype(np.float64).mean(axis=0).astype(np.float32)


def transformed(embeddings: np.ndarray, mean: Optional[np.ndarray] = None) -> np.ndarray:
  """Unit-norm rows, centred on ``mean`` (a :func:`centring_vector`) first if given:
  ``normalized(normalized(x) - mean)``. All-zero rows stay zero (similar to nothing)."""
  x = normalized(embeddings)
  if mean is None:
    return x
  zero = ~np.any(x != 0, axis=1)
  x -= np.asarray(mean, np.float32)[None]
  x[zero] = 0.0
  return normalized(x)


def _mean_neighbour_similarity(base: np.ndarray, neighbours: int) -> np.ndarray:
  """Per row of ``base`` (unit rows, float64), the mean cosine of its ``neighbours``
  nearest other rows (NumPy, in blocks)."""
  n = base.shape[0]
  kk = min(neighbours, n - 1)
  out = np.zeros([n], np.float64)
  if kk <= 0:
    return out
  for start in range(0, n, 1024):
    scores = base[start:start + 1024] @ base.T
    rows = np.arange(start, min(start + 1024, n))
    scores[rows - start, rows] = -np.inf
    top = -np.partition(-scores, kk - 1, axis=1)[:, :kk]
    out[rows] = top.mean(axis=1)
  return out


def exact_neighbours(embeddings: np.ndarray, queries: np.ndarray, k: int,
                     normalization: str = "raw", keep: Optional[np.ndarray] = None,
                     csls_neighbours: int = CSLS_NEIGHBOURS
                     ) -> Tuple[np.ndarray, np.ndarray]:
  """Brute-force top-k in NumPy (float64): ``(scores [Q, k], ids [Q, k])``.

  The reference of the tests and the benchmark; independent of faiss. Scores are the
  cosines in the transformed space; the order is by that cosine, or for the ``csls``
  normalizations by the cosine minus half the neighbour's mean cosine to its
  ``csls_neighbours`` nearest catalogue tracks.

  Args:
    embeddings: the catalogue ``[N, H]``.
    queries: ``[Q, H]``.
    k: neighbours per query.
    normalization: one of :data:`NORMALIZATIONS`, with statistics from ``embeddings``.
    keep: optional bool ``[N]`` or ``[Q, N]``: only these rows may be neighbours (then
      a query with fewer kept rows gets ids of -1 and scores of -inf at the end).
    csls_neighbours: the local-scaling neighbourhood.
  """
  _check_normalization(normalization)
  mean = centring_vector(embeddings) if normalization.startswith("centred") else None
  base = transformed(embeddings, mean).astype(np.float64)
  q = transformed(queries, mean).astype(np.float64)
  scores = q @ base.T
  rank = scores
  if normalization.endswith("csls"):
    rank = scores - 0.5 * _mean_neighbour_similarity(base, csls_neighbours)[None]
  if keep is not None:
    rank = np.where(np.broadcast_to(np.asarray(keep, bool), rank.shape), rank, -np.inf)
  k = min(k, base.shape[0])
  ids = np.argsort(-rank, axis=1, kind="stable")[:, :k]
  out = np.take_along_axis(scores, ids, axis=1)
  dropped = np.take_along_axis(rank, ids, axis=1) == -np.inf
  return np.where(dropped, -np.inf, out), np.where(dropped, -1, ids)


def recall_at_k(approximate_ids: np.ndarray, exact_ids: np.ndarray) -> float:
  """Mean fraction of the exact top-k found in the approximate top-k."""
  k = exact_ids.shape[1]
  hits = [len(set(a[:k].tolist()) & set(e.tolist())) for a, e in
          zip(approximate_ids, exact_ids)]
  return float(np.mean(hits) / k) if hits else 1.0


class SimilarityIndex:
  """A faiss cosine index over catalogue embeddings, with the paths it indexes.

  Build with :meth:`build`, keep with :meth:`save` / :meth:`load`, query with
  :meth:`search`.

  Args:
    index: the faiss index (over the transformed, unit-norm rows).
    paths: the catalogue path of each row.
    info: the description written to ``index.json`` (``normalization``: one of
      :data:`NORMALIZATIONS`; an index written before it existed is ``raw``).
    mean: the centring vector of the ``centred`` normalizations.
    neighbour_similarity: per row, its mean cosine to its ``csls_neighbours`` nearest
      rows (the ``csls`` normalizations).
  """

  def __init__(self, index, paths: Sequence[str], info: Dict[str, Any],
               mean: Optional[np.ndarray] = None,
               neighbour_similarity: Optional[np.ndarray] = None):
    self.index = index
    self.paths = list(paths)
    self.info = dict(info)
    self.mean = None if mean is None else np.asarray(mean, np.float32)
    self.neighbour_similarity = (None if neighbour_similarity is None
                                 else np.asarray(neighbour_similarity, np.float64))
    self._row = {p: i for i, p in enumerate(self.paths)}
    for i, p in enumerate(self.paths):  # local paths also by their absolute form
      if not _is_url(p):
        self._row.setdefault(os.path.abspath(p), i)

  @property
  def kind(self) -> str:
    return self.info["kind"]

  @property
  def normalization(self) -> str:
    return self.info.get("normalization", "raw")

  @classmethod
  def build(cls, embeddings: np.ndarray, paths: Sequence[str],
            exact_max_items: int = EXACT_MAX_ITEMS, m: int = HNSW_M,
            ef_construction: int = HNSW_EF_CONSTRUCTION,
            ef_search: int = HNSW_EF_SEARCH,
            normalization: str = DEFAULT_NORMALIZATION,
            csls_neighbours: int = CSLS_NEIGHBOURS) -> "SimilarityIndex":
    """Indexes ``embeddings [N, H]``: exact up to ``exact_max_items`` rows, else HNSW.

    Args:
      embeddings: the catalogue's embeddings.
      paths: one path per row.
      exact_max_items: the largest catalogue searched exactly.
      m, ef_construction, ef_search: HNSW parameters (above the threshold).
      normalization: one of :data:`NORMALIZATIONS`.
      csls_neighbours: the local-scaling neighbourhood of the ``csls`` ones.
    """
    _check_normalization(normalization)
    faiss = faiss_module()
    mean = centring_vector(embeddings) if normalization.startswith("centred") else None
    x = transformed(embeddings, mean)
    if x.shape[0] != len(paths):
      raise ValueError(f"{x.shape[0]} embeddings but {len(paths)} paths")
    dim = int(x.shape[1])
    if x.shape[0] <= exact_max_items:
      index = faiss.IndexFlatIP(dim)
      info = {"kind": "exact"}
    else:
      index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
      index.hnsw.efConstruction = ef_construction
      info = {"kind": "hnsw", "m": m, "ef_construction": ef_construction}
    index.add(x)
    info.update(num_items=int(x.shape[0]), dim=dim, metric="cosine",
                exact_max_items=int(exact_max_items), ef_search=int(ef_search),
                library=f"faiss {faiss.__version__}")
    if normalization != "raw":
      info["normalization"] = normalization
    out = cls(index, paths, info, mean=mean)
    out.set_ef_search(ef_search)
    if normalization.endswith("csls"):
      out.info["csls_neighbours"] = int(csls_neighbours)
      out.neighbour_similarity = out._neighbour_similarity(x, csls_neighbours)
    return out

  def _neighbour_similarity(self, x: np.ndarray, neighbours: int) -> np.ndarray:
    """Per indexed row ``x[i]``, the mean cosine of its ``neighbours`` nearest other rows
    (found by this index)."""
    n = x.shape[0]
    kk = min(neighbours, n - 1)
    if kk <= 0:
      return np.zeros([n], np.float64)
    scores, ids = self.index.search(x, kk + 1)
    out = np.zeros([n], np.float64)
    for i in range(n):
      own = ids[i] == i
      keep = (~own) & (ids[i] >= 0) if own.any() else (ids[i] >= 0)
      values = scores[i][keep][:kk].astype(np.float64)
      out[i] = values.mean() if values.size else 0.0
    return out

  def set_ef_search(self, ef_search: int) -> None:
    """HNSW's search breadth (recall vs. speed); nothing for an exact index."""
    if self.kind == "hnsw":
      self.index.hnsw.efSearch = int(ef_search)
      self.info["ef_search"] = int(ef_search)

  def row_of(self, path: str) -> Optional[int]:
    """The row of a catalogue path (also matched as an absolute local path), or None."""
    if path in self._row:
      return self._row[path]
    if not _is_url(path):
      return self._row.get(os.path.abspath(path))
    return None

  def transform(self, queries: np.ndarray) -> np.ndarray:
    """Queries as the index holds its rows: unit norm, centred first when the index is."""
    return transformed(queries, self.mean)

  def search(self, queries: np.ndarray, k: int,
             exclude_rows: Optional[Sequence[Optional[int]]] = None,
             keep: Optional[np.ndarray] = None) -> List[List[Tuple[int, float]]]:
    """The ``k`` most similar rows of each query: ``[(row, cosine), …]`` best first.

    The cosine is that of the index's space (after centring, for a ``centred`` index);
    a ``csls`` index orders by it minus half the row's mean neighbour cosine. When
    rows are left out (``keep``) or re-ranked (``csls``), faiss is asked for
    ``WIDEN_FACTOR × k`` candidates, then twice as many, … until ``k`` of them pass
    (and, for ``csls``, no row further away could still rank among them) or the whole
    catalogue was searched: a query gets fewer than ``k`` rows only when fewer pass.

    Args:
      queries: ``[Q, H]`` embeddings (transformed here).
      k: neighbours per query.
      exclude_rows: per query, a row to leave out (the query's own catalogue entry).
      keep: optional bool mask of the rows that may be neighbours, ``[N]`` (every
        query) or ``[Q, N]`` (one per query).
    """
    q = self.transform(queries)
    n = len(self.paths)
    extra = 1 if exclude_rows is not None else 0
    csls = self.neighbour_similarity is not None
    if keep is not None:
      keep = np.asarray(keep, bool)
      if keep.shape[-1] != n or keep.ndim not in (1, 2) or (
          keep.ndim == 2 and keep.shape[0] != q.shape[0]):
        raise ValueError(f"keep has shape {keep.shape}; expected [{n}] or "
                         f"[{q.shape[0]}, {n}]")
    want = min(k + extra, n)
    if keep is not None or csls:
      want = min(max(WIDEN_FACTOR * k, k + extra), n)
    if want == 0 or k <= 0:
      return [[] for _ in range(q.shape[0])]
    scores, ids = self.index.search(q, want)
    floor = float(self.neighbour_similarity.min()) if csls and n else 0.0
    out = []
    for i in range(q.shape[0]):
      skip = exclude_rows[i] if exclude_rows is not None else None
      mask = None if keep is None else (keep if keep.ndim == 1 else keep[i])
      size = want
      row_scores, row_ids = scores[i], ids[i]
      while True:
        found = self._select(row_ids, row_scores, skip, mask, k)
        if size >= n:
          break
        if not csls and len(found) >= k:
          break
        if csls and len(found) >= k:
          # A row not yet searched has a cosine ≤ the last one searched, so its
          # ranking score is at most that minus half the smallest neighbour cosine.
          last = row_scores[row_ids >= 0]
          bound = float(last[-1]) - 0.5 * floor if last.size else -np.inf
          if found[-1][2] > bound:
            break
        size = min(2 * size, n)
        row_scores, row_ids = (a[0] for a in self.index.search(q[i:i + 1], size))
      out.append([(r, c) for r, c, _ in found])
    return out

  def _select(self, ids: np.ndarray, scores: np.ndarray, skip: Optional[int],
              mask: Optional[np.ndarray], k: int) -> List[Tuple[int, float, float]]:
    """The best ``k`` candidates that pass: ``(row, cosine, ranking score)``."""
    found = [(int(r), float(s)) for r, s in zip(ids, scores)
             if r >= 0 and r != skip and (mask is None or mask[r])]
    if self.neighbour_similarity is None:
      return [(r, s, s) for r, s in found[:k]]
    ranked = [(r, s, s - 0.5 * float(self.neighbour_similarity[r])) for r, s in found]
    ranked.sort(key=lambda t: -t[2])  # stable: ties keep faiss's order
    return ranked[:k]

  def save(self, directory: str) -> None:
    """Writes ``embeddings.faiss``, ``paths.json``, the normalization's statistics
    (``normalization.npz``, when it has any) and ``index.json`` (last)."""
    faiss = faiss_module()
    _makedirs(directory)
    write_atomic(_join(directory, INDEX_FILE), faiss.serialize_index(self.index).tobytes())
    write_atomic(_join(directory, PATHS_FILE), json.dumps(self.paths).encode("utf-8"))
    arrays = {}
    if self.mean is not None:
      arrays["mean"] = self.mean
    if self.neighbour_similarity is not None:
      arrays["neighbour_similarity"] = self.neighbour_similarity
    if arrays:
      buffer = io.BytesIO()
      np.savez(buffer, **arrays)
      write_atomic(_join(directory, NORMALIZATION_FILE), buffer.getvalue())
    write_atomic(_join(directory, INFO_FILE),
                 (json.dumps(self.info, indent=2, sort_keys=True) + "\n").encode("utf-8"))

  @classmethod
  def load(cls, directory: str) -> "SimilarityIndex":
    """Reads an index written by :meth:`save` (also one written before normalizations
    existed: ``raw``)."""
    faiss = faiss_module()
    try:
      info = json.loads(_read_bytes(_join(directory, INFO_FILE)).decode("utf-8"))
    except FileNotFoundError:
      raise FileNotFoundError(f"{directory}: no similarity index ({INFO_FILE}); build "
                              "it with deepbof-similar --build") from None
    paths = json.loads(_read_bytes(_join(directory, PATHS_FILE)).decode("utf-8"))
    data = np.frombuffer(_read_bytes(_join(directory, INDEX_FILE)), np.uint8)
    normalization = info.get("normalization", "raw")
    _check_normalization(normalization)
    arrays: Dict[str, np.ndarray] = {}
    if normalization != "raw":
      with np.load(io.BytesIO(_read_bytes(_join(directory, NORMALIZATION_FILE)))) as f:
        arrays = {name: f[name] for name in f.files}
    out = cls(faiss.deserialize_index(data), paths, info, mean=arrays.get("mean"),
              neighbour_similarity=arrays.get("neighbour_similarity"))
    if normalization.startswith("centred") and out.mean is None or (
        normalization.endswith("csls") and out.neighbour_similarity is None):
      raise ValueError(f"{directory}: {NORMALIZATION_FILE} lacks the statistics of the "
                       f"{normalization!r} normalization; rebuild with deepbof-similar "
                       "--build")
    out.set_ef_search(info.get("ef_search", HNSW_EF_SEARCH))
    return out


# --------------------------------------------------------------------------------------
# Filters: masks of the rows a query may get as neighbours.
# --------------------------------------------------------------------------------------

_WHERE = re.compile(r"^\s*(.+?)\s*(>=|<=|>|<)\s*(\S+)\s*$")
WHERE_OPERATORS = {">": np.greater, ">=": np.greater_equal, "<": np.less,
                   "<=": np.less_equal}


def parse_where(condition: str, tags: Sequence[str]) -> Tuple[str, str, float]:
  """``"rock>0.5"`` → ``("rock", ">", 0.5)``; the tag must be one of ``tags``.

  Raises:
    ValueError: naming the problem (the form, the number, or an unknown tag with the
      list of known ones).
  """
  match = _WHERE.match(condition)
  if not match:
    raise ValueError(f"--where={condition!r}: expected TAG OP NUMBER with OP one of "
                     f"{', '.join(WHERE_OPERATORS)} (e.g. rock>0.5)")
  tag, operator, number = match.groups()
  try:
    value = float(number)
  except ValueError:
    raise ValueError(f"--where={condition!r}: {number!r} is not a number") from None
  if not np.isfinite(value):
    raise ValueError(f"--where={condition!r}: {number!r} is not a finite number")
  if tag not in tags:
    raise ValueError(f"--where={condition!r}: unknown tag {tag!r}; the catalogue's "
                     f"tags are: {', '.join(tags)}")
  return tag, operator, value


def tag_mask(probabilities: np.ndarray, tags: Sequence[str],
             conditions: Sequence[str]) -> np.ndarray:
  """Rows whose stored tag probabilities satisfy every condition (bool ``[N]``).

  Args:
    probabilities: ``[N, n_tags]``, the catalogue's ``probabilities`` column.
    tags: the tag names in column order (``metadata.json``'s ``tags``).
    conditions: ``"TAG>0.5"``-style strings (:func:`parse_where`).
  """
  probabilities = np.asarray(probabilities, np.float32).reshape(-1, len(tags))
  mask = np.ones([probabilities.shape[0]], bool)
  column = {t: i for i, t in enumerate(tags)}
  for condition in conditions:
    tag, operator, value = parse_where(condition, tags)
    mask &= WHERE_OPERATORS[operator](probabilities[:, column[tag]], np.float32(value))
  return mask


def read_track_metadata(path: str) -> Dict[str, Dict[str, str]]:
  """A CSV with a ``path`` column (and e.g. ``album``, ``artist``): ``{path: row}``.

  Paths are matched exactly as the catalogue stores them.

  Raises:
    ValueError: no ``path`` column, or one path listed twice with different values.
  """
  text = _read_bytes(path).decode("utf-8-sig")
  reader = csv.DictReader(io.StringIO(text))
  if not reader.fieldnames or "path" not in reader.fieldnames:
    raise ValueError(f"{path}: a track metadata CSV needs a 'path' column (found "
                     f"{', '.join(reader.fieldnames or []) or 'no header'})")
  out: Dict[str, Dict[str, str]] = {}
  for line, row in enumerate(reader, 2):
    row = {name: (value or "").strip() for name, value in row.items() if name}
    key = row["path"]
    if key in out and out[key] != row:
      raise ValueError(f"{path}:{line}: {key} is listed twice with different values")
    out[key] = row
  out.pop("", None)
  return out


def metadata_columns(track_metadata: Mapping[str, Mapping[str, str]]) -> List[str]:
  """The columns of a :func:`read_track_metadata` table."""
  names: List[str] = []
  for row in track_metadata.values():
    names += [n for n in row if n not in names]
  return names


def same_value_mask(paths: Sequence[str], track_metadata: Mapping[str, Mapping[str, str]],
                    query_path: Optional[str], columns: Sequence[str]) -> np.ndarray:
  """Rows that do not share the query's non-empty value of any of ``columns``.

  A query not in ``track_metadata`` (or with an empty value) leaves out nothing for
  that column; a row not in it is kept.

  Raises:
    ValueError: a column the metadata does not have.
  """
  mask = np.ones([len(paths)], bool)
  for column, value in query_values(track_metadata, query_path, columns):
    mask &= np.array([track_metadata.get(p, {}).get(column, "") != value for p in paths],
                     bool)
  return mask


def query_values(track_metadata: Mapping[str, Mapping[str, str]],
                 query_path: Optional[str], columns: Sequence[str]
                 ) -> List[Tuple[str, str]]:
  """The query's non-empty ``(column, value)`` pairs among ``columns``: what
  ``--exclude_same`` leaves out (none for a query not in ``track_metadata``).

  Raises:
    ValueError: a column the metadata does not have.
  """
  known = metadata_columns(track_metadata)
  for column in columns:
    if column not in known:
      raise ValueError(f"--exclude_same={column}: no such column in the track metadata "
                       f"(columns: {', '.join(known)})")
  query = track_metadata.get(query_path) if query_path is not None else None
  if not query:
    return []
  return [(column, query[column]) for column in columns if query.get(column, "")]


def index_dir(catalog_dir: str) -> str:
  """Where a catalogue's index lives."""
  return _join(catalog_dir, INDEX_DIR)


def build_catalog_index(catalog_dir: str, exact_max_items: int = EXACT_MAX_ITEMS,
                        normalization: str = CATALOG_NORMALIZATION) -> SimilarityIndex:
  """Builds and saves the index of a catalogue (``catalog_dir/index/``)."""
  metadata, columns = load_catalog(catalog_dir, ("path", "embedding"))
  index = SimilarityIndex.build(columns["embedding"], columns["path"],
                                exact_max_items=exact_max_items,
                                normalization=normalization)
  index.info["catalog_created_utc"] = metadata.get("created_utc")
  index.save(index_dir(catalog_dir))
  return index
