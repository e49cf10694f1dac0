"""The paper's auto-tagging metrics: AUC-tag, AUC-clip, P@K, plus PR-AUC.

Everything is vectorised NumPy over the [clips, tags] score matrix: ROC-AUC is the
Mann–Whitney statistic on average ranks (ties count ½, exactly what scikit-learn's
trapezoidal ``roc_auc_score`` gives), average precision groups tied scores into one
threshold (scikit-learn's ``average_precision_score``), and P@K uses a stable sort.

Conventions (the authors' ``eval_retrieval.m`` / ``eval_avg_precision_at_K.m``, with
the differences spelled out):
  * AUC-tag: ROC-AUC of each tag over clips, mean over tags. A tag whose ROC-AUC is
    undefined (no positive or no negative test clip) is excluded and counted. The
    authors' code excludes only tags without positives; a tag that is on for every
    clip makes their ROC area 0/0 (NaN), so excluding it too is the same intent.
  * AUC-clip: ROC-AUC of each clip over tags, mean over clips; single-class clips
    are excluded and counted the same way.
  * P@K: per clip, the fraction of its K highest-scoring tags that are true, divided
    by K even when K exceeds the number of tags or of true tags, averaged over
    **all** clips including clips without any true tag (the authors' code). Ties in
    the scores are broken by tag index (the lower index ranks first), which is what
    MATLAB's stable ``sort`` does in the authors' code.
  * PR-AUC: average precision of each tag (scikit-learn's definition: precision at
    each distinct score threshold weighted by the recall increment), averaged over
    the same tags as AUC-tag. The authors' ``ap`` is the same quantity when there
    are no tied scores.

See docs/model.md#metrics.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

PRECISION_AT_K = (3, 6, 9, 12, 15)


def _check_inputs(y_true: Any, y_score: Any) -> Tuple[np.ndarray, np.ndarray]:
  y_true = np.asarray(y_true)
  y_score = np.asarray(y_score, dtype=np.float64)
  if y_true.ndim != 2 or y_score.ndim != 2:
    raise ValueError(f"y_true and y_score must be [clips, tags] matrices, got shapes "
                     f"{y_true.shape} and {y_score.shape}")
  if y_true.shape != y_score.shape:
    raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} differ in shape")
  if not np.all(np.isfinite(y_score)):
    raise ValueError(f"y_score has {int(np.sum(~np.isfinite(y_score)))} non-finite "
                     "value(s); scores must be finite")
  if not np.all((y_true == 0) | (y_true == 1)):
    raise ValueError("y_true must be a 0/1 (multi-hot) matrix")
  return y_true.astype(np.float64), y_score


def _tie_group_bounds(sorted_scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """First and last position (along axis 0) of the tie group of every position.

  ``sorted_scores`` is sorted along axis 0 (either direction); equal neighbours form
  one group.
  """
  n = sorted_scores.shape[0]
  index = np.arange(n).reshape((n,) + (1,) * (sorted_scores.ndim - 1))
  index = np.broadcast_to(index, sorted_scores.shape)
  same_as_previous = np.zeros(sorted_scores.shape, dtype=bool)
  same_as_previous[1:] = sorted_scores[1:] == sorted_scores[:-1]
  same_as_next = np.zeros(sorted_scores.shape, dtype=bool)
  same_as_next[:-1] = same_as_previous[1:]
  first = np.maximum.accumulate(np.where(same_as_previous, 0, index), axis=0)
  last = np.minimum.accumulate(np.where(same_as_next, n - 1, index)[::-1], axis=0)[::-1]
  return first, last


def average_ranks(scores: np.ndarray) -> np.ndarray:
  """1-based ranks along axis 0 with ties given their average rank (column-wise).

  Args:
    scores: [n, m] matrix; each column is ranked independently.

  Returns:
    [n, m] float64 ranks, equal to ``scipy.stats.rankdata(scores, axis=0)``.
  """
  scores = np.asarray(scores, dtype=np.float64)
  order = np.argsort(scores, axis=0, kind="stable")
  sorted_scores = np.take_along_axis(scores, order, axis=0)
  first, last = _tie_group_bounds(sorted_scores)
  ranks = np.empty_like(scores)
  np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=0)
  return ranks


def roc_auc_columns(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
  """ROC-AUC of every column (Mann–Whitney U on average ranks); NaN if single-class.

  Args:
    y_true: [n, m] 0/1 matrix.
    y_score: [n, m] scores; higher means more likely positive.

  Returns:
    [m] ROC-AUC per column; NaN where a column has no positive or no negative.
  """
  y_true = np.asarray(y_true, dtype=np.float64)
  ranks = average_ranks(y_score)
  n_pos = y_true.sum(axis=0)
  n_neg = y_true.shape[0] - n_pos
  rank_sum = (ranks * y_true).sum(axis=0)
  with np.errstate(divide="ignore", invalid="ignore"):
    auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
  return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def average_precision_columns(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
  """Average precision of every column (scikit-learn's tie handling); NaN if no positive.

  AP = Σ_thresholds (R_t − R_{t−1}) · P_t over the distinct scores in decreasing
  order, so every positive contributes the precision at the end of its tie group.

  Args:
    y_true: [n, m] 0/1 matrix.
    y_score: [n, m] scores.

  Returns:
    [m] average precision per column; NaN where a column has no positive.
  """
  y_true = np.asarray(y_true, dtype=np.float64)
  y_score = np.asarray(y_score, dtype=np.float64)
  order = np.argsort(-y_score, axis=0, kind="stable")
  sorted_scores = np.take_along_axis(-y_score, order, axis=0)
  sorted_true = np.take_along_axis(y_true, order, axis=0)
  _, last = _tie_group_bounds(sorted_scores)
  true_positives = np.cumsum(sorted_true, axis=0)
  retrieved = np.arange(1, y_true.shape[0] + 1, dtype=np.float64)[:, None]
  precision = true_positives / retrieved
  precision_at_group_end = np.take_along_axis(precision, last, axis=0)
  n_pos = y_true.sum(axis=0)
  with np.errstate(divide="ignore", invalid="ignore"):
    ap = (sorted_true * precision_at_group_end).sum(axis=0) / n_pos
  return np.where(n_pos > 0, ap, np.nan)


def precision_at_k(y_true: np.ndarray, y_score: np.ndarray, k: int) -> float:
  """Mean over all clips of the fraction of the top-k scored tags that are true.

  Ties are broken by tag index (lower first); clips without true tags count as 0;
  the fraction is always divided by k (the authors' code).

  Args:
    y_true: [clips, tags] 0/1 matrix.
    y_score: [clips, tags] scores.
    k: number of top tags per clip (>= 1).
  """
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  y_true = np.asarray(y_true, dtype=np.float64)
  if y_true.shape[0] == 0:
    return float("nan")
  top = np.argsort(-np.asarray(y_score, dtype=np.float64), axis=1, kind="stable")[:, :k]
  hits = np.take_along_axis(y_true, top, axis=1).sum(axis=1)
  return float(np.mean(hits / k))


def _mean_or_nan(values: np.ndarray) -> float:
  finite = values[~np.isnan(values)]
  return float(finite.mean()) if finite.size else float("nan")


def tagging_metrics(y_true: Any, y_score: Any,
                    tag_names: Optional[Sequence[str]] = None,
                    ks: Sequence[int] = PRECISION_AT_K) -> Dict[str, Any]:
  """The paper's metrics (AUC-T, AUC-C, P@K) plus PR-AUC and per-tag details.

  Args:
    y_true: [clips, tags] multi-hot ground truth (0/1).
    y_score: [clips, tags] predicted scores (probabilities or any monotone score).
    tag_names: names of the tag columns (defaults to ``tag_000``, ``tag_001``, ...).
    ks: the K of the P@K metrics (the paper: 3, 6, 9, 12, 15).

  Returns:
    A dict with ``auc_tag``, ``auc_clip``, ``p_at_{k}`` for each k, ``pr_auc``,
    ``per_tag`` (name → {``roc_auc``, ``pr_auc``, ``positives``}; NaN where undefined),
    ``num_clips``, ``num_tags``, ``num_tags_excluded`` and ``num_clips_excluded`` (the
    single-class tags/clips left out of the means). Means over an empty set are NaN.
  """
  y_true, y_score = _check_inputs(y_true, y_score)
  num_clips, num_tags = y_true.shape
  if tag_names is None:
    tag_names = [f"tag_{i:03d}" for i in range(num_tags)]
  tag_names = list(tag_names)
  if len(tag_names) != num_tags:
    raise ValueError(f"{len(tag_names)} tag names for {num_tags} tag columns")

  auc_per_tag = roc_auc_columns(y_true, y_score)
  auc_per_clip = roc_auc_columns(y_true.T, y_score.T)
  ap_per_tag = average_precision_columns(y_true, y_score)
  evaluated = ~np.isnan(auc_per_tag)
  positives = y_true.sum(axis=0)

  result: Dict[str, Any] = {
      "auc_tag": _mean_or_nan(auc_per_tag),
      "auc_clip": _mean_or_nan(auc_per_clip),
  }
  for k in ks:
    result[f"p_at_{k}"] = precision_at_k(y_true, y_score, k)
  result["pr_auc"] = _mean_or_nan(np.where(evaluated, ap_per_tag, np.nan))
  result["num_clips"] = int(num_clips)
  result["num_tags"] = int(num_tags)
  result["num_tags_excluded"] = int(np.sum(~evaluated))
  result["num_clips_excluded"] = int(np.sum(np.isnan(auc_per_clip)))
  result["per_tag"] = {
      name: {"roc_auc": float(auc_per_tag[i]), "pr_auc": float(ap_per_tag[i]),
             "positives": int(positives[i])}
      for i, name in enumerate(tag_names)
  }
  return result


def format_table(rows: Dict[str, Dict[str, Any]], ks: Sequence[int] = PRECISION_AT_K) -> str:
  """The paper's results table (AUC-T, AUC-C, P@K) plus PR-AUC, one row per method.

  Args:
    rows: method name → a ``tagging_metrics`` result.
    ks: the K columns to show.
  """
  header = ["method", "AUC-T", "AUC-C"] + [f"P@{k}" for k in ks] + ["PR-AUC"]
  keys = ["auc_tag", "auc_clip"] + [f"p_at_{k}" for k in ks] + ["pr_auc"]
  width = max([len(header[0])] + [len(name) for name in rows])
  lines = ["  ".join([header[0].ljust(width)] + [h.rjust(6) for h in header[1:]])]
  for name, metrics in rows.items():
    cells = [f"{metrics.get(key, float('nan')):.3f}".rjust(6) for key in keys]
    lines.append("  ".join([name.ljust(width)] + cells))
  return "\n".join(lines)
