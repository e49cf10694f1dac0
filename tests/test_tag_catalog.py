"""deepbof-tag-catalog: one multi-process Beam run (2 workers) over a folder with good
files of several formats, rates and channel counts, a 10-minute recording and broken
files; its outputs read back with pyarrow and tf.data; the same numbers as deepbof-tag;
the chunk combine; the entry point."""

from __future__ import annotations

import io
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
from beam_jobs import catalog_runs
from beam_jobs import tag_catalog_lib as lib
from deepbof_tf import catalog_parts
from deepbof_tf import exported as exported_lib
from serving import tag

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTI_PROCESS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
CHUNK_SECONDS = 30.0

# name → (seconds, rate, channels, format)
_GOOD = {
    "clip_a.wav": (5.0, 22050, 1, None),
    "stereo48k.flac": (6.0, 48000, 2, None),
    "clip_b.mp3": (4.0, 44100, 1, "MP3"),
    "clip_c.ogg": (3.0, 32000, 1, None),
    "stereo44k_45s.flac": (45.0, 44100, 2, None),   # chunked, resampled, stereo
    "ten_minutes.flac": (600.0, 22050, 1, None),    # chunked: 21 chunks of ~30 s
}


def _signal(seconds, rate, channels, seed):
  x = fx.music_like_signal(seconds, seed, rate)
  if channels == 2:
    return np.stack([x, 0.5 * np.roll(x, 300)], axis=1)
  return x


def _truncated(path, seconds, rate, fmt, keep):
  buffer = io.BytesIO()
  sf.write(buffer, fx.music_like_signal(seconds, 7, rate), rate, format=fmt)
  data = buffer.getvalue()
  path.write_bytes(data[:int(len(data) * keep)] if keep > 0 else data[:600])


def _nan_wav(path):
  x = fx.music_like_signal(3.0, 8, 22050)
  x[20000:20100] = np.nan
  sf.write(str(path), x, 22050, subtype="FLOAT")


# name → (expected stage, words the error must contain, writer)
_BROKEN = {
    "empty.wav": ("decode", "empty", lambda p: p.write_bytes(b"")),
    "not_audio.mp3": ("decode", "not", lambda p: p.write_text("this is not audio\n" * 40)),
    "truncated.mp3": ("decode", "", lambda p: _truncated(p, 2.0, 44100, "MP3", 0)),
    # The header promises 70 s; the stream ends half-way: found by the one decode pass.
    "truncated_long.flac": ("decode", "truncated",
                            lambda p: _truncated(p, 70.0, 22050, "FLAC", 0.5)),
    "nan.wav": ("decode", "NaN", _nan_wav),
    "too_short.wav": ("validate", "too short",
                      lambda p: sf.write(str(p), fx.music_like_signal(0.05, 9), 22050)),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  return fx.shared_export(tmp_path_factory)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("catalog_audio")
  for i, (name, (seconds, rate, channels, fmt)) in enumerate(sorted(_GOOD.items())):
    sf.write(str(root / name), _signal(seconds, rate, channels, 20 + i), rate, format=fmt)
  for name, (_, _, writer) in _BROKEN.items():
    writer(root / name)
  return root


@pytest.fixture(scope="module")
def catalog(exported, folder, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("catalog") / "catalog")
  config = lib.TagCatalogConfig(model=exported["export_dir"], input=str(folder),
                                output_dir=out, top_k=3, chunk_seconds=CHUNK_SECONDS,
                                one_shot_seconds=CHUNK_SECONDS, max_batch_size=4,
                                min_files_per_worker=0)  # two worker processes
  metadata = catalog_runs.run(config, MULTI_PROCESS)
  return out, metadata


def _parquet_rows(catalog_dir):
  table = catalog_parts.read_table(catalog_dir)
  return {row["path"]: row for row in table.to_pylist()}


@pytest.mark.slow
def test_every_output_is_written_and_the_counts_reconcile(catalog, folder):
  out, metadata = catalog
  assert not [d for d in os.listdir(os.path.dirname(out)) if ".incomplete-" in d]
  with open(os.path.join(out, "metadata.json")) as f:
    assert json.load(f) == metadata
  c = metadata["counters"]
  assert c["files_matched"] == len(_GOOD) + len(_BROKEN)
  assert c["files_tagged"] == len(_GOOD) and c["files_failed"] == len(_BROKEN)
  assert c["reconciled"] and c["matches_outputs"]
  assert c["counters_source"] == "beam_metrics"
  assert c["beam_counters"]["files_chunked"] == 2  # the 45-s and 10-min recordings
  assert metadata["tags"] == list(fx.TAGS) and metadata["n_tags"] == len(fx.TAGS)
  assert metadata["embedding_size"] == fx.NUM_HIDDEN
  assert metadata["failed_by_stage"] == {"decode": 5, "validate": 1}
  for kind in ("parquet", "tfrecord", "errors"):
    assert metadata["files"][kind]
    for rel in metadata["files"][kind]:
      assert os.path.exists(os.path.join(out, rel))


@pytest.mark.slow
def test_every_broken_file_is_named_with_its_reason(catalog, folder):
  out, _ = catalog
  errors = {os.path.basename(e["path"]): e for e in catalog_runs.read_errors(out)}
  assert set(errors) == set(_BROKEN)
  for name, (stage, words, _) in _BROKEN.items():
    e = errors[name]
    assert e["stage"] == stage, e
    assert e["error"].startswith(str(folder / name)), e
    assert words.lower() in e["error"].lower(), e


@pytest.mark.slow
def test_parquet_and_tfrecord_read_back_with_the_same_records(catalog):
  out, metadata = catalog
  rows = _parquet_rows(out)
  assert {os.path.basename(p) for p in rows} == set(_GOOD)
  schema = pq.read_schema(os.path.join(out, metadata["files"]["parquet"][0]))
  assert schema.equals(lib.parquet_schema(), check_metadata=False)
  spec = lib.tfrecord_feature_spec(len(fx.TAGS), fx.NUM_HIDDEN)
  files = [os.path.join(out, rel) for rel in metadata["files"]["tfrecord"]]
  dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").map(
      lambda s: tf.io.parse_single_example(s, spec))
  seen = 0
  for example in dataset:
    path = example["path"].numpy().decode()
    row = rows[path]
    seen += 1
    np.testing.assert_array_equal(example["embedding"].numpy(),
                                  np.asarray(row["embedding"], np.float32))
    np.testing.assert_array_equal(example["probabilities"].numpy(),
                                  np.asarray(row["probabilities"], np.float32))
    top = [t.decode() for t in tf.sparse.to_dense(example["top_tags"]).numpy()]
    assert top == row["top_tags"] and len(top) == 3
    assert example["duration_seconds"].numpy() == pytest.approx(row["duration_seconds"])
  assert seen == len(_GOOD)
  for path, row in rows.items():
    seconds = _GOOD[os.path.basename(path)][0]
    assert row["duration_seconds"] == pytest.approx(seconds, abs=1e-3)
    order = np.argsort(-np.asarray(row["probabilities"]), kind="stable")[:3]
    assert row["top_tags"] == [fx.TAGS[i] for i in order]


@pytest.mark.slow
def test_same_numbers_as_deepbof_tag(catalog, exported, folder):
  out, _ = catalog
  rows = _parquet_rows(out)
  tagger = tag.ExportedTagger(exported["export_dir"])
  paths = sorted(str(folder / name) for name in _GOOD)
  results = tag.tag_files(tagger, paths, chunk_seconds=CHUNK_SECONDS, progress=False)
  for result in results:
    assert result.error is None, result.error
    row = rows[result.path]
    np.testing.assert_allclose(np.asarray(row["probabilities"]), result.probabilities,
                               rtol=0, atol=1e-5, err_msg=result.path)
    np.testing.assert_allclose(np.asarray(row["embedding"]), result.embedding,
                               rtol=0, atol=1e-5, err_msg=result.path)
    assert row["duration_seconds"] == pytest.approx(result.duration_seconds, abs=1e-9)


def test_chunk_combine_is_the_mean_of_all_windows_and_checks_completeness(rng):
  windows = [rng.random([n, 5]).astype(np.float32) for n in (3, 3, 1)]
  partials = [{"chunk": i, "num_chunks": 3, "window_sum": w.astype(np.float64).sum(0),
               "num_windows": w.shape[0], "num_samples": 1000} for i, w in enumerate(windows)]
  fn = lib.BagOfFeaturesCombineFn()
  # Two partial accumulators merged, out of order, as a runner may do.
  a = fn.add_input(fn.create_accumulator(), partials[2])
  b = fn.add_input(fn.add_input(fn.create_accumulator(), partials[0]), partials[1])
  out = fn.extract_output(fn.merge_accumulators([a, b]))
  from deepbof_tf import streaming
  np.testing.assert_allclose(out["embedding"], streaming.mean_of_windows(windows),
                             rtol=1e-7)
  assert out["num_samples"] == 1000
  missing = fn.extract_output(fn.add_input(fn.create_accumulator(), partials[0]))
  assert "chunks [0] received of 3 expected" in missing["error"]


def test_input_formats(tmp_path):
  (tmp_path / "d").mkdir()
  config = lambda inp, fmt="auto": lib.TagCatalogConfig(model="m", input=inp,
                                                        output_dir="o", input_format=fmt)
  assert lib.resolved_input_format(config("x/annotations_final.csv")) == "mtt"
  assert lib.resolved_input_format(config("x/list.csv")) == "csv"
  assert lib.resolved_input_format(config("x/*.csv")) == "pattern"
  assert lib.resolved_input_format(config("x/list.csv", "pattern")) == "pattern"
  assert lib.input_pattern(str(tmp_path / "d")) == str(tmp_path / "d" / "**")
  assert lib.input_pattern(str(tmp_path / "*.mp3")) == str(tmp_path / "*.mp3")
  with pytest.raises(ValueError, match="chunk_seconds"):
    lib.TagCatalogConfig(model="m", input="i", output_dir="o", chunk_seconds=0.5)


@pytest.mark.slow
def test_entry_point_with_a_manifest(exported, folder, tmp_path):
  manifest = tmp_path / "list.csv"
  manifest.write_text("path,split,tags\nclip_a.wav,,rock\nmissing.wav,,\nclip_c.ogg,,\n")
  out = str(tmp_path / "cat")
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run(
      [sys.executable, "-m", "beam_jobs.tag_catalog", f"--model={exported['export_dir']}",
       f"--input={manifest}", f"--audio_root={folder}", f"--output_dir={out}",
       "--direct_num_workers=1"], capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "files matched 3 = tagged 2 + failed 1: reconciled" in proc.stdout
  (error,) = catalog_runs.read_errors(out)
  assert error["stage"] == "read" and "missing.wav: file not found" in error["error"]
  assert f"deepbof-tag-catalog: error: {error['error']} (stage read)" in proc.stderr
  proc = subprocess.run(
      [sys.executable, "-m", "beam_jobs.tag_catalog", f"--model={exported['export_dir']}",
       f"--input={manifest}", f"--output_dir={out}", "--chunk_second=3"],
      capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode != 0 and "did you mean --chunk_seconds" in proc.stderr
  shown = subprocess.run([sys.executable, "-m", "beam_jobs.tag_catalog", "--help"],
                         capture_output=True, text=True, env=env, timeout=300)
  assert shown.returncode == 0 and "--chunk_seconds" in shown.stdout
  assert "Traceback" not in shown.stderr


@pytest.mark.parametrize("name", ["stereo48k.flac", "clip_b.mp3", "clip_a.wav"])
def test_native_random_access_equals_whole_file_decoding(folder, name, rng):
  from deepbof_tf import audio, streaming
  path = str(folder / name)
  whole = audio.load_audio(path)
  source = streaming.ResampledNativeWaveform(path, 22050)
  assert source.num_samples == whole.size
  for start in [-700, 0, 12345, whole.size - 1000] + list(rng.integers(0, whole.size, 4)):
    stop = int(start) + 20000
    expected = np.zeros(stop - start, np.float32)
    lo, hi = max(int(start), 0), min(stop, whole.size)
    expected[lo - start:hi - start] = whole[lo:hi]
    np.testing.assert_allclose(source.read(int(start), stop), expected, rtol=0,
                               atol=1e-6, err_msg=f"{name} [{start}, {stop})")


def test_a_long_file_is_decoded_once_and_read_one_chunk_at_a_time(exported, folder,
                                                                   monkeypatch):
  """DecodeAudioDoFn on the 10-minute file (its store spooled to disk): one decode, no
  read asks for more than one chunk's samples, and the combined chunks are
  deepbof-tag's bag-of-features."""
  from deepbof_tf import audio, streaming
  reads, decodes = [], []
  original_read = streaming.SpooledWaveform.read
  original_decode = audio.open_decoded

  def recording_read(self, start, stop):
    reads.append(stop - start)
    return original_read(self, start, stop)

  def recording_decode(*args, **kwargs):
    decodes.append(args[0])
    return original_decode(*args, **kwargs)

  monkeypatch.setattr(streaming.SpooledWaveform, "read", recording_read)
  monkeypatch.setattr(audio, "open_decoded", recording_decode)
  dofn = lib.DecodeAudioDoFn(22050, "first", 1, int(CHUNK_SECONDS * 22050),
                             exported["export_dir"], CHUNK_SECONDS, memory_limit=1 << 20)
  dofn.setup()
  path = str(folder / "ten_minutes.flac")
  outputs = list(dofn.process(path))
  assert all(o.tag == lib.PARTIALS_TAG for o in outputs)
  partials = [value for key, value in (o.value for o in outputs) if key == path]
  assert decodes == [path]
  window = 43 * 512 / 22050
  chunk_samples = (round(CHUNK_SECONDS / window) * 43 + 8) * 512 + 2048
  plan = streaming.plan_chunks(600 * 22050, round(CHUNK_SECONDS / window), pool_frames=43)
  assert len(plan) == 21  # 30 windows of 0.998 s per chunk
  assert len(partials) == len(plan) and 0 < max(reads) <= chunk_samples
  # The first pass reads every chunk once and keeps its STFT magnitudes; the second
  # encodes from them (ExportedModel.iter_pooled_windows), so no chunk is read twice.
  assert len(reads) == len(partials)
  fn = lib.BagOfFeaturesCombineFn()
  acc = fn.create_accumulator()
  for p in partials:
    acc = fn.add_input(acc, p)
  embedding = fn.extract_output(acc)["embedding"]
  tagger = tag.ExportedTagger(exported["export_dir"])
  (result,) = tag.tag_files(tagger, [path], chunk_seconds=CHUNK_SECONDS, progress=False)
  np.testing.assert_allclose(embedding, result.embedding, rtol=0, atol=1e-6)


def test_manifest_paths_of_both_formats(tmp_path):
  tags = ["guitar", "slow"]
  rows = [["clip_id"] + tags + ["mp3_path"], ["1", "1", "0", "0/a.mp3"],
          ["2", "0", "0", "c/b.mp3"], ["3", "1", "1", "0/a.mp3"]]
  mtt = tmp_path / "annotations_final.csv"
  mtt.write_text("".join("\t".join(f'"{v}"' for v in row) + "\n" for row in rows))
  config = lib.TagCatalogConfig(model="m", input=str(mtt), output_dir="o",
                                audio_root="/data/mtt")
  assert lib.resolved_input_format(config) == "mtt"
  # Untagged clips are kept (tags do not matter here); a file listed twice once.
  assert catalog_runs.manifest_paths(config, "mtt") == ["/data/mtt/0/a.mp3", "/data/mtt/c/b.mp3"]
  csv = tmp_path / "list.csv"
  csv.write_text("path,split,tags\nx.wav,,\n/abs/y.flac,test,rock\ngs://b/z.mp3,,\n")
  config = lib.TagCatalogConfig(model="m", input=str(csv), output_dir="o",
                                audio_root="/root")
  assert catalog_runs.manifest_paths(config, "csv") == ["/root/x.wav", "/abs/y.flac",
                                               "gs://b/z.mp3"]


class _PickyModel:
  """Tags any batch, unless a clip in it is all zeros (then the whole batch fails)."""

  # The export's grouping by length, over this model's tag_batch.
  tag_waveforms = exported_lib.ExportedModel.tag_waveforms

  def tag_batch(self, waveforms):
    if any(not np.any(w) for w in waveforms):
      raise ValueError("waveform is silent")
    return (np.stack([np.full(2, w.mean()) for w in waveforms]),
            np.stack([np.full(3, w.size, np.float32) for w in waveforms]))


def test_a_failing_batch_is_retried_file_by_file():
  batch = [np.ones(5, np.float32), np.zeros(7, np.float32), np.full(9, 2.0, np.float32)]
  results = list(lib.waveform_inference_fn(_PickyModel(), batch, {}, "m"))
  assert [r.example for r in results] == [5, 7, 9]
  assert "error" not in results[0].inference and "error" not in results[2].inference
  np.testing.assert_array_equal(results[2].inference["embedding"], [9, 9, 9])
  assert results[1].inference == {"error": "waveform is silent"}
  fmt = lib.FormatRecordDoFn(["a", "b"], 1, 22050)
  (error,) = list(fmt.process(("x/silent.wav", results[1])))
  assert error.tag == lib.ERROR_TAG
  assert error.value == {"path": "x/silent.wav", "stage": "inference",
                         "error": "x/silent.wav: waveform is silent"}
  (record,) = list(fmt.process(("x/two.wav", results[2])))
  assert record["top_tags"] == ["a"] and record["duration_seconds"] == 9 / 22050
  dead = list(lib._failed_batch_errors(([("p1", 0), ("p2", 0)], RuntimeError("boom"))))
  assert [d["path"] for d in dead] == ["p1", "p2"]
  assert dead[0]["error"] == "p1: RuntimeError: boom" and dead[0]["stage"] == "inference"
