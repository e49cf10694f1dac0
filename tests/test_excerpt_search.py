"""Search by excerpt (docs/catalog.md): deepbof-tag-catalog --segment_seconds stores one
embedding per segment of each track, on the one-shot and the chunked paths, equal to a
fresh computation from ExportedModel.pooled_windows and consistent with the track
embedding; deepbof-similar --segments finds the track an excerpt was cut from and where;
a catalogue without the flag is as before; another segment_seconds is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import tensorflow as tf

import serving_fixtures as fx
from beam_jobs import tag_catalog_lib as lib
from beam_jobs import catalog_runs
from deepbof_tf import catalog_parts
from deepbof_tf import excerpt_search
from deepbof_tf import exported as exported_lib
from deepbof_tf import segments
from deepbof_tf import streaming

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_PROCESS = ["--runner=DirectRunner", "--direct_num_workers=1"]
RATE = fx.SAMPLE_RATE
SEGMENT_SECONDS = 10.0
CHUNK_SECONDS = 12.0     # a 40-s track: 4 chunks, segments straddle their boundaries
ONE_SHOT_SECONDS = 26.0  # the 25-s tracks go through RunInference in one piece
# Each track is distinct 10-s sounds end to end; name → (sound seeds, seconds).
_TRACKS = {"a.wav": ((1, 2, 3, 4), 40.0), "b.wav": ((5, 6, 7, 8), 40.0),
           "c.wav": ((9, 10, 11), 25.0), "d.wav": ((12, 13, 14), 25.0)}
# The window clock of the test export (pool_frames 43: windows of 0.998 s).
CLOCK = segments.WindowClock(43, 512, RATE)


def _sound(seed: int) -> np.ndarray:
  return fx.music_like_signal(SEGMENT_SECONDS, 100 + seed, RATE)


def _track(name: str) -> np.ndarray:
  seeds, seconds = _TRACKS[name]
  return np.concatenate([_sound(s) for s in seeds])[:int(seconds * RATE)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  return fx.shared_export(tmp_path_factory)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("excerpt_audio")
  for name in _TRACKS:
    sf.write(str(root / name), _track(name), RATE, subtype="FLOAT")
  return root


def _config(exported, folder, out, **kwargs):
  return lib.TagCatalogConfig(model=exported["export_dir"], input=str(folder),
                              output_dir=out, top_k=3, chunk_seconds=CHUNK_SECONDS,
                              one_shot_seconds=ONE_SHOT_SECONDS, max_batch_size=4,
                              num_shards=1, **kwargs)


@pytest.fixture(scope="module")
def catalog(exported, folder, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("excerpt_catalog") / "catalog")
  metadata = catalog_runs.run(_config(exported, folder, out, segment_seconds=SEGMENT_SECONDS),
                     IN_PROCESS)
  return out, metadata


@pytest.fixture(scope="module")
def plain_catalog(exported, folder, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("plain_catalog") / "catalog")
  return out, catalog_runs.run(_config(exported, folder, out), IN_PROCESS)


def _rows(catalog_dir):
  return {os.path.basename(r["path"]): r
          for r in catalog_parts.read_table(catalog_dir).to_pylist()}


# --------------------------------------------------------------------------------------
# Segments from windows (no model).
# --------------------------------------------------------------------------------------


def test_windows_are_grouped_by_start_time_and_weighted_back_to_the_track(rng):
  pooled = rng.random([35, 6]).astype(np.float32)
  out = segments.segments_of_windows(pooled, SEGMENT_SECONDS, CLOCK)
  # Window j starts at j·0.998 s: 0…10 start before 10 s, 11…20 before 20 s, …
  np.testing.assert_array_equal(out[segments.SEGMENT_WINDOWS], [11, 10, 10, 4])
  np.testing.assert_allclose(out[segments.SEGMENT_STARTS],
                             np.array([0, 11, 21, 31]) * 43 * 512 / RATE, rtol=1e-6)
  np.testing.assert_allclose(out[segments.SEGMENT_EMBEDDINGS][1],
                             pooled[11:21].astype(np.float64).mean(0), rtol=1e-6)
  np.testing.assert_allclose(
      segments.weighted_track_embedding(out[segments.SEGMENT_EMBEDDINGS],
                                        out[segments.SEGMENT_WINDOWS]),
      streaming.mean_of_windows([pooled]), rtol=1e-6)
  short = segments.segments_of_windows(pooled[:4], SEGMENT_SECONDS, CLOCK)
  assert short[segments.SEGMENT_WINDOWS].tolist() == [4]  # shorter than one segment
  assert short[segments.SEGMENT_STARTS].tolist() == [0.0]
  # Segments shorter than a window: one window each, none empty.
  tiny = segments.segments_of_windows(pooled[:5], 0.5, CLOCK)
  assert tiny[segments.SEGMENT_WINDOWS].tolist() == [1] * 5
  # A window starting exactly on a boundary opens the next segment.
  exact = segments.WindowClock(10, 100, 1000)  # windows of exactly 1 s
  assert exact.segment_of(np.arange(5), 2.0).tolist() == [0, 0, 1, 1, 2]


def test_chunk_sums_and_the_segmented_combine_equal_the_whole(rng):
  pooled = rng.random([47, 5]).astype(np.float32)
  whole = segments.segments_of_windows(pooled, SEGMENT_SECONDS, CLOCK)
  cuts = [0, 12, 24, 36, 47]  # chunks of 12 windows: segments straddle them
  partials = []
  for i in range(4):
    chunk = pooled[cuts[i]:cuts[i + 1]]
    partials.append({"chunk": i, "num_chunks": 4,
                     "window_sum": chunk.astype(np.float64).sum(0),
                     "num_windows": chunk.shape[0], "num_samples": 1000,
                     "segments": segments.chunk_segment_sums(chunk, cuts[i],
                                                             SEGMENT_SECONDS, CLOCK)})
  fn = lib.SegmentedBagOfFeaturesCombineFn(CLOCK)
  a = fn.add_input(fn.add_input(fn.create_accumulator(), partials[3]), partials[1])
  b = fn.add_input(fn.add_input(fn.create_accumulator(), partials[0]), partials[2])
  out = fn.extract_output(fn.merge_accumulators([a, b]))
  plain = lib.BagOfFeaturesCombineFn()
  base = plain.create_accumulator()
  for p in partials:
    base = plain.add_input(base, {k: v for k, v in p.items() if k != "segments"})
  np.testing.assert_array_equal(out["embedding"], plain.extract_output(base)["embedding"])
  for key in segments.SEGMENT_FIELDS:
    np.testing.assert_allclose(out[key], whole[key], rtol=1e-6, err_msg=key)
  missing = fn.extract_output(fn.add_input(fn.create_accumulator(), partials[0]))
  assert "chunks [0] received of 4 expected" in missing["error"]


# --------------------------------------------------------------------------------------
# The catalogue with segments.
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_both_paths_store_segments_equal_to_a_fresh_computation(catalog, exported,
                                                                folder):
  out, metadata = catalog
  assert metadata["segment_seconds"] == SEGMENT_SECONDS
  c = metadata["counters"]
  assert c["reconciled"] and c["files_tagged"] == len(_TRACKS)
  assert c["beam_counters"]["files_chunked"] == 2
  assert c["beam_counters"]["files_one_shot"] == 2
  rows = _rows(out)
  model = exported_lib.ExportedModel(exported["export_dir"])
  assert lib.window_clock(model) == CLOCK
  for name, (_, seconds) in _TRACKS.items():
    row = rows[name]
    source = streaming.InMemoryWaveform(_track(name), RATE)
    pooled = model.pooled_windows(source, model.windows_per_seconds(30.0))  # fresh
    want = segments.segments_of_windows(pooled, SEGMENT_SECONDS, CLOCK)
    starts = np.asarray(row[segments.SEGMENT_STARTS], np.float32)
    counts = np.asarray(row[segments.SEGMENT_WINDOWS])
    parts = np.asarray(row[segments.SEGMENT_EMBEDDINGS], np.float32)
    assert len(starts) == int(np.ceil(seconds / SEGMENT_SECONDS)), name
    np.testing.assert_array_equal(starts, want[segments.SEGMENT_STARTS])
    np.testing.assert_array_equal(counts, want[segments.SEGMENT_WINDOWS])
    assert counts.sum() == pooled.shape[0]
    # Tolerance: float32 windows from other chunkings of the same streaming passes.
    np.testing.assert_allclose(parts, want[segments.SEGMENT_EMBEDDINGS], rtol=0,
                               atol=1e-5, err_msg=name)
    embedding = np.asarray(row["embedding"], np.float32)
    np.testing.assert_allclose(embedding, streaming.mean_of_windows([pooled]), rtol=0,
                               atol=1e-5, err_msg=name)
    # The mean of the segments weighted by their windows is the track's embedding.
    np.testing.assert_allclose(segments.weighted_track_embedding(parts, counts),
                               embedding, rtol=0, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(np.asarray(row["probabilities"]),
                               model.probabilities(embedding[None])[0], rtol=0,
                               atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_parquet_and_tfrecord_hold_the_same_segments(catalog):
  out, metadata = catalog
  schema = pq.read_schema(os.path.join(out, metadata["files"]["parquet"][0]))
  assert schema.equals(lib.parquet_schema(with_segments=True), check_metadata=False)
  rows = _rows(out)
  spec = lib.tfrecord_feature_spec(len(fx.TAGS), fx.NUM_HIDDEN, with_segments=True)
  files = [os.path.join(out, rel) for rel in metadata["files"]["tfrecord"]]
  seen = 0
  for s in tf.data.TFRecordDataset(files, compression_type="GZIP"):
    example = tf.io.parse_single_example(s, spec)
    row = rows[os.path.basename(example["path"].numpy().decode())]
    dense = {k: tf.sparse.to_dense(example[k]).numpy() for k in segments.SEGMENT_FIELDS}
    np.testing.assert_array_equal(dense[segments.SEGMENT_STARTS],
                                  np.asarray(row[segments.SEGMENT_STARTS], np.float32))
    np.testing.assert_array_equal(dense[segments.SEGMENT_WINDOWS],
                                  row[segments.SEGMENT_WINDOWS])
    np.testing.assert_array_equal(
        dense[segments.SEGMENT_EMBEDDINGS].reshape(-1, fx.NUM_HIDDEN),
        np.asarray(row[segments.SEGMENT_EMBEDDINGS], np.float32))
    seen += 1
  assert seen == len(_TRACKS)


@pytest.mark.slow
def test_an_excerpt_finds_its_track_and_where_it_was_cut(catalog, exported, tmp_path):
  out, _ = catalog
  table = excerpt_search.load_segments(out, ("path", "embedding", "top_tags"))
  assert table.embeddings.shape == (4 + 4 + 3 + 3, fx.NUM_HIDDEN)
  index = excerpt_search.build_index(table)
  model = exported_lib.ExportedModel(exported["export_dir"])
  # Cut from a chunked track (B at 20 s) and from a one-shot one (C at 10 s).
  for name, at in (("b.wav", 20.0), ("c.wav", 10.0), ("a.wav", 0.0)):
    excerpt = str(tmp_path / f"excerpt_{name}")
    samples = _track(name)[int(at * RATE):int((at + SEGMENT_SECONDS) * RATE)]
    sf.write(excerpt, samples, RATE, subtype="FLOAT")
    _, _, query = model.tag_file(excerpt, 30.0)
    found = excerpt_search.search(index, table, query, k=4)
    assert [os.path.basename(f["path"]) for f in found][0] == name, found
    assert abs(found[0]["start"] - at) < SEGMENT_SECONDS, found
    # Grouped by track: four distinct tracks, each with its best segment's score.
    assert len({f["path"] for f in found}) == 4
    assert [f["score"] for f in found] == sorted((f["score"] for f in found),
                                                 reverse=True)
    for f in found:
      rows = np.nonzero(table.track == f["track"])[0]
      best = index.search(query[None], len(index.paths))[0]
      first = next(r for r, _ in best if r in set(rows.tolist()))
      assert f["segment"] == first
    # Filters are per track: leaving the track out leaves out all its segments.
    keep = np.array([os.path.basename(p) != name for p in table.paths])
    filtered = excerpt_search.search(index, table, query, k=4, keep_tracks=keep)
    assert name not in [os.path.basename(f["path"]) for f in filtered]
    assert len(filtered) == 3


@pytest.mark.slow
def test_command_line_search_by_excerpt(catalog, tmp_path):
  out, _ = catalog
  excerpt = str(tmp_path / "excerpt.wav")
  sf.write(excerpt, _track("b.wav")[20 * RATE:30 * RATE], RATE, subtype="FLOAT")
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  command = [sys.executable, "-m", "serving.similar", f"--catalog_dir={out}",
             "--segments", f"--query={excerpt}", "--top_k=3"]
  built = subprocess.run(command + ["--build", "--output=json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
  assert built.returncode == 0, built.stderr
  assert "indexed 14 segments of 4 tracks" in built.stderr
  assert os.path.exists(os.path.join(out, excerpt_search.SEGMENT_INDEX_DIR,
                                     "index.json"))
  answer = json.loads(built.stdout)
  assert answer["segments"] and answer["segment_seconds"] == SEGMENT_SECONDS
  first = answer["neighbours"][0]
  assert os.path.basename(first["path"]) == "b.wav"
  assert abs(first["start"] - 20.0) < SEGMENT_SECONDS
  assert set(first) == {"rank", "path", "score", "start", "top_tags"}
  # A catalogue path: its track embedding against the segments, the track left out;
  # --where filters by track; the saved index is used.
  b_path = next(p for p in _rows(out).values()
                if os.path.basename(p["path"]) == "b.wav")["path"]
  table = subprocess.run(command[:-2] + [f"--query={b_path}", "--top_k=5",
                                         "--where=rock>=0"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert table.returncode == 0, table.stderr
  lines = [line.split("\t") for line in table.stdout.splitlines()]
  assert len(lines) == 3 and "b.wav" not in [os.path.basename(l[2]) for l in lines]
  assert all(float(l[3]) >= 0 for l in lines)


# --------------------------------------------------------------------------------------
# Without the flag; another segment_seconds.
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_without_the_flag_the_outputs_are_as_before(plain_catalog, catalog):
  out, metadata = plain_catalog
  assert "segment_seconds" not in metadata
  schema = pq.read_schema(os.path.join(out, metadata["files"]["parquet"][0]))
  assert schema.equals(catalog_parts.parquet_schema(), check_metadata=False)
  assert schema.equals(lib.parquet_schema(), check_metadata=False)
  files = [os.path.join(out, rel) for rel in metadata["files"]["tfrecord"]]
  for s in tf.data.TFRecordDataset(files, compression_type="GZIP"):
    keys = set(tf.train.Example.FromString(s.numpy()).features.feature)
    assert keys == set(lib.tfrecord_feature_spec(len(fx.TAGS), fx.NUM_HIDDEN))
  plain, segmented = _rows(out), _rows(catalog[0])
  for name in _TRACKS:
    a, b = plain[name], segmented[name]
    assert a["duration_seconds"] == b["duration_seconds"]
    if _TRACKS[name][1] > ONE_SHOT_SECONDS:  # the chunked path: the same numbers
      assert a["embedding"] == b["embedding"] and a["probabilities"] == b["probabilities"]
    else:  # one-shot: serving_padded vs. the streaming windows, float rounding apart
      np.testing.assert_allclose(a["embedding"], b["embedding"], rtol=0, atol=1e-5)
  with pytest.raises(ValueError, match="no segments.*--segment_seconds=10"):
    excerpt_search.load_segments(out)


def test_another_segment_seconds_is_refused(exported, tmp_path):
  folder = tmp_path / "audio"
  folder.mkdir()
  sf.write(str(folder / "a.wav"), fx.music_like_signal(2.0, 1, RATE), RATE)
  out = str(tmp_path / "catalog")
  catalog_runs.run(_config(exported, folder, out, segment_seconds=10.0), IN_PROCESS)
  with pytest.raises(ValueError, match=r"--segment_seconds=10, this run asks for "
                     r"--segment_seconds=5.*another --output_dir"):
    catalog_runs.run(_config(exported, folder, out, segment_seconds=5.0), IN_PROCESS)
  with pytest.raises(ValueError, match="made with --segment_seconds=10, this run asks "
                     "for no segments"):
    catalog_runs.run(_config(exported, folder, out), IN_PROCESS)
  again = catalog_runs.run(_config(exported, folder, out, segment_seconds=10.0), IN_PROCESS)
  assert again["last_run"]["files_to_tag"] == 0 and again["segment_seconds"] == 10.0
  plain = str(tmp_path / "plain")
  catalog_runs.run(_config(exported, folder, plain), IN_PROCESS)
  with pytest.raises(ValueError, match="made with no segments, this run asks for "
                     "--segment_seconds=10.*run with no --segment_seconds"):
    catalog_runs.run(_config(exported, folder, plain, segment_seconds=10.0), IN_PROCESS)
  with pytest.raises(ValueError, match="segment_seconds must be > 0"):
    _config(exported, folder, out, segment_seconds=0.0)
