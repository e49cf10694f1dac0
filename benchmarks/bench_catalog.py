"""Benchmark: catalogue tagging (deepbof-tag-catalog) and the similarity index.

Targets, on a 2-core machine:

* ``deepbof-tag-catalog`` with 2 workers (``--direct_running_mode=multi_processing``)
  tags >= 1.6x faster than with 1 worker (end to end on the large corpus);
* the peak RSS of a worker does not grow with the number of files (large corpus vs
  small corpus: <= 1.1x);
* the HNSW index (``deepbof_tf.similarity``) at ``--index_items`` (100,000) synthetic
  1024-d embeddings finds >= 0.95 of the exact top 10 (recall@10), and answers a query
  in < 10 ms (one query at a time).

Reported next to them, measured in the same run: ``deepbof-tag`` (``tag_files`` in this
process, TensorFlow on all cores) over the same files, as the reference of the
catalogue's throughput, and the exact (brute-force) query latency as the reference of
the HNSW latency.

The model is bench_serving's synthetic one (the paper's sizes: 1024 hidden units, a
3 × 512 DNN, 50 tags); the corpus is bench_preprocess's (30-s MP3s at 44.1 kHz, a few
distinct clips copied under many names). The embeddings of the index benchmark are
clustered and non-negative like bags-of-features.

Usage::

  .venv/bin/python benchmarks/bench_catalog.py [--clips=100,400] [--seconds=30]
      [--workers=1,2] [--index_items=100000] [--index_dim=1024] [--queries=500]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

import result_line  # noqa: E402  (benchmarks/, the script's own folder)

SAMPLE_RATE = 44100


def run_catalog(manifest: str, export_dir: str, output_dir: str, workers: int
                ) -> Tuple[float, dict, List[float], float]:
  """Wall seconds, metadata, worker peak RSS (MB), runner peak RSS (MB)."""
  from bench_preprocess import PeakRss, _reset_own_peak, _status_kb
  from beam_jobs import catalog_runs
  from beam_jobs import tag_catalog_lib
  config = tag_catalog_lib.TagCatalogConfig(
      model=export_dir, input=manifest, output_dir=output_dir, overwrite=True,
      audio_root=os.path.join(os.path.dirname(manifest), "audio"))
  _reset_own_peak()
  with PeakRss() as rss:
    start = time.perf_counter()
    metadata = catalog_runs.run(config, [f"--direct_num_workers={workers}",
                                         "--direct_running_mode=multi_processing"])
    wall = time.perf_counter() - start
  return wall, metadata, rss.worker_peaks_mb, _status_kb("self", "VmHWM") / 1024


def run_deepbof_tag(audio_dir: str, export_dir: str) -> Tuple[float, int]:
  """Wall seconds of ``deepbof-tag``'s ``tag_files`` over every file (model loaded)."""
  from serving import tag
  tagger = tag.ExportedTagger(export_dir)
  paths = sorted(os.path.join(audio_dir, name) for name in os.listdir(audio_dir))
  tag.tag_files(tagger, paths[:2], progress=False)  # warm-up: tracing
  start = time.perf_counter()
  results = tag.tag_files(tagger, paths, progress=False)
  wall = time.perf_counter() - start
  return wall, sum(r.error is None for r in results)


def catalog_rows(args, root: str) -> List[dict]:
  import bench_preprocess
  import bench_serving
  from serving import export_lib
  sizes = sorted(int(c) for c in args.clips.split(","))
  workers = [int(w) for w in args.workers.split(",")]
  model_dir = bench_serving.synthetic_model_dir(os.path.join(root, "model"), args.pca_dims)
  export_dir = os.path.join(root, "export")
  export_lib.export(model_dir, export_dir)
  manifests = {n: bench_preprocess.make_corpus(os.path.join(root, f"corpus{n}"), n,
                                               args.seconds, SAMPLE_RATE, args.distinct)
               for n in sizes}
  print(f"corpus: {sizes} MP3s of {args.seconds:g} s at {SAMPLE_RATE} Hz; synthetic "
        f"model (PCA {args.pca_dims}, 1024 hidden, DNN 3 x 512, 50 tags)")
  results: Dict[Tuple[int, int], Tuple[float, List[float]]] = {}
  print(f"\n{'workers':>7} {'files':>6} {'wall s':>7} {'files/s':>8} {'x RT':>7} "
        f"{'worker peak RSS MB':>20} {'runner MB':>10} reconciled")
  for w in workers:
    for n in sizes:
      wall, metadata, peaks, runner_mb = run_catalog(
          manifests[n], export_dir, os.path.join(root, f"out_w{w}_n{n}"), w)
      c = metadata["counters"]
      assert c["files_tagged"] == n, c
      results[(w, n)] = (wall, peaks)
      print(f"{w:>7} {n:>6} {wall:>7.1f} {n / wall:>8.2f} {n * args.seconds / wall:>7.1f} "
            f"{', '.join(f'{p:.0f}' for p in peaks):>20} {runner_mb:>10.0f} "
            f"{c['reconciled']}")
      shutil.rmtree(os.path.join(root, f"out_w{w}_n{n}"), ignore_errors=True)
  small, large = sizes[0], sizes[-1]
  tag_wall, tagged = run_deepbof_tag(os.path.join(os.path.dirname(manifests[large]),
                                                  "audio"), export_dir)
  print(f"deepbof-tag, this process, {large} files: {tag_wall:.1f} s, "
        f"{large / tag_wall:.2f} files/s ({tagged} tagged)")
  applies = args.seconds == 30.0 and large >= 100 and small < large
  rows = []
  for w in workers:
    wall = results[(w, large)][0]
    rows.append(result_line.measurement(
        f"deepbof-tag-catalog, {w} worker(s), {large} MP3s of {args.seconds:g} s",
        large / wall, "files/s", reference="deepbof-tag, same files, one process",
        reference_value=large / tag_wall, note=f"{wall:.0f} s wall, "
        f"{large * args.seconds / wall:.0f}x real time"))
  marginal = {}
  for w in workers:
    d_wall = results[(w, large)][0] - results[(w, small)][0]
    marginal[w] = (large - small) / d_wall if d_wall > 0 else float("nan")
    fixed = results[(w, small)][0] - small / marginal[w] if d_wall > 0 else float("nan")
    print(f"  {w} worker(s): marginal {marginal[w]:.2f} files/s (start-up excluded); "
          f"fixed start-up cost ≈ {fixed:.1f} s")
    rows.append(result_line.measurement(
        f"deepbof-tag-catalog, {w} worker(s), marginal (start-up excluded)", marginal[w],
        "files/s", reference="deepbof-tag, same files, one process",
        reference_value=large / tag_wall))
  if 1 in workers and 2 in workers:
    rows.append(result_line.measurement(
        "deepbof-tag-catalog, 2 vs 1 workers, marginal", marginal[2], "files/s",
        reference="1 worker, marginal", reference_value=marginal[1]))
    rows.append(result_line.measurement(
        f"deepbof-tag-catalog, 2 vs 1 workers, {large} files", large / results[(2, large)][0],
        "files/s", reference="1 worker, same files",
        reference_value=large / results[(1, large)][0], target=">= 1.6",
        target_on="ratio", applies=applies))
  for w in workers:
    p_small = max(results[(w, small)][1] or [0])
    p_large = max(results[(w, large)][1] or [0])
    if p_small and small < large:
      rows.append(result_line.measurement(
          f"deepbof-tag-catalog worker peak RSS, {w} worker(s), {large} files", p_large,
          "MB", reference=f"same at {small} files", reference_value=p_small,
          target="<= 1.1", target_on="ratio", applies=applies))
  return rows


def _clustered(rng, n: int, dim: int, clusters: int) -> np.ndarray:
  centres = np.abs(rng.standard_normal([clusters, dim])).astype(np.float32)
  out = np.empty([n, dim], np.float32)
  for start in range(0, n, 10_000):  # in pieces: 100k x 1024 float64 would be 800 MB
    stop = min(start + 10_000, n)
    labels = rng.integers(0, clusters, stop - start)
    out[start:stop] = np.abs(centres[labels] + 0.7 * rng.standard_normal(
        [stop - start, dim]).astype(np.float32))
  return out


def _exact_top_k(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
  """NumPy brute force over normalised rows, in blocks of the base (float32 GEMM)."""
  from deepbof_tf import similarity
  b = similarity.normalized(base)
  q = similarity.normalized(queries)
  best_scores = np.full([q.shape[0], 0], -np.inf, np.float32)
  best_ids = np.zeros([q.shape[0], 0], np.int64)
  for start in range(0, b.shape[0], 20_000):
    scores = q @ b[start:start + 20_000].T
    ids = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
    all_scores = np.concatenate([best_scores, scores], axis=1)
    all_ids = np.concatenate([best_ids, ids], axis=1)
    keep = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
    best_scores = np.take_along_axis(all_scores, keep, axis=1)
    best_ids = np.take_along_axis(all_ids, keep, axis=1)
  return best_ids


def index_rows(args) -> List[dict]:
  from deepbof_tf import similarity
  rng = np.random.default_rng(0)
  n, dim = args.index_items, args.index_dim
  x = _clustered(rng, n, dim, clusters=max(10, n // 200))
  queries = x[rng.choice(n, args.queries, replace=False)] + 0.05
  paths = [str(i) for i in range(n)]
  start = time.perf_counter()
  hnsw = similarity.SimilarityIndex.build(x, paths, exact_max_items=0)
  build = time.perf_counter() - start
  exact = similarity.SimilarityIndex.build(x, paths, exact_max_items=n)
  print(f"\nindex: {n} x {dim} embeddings; HNSW (M {hnsw.info['m']}, efConstruction "
        f"{hnsw.info['ef_construction']}, efSearch {hnsw.info['ef_search']}) built in "
        f"{build:.1f} s")

  def one_at_a_time(index) -> Tuple[float, np.ndarray]:
    index.search(queries[:5], 10)  # warm-up
    ids, start = [], time.perf_counter()
    for q in queries:
      ids.append([r for r, _ in index.search(q[None], 10)[0]])
    return (time.perf_counter() - start) / len(queries), np.array(ids)

  hnsw_latency, hnsw_ids = one_at_a_time(hnsw)
  exact_latency, exact_ids = one_at_a_time(exact)
  reference_ids = _exact_top_k(x, queries, 10)
  recall = similarity.recall_at_k(hnsw_ids, reference_ids)
  flat_recall = similarity.recall_at_k(exact_ids, reference_ids)
  print(f"  recall@10 vs NumPy exact: HNSW {recall:.4f}, faiss flat {flat_recall:.4f}; "
        f"query latency HNSW {hnsw_latency * 1e3:.2f} ms, exact {exact_latency * 1e3:.2f} ms")
  applies = n >= 100_000 and dim == 1024
  return [
      result_line.measurement(
          f"similarity index recall@10, HNSW, {n} x {dim}", recall, "",
          reference="exact search (NumPy), same queries", reference_value=1.0,
          target=">= 0.95", applies=applies,
          note=f"faiss flat index: {flat_recall:.4f}; build {build:.0f} s"),
      result_line.measurement(
          f"similarity query latency, HNSW, {n} x {dim}, one query", hnsw_latency * 1e3,
          "ms", reference="exact (flat) search, same queries",
          reference_value=exact_latency * 1e3, target="< 10", applies=applies),
  ]


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--clips", default="100,400", help="two corpus sizes (files); the "
                      "2-vs-1-worker target is read at the larger one (the job's start-up, "
                      "about 10-16 s, dominates smaller corpora)")
  parser.add_argument("--workers", default="1,2")
  parser.add_argument("--seconds", type=float, default=30.0)
  parser.add_argument("--distinct", type=int, default=4)
  parser.add_argument("--pca_dims", type=int, default=128)
  parser.add_argument("--index_items", type=int, default=100_000)
  parser.add_argument("--index_dim", type=int, default=1024)
  parser.add_argument("--queries", type=int, default=500)
  parser.add_argument("--skip_catalog", action="store_true")
  parser.add_argument("--skip_index", action="store_true")
  args = parser.parse_args()
  logging.getLogger().setLevel(logging.WARNING)
  print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} (ratios matter "
        "on a shared machine)")
  root = tempfile.mkdtemp(prefix="bench_catalog_")
  rows: List[dict] = []
  try:
    if not args.skip_catalog:
      rows += catalog_rows(args, root)
    if not args.skip_index:
      rows += index_rows(args)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  result_line.emit("catalog", rows, config={
      "clips": args.clips, "workers": args.workers, "seconds": args.seconds,
      "pca_dims": args.pca_dims, "index_items": args.index_items,
      "index_dim": args.index_dim, "queries": args.queries})
  return 0


if __name__ == "__main__":
  sys.exit(main())
