"""deepbof-tag: file walking, one-shot vs streamed vs spooled equality, taggrams, output
formats, and the command line on a directory with good and bad files."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

import serving_fixtures as fx
from deepbof_tf import audio
from serving import tag

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  return fx.shared_export(tmp_path_factory)


@pytest.fixture(scope="module")
def tagger(exported):
  return tag.ExportedTagger(exported["export_dir"])  # base dir: newest version


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("audio") / "long.flac")
  sf.write(path, fx.music_like_signal(11.0, 40, 44100), 44100)
  return path


def test_find_audio_files(tmp_path):
  (tmp_path / "a" / "b").mkdir(parents=True)
  for name in ("a/one.wav", "a/b/two.MP3", "a/b/three.flac", "a/notes.txt", "x.ogg"):
    (tmp_path / name).write_bytes(b"")
  found = tag.find_audio_files(
      [str(tmp_path / "a"), str(tmp_path / "x.ogg"), str(tmp_path / "a" / "notes.txt"),
       str(tmp_path / "missing.wav"), str(tmp_path / "x.ogg")],
      (".wav", ".mp3", ".flac", ".ogg"))
  rel = [os.path.relpath(p, tmp_path) for p in found]
  assert rel == ["a/one.wav", "a/b/three.flac", "a/b/two.MP3", "x.ogg", "a/notes.txt",
                 "missing.wav"]


def test_directories_are_scanned_for_every_format_the_decoders_read(tmp_path):
  names = ["v.opus", "a.m4a", "b.webm", "c.aiff", "d.wma", "e.ac3", "f.aac", "g.alac",
           "h.mp3", "i.flac", "notes.txt", "cover.jpg"]
  for name in names:
    (tmp_path / name).write_bytes(b"")
  default = tuple(tag.DEFAULT_EXTENSIONS.split(","))
  found = {os.path.basename(p) for p in tag.find_audio_files([str(tmp_path)], default)}
  assert found == set(names) - {"notes.txt", "cover.jpg"}
  everything = tag.find_audio_files([str(tmp_path)], ("*",))  # the content decides
  assert {os.path.basename(p) for p in everything} == set(names)


def test_one_shot_streamed_and_spooled_paths_agree(tagger, long_file):
  waveform = audio.load_audio(long_file)
  reference = tagger._loaded.signatures["serving_default"](waveform=tf.constant(waveform[None]))
  runs = {
      "one_shot": dict(chunk_seconds=60.0),
      "streamed": dict(chunk_seconds=2.0),
      "spooled_streamed": dict(chunk_seconds=3.0, in_memory_limit=0),
  }
  for name, options in runs.items():
    (result,) = tag.tag_files(tagger, [long_file], progress=False, **options)
    assert result.error is None, (name, result.error)
    assert result.duration_seconds == pytest.approx(11.0, abs=1e-3)
    np.testing.assert_allclose(result.embedding, reference["embedding"].numpy()[0],
                               rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(result.probabilities, reference["probabilities"].numpy()[0],
                               rtol=1e-5, atol=1e-6, err_msg=name)


def test_taggram(tagger, long_file):
  (result,) = tag.tag_files(tagger, [long_file], taggram_seconds=4.0, chunk_seconds=3.0,
                            progress=False)
  window = 43 * 512 / 22050
  assert tagger.windows_per_seconds(4.0) == 4
  # 11 s → frame_count − 7 blocks → ceil(blocks / 43) windows → groups of 4 windows.
  n_windows = -(-(-(-11 * 22050 // 512) + 1 - 7) // 43)
  assert result.taggram.shape == (-(-n_windows // 4), len(fx.TAGS))
  np.testing.assert_allclose(result.taggram_start_seconds, np.arange(3) * 4 * window)
  assert np.all((result.taggram > 0) & (result.taggram < 1))
  # One segment spanning the whole file is the file's own prediction.
  (whole,) = tag.tag_files(tagger, [long_file], taggram_seconds=60.0, progress=False)
  np.testing.assert_allclose(whole.taggram[0], whole.probabilities, rtol=1e-5, atol=1e-7)


def test_batches_mix_lengths_and_rates(tagger, tmp_path):
  paths = []
  for i, (seconds, rate) in enumerate([(1.0, 22050), (2.5, 44100), (0.5, 16000)]):
    path = str(tmp_path / f"clip{i}.wav")
    sf.write(path, fx.music_like_signal(seconds, 50 + i, rate), rate)
    paths.append(path)
  batched = tag.tag_files(tagger, paths, batch_size=2, progress=False)
  for path, result in zip(paths, batched):
    ref = tagger._loaded.signatures["serving_default"](
        waveform=tf.constant(audio.load_audio(path)[None]))
    np.testing.assert_allclose(result.probabilities, ref["probabilities"].numpy()[0],
                               rtol=1e-5, atol=1e-6)


def test_bad_files_fail_alone(tagger, tmp_path):
  good = str(tmp_path / "good.wav")
  sf.write(good, fx.music_like_signal(1.0, 60), 22050)
  short = str(tmp_path / "short.wav")
  sf.write(short, np.zeros(1000, np.float32), 22050)
  corrupt = str(tmp_path / "corrupt.mp3")
  with open(corrupt, "wb") as f:
    f.write(b"\x00" * 500)
  failed = []
  results = tag.tag_files(tagger, [short, good, corrupt, str(tmp_path / "nope.wav")],
                          progress=False, on_error=failed.append)
  assert [r.error is None for r in results] == [False, True, False, False]
  assert "too short: 1000 samples" in results[0].error
  assert results[2].error.startswith(corrupt)
  assert "file not found" in results[3].error
  assert [r.path for r in failed] == [short, corrupt, str(tmp_path / "nope.wav")]


def test_top_tags_and_formats():
  tags = ["a", "b", "c", "d"]
  p = np.array([0.2, 0.9, 0.2, 0.6], np.float32)
  assert tag.top_tags(p, tags, 3, 0.0) == [("b", pytest.approx(0.9)), ("d", pytest.approx(0.6)),
                                           ("a", pytest.approx(0.2))]  # tie → tag order
  assert [t for t, _ in tag.top_tags(p, tags, 0, 0.5)] == ["b", "d"]
  results = [tag.FileResult("x.wav", 3.0, p, np.zeros(2)),
             tag.FileResult("bad.wav", error="bad.wav: broken")]
  parsed = json.loads(tag.format_results(results, tags, "json", 2, 0.0))
  assert parsed == [{"path": "x.wav", "duration_seconds": 3.0,
                     "tags": [{"tag": "b", "probability": pytest.approx(0.9)},
                              {"tag": "d", "probability": pytest.approx(0.6)}]}]
  rows = list(csv.reader(io.StringIO(tag.format_results(results, tags, "csv", 0, 0.3))))
  assert rows == [["path", "rank", "tag", "probability"], ["x.wav", "1", "b", "0.900000"],
                  ["x.wav", "2", "d", "0.600000"]]
  table = tag.format_results(results, tags, "table", 1, 0.95)
  assert table == "x.wav\t3.0s\t(no tag above the threshold)\n"


@pytest.mark.slow
def test_command_line_on_a_directory_with_good_and_bad_files(exported, tmp_path):
  music = tmp_path / "music"
  (music / "album").mkdir(parents=True)
  sf.write(str(music / "a.wav"), fx.music_like_signal(2.0, 70), 22050)
  sf.write(str(music / "album" / "b.mp3"), fx.music_like_signal(4.0, 71, 44100), 44100)
  sf.write(str(music / "album" / "c.ogg"), fx.music_like_signal(7.0, 72, 48000), 48000)
  (music / "album" / "broken.flac").write_bytes(b"fLaC" + b"\x00" * 40)
  (music / "empty.wav").write_bytes(b"")
  (music / "readme.txt").write_text("not audio")
  embeddings = tmp_path / "emb.npy"
  taggrams = tmp_path / "taggram.jsonl"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  result = subprocess.run(
      [sys.executable, "-m", "serving.tag", f"--model={exported['export_dir']}", str(music),
       "--output=json", "--top_k=3", f"--embedding_out={embeddings}",
       f"--taggram_out={taggrams}", "--taggram_seconds=2", "--chunk_seconds=3"],
      capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
  assert result.returncode == 1, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if "deepbof-tag: error:" in line]
  assert len(errors) == 2, result.stderr[-3000:]
  assert any("broken.flac" in line for line in errors)
  assert any("empty.wav" in line and "empty (0 bytes)" in line for line in errors)
  assert "2 of 5 file(s) failed" in result.stderr
  output = json.loads(result.stdout)
  names = [os.path.relpath(item["path"], music) for item in output]
  assert names == ["a.wav", "album/b.mp3", "album/c.ogg"]
  for item in output:
    assert len(item["tags"]) == 3
    probs = [t["probability"] for t in item["tags"]]
    assert probs == sorted(probs, reverse=True) and all(0 < p < 1 for p in probs)
    assert {t["tag"] for t in item["tags"]} <= set(fx.TAGS)
  rows = np.load(embeddings)
  # Input order: a.wav, empty.wav, album/b.mp3, album/broken.flac, album/c.ogg.
  assert rows.shape == (5, fx.NUM_HIDDEN)
  assert np.isnan(rows[[1, 3]]).all() and np.isfinite(rows[[0, 2, 4]]).all()
  lines = [json.loads(line) for line in taggrams.read_text().splitlines()]
  assert [os.path.basename(line["path"]) for line in lines] == ["a.wav", "b.mp3", "c.ogg"]
  assert [len(line["start_seconds"]) for line in lines] == [1, 2, 4]
  assert lines[2]["tags"] == list(fx.TAGS)
