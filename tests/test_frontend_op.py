"""The fused front-end kernel (DeepbofLogMel) against the core-ops front end, and its export.

The reference is ``frontend.compute_features_batch``, itself tested against NumPy and
librosa in test_frontend.py. Tolerances: float32 rounding of a different summation
order, 2e-6 absolute on log-mel values of order 1 (measured: 6e-7) and 1e-5 relative
to the largest value.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import serving_fixtures as fx
from deepbof_tf import exported, frontend
from deepbof_tf.config import FrontendConfig
from deepbof_tf.native import build as native_build
from deepbof_tf.native import frontend_op
from serving import export_lib

_FLAGS = native_build.cpu_flags()
if _FLAGS is not None and not {"avx2", "fma"} <= _FLAGS:
  pytest.skip("the fused kernel needs AVX2 and FMA, which this CPU lacks",
              allow_module_level=True)
# On a CPU with AVX2 and FMA the kernel must build: a failure here fails the tests.


def _assert_matches_core_ops(waveforms, num_samples, config):
  expected, _, n_frames = frontend.compute_features_batch(waveforms, num_samples, config)
  expected = expected.numpy()
  got = frontend_op.log_mel_batch(waveforms, num_samples, config).numpy()
  assert got.shape == expected.shape
  scale = max(float(np.abs(expected).max()), 1e-3)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-6 * scale)
  assert np.abs(got - expected).max() <= 1e-5 * scale
  for b, n in enumerate(n_frames.numpy()):
    assert np.all(got[b, n:] == 0.0)  # past the clip: exactly zero, as the graph
  return got


def _clips(lengths, seed=0, sample_rate=fx.SAMPLE_RATE):
  total = max(lengths)
  batch = np.zeros([len(lengths), total], np.float32)
  for b, n in enumerate(lengths):
    signal = fx.music_like_signal(n / sample_rate + 0.01, seed + b, sample_rate)[:n]
    batch[b, :n] = signal
    batch[b, n:] = 5.0  # beyond num_samples: must be ignored
  return batch, np.asarray(lengths, np.int32)


def test_batch_of_mixed_lengths_matches_core_ops():
  hop = FrontendConfig().hop_length
  lengths = [3 * fx.SAMPLE_RATE, 0, 1, 100, hop, hop + 1, 2 * hop - 1, 1024,
             fx.SAMPLE_RATE // 2, 2 * fx.SAMPLE_RATE + 77]
  batch, num_samples = _clips(lengths)
  batch[1, :] = 0.0  # an empty clip of zeros
  batch[-1, :lengths[-1]] *= 300.0  # a loud clip
  got = _assert_matches_core_ops(batch, num_samples, FrontendConfig())
  assert np.abs(got[0]).max() > 0.1  # a real clip gives real features
  # Digital silence gives zeros, never NaN.
  silent = frontend_op.log_mel_batch(np.zeros([1, 22050], np.float32), [22050]).numpy()
  assert np.all(silent == 0.0)


@pytest.mark.parametrize("config", [
    FrontendConfig(symmetric_window=False),
    FrontendConfig(agc=False),
    FrontendConfig(sample_rate=16000, n_fft=512, hop_length=128, n_mels=64),
    FrontendConfig(hop_length=300),  # hop not a multiple of the SIMD width
    FrontendConfig(agc_t_scale=0.1, agc_f_scale=1.0, floor_ratio=1e-3),
], ids=["periodic-window", "no-agc", "16k-512-128-64", "hop300", "agc-scales"])
def test_other_configurations_match_core_ops(config):
  lengths = [2 * config.sample_rate, config.sample_rate // 3, 700]
  batch, num_samples = _clips(lengths, seed=3, sample_rate=config.sample_rate)
  _assert_matches_core_ops(batch, num_samples, config)


def test_each_clip_is_independent_of_its_batch_and_of_threads(tmp_path):
  batch, num_samples = _clips([fx.SAMPLE_RATE, 2 * fx.SAMPLE_RATE, 1500], seed=7)
  together = frontend_op.log_mel_batch(batch, num_samples).numpy()
  again = frontend_op.log_mel_batch(batch, num_samples).numpy()
  np.testing.assert_array_equal(together, again)
  for b in range(len(batch)):
    alone = frontend_op.log_mel_batch(batch[b:b + 1], num_samples[b:b + 1]).numpy()[0]
    np.testing.assert_array_equal(together[b], alone)  # bit-identical
  # The work is split into items of frames whose results do not depend on the split:
  # one intra-op thread gives the same bits (a fresh process: threads are fixed at start).
  script = (
      "import sys, numpy as np, tensorflow as tf\n"
      "tf.config.threading.set_intra_op_parallelism_threads(1)\n"
      "tf.config.threading.set_inter_op_parallelism_threads(1)\n"
      "from deepbof_tf.native import frontend_op\n"
      "x = np.load(sys.argv[1]); n = np.load(sys.argv[2])\n"
      "np.save(sys.argv[3], frontend_op.log_mel_batch(x, n).numpy())\n")
  paths = [str(tmp_path / name) for name in ("x.npy", "n.npy", "out.npy")]
  np.save(paths[0], batch)
  np.save(paths[1], num_samples)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  result = subprocess.run([sys.executable, "-c", script] + paths, capture_output=True,
                          text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  np.testing.assert_array_equal(np.load(paths[2]), together)


def test_nan_or_inf_samples_make_only_their_clip_nan():
  batch, num_samples = _clips([fx.SAMPLE_RATE, fx.SAMPLE_RATE, fx.SAMPLE_RATE], seed=11)
  batch[0, 5000] = np.nan
  batch[2, 100] = np.inf
  got = frontend_op.log_mel_batch(batch, num_samples).numpy()
  expected = frontend.compute_features_batch(batch, num_samples)[0].numpy()
  # As in the graph: the clip's maximum, so its floor and every feature, is NaN.
  assert np.all(np.isnan(got[0])) and np.all(np.isnan(expected[0]))
  assert np.all(np.isnan(got[2]))
  np.testing.assert_allclose(got[1], expected[1], rtol=1e-5, atol=2e-6)


def test_bad_inputs_are_invalid_argument():
  op = frontend_op.load()
  config = FrontendConfig()
  inputs = frontend.fused_frontend_inputs(config)
  args = dict(window=inputs.window, agc_analysis=inputs.agc_analysis,
              agc_synthesis=inputs.agc_synthesis, mel=inputs.mel,
              n_fft=1024, hop_length=512, floor_ratio=1e-4, alpha_log=-0.05,
              agc_epsilon=0.01, log_gain=10.0)
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="batch"):
    op.deepbof_log_mel(np.zeros([100], np.float32), np.zeros([1], np.int32), **args)
  with pytest.raises(tf.errors.InvalidArgumentError, match="num_samples"):
    op.deepbof_log_mel(np.zeros([2, 100], np.float32), np.zeros([3], np.int32), **args)
  with pytest.raises(tf.errors.InvalidArgumentError, match="window"):
    op.deepbof_log_mel(np.zeros([1, 100], np.float32), np.zeros([1], np.int32),
                       **dict(args, window=np.ones([512], np.float32)))


def test_agc_bands_that_miss_a_bin_are_refused(monkeypatch):
  monkeypatch.setattr(frontend, "_agc_covers_every_bin", lambda config: False)
  with pytest.raises(ValueError, match="cover every FFT bin"):
    frontend_op.log_mel_batch(np.zeros([1, 4096], np.float32), [4096])


def test_build_is_cached_and_rebuilt_when_its_stamp_changes():
  library = frontend_op.build()
  assert frontend_op.build() == library
  stamp = library + ".stamp"
  with open(stamp, encoding="utf-8") as f:
    good = f.read()
  built_at = os.path.getmtime(library)
  with open(stamp, "w", encoding="utf-8") as f:
    f.write("stale\n")
  assert frontend_op.build() == library
  assert os.path.getmtime(library) >= built_at
  with open(stamp, encoding="utf-8") as f:
    assert f.read() == good


_SUBPROCESS = r"""
import json, sys
import numpy as np
from deepbof_tf.exported import ExportedModel
model = ExportedModel(sys.argv[1])
x = np.load(sys.argv[2])
probabilities, embedding = model.tag_batch(list(x))
expected = np.load(sys.argv[3])
print(json.dumps({"ok": bool(np.allclose(probabilities, expected, rtol=1e-5, atol=1e-6))}))
"""


def test_fused_export_equals_the_core_ops_export(tmp_path_factory, tmp_path):
  shared = fx.shared_export(tmp_path_factory)
  fused_dir = export_lib.export(shared["model_dir"], str(tmp_path / "fused"),
                                fused_frontend=True)
  info = export_lib.read_export_info(fused_dir)
  assert info["fused_frontend"] is True
  assert export_lib.read_export_info(shared["version_dir"])["fused_frontend"] is False
  clips = np.stack([fx.music_like_signal(3.0, seed) for seed in range(3)])
  lengths = np.array([clips.shape[1], 2 * fx.SAMPLE_RATE, fx.SAMPLE_RATE], np.int32)
  core = tf.saved_model.load(shared["version_dir"]).signatures
  fused = exported.load_saved_model(fused_dir).signatures  # registers the op first
  for name, inputs in (("serving_default", dict(waveform=tf.constant(clips))),
                       ("serving_padded", dict(waveform=tf.constant(clips),
                                             num_samples=tf.constant(lengths)))):
    want, got = core[name](**inputs), fused[name](**inputs)
    for key in ("embedding", "probabilities"):
      scale = float(np.abs(want[key].numpy()).max())
      assert np.abs(got[key].numpy() - want[key].numpy()).max() <= 1e-5 * scale, (name, key)
  # A NaN sample is refused as by the core-ops export.
  bad = clips.copy()
  bad[1, 1000] = np.nan
  with pytest.raises(tf.errors.InvalidArgumentError, match="NaN"):
    fused["serving_default"](waveform=tf.constant(bad))
  # A fresh process: ExportedModel loads the kernel before the SavedModel.
  np.save(tmp_path / "inputs.npy", clips)
  np.save(tmp_path / "expected.npy",
          core["serving_default"](waveform=tf.constant(clips))["probabilities"].numpy())
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  result = subprocess.run(
      [sys.executable, "-c", _SUBPROCESS, fused_dir, str(tmp_path / "inputs.npy"),
       str(tmp_path / "expected.npy")], capture_output=True, text=True, env=env,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout.strip().splitlines()[-1])["ok"]
