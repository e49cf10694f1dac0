"""Block sampling against hand-computed cases and a loop reference."""

import hashlib

import numpy as np
import pytest

from deepbof_tf import sampling
from deepbof_tf.config import SamplingConfig


def test_counts_of_starts_and_segments():
  assert sampling.num_block_starts(8, 8) == 1
  assert sampling.num_block_starts(7, 8) == 0
  assert sampling.num_segments(50, 8, 43) == 1  # 43 starts: exactly one segment
  assert sampling.num_segments(49, 8, 43) == 0  # 42 starts: the tail is not sampled
  assert sampling.num_segments(1292, 8, 43) == 29  # a 30-s clip at 22,050 Hz / 512


def test_onset_starts_hand_computed_with_repeats():
  # block 3, segment 4: 12 frames → 10 starts → 2 segments (starts 0-3, 4-7); the
  # tail starts 8, 9 are not sampled even though their novelty is the highest.
  novelty = [0.1, 0.5, 0.2, 0.5, 0.0, 0.3, 0.9, 0.1, 2.0, 5.0, 1.0, 1.0]
  starts = sampling.onset_block_starts(novelty, block_frames=3, segment_frames=4,
                                       num_passes=5)
  np.testing.assert_array_equal(starts, [[1, 6],   # maxima (tie 0.5: earliest frame)
                                         [3, 5],   # next-highest
                                         [2, 7],
                                         [0, 4],
                                         [1, 6]])  # all used: the ranking starts over
  assert starts.dtype == np.int64


def test_onset_ranking_keeps_picks_distinct_where_novelty_is_zero():
  # The authors zero each chosen maximum; with zeros left in the segment their next
  # pass would re-pick frame 0 every time. Ranking takes 2, then 0, 1, 3.
  starts = sampling.onset_block_starts([0.0, 0.0, 3.0, 0.0, 0.0], block_frames=2,
                                       segment_frames=4, num_passes=4)
  np.testing.assert_array_equal(starts[:, 0], [2, 0, 1, 3])


def _authors_onset_loop(novelty, block_frames, segment_frames, passes):
  """get_samples.m's onset_sync_max written as a plain loop (0-based)."""
  nf = np.array(novelty, dtype=np.float64)
  n_seg = (len(nf) - block_frames + 1) // segment_frames
  out = []
  for _ in range(passes):
    row = []
    for s in range(n_seg):
      base = s * segment_frames
      j = int(np.argmax(nf[base:base + segment_frames]))  # first maximum, like MATLAB
      nf[base + j] = 0.0
      row.append(base + j)
    out.append(row)
  return np.array(out, dtype=np.int64).reshape(passes, n_seg)


@pytest.mark.parametrize("n_frames, passes", [(1292, 1), (1292, 3), (300, 43), (95, 7)])
def test_onset_matches_the_authors_loop_on_positive_novelty(rng, n_frames, passes):
  novelty = rng.uniform(0.01, 1.0, size=n_frames)
  ours = sampling.onset_block_starts(novelty, 8, 43, passes)
  np.testing.assert_array_equal(ours, _authors_onset_loop(novelty, 8, 43, passes))


def test_onset_short_clip_has_no_segments():
  starts = sampling.onset_block_starts(np.ones(49), 8, 43, num_passes=2)
  assert starts.shape == (2, 0)


def test_random_starts_are_uniform_inside_each_segment_and_seeded():
  starts = sampling.random_block_starts(8 + 43 * 3 - 1 + 10, np.random.default_rng(5),
                                        8, 43, num_passes=4000)
  assert starts.shape == (4000, 3)
  offsets = starts - np.arange(3) * 43
  assert offsets.min() == 0 and offsets.max() == 42
  # Each of the 43 offsets ~ 4000*3/43 ≈ 279 times; 5 standard deviations ≈ 82.
  counts = np.bincount(offsets.ravel(), minlength=43)
  assert np.all(np.abs(counts - 12000 / 43) < 82), counts
  again = sampling.random_block_starts(8 + 43 * 3 - 1 + 10, np.random.default_rng(5),
                                       8, 43, num_passes=4000)
  np.testing.assert_array_equal(starts, again)
  other = sampling.random_block_starts(8 + 43 * 3 - 1 + 10, np.random.default_rng(6),
                                       8, 43, num_passes=4000)
  assert not np.array_equal(starts, other)


def test_extract_blocks_slices_frames(rng):
  log_mel = rng.normal(size=(30, 5)).astype(np.float32)
  blocks = sampling.extract_blocks(log_mel, [0, 7, 22], block_frames=8)
  assert blocks.shape == (3, 8, 5)
  for block, t in zip(blocks, [0, 7, 22]):
    np.testing.assert_array_equal(block, log_mel[t:t + 8])
  with pytest.raises(ValueError, match=r"block starts must be in \[0, 22\]"):
    sampling.extract_blocks(log_mel, [23], block_frames=8)


def test_candidate_key_is_a_stable_hashlib_digest():
  expected = hashlib.blake2b(b"7\x1fclip-1\x1f2\x1f5", digest_size=16).digest()
  assert sampling.candidate_key(7, "clip-1", 2, 5) == expected
  assert sampling.candidate_key(8, "clip-1", 2, 5) != expected


def test_auto_num_passes_rounds_up():
  assert sampling.auto_num_passes(200_000, 435_000) == 1
  assert sampling.auto_num_passes(200_000, 150_000) == 2  # get_samples.m: 1 (floor)
  assert sampling.auto_num_passes(100, 100) == 1
  assert sampling.auto_num_passes(10, 0) == 0
  # Capped at segment_frames: beyond that every start of every segment is taken.
  assert sampling.auto_num_passes(200_000, 1, segment_frames=43) == 43


def test_clip_candidates_auto_and_fixed_per_clip():
  config = SamplingConfig(seed=3)
  auto = sampling.clip_candidates("a", 5, config, num_passes=2)
  assert sorted((p, s) for _, p, s in auto) == [(p, s) for p in range(2) for s in range(5)]
  assert [k for k, _, _ in auto] == sorted(k for k, _, _ in auto)
  fixed = sampling.clip_candidates("a", 5, SamplingConfig(seed=3, blocks_per_clip=7), 99)
  assert len(fixed) == 7
  assert {p for _, p, _ in fixed} <= {0, 1}  # ceil(7 / 5) = 2 passes
  # The 7 kept are the 7 smallest keys of the 2 passes.
  two_passes = sampling.clip_candidates("a", 5, config, num_passes=2)
  assert fixed == two_passes[:7]
  assert sampling.clip_candidates("a", 0, config, num_passes=2) == []
  capped = sampling.clip_candidates("a", 2, SamplingConfig(blocks_per_clip=1000,
                                                           segment_frames=43), 1)
  assert len(capped) == 2 * 43


def _clips(rng, n_clips=6):
  clips = {}
  for i in range(n_clips):
    n_frames = int(rng.integers(40, 400))
    clips[f"clip-{i}"] = (rng.normal(size=(n_frames, 4)).astype(np.float32),
                          rng.uniform(0, 1, size=n_frames))
  return clips


@pytest.mark.parametrize("scheme", ["onset", "random"])
def test_global_budget_keeps_exactly_num_blocks_independent_of_order(rng, scheme):
  clips = _clips(rng)
  config = SamplingConfig(scheme=scheme, block_frames=8, segment_frames=43,
                          num_blocks=25, seed=11)
  n_seg = {c: sampling.num_segments(len(n), 8, 43) for c, (_, n) in clips.items()}
  passes = sampling.auto_num_passes(config.num_blocks, sum(n_seg.values()))
  keys = [k for c in clips for k, _, _ in sampling.clip_candidates(c, n_seg[c], config,
                                                                   passes)]
  assert len(keys) >= config.num_blocks
  threshold = sampling.budget_threshold(keys, config.num_blocks)

  def run(order):
    out = []
    for clip_id in order:
      log_mel, novelty = clips[clip_id]
      for key, frame, block in sampling.sample_clip_blocks(
          clip_id, log_mel, novelty, config, passes, max_key=threshold):
        np.testing.assert_array_equal(block, log_mel[frame:frame + 8])
        seg = frame // 43
        assert 0 <= frame - seg * 43 < 43 and frame + 8 <= len(log_mel)
        out.append((clip_id, frame, key))
    return out

  forward = run(list(clips))
  assert len(forward) == config.num_blocks
  assert sorted(run(list(clips)[::-1])) == sorted(forward)


def test_budget_keeps_everything_when_candidates_are_fewer(rng):
  clips = _clips(rng, n_clips=2)
  config = SamplingConfig(num_blocks=10_000)
  total = sum(sampling.num_segments(len(n)) for _, n in clips.values())
  passes = sampling.auto_num_passes(config.num_blocks, total)
  keys = [k for c, (_, n) in clips.items()
          for k, _, _ in sampling.clip_candidates(c, sampling.num_segments(len(n)), config,
                                                  passes)]
  assert sampling.budget_threshold(keys, config.num_blocks) is None
  kept = sum(len(sampling.sample_clip_blocks(c, m, n, config, passes))
             for c, (m, n) in clips.items())
  assert kept == len(keys) == passes * total


def test_onset_samples_are_the_novelty_maxima(rng):
  log_mel = rng.normal(size=(100, 3)).astype(np.float32)
  novelty = np.zeros(100)
  novelty[[5, 60, 70]] = [1.0, 2.0, 0.5]  # segment 0: starts 0-42, segment 1: 43-85
  got = sampling.sample_clip_blocks("x", log_mel, novelty, SamplingConfig(), num_passes=1)
  assert sorted(frame for _, frame, _ in got) == [5, 60]
