"""``deepbof-evaluate``: the paper's metrics of a trained tagger on one split.

Prints the paper's table (AUC-T, AUC-C, P@3…P@15) plus PR-AUC for the trained tagger
and, when the tagger is the DNN, for the per-tag logistic-regression baseline on the
same bag-of-features (fitted on train, C chosen on valid, cached in
``model_dir/logreg/tagger.keras``). Writes into the model_dir:

  metrics_{split}.json   the tagger's metrics at the top level (auc_tag, auc_clip,
                         p_at_3 … p_at_15, pr_auc, per_tag, exclusion counts), the
                         baseline's under "baselines", the config (NaN → null)
  metrics.json           a copy of metrics_test.json (only for --split=test)
  per_tag_{split}.csv    per tag: positives, ROC-AUC and PR-AUC of each method
  per_tag_auc_{split}.png  bar chart of the per-tag ROC-AUC

Usage:
  deepbof-evaluate --data_dir=DATA --model_dir=MODEL [--split=test] [--nobaseline]
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import sys
from typing import Any, Callable, Dict, Optional

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

from deepbof_tf import cli
from deepbof_tf import config as config_lib
from deepbof_tf import metrics
from deepbof_tf import models
from deepbof_tf import plots
from deepbof_tf.training import distribute
from deepbof_tf.training import evaluation
from deepbof_tf.training import model_dir as layout

DNN_ROW = "Deep-BoF DNN"
LOGREG_ROW = "BoF + logistic regression"


def read_config(model_dir: str) -> config_lib.TrainConfig:
  path = posixpath.join(model_dir, layout.CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path}: no config.json; was {model_dir} trained with "
                            "deepbof-train?")
  with tf.io.gfile.GFile(path, "r") as f:
    return config_lib.from_dict(config_lib.TrainConfig, json.load(f))


def _logreg_baseline(model_dir: str, config: config_lib.TrainConfig):
  """The logistic-regression baseline, refitted when its inputs or C grid changed."""
  import keras
  import deepbof_tf.layers.standardize  # noqa: F401  (registers the layer)
  from trainer import finetune as finetune_stage
  _, x_train, y_train = layout.load_bof(model_dir, "train")
  _, x_valid, y_valid = layout.load_bof(model_dir, "valid")
  digest = hashlib.sha256(json.dumps(list(config.finetune.logreg_c_values)).encode())
  for array in (x_train, y_train, x_valid, y_valid):
    digest.update(np.ascontiguousarray(array, np.float32).tobytes())
  path = posixpath.join(model_dir, layout.LOGREG_DIR, models.TAGGER_FILE)
  stamp = posixpath.join(model_dir, layout.LOGREG_DIR, "fingerprint.txt")
  if tf.io.gfile.exists(path) and tf.io.gfile.exists(stamp):
    with tf.io.gfile.GFile(stamp, "r") as f:
      if f.read().strip() == digest.hexdigest():
        return keras.models.load_model(path, compile=False)
  logging.info("evaluate: fitting the logistic-regression baseline (cached in %s)", path)
  fitted = finetune_stage.fit_logreg_tagger(config, x_train, y_train, x_valid, y_valid)
  finetune_stage.save_keras_model(fitted["model"], path)
  with tf.io.gfile.GFile(stamp, "w") as f:
    f.write(digest.hexdigest() + "\n")
  return fitted["model"]


def _predict(load: Callable[[], Any], x: np.ndarray, strategy: tf.distribute.Strategy,
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
  clip_ids, x, y = layout.load_bof(model_dir, split)
  if y.shape[1] != len(tags):
    raise ValueError(f"{layout.bof_path(model_dir, split)}: {y.shape[1]} label columns, "
                     f"{model_dir}/tags.json has {len(tags)} tags")
  distribution = distribute.distribution_strategy(strategy)
  main_row = DNN_ROW if config.dnn.head == "dnn" else LOGREG_ROW
  scores = _predict(lambda: models.load_tagger(model_dir), x, distribution)
  results = {main_row: metrics.tagging_metrics(y, scores, tags)}
  if baseline and config.dnn.head == "dnn":
    baseline_scores = _predict(lambda: _logreg_baseline(model_dir, config), x,
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
  evaluation.write_json(posixpath.join(model_dir, f"metrics_{split}.json"), report)
  if split == "test":
    evaluation.write_json(posixpath.join(model_dir, "metrics.json"), report)
  evaluation.write_per_tag_csv(posixpath.join(model_dir, f"per_tag_{split}.csv"), results)
  reference = results.get(LOGREG_ROW) if main_row != LOGREG_ROW else None
  plots.plot_per_tag_auc(
      first["per_tag"], posixpath.join(model_dir, f"per_tag_auc_{split}.png"),
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


FLAGS = flags.FLAGS


def _define_flags() -> None:
  before = set(FLAGS)
  flags.DEFINE_string("data_dir", None, "Preprocessed dataset (deepbof-preprocess output).")
  flags.DEFINE_string("model_dir", None, "Model directory written by deepbof-train.")
  flags.DEFINE_enum("split", "test", ["train", "valid", "test"], "Split to evaluate.")
  flags.DEFINE_bool("baseline", True, "Also report per-tag logistic regression on the "
                    "same bag-of-features (fitted once, then cached).")
  flags.DEFINE_enum("strategy", "auto", list(distribute.STRATEGIES),
                    "tf.distribute strategy of the predictions (as deepbof-train's; "
                    "docs/multi-device.md).")
  flags.mark_flags_as_required(["model_dir"])
  # Console scripts run a wrapper as __main__; make our flags the ones --help shows.
  for name in sorted(set(FLAGS) - before):
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distribute.split_cpu_from_environment()
  evaluate(FLAGS.data_dir, FLAGS.model_dir, split=FLAGS.split, baseline=FLAGS.baseline,
           strategy=FLAGS.strategy)


def run() -> None:
  """Console-script entry point ``deepbof-evaluate``."""
  cli.run_console_script(main, _define_flags, __doc__)


if __name__ == "__main__":
  run()
