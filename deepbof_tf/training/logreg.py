"""Per-tag logistic regression on the standardized bag-of-features.

The built-in baseline head: one L2-regularised logistic regression per tag
(scikit-learn, lbfgs), the regularisation strength chosen on the validation AUC-tag
from a small grid. The coefficients become a Keras ``Dense`` layer so the result is a
tagger with the same interface as the DNN.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Dict, Sequence

import numpy as np

from deepbof_tf import metrics


def _prior_logit(column: np.ndarray) -> float:
  p = float(np.clip(column.mean(), 1e-4, 1 - 1e-4))
  return float(np.log(p / (1 - p)))


def fit_logreg_head(x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray,
                    y_valid: np.ndarray, c_values: Sequence[float] = (0.001, 0.01, 0.1, 1.0),
                    max_iter: int = 500) -> Dict[str, Any]:
  """Fits one logistic regression per tag for each C and keeps the best C.

  A tag with a single class on the training split gets zero coefficients and the
  (clipped) log-odds of its training frequency as intercept.

  Args:
    x_train: [clips, features] standardized training bag-of-features.
    y_train: [clips, tags] training labels (0/1).
    x_valid: standardized validation bag-of-features.
    y_valid: validation labels.
    c_values: inverse L2 strengths to try (scikit-learn's C), fitted in increasing
      order with warm starts.
    max_iter: lbfgs iterations per fit.

  Returns:
    {"kernel": [features, tags], "bias": [tags], "c": the chosen C,
    "val_auc_tag": {C: validation AUC-tag}}.
  """
  from sklearn.exceptions import ConvergenceWarning
  from sklearn.linear_model import LogisticRegression

  x_train = np.asarray(x_train, np.float64)
  x_valid = np.asarray(x_valid, np.float64)
  y_train = np.asarray(y_train)
  num_features, num_tags = x_train.shape[1], y_train.shape[1]
  c_values = sorted(float(c) for c in c_values)
  kernels = {c: np.zeros((num_features, num_tags)) for c in c_values}
  biases = {c: np.zeros(num_tags) for c in c_values}
  for j in range(num_tags):
    column = y_train[:, j]
    if column.min() == column.max():
      for c in c_values:
        biases[c][j] = _prior_logit(column)
      continue
    model = LogisticRegression(C=c_values[0], max_iter=max_iter, warm_start=True)
    for c in c_values:
      model.set_params(C=c)
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, column)
      kernels[c][:, j] = model.coef_[0]
      biases[c][j] = model.intercept_[0]
  scores = {}
  for c in c_values:
    logits = x_valid @ kernels[c] + biases[c]
    scores[c] = metrics.tagging_metrics(y_valid, logits, ks=())["auc_tag"]
    logging.info("logistic regression C=%g: validation AUC-tag %.4f", c, scores[c])
  finite = {c: s for c, s in scores.items() if np.isfinite(s)}
  best = max(finite, key=finite.get) if finite else c_values[-1]
  return {"kernel": kernels[best].astype(np.float32), "bias": biases[best].astype(np.float32),
          "c": best, "val_auc_tag": scores}
