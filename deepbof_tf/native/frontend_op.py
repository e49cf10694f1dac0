"""The fused front-end kernel ``DeepbofLogMel`` (``frontend_op.cc``): build, load, call.

The kernel computes the log-mel spectrogram of ``frontend.compute_features_batch`` (the
one-shot front end: framing, window, FFT, magnitude, floor, AGC, mel, log) in one
TensorFlow CPU op, 2.5–3× faster than the core-ops graph on 2 cores
(docs/benchmarks.md). It is an option of the export (``deepbof-export
--fused_frontend``): a SavedModel that uses it runs wherever this library is loaded
(Python, the Beam catalog job, ``deepbof-tag``), but not in a stock TF Serving binary,
which would have to be built with the op. See serving/README.md#fused-front-end.

The library is compiled from ``frontend_op.cc`` against the installed TensorFlow's
headers the first time it is needed (``make install`` does it up front), into this
folder or, where that is not writable, ``~/.cache/deepbof``, by
``deepbof_tf.native.build`` (the one build mechanism of both native kernels; a stamp
triggers a rebuild when the source, TensorFlow or the command changes). It needs g++
and a CPU with AVX2 and FMA (every x86-64 server CPU of the last decade).

  python -m deepbof_tf.native.frontend_op   # builds (if needed) and prints the path
"""

from __future__ import annotations

import functools
import os
import sys

from deepbof_tf.config import FrontendConfig
from deepbof_tf.native import build as native_build

# Where and how the kernel is compiled: deepbof_tf/native/build.py.
FusedFrontendUnavailable = native_build.FusedFrontendUnavailable


def build(force: bool = False) -> str:
  """Compiles the kernel if no up-to-date build exists; returns the library's path.

  ``build.build_frontend_op`` (the build of both native kernels is described there).

  Args:
    force: rebuild even when the stamp says the build is current.

  Raises:
    FusedFrontendUnavailable: no AVX2/FMA, no g++, or the compiler failed (its output
      is in the message).
  """
  return native_build.build_frontend_op(force)


@functools.lru_cache(maxsize=1)
def load():
  """Builds (if needed) and loads the kernel; returns the op module (cached).

  Loading registers the ``DeepbofLogMel`` op with TensorFlow, which a SavedModel
  exported with ``--fused_frontend`` needs before ``tf.saved_model.load``.
  """
  import tensorflow as tf
  library = build()
  try:
    return tf.load_op_library(library)
  except tf.errors.NotFoundError as error:  # e.g. a symbol this TensorFlow lacks
    raise FusedFrontendUnavailable(f"cannot load {library}: {error.message}") from None


def available() -> bool:
  """True when the kernel can be built and loaded here."""
  try:
    load()
  except FusedFrontendUnavailable:
    return False
  return True


def log_mel_batch(waveforms, num_samples, config: FrontendConfig = FrontendConfig()):
  """``compute_features_batch(waveforms, num_samples, config)[0]`` by the fused kernel.

  Equal to the core-ops graph within float32 rounding (tested to 1e-5 relative).

  Args:
    waveforms: float32 ``[batch, samples]``; clip b is ``waveforms[b, :num_samples[b]]``.
    num_samples: int32 ``[batch]``.
    config: the front end; its AGC bands must cover every FFT bin (true of every
      configuration built from the default scales).

  Returns:
    float32 ``[batch, frame_count(samples), n_mels]``; frames past a clip's end are 0.

  Raises:
    ValueError: an AGC configuration whose bands leave some FFT bin uncovered (the core
      ops' replacement of non-positive envelope values is not in the kernel).
  """
  import tensorflow as tf
  from deepbof_tf import frontend
  inputs = frontend.fused_frontend_inputs(config)
  if config.agc and not inputs.agc_covers_every_bin:
    raise ValueError("the fused front end needs AGC bands that cover every FFT bin; "
                     f"this configuration's do not ({config}); export without "
                     "--fused_frontend")
  return load().deepbof_log_mel(
      tf.convert_to_tensor(waveforms, tf.float32),
      tf.cast(tf.convert_to_tensor(num_samples), tf.int32),
      tf.constant(inputs.window), tf.constant(inputs.agc_analysis),
      tf.constant(inputs.agc_synthesis), tf.constant(inputs.mel),
      n_fft=config.n_fft, hop_length=config.hop_length, floor_ratio=config.floor_ratio,
      alpha_log=-(1.0 / config.frame_rate) / config.agc_t_scale,
      agc_epsilon=config.agc_epsilon, log_gain=config.log_gain, agc=config.agc)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    print(build())
  except FusedFrontendUnavailable as error:
    print(f"fused front-end kernel not built: {error}", file=sys.stderr)
    sys.exit(1)
