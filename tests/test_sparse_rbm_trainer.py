"""The sparse RBM's CD-1 trainer and its native kernel against the authors' update
written out in NumPy here."""

import csv
import os

import numpy as np
import pytest
import tensorflow as tf

from deepbof_tf.config import SparseRBMConfig
from deepbof_tf.training import cd1_backend
from deepbof_tf.training import schedule
from deepbof_tf.training.sparse_rbm_trainer import SparseRBMTrainer



def _cpu_has_avx2_fma():
  try:
    with open("/proc/cpuinfo") as f:
      flags = next((line.split(":", 1)[1].split() for line in f
                    if line.startswith("flags")), [])
  except OSError:
    return False
  return "avx2" in flags and "fma" in flags


# The native kernel runs on x86-64 with AVX2 + FMA; elsewhere its tests cannot run.
# Where the CPU has them, test_native_kernel_is_built_and_chosen_by_default fails if
# the extension is missing, so these skips never hide a broken build.
requires_native = pytest.mark.skipif(
    not _cpu_has_avx2_fma(), reason="the native CD-1 kernel needs AVX2 and FMA")

# Every epoch-level test runs on both backends (see sparse_rbm_trainer's docstring).
BACKENDS = (pytest.param("native", marks=requires_native), "tensorflow")


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _numpy_cd1(state, v, u, lr, momentum, cfg):
  """The authors' CD-1 step for a Gaussian–binary RBM, in their [H, D] layout.

  state: dict of float64 arrays W [H, D], b [D], c [H], dW, db, dc, q.
  """
  s = {k: np.array(x, np.float64) for k, x in state.items()}
  v = np.asarray(v, np.float64).T  # [D, B] columns are examples, as in the code
  u = np.asarray(u, np.float64).T  # [H, B]
  n = v.shape[1]
  pos = _sigmoid(s["W"] @ v + s["c"][:, None])
  h = (pos > u).astype(np.float64)
  neg_v = s["W"].T @ h + s["b"][:, None]  # Gaussian mean, not sampled
  neg = _sigmoid(s["W"] @ neg_v + s["c"][:, None])
  s["q"] = cfg.sparsity_decay * s["q"] + (1 - cfg.sparsity_decay) * pos.mean(axis=1)
  sparsity = -(s["q"] - cfg.sparsity_target) * cfg.sparsity_gain * lr
  s["dW"] = momentum * s["dW"] + lr * ((pos @ v.T - neg @ neg_v.T) / n
                                       - cfg.weight_cost * s["W"])
  s["db"] = momentum * s["db"] + lr / n * (v.sum(1) - neg_v.sum(1))
  s["dc"] = momentum * s["dc"] + sparsity + lr / n * (pos.sum(1) - neg.sum(1))
  s["W"] += s["dW"]
  s["b"] += s["db"]
  s["c"] += s["dc"]
  error = np.mean(np.sum((v - neg_v) ** 2, axis=0))
  return s, error, pos.mean()


def _set_state(trainer, state):
  trainer.kernel.assign(state["W"].T.astype(np.float32))
  trainer.visible_bias.assign(state["b"].astype(np.float32))
  trainer.hidden_bias.assign(state["c"].astype(np.float32))
  trainer.kernel_increment.assign(state["dW"].T.astype(np.float32))
  trainer.visible_bias_increment.assign(state["db"].astype(np.float32))
  trainer.hidden_bias_increment.assign(state["dc"].astype(np.float32))
  trainer.running_activation.assign(state["q"].astype(np.float32))


def _assert_state(trainer, state, atol=1e-5):
  np.testing.assert_allclose(trainer.kernel.numpy(), state["W"].T, atol=atol, rtol=0)
  np.testing.assert_allclose(trainer.visible_bias.numpy(), state["b"], atol=atol, rtol=0)
  np.testing.assert_allclose(trainer.hidden_bias.numpy(), state["c"], atol=atol, rtol=0)
  np.testing.assert_allclose(trainer.kernel_increment.numpy(), state["dW"].T, atol=atol,
                             rtol=0)
  np.testing.assert_allclose(trainer.visible_bias_increment.numpy(), state["db"],
                             atol=atol, rtol=0)
  np.testing.assert_allclose(trainer.hidden_bias_increment.numpy(), state["dc"],
                             atol=atol, rtol=0)
  np.testing.assert_allclose(trainer.running_activation.numpy(), state["q"], atol=atol,
                             rtol=0)


def _random_state(rng, d, h):
  return {"W": 0.3 * rng.standard_normal((h, d)), "b": 0.1 * rng.standard_normal(d),
          "c": 0.5 * rng.standard_normal(h), "dW": 0.01 * rng.standard_normal((h, d)),
          "db": 0.01 * rng.standard_normal(d), "dc": 0.01 * rng.standard_normal(h),
          "q": rng.uniform(0.0, 0.2, h)}


def test_cd1_steps_match_numpy(rng):
  d, h, b = 12, 24, 16
  cfg = SparseRBMConfig(num_hidden=h, batch_size=b)
  trainer = SparseRBMTrainer(d, cfg)
  state = _random_state(rng, d, h)  # non-zero increments: momentum is exercised
  _set_state(trainer, state)
  for lr, momentum in ((0.007, 0.5), (0.005, 0.9)):
    v = rng.standard_normal((b, d)).astype(np.float32)
    u = rng.random((b, h)).astype(np.float32)
    error, activation = trainer.step(v, u, lr, momentum)
    state, ref_error, ref_activation = _numpy_cd1(state, v, u, lr, momentum, cfg)
    _assert_state(trainer, state)
    np.testing.assert_allclose(float(error), ref_error, rtol=1e-5)
    np.testing.assert_allclose(float(activation), ref_activation, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_epoch_is_the_sequence_of_steps_with_documented_draws(rng, backend):
  d, h, b, n_batches = 6, 10, 8, 3
  cfg = SparseRBMConfig(num_hidden=h, batch_size=b, epochs=2)
  trainer = SparseRBMTrainer(d, cfg, seed=7, backend=backend)
  state = {"W": trainer.kernel.numpy().T.astype(np.float64), "b": np.zeros(d),
           "c": np.zeros(h), "dW": np.zeros((h, d)), "db": np.zeros(d),
           "dc": np.zeros(h), "q": np.zeros(h)}
  blocks = rng.standard_normal((n_batches * b + 3, d)).astype(np.float32)  # 3 dropped
  batches = trainer.make_batches(blocks)
  assert tuple(batches.shape) == (n_batches, b, d)
  for epoch in range(2):
    lr = schedule.learning_rate(epoch, cfg.learning_rate, cfg.learning_rate_decay,
                                cfg.min_learning_rate)
    momentum = schedule.momentum(epoch, cfg.epochs, cfg.initial_momentum,
                                 cfg.final_momentum, cfg.momentum_switch_fraction)
    errors = []
    for i in range(n_batches):
      seed = tf.constant([trainer._sample_seed, epoch * n_batches + i], tf.int64)
      u = tf.random.stateless_uniform([b, h], seed=seed).numpy()
      state, error, _ = _numpy_cd1(state, blocks[i * b:(i + 1) * b], u, lr, momentum,
                                   cfg)
      errors.append(error)
    metrics = trainer.train_epoch(batches, epoch)
    assert metrics["learning_rate"] == pytest.approx(lr)
    assert metrics["momentum"] == momentum
    np.testing.assert_allclose(metrics["reconstruction_error"], np.mean(errors), rtol=1e-5)
  _assert_state(trainer, state)


def test_schedule_matches_the_authors_recurrence():
  lr, rates = 0.007, []
  for _ in range(300):
    rates.append(lr)
    lr = max(0.003, lr * 0.99)
  np.testing.assert_allclose(schedule.learning_rates(300, 0.007, 0.99, 0.003), rates,
                             rtol=1e-12)
  momenta = schedule.momenta(300, 0.5, 0.9, 0.2)
  # The code switches when its 1-based epoch exceeds maxEpoch/5 = 60.
  assert momenta[59] == 0.5 and momenta[60] == 0.9
  # 7 epochs: 7/5 = 1.4, so the 1-based epoch 2 (index 1) already uses 0.9.
  assert schedule.momenta(7, switch_fraction=0.2) == [0.5] + [0.9] * 6


def _sparse_sources(rng, n, d, sources=40):
  basis = rng.standard_normal((sources, d))
  codes = (rng.random((n, sources)) < 0.05) * rng.random((n, sources)) * 3
  x = codes @ basis + 0.3 * rng.standard_normal((n, d))
  return ((x - x.mean(0)) / x.std(0)).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparsity_control_reaches_target(rng, backend):
  cfg = SparseRBMConfig(num_hidden=64, epochs=20, seed=3)
  x = _sparse_sources(rng, 20000, 16)
  history = SparseRBMTrainer(16, cfg, backend=backend).fit(x)
  first, last = history[0], history[-1]
  assert first["mean_activation"] > 0.2  # starts near σ(0) = 0.5
  assert abs(last["mean_activation"] - 0.02) <= 0.3 * 0.02
  assert abs(last["running_activation"] - 0.02) <= 0.3 * 0.02
  assert last["reconstruction_error"] < 0.7 * first["reconstruction_error"]
  assert [r["epoch"] for r in history] == list(range(20))


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_after_kill_gives_identical_weights(rng, tmp_path, backend):
  cfg = SparseRBMConfig(num_hidden=32, batch_size=50, epochs=5, seed=11)
  x = _sparse_sources(rng, 1000, 10)
  reference = SparseRBMTrainer(10, cfg, backend=backend)
  reference_history = reference.fit(x)

  class Killed(Exception):
    pass

  def kill_after_two(epoch, _):
    if epoch == 1:
      raise Killed()

  directory = os.path.join(tmp_path, "ckpt")
  with pytest.raises(Killed):
    SparseRBMTrainer(10, cfg, backend=backend).fit(
        x, checkpoint_dir=directory, history_dir=directory, on_epoch_end=kill_after_two)
  resumed = SparseRBMTrainer(10, cfg, backend=backend)  # as a new process would start
  seen = []
  history = resumed.fit(x, checkpoint_dir=directory, history_dir=directory,
                        tensorboard_dir=os.path.join(tmp_path, "tb"),
                        on_epoch_end=lambda e, m: seen.append(e))
  assert seen == [2, 3, 4]
  for name in ("kernel", "hidden_bias", "visible_bias", "kernel_increment",
               "running_activation"):
    np.testing.assert_array_equal(getattr(resumed, name).numpy(),
                                  getattr(reference, name).numpy(), err_msg=name)
  assert len(history) == 5
  for ours, theirs in zip(history, reference_history):
    assert ours["reconstruction_error"] == theirs["reconstruction_error"]
  with open(os.path.join(directory, "training_log.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]
  assert tf.io.gfile.glob(os.path.join(tmp_path, "tb", "events.*"))


def test_too_few_blocks_is_an_error():
  trainer = SparseRBMTrainer(4, SparseRBMConfig(num_hidden=3, batch_size=100))
  with pytest.raises(ValueError, match="fewer than one batch"):
    trainer.make_batches(np.zeros((99, 4), np.float32))
  with pytest.raises(ValueError, match=r"\[N, 4\]"):
    trainer.make_batches(np.zeros((200, 5), np.float32))


# -- the native backend -------------------------------------------------------------
@requires_native
def test_native_kernel_is_built_and_chosen_by_default():
  # setup.py builds the extension as optional; on a CPU that can run it, a missing
  # build is a broken install and must fail here rather than slow training silently.
  assert cd1_backend.native_available()
  assert SparseRBMTrainer(4, SparseRBMConfig(num_hidden=3)).backend == "native"


def test_backend_names_are_checked():
  with pytest.raises(ValueError, match="backend must be one of"):
    SparseRBMTrainer(4, SparseRBMConfig(num_hidden=3), backend="cuda")
  assert SparseRBMTrainer(4, SparseRBMConfig(num_hidden=3),
                          backend="tensorflow").backend == "tensorflow"


@requires_native
@pytest.mark.parametrize("seed,start,count", [
    ((7, 0), 0, 1), ((7, 0), 0, 4 * 1024), ((2**62 + 5, 123456), 3, 1000),
    ((1, 2**40), 4093, 77), ((123, 99), 32 * 100 + 1, 4000)])
def test_native_draws_are_tensorflows_stateless_uniforms(seed, start, count):
  total = start + count
  reference = tf.random.stateless_uniform([total], seed=tf.constant(seed, tf.int64))
  out = np.empty(count, np.float32)
  cd1_backend._cd1.uniform(seed[0], seed[1], start, count, out)
  np.testing.assert_array_equal(out, reference.numpy()[start:])  # bit-identical


def _set_and_run(trainer, state, batches, epoch):
  _set_state(trainer, state)
  return trainer.train_epoch(batches, epoch)


@requires_native
@pytest.mark.parametrize("d,h,b,n_batches", [(33, 300, 7, 3), (150, 1024, 100, 2)])
def test_native_epoch_matches_numpy_and_tensorflow(rng, d, h, b, n_batches):
  """Shapes off the kernel's tiles (6×16 panels, 128-unit chunks) and the paper's."""
  cfg = SparseRBMConfig(num_hidden=h, batch_size=b, epochs=3)
  state = _random_state(rng, d, h)
  state["W"] *= 0.3
  blocks = rng.standard_normal((n_batches * b, d)).astype(np.float32)
  native = SparseRBMTrainer(d, cfg, seed=5, backend="native", num_threads=2)
  reference = SparseRBMTrainer(d, cfg, seed=5, backend="tensorflow")
  batches = native.make_batches(blocks)
  epoch = 1
  lr = schedule.learning_rate(epoch, cfg.learning_rate, cfg.learning_rate_decay,
                              cfg.min_learning_rate)
  momentum = schedule.momentum(epoch, cfg.epochs, cfg.initial_momentum,
                               cfg.final_momentum, cfg.momentum_switch_fraction)
  expected, errors, activations = state, [], []
  for i in range(n_batches):
    seed = tf.constant([native._sample_seed, epoch * n_batches + i], tf.int64)
    u = tf.random.stateless_uniform([b, h], seed=seed).numpy()
    expected, error, activation = _numpy_cd1(expected, blocks[i * b:(i + 1) * b], u, lr,
                                             momentum, cfg)
    errors.append(error)
    activations.append(activation)
  metrics = _set_and_run(native, state, batches, epoch)
  _assert_state(native, expected)
  np.testing.assert_allclose(metrics["reconstruction_error"], np.mean(errors), rtol=1e-5)
  np.testing.assert_allclose(metrics["mean_activation"], np.mean(activations), atol=1e-6)
  reference_metrics = _set_and_run(reference, state, batches, epoch)
  for name in SparseRBMTrainer._NATIVE_STATE:
    np.testing.assert_allclose(getattr(native, name).numpy(),
                               getattr(reference, name).numpy(), atol=1e-6, rtol=0,
                               err_msg=name)
  np.testing.assert_allclose(metrics["reconstruction_error"],
                             reference_metrics["reconstruction_error"], rtol=1e-6)


@requires_native
def test_native_results_do_not_depend_on_the_thread_count(rng):
  d, h, b, n_batches = 20, 300, 10, 4  # 300 units = 3 chunks of 128, 128, 44
  cfg = SparseRBMConfig(num_hidden=h, batch_size=b, epochs=2)
  blocks = rng.standard_normal((n_batches * b, d)).astype(np.float32)
  results = []
  for threads in (1, 2, 3, 8):
    trainer = SparseRBMTrainer(d, cfg, seed=9, backend="native", num_threads=threads)
    history = trainer.fit(blocks)
    results.append(([getattr(trainer, n).numpy() for n in trainer._NATIVE_STATE],
                    [r["reconstruction_error"] for r in history]))
  for arrays, errors in results[1:]:
    for ours, first in zip(arrays, results[0][0]):
      np.testing.assert_array_equal(ours, first)
    assert errors == results[0][1]


@requires_native
def test_native_rejects_mismatched_buffers():
  state = [np.zeros(n, np.float32) for n in (4 * 3, 3, 4, 4 * 3, 3, 4, 3)]
  with pytest.raises(ValueError, match="kernel has 44 bytes"):
    cd1_backend._cd1.epoch(
        np.zeros((1, 2, 4), np.float32), np.zeros(11, np.float32), *state[1:],
        num_batches=1, batch_size=2, num_visible=4, num_hidden=3, seed=1, step_offset=0,
        learning_rate=0.1, momentum=0.5, weight_cost=0.0, sparsity_decay=0.9,
        sparsity_gain=3.0, sparsity_target=0.02, num_threads=1)


def _cpu_has(flag):
  try:
    with open("/proc/cpuinfo") as f:
      return flag in next((line.split(":", 1)[1].split() for line in f
                           if line.startswith("flags")), [])
  except OSError:
    return False


@requires_native
def test_native_isa_is_chosen_by_cpu_and_can_be_forced(monkeypatch):
  monkeypatch.delenv("DEEPBOF_CD1_ISA", raising=False)
  assert cd1_backend._cd1.isa() == ("avx512" if _cpu_has("avx512f") else "avx2")
  monkeypatch.setenv("DEEPBOF_CD1_ISA", "avx2")
  assert cd1_backend._cd1.isa() == "avx2"
  monkeypatch.setenv("DEEPBOF_CD1_ISA", "sse2")
  with pytest.raises(ValueError, match="must be auto, avx2 or avx512"):
    cd1_backend._cd1.isa()


@requires_native
@pytest.mark.skipif(not _cpu_has("avx512f"), reason="this CPU has no AVX-512F: only the "
                    "AVX2 tile kernel can run here")
@pytest.mark.parametrize("d,h,b,n_batches,threads", [(33, 300, 7, 3, 2), (150, 1024, 100, 2, 2),
                                                     (20, 47, 5, 2, 1)])
def test_avx512_and_avx2_tile_kernels_give_bit_identical_epochs(rng, monkeypatch, d, h, b,
                                                                n_batches, threads):
  """Every test of the native backend runs on the AVX-512 path here; this extends them
  to the AVX2 path: both paths compute each output with the same FMAs in the same order."""
  cfg = SparseRBMConfig(num_hidden=h, batch_size=b, epochs=2)
  blocks = rng.standard_normal((n_batches * b, d)).astype(np.float32)
  results = {}
  for isa in ("avx2", "avx512"):
    monkeypatch.setenv("DEEPBOF_CD1_ISA", isa)
    assert cd1_backend._cd1.isa() == isa
    trainer = SparseRBMTrainer(d, cfg, seed=3, backend="native", num_threads=threads)
    history = trainer.fit(blocks)
    results[isa] = ([getattr(trainer, n).numpy() for n in trainer._NATIVE_STATE],
                    [r["reconstruction_error"] for r in history])
  for ours, theirs in zip(results["avx512"][0], results["avx2"][0]):
    np.testing.assert_array_equal(ours, theirs)
  assert results["avx512"][1] == results["avx2"][1]


ISAS = ("avx2", pytest.param("avx512", marks=pytest.mark.skipif(
    not _cpu_has("avx512f"), reason="this CPU has no AVX-512F")))


@requires_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("seed,start,count", [
    ((7, 0), 0, 4 * 1024 + 3), ((2**62 + 5, 123456), 5, 3000), ((123, 99), 64 * 7 + 2, 777)])
def test_native_draws_are_tensorflows_on_either_path(monkeypatch, isa, seed, start, count):
  """The 16-block AVX-512 Philox, the 8-block AVX2 one and the scalar tails."""
  monkeypatch.setenv("DEEPBOF_CD1_ISA", isa)
  reference = tf.random.stateless_uniform([start + count], seed=tf.constant(seed, tf.int64))
  out = np.empty(count, np.float32)
  cd1_backend._cd1.uniform(seed[0], seed[1], start, count, out)
  np.testing.assert_array_equal(out, reference.numpy()[start:])


@requires_native
@pytest.mark.skipif(not _cpu_has("avx512f"), reason="this CPU has no AVX-512F")
def test_native_draws_agree_across_paths_where_the_counter_carries(monkeypatch):
  """Far into the stream (past 2³² blocks, beyond what TF can materialize here) the
  vector paths must hand over to the scalar one around the carry, and agree."""
  rng = np.random.default_rng(4)
  starts = [4 * (2**32 - 40) + 1, 4 * (2**32 - 8), 2**40 + 3] + list(
      rng.integers(0, 2**45, 5))
  for start in starts:
    out = {}
    for isa in ("avx2", "avx512"):
      monkeypatch.setenv("DEEPBOF_CD1_ISA", isa)
      out[isa] = np.empty(1000, np.float32)
      cd1_backend._cd1.uniform(11, 2**33 + 1, int(start), 1000, out[isa])
    np.testing.assert_array_equal(out["avx512"], out["avx2"], err_msg=str(start))


def _logistic_sweep():
  tiny = np.finfo(np.float32).tiny
  special = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40, tiny, -tiny, 1e-30, -1e-30,
                      87.3, -87.3, 87.4, -87.4, 88.3, -88.3, 88.4, -88.4, 100.0, -100.0,
                      1e30, -1e30, np.inf, -np.inf, 0.5 * np.log(2), -0.5 * np.log(2)],
                     np.float32)
  sweep = np.linspace(-120, 120, 200_003, dtype=np.float32)
  noise = np.random.default_rng(2).standard_normal(50_001).astype(np.float32) * 8
  return np.concatenate([special, sweep, noise])  # odd length: the masked tail too


@requires_native
@pytest.mark.parametrize("isa", ISAS)
def test_native_logistic_is_accurate(monkeypatch, isa):
  monkeypatch.setenv("DEEPBOF_CD1_ISA", isa)
  x = _logistic_sweep()
  out = np.empty_like(x)
  cd1_backend._cd1.logistic(x, out)
  with np.errstate(over="ignore"):
    exact = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
  # ≤ a few ulp; below e^-87.3 the argument is clamped, so only an absolute bound.
  np.testing.assert_allclose(out, exact, rtol=5e-7, atol=1e-37)


@requires_native
@pytest.mark.skipif(not _cpu_has("avx512f"), reason="this CPU has no AVX-512F")
def test_native_logistic_is_bit_identical_across_paths(monkeypatch):
  x = np.concatenate([_logistic_sweep(), np.array([np.nan, -np.nan], np.float32)])
  out = {}
  for isa in ("avx2", "avx512"):
    monkeypatch.setenv("DEEPBOF_CD1_ISA", isa)
    out[isa] = np.empty_like(x)
    cd1_backend._cd1.logistic(x, out[isa])
  np.testing.assert_array_equal(out["avx512"].view(np.uint32), out["avx2"].view(np.uint32))


def _philox10(counter, key):
  """Philox4x32-10 on arrays of counters ([n, 4] uint32) with one key, in NumPy."""
  c = [counter[:, i].astype(np.uint64) for i in range(4)]
  k0, k1 = np.uint64(key[0]), np.uint64(key[1])
  mask = np.uint64(0xFFFFFFFF)
  for _ in range(10):
    p0 = np.uint64(0xD2511F53) * c[0]
    p1 = np.uint64(0xCD9E8D57) * c[2]
    c = [((p1 >> np.uint64(32)) ^ c[1] ^ k0) & mask, p1 & mask,
         ((p0 >> np.uint64(32)) ^ c[3] ^ k1) & mask, p0 & mask]
    k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
  return np.stack(c, axis=1).astype(np.uint32)


def _stateless_uniform_reference(seed0, seed1, start, count):
  """TF's stateless uniform stream from scratch: the seed scrambled into key and counter
  by one Philox call under a fixed key, then block b = Philox(counter + b)."""
  words = np.array([[seed0 & 0xFFFFFFFF, seed0 >> 32, seed1 & 0xFFFFFFFF, seed1 >> 32]],
                   np.uint32)
  mix = _philox10(words, (0x3EC8F720, 0x02461E29))[0]
  key = (int(mix[0]), int(mix[1]))
  blocks = np.arange(start // 4, (start + count + 3) // 4, dtype=np.uint64)
  high = (int(mix[3]) << 32) | int(mix[2])
  carry = blocks >> np.uint64(32)  # counter[0..1] start at 0: low word = block, carry up
  counters = np.stack([(blocks & np.uint64(0xFFFFFFFF)).astype(np.uint32),
                       carry.astype(np.uint32),
                       np.full(blocks.shape, high & 0xFFFFFFFF, np.uint32),
                       np.full(blocks.shape, high >> 32, np.uint32)], axis=1)
  bits = _philox10(counters, key).reshape(-1)[start % 4:start % 4 + count]
  return ((bits & 0x7FFFFF) | 0x3F800000).view(np.float32) - np.float32(1.0)


@requires_native
@pytest.mark.parametrize("isa", ISAS)
def test_native_draws_equal_a_numpy_philox_on_random_counters(monkeypatch, isa):
  """Random seeds (so random keys and high counter words) and random positions far into
  the stream, some across the carry out of the low counter word, against a NumPy
  transcription of Philox4x32-10 (itself checked against TF's stream below)."""
  monkeypatch.setenv("DEEPBOF_CD1_ISA", isa)
  rng = np.random.default_rng(8)
  cases = [(int(rng.integers(0, 2**40)), int(rng.integers(1, 700))) for _ in range(12)]
  cases += [(4 * 2**32 - 301, 700), (4 * (2**32 - 16) + 2, 300)]  # across the carry
  for start, count in cases:
    seed0, seed1 = (int(x) for x in rng.integers(0, 2**63, 2, dtype=np.uint64))
    out = np.empty(count, np.float32)
    cd1_backend._cd1.uniform(seed0, seed1, start, count, out)
    np.testing.assert_array_equal(out, _stateless_uniform_reference(seed0, seed1, start,
                                                                    count))


def test_numpy_philox_reference_is_tensorflows_stream():
  reference = tf.random.stateless_uniform([4100], seed=tf.constant((5, 2**40 + 3), tf.int64))
  np.testing.assert_array_equal(_stateless_uniform_reference(5, 2**40 + 3, 3, 4097),
                                reference.numpy()[3:])
