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

The library half is ``deepbof_tf.training.evaluation``.

Usage:
  deepbof-evaluate --data_dir=DATA --model_dir=MODEL [--split=test] [--nobaseline]
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags

from deepbof_tf import cli
from deepbof_tf.training import distribute
from deepbof_tf.training import evaluation


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
  evaluation.evaluate(FLAGS.data_dir, FLAGS.model_dir, split=FLAGS.split,
                      baseline=FLAGS.baseline, strategy=FLAGS.strategy)


def run() -> None:
  """Console-script entry point ``deepbof-evaluate``."""
  cli.run_console_script(main, _define_flags, __doc__)


if __name__ == "__main__":
  run()
