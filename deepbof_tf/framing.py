"""How many STFT frames a clip has: the one definition, free of TensorFlow.

The authors' framing (``stft.m`` as ``getSpecgram.m`` calls it; docs/model.md#front-end)
pads ``n_fft/2`` zeros before and after the signal and zero-fills the tail to a whole
hop, so a clip of ``n >= 1`` samples has ``ceil(n / hop) + 1`` frames and an empty clip
one all-zero frame. Every count of frames in the package comes from here:
``frontend.frame_count`` (which also takes tensors, through :func:`frames_for_samples`),
``streaming.frame_count``, the export's shortest clip (:func:`min_samples_for_frames`)
and, in C++, the fused front-end kernel (``FrameCount`` in native/frontend_op.cc, tested
against this through the front end's output shapes).

Plain integer arithmetic: importable by the light command-line tools and Beam workers
that must not load TensorFlow.
"""

from __future__ import annotations

from deepbof_tf.config import FrontendConfig

_DEFAULT_CONFIG = FrontendConfig()


def frames_for_samples(num_samples, hop_length: int):
  """``ceil(num_samples / hop_length) + 1`` for non-negative integers of any kind.

  The formula itself, written with ``+``, ``//`` and ``-`` only so that it applies
  unchanged to Python ints, NumPy integer arrays and integer tensors; no validation.

  Args:
    num_samples: clip lengths (≥ 0).
    hop_length: the hop in samples (> 0).

  Returns:
    The frame counts, of the input's kind.
  """
  return (num_samples + (hop_length - 1)) // hop_length + 1


def frame_count(num_samples: int, config: FrontendConfig = _DEFAULT_CONFIG) -> int:
  """Number of STFT frames of a clip of ``num_samples`` samples (the authors' framing).

  Args:
    num_samples: a Python or NumPy integer ≥ 0.
    config: the front-end configuration (only ``hop_length`` is used).

  Returns:
    ``ceil(num_samples / hop_length) + 1`` (1 for an empty clip).

  Raises:
    ValueError: a negative length.
  """
  n = int(num_samples)
  if n < 0:
    raise ValueError(f"num_samples must be >= 0, got {n}")
  return int(frames_for_samples(n, int(config.hop_length)))


def min_samples_for_frames(frames: int, config: FrontendConfig = _DEFAULT_CONFIG) -> int:
  """The shortest non-empty clip with at least ``frames`` frames.

  ``frame_count(n) >= frames`` holds exactly for ``n >= (frames − 2)·hop + 1`` (from
  ``ceil(n / hop) + 1 >= frames``); at least one sample.

  Args:
    frames: the number of frames needed (e.g. one block of the model).
    config: the front-end configuration (only ``hop_length`` is used).

  Returns:
    The number of samples.
  """
  return max(1, (int(frames) - 2) * int(config.hop_length) + 1)
