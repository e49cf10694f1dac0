"""Every training stage under MirroredStrategy on 2 and 3 logical CPUs (docs/multi-device.md).

Logical CPU devices stand in for GPUs. For each device count one process
(``multi_device.run_on_logical_cpus``) runs every stage once on one device and once
mirrored over all devices, on tiny data whose batches do not split evenly (25 rows on
2 replicas are 12 + 13, on 3 replicas 8 + 8 + 9), and reports how far apart the
results are; the tests below hold them to explicit tolerances. Where a stage resumes
(sparse RBM epochs, pretraining layers, fine-tuning epochs) a killed mirrored run
must continue to exactly the weights of an uninterrupted mirrored run.
"""

import json
import os
import sys

import pytest

import multi_device

_SCRIPT = r"""
import json, os, pathlib, shutil, sys
import keras
import numpy as np
import tensorflow as tf
from deepbof_tf import config as config_lib
from deepbof_tf import models
from deepbof_tf.config import DNNConfig, PretrainConfig, SparseRBMConfig
from deepbof_tf.data import bof_io
from deepbof_tf import model_dir as layout
from deepbof_tf.training import cd1_backend, distribute, evaluation, local_features, pretraining, tagger
from deepbof_tf.training import relu_rbm_trainer as relu_rbm
from deepbof_tf.training import sparse_rbm_trainer as sparse_rbm
import test_local_features_stage as tiny
import test_trainer as synthetic

out, root = sys.argv[1], sys.argv[2]
mirrored = distribute.distribution_strategy("mirrored")
one = tf.distribute.get_strategy()
report = {"replicas": mirrored.num_replicas_in_sync}

def max_abs(a, b):
  return max(float(np.max(np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64))))
             for p, q in zip(a, b))

def identical(a, b):
  return all(np.array_equal(p, q) for p, q in zip(a, b))

# Rows each replica holds while the distributed CD-1 statistics are traced.
rows = {"relu": set(), "sparse": set()}
def recorded(function, key):
  def wrapper(*args, **kwargs):
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
      data = args[3] if key == "relu" else args[1]
      rows[key].add(int(data.shape[0]))
    return function(*args, **kwargs)
  return wrapper
relu_rbm.cd1_statistics = recorded(relu_rbm.cd1_statistics, "relu")
sparse_rbm.SparseRBMTrainer._replica_statistics = recorded(
    sparse_rbm.SparseRBMTrainer._replica_statistics, "sparse")

rng = np.random.default_rng(0)
# --- ReLU-RBM pretraining: binary-visible layer 1, ReLU-visible layer 2 ------------------
x = rng.random((130, 16)).astype(np.float32)   # 5 batches of 25, 5 rows dropped
pretrain_config = PretrainConfig(epochs=4, batch_size=25, weight_costs=(0.001, 0.01))
def relu_stack(strategy):
  result, inputs, kinds = [], x, []
  for i in range(2):
    rbm, history = pretraining.pretrain_layer(inputs, i, 12, pretrain_config, log_every=0,
                                              strategy=strategy)
    kinds.append(type(rbm.kernel.value).__name__)
    weights = [rbm.kernel.numpy(), rbm.hidden_bias.numpy(), rbm.visible_bias.numpy()]
    result += weights + [np.asarray(history["reconstruction_error"])]
    inputs = pretraining.up_pass(weights[0], weights[1], inputs)
  return result, kinds
relu_one, _ = relu_stack(one)
relu_many, kinds = relu_stack(mirrored)
report["relu_max_abs"] = max_abs([w for i, w in enumerate(relu_one) if i % 4 != 3],
                                 [w for i, w in enumerate(relu_many) if i % 4 != 3])
report["relu_error_max_abs"] = max_abs(relu_one[3::4], relu_many[3::4])
report["relu_variables"] = kinds
report["relu_rows"] = sorted(rows["relu"])

# --- the pretrain stage: a lost layer is retrained to the same bits ----------------------
config = synthetic._small_config(**{"dnn.num_hidden_layers": 2, "pretrain.epochs": 3,
                                    "pretrain.batch_size": 25, "finetune.epochs": 4,
                                    "finetune.checkpoint_every_seconds": 0,
                                    "finetune.batch_size": 32, "dnn.dropout": 0.5,
                                    "finetune.tensorboard": False})
data_dir, model_dir = synthetic._write_synthetic(
    pathlib.Path(root) / "pretrain", n=(103, 40, 40))
first = pretraining.pretrain(data_dir, model_dir, config, strategy="mirrored")
layer_2 = os.path.join(model_dir, "pretrain", "rbm_2.npz")
before = dict(np.load(layer_2))
os.remove(layer_2)
again = pretraining.pretrain(data_dir, model_dir, config, strategy="mirrored")
after = dict(np.load(layer_2))
report["pretrain_replicas"] = [first.get("replicas"), again.get("replicas")]
report["pretrain_resume_identical"] = all(
    np.array_equal(before[k], after[k]) for k in ("kernel", "hidden_bias", "visible_bias"))

# --- fine-tuning (uneven last batch, dropout) resumed after a kill -----------------------
class Killed(Exception):
  pass
class Kill(keras.callbacks.Callback):
  def on_epoch_end(self, epoch, logs=None):
    if epoch == 1:
      raise Killed()
tagger.train_tagger(data_dir, model_dir, config, strategy="mirrored")
uninterrupted = models.load_tagger(model_dir).get_weights()
shutil.rmtree(os.path.join(model_dir, "finetune"))
try:
  tagger.train_tagger(data_dir, model_dir, config, strategy="mirrored", callbacks=[Kill()])
except Killed:
  pass
resumed_summary = tagger.train_tagger(data_dir, model_dir, config, strategy="mirrored")
report["finetune_resumed_from"] = resumed_summary["resumed_from"]
report["finetune_resume_identical"] = identical(
    uninterrupted, models.load_tagger(model_dir).get_weights())

# --- predictions of the evaluate stage: 103 rows in batches of 32 (last: 7) -----------------
scores_one = evaluation.predict(lambda: models.load_tagger(model_dir), x[:103].repeat(2, 1),
                                one, batch_size=32)
scores_many = evaluation.predict(lambda: models.load_tagger(model_dir),
                                 x[:103].repeat(2, 1), mirrored, batch_size=32)
report["predict_shape"] = list(scores_many.shape)
report["predict_max_abs"] = max_abs([scores_one], [scores_many])
# Batches of 2 and 1 rows: some replicas hold no row at all.
tiny_many = evaluation.predict(lambda: models.load_tagger(model_dir),
                               x[:5].repeat(2, 1), mirrored, batch_size=2)
report["predict_tiny_max_abs"] = max_abs([scores_one[:5]], [tiny_many])

# --- sparse RBM, TensorFlow path, trainer created inside the strategy scope --------------
blocks = rng.normal(size=(130, 16)).astype(np.float32)
sparse_config = SparseRBMConfig(num_hidden=20, epochs=4, batch_size=25)
def sparse(strategy, checkpoint_dir, kill_after=None):
  with strategy.scope():
    trainer = sparse_rbm.SparseRBMTrainer(16, sparse_config, backend="tensorflow")
  def stop(epoch, metrics):
    if epoch == kill_after:
      raise Killed()
  try:
    history = trainer.fit(blocks, checkpoint_dir=checkpoint_dir, on_epoch_end=stop)
  except Killed:
    return None
  copies = [v.numpy() for v in strategy.experimental_local_results(trainer.kernel)]
  report.setdefault("sparse_copies_agree", []).append(
      identical(copies, copies[:1] * len(copies)))
  return [trainer.kernel.numpy(), trainer.hidden_bias.numpy(),
          trainer.visible_bias.numpy(), trainer.running_activation.numpy(),
          np.array([[r["reconstruction_error"], r["mean_activation"]] for r in history])]
sparse_one = sparse(one, os.path.join(root, "s1"))
sparse_many = sparse(mirrored, os.path.join(root, "s2"))
sparse(mirrored, os.path.join(root, "s3"), kill_after=1)
sparse_resumed = sparse(mirrored, os.path.join(root, "s3"))
report["sparse_max_abs"] = max_abs(sparse_one[:4], sparse_many[:4])
report["sparse_history_max_abs"] = max_abs(sparse_one[4:], sparse_many[4:])
report["sparse_resume_identical"] = identical(sparse_many, sparse_resumed)
report["sparse_rows"] = sorted(rows["sparse"])
auto = sparse_rbm.SparseRBMTrainer(16, sparse_config, strategy=mirrored)
report["sparse_auto"] = [auto.backend, auto.replicas]
if cd1_backend.native_available():
  native = sparse_rbm.SparseRBMTrainer(16, sparse_config, backend="native",
                                       strategy=mirrored)
  report["sparse_native"] = [native.backend, native.replicas]

# --- learn-local-features and encode stages ---------------------------------------------
data_dir, _, _ = tiny.write_tiny_dataset(os.path.join(root, "clips"))
local = config_lib.override(tiny._config(epochs=2), {"local.encode_batch_size": 5})
bofs = {}
for name, kind in (("one", "default"), ("many", "mirrored")):
  model_dir = os.path.join(root, name)
  summary = local_features.learn_local_features(data_dir, model_dir, local,
                                                rbm_backend="tensorflow", strategy=kind)
  report[f"learn_replicas_{name}"] = summary["replicas"]
  encoded = local_features.encode(data_dir, model_dir, local, strategy=kind)
  report[f"encode_replicas_{name}"] = encoded["replicas"]
  stored = np.load(os.path.join(model_dir, layout.LOCAL_DIR, layout.LOCAL_FEATURES_FILE))
  bofs[name] = ([stored[k] for k in sorted(stored.files) if stored[k].dtype.kind == "f"],
                [bof_io.read_bof(layout.bof_path(model_dir, s))["bag_of_features"]
                 for s in ("train", "valid", "test")])
report["learn_max_abs"] = max_abs(bofs["one"][0], bofs["many"][0])
report["learn_encode_max_abs"] = max_abs(bofs["one"][1], bofs["many"][1])
# The same encoder on several replicas: the one-device encoding of every clip.
model_dir = os.path.join(root, "one")
shutil.rmtree(os.path.join(model_dir, "bof"))
local_features.encode(data_dir, model_dir, local, strategy="mirrored")
report["encode_max_abs"] = max_abs(
    bofs["one"][1], [bof_io.read_bof(layout.bof_path(model_dir, s))["bag_of_features"]
                     for s in ("train", "valid", "test")])
with open(out, "w") as f:
  json.dump(report, f)
"""


@pytest.fixture(scope="module", params=[2, 3], ids=["2-replicas", "3-replicas"])
def report(request, tmp_path_factory):
  root = tmp_path_factory.mktemp(f"replicas{request.param}")
  out = root / "report.json"
  multi_device.run_on_logical_cpus(_SCRIPT, request.param, out, root, timeout=900)
  result = json.loads(out.read_text())
  assert result["replicas"] == request.param
  return result


def _shares(batch, replicas):
  return sorted({(r + 1) * batch // replicas - r * batch // replicas
                 for r in range(replicas)})


@pytest.mark.slow
def test_relu_rbm_pretraining_is_split_over_replicas_and_matches_one_device(report):
  replicas = report["replicas"]
  # Every replica computes the CD-1 statistics of its own rows of each batch of 25 ...
  assert report["relu_rows"] == _shares(25, replicas), report["relu_rows"]
  assert report["relu_variables"] == ["MirroredVariable"] * 2
  # ... and the update of the whole batch is the one-device update up to the order of
  # float additions (weights ~0.1, 4 epochs, both layers; measured <= 3e-8).
  assert report["relu_max_abs"] <= 1e-6, report["relu_max_abs"]
  # Reconstruction errors (~1-10, per epoch): relative 1e-6.
  assert report["relu_error_max_abs"] <= 1e-5, report["relu_error_max_abs"]


@pytest.mark.slow
def test_pretrain_stage_retrains_a_lost_layer_to_the_same_bits(report):
  assert report["pretrain_replicas"] == [report["replicas"], report["replicas"]]
  assert report["pretrain_resume_identical"]


@pytest.mark.slow
def test_sparse_rbm_trainer_created_in_a_strategy_scope_matches_one_device(report):
  """Its update went through the variables' raw handles, which a mirrored variable only
  has per replica."""
  assert report["sparse_rows"] == _shares(25, report["replicas"]), report["sparse_rows"]
  # Every replica's copy of the weights holds the trained values (updating through the
  # raw variable handle changed the first copy only).
  assert report["sparse_copies_agree"] == [True] * 3, report["sparse_copies_agree"]
  assert report["sparse_max_abs"] <= 1e-6, report["sparse_max_abs"]
  # Reconstruction errors are ~16, summed over 25 rows: relative 1e-6.
  assert report["sparse_history_max_abs"] <= 2e-5, report["sparse_history_max_abs"]


@pytest.mark.slow
def test_sparse_rbm_resumes_bit_identically_on_replicas(report):
  assert report["sparse_resume_identical"]


@pytest.mark.slow
def test_sparse_rbm_backends_under_several_replicas(report):
  # auto takes the distributed TensorFlow path; the native kernel stays on one device.
  assert report["sparse_auto"] == ["tensorflow", report["replicas"]]
  if "sparse_native" in report:
    assert report["sparse_native"] == ["native", 1]


@pytest.mark.slow
def test_finetune_stage_resumes_bit_identically_on_replicas(report):
  assert report["finetune_resumed_from"] == 1
  assert report["finetune_resume_identical"]


@pytest.mark.slow
def test_learn_local_features_and_encode_stages_on_replicas(report):
  assert report["learn_replicas_one"] == 1 and report["encode_replicas_one"] == 1
  assert report["learn_replicas_many"] == report["replicas"]
  assert report["encode_replicas_many"] == report["replicas"]
  # The encoding of a clip does not depend on the replica (batches of 5 clips).
  assert report["encode_max_abs"] <= 1e-6, report["encode_max_abs"]
  # PCA + 2 RBM epochs mirrored, then its encoding: one-device results to rounding.
  assert report["learn_max_abs"] <= 1e-5, report["learn_max_abs"]
  assert report["learn_encode_max_abs"] <= 1e-5, report["learn_encode_max_abs"]


@pytest.mark.slow
def test_evaluation_predictions_on_replicas(report):
  assert report["predict_shape"] == [103, 5]
  assert report["predict_max_abs"] <= 1e-6, report["predict_max_abs"]
  assert report["predict_tiny_max_abs"] <= 1e-6, report["predict_tiny_max_abs"]


def test_logical_cpu_switch_is_validated():
  from deepbof_tf.training import distribute
  assert distribute.split_cpu_from_environment({}) is None
  assert distribute.split_cpu_from_environment({distribute.LOGICAL_CPUS_ENV: " "}) is None
  with pytest.raises(ValueError, match="positive integer"):
    distribute.split_cpu_from_environment({distribute.LOGICAL_CPUS_ENV: "two"})
  with pytest.raises(ValueError, match=">= 1"):
    distribute.split_cpu_from_environment({distribute.LOGICAL_CPUS_ENV: "0"})


def test_replica_rows_cover_every_batch_once():
  from deepbof_tf.training import distribute
  assert distribute.replica_rows(25, 2) == [(0, 12), (12, 25)]
  assert distribute.replica_rows(100, 3) == [(0, 33), (33, 66), (66, 100)]
  assert distribute.replica_rows(2, 3) == [(0, 0), (0, 1), (1, 2)]
  for rows in range(0, 40):
    for replicas in range(1, 5):
      bounds = distribute.replica_rows(rows, replicas)
      assert bounds[0][0] == 0 and bounds[-1][1] == rows
      assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


@pytest.mark.slow
def test_deepbof_train_mirrored_on_three_logical_cpus_trains_every_stage(tmp_path):
  """The real ``deepbof-train --strategy=mirrored`` with DEEPBOF_LOGICAL_CPUS=3."""
  import test_local_features_stage as tiny
  data_dir, _, _ = tiny.write_tiny_dataset(tmp_path / "data")
  model_dir = tmp_path / "model"
  script = os.path.join(os.path.dirname(sys.executable), "deepbof-train")
  command = ([script] if os.path.exists(script) else [sys.executable, "-m", "trainer.train"])
  settings = {"local.rbm.num_hidden": 48, "local.rbm.epochs": 2,
              "local.num_plot_filters": 4, "local.pooling.pool_frames": 43,
              "local.encode_batch_size": 5, "dnn.hidden_units": 16,
              "dnn.num_hidden_layers": 2, "pretrain.epochs": 2, "pretrain.batch_size": 5,
              "finetune.epochs": 2, "finetune.batch_size": 4,
              "finetune.tensorboard": "false", "finetune.logreg_c_values": "[1.0]"}
  command += [f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--stages=all",
              "--strategy=mirrored", "--seed=1"]
  command += [f"--set={key}={value}" for key, value in settings.items()]
  result = multi_device.run_command(command, 3)
  assert result.returncode == 0, result.stderr[-4000:]
  lines = {line.split(":")[0]: line for line in result.stdout.splitlines() if ":" in line}
  for stage in ("learn-local-features", "encode", "pretrain", "finetune", "evaluate"):
    assert "replicas 3" in lines.get(stage, ""), (stage, result.stdout[-3000:])
  assert "rbm_backend tensorflow" in lines["learn-local-features"]
  assert "epochs_run 2" in lines["finetune"]
  report = json.loads((model_dir / "metrics.json").read_text())
  assert report["split"] == "test" and report["num_clips"] == 3
  for name in ("local/local_features.npz", "bof/train.npz", "pretrain/rbm_2.npz",
               "tagger.keras"):
    assert (model_dir / name).exists(), name
