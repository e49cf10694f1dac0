"""The public TFRecord schema of DESIGN.md: one module for the writer and the readers.

Clip example (one per clip, gzip TFRecord ``clips/{split}-*.tfrecord.gz``):
  clip_id bytes, path bytes, n_frames int64, n_mels int64, log_mel float list
  (n_frames*n_mels, row-major [frame, mel]), novelty float list (n_frames), labels float
  list (multi-hot over ``metadata.json["tags"]``).
Block example (feature-learning samples of the train split, ``blocks/train-*.tfrecord.gz``):
  block float list (block_frames*n_mels, row-major [frame, mel]), clip_id bytes,
  frame int64 (the block's first frame).

Row-major [frame, mel] flattening of a block puts all mel bands of the first frame
first, which is the same vector as the authors' column-major ``temp(:)`` of a
[mel, frame] matrix.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any, Dict, Iterable, Mapping, Sequence

import numpy as np

# Feature keys (public; other tools read them).
CLIP_ID = "clip_id"
PATH = "path"
N_FRAMES = "n_frames"
N_MELS = "n_mels"
LOG_MEL = "log_mel"
NOVELTY = "novelty"
LABELS = "labels"
BLOCK = "block"
FRAME = "frame"

# Layout of a preprocessed dataset directory.
CLIPS_DIR = "clips"
BLOCKS_DIR = "blocks"
ERRORS_DIR = "errors"
METADATA_FILE = "metadata.json"
SPLITS = ("train", "valid", "test")
TFRECORD_SUFFIX = ".tfrecord.gz"
COMPRESSION = "GZIP"


def clip_pattern(data_dir: str, split: str) -> str:
  return posixpath.join(data_dir, CLIPS_DIR, f"{split}-*{TFRECORD_SUFFIX}")


def block_pattern(data_dir: str, split: str = "train") -> str:
  return posixpath.join(data_dir, BLOCKS_DIR, f"{split}-*{TFRECORD_SUFFIX}")


def _bytes(values: Iterable[bytes]):
  import tensorflow as tf  # deferred: Beam workers import this module before setup()
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _floats(values: np.ndarray):
  import tensorflow as tf
  return tf.train.Feature(float_list=tf.train.FloatList(
      value=np.asarray(values, dtype=np.float32).ravel()))


def _ints(values: Sequence[int]):
  import tensorflow as tf
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _as_bytes(text: Any) -> bytes:
  return text if isinstance(text, bytes) else str(text).encode("utf-8")


def make_clip_example(clip_id: str, path: str, log_mel: np.ndarray,
                      novelty: np.ndarray, labels: np.ndarray):
  """A clip ``tf.train.Example``; ``log_mel`` is [n_frames, n_mels]."""
  import tensorflow as tf
  log_mel = np.asarray(log_mel, dtype=np.float32)
  novelty = np.asarray(novelty, dtype=np.float32).ravel()
  if log_mel.ndim != 2:
    raise ValueError(f"{path}: log_mel must be [frames, mels], got shape {log_mel.shape}")
  if novelty.shape[0] != log_mel.shape[0]:
    raise ValueError(f"{path}: novelty has {novelty.shape[0]} frames, log_mel "
                     f"{log_mel.shape[0]}")
  return tf.train.Example(features=tf.train.Features(feature={
      CLIP_ID: _bytes([_as_bytes(clip_id)]),
      PATH: _bytes([_as_bytes(path)]),
      N_FRAMES: _ints([log_mel.shape[0]]),
      N_MELS: _ints([log_mel.shape[1]]),
      LOG_MEL: _floats(log_mel),
      NOVELTY: _floats(novelty),
      LABELS: _floats(np.asarray(labels, dtype=np.float32)),
  }))


def make_block_example(clip_id: str, frame: int, block: np.ndarray):
  """A block ``tf.train.Example``; ``block`` is [block_frames, n_mels]."""
  import tensorflow as tf
  block = np.asarray(block, dtype=np.float32)
  if block.ndim != 2:
    raise ValueError(f"{clip_id}: block must be [frames, mels], got shape {block.shape}")
  return tf.train.Example(features=tf.train.Features(feature={
      BLOCK: _floats(block),
      CLIP_ID: _bytes([_as_bytes(clip_id)]),
      FRAME: _ints([frame]),
  }))


def clip_feature_spec(n_tags: int) -> Dict[str, Any]:
  import tensorflow as tf
  return {
      CLIP_ID: tf.io.FixedLenFeature([], tf.string),
      PATH: tf.io.FixedLenFeature([], tf.string),
      N_FRAMES: tf.io.FixedLenFeature([], tf.int64),
      N_MELS: tf.io.FixedLenFeature([], tf.int64),
      LOG_MEL: tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True),
      NOVELTY: tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True),
      LABELS: tf.io.FixedLenFeature([n_tags], tf.float32),
  }


def block_feature_spec(block_frames: int, n_mels: int) -> Dict[str, Any]:
  import tensorflow as tf
  return {
      BLOCK: tf.io.FixedLenFeature([block_frames * n_mels], tf.float32),
      CLIP_ID: tf.io.FixedLenFeature([], tf.string),
      FRAME: tf.io.FixedLenFeature([], tf.int64),
  }


def parse_clip(serialized, n_tags: int, n_mels: int = 128) -> Dict[str, Any]:
  """Parses one serialized clip example into tensors; ``log_mel`` is [n_frames, n_mels]."""
  import tensorflow as tf
  parsed = tf.io.parse_single_example(serialized, clip_feature_spec(n_tags))
  parsed[LOG_MEL] = tf.reshape(parsed[LOG_MEL], [-1, n_mels])
  parsed[N_FRAMES] = tf.cast(parsed[N_FRAMES], tf.int32)
  parsed[N_MELS] = tf.cast(parsed[N_MELS], tf.int32)
  return parsed


def parse_block(serialized, block_frames: int = 8, n_mels: int = 128) -> Dict[str, Any]:
  """Parses one serialized block example; ``block`` stays the flat block_frames*n_mels vector."""
  import tensorflow as tf
  parsed = tf.io.parse_single_example(serialized, block_feature_spec(block_frames, n_mels))
  parsed[FRAME] = tf.cast(parsed[FRAME], tf.int32)
  return parsed


def read_metadata(data_dir: str) -> Dict[str, Any]:
  import tensorflow as tf
  path = posixpath.join(data_dir, METADATA_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path}: no metadata.json; is {data_dir} the output_dir of "
                            "deepbof-preprocess?")
  with tf.io.gfile.GFile(path, "r") as f:
    return json.load(f)


def write_json(path: str, payload: Mapping[str, Any]) -> None:
  import tensorflow as tf
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def tags_of(metadata: Mapping[str, Any]) -> Sequence[str]:
  return list(metadata["tags"])

