"""The one definition of the frame count (deepbof_tf.framing) and everything built on it."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from deepbof_tf import framing, frontend, streaming
from deepbof_tf.config import FrontendConfig

LENGTHS = [0, 1, 2, 255, 256, 257, 511, 512, 513, 1023, 1024, 1025, 3072, 3073, 22050,
           661500]


@pytest.mark.parametrize("hop", [512, 256, 1000])
def test_every_frame_count_is_the_framing_one(hop):
  config = FrontendConfig(hop_length=hop)
  expected = [framing.frame_count(n, config) for n in LENGTHS]
  assert expected == [-(-n // hop) + 1 for n in LENGTHS]  # ceil(n / hop) + 1
  assert [frontend.frame_count(n, config) for n in LENGTHS] == expected
  assert [frontend.frame_count(np.int64(n), config) for n in LENGTHS] == expected
  assert [streaming.frame_count(n, config) for n in LENGTHS] == expected
  # The tensor version applies the same formula.
  for dtype in (tf.int32, tf.int64):
    counts = frontend.frame_count(tf.constant(LENGTHS, dtype), config)
    assert counts.dtype == dtype
    assert counts.numpy().tolist() == expected
  assert framing.frames_for_samples(np.array(LENGTHS), hop).tolist() == expected


@pytest.mark.parametrize("n", [1, 100, 511, 512, 513, 2047, 5000])
@pytest.mark.parametrize("hop", [512, 256])
def test_the_stft_has_frame_count_frames(n, hop):
  config = FrontendConfig(hop_length=hop)
  magnitude = frontend.stft_magnitude(np.ones(n, np.float32), config)
  assert magnitude.shape[0] == framing.frame_count(n, config)
  log_mel, _, n_frames = frontend.compute_features_batch(
      np.ones([1, n], np.float32), np.array([n], np.int32), config)
  assert log_mel.shape[1] == int(n_frames[0]) == framing.frame_count(n, config)


@pytest.mark.parametrize("hop", [512, 300])
def test_min_samples_is_the_shortest_clip_with_enough_frames(hop):
  config = FrontendConfig(hop_length=hop)
  for frames in range(1, 20):
    shortest = framing.min_samples_for_frames(frames, config)
    assert shortest >= 1
    assert framing.frame_count(shortest, config) >= frames
    if shortest > 1:
      assert framing.frame_count(shortest - 1, config) < frames


def test_negative_lengths_are_refused():
  with pytest.raises(ValueError, match="num_samples must be >= 0"):
    framing.frame_count(-1)


def test_framing_and_signature_names_import_without_tensorflow():
  code = ("import sys\nfrom deepbof_tf import framing, signatures\n"
          "print(framing.frame_count(1000), signatures.DEFAULT_SIGNATURE,\n"
          "      'tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=120)
  assert out.stdout.split() == ["3", "serving_default", "False"], out.stderr[-2000:]
