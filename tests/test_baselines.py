"""Tests of the MFCC + logistic-regression baseline (deepbof_tools.baseline.mfcc)."""

import json

import librosa
import numpy as np
import pytest
import soundfile as sf

from deepbof_tf import metrics
from deepbof_tf.data import manifests
from deepbof_tools.baseline import mfcc as baselines


def test_separable_features_give_auc_near_one(rng):
  x = rng.standard_normal((600, 8))
  y = np.stack([(x[:, k] + 0.1 * rng.standard_normal(600)) > 0 for k in range(4)], axis=1)
  scores = baselines.logistic_regression_baseline(x[:400], y[:400], x[400:])
  result = metrics.tagging_metrics(y[400:], scores, ["a", "b", "c", "d"])
  assert result["num_tags_excluded"] == 0
  assert result["auc_tag"] > 0.97
  assert min(v["roc_auc"] for v in result["per_tag"].values()) > 0.95


def test_random_features_give_auc_near_half(rng):
  x = rng.standard_normal((3000, 8))
  y = rng.random((3000, 4)) < 0.3
  scores = baselines.logistic_regression_baseline(x[:1000], y[:1000], x[1000:])
  result = metrics.tagging_metrics(y[1000:], scores, ["a", "b", "c", "d"])
  assert abs(result["auc_tag"] - 0.5) < 0.04
  assert all(abs(v["roc_auc"] - 0.5) < 0.07 for v in result["per_tag"].values())


def test_single_class_tags_get_constant_scores_and_are_excluded(rng):
  x = rng.standard_normal((200, 5))
  y = np.zeros((200, 3))
  y[:, 0] = x[:, 0] > 0
  y[:, 2] = 1.0
  scores = baselines.logistic_regression_baseline(x[:100], y[:100], x[100:])
  assert np.all(scores[:, 1] == 0.0) and np.all(scores[:, 2] == 1.0)
  result = metrics.tagging_metrics(y[100:], scores, ["a", "b", "c"])
  assert result["num_tags_excluded"] == 2
  assert np.isnan(result["per_tag"]["b"]["roc_auc"])
  assert np.isnan(result["per_tag"]["c"]["roc_auc"])
  assert result["auc_tag"] == result["per_tag"]["a"]["roc_auc"]


def test_baseline_is_seeded_and_deterministic(rng):
  x = rng.standard_normal((300, 6))
  y = (x[:, :2] + rng.standard_normal((300, 2))) > 0
  a = baselines.logistic_regression_baseline(x[:200], y[:200], x[200:], seed=1)
  b = baselines.logistic_regression_baseline(x[:200], y[:200], x[200:], seed=1)
  np.testing.assert_array_equal(a, b)


def test_shape_errors_name_the_problem(rng):
  with pytest.raises(ValueError, match="shape mismatch"):
    baselines.logistic_regression_baseline(np.zeros((5, 3)), np.zeros((4, 2)), np.zeros((2, 3)))
  with pytest.raises(ValueError, match="mono"):
    baselines.mfcc_statistics(np.zeros((2, 100)), 22050)


def test_mfcc_statistics_against_librosa(rng):
  rate = 22050
  t = np.arange(rate * 2) / rate
  y = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
  features = baselines.mfcc_statistics(y, rate)
  assert features.shape == (80,) and features.dtype == np.float32
  mfcc = librosa.feature.mfcc(y=y, sr=rate, n_mfcc=20)
  delta = librosa.feature.delta(mfcc, width=9)
  np.testing.assert_allclose(features[:20], mfcc.mean(axis=1), rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(features[20:40], mfcc.std(axis=1), rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(features[40:60], delta.mean(axis=1), rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(features[60:], delta.std(axis=1), rtol=1e-4, atol=1e-3)


def test_mfcc_statistics_do_not_depend_much_on_the_stored_rate(rng):
  # The same band-limited content stored at 44.1 kHz and 16 kHz: resampled to a common
  # rate first, so the MFCC means agree closely (the mel bands above 8 kHz differ).
  t44 = np.arange(44100 * 2) / 44100
  t16 = np.arange(16000 * 2) / 16000
  tone = lambda t: 0.3 * np.sin(2 * np.pi * 330 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t)
  a = baselines.mfcc_statistics(tone(t44).astype(np.float32), 44100)
  b = baselines.mfcc_statistics(tone(t16).astype(np.float32), 16000)
  assert np.abs(a[:5] - b[:5]).max() < 0.1 * np.abs(a[:5]).max()


def test_run_baseline_on_a_tiny_audible_dataset(tmp_path, rng):
  # Two tags with different sounds: "low" is a 110 Hz tone, "noisy" is white noise.
  rate = 16000
  t = np.arange(rate) / rate
  entries = []
  for i in range(40):
    low, noisy = bool(i % 2), bool((i // 2) % 2)
    y = 0.01 * rng.standard_normal(rate)
    y += 0.3 * np.sin(2 * np.pi * (110 if low else 1760) * t)
    if noisy:
      y += 0.2 * rng.standard_normal(rate)
    name = f"clip{i}.wav"
    sf.write(tmp_path / name, y.astype(np.float32), rate)
    tags = tuple(tag for tag, on in (("low", low), ("noisy", noisy)) if on)
    entries.append(manifests.ManifestEntry(str(i), name, "train" if i < 28 else "test", tags))
  manifest = manifests.Manifest(entries=entries, tags=["low", "noisy"])
  result = baselines.run_baseline(manifest, str(tmp_path))
  assert result.n_train == 28 and result.n_eval == 12
  assert result.metrics["num_tags_excluded"] == 0
  assert result.metrics["auc_tag"] > 0.95
  assert result.metrics["pr_auc"] > 0.9
  # The same through a manifest file (path,split,tags), as deepbof-demo calls it.
  with open(tmp_path / "manifest.csv", "w") as f:
    f.write("path,split,tags\n")
    for e in entries:
      f.write(f"{e.path},{e.split},{';'.join(e.tags)}\n")
  summary = baselines.run_mfcc_baseline(str(tmp_path / "manifest.csv"), str(tmp_path),
                                        num_workers=1)
  assert summary["auc_tag"] == pytest.approx(result.metrics["auc_tag"])
  assert summary["pr_auc"] == pytest.approx(result.metrics["pr_auc"])
  assert summary["p_at_3"] == pytest.approx(result.metrics["p_at_3"])
  assert summary["n_train"] == 28 and summary["n_eval"] == 12
  assert set(summary["per_tag"]) == {"low", "noisy"}
  # ... and through the deepbof-baseline command (the baseline step deepbof-demo runs).
  import subprocess
  from deepbof_tf import cli
  out = tmp_path / "baseline.json"
  result = subprocess.run(
      [cli.console_script("deepbof-baseline"), f"--manifest={tmp_path / 'manifest.csv'}",
       f"--audio_root={tmp_path}", "--num_workers=1", "--top_n_tags=0", f"--output={out}"],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.splitlines()[0].startswith("auc_tag\tauc_clip")
  written = json.loads(out.read_text())
  assert written["auc_tag"] == pytest.approx(summary["auc_tag"])
  assert written["p_at_3"] == pytest.approx(summary["p_at_3"])


def test_both_decoders_give_the_same_features_on_a_wav(tmp_path, rng):
  rate = 22050
  t = np.arange(rate) / rate
  y = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.02 * rng.standard_normal(rate)).astype(np.float32)
  path = str(tmp_path / "a.wav")
  sf.write(path, y, rate, subtype="FLOAT")
  a = baselines.mfcc_statistics(*baselines.decode_with_soundfile(path))
  b = baselines.mfcc_statistics(*baselines.decode_with_project(path))
  np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
