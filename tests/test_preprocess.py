"""The Beam preprocessing job: DoFns called directly, one multi-process end-to-end run
over a generated corpus with broken and awkward inputs, the output-directory protocol
and the absl entry point."""

import io
import json
import os

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from beam_jobs import job_io
from beam_jobs import preprocess
from beam_jobs import preprocess_lib as lib
from deepbof_tf import audio, frontend, sampling
from deepbof_tf.config import FrontendConfig, SamplingConfig, to_dict
from deepbof_tf.data import manifests, readers, schema

MULTI_PROCESS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
IN_PROCESS = ["--runner=DirectRunner", "--direct_num_workers=1"]


def _music(seconds, rate, seed, channels=1):
  """Tones with note onsets plus a little noise: gives novelty peaks to sample."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * rate)) / rate
  x = np.zeros_like(t)
  for start in np.arange(0, seconds, 0.25):
    f = 110 * 2 ** (rng.integers(0, 36) / 12)
    env = np.where(t >= start, np.exp(-(t - start) * 6), 0)
    x += 0.2 * env * np.sin(2 * np.pi * f * t)
  x += 0.01 * rng.standard_normal(t.size)
  if channels == 2:
    return np.stack([x, 0.5 * np.roll(x, 100)], axis=1).astype(np.float32)
  return x.astype(np.float32)


def _write(path, data, rate, fmt=None):
  sf.write(str(path), data, rate, format=fmt)


# (name, split, tags, writer) — the valid inputs, awkward ones included.
_VALID = [
    ("tone_a.wav", "train", "rock;guitar", lambda p: _write(p, _music(2.5, 22050, 1), 22050)),
    ("tone_b.flac", "train", "rock", lambda p: _write(p, _music(2.5, 44100, 2), 44100)),
    ("noise_c.ogg", "train", "jazz", lambda p: _write(p, _music(2.5, 32000, 3), 32000)),
    ("music_d.mp3", "train", "guitar;jazz",
     lambda p: _write(p, _music(2.5, 44100, 4), 44100, "MP3")),
    ("silence.wav", "train", "", lambda p: _write(p, np.zeros(22050 * 2, np.float32), 22050)),
    ("stereo48k.flac", "train", "rock",
     lambda p: _write(p, _music(2.5, 48000, 5, channels=2), 48000)),
    ("mono8k.wav", "valid", "guitar", lambda p: _write(p, _music(2.0, 8000, 6), 8000)),
    ("clip_e.wav", "valid", "rock", lambda p: _write(p, _music(2.0, 22050, 7), 22050)),
    ("clip_f.mp3", "test", "jazz", lambda p: _write(p, _music(2.0, 44100, 8), 44100, "MP3")),
    ("clip_g.ogg", "test", "rock;jazz", lambda p: _write(p, _music(2.0, 44100, 9), 44100)),
]


def _truncated_mp3(path):
  buffer = io.BytesIO()
  sf.write(buffer, _music(2.0, 44100, 10), 44100, format="MP3")
  path.write_bytes(buffer.getvalue()[:600])


# (name, expected stage, writer or None for a missing file)
_BROKEN = [
    ("missing.wav", "read", None),
    ("empty.mp3", "decode", lambda p: p.write_bytes(b"")),
    ("truncated.mp3", "decode", _truncated_mp3),
    ("text.mp3", "decode", lambda p: p.write_text("this is not audio\n" * 40)),
    # 0.1 s → frame_count = ceil(2205 / 512) + 1 = 6 frames < one 8-frame block.
    ("short.wav", "validate", lambda p: _write(p, _music(0.1, 22050, 11), 22050)),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  audio_root = root / "audio"
  audio_root.mkdir()
  rows = ["path,split,tags"]
  for name, split, tags, writer in _VALID:
    writer(audio_root / name)
    rows.append(f"{name},{split},{tags}")
  for name, _, writer in _BROKEN:
    if writer is not None:
      writer(audio_root / name)
    rows.append(f"{name},train,rock")
  manifest = root / "manifest.csv"
  manifest.write_text("\n".join(rows) + "\n")
  return {"root": root, "audio_root": str(audio_root), "manifest": str(manifest)}


def _config(corpus, output_dir, **kwargs):
  sampling_kwargs = {"num_blocks": 20, **kwargs.pop("sampling", {})}
  return lib.PreprocessConfig(manifest=corpus["manifest"], audio_root=corpus["audio_root"],
                              output_dir=str(output_dir),
                              sampling=SamplingConfig(**sampling_kwargs), **kwargs)


def _features_of(path):
  waveform = audio.load_audio(path)
  log_mel, novelty = frontend.compute_features(waveform)
  return waveform, log_mel.numpy(), novelty.numpy()


# --------------------------------------------------------------------------------------
# DoFns called directly.
# --------------------------------------------------------------------------------------


def _record(corpus, name, split="train"):
  return {"clip_id": name, "path": name, "split": split, "labels": [1.0, 0.0],
          "audio_path": os.path.join(corpus["audio_root"], name)}


def _run_dofn(dofn, element):
  outputs = list(dofn.process(element))
  main = [o for o in outputs if not hasattr(o, "tag")]
  errors = [o.value for o in outputs if hasattr(o, "tag")]
  assert all(o.tag == lib.ERROR_TAG for o in outputs if hasattr(o, "tag"))
  return main, errors


def test_compute_features_dofn_valid_clip(corpus):
  dofn = lib.ComputeFeaturesDoFn(FrontendConfig(), "first", 8)
  dofn.setup()
  main, errors = _run_dofn(dofn, _record(corpus, "tone_b.flac"))
  assert errors == [] and len(main) == 1
  out = main[0]
  waveform, log_mel, novelty = _features_of(os.path.join(corpus["audio_root"],
                                                         "tone_b.flac"))
  assert out["log_mel"].shape == (frontend.frame_count(waveform.size), 128)
  np.testing.assert_allclose(out["log_mel"], log_mel, rtol=0, atol=1e-6)
  np.testing.assert_allclose(out["novelty"], novelty, rtol=0, atol=1e-6)
  assert out["labels"] == [1.0, 0.0] and out["split"] == "train"


@pytest.mark.parametrize("name, stage, message", [
    ("missing.wav", "read", "no such file"),
    ("text.mp3", "decode", "text.mp3"),
    ("short.wav", "validate", "shorter than one 8-frame block"),
])
def test_compute_features_dofn_failures(corpus, name, stage, message):
  dofn = lib.ComputeFeaturesDoFn(FrontendConfig(), "first", 8)
  dofn.setup()
  main, errors = _run_dofn(dofn, _record(corpus, name))
  assert main == []
  assert len(errors) == 1
  assert errors[0]["path"] == name and errors[0]["stage"] == stage
  assert message in errors[0]["error"]


def test_compute_features_dofn_rejects_non_finite_and_front_end_errors(corpus):
  dofn = lib.ComputeFeaturesDoFn(FrontendConfig(), "first", 8)
  dofn.setup()
  real = dofn._compute_features

  def nan_features(waveform, config):
    log_mel, novelty = real(waveform, config)
    return log_mel.numpy() * np.nan, novelty

  dofn._compute_features = nan_features
  _, errors = _run_dofn(dofn, _record(corpus, "tone_a.wav"))
  assert [(e["stage"], "non-finite" in e["error"]) for e in errors] == [("validate", True)]

  def broken(waveform, config):
    raise tf.errors.InvalidArgumentError(None, None, "boom")

  dofn._compute_features = broken
  _, errors = _run_dofn(dofn, _record(corpus, "tone_a.wav"))
  assert [e["stage"] for e in errors] == ["features"]
  assert "InvalidArgumentError" in errors[0]["error"]


def _write_with_beam_sinks(tmp_path, elements, splits, num_shards=0, file_format="tfrecord",
                           prefix=None, expected_counts=None):
  """Runs :func:`preprocess_lib.write_records` in a small local pipeline.

  Checks inside the pipeline that the ``files`` output names exactly the files in the
  directory afterwards (checked by the caller) and that ``counts`` is
  ``expected_counts``; returns the output directory.
  """
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
  from apache_beam.testing.util import assert_that, equal_to
  out_dir = str(tmp_path / "out")
  options = PipelineOptions(IN_PROCESS)
  with beam.Pipeline(runner=job_io.make_runner(options), options=options) as pipeline:
    files, counts = lib.write_records(
        pipeline | beam.Create(elements), "W", out_dir, "clips", splits, num_shards,
        file_format=file_format, prefix=prefix)

    def split_matches_name(found):
      for f in found:
        name = os.path.basename(f["path"])
        assert name.startswith(f["split"] + "-") or prefix, f
      assert len(found) == len({f["path"] for f in found})

    assert_that(files, split_matches_name, label="Files")
    if expected_counts is not None:
      assert_that(counts, equal_to(expected_counts), label="Counts")
  return out_dir


def test_write_records_uses_beams_sinks_with_the_datasets_names(tmp_path, rng):
  clips = {}
  elements = []
  for clip_id in ["b", "a", "c", "d"]:
    split = "valid" if clip_id == "c" else "train"
    log_mel = rng.normal(size=(10, 128)).astype(np.float32)
    clips[clip_id] = log_mel
    elements.append((split, clip_id, schema.serialize_clip_example(
        clip_id, clip_id, log_mel, np.zeros(10), [1.0])))
  out_dir = _write_with_beam_sinks(tmp_path, elements, schema.SPLITS,
                                   expected_counts=[("train", 3), ("valid", 1)])
  names = sorted(os.listdir(out_dir))
  # One file per bundle and split (one bundle here); an empty split gets one empty file;
  # no temporary file or directory is left behind.
  assert names == ["test-00000-of-00001.tfrecord.gz", "train-00000-of-00001.tfrecord.gz",
                   "valid-00000-of-00001.tfrecord.gz"]
  schema.write_json(str(tmp_path / "metadata.json"), {"tags": ["x"], "n_mels": 128})
  os.rename(out_dir, tmp_path / schema.CLIPS_DIR)
  train = {g["clip_id"].numpy().decode(): g["log_mel"].numpy()
           for g in readers.clip_dataset(str(tmp_path), "train")}
  assert sorted(train) == ["a", "b", "d"]
  for clip_id, log_mel in train.items():
    np.testing.assert_array_equal(log_mel, clips[clip_id])
  assert list(readers.clip_dataset(str(tmp_path), "test")) == []


def test_key_ordered_sink_numbers_shards_by_their_smallest_key(tmp_path, rng):
  """Beam's sink protocol (temporary files, then finalize) driven by hand with two
  bundles; whatever order they finish in, shard 0 is the one with the smallest key."""
  from beam_jobs import sinks
  clips = {c: rng.normal(size=(4, 128)).astype(np.float32) for c in "abd"}

  def record(clip_id):
    return schema.serialize_clip_example(clip_id, clip_id, clips[clip_id], np.zeros(4),
                                         [1.0])

  for bundles in ([["d"], ["b", "a"]], [["b", "a"], ["d"]]):
    out = tmp_path / f"run{len(os.listdir(tmp_path))}" / "clips"
    sink = sinks.KeyOrderedTFRecordSink(str(out / "train"), schema.TFRECORD_SUFFIX, 0,
                                        lib.SHARD_NAME_TEMPLATE)
    init = sink.initialize_write()
    temp_paths = []
    for index, bundle in enumerate(bundles):
      writer = sink.open_writer(init, f"uid-{9 - index}")  # later bundle, smaller uid
      for clip_id in bundle:
        writer.write((clip_id, record(clip_id)))
      temp_paths.append(writer.close())
    final = list(sink.finalize_write(init, temp_paths, sink.pre_finalize(init, temp_paths)))
    assert sorted(os.path.basename(f) for f in final) == [
        "train-00000-of-00002.tfrecord.gz", "train-00001-of-00002.tfrecord.gz"]
    assert sorted(os.listdir(out)) == sorted(os.path.basename(f) for f in final)
    schema.write_json(str(out.parent / "metadata.json"), {"tags": ["x"], "n_mels": 128})
    train = [g["clip_id"].numpy().decode()
             for g in readers.clip_dataset(str(out.parent), "train")]
    # Shard 0 holds "a" (the smallest key); records keep their arrival order.
    assert train == ["b", "a", "d"]


def test_key_ordered_sink_writes_standard_gzip_with_isal(tmp_path, rng):
  """The sink's ISA-L gzip is one standard gzip member holding exactly Beam's TFRecord
  framing of the records, readable by Python's gzip and by TensorFlow."""
  import gzip
  from apache_beam.io.tfrecordio import _TFRecordUtil
  from beam_jobs import sinks
  records = [rng.bytes(int(n)) for n in (0, 1, 70_000, 300_000)]
  records.append(np.zeros(200_000, np.float32).tobytes())  # compressible
  sink = sinks.KeyOrderedTFRecordSink(str(tmp_path / "out" / "train"),
                                      schema.TFRECORD_SUFFIX, 0, lib.SHARD_NAME_TEMPLATE)
  init = sink.initialize_write()
  writer = sink.open_writer(init, "uid")
  for index, record in enumerate(records):
    writer.write((f"k{index}", record))
  path = writer.close()
  expected = io.BytesIO()
  for record in records:
    _TFRecordUtil.write_record(expected, record)
  with open(path, "rb") as f:
    compressed = f.read()
  assert compressed[:2] == b"\x1f\x8b"
  assert gzip.decompress(compressed) == expected.getvalue()
  assert len(compressed) < 0.5 * len(expected.getvalue())  # it compressed the zeros
  read = [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
  assert read == records


def test_igzip_writer_flush_keeps_one_valid_stream(tmp_path):
  import gzip
  from beam_jobs import sinks
  path = tmp_path / "x.gz"
  writer = sinks.IgzipWriter(open(path, "wb"))
  writer.write(b"abc" * 1000)
  writer.flush()
  writer.write(b"def")
  writer.close()
  assert gzip.decompress(path.read_bytes()) == b"abc" * 1000 + b"def"


def test_worker_threads_cap_tensorflow_and_numpys_blas():
  """A worker computes with one thread: TensorFlow's pools and NumPy's BLAS (the
  resampler's products). Run in a fresh process: the limits are process-wide."""
  import subprocess
  import sys
  code = ("from beam_jobs import worker_threads\n"
          "worker_threads.limit_threads(1)\n"
          "import json, threadpoolctl, tensorflow as tf\n"
          "blas = [i['num_threads'] for i in threadpoolctl.threadpool_info()\n"
          "        if i['user_api'] == 'blas']\n"
          "print(json.dumps([blas, tf.config.threading.get_intra_op_parallelism_threads(),\n"
          "                  tf.config.threading.get_inter_op_parallelism_threads()]))\n")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=root, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 0, result.stderr[-2000:]
  blas, intra, inter = json.loads(result.stdout.strip().splitlines()[-1])
  assert blas and all(n == 1 for n in blas), blas  # NumPy's BLAS is loaded and capped
  assert (intra, inter) == (1, 1)


def test_write_records_fixed_shards_and_json_lines(tmp_path):
  elements = [("train", f"k{i}", schema.serialize_block_example("c", i, np.zeros((8, 128))))
              for i in range(7)]
  out_dir = _write_with_beam_sinks(tmp_path / "blocks", elements, ["train"],
                                   num_shards=3, expected_counts=[("train", 7)])
  assert sorted(os.listdir(out_dir)) == [f"train-{i:05d}-of-00003.tfrecord.gz"
                                         for i in range(3)]
  stored = sum(1 for _ in tf.data.TFRecordDataset(
      [os.path.join(out_dir, n) for n in os.listdir(out_dir)], compression_type="GZIP"))
  assert stored == 7
  errors = [("errors", f"p{i}", {"path": f"p{i}", "stage": "decode", "error": "bad"})
            for i in range(2)]
  out_dir = _write_with_beam_sinks(tmp_path / "errors", errors, ["errors"],
                                   file_format="jsonl", prefix=lib.ERRORS_PREFIX,
                                   expected_counts=[("errors", 2)])
  (name,) = os.listdir(out_dir)
  assert name == "errors-00000-of-00001.jsonl"
  with open(os.path.join(out_dir, name)) as f:
    assert sorted(json.loads(line)["path"] for line in f) == ["p0", "p1"]


def test_sample_blocks_dofn_reads_a_shard(tmp_path, rng):
  path = str(tmp_path / "train.tfrecord.gz")
  clips = {}
  with tf.io.TFRecordWriter(path, options="GZIP") as writer:
    for i, n_frames in enumerate([120, 30, 200]):
      log_mel = rng.normal(size=(n_frames, 128)).astype(np.float32)
      novelty = rng.uniform(size=n_frames).astype(np.float32)
      clips[f"c{i}"] = (log_mel, novelty)
      writer.write(schema.serialize_clip_example(f"c{i}", "p", log_mel, novelty, [0.0]))
  config = SamplingConfig(num_blocks=1000)
  dofn = lib.SampleBlocksDoFn(config, n_tags=1, n_mels=128)
  dofn.setup()
  out = list(dofn.process({"path": path}, 2, None))
  # 120 frames → 113 starts → 2 segments; 30 → none; 200 → 193 starts → 4 segments.
  assert len(out) == 2 * (2 + 0 + 4)
  for split, key, serialized in out:
    parsed = schema.parse_block(serialized)
    clip_id = parsed["clip_id"].numpy().decode()
    frame = int(parsed["frame"].numpy())
    np.testing.assert_array_equal(parsed["block"].numpy(),
                                  clips[clip_id][0][frame:frame + 8].reshape(-1))
    assert split == "train" and len(key) == 32


# --------------------------------------------------------------------------------------
# End to end, multi-process DirectRunner (pickling problems show up here).
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(corpus):
  output_dir = corpus["root"] / "dataset"
  metadata = lib.run(_config(corpus, output_dir), beam_args=MULTI_PROCESS)
  return {"dir": str(output_dir), "metadata": metadata}


@pytest.mark.slow
def test_end_to_end_counts_reconcile(dataset):
  metadata = dataset["metadata"]
  assert metadata == schema.read_metadata(dataset["dir"])
  counters = metadata["counters"]
  assert counters["counters_source"] == "beam_metrics"
  assert counters["clips_read"] == len(_VALID) + len(_BROKEN) == 15
  assert counters["clips_written"] == 10 and counters["clips_failed"] == 5
  assert counters["reconciled"] and counters["matches_outputs"]
  assert metadata["split_counts"] == {"train": 6, "valid": 2, "test": 2}
  assert metadata["num_clips"] == 10 and metadata["num_failed"] == 5
  assert metadata["failed_by_stage"] == {"read": 1, "decode": 3, "validate": 1}
  assert metadata["tags"] == ["rock", "jazz", "guitar"]  # frequency, then name
  assert metadata["frontend"] == to_dict(FrontendConfig())
  assert (metadata["sample_rate"], metadata["n_fft"], metadata["hop_length"],
          metadata["n_mels"], metadata["block_frames"]) == (22050, 1024, 512, 128, 8)
  assert metadata["sampling"]["scheme"] == "onset"
  # No temporary directory is left next to the dataset.
  parent = os.path.dirname(dataset["dir"])
  assert not [d for d in os.listdir(parent) if d.startswith("dataset.")]
  assert sorted(os.listdir(dataset["dir"])) == ["blocks", "clips", "errors",
                                                "metadata.json"]


@pytest.mark.slow
def test_end_to_end_beam_counters(dataset):
  beam_counters = dataset["metadata"]["counters"]["beam_counters"]
  assert beam_counters["failed_read"] == 1 and beam_counters["failed_decode"] == 3
  assert beam_counters["failed_validate"] == 1 and beam_counters.get("failed_features", 0) == 0
  assert beam_counters["blocks_written"] == beam_counters["blocks_sampled"] == 20
  assert beam_counters["errors_written"] == 5
  assert beam_counters["clips_sampled"] == 6  # every train clip was read back


@pytest.mark.slow
def test_end_to_end_error_records(dataset):
  errors = readers.read_errors(dataset["dir"])
  assert sorted((e["path"], e["stage"]) for e in errors) == sorted(
      (name, stage) for name, stage, _ in _BROKEN)
  for e in errors:
    assert e["path"] in e["error"] or e["audio_path"] in e["error"]


@pytest.mark.slow
def test_end_to_end_clips_equal_the_front_end(corpus, dataset):
  manifest = manifests.read_csv_manifest(corpus["manifest"])
  expected_split = {name: split for name, split, _, _ in _VALID}
  seen = {}
  for split in schema.SPLITS:
    for clip in readers.clip_dataset(dataset["dir"], split):
      clip_id = clip["clip_id"].numpy().decode()
      seen[clip_id] = split
      log_mel = clip["log_mel"].numpy()
      novelty = clip["novelty"].numpy()
      waveform, ref_log_mel, ref_novelty = _features_of(
          os.path.join(corpus["audio_root"], clip_id))
      assert log_mel.shape == (frontend.frame_count(waveform.size), 128)
      assert clip["n_frames"].numpy() == log_mel.shape[0]
      assert np.isfinite(log_mel).all() and np.isfinite(novelty).all()
      np.testing.assert_allclose(log_mel, ref_log_mel, rtol=0, atol=1e-5)
      np.testing.assert_allclose(novelty, ref_novelty, rtol=0, atol=1e-5)
      entry = next(e for e in manifest.entries if e.clip_id == clip_id)
      np.testing.assert_array_equal(clip["labels"].numpy(), manifest.labels(entry))
      assert clip["path"].numpy().decode() == clip_id
      if clip_id == "silence.wav":
        assert not log_mel.any() and not novelty.any()
  assert seen == expected_split


@pytest.mark.slow
def test_end_to_end_blocks_are_the_budgeted_onset_samples(dataset):
  metadata = dataset["metadata"]
  config = SamplingConfig(num_blocks=20)
  # 6 train clips of 2–2.5 s: 2 segments each except the 2-s silence (1): 11 segments,
  # ceil(20 / 11) = 2 passes, 22 candidates > the budget of 20.
  assert metadata["sampling"]["train_segments"] == 11
  assert metadata["sampling"]["num_passes"] == 2
  assert metadata["sampling"]["num_candidates"] == 22
  assert metadata["num_blocks"] == 20
  threshold = bytes.fromhex(metadata["sampling"]["budget_threshold"])
  clips = {c["clip_id"].numpy().decode(): c for c in readers.clip_dataset(dataset["dir"],
                                                                          "train")}
  expected = set()
  for clip_id, clip in clips.items():
    for _, frame, _ in sampling.sample_clip_blocks(
        clip_id, clip["log_mel"].numpy(), clip["novelty"].numpy(), config, 2,
        max_key=threshold):
      expected.add((clip_id, frame))
  got = set()
  for block in readers.block_dataset(dataset["dir"]):
    clip_id = block["clip_id"].numpy().decode()
    frame = int(block["frame"].numpy())
    got.add((clip_id, frame))
    np.testing.assert_array_equal(
        block["block"].numpy(), clips[clip_id]["log_mel"].numpy()[frame:frame + 8].ravel())
  assert got == expected and len(got) == 20


@pytest.mark.slow
def test_existing_output_dir_is_refused_then_overwritten(corpus, dataset, tmp_path):
  before = schema.read_metadata(dataset["dir"])
  with pytest.raises(FileExistsError, match="not empty; .*--overwrite"):
    lib.run(_config(corpus, dataset["dir"]), beam_args=IN_PROCESS)
  assert schema.read_metadata(dataset["dir"]) == before
  # --overwrite with a smaller manifest (one valid clip, one broken) replaces it.
  small = tmp_path / "small.csv"
  small.write_text("path,split,tags\nclip_e.wav,train,pop\nempty.mp3,test,pop\n")
  config = lib.PreprocessConfig(manifest=str(small), audio_root=corpus["audio_root"],
                                output_dir=dataset["dir"], overwrite=True,
                                sampling=SamplingConfig(num_blocks=3, scheme="random",
                                                        blocks_per_clip=1))
  metadata = lib.run(config, beam_args=IN_PROCESS)
  assert schema.read_metadata(dataset["dir"]) == metadata
  assert metadata["split_counts"] == {"train": 1, "valid": 0, "test": 0}
  assert metadata["num_blocks"] == 1  # one candidate per clip: fewer than the budget
  assert [e["path"] for e in readers.read_errors(dataset["dir"])] == ["empty.mp3"]
  # Empty splits still have a readable (empty) shard.
  assert list(readers.clip_dataset(dataset["dir"], "valid")) == []
  assert len(list(readers.clip_dataset(dataset["dir"], "train"))) == 1
  parent = os.path.dirname(dataset["dir"])
  assert not [d for d in os.listdir(parent) if d.startswith("dataset.")]


def test_failed_run_leaves_no_dataset(corpus, tmp_path, monkeypatch):
  # A run that fails after the pipeline wrote its outputs (here: an injected failure
  # while building metadata.json) leaves neither the output directory nor its
  # temporary sibling behind.
  def fail(*args, **kwargs):
    raise RuntimeError("injected failure")

  monkeypatch.setattr(lib, "build_metadata", fail)
  small = tmp_path / "small.csv"
  small.write_text("path,split,tags\nclip_e.wav,train,pop\n")
  config = lib.PreprocessConfig(manifest=str(small), audio_root=corpus["audio_root"],
                                output_dir=str(tmp_path / "out"),
                                sampling=SamplingConfig(num_blocks=10))
  with pytest.raises(Exception, match="injected failure"):
    lib.run(config, beam_args=IN_PROCESS)
  assert os.listdir(tmp_path) == ["small.csv"]


def test_a_run_removes_the_work_dir_of_a_killed_run(corpus, tmp_path):
  stale = tmp_path / "out.incomplete-deadbeef"  # left by a run killed with SIGKILL
  (stale / "clips").mkdir(parents=True)
  record = {**job_io.owner_record(), "pid": 2 ** 22 + 7}  # no such process
  (stale / job_io.OWNER_FILE).write_text(json.dumps(record))
  small = tmp_path / "small.csv"
  small.write_text("path,split,tags\nclip_e.wav,train,pop\n")
  config = lib.PreprocessConfig(manifest=str(small), audio_root=corpus["audio_root"],
                                output_dir=str(tmp_path / "out"),
                                sampling=SamplingConfig(num_blocks=3))
  lib.run(config, beam_args=IN_PROCESS)
  assert sorted(os.listdir(tmp_path)) == ["out", "small.csv"]
  assert job_io.OWNER_FILE not in os.listdir(tmp_path / "out")


def test_progress_lines_during_a_local_run(corpus, tmp_path, capsys):
  small = tmp_path / "small.csv"
  names = ["tone_a.wav", "clip_e.wav", "noise_c.ogg"]
  small.write_text("path,split,tags\n" + "".join(f"{n},train,pop\n" for n in names))
  config = lib.PreprocessConfig(manifest=str(small), audio_root=corpus["audio_root"],
                                output_dir=str(tmp_path / "out"), progress_seconds=0.2,
                                sampling=SamplingConfig(num_blocks=3))
  lib.run(config, beam_args=IN_PROCESS)
  lines = [l for l in capsys.readouterr().err.splitlines()
           if l.startswith("deepbof-preprocess: clips ")]
  assert len(lines) >= 2, lines  # at least one while running, and the final count
  assert lines[-1].startswith("deepbof-preprocess: clips 3/3 (100 %)")
  assert "_progress" not in os.listdir(tmp_path / "out")
  assert job_io.format_progress(120, 600, 30.0) == (
      "clips 120/600 (20 %), 4.0 clips/s, about 2 min 00 s left")
  assert job_io.format_progress(590, 600, 59.0) == (
      "clips 590/600 (98 %), 10.0 clips/s, about 1 s left")


def test_fixed_num_shards(corpus, tmp_path):
  small = tmp_path / "small.csv"
  small.write_text("path,split,tags\n" + "".join(
      f"{name},train,pop\n" for name in ["tone_a.wav", "clip_e.wav", "noise_c.ogg"]))
  config = lib.PreprocessConfig(manifest=str(small), audio_root=corpus["audio_root"],
                                output_dir=str(tmp_path / "out"), num_shards=2,
                                sampling=SamplingConfig(num_blocks=4))
  metadata = lib.run(config, beam_args=IN_PROCESS)
  clip_files = sorted(os.listdir(tmp_path / "out" / "clips"))
  # Exactly num_shards files per split, as Beam's sink writes them (empty ones too).
  for split in schema.SPLITS:
    assert [f for f in clip_files if f.startswith(split)] == [
        f"{split}-{i:05d}-of-00002.tfrecord.gz" for i in range(2)]
  assert metadata["split_counts"]["train"] == 3 and metadata["num_blocks"] == 4
  assert len(list(readers.clip_dataset(str(tmp_path / "out"), "train"))) == 3
  assert len(list(readers.block_dataset(str(tmp_path / "out")))) == 4


def test_empty_manifest_is_refused(tmp_path):
  manifest = tmp_path / "empty.csv"
  manifest.write_text("path,split,tags\n")
  config = lib.PreprocessConfig(manifest=str(manifest), audio_root="",
                                output_dir=str(tmp_path / "out"))
  with pytest.raises(ValueError, match="empty.csv: the manifest lists no clips"):
    lib.run(config, beam_args=IN_PROCESS)
  assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------
# The absl entry point (in-process DirectRunner) on a MagnaTagATune-format manifest.
# --------------------------------------------------------------------------------------


def test_entry_point_mtt_manifest(corpus, tmp_path, capsys):
  tags = ["guitar", "classical", "slow"]
  header = ["clip_id"] + tags + ["mp3_path"]
  rows = [["1", "1", "0", "1", "0/tone_a.wav"], ["2", "0", "1", "1", "c/clip_e.wav"],
          ["3", "1", "1", "0", "f/clip_f.mp3"], ["4", "0", "0", "0", "1/missing.mp3"]]
  mtt = tmp_path / "annotations_final.csv"
  mtt.write_text("".join("\t".join(f'"{v}"' for v in row) + "\n" for row in [header] + rows))
  audio_root = tmp_path / "mtt"
  for folder, name in [("0", "tone_a.wav"), ("c", "clip_e.wav"), ("f", "clip_f.mp3")]:
    (audio_root / folder).mkdir(parents=True)
    os.symlink(os.path.join(corpus["audio_root"], name), audio_root / folder / name)
  out = tmp_path / "out"
  argv = ["deepbof-preprocess", f"--manifest={mtt}", "--manifest_format=mtt",
          f"--audio_root={audio_root}", f"--output_dir={out}", "--top_n_tags=2",
          "--num_blocks=5", "--sampling=random", "--seed=3"] + IN_PROCESS
  try:
    rest = preprocess._parse_flags(argv)
    assert rest == ["deepbof-preprocess"] + IN_PROCESS  # Beam's share of the flags
    assert preprocess.main(rest) == 0
  finally:
    preprocess.FLAGS.unparse_flags()
  printed = capsys.readouterr().out
  assert "clips read 4 = written 3 + failed 1: reconciled" in printed
  metadata = schema.read_metadata(str(out))
  assert metadata["tags"] == ["guitar", "classical"]  # 2 each: column order
  assert metadata["split_counts"] == {"train": 1, "valid": 1, "test": 1}
  assert metadata["manifest_format"] == "mtt" and metadata["seed"] == 3
  # One train clip of 2.5 s: 2 segments, ceil(5 / 2) = 3 passes, 6 candidates → 5.
  assert metadata["sampling"]["scheme"] == "random" and metadata["num_blocks"] == 5
  labels = {c["clip_id"].numpy().decode(): c["labels"].numpy().tolist()
            for split in schema.SPLITS for c in readers.clip_dataset(str(out), split)}
  assert labels == {"1": [1.0, 0.0], "2": [0.0, 1.0], "3": [1.0, 1.0]}
  # A second run into the same directory is refused with a clear message.
  try:
    rest = preprocess._parse_flags(argv)
    assert preprocess.main(rest) == 1
  finally:
    preprocess.FLAGS.unparse_flags()
  assert "--overwrite" in capsys.readouterr().err


def test_entry_point_refuses_near_miss_flags():
  from absl import app
  try:
    with pytest.raises(app.UsageError, match="did you mean --num_blocks"):
      preprocess._parse_flags(["prog", "--manifest=m", "--num_block=5"])
  finally:
    preprocess.FLAGS.unparse_flags()
