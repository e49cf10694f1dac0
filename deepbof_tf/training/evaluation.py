"""Stage ``evaluate``: the paper's metrics of a trained tagger, and its reports.

:func:`evaluate` computes the paper's table (AUC-T, AUC-C, P@3…P@15) plus PR-AUC for the
trained tagger and, when the tagger is the DNN, for the per-tag logistic-regression
baseline on the same bag-of-features (fitted on train, C chosen on valid, cached in
``model_dir/logreg/tagger.keras``). It writes into the model_dir:

  metrics_{split}.json   the tagger's metrics at the top level (auc_tag, auc_clip,
                         p_at_3 … p_at_15, pr_auc, per_tag, exclusion counts), the
                         baseline's under "baselines", the config (NaN → null)
  metrics.json           a copy of metrics_test.json (only for split=test)
  per_tag_{split}.csv    per tag: positives, ROC-AUC and PR-AUC of each method
                         (:func:`write_per_tag_csv`)
  per_tag_auc_{split}.png  bar chart of the per-tag ROC-AUC
                         (``deepbof_tf.plots.plot_per_tag_auc``)
"""

from __future__ import annotations

import csv
import io
import json
import logging
import posixpath
from typing import Any, Callable, Dict, Mapping, Optional

import keras
import numpy as np
import tensorflow as tf

from deepbof_tf import config as config_lib
from deepbof_tf import metrics
from deepbof_tf import model_dir as layout
from deepbof_tf import models
from deepbof_tf import plots
from deepbof_tf.io_utils import write_atomic
from deepbof_tf.io_utils import write_json
from deepbof_tf.training import distribute
from deepbof_tf.training import song_inputs
from deepbof_tf.training import tagger as tagger_lib

DNN_ROW = "Deep-BoF DNN"
LOGREG_ROW = "BoF + logistic regression"


def read_config(model_dir: str) -> config_lib.TrainConfig:
  """The operative config that trained ``model_dir`` (its ``config.json``)."""
  path = posixpath.join(model_dir, layout.CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path}: no config.json; was {model_dir} trained with "
                            "deepbof-train?")
  with tf.io.gfile.GFile(path, "r") as f:
    return config_lib.from_dict(config_lib.TrainConfig, json.load(f))


def logreg_baseline(model_dir: str, config: config_lib.TrainConfig):
  """The logistic-regression baseline, refitted when its inputs or C grid changed.

  Cached in ``model_dir/logreg/`` with the fingerprint of its inputs and C grid.

  Args:
    model_dir: the model directory (reads ``bof/{train,valid}.npz``).
    config: the operative configuration (``finetune.logreg_c_values``).
  """
  _, x_train, y_train = song_inputs.load_bof(model_dir, "train")
  _, x_valid, y_valid = song_inputs.load_bof(model_dir, "valid")
  fingerprint = layout.fingerprint(list(config.finetune.logreg_c_values),
                                   x_train, y_train, x_valid, y_valid)
  path = posixpath.join(model_dir, layout.LOGREG_DIR, layout.TAGGER_FILE)
  stamp = posixpath.join(model_dir, layout.LOGREG_DIR, layout.LOGREG_FINGERPRINT_FILE)
  if tf.io.gfile.exists(path) and tf.io.gfile.exists(stamp):
    with tf.io.gfile.GFile(stamp, "r") as f:
      if f.read().strip() == fingerprint:
        return keras.models.load_model(path, compile=False)
  logging.info("evaluate: fitting the logistic-regression baseline (cached in %s)", path)
  fitted = tagger_lib.fit_logreg_tagger(config, x_train, y_train, x_valid, y_valid)
  tagger_lib.save_keras_model(fitted["model"], path)
  write_atomic(stamp, fingerprint + "\n")
  return fitted["model"]


def predict(load: Callable[[], Any], x: np.ndarray, strategy: tf.distribute.Strategy,
            batch_size: int = 1024) -> np.ndarray:
  """``load()``'s predictions on ``x``; under several replicas each batch is split."""
  if distribute.num_replicas(strategy) == 1:
    return load().predict(x, verbose=0)
  with strategy.scope():
    model = load()
  return distribute.map_in_batches(strategy, lambda rows: model(rows, training=False),
                                   [np.asarray(x, np.float32)], batch_size)


def evaluate(data_dir: str, model_dir: str, config: Optional[config_lib.TrainConfig] = None,
             split: str = "test", baseline: bool = True,
             strategy: str = "auto") -> Dict[str, Any]:
  """Evaluates ``model_dir/tagger.keras`` on ``split``; writes and returns the report.

  Args:
    data_dir: the preprocessed dataset (unused; the model_dir holds the features and
      the tag names).
    model_dir: the trained model directory.
    config: the operative config (read from ``model_dir/config.json`` if None).
    split: "train", "valid" or "test".
    baseline: also evaluate per-tag logistic regression on the same features when the
      tagger is the DNN.
    strategy: "auto", "default" or "mirrored" (``distribute.distribution_strategy``):
      under several replicas every prediction batch is split over them; the scores are
      the one-device scores up to float rounding.
  """
  del data_dir
  config = config or read_config(model_dir)
  tags = models.load_tag_names(model_dir)
  clip_ids, x, y = song_inputs.load_bof(model_dir, split)
  if y.shape[1] != len(tags):
    raise ValueError(f"{layout.bof_path(model_dir, split)}: {y.shape[1]} label columns, "
                     f"{model_dir}/tags.json has {len(tags)} tags")
  distribution = distribute.distribution_strategy(strategy)
  main_row = DNN_ROW if config.dnn.head == "dnn" else LOGREG_ROW
  scores = predict(lambda: models.load_tagger(model_dir), x, distribution)
  results = {main_row: metrics.tagging_metrics(y, scores, tags)}
  if baseline and config.dnn.head == "dnn":
    baseline_scores = predict(lambda: logreg_baseline(model_dir, config), x,
                              distribution)
    results[LOGREG_ROW] = metrics.tagging_metrics(y, baseline_scores, tags)

  table = metrics.format_table(results)
  first = results[main_row]
  print(f"split={split}: {len(clip_ids)} clips, {len(tags)} tags "
        f"({first['num_tags_excluded']} tags and {first['num_clips_excluded']} clips "
        "excluded from the AUCs for having one class only)")
  print(table)

  # Top level: the tagger's own numbers (``metrics.json["auc_tag"]`` etc.); the
  # baseline on the same features sits under "baselines".
  report = {"split": split, "method": main_row, **results[main_row],
            "baselines": {name: m for name, m in results.items() if name != main_row},
            "config": config_lib.to_dict(config)}
  write_json(layout.metrics_path(model_dir, split), report)
  if split == "test":
    write_json(posixpath.join(model_dir, layout.METRICS_FILE), report)
  write_per_tag_csv(layout.per_tag_csv_path(model_dir, split), results)
  reference = results.get(LOGREG_ROW) if main_row != LOGREG_ROW else None
  plots.plot_per_tag_auc(
      first["per_tag"], layout.per_tag_plot_path(model_dir, split),
      title=f"{main_row}, {split} split",
      reference=reference["per_tag"] if reference else None,
      labels=(main_row, LOGREG_ROW))
  return {"split": split, "table": table,
          "replicas": distribute.num_replicas(distribution),
          **{name: {k: v for k, v in m.items() if k != "per_tag"}
             for name, m in results.items()}}


def evaluate_stage(data_dir: str, model_dir: str, config: config_lib.TrainConfig,
                   strategy: str = "auto") -> Dict[str, Any]:
  """The ``evaluate`` stage of deepbof-train: the test split with the baseline."""
  return evaluate(data_dir, model_dir, config, split="test", baseline=True,
                  strategy=strategy)


def write_per_tag_csv(path: str, results: Mapping[str, Mapping[str, Any]]) -> None:
  """One row per tag: tag, positives, then roc_auc/pr_auc of every method.

  Args:
    path: the CSV file.
    results: method name → ``tagging_metrics`` result (same tags in each).
  """
  methods = list(results)
  first = results[methods[0]]["per_tag"]
  header = ["tag", "positives"]
  for method in methods:
    header += [f"{method}_roc_auc", f"{method}_pr_auc"]
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(header)
  for tag, values in first.items():
    row = [tag, values["positives"]]
    for method in methods:
      entry = results[method]["per_tag"][tag]
      row += ["" if np.isnan(entry["roc_auc"]) else f"{entry['roc_auc']:.6f}",
              "" if np.isnan(entry["pr_auc"]) else f"{entry['pr_auc']:.6f}"]
    writer.writerow(row)
  write_atomic(path, buffer.getvalue())
