"""deepbof_tf.metrics against scikit-learn and hand-written NumPy references."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from deepbof_tf import metrics

TOL = 1e-12


def _sk_auc_per_column(y_true, y_score):
  out = []
  for j in range(y_true.shape[1]):
    column = y_true[:, j]
    out.append(skm.roc_auc_score(column, y_score[:, j])
               if 0 < column.sum() < len(column) else np.nan)
  return np.array(out)


def _sk_ap_per_column(y_true, y_score):
  return np.array([skm.average_precision_score(y_true[:, j], y_score[:, j])
                   if y_true[:, j].sum() > 0 else np.nan
                   for j in range(y_true.shape[1])])


def _reference_p_at_k(y_true, y_score, k):
  # One clip at a time; ties broken by the lower tag index, divided by k.
  values = []
  for scores, truth in zip(y_score, y_true):
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))
    values.append(sum(float(truth[j]) for j in order[:k]) / k)  # Python floats (float64)
  return float(np.mean(values))


def _random_problem(rng, clips=60, tags=25, tie_levels=None):
  y_true = (rng.random((clips, tags)) < 0.2).astype(np.float32)
  y_score = rng.random((clips, tags))
  if tie_levels is not None:
    y_score = np.round(y_score * tie_levels) / tie_levels  # many exact ties
  return y_true, y_score


@pytest.mark.parametrize("tie_levels", [None, 4, 1])
def test_auc_tag_and_clip_match_sklearn(rng, tie_levels):
  y_true, y_score = _random_problem(rng, tie_levels=tie_levels)
  result = metrics.tagging_metrics(y_true, y_score)
  per_tag = _sk_auc_per_column(y_true, y_score)
  per_clip = _sk_auc_per_column(y_true.T, y_score.T)
  assert result["auc_tag"] == pytest.approx(np.nanmean(per_tag), abs=TOL)
  assert result["auc_clip"] == pytest.approx(np.nanmean(per_clip), abs=TOL)
  assert result["num_tags_excluded"] == int(np.isnan(per_tag).sum())
  assert result["num_clips_excluded"] == int(np.isnan(per_clip).sum())
  ours = np.array([v["roc_auc"] for v in result["per_tag"].values()])
  np.testing.assert_allclose(ours, per_tag, atol=TOL, equal_nan=True)


@pytest.mark.parametrize("tie_levels", [None, 3, 1])
def test_pr_auc_matches_sklearn_average_precision(rng, tie_levels):
  y_true, y_score = _random_problem(rng, clips=80, tags=20, tie_levels=tie_levels)
  y_true[:, 0] = 1  # all-positive tag: AP defined (1.0), ROC-AUC not
  result = metrics.tagging_metrics(y_true, y_score)
  ap = _sk_ap_per_column(y_true, y_score)
  ours = np.array([v["pr_auc"] for v in result["per_tag"].values()])
  np.testing.assert_allclose(ours, ap, atol=TOL, equal_nan=True)
  # The PR-AUC mean runs over the tags that AUC-tag evaluates.
  evaluated = ~np.isnan(_sk_auc_per_column(y_true, y_score))
  assert result["pr_auc"] == pytest.approx(np.mean(ap[evaluated]), abs=TOL)


def test_average_ranks_match_scipy(rng):
  scores = np.round(rng.random((40, 7)) * 5)
  np.testing.assert_allclose(metrics.average_ranks(scores),
                             stats.rankdata(scores, axis=0), atol=0)


@pytest.mark.parametrize("k", [1, 3, 6, 15, 30])
@pytest.mark.parametrize("tie_levels", [None, 2])
def test_precision_at_k_matches_per_clip_reference(rng, k, tie_levels):
  y_true, y_score = _random_problem(rng, clips=30, tags=20, tie_levels=tie_levels)
  y_true[3] = 0  # a clip without true tags still counts (as 0)
  ours = metrics.tagging_metrics(y_true, y_score, ks=(k,))[f"p_at_{k}"]
  assert ours == pytest.approx(_reference_p_at_k(y_true, y_score, k), abs=TOL)


def test_precision_at_k_breaks_ties_by_tag_index():
  y_true = np.array([[0, 1, 1, 0], [1, 0, 0, 1]], dtype=np.float32)
  y_score = np.zeros((2, 4))  # all tied: top-2 is tags 0 and 1 for both clips
  assert metrics.precision_at_k(y_true, y_score, 2) == pytest.approx((0.5 + 0.5) / 2)
  assert metrics.precision_at_k(y_true, y_score, 1) == pytest.approx((0 + 1) / 2)


def test_single_class_tags_are_excluded_and_counted(rng):
  y_true, y_score = _random_problem(rng, clips=12, tags=6)
  y_true[:, 0] = [1, 0] * 6
  y_true[:, 3:] = [[1, 0, 0]] * 6 + [[0, 1, 1]] * 6
  y_true[:, 1] = 0   # tag without positives
  y_true[:, 2] = 1   # tag with positives only
  result = metrics.tagging_metrics(y_true, y_score, tag_names=list("abcdef"))
  assert result["num_tags_excluded"] == 2
  assert np.isnan(result["per_tag"]["b"]["roc_auc"])
  assert np.isnan(result["per_tag"]["b"]["pr_auc"])
  assert np.isnan(result["per_tag"]["c"]["roc_auc"])
  assert result["per_tag"]["c"]["pr_auc"] == pytest.approx(1.0)
  assert result["per_tag"]["c"]["positives"] == 12
  keep = [0, 3, 4, 5]
  expected = np.mean([skm.roc_auc_score(y_true[:, j], y_score[:, j]) for j in keep])
  assert result["auc_tag"] == pytest.approx(expected, abs=TOL)
  expected_ap = np.mean([skm.average_precision_score(y_true[:, j], y_score[:, j])
                         for j in keep])
  assert result["pr_auc"] == pytest.approx(expected_ap, abs=TOL)


def test_single_class_clips_are_excluded_and_counted(rng):
  y_true, y_score = _random_problem(rng, clips=12, tags=6)
  y_true[:, 0] = 1   # every clip has a positive ...
  y_true[:, 1] = 0   # ... and a negative
  y_true[5, :] = 0   # clip without tags
  y_true[6, :] = 1   # clip with every tag
  result = metrics.tagging_metrics(y_true, y_score)
  assert result["num_clips_excluded"] == 2
  clips = [i for i in range(12) if i not in (5, 6)]
  expected_clip = np.mean([skm.roc_auc_score(y_true[i], y_score[i]) for i in clips])
  assert result["auc_clip"] == pytest.approx(expected_clip, abs=TOL)
  # P@K averages over all 12 clips, including the tag-less clip 5.
  assert result["p_at_3"] == pytest.approx(_reference_p_at_k(y_true, y_score, 3), abs=TOL)
  assert result["num_clips"] == 12


def test_perfect_and_reversed_scores():
  y_true = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=np.float32)
  result = metrics.tagging_metrics(y_true, y_true + 0.0)
  assert result["auc_tag"] == pytest.approx(1.0)
  assert result["auc_clip"] == pytest.approx(1.0)
  assert result["pr_auc"] == pytest.approx(1.0)
  reversed_result = metrics.tagging_metrics(y_true, -y_true)
  assert reversed_result["auc_tag"] == pytest.approx(0.0)


def test_invalid_inputs_raise_with_a_message():
  with pytest.raises(ValueError, match="differ in shape"):
    metrics.tagging_metrics(np.zeros((3, 2)), np.zeros((3, 3)))
  with pytest.raises(ValueError, match="non-finite"):
    metrics.tagging_metrics(np.zeros((2, 2)), np.array([[0.1, np.nan], [0.2, 0.3]]))
  with pytest.raises(ValueError, match="0/1"):
    metrics.tagging_metrics(np.full((2, 2), 0.5), np.zeros((2, 2)))
  with pytest.raises(ValueError, match="tag names"):
    metrics.tagging_metrics(np.zeros((2, 2)), np.zeros((2, 2)), tag_names=["a"])


def test_format_table_lists_every_method():
  y_true = np.array([[1, 0], [0, 1]], dtype=np.float32)
  row = metrics.tagging_metrics(y_true, y_true)
  table = metrics.format_table({"Deep-BoF": row, "logreg": row})
  assert "AUC-T" in table and "P@15" in table and "PR-AUC" in table
  assert len(table.splitlines()) == 3
