"""The console tools keep TensorFlow's and Beam's start-up chatter off stderr by default."""

import os
import subprocess
import sys

import pytest

from deepbof_tf import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What TensorFlow 2.21 prints on a CPU-only machine when it starts (seen in the tools'
# logs before the filter), and lines that must survive it.
NOISE = [
    "I0000 00:00:1796162702.703579   23048 port.cc:153] oneDNN custom operations are on.",
    "I0000 00:00:1796162702.704496   23048 cudart_stub.cc:31] Could not find cuda drivers "
    "on your machine, GPU will not be used.",
    "E0000 00:00:1796162704.560379   23031 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild",
    "I1201 21:58:15.518832 140572575169408 native_type_compatibility.py:98] Converting "
    "string literal type hint to Any: \"int\"",
    "WARNING:root:apitools not found, and bigquery client libraries are not available",
    "INFO:apache_beam.runners.worker.sdk_worker:Control channel established.",
]
KEEP = [
    "I1201 21:58:15.518832 140572575169408 finetuning.py:117] epoch 1: loss 68.6 val AUC-tag",
    "deepbof-tag: error: song.mp3: file is empty (0 bytes)",
    "Traceback (most recent call last):",
    "W1201 22:03:12.035274 1403 preprocess_lib.py:31] a warning of ours",
]

_CHILD = r"""
import sys
sys.argv[0] = "deepbof-probe"
import trainer  # a tool package: installs the filter for deepbof-* processes
import tensorflow as tf  # its C++ start-up lines go to fd 2
tf.constant(1.0) + 1.0
print("KEPT: our own line", file=sys.stderr, flush=True)
"""


def test_noise_patterns():
  assert all(cli.is_noise(line) for line in NOISE)
  assert not any(cli.is_noise(line) for line in KEEP)


@pytest.mark.parametrize("verbose", [False, True])
def test_a_console_tool_starts_quietly_unless_asked(verbose):
  env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  env.pop("DEEPBOF_VERBOSE", None)
  if verbose:
    env["DEEPBOF_VERBOSE"] = "1"
  result = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "KEPT: our own line" in result.stderr
  noisy = [line for line in result.stderr.splitlines() if cli.is_noise(line)]
  if verbose:
    assert noisy, "with DEEPBOF_VERBOSE=1 TensorFlow's start-up lines are shown"
  else:
    assert noisy == [], noisy


def test_real_tool_failure_is_shown_without_noise(tmp_path):
  tool = cli.console_script("deepbof-export")
  result = subprocess.run([tool, f"--model_dir={tmp_path / 'missing'}",
                           f"--export_dir={tmp_path / 'export'}"], capture_output=True,
                          text=True, timeout=120,
                          env={k: v for k, v in os.environ.items()
                               if k not in ("TF_CPP_MIN_LOG_LEVEL", "DEEPBOF_VERBOSE")})
  assert result.returncode != 0
  assert "missing" in result.stderr  # the error names the model directory
  assert [line for line in result.stderr.splitlines() if cli.is_noise(line)] == []
