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
  catalogues work too.

faiss (``faiss-cpu``) is the library because it ships prebuilt wheels (CPython ABI3,
so 3.10–3.13) that work with NumPy 2, and has the exact and the approximate index
behind one interface (docs/catalog.md says why not hnswlib or ScaNN).
"""

from __future__ import annotations

import io
import json
import os
import posixpath
from typing import Any, Dict, List, Optional, Sequence, Tuple

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


def _faiss():
  """faiss, imported without its loader's INFO lines about CPU-specific builds."""
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


def exact_neighbours(embeddings: np.ndarray, queries: np.ndarray, k: int
                     ) -> Tuple[np.ndarray, np.ndarray]:
  """Brute-force cosine top-k in NumPy (float64): ``(scores [Q, k], ids [Q, k])``.

  The reference of the tests and the benchmark; independent of faiss.
  """
  base = normalized(embeddings).astype(np.float64)
  q = normalized(queries).astype(np.float64)
  scores = q @ base.T
  k = min(k, base.shape[0])
  ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(scores, ids, axis=1), ids


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
    index: the faiss index (over L2-normalised rows).
    paths: the catalogue path of each row.
    info: the description written to ``index.json``.
  """

  def __init__(self, index, paths: Sequence[str], info: Dict[str, Any]):
    self.index = index
    self.paths = list(paths)
    self.info = dict(info)
    self._row = {p: i for i, p in enumerate(self.paths)}
    for i, p in enumerate(self.paths):  # local paths also by their absolute form
      if not _is_url(p):
        self._row.setdefault(os.path.abspath(p), i)

  @property
  def kind(self) -> str:
    return self.info["kind"]

  @classmethod
  def build(cls, embeddings: np.ndarray, paths: Sequence[str],
            exact_max_items: int = EXACT_MAX_ITEMS, m: int = HNSW_M,
            ef_construction: int = HNSW_EF_CONSTRUCTION,
            ef_search: int = HNSW_EF_SEARCH) -> "SimilarityIndex":
    """Indexes ``embeddings [N, H]``: exact up to ``exact_max_items`` rows, else HNSW.

    Args:
      embeddings: the catalogue's embeddings.
      paths: one path per row.
      exact_max_items: the largest catalogue searched exactly.
      m, ef_construction, ef_search: HNSW parameters (above the threshold).
    """
    faiss = _faiss()
    x = normalized(embeddings)
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
    out = cls(index, paths, info)
    out.set_ef_search(ef_search)
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

  def search(self, queries: np.ndarray, k: int,
             exclude_rows: Optional[Sequence[Optional[int]]] = None
             ) -> List[List[Tuple[int, float]]]:
    """The ``k`` most similar rows of each query: ``[(row, cosine), …]`` best first.

    Args:
      queries: ``[Q, H]`` embeddings (normalised here).
      k: neighbours per query.
      exclude_rows: per query, a row to leave out (the query's own catalogue entry).
    """
    q = normalized(queries)
    extra = 1 if exclude_rows is not None else 0
    want = min(k + extra, len(self.paths))
    if want == 0:
      return [[] for _ in range(q.shape[0])]
    scores, ids = self.index.search(q, want)
    out = []
    for i in range(q.shape[0]):
      skip = exclude_rows[i] if exclude_rows is not None else None
      found = [(int(r), float(s)) for r, s in zip(ids[i], scores[i])
               if r >= 0 and r != skip]
      out.append(found[:k])
    return out

  def save(self, directory: str) -> None:
    """Writes ``embeddings.faiss``, ``paths.json`` and ``index.json`` (last)."""
    faiss = _faiss()
    _makedirs(directory)
    write_atomic(_join(directory, INDEX_FILE), faiss.serialize_index(self.index).tobytes())
    write_atomic(_join(directory, PATHS_FILE), json.dumps(self.paths).encode("utf-8"))
    write_atomic(_join(directory, INFO_FILE),
                 (json.dumps(self.info, indent=2, sort_keys=True) + "\n").encode("utf-8"))

  @classmethod
  def load(cls, directory: str) -> "SimilarityIndex":
    """Reads an index written by :meth:`save`."""
    faiss = _faiss()
    try:
      info = json.loads(_read_bytes(_join(directory, INFO_FILE)).decode("utf-8"))
    except FileNotFoundError:
      raise FileNotFoundError(f"{directory}: no similarity index ({INFO_FILE}); build "
                              "it with deepbof-similar --build") from None
    paths = json.loads(_read_bytes(_join(directory, PATHS_FILE)).decode("utf-8"))
    data = np.frombuffer(_read_bytes(_join(directory, INDEX_FILE)), np.uint8)
    out = cls(faiss.deserialize_index(data), paths, info)
    out.set_ef_search(info.get("ef_search", HNSW_EF_SEARCH))
    return out


def index_dir(catalog_dir: str) -> str:
  """Where a catalogue's index lives."""
  return _join(catalog_dir, INDEX_DIR)


def build_catalog_index(catalog_dir: str, exact_max_items: int = EXACT_MAX_ITEMS
                        ) -> SimilarityIndex:
  """Builds and saves the index of a catalogue (``catalog_dir/index/``)."""
  metadata, columns = load_catalog(catalog_dir, ("path", "embedding"))
  index = SimilarityIndex.build(columns["embedding"], columns["path"],
                                exact_max_items=exact_max_items)
  index.info["catalog_created_utc"] = metadata.get("created_utc")
  index.save(index_dir(catalog_dir))
  return index
