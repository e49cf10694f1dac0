"""tf.data readers of the clip and block TFRecords, written here with TF's own writer."""

import json

import numpy as np
import pytest
import tensorflow as tf

from deepbof_tf.data import readers, schema


def _write(path, records):
  with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
    for record in records:
      writer.write(record)


@pytest.fixture
def dataset_dir(tmp_path, rng):
  (tmp_path / "clips").mkdir()
  (tmp_path / "blocks").mkdir()
  (tmp_path / "errors").mkdir()
  clips = []
  for i in range(5):
    n = 10 + 3 * i
    clips.append((f"c{i}", rng.normal(size=(n, 128)).astype(np.float32),
                  rng.uniform(size=n).astype(np.float32), np.eye(3, dtype=np.float32)[i % 3]))
  serialized = [schema.serialize_clip_example(c, c + ".wav", m, n, l)
                for c, m, n, l in clips]
  _write(tmp_path / "clips" / "train-00000-of-00002.tfrecord.gz", serialized[:3])
  _write(tmp_path / "clips" / "train-00001-of-00002.tfrecord.gz", serialized[3:])
  _write(tmp_path / "clips" / "valid-00000-of-00001.tfrecord.gz", [])  # an empty split
  blocks = [(f"c{i}", i, rng.normal(size=(8, 128)).astype(np.float32)) for i in range(4)]
  _write(tmp_path / "blocks" / "train-00000-of-00001.tfrecord.gz",
         [schema.serialize_block_example(*b) for b in blocks])
  (tmp_path / "errors" / "errors-00000-of-00001.jsonl").write_text(
      json.dumps({"path": "x.mp3", "stage": "decode", "error": "bad"}) + "\n")
  schema.write_json(str(tmp_path / "metadata.json"),
                    {"tags": ["a", "b", "c"], "n_mels": 128, "block_frames": 8})
  return str(tmp_path), clips, blocks


def test_clip_dataset_reads_every_clip_in_shard_order(dataset_dir):
  data_dir, clips, _ = dataset_dir
  got = list(readers.clip_dataset(data_dir, "train"))
  assert [g["clip_id"].numpy().decode() for g in got] == [c[0] for c in clips]
  for g, (_, log_mel, novelty, labels) in zip(got, clips):
    assert g["log_mel"].shape == log_mel.shape
    np.testing.assert_array_equal(g["log_mel"].numpy(), log_mel)
    np.testing.assert_array_equal(g["novelty"].numpy(), novelty)
    np.testing.assert_array_equal(g["labels"].numpy(), labels)
    assert g["n_frames"].numpy() == log_mel.shape[0]


def test_empty_split_reads_as_empty(dataset_dir):
  assert list(readers.clip_dataset(dataset_dir[0], "valid")) == []


def test_missing_split_raises(dataset_dir):
  with pytest.raises(FileNotFoundError, match="no TFRecord files match .*test-"):
    readers.clip_dataset(dataset_dir[0], "test")


def test_block_dataset(dataset_dir):
  data_dir, _, blocks = dataset_dir
  got = list(readers.block_dataset(data_dir))
  assert len(got) == 4
  for g, (clip_id, frame, block) in zip(got, blocks):
    assert g["block"].shape == (1024,)
    np.testing.assert_array_equal(g["block"].numpy(), block.reshape(-1))
    assert g["frame"].numpy() == frame and g["clip_id"].numpy().decode() == clip_id


def test_clip_dataset_shuffle_is_seeded(dataset_dir):
  order = lambda seed: [g["clip_id"].numpy() for g in readers.clip_dataset(
      dataset_dir[0], "train", shuffle=True, seed=seed)]
  assert order(3) == order(3)
  assert sorted(order(3)) == sorted(order(4))


def test_read_errors(dataset_dir):
  assert readers.read_errors(dataset_dir[0]) == [
      {"path": "x.mp3", "stage": "decode", "error": "bad"}]


def test_uncompressed_and_gzip_shards_read_alike(dataset_dir, tmp_path):
  data_dir, clips, _ = dataset_dir
  # Rewrite the second train shard uncompressed: the reader takes both, in name order.
  import os
  gz = os.path.join(data_dir, "clips", "train-00001-of-00002.tfrecord.gz")
  serialized = list(tf.data.TFRecordDataset(gz, compression_type="GZIP").as_numpy_iterator())
  os.remove(gz)
  with tf.io.TFRecordWriter(gz[:-len(".gz")]) as writer:
    for record in serialized:
      writer.write(record)
  got = list(readers.clip_dataset(data_dir, "train"))
  assert [g["clip_id"].numpy().decode() for g in got] == [c[0] for c in clips]
  np.testing.assert_array_equal(got[-1]["log_mel"].numpy(), clips[-1][1])
  assert schema.compression_of("x.tfrecord.gz") == "GZIP"
  assert schema.compression_of("x.tfrecord") == ""
