"""SavedModel export: layout, parity with the in-memory model, core-ops-only loading,
``predict_wav``, streaming signatures and InvalidArgument for bad requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import serving_fixtures as fx
from deepbof_tf import frontend, models, streaming
from serving import export_lib

SR = fx.SAMPLE_RATE


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  return fx.shared_export(tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(exported):
  return tf.saved_model.load(exported["version_dir"])


@pytest.fixture(scope="module")
def in_memory(exported, tmp_path_factory):
  """The same module, built in this process and never saved."""
  return export_lib.build_module(exported["model_dir"], str(tmp_path_factory.mktemp("assets")))


@pytest.fixture(scope="module")
def clips():
  return np.stack([fx.music_like_signal(3.0, seed) for seed in range(3)])


def _independent_prediction(model_dir, waveform):
  """Front end → encoder → tagger, composed here from the library (no export code)."""
  encoder = models.load_bof_encoder(model_dir)
  tagger = models.load_tagger(model_dir)
  log_mel, _ = frontend.compute_features(waveform)
  embedding = encoder(log_mel[None])
  return tagger(embedding).numpy()[0], embedding.numpy()[0]


def test_layout_versions_and_assets(exported, tmp_path):
  base = exported["export_dir"]
  assert export_lib.existing_versions(base) == [1]
  assert sorted(os.listdir(base)) == ["1"]  # no temporary directory left behind
  version_dir = exported["version_dir"]
  assert os.path.exists(os.path.join(version_dir, "saved_model.pb"))
  with open(os.path.join(version_dir, "assets", "tags.txt"), encoding="utf-8") as f:
    assert f.read().splitlines() == list(fx.TAGS)
  info = export_lib.read_export_info(version_dir)
  assert info["tags"] == list(fx.TAGS)
  assert info["embedding_size"] == fx.NUM_HIDDEN
  assert info["clips_in_flight"] == 2
  assert info["max_request_seconds"] == 600.0  # the documented default: 10 minutes
  assert info["max_request_samples"] == 600 * SR
  assert info["frontend"]["sample_rate"] == SR
  assert info["min_samples"] == export_lib.min_samples(frontend.FrontendConfig(), 8)
  # frame_count(min_samples) is exactly one block; one sample less has no block.
  assert frontend.frame_count(info["min_samples"]) == 8
  assert frontend.frame_count(info["min_samples"] - 1) == 7
  # Next versions: automatic numbering, explicit versions, never overwriting.
  other = str(tmp_path / "export")
  assert export_lib.next_version(other) == 1
  assert export_lib.export(exported["model_dir"], other, version=7).endswith("/7")
  os.makedirs(os.path.join(other, "not_a_version"))
  assert export_lib.existing_versions(other) == [7]
  assert export_lib.next_version(other) == 8
  with pytest.raises(FileExistsError, match="exists"):
    export_lib.export(exported["model_dir"], other, version=7)
  assert sorted(os.listdir(other)) == ["7", "not_a_version"]
  assert export_lib.resolve_version_dir(other).endswith("/7")
  assert export_lib.resolve_version_dir(os.path.join(other, "7")).endswith("/7")
  with pytest.raises(FileNotFoundError, match="deepbof-export"):
    export_lib.resolve_version_dir(str(tmp_path))


def test_reload_parity_with_in_memory_model(loaded, in_memory, exported, clips):
  served = loaded.signatures["serving_default"](waveform=tf.constant(clips))
  direct = in_memory.serve(tf.constant(clips))
  for key in ("probabilities", "embedding"):
    np.testing.assert_allclose(served[key].numpy(), direct[key].numpy(), rtol=1e-5, atol=1e-7)
  assert served["probabilities"].shape == (3, len(fx.TAGS))
  assert served["embedding"].shape == (3, fx.NUM_HIDDEN)
  # And against the library composed independently of the export code.
  for i in range(2):
    probabilities, embedding = _independent_prediction(exported["model_dir"], clips[i])
    np.testing.assert_allclose(served["embedding"].numpy()[i], embedding, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(served["probabilities"].numpy()[i], probabilities,
                               rtol=1e-5, atol=1e-6)
  # Different clips give different embeddings (the test model is not degenerate).
  assert np.abs(served["embedding"].numpy()[0] - served["embedding"].numpy()[1]).max() > 1e-3


def test_padded_batch_equals_each_clip_alone(loaded, clips):
  lengths = np.array([clips.shape[1], 40000, 9000], np.int32)
  padded = clips.copy()
  for i, n in enumerate(lengths):
    padded[i, n:] = 123.0  # garbage after the clip must be ignored
  out = loaded.signatures["serving_padded"](waveform=tf.constant(padded),
                                            num_samples=tf.constant(lengths))
  for i, n in enumerate(lengths):
    alone = loaded.signatures["serving_default"](waveform=tf.constant(clips[i:i + 1, :n]))
    np.testing.assert_allclose(out["embedding"].numpy()[i], alone["embedding"].numpy()[0],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["probabilities"].numpy()[i],
                               alone["probabilities"].numpy()[0], rtol=1e-5, atol=1e-6)


def test_clips_in_flight_changes_only_the_schedule(exported, in_memory, clips, tmp_path):
  serial = export_lib.build_module(exported["model_dir"], str(tmp_path), clips_in_flight=1)
  many = export_lib.build_module(exported["model_dir"], str(tmp_path), clips_in_flight=3)
  reference = in_memory.serve(tf.constant(clips))  # clips_in_flight=2, the default
  for module in (serial, many):
    out = module.serve(tf.constant(clips))
    for key in ("probabilities", "embedding"):
      np.testing.assert_allclose(out[key].numpy(), reference[key].numpy(), rtol=1e-6,
                                 atol=1e-7)
  with pytest.raises(ValueError, match="clips_in_flight must be >= 1"):
    export_lib.build_module(exported["model_dir"], str(tmp_path), clips_in_flight=0)


def test_predict_wav_parity_with_serving_default(loaded):
  a = fx.pcm16(fx.music_like_signal(2.5, 11))
  b = fx.pcm16(fx.music_like_signal(1.7, 12))
  other_channel = fx.pcm16(np.random.default_rng(0).uniform(-0.5, 0.5, a.size))
  stereo = fx.wav_bytes(None, channels=np.stack([a, other_channel], 1))
  out = loaded.signatures["predict_wav"](wav=tf.constant([stereo, fx.wav_bytes(b)]))
  for i, clip in enumerate([a, b]):  # stereo → first channel (the authors' code)
    ref = loaded.signatures["serving_default"](waveform=tf.constant(clip[None]))
    np.testing.assert_allclose(out["probabilities"].numpy()[i],
                               ref["probabilities"].numpy()[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["embedding"].numpy()[i], ref["embedding"].numpy()[0],
                               rtol=1e-5, atol=1e-7)


def test_tags_signature(loaded):
  names = loaded.signatures["tags"]()["tags"].numpy()
  assert [n.decode() for n in names] == list(fx.TAGS)


def _invalid(signature, match, **inputs):
  with pytest.raises(tf.errors.InvalidArgumentError, match=match):
    signature(**inputs)


def test_bad_requests_are_invalid_argument_with_clear_messages(loaded):
  serve = loaded.signatures["serving_default"]
  padded = loaded.signatures["serving_padded"]
  good = fx.music_like_signal(1.0, 3)[None]
  _invalid(serve, "expected to be a float tensor but is a int32",
           waveform=tf.constant(np.zeros([1, 5000], np.int32)))
  _invalid(serve, "expected to be a float tensor but is a double",
           waveform=tf.constant(np.zeros([1, 5000], np.float64)))
  _invalid(serve, "empty batch", waveform=tf.zeros([0, 5000]))
  _invalid(serve, "waveform too short.*at least 3073 samples", waveform=tf.zeros([1, 0]))
  _invalid(serve, "waveform too short", waveform=tf.zeros([2, 3072]))
  # Non-finite samples anywhere, in any clip of a batch, and samples so large that the
  # spectrum overflows, are refused; the message names the clip.
  n = good.shape[1]
  for bad_value, position in [(np.nan, 0), (np.nan, 100), (np.inf, n // 2), (-np.inf, n - 1),
                              (np.nan, n - 1), (1e30, 5000), (np.finfo(np.float32).max, 7)]:
    x = np.concatenate([good, good])
    x[1, position] = bad_value
    _invalid(serve, r"waveform contains NaN or Inf samples.*clips\]? \[?1\]",
             waveform=tf.constant(x))
  # Large but finite samples are still a valid (if odd) request.
  assert np.isfinite(serve(waveform=tf.constant(good * 1e6))["embedding"].numpy()).all()
  _invalid(padded, "num_samples exceeds", waveform=tf.constant(good),
           num_samples=tf.constant([good.shape[1] + 1], tf.int32))
  _invalid(padded, "one entry per waveform row", waveform=tf.constant(good),
           num_samples=tf.constant([100, 100], tf.int32))
  _invalid(padded, "waveform too short", waveform=tf.constant(good),
           num_samples=tf.constant([100], tf.int32))
  wav = loaded.signatures["predict_wav"]
  _invalid(wav, "WAV sample rate must be 22050 Hz", wav=tf.constant(
      [fx.wav_bytes(good[0], sample_rate=44100)]))
  _invalid(wav, "empty batch", wav=tf.constant([], tf.string))
  _invalid(wav, "RIFF", wav=tf.constant([b"not a wav file at all"]))
  # A good request still works after the failures.
  assert serve(waveform=tf.constant(good))["probabilities"].shape == (1, len(fx.TAGS))


def test_export_under_a_global_mixed_float16_policy_is_float32(exported, tmp_path):
  import keras
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  reference = export_lib.build_module(exported["model_dir"], str(tmp_path / "a"))
  x = tf.constant(fx.music_like_signal(2.0, 4)[None])
  expected = reference.serve(x)
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy("mixed_float16")
  try:
    module = export_lib.build_module(exported["model_dir"], str(tmp_path / "b"))
    path = str(tmp_path / "export")
    tf.saved_model.save(module, path, signatures=module.signatures())
  finally:
    keras.config.set_dtype_policy(previous)
  served = tf.saved_model.load(path).signatures["serving_default"](waveform=x)
  for name in ("probabilities", "embedding"):
    assert served[name].dtype == tf.float32
    np.testing.assert_allclose(served[name].numpy(), expected[name].numpy(), rtol=1e-5,
                               atol=1e-6)


def test_requests_longer_than_the_maximum_are_refused(loaded, exported, tmp_path):
  # The default export: 10 minutes per clip. One sample more is INVALID_ARGUMENT.
  limit = 600 * SR
  _invalid(loaded.signatures["serving_default"], "request too long: at most 13230000",
           waveform=tf.zeros([1, limit + 1]))
  _invalid(loaded.signatures["serving_padded"], "request too long",
           waveform=tf.zeros([1, limit + 1]), num_samples=tf.constant([SR], tf.int32))
  # Configurable at export; the WAV signature is checked after decoding.
  module = export_lib.build_module(exported["model_dir"], str(tmp_path),
                                   max_request_seconds=2.0)
  short, long = fx.music_like_signal(1.5, 1), fx.music_like_signal(2.5, 2)
  assert module.serve(tf.constant(short[None]))["probabilities"].shape == (1, len(fx.TAGS))
  for call, arg in ((module.serve, tf.constant(long[None])),
                    (module.serve_wav, tf.constant([fx.wav_bytes(long)]))):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"request too long.*2 s at"):
      call(arg)
  with pytest.raises(ValueError, match="max_request_seconds must be > 0"):
    export_lib.build_module(exported["model_dir"], str(tmp_path), max_request_seconds=0)


def test_streaming_signatures_equal_one_shot(loaded):
  """Chunked stream_peak/stream_encode + the head reproduce serving_default."""
  config = frontend.FrontendConfig()
  x = fx.music_like_signal(9.0, 5)
  x[60000:90000] = 0.0  # a stretch of digital silence inside the clip
  one_shot = loaded.signatures["serving_default"](waveform=tf.constant(x[None]))
  source = streaming.InMemoryWaveform(x, SR)
  # The chunks follow the exported encoder's pooling window (the fixture's 43 frames).
  plan = streaming.plan_chunks(source.num_samples, windows_per_chunk=2, config=config,
                               pool_frames=43)
  assert len(plan) >= 4
  segments = [source.read(*streaming.segment_bounds(c, config)) for c in plan]
  peak = max(float(loaded.signatures["stream_peak"](segment=tf.constant(s))["peak"])
             for s in segments)
  state, context, pooled = tf.zeros([config.agc_n_bands]), tf.zeros([0, 128]), []
  for segment in segments:
    out = loaded.signatures["stream_encode"](segment=tf.constant(segment),
                                             peak=tf.constant(peak), agc_state=state,
                                             context=context)
    state, context = out["agc_state"], out["context"]
    pooled.append(out["pooled"].numpy())
  embedding = streaming.mean_of_windows(pooled)
  np.testing.assert_allclose(embedding, one_shot["embedding"].numpy()[0], rtol=1e-5, atol=1e-6)
  head = loaded.signatures["probabilities_from_embedding"](embedding=tf.constant(embedding[None]))
  np.testing.assert_allclose(head["probabilities"].numpy(),
                             one_shot["probabilities"].numpy(), rtol=1e-5, atol=1e-6)


def test_spectrum_signatures_equal_the_segment_ones(loaded):
  """stream_spectrum's maximum is stream_peak; stream_encode_spectrum on it is
  stream_encode on the samples, bit for bit (one STFT per chunk instead of two)."""
  config = frontend.FrontendConfig()
  x = fx.music_like_signal(9.0, 6)
  source = streaming.InMemoryWaveform(x, SR)
  plan = streaming.plan_chunks(source.num_samples, windows_per_chunk=2, config=config,
                               pool_frames=43)
  sig = loaded.signatures
  state, context = tf.zeros([config.agc_n_bands]), tf.zeros([0, 128])
  for chunk in plan:
    segment = tf.constant(source.read(*streaming.segment_bounds(chunk, config)))
    magnitude = sig["stream_spectrum"](segment=segment)["magnitude"]
    assert magnitude.shape == (chunk.frame_stop - chunk.frame_start, config.n_fft // 2 + 1)
    peak = sig["stream_peak"](segment=segment)["peak"]
    assert float(tf.reduce_max(magnitude)) == float(peak)
    a = sig["stream_encode"](segment=segment, peak=peak, agc_state=state, context=context)
    b = sig["stream_encode_spectrum"](magnitude=magnitude, peak=peak, agc_state=state,
                                      context=context)
    for key in ("pooled", "agc_state", "context"):
      np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=key)
    state, context = a["agc_state"], a["context"]


def test_exported_model_streams_from_kept_spectra_or_samples_alike(exported):
  """ExportedModel.iter_pooled_windows: all chunks' spectra kept, some, or none (an
  older export's signatures) give the same windows."""
  from deepbof_tf.exported import ExportedModel
  model = ExportedModel(exported["version_dir"])
  source = streaming.InMemoryWaveform(fx.music_like_signal(12.0, 7), SR)
  calls = {"spectrum": 0, "peak": 0}
  spectrum, peak = model._spectrum, model._peak

  def counting(name, fn):
    def call(**kwargs):
      calls[name] += 1
      return fn(**kwargs)
    return call

  model._spectrum, model._peak = counting("spectrum", spectrum), counting("peak", peak)
  kept = model.pooled_windows(source, windows_per_chunk=2)
  chunks = calls["spectrum"]
  assert chunks >= 4 and calls["peak"] == 0
  plan = streaming.plan_chunks(source.num_samples, 2, model.config, model.block_frames,
                               model.pool_frames)
  one_chunk = (plan[0].frame_stop - plan[0].frame_start) * (1024 // 2 + 1) * 4
  calls.update(spectrum=0, peak=0)
  partly = np.concatenate(list(model.iter_pooled_windows(source, 2,
                                                         spectrum_bytes=one_chunk)))
  assert calls["spectrum"] == 1 and calls["peak"] == chunks - 1
  calls.update(spectrum=0, peak=0)
  none = np.concatenate(list(model.iter_pooled_windows(source, 2, spectrum_bytes=0)))
  assert calls["spectrum"] == 0 and calls["peak"] == chunks
  model._spectrum = None  # an export written before the spectrum signatures
  older = model.pooled_windows(source, windows_per_chunk=2)
  for other in (partly, none, older):
    np.testing.assert_array_equal(kept, other)


_SUBPROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    version_dir, inputs, expected = sys.argv[1:4]
    loaded = tf.saved_model.load(version_dir)
    out = loaded.signatures["serving_default"](waveform=tf.constant(np.load(inputs)))
    reference = np.load(expected)
    np.testing.assert_allclose(out["probabilities"].numpy(), reference, rtol=1e-5, atol=1e-7)
    from tensorflow.python.saved_model import loader_impl
    graph = loader_impl.parse_saved_model(version_dir).meta_graphs[0].graph_def
    ops = {n.op for n in graph.node}
    for function in graph.library.function:
      ops.update(n.op for n in function.node_def)
    assert not [op for op in ops if op.startswith("IO>")], sorted(ops)
    assert "tensorflow_io" not in sys.modules, "tensorflow_io was imported"
    print(json.dumps({"ok": True, "ops": len(ops)}))
""")


@pytest.mark.slow
def test_loads_in_a_process_without_tensorflow_io(exported, in_memory, clips, tmp_path):
  np.save(tmp_path / "inputs.npy", clips)
  expected = in_memory.serve(tf.constant(clips))["probabilities"].numpy()
  np.save(tmp_path / "expected.npy", expected)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  result = subprocess.run(
      [sys.executable, "-c", _SUBPROCESS, exported["version_dir"],
       str(tmp_path / "inputs.npy"), str(tmp_path / "expected.npy")],
      capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout.strip().splitlines()[-1])["ok"]


@pytest.mark.slow
def test_saved_model_cli_lists_the_signatures(exported):
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  result = subprocess.run([cli, "show", "--all", "--dir", exported["version_dir"]],
                          capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  for name in ("serving_default", "serving_padded", "predict_wav", "tags", "stream_peak",
               "stream_encode", "stream_spectrum", "stream_encode_spectrum",
               "probabilities_from_embedding"):
    assert f"signature_def['{name}']" in result.stdout
  assert "inputs['waveform']" in result.stdout and "inputs['num_samples']" in result.stdout
  assert "outputs['probabilities']" in result.stdout and "outputs['embedding']" in result.stdout
  assert "inputs['wav']" in result.stdout


def test_audio_settings_come_from_the_training_data(tmp_path):
  from deepbof_tf import config as config_lib
  model_dir, data_dir = tmp_path / "model", tmp_path / "data"
  model_dir.mkdir()
  data_dir.mkdir()
  assert export_lib.load_audio_settings(str(model_dir)) == (frontend.FrontendConfig(), "first")
  trained = frontend.FrontendConfig(symmetric_window=False, agc_t_scale=0.25)
  (data_dir / "metadata.json").write_text(json.dumps(
      {"frontend": config_lib.to_dict(trained), "channel_mode": "mean", "tags": ["x"]}))
  assert export_lib.load_audio_settings(str(model_dir), str(data_dir)) == (trained, "mean")
  # model_dir/frontend.json, when present, wins.
  (model_dir / "frontend.json").write_text(json.dumps(config_lib.to_dict(
      frontend.FrontendConfig(n_mels=128, log_gain=20.0))))
  config, mode = export_lib.load_audio_settings(str(model_dir), str(data_dir))
  assert config.log_gain == 20.0 and mode == "first"
