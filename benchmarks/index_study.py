"""The faiss parameter study behind ``bench_index_scale.py``'s default index.

Over ``--items`` synthetic embeddings (``embedding_mixture.py``, ``centred``
normalization, inner product), one IVF coarse quantizer (``--nlist`` lists, k-means on a
sample) is trained once and shared by every candidate encoding (``--configs``); each
candidate is trained, filled and measured: build time (training + adding, wall and
process CPU seconds with ``--threads`` threads), serialized bytes and RSS of the index
reloaded alone, and, for every ``nprobe`` × ``R`` (``--nprobes``, ``--reranks``),
recall@10 after the exact re-rank of the ``R × 10`` candidates against the memory-mapped
float32 vectors, queries per second per core one at a time and in one batch (one
thread; per core = queries / CPU seconds of the process), and adding ``--add`` new
vectors. Results go to ``--output`` (JSON lines, one per config × nprobe × R) as they
come; ``--markdown`` prints the table of a results file (``docs/experiments/index-study.md``
holds the study's).

Not a ``bench_*`` script: ``make bench`` does not run it (about an hour at a million
items on two cores).

Usage::

  PYTHONPATH=. .venv/bin/python benchmarks/index_study.py --workdir=/tmp/index_study \\
      [--items=1000000] [--nlist=1024] [--configs="PQ256x4fs;OPQ256,IVF1024,PQ256x4fs"] \\
      [--nprobes=16,32,64] [--reranks=10,20,50] [--output=study.jsonl]
  PYTHONPATH=. .venv/bin/python benchmarks/index_study.py --markdown=study.jsonl
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a shared machine: no spinning

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Dict, List  # noqa: E402

import numpy as np  # noqa: E402

import bench_index_scale as bench  # noqa: E402
import embedding_mixture  # noqa: E402


def coarse_centroids(vectors: np.ndarray, items: int, nlist: int, seed: int
                     ) -> Dict:
  """k-means centroids of the IVF lists (the faiss default: 10 iterations)."""
  sample = bench.train_sample(vectors, items, nlist, seed)
  wall, cpu = time.perf_counter(), time.process_time()
  centroids = bench.coarse_centroids(sample, nlist, seed)
  return {"centroids": centroids, "wall": time.perf_counter() - wall,
          "cpu": time.process_time() - cpu}


def search_grid(index, queries, truth, nprobes, reranks, single: int, batch: int
                ) -> List[Dict]:
  faiss = bench._faiss()
  faiss.omp_set_num_threads(1)
  rows = []
  for nprobe in nprobes:
    for rerank in reranks:
      index.set_search(nprobe, rerank)
      index.search(queries[:5], bench.K)
      cpu, wall = time.process_time(), time.perf_counter()
      ids = np.concatenate([index.search(queries[s:s + batch], bench.K)[1]
                            for s in range(0, len(queries), batch)])
      batch_cpu, batch_wall = time.process_time() - cpu, time.perf_counter() - wall
      cpu, wall = time.process_time(), time.perf_counter()
      for i in range(single):
        index.search(queries[i:i + 1], bench.K)
      single_cpu, single_wall = time.process_time() - cpu, time.perf_counter() - wall
      row = {"nprobe": nprobe, "rerank": rerank, "recall": bench.recall(ids, truth),
             "qps_batch_cpu": len(queries) / batch_cpu,
             "qps_batch_wall": len(queries) / batch_wall,
             "qps_single_cpu": single / single_cpu, "qps_single_wall": single / single_wall}
      print(f"    nprobe {nprobe:>3} R {rerank:>3}: recall@10 {row['recall']:.4f}  "
            f"single {row['qps_single_cpu']:7.0f} q/s/core ({row['qps_single_wall']:.0f} "
            f"wall)  batch {row['qps_batch_cpu']:7.0f} q/s/core "
            f"({row['qps_batch_wall']:.0f} wall)", flush=True)
      rows.append(row)
  return rows


def run(args) -> None:
  faiss = bench._faiss()
  faiss.omp_set_num_threads(args.threads)
  os.makedirs(args.workdir, exist_ok=True)
  params = embedding_mixture.load(args.params)
  tag = f"n{args.items}_a{args.add}_s{args.seed}"
  start = time.perf_counter()
  vectors, mean = bench.make_vectors(os.path.join(args.workdir, f"vectors_{tag}.npy"),
                                     params, args.items, args.add, args.seed)
  queries = bench.make_queries(params, args.queries, args.seed, mean)
  print(f"vectors: {time.perf_counter() - start:.0f} s", flush=True)
  start = time.perf_counter()
  truth = bench.ground_truth(args.workdir, vectors, queries, args.items, tag)
  print(f"exact top 10: {time.perf_counter() - start:.0f} s", flush=True)
  out = open(args.output, "a")

  def write(record):
    record.update(items=args.items, load=os.getloadavg()[0], cpu=bench.lscpu_model(),
                  faiss=faiss.__version__)
    out.write(json.dumps(record) + "\n")
    out.flush()

  faiss.omp_set_num_threads(1)
  flat_cpu, flat = bench.flat_qps(vectors, queries[:200], args.items)
  print(f"exact flat, 1 thread, batch of 200: {flat_cpu:.1f} q/s per core, {flat:.1f} "
        "wall", flush=True)
  write({"config": "Flat (exact)", "qps_batch_wall": flat, "qps_batch_cpu": flat_cpu})
  faiss.omp_set_num_threads(args.threads)
  path = os.path.join(args.workdir, f"coarse_{tag}_{args.nlist}.npz")
  if os.path.exists(path):  # a rerun of the study: the same lists
    with np.load(path) as saved:
      coarse = {"centroids": saved["centroids"], "wall": float(saved["wall"]),
                "cpu": float(saved["cpu"])}
  else:
    coarse = coarse_centroids(vectors, args.items, args.nlist, args.seed)
    np.savez(path, **coarse)
  print(f"coarse k-means, {args.nlist} lists: {coarse['wall']:.0f} s wall, "
        f"{coarse['cpu']:.0f} CPU s", flush=True)
  for config in args.configs.split(";"):
    # "PQ128x4fs": on the shared coarse quantizer; a whole factory string with its own
    # "IVF..." (e.g. with an OPQ rotation first) trains its own.
    own = "IVF" in config
    factory = config if own else f"IVF{args.nlist},{config}"
    faiss.omp_set_num_threads(args.threads)
    index = bench.make_index(factory, vectors, None if own else coarse["centroids"])
    sample = bench.train_sample(vectors, args.items, args.nlist, args.seed)
    wall, cpu = time.perf_counter(), time.process_time()
    index.train(sample, args.seed)
    train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
    del sample
    wall, cpu = time.perf_counter(), time.process_time()
    index.add(0, args.items)
    add_wall, add_cpu = time.perf_counter() - wall, time.process_time() - cpu
    nbytes = index.serialized_bytes()
    path = os.path.join(args.workdir, "study.faiss")
    index.save(path)
    del index
    bench.release_freed_memory()
    before = bench.rss_bytes()
    index = bench.make_index(factory, vectors)
    index.load(path)
    rss = bench.rss_bytes() - before
    print(f"{factory}: train {train_wall:.0f} s ({train_cpu:.0f} CPU s) + add "
          f"{add_wall:.0f} s ({add_cpu:.0f} CPU s); {nbytes / args.items:.1f} B/vector, "
          f"RSS +{rss / 1e6:.0f} MB", flush=True)
    grid = search_grid(index, queries, truth, [int(v) for v in args.nprobes.split(",")],
                       [int(v) for v in args.reranks.split(",")], args.single, args.batch)
    index.set_search(bench.DEFAULT_NPROBE, bench.DEFAULT_RERANK)
    add_s, found, _ = bench.measure_add(index, args.items, args.add, args.threads)
    print(f"  add {args.add}: {add_s:.1f} s, found {found:.4f}", flush=True)
    for row in grid:
      write(dict(row, config=factory, bytes_per_vector=nbytes / args.items,
                 rss_mb=rss / 1e6, train_wall=train_wall, train_cpu=train_cpu,
                 add_wall=add_wall, add_cpu=add_cpu, coarse_wall=coarse["wall"],
                 coarse_cpu=coarse["cpu"], threads=args.threads, add_n=args.add,
                 add_new_s=add_s, add_found=found, queries=len(queries)))
    del index
    os.remove(path)
  out.close()


def markdown(path: str) -> str:
  rows = [json.loads(line) for line in open(path) if line.strip()]
  lines = ["| index | B/vector (RSS MB) | build: coarse + train + add, CPU s (wall s) | "
           "nprobe | R | recall@10 | q/s/core single | q/s/core batch | add 10k: s, found |",
           "|---|---:|---|---:|---:|---:|---:|---:|---|"]
  for r in rows:
    if r["config"].startswith("Flat"):
      per_core = r.get("qps_batch_cpu")
      per_core = f"{per_core:.1f}" if per_core else "—"
      lines.append(f"| {r['config']} | 4096 (in RAM) | — | — | — | 1 | — | "
                   f"{per_core} ({r['qps_batch_wall']:.1f} wall) | — |")
      continue
    build = (f"{r['coarse_cpu']:.0f} + {r['train_cpu']:.0f} + {r['add_cpu']:.0f} "
             f"({r['coarse_wall'] + r['train_wall'] + r['add_wall']:.0f})")
    lines.append(
        f"| {r['config']} | {r['bytes_per_vector']:.0f} ({r['rss_mb']:.0f}) | {build} | "
        f"{r['nprobe']} | {r['rerank']} | {r['recall']:.4f} | {r['qps_single_cpu']:.0f} | "
        f"{r['qps_batch_cpu']:.0f} | {r['add_new_s']:.1f}, {r['add_found']:.4f} |")
  return "\n".join(lines)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="/tmp/index_study")
  parser.add_argument("--items", type=int, default=1_000_000)
  parser.add_argument("--queries", type=int, default=1000)
  parser.add_argument("--single", type=int, default=200,
                      help="of the queries, how many are timed one at a time")
  parser.add_argument("--batch", type=int, default=1000)
  parser.add_argument("--add", type=int, default=10_000)
  parser.add_argument("--nlist", type=int, default=1024)
  parser.add_argument("--configs", default="PQ256x4fs;PQ512x4fs;SQ4;SQ8;"
                      "OPQ256,IVF1024,PQ256x4fs",
                      help="';'-separated: encodings on the shared IVF lists, or whole "
                      "factory strings")
  parser.add_argument("--nprobes", default="16,32,64")
  parser.add_argument("--reranks", default="10,20,50")
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--params", default=embedding_mixture.DEFAULT_PARAMS)
  parser.add_argument("--output", default="index_study.jsonl")
  parser.add_argument("--markdown", default="", help="print the table of this file")
  args = parser.parse_args()
  if args.markdown:
    print(markdown(args.markdown))
    return 0
  run(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
