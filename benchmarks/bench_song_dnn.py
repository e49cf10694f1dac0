"""Benchmark of the song-level stages: ReLU-RBM pretraining, fine-tuning, metrics.

(a) A ReLU-RBM CD-1 epoch (1024 → 512, batch 100; one ``tf.function`` per epoch)
    counted as 10·B·D·H FLOPs per step (five B×D×H products), as a ratio of this
    machine's dense float32 matmul rate (the faster of a large square ``tf.matmul`` and
    ``numpy.matmul``, see matmul_reference.py) measured in the same run. Target ≥ 0.5.
(b) A fine-tuning epoch of the 3 × 512 DNN (batch 128) counted as 6·B·P FLOPs per step
    (forward + backward over P weights), with and without the per-epoch validation
    AUC-tag and checkpoint, as a ratio of the matmul rate. Targets ≥ 0.25 for the
    steps; the per-epoch extras cost < 25 % of an MTT-sized epoch.
(c) ``tagging_metrics`` on an MTT-sized test set (6,499 clips × 160 tags) against a
    scikit-learn loop (``roc_auc_score``/``average_precision_score`` per tag and per
    clip). Target ≥ 10× faster.

Timings are noisy on a shared machine: every number is the best of several repeats,
and the ratios compare measurements taken side by side.

  .venv/bin/python benchmarks/bench_song_dnn.py [--clips=14660] [--repeats=5]
"""

from __future__ import annotations

import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from deepbof_tf import metrics  # noqa: E402
from deepbof_tf import models  # noqa: E402
from deepbof_tf.config import DNNConfig, FinetuneConfig  # noqa: E402
from deepbof_tf.layers.relu_rbm import ReLURBM  # noqa: E402
from deepbof_tf.training import finetuning  # noqa: E402
from deepbof_tf.training.relu_rbm_trainer import ReLURBMSchedule  # noqa: E402
from deepbof_tf.training.relu_rbm_trainer import ReLURBMTrainer  # noqa: E402
from matmul_reference import DenseMatmulReference  # noqa: E402  (benchmarks/)
import result_line  # noqa: E402  (benchmarks/, the script's own folder)

FLAGS = flags.FLAGS
flags.DEFINE_integer("clips", 3000, "training clips of the timed epochs (MTT: 14,660)")
flags.DEFINE_integer("tags", 160, "tags (MTT: 160)")
flags.DEFINE_integer("repeats", 5, "timed repeats (best is reported)")
flags.DEFINE_integer("reference_size", 2048, "side of the square reference matmul")
flags.DEFINE_integer("metric_clips", 6499, "clips of the metrics benchmark")


def _best(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  n, d, h, t = FLAGS.clips, 1024, 512, FLAGS.tags
  matmul_reference = DenseMatmulReference(FLAGS.reference_size)
  reference = matmul_reference.measure_best(FLAGS.repeats)
  print(f"reference dense matmul: {reference / 1e9:.1f} GFLOP/s "
        f"({matmul_reference.summary()})")

  # (a) ReLU-RBM CD-1 epoch.
  data = rng.random((n, d)).astype(np.float32)
  rbm = ReLURBM(h, visible="binary", seed=0)
  trainer = ReLURBMTrainer(rbm, ReLURBMSchedule(epochs=1, batch_size=100), seed=0)
  trainer.fit(data, log_every=0)  # trace
  seconds = _best(lambda: trainer.fit(data, log_every=0), FLAGS.repeats)
  steps = n // 100
  rate = 10 * 100 * d * h * steps / seconds
  rbm_rate = rate
  print(f"(a) ReLU-RBM CD-1 epoch, {steps} steps: {seconds * 1e3:.0f} ms, "
        f"{rate / 1e9:.1f} GFLOP/s = {rate / reference:.2f} × matmul (target ≥ 0.5)")

  # (b) Fine-tuning epochs.
  labels = (rng.random((n, t)) < 0.05).astype(np.float32)
  valid_x, valid_y = data[: n // 9], labels[: n // 9]
  config = DNNConfig(num_hidden_layers=3, hidden_units=512)
  params = d * 512 + 512 * 512 * 2 + 512 * t
  steps = -(-n // 128)
  with tempfile.TemporaryDirectory() as work_dir:
    def run(with_extras, epochs):
      model = models.build_song_dnn(t, config, input_dim=d, seed=0)
      if with_extras:
        start = time.perf_counter()
        finetuning.finetune(model, data, labels, valid_x, valid_y,
                            FinetuneConfig(epochs=epochs, tensorboard=False),
                            work_dir, resume=False)
        return time.perf_counter() - start
      model.compile(optimizer=finetuning.make_optimizer(FinetuneConfig()),
                    loss=finetuning.tag_cross_entropy)
      dataset = finetuning.epoch_dataset(data, labels, 128, 0, 0, epochs).prefetch(2)
      start = time.perf_counter()
      model.fit(dataset, epochs=epochs, steps_per_epoch=steps, verbose=0, shuffle=False)
      return time.perf_counter() - start

    # Two runs of different lengths: the difference is the per-epoch cost (no tracing).
    plain = min(run(False, 4) - run(False, 1) for _ in range(max(1, FLAGS.repeats // 2))) / 3
    full = min(run(True, 4) - run(True, 1) for _ in range(max(1, FLAGS.repeats // 2))) / 3
  rate = 6 * 128 * params * steps / plain
  finetune_rate = rate
  print(f"(b) fine-tuning epoch, {steps} steps: {plain * 1e3:.0f} ms "
        f"({rate / reference:.2f} × matmul, target ≥ 0.25); with validation AUC-tag + "
        f"checkpoint: {full * 1e3:.0f} ms (+{100 * (full - plain) / plain:.0f} %)")

  # (c) Metrics.
  from sklearn.metrics import average_precision_score, roc_auc_score
  m = FLAGS.metric_clips
  y_true = (rng.random((m, t)) < 0.03).astype(np.float32)
  y_score = rng.random((m, t)).astype(np.float32)

  def sklearn_loop():
    for j in range(t):
      if 0 < y_true[:, j].sum() < m:
        roc_auc_score(y_true[:, j], y_score[:, j])
        average_precision_score(y_true[:, j], y_score[:, j])
    for i in range(m):
      if 0 < y_true[i].sum() < t:
        roc_auc_score(y_true[i], y_score[i])

  ours = _best(lambda: metrics.tagging_metrics(y_true, y_score), FLAGS.repeats)
  theirs = _best(sklearn_loop, 1)
  print(f"(c) tagging_metrics on {m}×{t}: {ours * 1e3:.0f} ms vs scikit-learn loop "
        f"{theirs * 1e3:.0f} ms = {theirs / ours:.1f}× faster (target ≥ 10×)")

  matmul = matmul_reference.name
  # The extras (validation AUC-tag on n/9 clips, a checkpoint) grow at most linearly
  # with the clip count, like the epoch: below 25 % on a smaller set implies below 25 %
  # on MTT's 14,660 clips; above it, only an MTT-sized run decides.
  extras_decided = n >= 14660 or full / plain < 1.25
  # The rate targets are for epochs of at least the default 30 steps (fewer steps
  # measure the per-epoch overhead) against the 2048² reference.
  rates_apply = n >= 3000 and FLAGS.reference_size == 2048
  result_line.emit("song_dnn", [
      result_line.measurement(
          "ReLU-RBM CD-1 epoch, 1024→512, B=100 (best)", rbm_rate / 1e9, "GFLOP/s",
          reference=matmul, reference_value=reference / 1e9, target=">= 0.5",
          target_on="ratio", applies=rates_apply),
      result_line.measurement(
          "fine-tuning epoch, 3x512 DNN, B=128, steps only (best)", finetune_rate / 1e9,
          "GFLOP/s", reference=matmul, reference_value=reference / 1e9, target=">= 0.25",
          target_on="ratio", applies=rates_apply),
      result_line.measurement(
          f"fine-tuning epoch with validation AUC-tag + checkpoint, {n} clips",
          full * 1e3, "ms", reference="the same epoch, steps only",
          reference_value=plain * 1e3, target="< 1.25", target_on="ratio",
          applies=extras_decided,
          note="" if extras_decided else "inconclusive below MTT size (14,660 clips)"),
      result_line.measurement(
          f"tagging_metrics on {m}x{t}", ours * 1e3, "ms",
          reference="scikit-learn loop (roc_auc_score, average_precision_score)",
          reference_value=theirs * 1e3, ratio=theirs / ours, ratio_of="reference / measured",
          target=">= 10", target_on="ratio", applies=(m, t) == (6499, 160)),
  ], config={"clips": n, "tags": t, "repeats": FLAGS.repeats,
             "reference_size": FLAGS.reference_size, "metric_clips": m})


if __name__ == "__main__":
  app.run(main)
