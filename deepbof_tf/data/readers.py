"""``tf.data`` readers of the clip and block TFRecords (the schema of ``schema.py``)."""

from __future__ import annotations

from typing import List, Optional

import tensorflow as tf

from deepbof_tf.data import schema


def _files(pattern_of) -> List[str]:
  """Sorted gzip (``.tfrecord.gz``) and uncompressed (``.tfrecord``) shards."""
  patterns = [pattern_of(schema.TFRECORD_SUFFIX), pattern_of(schema.UNCOMPRESSED_SUFFIX)]
  files = sorted({f for pattern in patterns for f in tf.io.gfile.glob(pattern)})
  if not files:
    raise FileNotFoundError(f"no TFRecord files match {patterns[0]} (or "
                            f"{schema.UNCOMPRESSED_SUFFIX})")
  return files


def clip_files(data_dir: str, split: str) -> List[str]:
  return _files(lambda suffix: schema.clip_pattern(data_dir, split, suffix))


def block_files(data_dir: str, split: str = "train") -> List[str]:
  return _files(lambda suffix: schema.block_pattern(data_dir, split, suffix))


def records(files: List[str]) -> tf.data.Dataset:
  """The serialized records of ``files`` in order, each shard read with its compression."""
  kinds = {schema.compression_of(f) for f in files}
  if len(kinds) == 1:
    return tf.data.TFRecordDataset(files, compression_type=kinds.pop())
  datasets = [tf.data.TFRecordDataset(f, compression_type=schema.compression_of(f))
              for f in files]
  out = datasets[0]
  for ds in datasets[1:]:
    out = out.concatenate(ds)
  return out


def clip_dataset(data_dir: str, split: str, *, n_tags: Optional[int] = None,
                 n_mels: Optional[int] = None, shuffle: bool = False, seed: int = 0,
                 num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
  """Clips of one split as dicts: clip_id, path, n_frames, n_mels,
  log_mel [n_frames, n_mels], novelty [n_frames], labels [n_tags].

  ``n_tags``/``n_mels`` default to the dataset's ``metadata.json``. File order is
  deterministic (sorted shards, no interleaving) unless ``shuffle``.
  """
  if n_tags is None or n_mels is None:
    metadata = schema.read_metadata(data_dir)
    n_tags = len(metadata["tags"]) if n_tags is None else n_tags
    n_mels = int(metadata.get("n_mels", 128)) if n_mels is None else n_mels
  ds = records(clip_files(data_dir, split))
  if shuffle:
    ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True)
  return ds.map(lambda s: schema.parse_clip(s, n_tags, n_mels),
                num_parallel_calls=num_parallel_calls, deterministic=True)


def block_dataset(data_dir: str, *, block_frames: Optional[int] = None,
                  n_mels: Optional[int] = None, split: str = "train",
                  num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
  """Feature-learning blocks as dicts: block [block_frames*n_mels], clip_id, frame."""
  if block_frames is None or n_mels is None:
    metadata = schema.read_metadata(data_dir)
    block_frames = int(metadata["block_frames"]) if block_frames is None else block_frames
    n_mels = int(metadata.get("n_mels", 128)) if n_mels is None else n_mels
  ds = records(block_files(data_dir, split))
  return ds.map(lambda s: schema.parse_block(s, block_frames, n_mels),
                num_parallel_calls=num_parallel_calls, deterministic=True)


def read_errors(data_dir: str):
  """The error records of ``errors/*.jsonl``: dicts with at least path, stage, error."""
  import json
  records = []
  for path in sorted(tf.io.gfile.glob(f"{data_dir.rstrip('/')}/{schema.ERRORS_DIR}/*.jsonl")):
    with tf.io.gfile.GFile(path, "r") as f:
      records.extend(json.loads(line) for line in f if line.strip())
  return records
