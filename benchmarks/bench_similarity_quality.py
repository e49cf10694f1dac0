"""Benchmark: hubness and retrieval quality of ``deepbof-similar``'s normalizations.

On a catalogue whose tracks fall into known groups (the demo corpus: clips rendered
from the same music21 piece, ``haydn-opus1no1_movement2-10.mp3`` → piece
``haydn-opus1no1_movement2``), for each normalization of ``deepbof_tf.similarity``
(``raw`` cosine, ``centred``, ``csls``, ``centred_csls``), every track queries the index
(itself left out) and the script reports:

* hubness: the skewness of the k-occurrence distribution N_k (how often each track is
  in somebody's top k), k = 5 and 10; a symmetric distribution has 0;
* anti-hubs: the share of tracks that are nobody's top-k neighbour;
* the largest N_k;
* precision@5: the share of the top 5 from the query's group (queries whose group has
  another member), and the mean average precision over the full ranking.

Usage::

  .venv/bin/python benchmarks/bench_similarity_quality.py --catalog_dir=CATALOG
      [--normalizations=raw,centred,csls,centred_csls]
      [--corpus_json=CORPUS/corpus.json --group_by=piece,family,style]

Without ``--catalog_dir`` (as ``run_all.py`` runs it) the catalogue is synthetic:
``--synthetic_tracks`` non-negative 1024-d embeddings around ``--synthetic_groups``
random centres (groups = the centres), a smoke run of the measures.

The piece comes from the file name, so any catalogue named that way works. With the
demo corpus's ``corpus.json`` the groups can also be a field of each clip's rendering
plan (``family``: the featured instrument family, ``style``, ``tempo`` …) or the
clip's ``source`` collection: the demo renders every clip of a piece with its own
random plan, so the piece is a weak signal in the audio and the plan a strong one.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Dict, List, Sequence

import numpy as np

import result_line  # noqa: E402  (benchmarks/, the script's own folder)

_TRAILING_NUMBER = re.compile(r"-\d+$")


def group_of(path: str) -> str:
  """The piece of a demo-corpus clip: its file name without extension and ``-N``."""
  stem = os.path.splitext(os.path.basename(path))[0]
  return _TRAILING_NUMBER.sub("", stem)


def skewness(values: np.ndarray) -> float:
  """The (population) skewness E[(x - mean)^3] / std^3; 0 for a constant."""
  x = np.asarray(values, np.float64)
  std = x.std()
  return float(np.mean((x - x.mean()) ** 3) / std ** 3) if std > 0 else 0.0


def quality(rankings: Sequence[Sequence[int]], groups: Sequence[str],
            ks: Sequence[int] = (5, 10)) -> Dict[str, float]:
  """Hubness and retrieval measures of full neighbour rankings (query left out).

  Args:
    rankings: per track, the other tracks' rows, best first (at least ``max(ks)``).
    groups: the group of every track.
    ks: the neighbourhood sizes of the hubness measures.
  """
  n = len(groups)
  out: Dict[str, float] = {}
  for k in ks:
    counts = np.bincount(np.concatenate([np.asarray(r[:k], np.int64) for r in rankings]),
                         minlength=n)
    out[f"skew_n{k}"] = skewness(counts)
    out[f"antihubs_n{k}"] = float(np.mean(counts == 0))
    out[f"max_n{k}"] = float(counts.max())
  precisions, average_precisions = [], []
  for i, ranking in enumerate(rankings):
    relevant = np.array([groups[r] == groups[i] for r in ranking], bool)
    if not relevant.any():
      continue
    precisions.append(relevant[:5].mean())
    hits = np.cumsum(relevant)
    ranks = np.flatnonzero(relevant) + 1
    average_precisions.append(np.mean(hits[relevant] / ranks))
  out["p_at_5"] = float(np.mean(precisions)) if precisions else float("nan")
  out["map"] = float(np.mean(average_precisions)) if average_precisions else float("nan")
  out["queries"] = float(len(precisions))
  return out


def corpus_groups(paths: Sequence[str], corpus_json: str, field: str) -> List[str]:
  """Per catalogue path, a field of its demo-corpus clip (``source``, ``style`` or a
  key of its rendering ``plan``), matched by the clip's path under ``audio/``."""
  import json
  with open(corpus_json, encoding="utf-8") as f:
    clips = {c["path"]: c for c in json.load(f)["clips"]}
  out = []
  for path in paths:
    relative = "/".join(path.replace(os.sep, "/").split("/")[-2:])
    clip = clips[relative]
    out.append(str(clip[field] if field in clip and field != "piece"
                   else clip["plan"][field]))
  return out


def synthetic_catalog(tracks: int, groups: int, dim: int = 1024, seed: int = 0):
  """``(paths, embeddings)``: non-negative embeddings (like bags-of-features) around
  random centres; a path ``synthetic/gGROUP-N`` names its group as the demo's do."""
  rng = np.random.default_rng(seed)
  centres = 0.25 * rng.gamma(0.5, 1.0, [groups, dim])
  labels = rng.integers(0, groups, tracks)
  x = np.abs(centres[labels] + rng.gamma(0.5, 1.0, [tracks, dim]))
  return [f"synthetic/g{g}-{i}" for i, g in enumerate(labels)], x.astype(np.float32)


def main(argv: List[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--catalog_dir", default=None)
  parser.add_argument("--synthetic_tracks", type=int, default=1000)
  parser.add_argument("--synthetic_groups", type=int, default=50)
  parser.add_argument("--normalizations", default="raw,centred,csls,centred_csls")
  parser.add_argument("--corpus_json", default=None)
  parser.add_argument("--group_by", default="piece")
  args = parser.parse_args(argv)
  from deepbof_tf import similarity
  if args.catalog_dir:
    _, columns = similarity.load_catalog(args.catalog_dir, ("path", "embedding"))
    paths, x = columns["path"], columns["embedding"]
  else:
    paths, x = synthetic_catalog(args.synthetic_tracks, args.synthetic_groups)
  rankings = {}
  for name in args.normalizations.split(","):
    index = similarity.SimilarityIndex.build(x, paths, exact_max_items=len(paths),
                                             normalization=name)
    found = index.search(x, len(paths) - 1, exclude_rows=list(range(len(paths))))
    rankings[name] = [[r for r, _ in f] for f in found]
  rows = []
  for grouping in args.group_by.split(","):
    groups = ([group_of(p) for p in paths] if grouping == "piece"
              else corpus_groups(paths, args.corpus_json, grouping))
    sizes = np.bincount(np.unique(groups, return_inverse=True)[1])
    print(f"\ngroups = {grouping}: {len(paths)} tracks, {len(sizes)} groups "
          f"({np.sum(sizes > 1)} with more than one track, largest {sizes.max()}), "
          f"{x.shape[1]}-d")
    results = {name: quality(r, groups) for name, r in rankings.items()}
    print("| normalization | skew N5 | skew N10 | anti-hubs N5 | anti-hubs N10 | max N5 | "
          "max N10 | P@5 | mAP |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, q in results.items():
      print(f"| {name} | {q['skew_n5']:.2f} | {q['skew_n10']:.2f} | "
            f"{q['antihubs_n5']:.1%} | {q['antihubs_n10']:.1%} | {q['max_n5']:.0f} | "
            f"{q['max_n10']:.0f} | {q['p_at_5']:.3f} | {q['map']:.3f} |")
    base = results.get("raw")
    keys = (("p_at_5", "share"), ("map", "share"))
    if grouping == args.group_by.split(",")[0]:
      keys = (("skew_n10", ""), ("antihubs_n10", "share"), ("max_n10", "tracks")) + keys
    for name, q in results.items():
      for key, unit in keys:
        rows.append(result_line.measurement(
            f"{key}, {name}" + (f", groups {grouping}" if key in ("p_at_5", "map") else ""),
            q[key], unit,
            reference=None if base is None or name == "raw" else f"{key}, raw",
            reference_value=None if base is None else base[key]))
  result_line.emit("similarity_quality", rows, config={
      "catalog_dir": args.catalog_dir or "synthetic", "tracks": len(paths),
      "group_by": args.group_by, "normalizations": args.normalizations})
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
