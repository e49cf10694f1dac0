"""The public TFRecord schema (docs/data.md): one module for the writer and the readers.

Clip example (one per clip, gzip TFRecord ``clips/{split}-*.tfrecord.gz``):
  clip_id bytes, path bytes, n_frames int64, n_mels int64, log_mel float list
  (n_frames*n_mels, row-major [frame, mel]), novelty float list (n_frames), labels float
  list (multi-hot over ``metadata.json["tags"]``), decoder bytes (``"libsndfile"`` or
  ``"ffmpeg"``: which decoder read the audio; absent from shards written before it
  existed, read back as ``""``).
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

# The package's JSON writer; the dataset tools (beam_jobs) write metadata and summaries
# through this name.
from deepbof_tf.io_utils import write_json  # noqa: F401  pylint: disable=unused-import

# Feature keys (public; other tools read them).
CLIP_ID = "clip_id"
PATH = "path"
N_FRAMES = "n_frames"
N_MELS = "n_mels"
LOG_MEL = "log_mel"
NOVELTY = "novelty"
LABELS = "labels"
DECODER = "decoder"
BLOCK = "block"
FRAME = "frame"

# Layout of a preprocessed dataset directory.
CLIPS_DIR = "clips"
BLOCKS_DIR = "blocks"
ERRORS_DIR = "errors"
METADATA_FILE = "metadata.json"
SPLITS = ("train", "valid", "test")
TFRECORD_SUFFIX = ".tfrecord.gz"  # what deepbof-preprocess writes
COMPRESSION = "GZIP"
# Readers also take uncompressed shards (``.tfrecord``): log-mel floats shrink by only
# ~9 % under gzip, so other writers may prefer to skip it (docs/benchmarks.md).
UNCOMPRESSED_SUFFIX = ".tfrecord"


def compression_of(path: str) -> str:
  """The ``tf.data.TFRecordDataset`` compression type of a shard, from its name."""
  return COMPRESSION if path.endswith(TFRECORD_SUFFIX) else ""


def clip_pattern(data_dir: str, split: str, suffix: str = TFRECORD_SUFFIX) -> str:
  return posixpath.join(data_dir, CLIPS_DIR, f"{split}-*{suffix}")


def block_pattern(data_dir: str, split: str = "train", suffix: str = TFRECORD_SUFFIX
                  ) -> str:
  return posixpath.join(data_dir, BLOCKS_DIR, f"{split}-*{suffix}")


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
  log_mel, novelty = _check_clip_arrays(path, log_mel, novelty)
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


# --- Fast serialization -----------------------------------------------------------------
# The Beam job writes ~170k floats per 30-s clip. Filling a ``tf.train.FloatList`` from
# a NumPy array converts every float to a Python object; writing the protobuf wire
# format directly (a packed float field is the raw little-endian float32 bytes) is
# ~50x faster and yields the same message (tests parse both and compare).


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # negative int64 → two's complement, as protobuf does
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
  return _varint((field << 3) | 2) + _varint(len(payload)) + payload


def _feature_bytes(values: Sequence[bytes]) -> bytes:
  # Feature.bytes_list (field 1) ← BytesList.value (field 1, repeated bytes).
  return _length_delimited(1, b"".join(_length_delimited(1, v) for v in values))


def _feature_floats(values: np.ndarray) -> bytes:
  # Feature.float_list (field 2) ← FloatList.value (field 1, packed float).
  raw = np.ascontiguousarray(values, dtype="<f4").tobytes()
  return _length_delimited(2, _length_delimited(1, raw) if raw else b"")


def _feature_ints(values: Sequence[int]) -> bytes:
  # Feature.int64_list (field 3) ← Int64List.value (field 1, packed int64 varints).
  raw = b"".join(_varint(int(v)) for v in values)
  return _length_delimited(3, _length_delimited(1, raw) if raw else b"")


def _example_bytes(features: Mapping[str, bytes]) -> bytes:
  # Example.features (field 1) ← Features.feature (field 1, map<string, Feature>):
  # each map entry is a message {key = 1, value = 2}.
  entries = b"".join(
      _length_delimited(1, _length_delimited(1, key.encode("utf-8")) +
                        _length_delimited(2, feature))
      for key, feature in sorted(features.items()))
  return _length_delimited(1, entries)


def _check_clip_arrays(path: Any, log_mel: np.ndarray, novelty: np.ndarray):
  log_mel = np.asarray(log_mel, dtype=np.float32)
  novelty = np.asarray(novelty, dtype=np.float32).ravel()
  if log_mel.ndim != 2:
    raise ValueError(f"{path}: log_mel must be [frames, mels], got shape {log_mel.shape}")
  if novelty.shape[0] != log_mel.shape[0]:
    raise ValueError(f"{path}: novelty has {novelty.shape[0]} frames, log_mel "
                     f"{log_mel.shape[0]}")
  return log_mel, novelty


def serialize_clip_example(clip_id: str, path: str, log_mel: np.ndarray,
                           novelty: np.ndarray, labels: np.ndarray,
                           decoder: str = "") -> bytes:
  """The serialized clip ``tf.train.Example`` of :func:`make_clip_example`, fast.

  Args:
    clip_id: the clip's id.
    path: the audio path as written in the manifest.
    log_mel: ``[n_frames, n_mels]`` compressed log-mel spectrogram.
    novelty: ``[n_frames]`` onset detection function.
    labels: multi-hot over the tag vocabulary.
    decoder: which decoder read the audio (``deepbof_tf.audio.DecodeInfo.decoder``);
      not written when empty.
  """
  log_mel, novelty = _check_clip_arrays(path, log_mel, novelty)
  features = {
      CLIP_ID: _feature_bytes([_as_bytes(clip_id)]),
      PATH: _feature_bytes([_as_bytes(path)]),
      N_FRAMES: _feature_ints([log_mel.shape[0]]),
      N_MELS: _feature_ints([log_mel.shape[1]]),
      LOG_MEL: _feature_floats(log_mel),
      NOVELTY: _feature_floats(novelty),
      LABELS: _feature_floats(np.asarray(labels, dtype=np.float32).ravel()),
  }
  if decoder:
    features[DECODER] = _feature_bytes([_as_bytes(decoder)])
  return _example_bytes(features)


def serialize_block_example(clip_id: str, frame: int, block: np.ndarray) -> bytes:
  """The serialized block ``tf.train.Example`` of :func:`make_block_example`, fast.

  Args:
    clip_id: id of the clip the block comes from.
    frame: the block's first frame.
    block: ``[block_frames, n_mels]``.
  """
  block = np.asarray(block, dtype=np.float32)
  if block.ndim != 2:
    raise ValueError(f"{clip_id}: block must be [frames, mels], got shape {block.shape}")
  return _example_bytes({
      BLOCK: _feature_floats(block),
      CLIP_ID: _feature_bytes([_as_bytes(clip_id)]),
      FRAME: _feature_ints([frame]),
  })


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
      DECODER: tf.io.FixedLenFeature([], tf.string, default_value=""),
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


def tags_of(metadata: Mapping[str, Any]) -> Sequence[str]:
  return list(metadata["tags"])

