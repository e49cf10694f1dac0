"""Seeds and generators derived from a run's seed: the same in every process.

Every random stream of deepbof is a function of the run's seed and of a few values that
name its purpose (a stage, a clip id, a layer, an epoch), never of global or process
state, so a result does not depend on the process, the Beam runner or the order of
processing. These are the recipes, in plain Python and NumPy (no TensorFlow, so the
data pipeline can use them):

* :func:`digest` / :func:`digest_int`: a hash of the parts (their ``str``, joined by a
  separator). Sampling keys and per-clip generators (``deepbof_tf.sampling``) and the
  hash split of a CSV manifest (``deepbof_tf.data.manifests``).
* :func:`stable_seed`: a 63-bit seed from a SHA-256 of the parts: the sparse RBM's
  initial weights and CD-1 draws, and the permutation of the blocks it trains on
  (docs/model.md#sparse-rbm).
* :func:`generator`: a NumPy generator from one integer or a tuple of integers (NumPy's
  ``SeedSequence``): e.g. the per-epoch shuffle of a ReLU RBM, seeded by
  ``(seed, layer, epoch)``.

Each recipe is pinned by the numbers it gives (tests/test_seeds.py): changing one
changes the blocks, splits or weights of every run.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

ALGORITHMS = ("blake2b", "sha256")


def digest(*parts: Any, size: int = 8, algorithm: str = "blake2b",
           separator: str = "\x1f") -> bytes:
  """A ``size``-byte hash of ``separator.join(str(p) for p in parts)`` (UTF-8).

  ``blake2b`` computes a digest of ``size`` bytes (BLAKE2b's own digest size, 1 to 64);
  ``sha256`` keeps the first ``size`` bytes (1 to 32) of the SHA-256 digest.

  Args:
    *parts: values whose ``str`` identifies the stream (seed, purpose, ids...).
    size: digest bytes.
    algorithm: ``blake2b`` or ``sha256``.
    separator: joins the parts.
  """
  text = separator.join(str(p) for p in parts).encode("utf-8")
  if algorithm == "blake2b":
    return hashlib.blake2b(text, digest_size=size).digest()
  if algorithm == "sha256":
    if not 1 <= size <= 32:
      raise ValueError(f"a sha256 digest has 1 to 32 bytes, got size={size}")
    return hashlib.sha256(text).digest()[:size]
  raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


def digest_int(*parts: Any, size: int = 8, algorithm: str = "blake2b",
               separator: str = "\x1f", byteorder: str = "big") -> int:
  """:func:`digest` read as an unsigned integer of ``8·size`` bits.

  Args:
    *parts: values whose ``str`` identifies the stream.
    size: digest bytes.
    algorithm: ``blake2b`` or ``sha256``.
    separator: joins the parts.
    byteorder: ``big`` or ``little``.
  """
  return int.from_bytes(digest(*parts, size=size, algorithm=algorithm,
                               separator=separator), byteorder)


def stable_seed(*parts: Any) -> int:
  """A 63-bit seed from ``parts``: the first 8 bytes of ``sha256("/".join(parts))``.

  Read little-endian and shifted right by one bit, so it fits a signed 64-bit integer
  (TensorFlow's stateless seeds).

  Args:
    *parts: values whose ``str`` identifies the random stream.
  """
  return digest_int(*parts, size=8, algorithm="sha256", separator="/",
                    byteorder="little") >> 1


def generator(*entropy: int) -> np.random.Generator:
  """``numpy.random.default_rng`` of one integer, or of a tuple of integers.

  Args:
    *entropy: one non-negative integer (e.g. a :func:`digest_int`), or several
      (e.g. ``seed, layer, epoch``), which NumPy's ``SeedSequence`` mixes.
  """
  if not entropy:
    raise ValueError("generator needs at least one integer")
  return np.random.default_rng(entropy[0] if len(entropy) == 1 else tuple(entropy))
