"""TFRecord schema: the fast serializer equals the protobuf one; parse round trips."""

import numpy as np
import pytest
import tensorflow as tf

from deepbof_tf.data import schema


def _clip(rng, n_frames=37, n_mels=128, n_tags=5):
  return (rng.normal(size=(n_frames, n_mels)).astype(np.float32),
          rng.uniform(0, 1, size=n_frames).astype(np.float32),
          (rng.uniform(size=n_tags) > 0.5).astype(np.float32))


@pytest.mark.parametrize("n_frames, n_tags", [(37, 5), (1, 0), (1292, 50)])
def test_fast_clip_serialization_equals_protobuf(rng, n_frames, n_tags):
  log_mel, novelty, labels = _clip(rng, n_frames, n_tags=n_tags)
  fast = schema.serialize_clip_example("clip-ü/1", "f/a b.mp3", log_mel, novelty, labels)
  proto = schema.make_clip_example("clip-ü/1", "f/a b.mp3", log_mel, novelty, labels)
  assert tf.train.Example.FromString(fast) == proto


def test_fast_block_serialization_equals_protobuf(rng):
  block = rng.normal(size=(8, 128)).astype(np.float32)
  for frame in (0, 300, 2**40, -5):
    fast = schema.serialize_block_example("c7", frame, block)
    assert tf.train.Example.FromString(fast) == schema.make_block_example("c7", frame, block)


def test_parse_clip_round_trip(rng):
  log_mel, novelty, labels = _clip(rng)
  parsed = schema.parse_clip(
      schema.serialize_clip_example("id", "p.wav", log_mel, novelty, labels), n_tags=5)
  np.testing.assert_array_equal(parsed[schema.LOG_MEL].numpy(), log_mel)
  np.testing.assert_array_equal(parsed[schema.NOVELTY].numpy(), novelty)
  np.testing.assert_array_equal(parsed[schema.LABELS].numpy(), labels)
  assert parsed[schema.N_FRAMES].numpy() == 37 and parsed[schema.N_MELS].numpy() == 128
  assert parsed[schema.CLIP_ID].numpy() == b"id" and parsed[schema.PATH].numpy() == b"p.wav"
  assert parsed[schema.DECODER].numpy() == b""  # written before the decoder was recorded


def test_clip_records_its_decoder(rng):
  log_mel, novelty, labels = _clip(rng)
  serialized = schema.serialize_clip_example("id", "p.m4a", log_mel, novelty, labels,
                                             decoder="ffmpeg")
  example = tf.train.Example.FromString(serialized)
  assert example.features.feature[schema.DECODER].bytes_list.value == [b"ffmpeg"]
  parsed = schema.parse_clip(serialized, n_tags=5)
  assert parsed[schema.DECODER].numpy() == b"ffmpeg"


def test_parse_block_round_trip(rng):
  block = rng.normal(size=(8, 128)).astype(np.float32)
  parsed = schema.parse_block(schema.serialize_block_example("c", 12, block))
  # Row-major [frame, mel]: all bands of the first frame first.
  np.testing.assert_array_equal(parsed[schema.BLOCK].numpy(), block.reshape(-1))
  assert parsed[schema.FRAME].numpy() == 12


def test_serializers_reject_bad_shapes(rng):
  log_mel, novelty, labels = _clip(rng)
  with pytest.raises(ValueError, match="x.wav: novelty has 36 frames, log_mel 37"):
    schema.serialize_clip_example("a", "x.wav", log_mel, novelty[:-1], labels)
  with pytest.raises(ValueError, match=r"x.wav: log_mel must be \[frames, mels\]"):
    schema.make_clip_example("a", "x.wav", log_mel.ravel(), novelty, labels)
  with pytest.raises(ValueError, match=r"c: block must be \[frames, mels\]"):
    schema.serialize_block_example("c", 0, np.zeros(1024))


def test_read_metadata_requires_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="no metadata.json"):
    schema.read_metadata(str(tmp_path))
  schema.write_json(str(tmp_path / schema.METADATA_FILE), {"tags": ["a"], "n_mels": 128})
  assert schema.read_metadata(str(tmp_path)) == {"tags": ["a"], "n_mels": 128}
