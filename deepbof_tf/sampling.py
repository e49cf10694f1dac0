"""Block sampling for local feature learning: pure NumPy, seeded.

A *block* is ``block_frames`` consecutive frames of the compressed log-mel
spectrogram; the block "at frame t" covers frames t … t+block_frames-1, so a clip of
T frames has ``T - block_frames + 1`` valid block starts (the authors' chunking keeps
one fewer; we keep every block that fits).

Segments: the valid starts are tiled by non-overlapping segments of
``segment_frames`` starts (43 ≈ 1 s); a tail shorter than a segment is not sampled,
as in the authors' get_samples.m (``floor(#chunks / 43)`` segments over the chunked
spectrogram). Tiling the *starts* rather than the frames means every chosen block
fits inside the clip without clamping. A clip with fewer than
``block_frames + segment_frames - 1`` frames (≈1.2 s) gives no blocks.

Schemes (one candidate per segment per pass):

* ``onset`` (the authors' "onset_sync_max"): the block starting at the frame of
  maximum novelty in the segment. Later passes take the next-highest frame: pass p
  takes the segment's frame of rank p in decreasing novelty (ties: earliest frame).
  The authors zero each chosen maximum before the next pass; that is the same as long
  as the remaining novelty is positive, but when the remaining values are 0 (silence,
  stationary sound) zeroing makes every later pass re-pick the same first frame,
  while ranking keeps the picks distinct. After ``segment_frames`` passes the ranking
  starts over.
* ``random``: a uniformly random start in each segment, drawn independently per pass
  (a repeat may pick the same start again, as in the authors' code).

Passes: with ``blocks_per_clip = 0`` every training clip gets
``ceil(num_blocks / segments of the training split)`` passes (the authors' repeat, with
floor replaced by ceil so the candidates cover the budget), capped at
``segment_frames`` passes, after which every start has been taken.

Global budget (200,000 blocks by default): every candidate gets a key
``blake2b(seed, clip_id, pass, segment)``; the budget keeps the ``num_blocks``
candidates with the smallest keys. Keys do not depend on the chosen frame, on the
runner or on the order of processing, so the subsample is the same on every Beam
runner and can be decided from per-clip segment counts alone, before any block
payload is extracted.

docs/model.md#block-sampling summarises the stage.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from deepbof_tf import seeds
from deepbof_tf.config import SamplingConfig

KEY_BYTES = 16  # 128-bit keys: ties between distinct candidates are practically impossible


def num_block_starts(n_frames: int, block_frames: int = 8) -> int:
  """Valid block starts of a clip of ``n_frames`` frames (0 if shorter than a block)."""
  return max(0, int(n_frames) - int(block_frames) + 1)


def num_segments(n_frames: int, block_frames: int = 8, segment_frames: int = 43) -> int:
  """Full segments of ``segment_frames`` block starts in a clip of ``n_frames`` frames."""
  return num_block_starts(n_frames, block_frames) // int(segment_frames)


def onset_block_starts(novelty: np.ndarray, block_frames: int = 8,
                       segment_frames: int = 43, num_passes: int = 1) -> np.ndarray:
  """Onset-synchronous block starts (the authors' "onset_sync_max").

  Args:
    novelty: ``[n_frames]`` onset detection function of the clip (one value per frame).
    block_frames: frames per block.
    segment_frames: block starts per segment.
    num_passes: passes over the segments; pass p takes each segment's frame of rank p
      (0-based) in decreasing novelty, ties to the earliest frame, cycling after
      ``segment_frames`` passes.

  Returns:
    int64 ``[num_passes, num_segments]``: the start frame of each pass's block in each
    segment.
  """
  novelty = np.asarray(novelty, dtype=np.float64).ravel()
  n_seg = num_segments(novelty.shape[0], block_frames, segment_frames)
  if n_seg == 0 or num_passes <= 0:
    return np.zeros((max(num_passes, 0), 0), dtype=np.int64)
  windows = novelty[:n_seg * segment_frames].reshape(n_seg, segment_frames)
  # Stable sort of -novelty: decreasing novelty, equal values in frame order.
  ranking = np.argsort(-windows, axis=1, kind="stable")  # [n_seg, segment_frames]
  ranks = np.arange(num_passes) % segment_frames  # [num_passes]
  offsets = ranking[:, ranks].T  # [num_passes, n_seg]
  return (np.arange(n_seg) * segment_frames + offsets).astype(np.int64)


def random_block_starts(n_frames: int, rng: np.random.Generator, block_frames: int = 8,
                        segment_frames: int = 43, num_passes: int = 1) -> np.ndarray:
  """Random block starts: one uniformly random start per segment and pass.

  Args:
    n_frames: frames of the clip.
    rng: the NumPy generator (seed it for reproducible samples).
    block_frames: frames per block.
    segment_frames: block starts per segment.
    num_passes: independent draws per segment.

  Returns:
    int64 ``[num_passes, num_segments]`` start frames.
  """
  n_seg = num_segments(n_frames, block_frames, segment_frames)
  passes = max(num_passes, 0)
  offsets = rng.integers(0, segment_frames, size=(passes, n_seg))
  return (np.arange(n_seg) * segment_frames + offsets).astype(np.int64)


def extract_blocks(log_mel: np.ndarray, starts: Sequence[int],
                   block_frames: int = 8) -> np.ndarray:
  """The blocks ``log_mel[t : t + block_frames]`` for each start t.

  Args:
    log_mel: ``[n_frames, n_mels]`` compressed log-mel spectrogram.
    starts: block start frames; each must leave room for a whole block.
    block_frames: frames per block.

  Returns:
    float32 ``[len(starts), block_frames, n_mels]``.
  """
  log_mel = np.asarray(log_mel, dtype=np.float32)
  starts = np.asarray(starts, dtype=np.int64).ravel()
  if starts.size and (starts.min() < 0 or
                      starts.max() > log_mel.shape[0] - block_frames):
    raise ValueError(f"block starts must be in [0, {log_mel.shape[0] - block_frames}] "
                     f"for {log_mel.shape[0]} frames, got {starts.min()}…{starts.max()}")
  index = starts[:, None] + np.arange(block_frames)[None, :]
  return log_mel[index]


def candidate_key(seed: int, clip_id: str, pass_index: int, segment: int) -> bytes:
  """The subsampling key of one candidate block: a 16-byte ``blake2b`` digest.

  Keys are bytes (compared lexicographically) rather than 128-bit integers, which
  Beam's integer coders cannot carry.
  """
  return seeds.digest(seed, clip_id, pass_index, segment, size=KEY_BYTES)


def auto_num_passes(num_blocks: int, total_segments: int,
                    segment_frames: int = 43) -> int:
  """Passes per clip when ``blocks_per_clip == 0`` (the authors' get_samples.m).

  get_samples.m repeats ``num_samples / num_total_segments`` times when the budget
  exceeds the segments, through MATLAB's ``1:repeat`` (i.e. floor, so a budget of 1.5×
  the segments is left unfilled); we round up so that the candidates always cover
  the budget, then the global subsample trims the surplus. Passes are capped at
  ``segment_frames``: by then the onset scheme has taken every start of every segment
  and further passes would only repeat blocks (a training split that small yields
  fewer blocks than the budget).

  Args:
    num_blocks: the global budget.
    total_segments: segments over all training clips.
    segment_frames: block starts per segment (the cap).
  """
  if total_segments <= 0:
    return 0
  return min(segment_frames, max(1, math.ceil(num_blocks / total_segments)))


def clip_candidates(clip_id: str, n_segments: int, config: SamplingConfig,
                    num_passes: int) -> List[Tuple[bytes, int, int]]:
  """The candidate blocks of one clip as ``(key, pass, segment)``, sorted by key.

  Args:
    clip_id: the clip's id (part of every key).
    n_segments: the clip's segment count (:func:`num_segments`).
    config: the sampling configuration (seed, blocks_per_clip).
    num_passes: passes per clip when ``config.blocks_per_clip == 0``
      (:func:`auto_num_passes`); ignored otherwise.
  """
  if n_segments <= 0:
    return []
  per_clip = config.blocks_per_clip
  if per_clip > 0:
    # Capped like auto_num_passes: more passes than starts per segment only repeat.
    passes = min(config.segment_frames, math.ceil(per_clip / n_segments))
  else:
    passes = num_passes
  out = sorted((candidate_key(config.seed, clip_id, p, s), p, s)
               for p in range(passes) for s in range(n_segments))
  return out[:per_clip] if per_clip > 0 else out


def budget_threshold(keys: Sequence[bytes], num_blocks: int) -> Optional[bytes]:
  """The largest key kept by the global budget, or None when all are kept."""
  if len(keys) <= num_blocks:
    return None
  return sorted(keys)[num_blocks - 1]


def clip_rng(seed: int, clip_id: str) -> np.random.Generator:
  """The random scheme's generator of one clip: independent of processing order."""
  return seeds.generator(seeds.digest_int(seed, "random", clip_id, size=8))


def sample_clip_blocks(clip_id: str, log_mel: np.ndarray, novelty: np.ndarray,
                       config: SamplingConfig, num_passes: int,
                       max_key: Optional[bytes] = None
                       ) -> List[Tuple[bytes, int, np.ndarray]]:
  """The sampled blocks of one clip that survive the global budget.

  Args:
    clip_id: the clip's id.
    log_mel: ``[n_frames, n_mels]`` compressed log-mel spectrogram.
    novelty: ``[n_frames]`` onset detection function.
    config: the sampling configuration.
    num_passes: passes per clip (see :func:`clip_candidates`).
    max_key: keep only candidates with ``key <= max_key`` (None keeps all); the
      global threshold from :func:`budget_threshold`.

  Returns:
    ``(key, start frame, block [block_frames, n_mels])`` in key order.
  """
  n_frames = int(np.shape(log_mel)[0])
  n_seg = num_segments(n_frames, config.block_frames, config.segment_frames)
  candidates = clip_candidates(clip_id, n_seg, config, num_passes)
  if not candidates:
    return []
  # Draw the starts of every pass before filtering, so a block's frame never depends
  # on which other candidates the budget keeps.
  passes = max(p for _, p, _ in candidates) + 1
  if max_key is not None:
    candidates = [c for c in candidates if c[0] <= max_key]
    if not candidates:
      return []
  if config.scheme == "onset":
    starts = onset_block_starts(novelty, config.block_frames, config.segment_frames,
                                passes)
  else:
    starts = random_block_starts(n_frames, clip_rng(config.seed, clip_id),
                                 config.block_frames, config.segment_frames, passes)
  frames = [int(starts[p, s]) for _, p, s in candidates]
  blocks = extract_blocks(log_mel, frames, config.block_frames)
  return [(key, frame, block) for (key, _, _), frame, block
          in zip(candidates, frames, blocks)]
