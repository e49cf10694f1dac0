"""The full song-level pipeline of the authors' code on a small bag-of-features set.

Writes ``tests/data/authors_pipeline.npz`` for ``tests/test_authors_pipeline.py``::

  python reference/authors/make_pipeline_fixture.py --authors_dir=/path/to/deepbof \
      --model_dir=MODEL [--seeds=1,2,3,4,5]

MODEL is an encoded ``deepbof-train`` model directory (``pretraining_check.sh``'s
``OUT/base``: the 2,000-clip demo corpus). The set: the first ``--train`` training and
``--valid`` validation clips and every test clip, in file order, the first ``--dims``
bag-of-features dimensions rounded to float16 (both implementations read exactly these
values), and the tags with at least 5 positives in the training subset and one in each
of the others. For each init and seed the authors' code (``run_authors_pipeline.m``:
their RBM pretraining and fine-tuning, 3 hidden layers of 512, 100 epochs) trains on
it; its test outputs are scored with ``deepbof_tf.metrics`` (the AUC-T of
``deepbof-evaluate``). The fixture holds the set and those scores, nothing of theirs.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from make_fixtures import run_octave

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(HERE, "..", "..", "tests", "data", "authors_pipeline.npz")
SPLITS = ("train", "valid", "test")


def small_set(model_dir: str, train: int, valid: int, dims: int):
  """{split: (x float16 [N, dims], y uint8 [N, tags])}, the kept tags' column indices."""
  from deepbof_tf.training import song_inputs
  limits = {"train": train, "valid": valid, "test": None}
  raw = {}
  for split in SPLITS:
    _, x, y = song_inputs.load_bof(model_dir, split)
    raw[split] = (x[:limits[split], :dims].astype(np.float16),
                  y[:limits[split]].astype(np.uint8))
  counts = {s: y.sum(axis=0) for s, (_, y) in raw.items()}
  keep = np.flatnonzero((counts["train"] >= 5) & (counts["valid"] >= 1)
                        & (counts["test"] >= 1))
  return {s: (x, y[:, keep]) for s, (x, y) in raw.items()}, keep


def main() -> None:
  import scipy.io
  from deepbof_tf import metrics
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--authors_dir", required=True)
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--output", default=DEFAULT_OUTPUT)
  parser.add_argument("--train", type=int, default=600)
  parser.add_argument("--valid", type=int, default=100)
  parser.add_argument("--dims", type=int, default=256)
  parser.add_argument("--seeds", default="1,2,3,4,5")
  parser.add_argument("--epochs", type=int, default=100)
  parser.add_argument("--num_layers", type=int, default=3)
  args = parser.parse_args()
  data, kept_tags = small_set(args.model_dir, args.train, args.valid, args.dims)
  seeds = [int(s) for s in args.seeds.split(",")]
  inits = ("pretrained", "random")
  scores = np.zeros((len(inits), len(seeds)))
  with tempfile.TemporaryDirectory() as tmp:
    mat = os.path.join(tmp, "bof.mat")
    scipy.io.savemat(mat, {f"{s}_data": x.astype(np.float64).T for s, (x, _) in data.items()}
                     | {f"{s}_label": y.astype(np.float64) for s, (_, y) in data.items()})
    for i, init in enumerate(inits):
      for j, seed in enumerate(seeds):
        out = os.path.join(tmp, f"{init}-{seed}.mat")
        run_octave(args.authors_dir, "run_authors_pipeline.m", out, in_file=mat,
                   pretrained=int(init == "pretrained"), num_layers=args.num_layers,
                   seed=seed, n_epochs=args.epochs)
        estimate = scipy.io.loadmat(out)["test_estimate"]
        scores[i, j] = metrics.tagging_metrics(data["test"][1], estimate, ks=())["auc_tag"]
        print(f"authors, {init}, seed {seed}: test AUC-T {scores[i, j]:.4f}", flush=True)
  version = os.popen("octave --version").readline().strip()
  np.savez_compressed(
      args.output, **{f"x_{s}": x for s, (x, _) in data.items()},
      **{f"y_{s}": y for s, (_, y) in data.items()}, kept_tags=kept_tags,
      inits=np.asarray(inits), seeds=np.asarray(seeds), authors_test_auc_tag=scores,
      epochs=np.asarray(args.epochs), num_layers=np.asarray(args.num_layers),
      octave_version=np.asarray(version))
  for i, init in enumerate(inits):
    print(f"authors, {init}: {scores[i].mean():.4f} ± {scores[i].std(ddof=1):.4f}")
  print(f"wrote {args.output} ({os.path.getsize(args.output) / 1e3:.0f} kB)")


if __name__ == "__main__":
  main()
