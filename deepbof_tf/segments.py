"""Segment embeddings of a track: the bag-of-features of consecutive stretches of it.

A catalogue made with ``deepbof-tag-catalog --segment_seconds=S`` stores, besides the
track's bag-of-features (the mean of all its max-pooling windows, paper §III-C), one
embedding per segment of about ``S`` seconds (docs/catalog.md, "Search by excerpt"):

* pooling window ``j`` covers block positions ``[j·pool_frames, (j+1)·pool_frames)``
  and starts at frame ``j·pool_frames``, i.e. at ``j·pool_frames·hop / rate`` seconds
  (a frame's time is its centre, as the front end frames a clip: docs/model.md);
* window ``j`` belongs to segment ``floor(start_j / S)`` (windows are assigned by their
  start time); only segments that get a window exist, so a segment shorter than one
  window is impossible, the last segment may be shorter than ``S`` and a track shorter
  than ``S`` has one segment;
* a segment's embedding is the mean of its windows' maxima, and its start is its
  first window's start; its window count is stored with it, so the mean of the segment
  embeddings weighted by their counts is the track's embedding.

Pure NumPy (no TensorFlow, no Beam): the pipeline's chunk encoder computes per-chunk
sums here (:func:`chunk_segment_sums`), its combine adds them (:func:`add_sums`), and
readers check a catalogue with :func:`segments_of_windows` on the windows of
``ExportedModel.pooled_windows``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

# The record fields (Parquet columns, tf.train.Example keys) a segmented catalogue adds.
SEGMENT_STARTS = "segment_starts"
SEGMENT_WINDOWS = "segment_windows"
SEGMENT_EMBEDDINGS = "segment_embeddings"
SEGMENT_FIELDS = (SEGMENT_STARTS, SEGMENT_WINDOWS, SEGMENT_EMBEDDINGS)
# metadata.json's key (absent: a catalogue without segments).
METADATA_KEY = "segment_seconds"


@dataclasses.dataclass(frozen=True)
class WindowClock:
  """Where the pooling windows of an export lie in time.

  Args:
    pool_frames: pooling window in block positions (frames).
    hop_length: STFT hop in samples.
    sample_rate: the model's rate.
  """

  pool_frames: int
  hop_length: int
  sample_rate: int

  @classmethod
  def of_export(cls, info: Mapping[str, Any]) -> "WindowClock":
    """The clock of an export's ``deepbof_export.json``."""
    return cls(int(info["pool_frames"]), int(info["frontend"]["hop_length"]),
               int(info["frontend"]["sample_rate"]))

  @property
  def window_seconds(self) -> float:
    """The time between two windows' starts."""
    return self.pool_frames * self.hop_length / self.sample_rate

  def window_start(self, window: np.ndarray) -> np.ndarray:
    """Start times (seconds) of windows by their indices."""
    return (np.asarray(window, np.int64) * (self.pool_frames * self.hop_length)
            / float(self.sample_rate))

  def segment_of(self, window: np.ndarray, segment_seconds: float) -> np.ndarray:
    """The segment of each window index: ``floor(start / segment_seconds)``.

    Computed as ``floor(j·pool_frames·hop / (segment_seconds·rate))`` with the window's
    sample offset as an exact integer, so a window starting on a boundary opens the
    next segment.
    """
    offsets = np.asarray(window, np.int64) * (self.pool_frames * self.hop_length)
    return np.floor(offsets / (float(segment_seconds) * self.sample_rate)).astype(
        np.int64)


def check_segment_seconds(segment_seconds: Optional[float]) -> None:
  """Raises ValueError unless ``segment_seconds`` is None or a positive finite number."""
  if segment_seconds is not None and not (np.isfinite(segment_seconds)
                                          and segment_seconds > 0):
    raise ValueError(f"segment_seconds must be > 0, got {segment_seconds}")


def chunk_segment_sums(pooled: np.ndarray, first_window: int, segment_seconds: float,
                       clock: WindowClock) -> Dict[int, Tuple[np.ndarray, int, int]]:
  """Per segment touched by one chunk's windows: ``(sum float64 [H], count, first)``.

  Args:
    pooled: the chunk's window maxima ``[w, H]``.
    first_window: the recording's index of the chunk's first window.
    segment_seconds: the segment length.
    clock: the export's :class:`WindowClock`.

  Returns:
    ``{segment: (window sum, window count, index of its first window in the chunk's
    span)}``.
  """
  pooled = np.asarray(pooled, np.float64)
  windows = first_window + np.arange(pooled.shape[0])
  ids = clock.segment_of(windows, segment_seconds)
  out: Dict[int, Tuple[np.ndarray, int, int]] = {}
  for segment in np.unique(ids):
    rows = np.nonzero(ids == segment)[0]
    out[int(segment)] = (pooled[rows].sum(axis=0), int(rows.size),
                         int(windows[rows[0]]))
  return out


def add_sums(total: Dict[int, Tuple[np.ndarray, int, int]],
             more: Mapping[int, Tuple[np.ndarray, int, int]]
             ) -> Dict[int, Tuple[np.ndarray, int, int]]:
  """Adds :func:`chunk_segment_sums` results (in place in ``total``, returned)."""
  for segment, (window_sum, count, first) in more.items():
    segment = int(segment)
    if segment in total:
      s, c, f = total[segment]
      total[segment] = (s + window_sum, c + int(count), min(f, int(first)))
    else:
      total[segment] = (np.asarray(window_sum, np.float64), int(count), int(first))
  return total


def finish(total: Mapping[int, Tuple[np.ndarray, int, int]], clock: WindowClock
           ) -> Dict[str, Any]:
  """The record fields of summed segments: starts, window counts, embeddings.

  Returns:
    ``{segment_starts: float32 [S], segment_windows: int64 [S], segment_embeddings:
    float32 [S, H]}`` in time order.
  """
  order = sorted(total)
  if not order:
    raise ValueError("no pooling window to make a segment of")
  counts = np.array([total[s][1] for s in order], np.int64)
  sums = np.stack([total[s][0] for s in order])
  firsts = np.array([total[s][2] for s in order], np.int64)
  return {SEGMENT_STARTS: clock.window_start(firsts).astype(np.float32),
          SEGMENT_WINDOWS: counts,
          SEGMENT_EMBEDDINGS: (sums / counts[:, None]).astype(np.float32)}


def segments_of_windows(pooled: np.ndarray, segment_seconds: float,
                        clock: WindowClock) -> Dict[str, Any]:
  """The segments of a whole recording's windows ``[W, H]`` (:func:`finish`'s fields)."""
  return finish(chunk_segment_sums(pooled, 0, segment_seconds, clock), clock)


def weighted_track_embedding(segment_embeddings: np.ndarray,
                             segment_windows: np.ndarray) -> np.ndarray:
  """The track's bag-of-features from its segments: their mean weighted by windows."""
  e = np.asarray(segment_embeddings, np.float64).reshape(len(segment_windows), -1)
  w = np.asarray(segment_windows, np.float64)
  return ((e * w[:, None]).sum(axis=0) / w.sum()).astype(np.float32)


def catalog_segment_seconds(metadata: Mapping[str, Any]) -> Optional[float]:
  """The ``segment_seconds`` a catalogue's ``metadata.json`` records (None: none)."""
  value = metadata.get(METADATA_KEY)
  return None if value is None else float(value)


def check_catalog(catalog_dir: str, metadata: Optional[Mapping[str, Any]],
                  segment_seconds: Optional[float]) -> None:
  """Refuses to add to a catalogue rows segmented otherwise than it holds.

  Every part of a catalogue has the same columns, so a run with another
  ``--segment_seconds`` (or with it where the catalogue has none, or without it where
  it has) cannot add to it.

  Args:
    catalog_dir: the catalogue (for the message).
    metadata: its ``metadata.json`` (None: a catalogue without one, nothing to check).
    segment_seconds: this run's setting.

  Raises:
    ValueError: naming both settings and what to do.
  """
  if metadata is None:
    return
  held = catalog_segment_seconds(metadata)
  wanted = None if segment_seconds is None else float(segment_seconds)
  if held == wanted:
    return

  def said(value):
    return "no segments" if value is None else f"--segment_seconds={value:g}"

  raise ValueError(
      f"{catalog_dir}: the catalogue was made with {said(held)}, this run asks for "
      f"{said(wanted)}; every part of a catalogue has the same segments: run with "
      f"{said(held).replace('no segments', 'no --segment_seconds')}, or start a new "
      "catalogue with another --output_dir (or replace this one with --overwrite)")
