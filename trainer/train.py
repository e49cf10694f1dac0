"""``deepbof-train``: the training stages of the Deep Bag-of-Features model, one config.

Stages, in order (``--stages=all`` runs them all; a comma list runs a subset in this
order):

  learn-local-features  PCA whitening + sparse RBM on the sampled blocks
  encode                bag-of-features of every clip of every split
  pretrain              ReLU-RBM pretraining of the DNN
  finetune              supervised training of the tagger
  evaluate              the paper's metrics on the test split

(docs/model.md describes what each stage computes; each is a function of
``deepbof_tf.training``.) ``--strategy`` distributes every stage over several GPUs
(docs/multi-device.md); ``DEEPBOF_LOGICAL_CPUS=N`` splits the CPU into N logical devices
for ``--strategy=mirrored`` (how the tests stand in for GPUs).

Configuration, later sources win: the defaults of ``deepbof_tf.config.TrainConfig``
(the authors' configuration) < ``--config=FILE.json|.yaml`` < ``--set=dotted.key=value``
(repeatable, values parsed as YAML:
``--set=finetune.epochs=300 --set=pretrain.weight_costs=[0.001,0.01]``)
< the convenience flags (``--num_hidden_layers``, ``--init``, ``--head`` …). The
operative config is validated and written to ``model_dir/config.json``. If that file
already holds a different config, the run refuses (listing the differences) unless
``--overwrite`` is given; then the new config replaces it and every stage recomputes
what the change affects: pretrained RBMs and the fine-tuning checkpoint are
fingerprinted by their config and inputs and reused only when they match (a changed
``finetune.epochs`` or ``early_stopping_patience`` continues the existing run).

Examples:
  deepbof-train --data_dir=DATA --model_dir=MODEL                      # everything
  deepbof-train --data_dir=DATA --model_dir=MODEL --stages=pretrain,finetune,evaluate \\
      --num_hidden_layers=2 --init=random --finetune_epochs=300
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import posixpath
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import tensorflow as tf
import yaml
from absl import app
from absl import flags

from deepbof_tf import cli
from deepbof_tf import config as config_lib
from deepbof_tf import model_dir as layout
from deepbof_tf.io_utils import write_json
from deepbof_tf.training import distribute

STAGES = ("learn-local-features", "encode", "pretrain", "finetune", "evaluate")
# Stage → (library module, function); imported only when the stage runs. Every stage
# function takes (data_dir, model_dir, config, strategy=...) and returns a summary dict.
_STAGE_FUNCTIONS = {
    "learn-local-features": ("deepbof_tf.training.local_features", "learn_local_features"),
    "encode": ("deepbof_tf.training.local_features", "encode"),
    "pretrain": ("deepbof_tf.training.pretraining", "pretrain"),
    "finetune": ("deepbof_tf.training.tagger", "train_tagger"),
    "evaluate": ("deepbof_tf.training.evaluation", "evaluate_stage"),
}


def parse_stages(spec: str) -> List[str]:
  """``"all"`` or a comma list of stage names → the stages in pipeline order."""
  names = [s.strip() for s in spec.split(",") if s.strip()]
  if names == ["all"]:
    return list(STAGES)
  unknown = [n for n in names if n not in STAGES]
  if unknown or not names:
    raise ValueError(f"--stages={spec!r}: unknown stage(s) {unknown}; choose from "
                     f"{', '.join(STAGES)} or 'all'")
  return [s for s in STAGES if s in names]


def stage_function(stage: str) -> Callable[..., Dict[str, Any]]:
  module_name, function_name = _STAGE_FUNCTIONS[stage]
  return getattr(importlib.import_module(module_name), function_name)


def _default_at(config: Any, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    if not dataclasses.is_dataclass(node) or not hasattr(node, part):
      raise ValueError(f"unknown config key {dotted!r}")
    node = getattr(node, part)
  return node


def _coerce(key: str, value: Any, default: Any) -> Any:
  """Converts a parsed override to the type of the field's default."""
  if isinstance(default, bool):
    if not isinstance(value, bool):
      raise ValueError(f"{key} expects true/false, got {value!r}")
    return value
  if isinstance(default, int):
    if isinstance(value, bool) or not isinstance(value, int):
      raise ValueError(f"{key} expects an integer, got {value!r}")
    return value
  if isinstance(default, float):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ValueError(f"{key} expects a number, got {value!r}")
    return float(value)
  if isinstance(default, tuple):
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if default and isinstance(default[0], float):
      values = [_coerce(key, v, 0.0) for v in values]
    return tuple(values)
  if isinstance(default, str):
    return str(value)
  if dataclasses.is_dataclass(default):
    raise ValueError(f"{key} is a config section; set one of its fields instead")
  return value


def parse_set_flags(assignments: Sequence[str], config: config_lib.TrainConfig
                    ) -> Dict[str, Any]:
  """``["finetune.epochs=300", ...]`` → ``{"finetune.epochs": 300}`` (typed, checked)."""
  overrides: Dict[str, Any] = {}
  for assignment in assignments:
    if "=" not in assignment:
      raise ValueError(f"--set={assignment!r}: expected dotted.key=value")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    default = _default_at(config, key)
    overrides[key] = _coerce(key, yaml.safe_load(raw), default)
  return overrides


def load_config_file(path: str) -> Dict[str, Any]:
  """A (partial, nested) TrainConfig dict from a .json or .yaml/.yml file."""
  with tf.io.gfile.GFile(path, "r") as f:
    text = f.read()
  values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
  if not isinstance(values, Mapping):
    raise ValueError(f"{path}: expected a mapping of config sections, got {type(values)}")
  return dict(values)


def _flatten(values: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
  """Nested config dict → {"dotted.key": value}."""
  out: Dict[str, Any] = {}
  for key, value in values.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def build_config(config_file: Optional[str] = None, assignments: Sequence[str] = (),
                 convenience: Optional[Mapping[str, Any]] = None,
                 seed: Optional[int] = None,
                 preset: Optional[str] = None) -> config_lib.TrainConfig:
  """Defaults < preset < config file < ``--set`` < convenience flags < ``--seed``.

  All sources are merged first and validated once, so e.g. a one-entry
  ``weight_costs`` and ``--num_hidden_layers=1`` may come from different sources.

  Args:
    config_file: optional .json/.yaml file with (partial) config sections.
    assignments: ``--set`` values, ``dotted.key=value``.
    convenience: dotted key → value of the convenience flags that were given.
    seed: if given, every ``seed`` field of the config.
    preset: optional name of a ``deepbof_tf.config.PRESETS`` entry.
  """
  defaults = config_lib.TrainConfig()
  dotted: Dict[str, Any] = {}
  if preset:
    for key, value in config_lib.preset(preset).train_overrides.items():
      dotted[key] = _coerce(key, value, _default_at(defaults, key))
  if config_file:
    for key, value in _flatten(load_config_file(config_file)).items():
      dotted[key] = _coerce(key, value, _default_at(defaults, key))
  dotted.update(parse_set_flags(assignments, defaults))
  for key, value in (convenience or {}).items():
    dotted[key] = _coerce(key, value, _default_at(defaults, key))
  if seed is not None:
    for key in _flatten(config_lib.to_dict(defaults)):
      if key == "seed" or key.endswith(".seed"):
        dotted[key] = int(seed)
  return config_lib.override(defaults, dotted)


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = ""
                 ) -> List[str]:
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    name = f"{prefix}{key}"
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      out += _differences(a, b, name + ".")
    elif a != b:
      out.append(f"{name}: {a!r} -> {b!r}")
  return out


def write_operative_config(model_dir: str, config: config_lib.TrainConfig,
                           overwrite: bool = False) -> str:
  """Writes ``model_dir/config.json``; refuses to replace a different one unless overwrite."""
  path = posixpath.join(model_dir, layout.CONFIG_FILE)
  new = config_lib.to_dict(config)
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path, "r") as f:
      old = json.load(f)
    diff = _differences(old, new)
    if diff and not overwrite:
      raise ValueError(
          f"{path} holds another configuration ({len(diff)} difference(s): "
          f"{'; '.join(diff[:8])}{' …' if len(diff) > 8 else ''}). Use another "
          "--model_dir, or --overwrite to replace it (stages then reuse only what the "
          "new config leaves unchanged).")
    if diff:
      logging.warning("replacing %s: %s", path, "; ".join(diff))
  return write_json(path, new)


def record_audio_settings(data_dir: str, model_dir: str) -> Optional[str]:
  """Copies the dataset's front end and channel mode into ``model_dir/frontend.json``.

  The model only makes sense with the front end its data was computed with; keeping it
  next to the weights lets ``deepbof-export`` rebuild it without ``--data_dir``.
  Returns the written path, or None if the metadata records no front end.
  """
  path = posixpath.join(data_dir, "metadata.json")
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path, "r") as f:
    metadata = json.load(f)
  if "frontend" not in metadata:
    return None
  return write_json(posixpath.join(model_dir, layout.FRONTEND_FILE),
                    {"frontend": metadata["frontend"],
                     "channel_mode": metadata.get("channel_mode", "first")})


def run_stages(data_dir: str, model_dir: str, config: config_lib.TrainConfig,
               stages: Sequence[str], overwrite: bool = False,
               rbm_backend: str = "auto", strategy: str = "auto") -> Dict[str, Any]:
  """Validates and records the config, then runs ``stages`` in order.

  Args:
    data_dir: the preprocessed dataset (deepbof-preprocess output).
    model_dir: where every artifact of the run goes.
    config: the operative configuration.
    stages: stage names (see ``STAGES``).
    overwrite: replace a different ``model_dir/config.json``.
    rbm_backend: CD-1 backend of learn-local-features (auto, native, tensorflow).
    strategy: the ``tf.distribute`` strategy of every stage (auto, default, mirrored;
      docs/multi-device.md).

  Returns:
    stage name → the stage's summary dict.
  """
  write_operative_config(model_dir, config, overwrite=overwrite)
  record_audio_settings(data_dir, model_dir)
  logging.info("operative configuration (%s):\n%s", posixpath.join(model_dir,
               layout.CONFIG_FILE), config_lib.describe(config))
  summaries: Dict[str, Any] = {}
  for stage in stages:
    logging.info("=== stage %s ===", stage)
    options = {"strategy": strategy}
    if stage == "learn-local-features":
      options["rbm_backend"] = rbm_backend
    summaries[stage] = stage_function(stage)(data_dir, model_dir, config, **options)
    logging.info("stage %s done: %s", stage, json.dumps(
        {k: v for k, v in (summaries[stage] or {}).items() if k != "table"}, default=str))
  return summaries


# Convenience flag → dotted config key.
CONVENIENCE_FLAGS = {
    "num_hidden_layers": "dnn.num_hidden_layers",
    "hidden_units": "dnn.hidden_units",
    "init": "dnn.init",
    "head": "dnn.head",
    "finetune_epochs": "finetune.epochs",
    "early_stopping_patience": "finetune.early_stopping_patience",
    "mixed_precision": "finetune.mixed_precision",
    "pretrain_epochs": "pretrain.epochs",
    "weight_costs": "pretrain.weight_costs",
    "rbm_epochs": "local.rbm.epochs",
    "sparsity_target": "local.rbm.sparsity_target",
    "pool_frames": "local.pooling.pool_frames",
}

FLAGS = flags.FLAGS


def _define_flags() -> None:
  before = set(FLAGS)
  flags.DEFINE_string("data_dir", None, "Preprocessed dataset (deepbof-preprocess output).")
  flags.DEFINE_string("model_dir", None, "Directory of every artifact of this model.")
  flags.DEFINE_string("stages", "all", f"'all' or a comma list of: {', '.join(STAGES)}.")
  flags.DEFINE_enum("preset", None, sorted(config_lib.PRESETS), "Named scaling of the "
                    "defaults (deepbof_tf.config.PRESETS), e.g. 'demo' for the demo "
                    "corpus; --config, --set and the other flags override it.")
  flags.DEFINE_string("config", None, "A .json or .yaml file with (partial) config sections.")
  flags.DEFINE_multi_string("set", [], "dotted.key=value override (repeatable), e.g. "
                            "--set=finetune.batch_size=64.")
  flags.DEFINE_bool("overwrite", False, "Replace a different model_dir/config.json.")
  flags.DEFINE_integer("seed", None, "Sets every seed of the config.")
  flags.DEFINE_integer("num_hidden_layers", None, "DNN hidden layers (paper: 1, 2, 3).")
  flags.DEFINE_integer("hidden_units", None, "Units per hidden layer (512).")
  flags.DEFINE_enum("init", None, ["pretrained", "random"], "DNN initialisation.")
  flags.DEFINE_enum("head", None, ["dnn", "logreg"], "Song-level classifier.")
  flags.DEFINE_integer("finetune_epochs", None, "Fine-tuning epochs (default: from "
                       "finetune.updates, the paper's 11,500 updates; --preset=paper: "
                       "100).")
  flags.DEFINE_integer("early_stopping_patience", None, "Epochs without a better "
                       "validation AUC-tag before stopping (0: off).")
  flags.DEFINE_bool("mixed_precision", None, "float16 compute on GPU.")
  flags.DEFINE_integer("pretrain_epochs", None, "CD-1 epochs per DNN RBM (200).")
  flags.DEFINE_list("weight_costs", None, "RBM weight cost per layer, e.g. "
                    "0.001,0.01,0.1 ('WC Inc').")
  flags.DEFINE_integer("rbm_epochs", None, "Epochs of the local sparse RBM (300).")
  flags.DEFINE_float("sparsity_target", None, "Local sparse RBM target activation (0.02).")
  flags.DEFINE_integer("pool_frames", None, "Bag-of-features max-pooling window in frames "
                       "(86 ≈ 2 s, the authors' final script).")
  flags.DEFINE_enum("rbm_backend", "auto", ["auto", "native", "tensorflow"],
                    "How the local sparse RBM's CD-1 runs: 'native' is the C kernel "
                    "(x86-64 CPUs with AVX2/FMA), 'tensorflow' the tf.function (any "
                    "device); 'auto' takes native when built and no GPU is visible. Not "
                    "part of the config: both give the same numbers up to float rounding.")
  flags.DEFINE_enum("strategy", "auto", ["auto", "default", "mirrored"],
                    "tf.distribute strategy of every stage: 'auto' mirrors over several "
                    "GPUs when there are, 'default' uses one device, 'mirrored' every "
                    "visible GPU (or logical CPU device: DEEPBOF_LOGICAL_CPUS=N splits "
                    "the CPU into N). The native sparse-RBM kernel stays on one device. "
                    "Not part of the config (docs/multi-device.md).")
  flags.mark_flags_as_required(["data_dir", "model_dir"])
  # Console scripts run a wrapper as __main__; make our flags the ones --help shows.
  for name in sorted(set(FLAGS) - before):
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])


def _convenience_values() -> Dict[str, Any]:
  values = {}
  for flag_name, key in CONVENIENCE_FLAGS.items():
    value = FLAGS[flag_name].value
    if value is None:
      continue
    if flag_name == "weight_costs":
      value = [float(v) for v in value]
    values[key] = value
  return values


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Before anything initialises TensorFlow's devices (docs/multi-device.md).
  distribute.split_cpu_from_environment()
  config = build_config(FLAGS.config, FLAGS.set, _convenience_values(), FLAGS.seed,
                        preset=FLAGS.preset)
  print("operative configuration:\n  " + config_lib.describe(config).replace("\n", "\n  "),
        flush=True)
  summaries = run_stages(FLAGS.data_dir, FLAGS.model_dir, config,
                         parse_stages(FLAGS.stages), overwrite=FLAGS.overwrite,
                         rbm_backend=FLAGS.rbm_backend, strategy=FLAGS.strategy)
  for stage, summary in summaries.items():
    print(format_summary(stage, summary))


def format_summary(stage: str, summary: Any) -> str:
  """One line per stage for the console: its scalar results (tables print themselves)."""
  summary = summary if isinstance(summary, dict) else {}
  scalars = ", ".join(
      f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
      for key, value in summary.items()
      if isinstance(value, (int, float, str)) and key != "table")
  return f"{stage}: {scalars or 'done'}"


def run() -> None:
  """Console-script entry point ``deepbof-train``."""
  cli.run_console_script(main, _define_flags, __doc__)


if __name__ == "__main__":
  run()
