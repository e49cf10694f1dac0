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
folder or, where that is not writable, ``~/.cache/deepbof``; a stamp with the source's
hash, the TensorFlow version and the compiler command triggers a rebuild when any of
them changes. It needs g++ and a CPU with AVX2 and FMA (every x86-64 server CPU of the
last decade).

  python -m deepbof_tf.native.frontend_op   # builds (if needed) and prints the path
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import tempfile
from typing import Optional

from deepbof_tf.config import FrontendConfig

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "frontend_op.cc")
_LIBRARY = "_frontend_op.so"
_REQUIRED_CPU_FLAGS = ("avx2", "fma")


class FusedFrontendUnavailable(RuntimeError):
  """The fused kernel cannot be built or loaded here (the message says why)."""


def _cpu_flags() -> Optional[set]:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("flags"):
          return set(line.split(":", 1)[1].split())
  except OSError:
    return None
  return None


def _stamp(tf_module) -> str:
  """What the build depends on: the source, the TensorFlow version, the command."""
  with open(_SOURCE, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  command = " ".join(_build_command(tf_module, "OUTPUT"))
  return f"{digest} tensorflow {tf_module.__version__}\n{command}\n"


def _build_command(tf_module, output: str):
  include = tf_module.sysconfig.get_include()
  # Hidden visibility: the library's own ducc0 instantiations (built for AVX2) must not
  # bind to, or be bound by, the ones TensorFlow's libraries export.
  return (["g++", "-std=c++17", "-shared", "-fPIC", "-O3", "-mavx2", "-mfma",
           "-ffp-contract=fast", "-fvisibility=hidden", "-fvisibility-inlines-hidden",
           "-w", _SOURCE, "-o", output,
           f"-I{os.path.join(include, 'external', 'ducc', 'src')}",
           f"-I{os.path.join(include, 'external', 'ducc', 'google')}"]
          + list(tf_module.sysconfig.get_compile_flags())
          + list(tf_module.sysconfig.get_link_flags()))


def _candidate_dirs():
  yield os.path.dirname(_SOURCE)
  yield os.path.join(os.path.expanduser("~"), ".cache", "deepbof")


def build(force: bool = False) -> str:
  """Compiles the kernel if no up-to-date build exists; returns the library's path.

  Raises:
    FusedFrontendUnavailable: no AVX2/FMA, no g++, or the compiler failed (its output
      is in the message).
  """
  import tensorflow as tf
  flags = _cpu_flags()
  if flags is not None and not all(flag in flags for flag in _REQUIRED_CPU_FLAGS):
    raise FusedFrontendUnavailable(
        "the fused front-end kernel needs a CPU with AVX2 and FMA; this one has "
        f"{'/'.join(f for f in _REQUIRED_CPU_FLAGS if f in flags) or 'neither'}")
  stamp = _stamp(tf)
  errors = []
  for directory in _candidate_dirs():
    library = os.path.join(directory, _LIBRARY)
    stamp_path = library + ".stamp"
    if not force and os.path.exists(library) and os.path.exists(stamp_path):
      with open(stamp_path, encoding="utf-8") as f:
        if f.read() == stamp:
          return library
    try:
      os.makedirs(directory, exist_ok=True)
      # Built under a temporary name and renamed: concurrent builders never load a
      # half-written library.
      fd, temporary = tempfile.mkstemp(prefix=".frontend_op-", suffix=".so", dir=directory)
      os.close(fd)
    except OSError as error:
      errors.append(f"{directory}: {error}")
      continue
    try:
      result = subprocess.run(_build_command(tf, temporary), capture_output=True, text=True,
                              check=False)
    except FileNotFoundError:
      os.unlink(temporary)
      raise FusedFrontendUnavailable("building the fused front-end kernel needs g++, "
                                     "which is not on PATH") from None
    if result.returncode != 0:
      os.unlink(temporary)
      raise FusedFrontendUnavailable(
          f"g++ failed to build {_SOURCE} (exit status {result.returncode}):\n"
          f"{result.stderr[-4000:]}")
    os.replace(temporary, library)
    stamp_temporary = f"{stamp_path}.{os.getpid()}.tmp"
    with open(stamp_temporary, "w", encoding="utf-8") as f:
      f.write(stamp)
    os.replace(stamp_temporary, stamp_path)
    return library
  raise FusedFrontendUnavailable("no writable folder for the fused front-end kernel: "
                                 + "; ".join(errors))


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
  if config.agc and not frontend._agc_covers_every_bin(config):
    raise ValueError("the fused front end needs AGC bands that cover every FFT bin; "
                     f"this configuration's do not ({config}); export without "
                     "--fused_frontend")
  analysis, synthesis = frontend._agc_matrices(config)
  return load().deepbof_log_mel(
      tf.convert_to_tensor(waveforms, tf.float32),
      tf.cast(tf.convert_to_tensor(num_samples), tf.int32),
      tf.constant(frontend.hann_window(config), tf.float32),
      tf.constant(analysis), tf.constant(synthesis),
      tf.constant(frontend.mel_filterbank(config.n_mels, 1.0, config), tf.float32),
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
