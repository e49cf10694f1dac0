"""The authors' song-level stage on deepbof's bag-of-features (Octave), scored by deepbof.

Usage::

  python reference/authors/compare_pipeline.py --authors_dir=/path/to/deepbof \
      --model_dir=MODEL --output=results.json [--seeds=1,2] [--inits=pretrained,random]
      [--num_layers=3] [--epochs=100]

MODEL is a ``deepbof-train`` model directory whose ``encode`` stage has run (its
``bof/{train,valid,test}`` bag-of-features). For each (init, seed) the authors' code
(``run_authors_pipeline.m``, our driver of their functions) pretrains and fine-tunes on
exactly those features; the test split's outputs are scored with
``deepbof_tf.metrics.tagging_metrics`` (the same AUC-T as ``deepbof-evaluate``), and
every finished run is added to ``--output`` at once (a rerun skips what it holds).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np

from make_fixtures import run_octave


def main() -> None:
  import scipy.io
  from deepbof_tf import metrics
  from deepbof_tf.training import song_inputs
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--authors_dir", required=True)
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--output", required=True)
  parser.add_argument("--seeds", default="1,2")
  parser.add_argument("--inits", default="pretrained,random")
  parser.add_argument("--num_layers", type=int, default=3)
  parser.add_argument("--epochs", type=int, default=100)
  args = parser.parse_args()
  results = json.load(open(args.output)) if os.path.exists(args.output) else []
  done = {(r["init"], r["seed"], r["num_layers"], r["epochs"]) for r in results}
  splits = {s: song_inputs.load_bof(args.model_dir, s) for s in ("train", "valid", "test")}
  with tempfile.TemporaryDirectory() as tmp:
    bof = os.path.join(tmp, "bof.mat")
    scipy.io.savemat(bof, {f"{s}_data": np.asarray(x, np.float64).T for s, (_, x, _) in
                           splits.items()} | {f"{s}_label": np.asarray(y, np.float64) for
                                              s, (_, _, y) in splits.items()})
    for init in args.inits.split(","):
      for seed in (int(s) for s in args.seeds.split(",")):
        key = (init, seed, args.num_layers, args.epochs)
        if key in done:
          continue
        out = os.path.join(tmp, f"{init}-{seed}.mat")
        run_octave(args.authors_dir, "run_authors_pipeline.m", out, in_file=bof,
                   pretrained=int(init == "pretrained"), num_layers=args.num_layers,
                   seed=seed, n_epochs=args.epochs)
        run = scipy.io.loadmat(out)
        test = metrics.tagging_metrics(splits["test"][2], run["test_estimate"], ks=())
        valid = metrics.tagging_metrics(splits["valid"][2], run["valid_estimate"], ks=())
        results.append({"implementation": "authors (Octave)", "init": init, "seed": seed,
                        "num_layers": args.num_layers, "epochs": args.epochs,
                        "test_auc_tag": float(test["auc_tag"]),
                        "valid_auc_tag": float(valid["auc_tag"]),
                        "finetune_seconds": float(run["seconds"].ravel()[0])})
        with open(args.output, "w") as f:
          json.dump(results, f, indent=1)
        print(json.dumps(results[-1]))


if __name__ == "__main__":
  main()
