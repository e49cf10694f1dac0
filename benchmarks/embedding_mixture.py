"""Synthetic bag-of-features embeddings that look like real ones, at any catalogue size.

The index benchmark (``bench_index_scale.py``) needs a million 1024-d embeddings shaped
like the catalogue's (the bag-of-features of ``docs/model.md``: the mean over a track
of max-pooled sigmoid activations of 1024 hidden units, so every entry in (0, 1], no
exact zeros, a few large entries per track, strongly correlated dimensions). This module fits a small generative model
to real embeddings once, commits its parameters (``benchmarks/data/embedding_mixture.npz``,
< 2 MB) and draws any number of rows from it, deterministically, in chunks, as float32,
so a fresh clone runs the benchmark without the run that produced the real ones.

The model, in the log domain (the entries are positive and span four decades, so
``log x`` is far closer to Gaussian than ``x``):

* ``y = log(max(x, floor))``; ``mu`` its mean, ``W`` its top ``pca_dims`` (256)
  principal axes;
* the PCA coordinates ``z = (y - mu) W^T`` follow a Gaussian mixture of
  ``components`` (200) diagonal Gaussians in that subspace: the tracks' clusters (the
  demo corpus renders several clips of a piece) and, through the axes, the correlations
  between the dimensions;
* what the subspace leaves out is independent Gaussian noise per dimension, its standard
  deviation half (``residual_scale``) the residual's of that dimension;
* a draw is ``x = clip(exp(mu + z W + e), floor, 1)``: back on the real support
  (positive, at most 1; nothing in the real data is above 1).

Why this one, by the statistics (``python benchmarks/embedding_mixture.py compare
--alternatives`` prints them; the real data are the 2,000 clips of a demo-corpus run,
each synthetic column 2,000 rows, seed 0; "centred" is the catalogue's normalization,
unit rows minus their mean, unit again; NN = nearest other row):

| statistic | real | synthetic | linear-domain mixture | full residual (scale 1) | independent dims (log-normal) |
|---|---:|---:|---:|---:|---:|
| entry mean | 0.1235 | 0.1175 | 0.1322 | 0.1193 | 0.1186 |
| entry p1 | 0.001876 | 0.001537 | 0 | 0.001517 | 0.001426 |
| entry p50 | 0.06337 | 0.06492 | 0.09463 | 0.06491 | 0.06675 |
| entry p99 | 0.8094 | 0.9156 | 0.7204 | 0.9493 | 0.9455 |
| share of entries < 0.01 | 0.0685 | 0.06686 | 0.182 | 0.06892 | 0.06703 |
| share of entries > 0.5 | 0.04456 | 0.036 | 0.03174 | 0.03805 | 0.0358 |
| row L2 norm, mean | 6.19 | 5.941 | 6.042 | 6.072 | 6.289 |
| row L2 norm, std | 1.899 | 1.982 | 1.807 | 1.995 | 0.2858 |
| per-dim std, median | 0.1173 | 0.1089 | 0.1043 | 0.1136 | 0.1077 |
| raw cosine, mean | 0.5618 | 0.5689 | 0.6454 | 0.5569 | 0.5244 |
| raw cosine, p5 | 0.3717 | 0.3846 | 0.4955 | 0.3783 | 0.4798 |
| raw cosine, p95 | 0.73 | 0.7299 | 0.7767 | 0.7136 | 0.5702 |
| centred cosine, std | 0.1537 | 0.1574 | 0.161 | 0.1481 | 0.04445 |
| centred cosine, p1 | -0.3091 | -0.3218 | -0.3438 | -0.3035 | -0.09819 |
| centred cosine, p99 | 0.4444 | 0.4404 | 0.4361 | 0.4151 | 0.1087 |
| centred NN cosine, mean | 0.6483 | 0.5804 | 0.5889 | 0.5484 | 0.164 |
| centred NN cosine, p10 | 0.4846 | 0.4311 | 0.411 | 0.4045 | 0.1441 |
| centred NN cosine, p90 | 0.8177 | 0.7421 | 0.7708 | 0.7064 | 0.1865 |
| centred 10th-NN cosine, mean | 0.4645 | 0.4426 | 0.4542 | 0.4172 | 0.1216 |
| PCA: top component share | 0.1074 | 0.1164 | 0.1108 | 0.1091 | 0.007457 |
| PCA: dims for 50% variance | 20 | 20 | 17 | 24 | 142 |
| PCA: dims for 90% variance | 189 | 228 | 135 | 285 | 535 |
| PCA: participation ratio | 41.55 | 39.68 | 37.94 | 44.69 | 404 |
| TwoNN intrinsic dimension | 11.66 | 23.08 | 21.57 | 26.51 | 123.2 |
| per-dim mean: correlation real vs synthetic | — | 0.9973 | 0.9952 | 0.9967 | 0.9925 |
| per-dim mean: median ratio synthetic / real | — | 0.9543 | 1.06 | 0.9711 | 0.9734 |
| per-dim var: correlation real vs synthetic | — | 0.9782 | 0.9882 | 0.9735 | 0.9425 |
| per-dim var: median ratio synthetic / real | — | 0.8732 | 0.788 | 0.9454 | 0.9037 |

* The marginals (per-dimension means and variances, the share of small and large
  entries, the row norms, the raw cosines) are matched by every log-domain fit. The
  linear-domain mixture (the same model on the raw values, clipped to [0, 1]) makes
  18 % of the entries < 0.01 (real: 7 %) and exact zeros the real data never has.
* What decides an index's difficulty is the geometry after centring: the spread of the
  cosines, how close the nearest neighbours are and the intrinsic dimension. Independent
  dimensions (a log-normal per dimension) lose it entirely (centred cosines ~0, NN cosine
  0.16, 90 % of the variance needs 535 dimensions): no neighbourhoods, an index benchmark
  on such vectors says nothing. A first fit with a 64-d subspace and 8 full-covariance
  components had a NN cosine of 0.47 and a TwoNN dimension of 37; more components in a
  larger subspace (200 in 256-d) bring the neighbourhoods closer, and halving the
  residual noise (column "full residual (scale 1)" keeps it whole) brings the PCA
  spectrum and neighbours closer still, at the cost of 13 % less variance per
  dimension.
* The synthetic rows stay somewhat *harder* than the real ones: nearest neighbours
  farther (mean NN cosine 0.58 vs 0.65) and a higher intrinsic dimension (TwoNN 23 vs
  12; the demo corpus renders several clips of each piece). Recall measured on them
  errs on the safe side. Their largest entries run a little higher (99th percentile
  0.92 vs 0.81).

Fitting (once, from a training run's ``bof/{train,valid,test}.npz``, key
``bag_of_features``; the committed fit: the 2,000-clip demo-corpus run's, all 2,000
rows, the default flags, 1.4 MB)::

  PYTHONPATH=. .venv/bin/python benchmarks/embedding_mixture.py fit \\
      --bof_dir=RUN/bof --output=benchmarks/data/embedding_mixture.npz

Comparing a fit with the real embeddings::

  PYTHONPATH=. .venv/bin/python benchmarks/embedding_mixture.py compare \\
      --bof_dir=RUN/bof [--params=benchmarks/data/embedding_mixture.npz]

In code::

  params = embedding_mixture.load()               # the committed fit
  x = embedding_mixture.draw(params, 10_000, seed=0)   # float32 [10000, 1024]
  embedding_mixture.draw(params, n, seed=0, out=memmap)  # in place, in chunks

Rows are drawn on a fixed grid of :data:`CHUNK` rows, each chunk from its own
generator seeded by ``(seed, chunk number)``: the same ``seed`` gives the same rows
whatever range is asked for (``draw_rows(params, start, stop, seed)``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PARAMS = os.path.join(HERE, "data", "embedding_mixture.npz")

# Rows per generator: the grid on which draws are reproducible.
CHUNK = 16_384
# Entries below this are drawn as this (the real minimum is ~5e-6).
FLOOR = 1e-6


# --------------------------------------------------------------------------------------
# Fitting and drawing.
# --------------------------------------------------------------------------------------


def load_real(bof_dir: str, splits: Sequence[str] = ("train", "valid", "test")
              ) -> np.ndarray:
  """The real bag-of-features rows of a run's ``bof/`` folder (float32 ``[N, H]``)."""
  parts = [np.load(os.path.join(bof_dir, f"{s}.npz"))["bag_of_features"] for s in splits]
  return np.concatenate(parts).astype(np.float32)


def fit(x: np.ndarray, pca_dims: int = 256, components: int = 200, domain: str = "log",
        seed: int = 0, covariance: str = "diag", residual_scale: float = 0.5
        ) -> Dict[str, np.ndarray]:
  """Fits the model of the module docstring.

  Args:
    x: real embeddings, ``[N, H]``, entries in (0, 1].
    pca_dims: dimension of the subspace the mixture lives in.
    components: Gaussians of the mixture.
    domain: ``"log"`` (the model) or ``"linear"`` (the same on the raw values, clipped
      to [0, 1]: the alternative the docstring compares).
    seed: of the mixture's initialisation.
    covariance: of the mixture's components, ``"diag"`` or ``"full"``.
    residual_scale: the residual noise's standard deviation, as a multiple of the
      residual's (1: every dimension's variance kept; less: closer to the real
      spectrum and neighbourhoods, see the docstring).

  Returns:
    The parameters (arrays), as :func:`save` writes and :func:`draw` takes.
  """
  from sklearn.mixture import GaussianMixture
  x = np.asarray(x, np.float64)
  y = np.log(np.maximum(x, FLOOR)) if domain == "log" else x
  mu = y.mean(axis=0)
  centred = y - mu
  _, s, vt = np.linalg.svd(centred, full_matrices=False)
  w = vt[:pca_dims]
  z = centred @ w.T
  residual = centred - z @ w
  residual_std = residual.std(axis=0) * residual_scale
  gmm = GaussianMixture(components, covariance_type=covariance, reg_covar=1e-4,
                        random_state=seed, n_init=1, max_iter=200).fit(z)
  if covariance == "diag":  # per component, the standard deviation of each coordinate
    spread = {"stds": np.sqrt(gmm.covariances_).astype(np.float32)}
  else:  # per component, the Cholesky factor of its covariance
    spread = {"chol": np.linalg.cholesky(gmm.covariances_).astype(np.float32)}
  return {
      "domain": np.array(domain), "floor": np.float32(FLOOR),
      "mean": mu.astype(np.float32), "axes": w.astype(np.float32),
      "residual_std": residual_std.astype(np.float32),
      "weights": gmm.weights_.astype(np.float64),
      "means": gmm.means_.astype(np.float32),
      **spread,
      "singular_values": s[:pca_dims].astype(np.float32),
      "fit_rows": np.int64(x.shape[0]),
  }


def save(params: Dict[str, np.ndarray], path: str = DEFAULT_PARAMS) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez_compressed(path, **params)


def load(path: str = DEFAULT_PARAMS) -> Dict[str, np.ndarray]:
  """The parameters :func:`fit` made (default: the committed fit)."""
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def dim(params: Dict[str, np.ndarray]) -> int:
  return int(params["mean"].shape[0])


def _chunk(params: Dict[str, np.ndarray], number: int, seed: int) -> np.ndarray:
  """Chunk ``number`` of the grid: :data:`CHUNK` rows, float32."""
  rng = np.random.default_rng([seed, number])
  weights = params["weights"] / params["weights"].sum()
  labels = rng.choice(len(weights), CHUNK, p=weights)
  k = params["means"].shape[1]
  z = rng.standard_normal([CHUNK, k], dtype=np.float32)
  if "stds" in params:
    z *= params["stds"][labels]
  else:
    for c in np.unique(labels):  # one matrix product per component (not per row)
      rows = labels == c
      z[rows] = z[rows] @ params["chol"][c].T
  z += params["means"][labels]
  y = z @ params["axes"] + params["mean"]
  y += rng.standard_normal(y.shape, dtype=np.float32) * params["residual_std"]
  if str(params["domain"]) == "log":
    np.exp(y, out=y)
    np.clip(y, float(params["floor"]), 1.0, out=y)
  else:
    np.clip(y, 0.0, 1.0, out=y)
  return y


def draw_rows(params: Dict[str, np.ndarray], start: int, stop: int, seed: int = 0,
              out: Optional[np.ndarray] = None) -> np.ndarray:
  """Rows ``start:stop`` of the endless sequence that ``seed`` draws.

  Args:
    params: a fit (:func:`load`).
    start: first row.
    stop: one past the last row.
    seed: which sequence.
    out: where to write (``[stop - start, H]`` float32, e.g. a ``np.memmap``); a new
      array if None.

  Returns:
    ``out`` (or the new array).
  """
  if out is None:
    out = np.empty([stop - start, dim(params)], np.float32)
  row = start
  while row < stop:
    number, offset = divmod(row, CHUNK)
    take = min(CHUNK - offset, stop - row)
    out[row - start:row - start + take] = _chunk(params, number, seed)[offset:offset + take]
    row += take
  return out


def draw(params: Dict[str, np.ndarray], n: int, seed: int = 0,
         out: Optional[np.ndarray] = None) -> np.ndarray:
  """``n`` rows (float32 ``[n, H]``), the first ``n`` of ``seed``'s sequence."""
  return draw_rows(params, 0, n, seed, out)


def chunks(params: Dict[str, np.ndarray], n: int, seed: int = 0
           ) -> Iterator[Tuple[int, np.ndarray]]:
  """``(start, rows)`` over the first ``n`` rows, one grid chunk at a time."""
  for start in range(0, n, CHUNK):
    yield start, draw_rows(params, start, min(start + CHUNK, n), seed)


# --------------------------------------------------------------------------------------
# Statistics: real vs synthetic.
# --------------------------------------------------------------------------------------


def centred_unit(x: np.ndarray) -> np.ndarray:
  """The catalogue's ``centred`` normalization (``deepbof_tf.similarity``): unit rows,
  minus their mean, unit again."""
  u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  u = u - u.mean(axis=0)
  return u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)


def statistics(x: np.ndarray) -> Dict[str, float]:
  """The statistics the docstring's table compares (``x``: ``[N, H]``, N ~ 2,000)."""
  x = np.asarray(x, np.float64)
  out: Dict[str, float] = {}
  out["entry mean"] = x.mean()
  out["entry p1"], out["entry p50"], out["entry p99"] = np.percentile(x, [1, 50, 99])
  out["share of entries < 0.01"] = np.mean(x < 0.01)
  out["share of entries > 0.5"] = np.mean(x > 0.5)
  out["row L2 norm, mean"] = np.linalg.norm(x, axis=1).mean()
  out["row L2 norm, std"] = np.linalg.norm(x, axis=1).std()
  d_var = x.var(axis=0)
  out["per-dim std, median"] = np.median(np.sqrt(d_var))
  u = x / np.linalg.norm(x, axis=1, keepdims=True)
  raw = u @ u.T
  iu = np.triu_indices(len(x), 1)
  out["raw cosine, mean"] = raw[iu].mean()
  out["raw cosine, p5"], out["raw cosine, p95"] = np.percentile(raw[iu], [5, 95])
  c = centred_unit(x)
  cos = c @ c.T
  pairs = cos[iu]
  out["centred cosine, std"] = pairs.std()
  out["centred cosine, p1"], out["centred cosine, p99"] = np.percentile(pairs, [1, 99])
  np.fill_diagonal(cos, -np.inf)
  top = -np.sort(-cos, axis=1)[:, :10]
  out["centred NN cosine, mean"] = top[:, 0].mean()
  out["centred NN cosine, p10"], out["centred NN cosine, p90"] = np.percentile(
      top[:, 0], [10, 90])
  out["centred 10th-NN cosine, mean"] = top[:, 9].mean()
  eig = np.linalg.eigvalsh(np.cov(c, rowvar=False))[::-1].clip(0)
  share = np.cumsum(eig) / eig.sum()
  out["PCA: top component share"] = share[0]
  out["PCA: dims for 50% variance"] = float(np.searchsorted(share, 0.5) + 1)
  out["PCA: dims for 90% variance"] = float(np.searchsorted(share, 0.9) + 1)
  out["PCA: participation ratio"] = eig.sum() ** 2 / (eig ** 2).sum()
  # TwoNN intrinsic dimension (ratio of the 2nd to the 1st neighbour distance).
  dist = np.sqrt(np.maximum(2 - 2 * top[:, :2], 0))
  mu = dist[:, 1] / np.maximum(dist[:, 0], 1e-12)
  out["TwoNN intrinsic dimension"] = len(mu) / np.sum(np.log(mu[mu > 1]))
  return {k: float(v) for k, v in out.items()}


def per_dimension_agreement(real: np.ndarray, synthetic: np.ndarray) -> Dict[str, float]:
  """Correlation (over the dimensions) of the per-dimension means and variances."""
  out = {}
  for name, fn in (("mean", np.mean), ("var", np.var)):
    a, b = fn(real, axis=0), fn(synthetic, axis=0)
    out[f"per-dim {name}: correlation real vs synthetic"] = float(np.corrcoef(a, b)[0, 1])
    out[f"per-dim {name}: median ratio synthetic / real"] = float(np.median(b / a))
  return out


def comparison_table(columns: Dict[str, np.ndarray]) -> str:
  """A markdown table of :func:`statistics` per column (the first is the real data)."""
  names = list(columns)
  stats = {n: statistics(x) for n, x in columns.items()}
  real = columns[names[0]]
  agreements = {n: per_dimension_agreement(real, columns[n]) for n in names[1:]}
  lines = ["| statistic | " + " | ".join(names) + " |",
           "|---|" + "---:|" * len(names)]
  for key in stats[names[0]]:
    lines.append(f"| {key} | " + " | ".join(f"{stats[n][key]:.4g}" for n in names) + " |")
  for key in agreements[names[1]] if len(names) > 1 else []:
    lines.append(f"| {key} | — | " + " | ".join(
        f"{agreements[n][key]:.4g}" for n in names[1:]) + " |")
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("command", choices=("fit", "compare"))
  parser.add_argument("--bof_dir", required=True,
                      help="a training run's bof/ folder ({train,valid,test}.npz)")
  parser.add_argument("--output", default=DEFAULT_PARAMS, help="fit: where to write")
  parser.add_argument("--params", default=DEFAULT_PARAMS, help="compare: the fit")
  parser.add_argument("--pca_dims", type=int, default=256)
  parser.add_argument("--components", type=int, default=200)
  parser.add_argument("--covariance", default="diag", choices=("diag", "full"))
  parser.add_argument("--residual_scale", type=float, default=0.5)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--alternatives", action="store_true",
                      help="compare: also fit and show the alternatives of the docstring")
  args = parser.parse_args(argv)
  real = load_real(args.bof_dir)
  if args.command == "fit":
    params = fit(real, args.pca_dims, args.components, seed=args.seed,
                 covariance=args.covariance, residual_scale=args.residual_scale)
    save(params, args.output)
    print(f"fitted on {real.shape[0]} x {real.shape[1]}; wrote {args.output} "
          f"({os.path.getsize(args.output) / 1e6:.2f} MB)")
    return 0
  n = real.shape[0]
  columns = {"real": real, "synthetic": draw(load(args.params), n, seed=args.seed)}
  if args.alternatives:
    columns["linear-domain mixture"] = draw(
        fit(real, args.pca_dims, args.components, domain="linear",
            covariance=args.covariance, residual_scale=args.residual_scale), n,
        seed=args.seed)
    columns["full residual (scale 1)"] = draw(
        fit(real, args.pca_dims, args.components, covariance=args.covariance,
            residual_scale=1.0), n, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    y = np.log(real)
    columns["independent dims (log-normal)"] = np.clip(np.exp(
        y.mean(0) + y.std(0) * rng.standard_normal(real.shape)), FLOOR, 1).astype(np.float32)
  print(comparison_table(columns))
  return 0


if __name__ == "__main__":
  sys.exit(main())
