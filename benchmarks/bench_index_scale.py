"""Benchmark: a compressed similarity index for a catalogue of a million tracks.

At ``--items`` (1,000,000) synthetic 1024-d embeddings (``embedding_mixture.py``: drawn
from a fit of real bags-of-features, ``centred`` normalization of
``deepbof_tf.similarity``, inner product = cosine), an IVF index with compressed codes
(default: ``IVF1024,PQ512x4fs``: 4-bit fast-scan product quantization of 2-d
sub-vectors, 256 bytes a vector; ``nprobe`` 12 (the index's default), ``R`` 20; see
``docs/experiments/index-study.md`` for the study that chose it) whose ``R × k``
candidates are re-ranked exactly against the float32 vectors, memory-mapped from disk.

Targets (a 2-core machine, at 1,000,000 × 1024; ``--quick`` runs a smaller size, whose
rows report ``n/a``):

* index RAM (the compressed codes and ids, the memory-mapped floats excluded)
  <= 512 bytes per vector (1/8 of float32); the reference is float32 itself (4,096);
* recall@10 after the re-rank >= 0.95 of the exact top 10 (``IndexFlatIP`` over the
  same vectors, ``--queries`` held-out queries drawn from the same mixture);
* queries per second per core, one query at a time (one thread, re-rank included;
  per core = queries / CPU seconds of the process, which a busy machine distorts less
  than the wall clock, reported next to it) >= 800: twice the upper end of the
  250–400 q/s per core at recall 0.9 on 1M × 960 vectors that the comparison point of
  ``docs/experiments/index-study.md`` reports; the reference row is exact flat search
  (one thread, batched) in the same run;
* the same, in batches of ``--batch`` queries;
* adding ``--add`` (10,000) new tracks to the built index: the time, and that every one
  is its own nearest neighbour afterwards (found: share == 1).

Build time (training + adding, with ``--threads`` threads) is reported in CPU seconds
(the cost per core) with the wall time in the note.

The index is the catalogue's own (``deepbof_tf.catalog_index``, the code that
``deepbof-similar`` runs): built with ``build_index`` (``--index`` read as its
``CompressionParams``: ``IVF<nlist>,PQ<m>x4fs`` is the ``ivfpqfs`` kind,
``IVF<nlist>,PQ<m>x<bits>`` ``ivfpq``, ``IVF<nlist>,SQ8`` ``ivfsq8``; the ``raw``
normalization, the vectors being centred already), extended with ``add_parts`` (one
new segment) and queried through ``CatalogIndex.open(...).search``, its re-rank and
Python bookkeeping included; the RAM is the RSS growth of opening the index (the
memory-mapped floats, paths and probabilities untouched). ``--profile`` prints where
one query's time goes (faiss's coarse search and scan, the re-rank, the rest).
``FaissCompressedIndex`` (raw faiss plus a re-rank) remains the adapter that
``index_study.py`` sweeps its parameters with.

The vectors (``items + add`` rows, float32, 4.1 GB at a million) and the exact top 10
are written once to ``--workdir`` (default: a temporary folder, removed at the end;
a named one is kept and reused by later runs with the same sizes and seed).

Usage::

  .venv/bin/python benchmarks/bench_index_scale.py [--items=1000000] [--queries=1000]
      [--index=IVF1024,PQ512x4fs] [--nprobe=12] [--rerank=20] [--batch=1000]
      [--add=10000] [--threads=2] [--workdir=DIR] [--quick]
"""

from __future__ import annotations

import os

# A shared machine: threads that wait sleep instead of spinning (with spinning, two
# OpenMP threads on two busy cores can be 50x slower).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import gc  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Dict, List, Optional, Tuple  # noqa: E402

import numpy as np  # noqa: E402

import embedding_mixture  # noqa: E402  (benchmarks/, the script's own folder)
from deepbof_tf import catalog_index  # noqa: E402
import result_line  # noqa: E402

DIM = 1024
K = 10
QUERY_SEED_OFFSET = 1_000_003   # held-out queries: another sequence of the mixture
ADD_SEED_OFFSET = 2_000_003     # the tracks added after the build
DEFAULT_INDEX = "IVF1024,PQ512x4fs"
DEFAULT_NPROBE = catalog_index.NPROBE
DEFAULT_RERANK = 20
RERANK_BLOCK = 128
# The comparison point: ~250-400 queries/s per core at recall 0.9 on 1M x 960.
ANCHOR_QPS_PER_CORE = 400.0


def _faiss():
  import faiss
  return faiss


def rss_bytes() -> int:
  """This process's resident set size now (bytes)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) * 1024
  return 0


def release_freed_memory() -> None:
  """Collects garbage and hands freed heap pages back to the system (glibc's
  ``malloc_trim``), so that an RSS difference measures what was allocated since."""
  gc.collect()
  try:
    import ctypes
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def anon_rss_bytes() -> int:
  """This process's anonymous resident memory now (``RssAnon``: the heap, not the
  file-backed pages of memory-mapped files, which the kernel can drop)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("RssAnon:"):
        return int(line.split()[1]) * 1024
  return 0


class AnonPeak:
  """The largest :func:`anon_rss_bytes` seen while the ``with`` block runs (a thread
  reads it every ``interval`` seconds; used around the build and the add only, not
  around timed queries)."""

  def __init__(self, interval: float = 0.2):
    self.interval, self.peak = interval, anon_rss_bytes()
    self._stop = None

  def __enter__(self) -> "AnonPeak":
    import threading
    self._stop = threading.Event()

    def watch():
      while not self._stop.wait(self.interval):
        self.peak = max(self.peak, anon_rss_bytes())

    self._thread = threading.Thread(target=watch, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, anon_rss_bytes())


def peak_rss_bytes() -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  return 0


# --------------------------------------------------------------------------------------
# The vectors: synthetic, centred, unit norm, float32 on disk.
# --------------------------------------------------------------------------------------


def centred(rows: np.ndarray, mean: np.ndarray) -> np.ndarray:
  """``normalized(normalized(rows) - mean)`` in float32 (``deepbof_tf.similarity``'s
  ``centred`` normalization), in place where it can."""
  rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
  rows -= mean
  rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
  return rows.astype(np.float32, copy=False)


def make_vectors(path: str, params: Dict[str, np.ndarray], items: int, extra: int,
                 seed: int) -> Tuple[np.memmap, np.ndarray]:
  """Writes ``items`` base rows then ``extra`` rows (the tracks added later), centred
  on the base rows' mean unit vector, to a float32 ``.npy`` at ``path``.

  Returns:
    The memory-mapped ``[items + extra, H]`` array and the centring vector.
  """
  mean_path = path + ".mean.npy"
  if os.path.exists(path) and os.path.exists(mean_path):
    vectors = np.load(path, mmap_mode="r")
    if vectors.shape == (items + extra, embedding_mixture.dim(params)):
      return vectors, np.load(mean_path)
  d = embedding_mixture.dim(params)
  out = np.lib.format.open_memmap(path + ".part", "w+", np.float32, (items + extra, d))
  total = np.zeros(d, np.float64)
  for start, rows in embedding_mixture.chunks(params, items, seed):
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    total += rows.sum(axis=0, dtype=np.float64)
    out[start:start + len(rows)] = rows
  mean = (total / items).astype(np.float32)
  for start in range(0, items, embedding_mixture.CHUNK):
    stop = min(start + embedding_mixture.CHUNK, items)
    out[start:stop] = centred(np.array(out[start:stop]), mean)
  out[items:] = centred(embedding_mixture.draw(params, extra, seed + ADD_SEED_OFFSET), mean)
  out.flush()
  del out
  os.replace(path + ".part", path)
  np.save(mean_path, mean)
  return np.load(path, mmap_mode="r"), mean


def make_queries(params: Dict[str, np.ndarray], count: int, seed: int, mean: np.ndarray
                 ) -> np.ndarray:
  """Held-out queries: another sequence of the same mixture, the base's centring."""
  return centred(embedding_mixture.draw(params, count, seed + QUERY_SEED_OFFSET), mean)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, rows: int,
                block: int = 131_072) -> Tuple[np.ndarray, np.ndarray]:
  """Exact inner-product top ``k`` of ``queries`` over ``vectors[:rows]`` (faiss
  ``IndexFlatIP`` one block of the memory-mapped rows at a time).

  Returns:
    ``(scores, ids)``, ``[Q, k]`` each, best first.
  """
  faiss = _faiss()
  best_s = np.full([len(queries), 0], -np.inf, np.float32)
  best_i = np.zeros([len(queries), 0], np.int64)
  for start in range(0, rows, block):
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors[start:min(start + block, rows)]))
    s, i = flat.search(queries, k)
    del flat
    all_s = np.concatenate([best_s, s], axis=1)
    all_i = np.concatenate([best_i, i + start], axis=1)
    keep = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
    best_s = np.take_along_axis(all_s, keep, axis=1)
    best_i = np.take_along_axis(all_i, keep, axis=1)
  return best_s, best_i


def ground_truth(workdir: str, vectors: np.ndarray, queries: np.ndarray, items: int,
                 tag: str) -> np.ndarray:
  """:func:`exact_top_k` ids of the queries over the base rows, cached in ``workdir``."""
  path = os.path.join(workdir, f"truth_{tag}_q{len(queries)}.npy")
  if os.path.exists(path):
    return np.load(path)
  _, ids = exact_top_k(vectors, queries, K, items)
  np.save(path, ids)
  return ids


def recall(found: np.ndarray, truth: np.ndarray) -> float:
  """recall@k: the share of each exact top k found, averaged over the queries."""
  k = truth.shape[1]
  return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


def flat_qps(vectors: np.ndarray, queries: np.ndarray, rows: int, block: int = 131_072
             ) -> Tuple[float, float]:
  """Exact search with one thread, the queries in one batch, over ``vectors[:rows]``
  as the float32 vectors in RAM would be (the blocks are read before the clocks run):
  queries per CPU second (per core) and per wall second (the reference of the q/s
  rows)."""
  faiss = _faiss()
  cpu = wall = 0.0
  for start in range(0, rows, block):
    base = np.ascontiguousarray(vectors[start:min(start + block, rows)])
    c, w = time.process_time(), time.perf_counter()
    faiss.knn(queries, base, K, faiss.METRIC_INNER_PRODUCT)
    cpu += time.process_time() - c
    wall += time.perf_counter() - w
  return len(queries) / cpu, len(queries) / wall


# --------------------------------------------------------------------------------------
# The adapter: the only code that knows which index implementation runs.
# --------------------------------------------------------------------------------------


def coarse_centroids(sample: np.ndarray, nlist: int, seed: int = 0) -> np.ndarray:
  """The IVF lists' centroids: k-means with Euclidean assignment (10 iterations), as
  ``index_study.py`` trained them, so that the benchmark measures the study's index.

  (faiss's own IVF training under the inner-product metric assigns by inner product;
  in one run at 1M it gave recall@10 0.965 and 485 single queries/s per core against
  0.958 and 397-477 with these lists: no clear difference.)
  """
  faiss = _faiss()
  kmeans = faiss.Kmeans(sample.shape[1], nlist, niter=10, seed=seed + 1, verbose=False)
  kmeans.train(np.ascontiguousarray(sample, np.float32))
  return kmeans.centroids.copy()


class FaissCompressedIndex:
  """ADAPTER (replace at merge by ``deepbof_tf.catalog_index``): a faiss IVF index of
  compressed codes plus an exact re-rank of its ``rerank × k`` best candidates against
  the float32 vectors, memory-mapped.

  What the benchmark uses, and what the catalogue index must offer in its place:
  ``train(sample, seed)``, ``add(start, stop)`` (rows of the float32 file, ids = row
  numbers, also after the build), ``set_search(nprobe, rerank)``,
  ``search(queries, k) -> (scores, ids)`` (re-ranked), ``serialized_bytes()`` (the
  index in RAM, floats excluded), ``save(path)`` / ``load(path)``, and ``vectors``.

  Args:
    factory: a faiss ``index_factory`` string (``"IVF1024,PQ512x4fs"``), inner product.
    vectors: the float32 ``[rows, H]`` vectors (a ``np.memmap``); row ``i`` is id ``i``.
    quantizer_centroids: trained IVF centroids to reuse (``[nlist, H]``), or None.
  """

  def __init__(self, factory: str, vectors: np.ndarray,
               quantizer_centroids: Optional[np.ndarray] = None):
    faiss = _faiss()
    self.factory = factory
    self.vectors = vectors
    self.index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    self.nprobe = DEFAULT_NPROBE
    self.rerank = DEFAULT_RERANK
    if quantizer_centroids is not None:
      ivf = faiss.extract_index_ivf(self.index)
      ivf.quantizer.add(np.ascontiguousarray(quantizer_centroids, np.float32))
      ivf.quantizer.is_trained = True

  def train(self, sample: np.ndarray, seed: int = 0) -> None:
    """Trains the coarse quantizer (unless given) and the codes on ``sample``."""
    sample = np.ascontiguousarray(sample, np.float32)
    ivf = _faiss().extract_index_ivf(self.index)
    if ivf.quantizer.ntotal == 0:
      ivf.quantizer.add(coarse_centroids(sample, ivf.nlist, seed))
      ivf.quantizer.is_trained = True
    self.index.train(sample)

  def add(self, start: int, stop: int, chunk: int = 65_536) -> None:
    """Adds rows ``start:stop`` of the vectors (ids ``start..stop-1``: the index must
    hold ``start`` rows already)."""
    assert self.index.ntotal == start, (self.index.ntotal, start)
    for s in range(start, stop, chunk):
      self.index.add(np.ascontiguousarray(self.vectors[s:min(s + chunk, stop)]))

  def set_search(self, nprobe: int, rerank: int) -> None:
    self.nprobe, self.rerank = nprobe, rerank
    _faiss().extract_index_ivf(self.index).nprobe = nprobe

  def candidates(self, queries: np.ndarray, k: int) -> np.ndarray:
    """The compressed index's ``rerank × k`` best ids per query (-1: none)."""
    return self.index.search(queries, self.rerank * k)[1]

  def rerank_exact(self, queries: np.ndarray, ids: np.ndarray, k: int
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of ``ids`` by exact inner product with the float32 vectors."""
    out_s = np.full([len(queries), k], -np.inf, np.float32)
    out_i = np.full([len(queries), k], -1, np.int64)
    for row, (q, cand) in enumerate(zip(queries, ids)):
      cand = np.unique(cand[cand >= 0])  # sorted: the reads go forward in the file
      rows = self.vectors[cand]
      # Matrix-vector products of <= RERANK_BLOCK rows: above that OpenBLAS wakes its
      # threads (one query costs several times more CPU on a busy machine).
      scores = np.concatenate([rows[s:s + RERANK_BLOCK] @ q
                               for s in range(0, len(rows), RERANK_BLOCK)] or
                              [np.zeros(0, np.float32)])
      top = np.argsort(-scores, kind="stable")[:k]
      out_s[row, :len(top)], out_i[row, :len(top)] = scores[top], cand[top]
    return out_s, out_i

  def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)`` of the best ``k`` per query, re-ranked exactly."""
    queries = np.ascontiguousarray(queries, np.float32).reshape(-1, self.vectors.shape[1])
    return self.rerank_exact(queries, self.candidates(queries, k), k)

  def serialized_bytes(self) -> int:
    return int(_faiss().serialize_index(self.index).nbytes)

  def save(self, path: str) -> None:
    _faiss().write_index(self.index, path)

  def load(self, path: str) -> None:
    self.index = _faiss().read_index(path)
    self.set_search(self.nprobe, self.rerank)


def make_index(factory: str, vectors: np.ndarray,
               quantizer_centroids: Optional[np.ndarray] = None) -> FaissCompressedIndex:
  """The one place that chooses the implementation (see :class:`FaissCompressedIndex`)."""
  return FaissCompressedIndex(factory, vectors, quantizer_centroids)


# --------------------------------------------------------------------------------------
# Measuring one index.
# --------------------------------------------------------------------------------------


def train_sample(vectors: np.ndarray, items: int, nlist: int, seed: int) -> np.ndarray:
  """Rows for training: 64 per IVF list, at least 65,536 (all of a smaller base)."""
  count = min(items, max(65_536, 64 * nlist))
  rows = np.sort(np.random.default_rng(seed).choice(items, count, replace=False))
  return np.ascontiguousarray(vectors[rows])


def nlist_of(factory: str) -> int:
  for part in factory.split(","):
    if part.startswith("IVF"):
      return int(part[3:].split("_")[0])
  raise ValueError(f"{factory}: no IVF part")


def timed_single(index: FaissCompressedIndex, queries: np.ndarray, k: int
                 ) -> Tuple[float, float, np.ndarray]:
  """Queries one at a time (search + re-rank): CPU seconds per query (all the
  process's threads: per core), wall seconds per query, ids."""
  index.search(queries[:5], k)  # warm-up
  ids = np.empty([len(queries), k], np.int64)
  cpu, wall = time.process_time(), time.perf_counter()
  for i in range(len(queries)):
    ids[i] = index.search(queries[i:i + 1], k)[1][0]
  return ((time.process_time() - cpu) / len(queries),
          (time.perf_counter() - wall) / len(queries), ids)


def timed_batched(index: FaissCompressedIndex, queries: np.ndarray, k: int, batch: int
                  ) -> Tuple[float, float, np.ndarray]:
  """Queries in batches of ``batch``: CPU and wall seconds per query, ids."""
  ids = np.empty([len(queries), k], np.int64)
  cpu, wall = time.process_time(), time.perf_counter()
  for s in range(0, len(queries), batch):
    ids[s:s + batch] = index.search(queries[s:s + batch], k)[1]
  return ((time.process_time() - cpu) / len(queries),
          (time.perf_counter() - wall) / len(queries), ids)


def build_and_measure(factory: str, vectors: np.ndarray, items: int, threads: int,
                      workdir: str, seed: int,
                      quantizer_centroids: Optional[np.ndarray] = None) -> Dict:
  """Trains and fills one index over ``vectors[:items]``; its build time and RAM.

  Returns:
    ``{"index", "train_s", "add_s", "train_cpu", "add_cpu", "bytes", "rss_delta"}``
    (wall and CPU seconds; the index reloaded from its serialized file, so
    ``rss_delta`` is the index alone).
  """
  faiss = _faiss()
  faiss.omp_set_num_threads(threads)
  index = make_index(factory, vectors, quantizer_centroids)
  sample = train_sample(vectors, items, nlist_of(factory), seed)
  start, cpu = time.perf_counter(), time.process_time()
  index.train(sample, seed)
  train_s, train_cpu = time.perf_counter() - start, time.process_time() - cpu
  del sample
  start, cpu = time.perf_counter(), time.process_time()
  index.add(0, items)
  add_s, add_cpu = time.perf_counter() - start, time.process_time() - cpu
  nbytes = index.serialized_bytes()
  path = os.path.join(workdir, "index.faiss")
  index.save(path)
  del index
  release_freed_memory()
  before = rss_bytes()
  index = make_index(factory, vectors)
  index.load(path)
  rss_delta = rss_bytes() - before
  os.remove(path)
  return {"index": index, "train_s": train_s, "add_s": add_s, "train_cpu": train_cpu,
          "add_cpu": add_cpu, "bytes": nbytes, "rss_delta": rss_delta}


def measure_add(index: FaissCompressedIndex, items: int, extra: int, threads: int
                ) -> Tuple[float, float, float]:
  """Adds rows ``items:items+extra``; seconds, the share of them that are their own
  nearest neighbour afterwards, and the smallest cosine of the top 1 returned
  instead (a miss next to a near-duplicate: the compressed scores of a cluster of
  nearly equal vectors cannot order it, and ``R x k`` candidates fill with the others)."""
  _faiss().omp_set_num_threads(threads)
  start = time.perf_counter()
  index.add(items, items + extra)
  seconds = time.perf_counter() - start
  _faiss().omp_set_num_threads(1)
  new = np.ascontiguousarray(index.vectors[items:items + extra])
  scores, ids = index.search(new, K)
  hit = ids[:, 0] == np.arange(items, items + extra)
  closest_instead = float(scores[~hit, 0].min()) if (~hit).any() else float("nan")
  return seconds, float(np.mean(hit)), closest_instead


# --------------------------------------------------------------------------------------
# The catalogue's index (deepbof_tf.catalog_index): what the benchmark measures.
# --------------------------------------------------------------------------------------


def compression_params(factory: str) -> catalog_index.CompressionParams:
  """``--index`` as the catalogue index's :class:`CompressionParams`."""
  nlist = nlist_of(factory)
  code = factory.split(",")[1]
  if code == "SQ8":
    return catalog_index.CompressionParams(kind=catalog_index.IVFSQ8, nlist=nlist)
  if not code.startswith("PQ"):
    raise ValueError(f"{factory}: neither PQ nor SQ8")
  fast = code.endswith("fs")
  m, _, bits = code[2:].rstrip("fs").partition("x")
  return catalog_index.CompressionParams(
      kind=catalog_index.IVFPQFS if fast else catalog_index.IVFPQ, nlist=nlist,
      pq_m=int(m), pq_nbits=int(bits or (4 if fast else 8)))


def row_parts(vectors: np.ndarray, start: int, stop: int, prefix: str,
              rows_per_part: int = 100_000) -> List[catalog_index.PartRows]:
  """Rows ``start:stop`` of the vectors as catalogue parts (paths ``PREFIX/ROW``; the
  embeddings memory-mapped slices, read when the index is written)."""
  parts = []
  for s in range(start, stop, rows_per_part):
    e = min(s + rows_per_part, stop)
    parts.append(catalog_index.PartRows(f"{prefix}{s:08d}",
                                        [f"{prefix}/{i}" for i in range(s, e)],
                                        vectors[s:e]))
  return parts


class CatalogSearch:
  """Queries one opened :class:`deepbof_tf.catalog_index.CatalogIndex`:
  ``search(queries, k) -> (scores, ids)`` as arrays (row ``i`` of the vectors is row
  ``i`` of the index)."""

  def __init__(self, directory: str, nprobe: int, rerank: int):
    self.index = catalog_index.CatalogIndex.open(directory)
    self.nprobe, self.rerank = nprobe, rerank

  def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    found = self.index.search(queries, k, nprobe=self.nprobe, refine_factor=self.rerank,
                              transformed=True)
    scores = np.full([len(found), k], -np.inf, np.float32)
    ids = np.full([len(found), k], -1, np.int64)
    for i, f in enumerate(found):
      ids[i, :len(f)] = [r for r, _ in f]
      scores[i, :len(f)] = [c for _, c in f]
    return scores, ids


def build_catalog(factory: str, vectors: np.ndarray, items: int, threads: int,
                  directory: str) -> Dict:
  """Builds the catalogue index over ``vectors[:items]``; its build time and RAM.

  Returns:
    ``{"seconds", "cpu", "bytes", "rss_delta", "kind"}``: wall and CPU seconds of
    ``build_index`` (normalization, training, adding, writing the segment), the size of
    the segment's faiss file, the RSS growth of opening the index.
  """
  faiss = _faiss()
  faiss.omp_set_num_threads(threads)
  start, cpu = time.perf_counter(), time.process_time()
  report = catalog_index.build_index(directory, row_parts(vectors, 0, items, "base"),
                                     dim=vectors.shape[1], normalization="raw",
                                     exact_max_items=0, params=compression_params(factory))
  seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
  manifest = catalog_index.read_manifest(directory)
  nbytes = os.path.getsize(os.path.join(directory, catalog_index.SEGMENTS_DIR,
                                        manifest["segments"][0]["name"],
                                        catalog_index.FAISS_FILE))
  release_freed_memory()
  before = rss_bytes()
  opened = catalog_index.CatalogIndex.open(directory)
  release_freed_memory()
  rss_delta = rss_bytes() - before
  del opened
  release_freed_memory()
  return {"seconds": seconds, "cpu": cpu, "bytes": nbytes, "rss_delta": rss_delta,
          "kind": report.kind}


def add_catalog(directory: str, vectors: np.ndarray, items: int, extra: int,
                threads: int, nprobe: int, rerank: int) -> Tuple[float, float, float]:
  """Adds rows ``items:items+extra`` as one new segment (``add_parts``); seconds, the
  share of them that are their own nearest neighbour afterwards, and the smallest
  cosine of the top 1 returned instead (see :func:`measure_add`)."""
  _faiss().omp_set_num_threads(threads)
  start = time.perf_counter()
  catalog_index.add_parts(directory, row_parts(vectors, items, items + extra, "added"))
  seconds = time.perf_counter() - start
  _faiss().omp_set_num_threads(1)
  index = CatalogSearch(directory, nprobe, rerank)
  new = np.ascontiguousarray(vectors[items:items + extra])
  scores, ids = index.search(new, K)
  hit = ids[:, 0] == np.arange(items, items + extra)
  closest_instead = float(scores[~hit, 0].min()) if (~hit).any() else float("nan")
  return seconds, float(np.mean(hit)), closest_instead


def profile_single(index: CatalogSearch, queries: np.ndarray, k: int) -> str:
  """Where one query's time goes: the faiss search alone (coarse quantizer and the
  scan of ``nprobe`` lists, ``R × k`` candidates), the re-rank alone (reading the
  candidates' floats and their exact cosines), and the rest of ``CatalogIndex.search``
  (transform, grouping, sorting, the result lists). Milliseconds of CPU per query."""
  faiss = _faiss()
  segment = index.index.segments[0]
  params = faiss.SearchParametersIVF(nprobe=index.nprobe)
  want = index.rerank * k
  n = len(queries)
  cands = []
  cpu = time.process_time()
  for i in range(n):
    cands.append(segment.index.search(queries[i:i + 1], want, params=params)[1][0])
  t_faiss = (time.process_time() - cpu) / n
  cpu = time.process_time()
  for i in range(n):
    local = catalog_index._sorted_ids(cands[i])
    catalog_index.exact_cosines(segment.vectors, local, queries[i])
  t_rerank = (time.process_time() - cpu) / n
  cpu = time.process_time()
  for i in range(n):
    index.search(queries[i:i + 1], k)
  t_total = (time.process_time() - cpu) / n
  return (f"one query, CPU ms: total {1e3 * t_total:.3f} = faiss (coarse + scan) "
          f"{1e3 * t_faiss:.3f} + re-rank {1e3 * t_rerank:.3f} + the rest "
          f"{1e3 * (t_total - t_faiss - t_rerank):.3f}")


def lscpu_model() -> str:
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import run_all
  info = run_all.machine_info()
  return f"{info['cpu']} ({info['simd']}), {info['cores']} cores"


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--items", type=int, default=1_000_000)
  parser.add_argument("--queries", type=int, default=1000)
  parser.add_argument("--single_queries", type=int, default=500,
                      help="of the queries, how many are timed one at a time")
  parser.add_argument("--index", default=DEFAULT_INDEX, help="faiss index_factory string")
  parser.add_argument("--nprobe", type=int, default=DEFAULT_NPROBE)
  parser.add_argument("--rerank", type=int, default=DEFAULT_RERANK,
                      help="R: the compressed index proposes R x k candidates")
  parser.add_argument("--batch", type=int, default=1000)
  parser.add_argument("--add", type=int, default=10_000)
  parser.add_argument("--threads", type=int, default=2, help="for training and adding")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--params", default=embedding_mixture.DEFAULT_PARAMS)
  parser.add_argument("--workdir", default="", help="keep vectors and ground truth here")
  parser.add_argument("--profile", action="store_true",
                      help="print one query's CPU time: faiss, re-rank, the rest")
  parser.add_argument("--quick", action="store_true",
                      help="50,000 items, IVF256, 300 queries (targets: n/a)")
  args = parser.parse_args()
  if args.quick:
    args.items, args.queries, args.single_queries, args.add = 50_000, 300, 200, 2000
    args.batch = min(args.batch, 300)
    if args.index == DEFAULT_INDEX:
      args.index = "IVF256,PQ512x4fs"
      args.nprobe = min(args.nprobe, 16)
  faiss = _faiss()
  print(f"{lscpu_model()}; faiss {faiss.__version__}; load average "
        f"{os.getloadavg()[0]:.2f}")
  workdir = args.workdir or tempfile.mkdtemp(prefix="bench_index_scale_")
  os.makedirs(workdir, exist_ok=True)
  try:
    params = embedding_mixture.load(args.params)
    tag = f"n{args.items}_a{args.add}_s{args.seed}"
    faiss.omp_set_num_threads(args.threads)
    start = time.perf_counter()
    vectors, mean = make_vectors(os.path.join(workdir, f"vectors_{tag}.npy"), params,
                                 args.items, args.add, args.seed)
    queries = make_queries(params, args.queries, args.seed, mean)
    truth = ground_truth(workdir, vectors, queries, args.items, tag)
    print(f"{args.items:,} x {vectors.shape[1]} vectors + {args.add:,} to add, "
          f"{args.queries} queries, exact top {K}: {time.perf_counter() - start:.0f} s")
    faiss.omp_set_num_threads(1)
    flat_batch = min(len(queries), 200)
    flat, flat_wall = flat_qps(vectors, queries[:flat_batch], args.items)
    print(f"exact flat search, 1 thread, batch of {flat_batch}: {flat:.1f} q/s per core "
          f"({flat_wall:.1f} q/s wall)")

    index_dir = os.path.join(workdir, f"catalog_index_{tag}")
    shutil.rmtree(index_dir, ignore_errors=True)
    with AnonPeak() as anon_build:
      built = build_catalog(args.index, vectors, args.items, args.threads, index_dir)
    build_cpu = built["cpu"]
    per_vector = built["rss_delta"] / args.items
    print(f"catalog_index {built['kind']} ({args.index}): build {built['seconds']:.1f} s "
          f"({args.threads} threads, {build_cpu:.0f} CPU s); faiss file "
          f"{built['bytes'] / 1e6:.1f} MB ({built['bytes'] / args.items:.1f} B/vector), "
          f"RSS +{built['rss_delta'] / 1e6:.1f} MB opened ({per_vector:.1f} B/vector)")
    faiss.omp_set_num_threads(1)
    index = CatalogSearch(index_dir, args.nprobe, args.rerank)
    t_batch, w_batch, ids_batch = timed_batched(index, queries, K, args.batch)
    t_single, w_single, ids_single = timed_single(index, queries[:args.single_queries], K)
    r = recall(ids_batch, truth)
    r_single = recall(ids_single, truth[:args.single_queries])
    print(f"nprobe {args.nprobe}, re-rank {args.rerank} x {K}: recall@10 {r:.4f} "
          f"(single: {r_single:.4f}); 1 thread, per core (wall): one at a time "
          f"{1 / t_single:.0f} ({1 / w_single:.0f}) q/s, batches of {args.batch} "
          f"{1 / t_batch:.0f} ({1 / w_batch:.0f}) q/s")
    if args.profile:
      print(profile_single(index, queries[:args.single_queries], K))
    del index
    with AnonPeak() as anon_add:
      add_s, found, instead = add_catalog(index_dir, vectors, args.items, args.add,
                                          args.threads, args.nprobe, args.rerank)
    anon_peak = max(anon_build.peak, anon_add.peak)
    print(f"added {args.add:,} in {add_s:.2f} s; {found:.4f} of them their own top 1"
          + (f" (the others: a near-duplicate, cosine >= {instead:.4f})" if found < 1
             else ""))
    peak = peak_rss_bytes()
    print(f"peak RSS {peak / 1e9:.2f} GB (memory-mapped pages included); anonymous "
          f"(heap) at most {anon_peak / 1e9:.2f} GB during the build and the add")
  finally:
    if not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)

  applies = args.items >= 1_000_000 and vectors.shape[1] == DIM and not args.quick
  size = f"{args.items:,} x {vectors.shape[1]}"
  search = f"{args.index}, nprobe {args.nprobe}, re-rank {args.rerank} x {K}"
  rows = [
      result_line.measurement(
          f"index RAM per vector, {args.index}, {size}", per_vector, "B",
          reference="float32 vector", reference_value=4.0 * vectors.shape[1],
          target="<= 0.125", target_on="ratio", applies=applies,
          note=f"RSS growth of CatalogIndex.open, {built['rss_delta'] / 1e6:.0f} MB "
          f"(faiss file {built['bytes'] / args.items:.0f} B/vector); floats memory-"
          "mapped from disk"),
      result_line.measurement(
          f"index build (catalog_index.build_index), {args.index}, {size}", build_cpu,
          "CPU s", note=f"{built['seconds']:.0f} s wall on {args.threads} threads: "
          "training, adding, writing the segment"),
      result_line.measurement(
          f"recall@10 after re-rank, {search}, {size}", r, "",
          reference="exact search (IndexFlatIP)", reference_value=1.0, target=">= 0.95",
          applies=applies, note=f"{args.queries} held-out queries"),
      result_line.measurement(
          f"queries/s per core, one at a time, {search}, {size}", 1 / t_single, "q/s",
          reference="exact flat search, 1 thread, batched", reference_value=flat,
          target=f">= {2 * ANCHOR_QPS_PER_CORE:g}", applies=applies,
          note=f"per CPU second, re-rank included; {1 / w_single:.0f} q/s wall; comparison "
          f"point ~{ANCHOR_QPS_PER_CORE:g} q/s per core at recall 0.9"),
      result_line.measurement(
          f"queries/s per core, batches of {args.batch}, {search}, {size}", 1 / t_batch,
          "q/s", reference="exact flat search, 1 thread, batched", reference_value=flat,
          target=f">= {2 * ANCHOR_QPS_PER_CORE:g}", applies=applies,
          note=f"per CPU second; {1 / w_batch:.0f} q/s wall"),
      result_line.measurement(
          f"adding {args.add:,} tracks to the built index", add_s, "s",
          note=f"catalog_index.add_parts, one new segment, {args.threads} threads; "
          f"{args.add / add_s:,.0f} tracks/s"),
      result_line.measurement(
          f"added tracks found (own top 1), {args.add:,}", found, "", target="== 1",
          target_on="value", note="" if found == 1 else f"the misses' top 1: a "
          f"near-duplicate (cosine >= {instead:.3f})"),
      result_line.measurement("peak RSS of the benchmark", peak / 1e9, "GB",
                              note="the memory-mapped floats count when touched (the "
                              "source vectors and the index's copy of them)"),
      result_line.measurement("peak anonymous RSS, build and add", anon_peak / 1e9,
                              "GB", note="RssAnon sampled every 0.2 s: the heap, "
                              "without the memory-mapped files"),
  ]
  result_line.emit("index_scale", rows, config={
      "items": args.items, "queries": args.queries, "index": args.index,
      "nprobe": args.nprobe, "rerank": args.rerank, "batch": args.batch, "add": args.add,
      "threads": args.threads, "seed": args.seed, "quick": args.quick})
  return 0


if __name__ == "__main__":
  sys.exit(main())
