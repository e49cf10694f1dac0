"""Regenerates tests/data/authors_updates.npz by running the authors' code under Octave.

Usage (needs GNU Octave and a checkout of https://github.com/juhannam/deepbof; none of
their files are copied into this repository, only the numbers their code produces)::

  python reference/authors/make_fixtures.py --authors_dir=/path/to/deepbof

``make_update_fixtures.m`` (ours) runs their ``init_rbm.m``/``train_rbm.m`` and
``default_mlp.m``/``tagatune_mlp.m``/``tagatune_mlp_classify.m`` on a seeded 40-dim
set with ``rand``/``randn`` wrapped so every draw is recorded; this script keeps the
inputs, the draws (noise as float32, dropout masks as booleans) and the results.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(HERE, "..", "..", "tests", "data", "authors_updates.npz")


def run_octave(authors_dir: str, script: str, out_file: str, **variables) -> None:
  assignments = "".join(f"{k}={v}; " if isinstance(v, (int, float)) else f"{k}='{v}'; "
                        for k, v in variables.items())
  command = (f"authors_dir='{os.path.abspath(authors_dir)}'; out_file='{out_file}'; "
             f"{assignments}run('{os.path.join(HERE, script)}')")
  with tempfile.TemporaryDirectory() as cwd:  # tagatune_mlp's hooks write files
    subprocess.run(["octave", "--no-gui", "--quiet", "--eval", command], cwd=cwd,
                   check=False)
  if not os.path.exists(out_file):
    raise RuntimeError(f"Octave did not write {out_file}; see its output above")


def main() -> None:
  import scipy.io
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--authors_dir", required=True)
  parser.add_argument("--output", default=DEFAULT_OUTPUT)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    mat = os.path.join(tmp, "updates.mat")
    run_octave(args.authors_dir, "make_update_fixtures.m", mat)
    raw = {k: v for k, v in scipy.io.loadmat(mat).items() if not k.startswith("__")}
  out = {}
  for key, value in raw.items():
    if key == "octave_version":
      out[key] = np.asarray(str(value[0]))
    elif key == "mask_uniforms":
      out["masks"] = np.asarray(value) < 0.5  # deepmat: rand - 0.5 < 0 keeps a unit
    elif key.endswith("_noise"):
      out[key] = np.asarray(value, np.float32)
    elif key in ("mask_rows", "rbm_epochs"):
      out[key] = np.asarray(value).ravel().astype(np.int64)
    else:
      value = np.asarray(value, np.float64)
      out[key] = value.ravel() if value.ndim == 2 and 1 in value.shape and (
          key.endswith(("bias", "_lr", "_costs")) or "_b" in key) else value
  np.savez_compressed(args.output, **out)
  print(f"wrote {os.path.normpath(args.output)} ({os.path.getsize(args.output):,} bytes, "
        f"Octave {out['octave_version']})")


if __name__ == "__main__":
  main()
