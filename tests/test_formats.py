"""Real-catalogue files through every tool: one table, the same verdict everywhere.

Every file of :data:`CASES` — the formats a music service holds (AAC/M4A, ALAC,
WebM/Opus, AIFF, WMA, AC-3, ADTS AAC, Ogg Opus), awkward real files (cover art and
ID3v2/APE tags, 5.1 channels, 8/24/32-bit and float PCM, 96 kHz, 8 kHz, a 3-hour
recording, extensions that lie), files whose header misjudges their length (a VBR MP3
without a Xing header, a CBR MP3 whose size-based estimate is off, an Ogg whose last
granule position lies past the decoded end) and broken ones (zero-length, header-only,
cut mid-frame, cut mid-page) — goes through ``deepbof-tag``, ``deepbof-tag-catalog``
and ``deepbof-preprocess``. Each tool tags it (the same probabilities, ≤ 1e-5) or
refuses it with a message naming the file and the problem; the one-shot and the
chunked paths agree; the one-shot and random-access decoders give the same samples or
the same error.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import audio_writers as aw
import serving_fixtures as fx
from beam_jobs import preprocess_lib
from beam_jobs import catalog_runs
from beam_jobs import tag_catalog_lib
from deepbof_tf import audio
from deepbof_tf import catalog_parts
from deepbof_tf.config import SamplingConfig
from deepbof_tf.data import readers
from serving import tag

IN_PROCESS = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
THREE_HOURS = "three_hours.flac"


def _music(seconds, rate=44100, seed=0, channels=1):
  x = fx.music_like_signal(seconds, seed, rate)
  if channels == 1:
    return x
  return np.stack([np.roll(x, 97 * c) * (1.0 - 0.1 * c) for c in range(channels)], axis=1)


def _three_hours():
  piece = fx.music_like_signal(10.0, 5, 8000)
  return aw.encode_sndfile(np.tile(piece, 3 * 360), 8000, "FLAC", "PCM_16")


def _cbr_estimate_off():
  # No Info header (so libsndfile would estimate the length from the size), and tags
  # at the end that such an estimate counts as audio.
  mp3 = aw.encode_sndfile(_music(4.0, 44100, 6), 44100, "MP3", "MPEG_LAYER_III",
                          bitrate_mode="CONSTANT")
  return aw.without_vbr_header(mp3) + aw.ape_tag() + aw.id3v1_tag()


def _vbr_without_header():
  t = np.arange(44100 * 5) / 44100
  x = np.where(t % 2 < 1, 0.3 * np.sin(2 * np.pi * 440 * t),
               0.4 * np.random.default_rng(7).standard_normal(t.size)).astype(np.float32)
  return aw.without_vbr_header(aw.encode_sndfile(
      x, 44100, "MP3", "MPEG_LAYER_III", bitrate_mode="VARIABLE", compression_level=0.5))


def _ok(container, decoder):
  return ("ok", container, decoder)


def _refused(*words):
  return ("refused",) + words


# name → (bytes, expected)
CASES = {
    "aac.m4a": (lambda: aw.encode_ffmpeg(_music(4.0, 44100, 1, 2), 44100, "m4a"),
                _ok("mp4", "ffmpeg")),
    "lossless.alac.m4a": (lambda: aw.encode_ffmpeg(_music(3.0, 44100, 2, 2), 44100,
                                                   "alac.m4a"), _ok("mp4", "ffmpeg")),
    "opus.webm": (lambda: aw.encode_ffmpeg(_music(4.0, 48000, 3, 2), 48000, "webm"),
                  _ok("matroska", "ffmpeg")),
    "windows.wma": (lambda: aw.encode_ffmpeg(_music(4.0, 44100, 4, 2), 44100, "wma"),
                    _ok("asf", "ffmpeg")),
    "dolby.ac3": (lambda: aw.encode_ffmpeg(_music(3.0, 48000, 5, 2), 48000, "ac3"),
                  _ok("ac3", "ffmpeg")),
    "adts.aac": (lambda: aw.encode_ffmpeg(_music(3.0, 44100, 6), 44100, "aac"),
                 _ok("aac", "ffmpeg")),
    "studio24.aiff": (lambda: aw.encode_sndfile(_music(3.0, 48000, 7, 2), 48000, "AIFF",
                                                "PCM_24"), _ok("aiff", "libsndfile")),
    "voice.opus": (lambda: aw.encode_sndfile(_music(3.0, 48000, 8), 48000, "OGG", "OPUS"),
                   _ok("ogg", "libsndfile")),
    "cover_art.mp3": (lambda: aw.id3v2_with_cover() + aw.encode_sndfile(
        _music(4.0, 44100, 9, 2), 44100, "MP3", "MPEG_LAYER_III") + aw.ape_tag()
                      + aw.id3v1_tag(), _ok("mp3", "libsndfile")),
    "surround51.flac": (lambda: aw.encode_sndfile(_music(3.0, 48000, 10, 6), 48000,
                                                  "FLAC", "PCM_16"), _ok("flac", "libsndfile")),
    "u8.wav": (lambda: aw.encode_sndfile(_music(2.0, 22050, 11), 22050, "WAV", "PCM_U8"),
               _ok("wav", "libsndfile")),
    "s24.wav": (lambda: aw.encode_sndfile(_music(2.0, 44100, 12, 2), 44100, "WAV", "PCM_24"),
                _ok("wav", "libsndfile")),
    "s32.wav": (lambda: aw.encode_sndfile(_music(2.0, 44100, 13), 44100, "WAV", "PCM_32"),
                _ok("wav", "libsndfile")),
    "float.wav": (lambda: aw.encode_sndfile(_music(2.0, 32000, 14), 32000, "WAV", "FLOAT"),
                  _ok("wav", "libsndfile")),
    "hires96k.flac": (lambda: aw.encode_sndfile(_music(2.0, 96000, 15, 2), 96000, "FLAC",
                                                "PCM_24"), _ok("flac", "libsndfile")),
    "phone8k.wav": (lambda: aw.encode_sndfile(_music(3.0, 8000, 16), 8000, "WAV", "PCM_16"),
                    _ok("wav", "libsndfile")),
    THREE_HOURS: (_three_hours, _ok("flac", "libsndfile")),
    "flac_named.mp3": (lambda: aw.encode_sndfile(_music(2.0, 44100, 17), 44100, "FLAC",
                                                 "PCM_16"), _ok("flac", "libsndfile")),
    "m4a_named.ogg": (lambda: aw.encode_ffmpeg(_music(2.0, 44100, 18), 44100, "m4a"),
                      _ok("mp4", "ffmpeg")),
    "vbr_no_xing.mp3": (_vbr_without_header, _ok("mp3", "ffmpeg")),
    "cbr_estimate_off.mp3": (_cbr_estimate_off, _ok("mp3", "ffmpeg")),
    "granule_past_end.ogg": (lambda: aw.ogg_with_last_granule(aw.encode_sndfile(
        _music(3.0, 44100, 19), 44100, "OGG", "VORBIS"), 10), _ok("ogg", "libsndfile")),
    "zero_length.m4a": (lambda: b"", _refused("empty", "0 bytes")),
    "header_only.wav": (lambda: aw.encode_sndfile(np.zeros(0, np.float32), 22050, "WAV",
                                                  "PCM_16"), _refused("0 samples")),
    "header_only.m4a": (lambda: aw.encode_ffmpeg(_music(2.0, 44100, 20), 44100, "m4a")[:40],
                        _refused("truncated or corrupt MP4/M4A")),
    "cut_mid_frame.mp3": (lambda: aw.mp3_cut_mid_frame(aw.encode_sndfile(
        _music(4.0, 44100, 21), 44100, "MP3", "MPEG_LAYER_III")), _refused("truncated MP3")),
    "cut_mid_page.ogg": (lambda: aw.ogg_cut_mid_page(aw.encode_sndfile(
        _music(4.0, 44100, 22), 44100, "OGG", "VORBIS")), _refused("truncated Ogg")),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  return fx.shared_export(tmp_path_factory)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("formats")
  for name, (build, _) in CASES.items():
    (root / name).write_bytes(build())
  return root


def _ok_names():
  return sorted(n for n, (_, e) in CASES.items() if e[0] == "ok")


def _refused_names():
  return sorted(n for n, (_, e) in CASES.items() if e[0] == "refused")


@pytest.fixture(scope="module")
def tagged(exported, folder):
  tagger = tag.ExportedTagger(exported["export_dir"])
  paths = [str(folder / name) for name in sorted(CASES)]
  return tagger, {os.path.basename(r.path): r
                  for r in tag.tag_files(tagger, paths, progress=False)}


@pytest.fixture(scope="module")
def catalog(exported, folder, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("formats_catalog") / "catalog")
  config = tag_catalog_lib.TagCatalogConfig(model=exported["export_dir"], input=str(folder),
                                            output_dir=out, max_batch_size=4)
  metadata = catalog_runs.run(config, IN_PROCESS)
  rows = {os.path.basename(r["path"]): r
          for r in catalog_parts.read_table(out).to_pylist()}
  errors = {os.path.basename(e["path"]): e for e in catalog_runs.read_errors(out)}
  return metadata, rows, errors


@pytest.fixture(scope="module")
def dataset(folder, tmp_path_factory):
  root = tmp_path_factory.mktemp("formats_dataset")
  lines = ["path,split,tags"]
  for name in sorted(CASES):
    lines.append(f"{name},{'test' if name == THREE_HOURS else 'train'},rock")
  manifest = root / "manifest.csv"
  manifest.write_text("\n".join(lines) + "\n")
  out = root / "dataset"
  config = preprocess_lib.PreprocessConfig(
      manifest=str(manifest), audio_root=str(folder), output_dir=str(out),
      sampling=SamplingConfig(num_blocks=20))
  metadata = preprocess_lib.run(config, beam_args=IN_PROCESS)
  clips = {}
  for split in ("train", "test"):
    for clip in readers.clip_dataset(str(out), split):
      clips[clip["clip_id"].numpy().decode()] = {
          "decoder": clip["decoder"].numpy().decode(), "n_frames": int(clip["n_frames"])}
  errors = {e["path"]: e for e in readers.read_errors(str(out))}
  return metadata, clips, errors


@pytest.mark.slow
def test_every_tool_reaches_the_same_verdict(tagged, catalog, dataset, folder):
  _, results = tagged
  metadata, rows, catalog_errors = catalog
  pre_metadata, clips, pre_errors = dataset
  for name in _ok_names():
    assert results[name].error is None, results[name].error
    assert name in rows, catalog_errors.get(name)
    assert name in clips, pre_errors.get(name)
  for name in _refused_names():
    words = CASES[name][1][1:]
    path = str(folder / name)
    for error in (results[name].error, catalog_errors[name]["error"],
                  pre_errors[name]["error"]):
      assert error.startswith(path), error
      assert any(w.lower() in error.lower() for w in words), (name, error)
    assert catalog_errors[name]["stage"] == pre_errors[name]["stage"] == "decode"
  assert metadata["counters"]["reconciled"] and pre_metadata["counters"]["reconciled"]
  assert metadata["num_failed"] == pre_metadata["num_failed"] == len(_refused_names())


@pytest.mark.slow
def test_deepbof_tag_and_the_catalogue_give_the_same_numbers(tagged, catalog):
  _, results = tagged
  _, rows, _ = catalog
  for name in _ok_names():
    np.testing.assert_allclose(rows[name]["probabilities"], results[name].probabilities,
                               rtol=0, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(rows[name]["embedding"], results[name].embedding,
                               rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_one_shot_and_chunked_tagging_agree(tagged, folder):
  tagger, one_shot = tagged
  names = [n for n in _ok_names() if n != THREE_HOURS]  # chunked in both runs
  chunked = tag.tag_files(tagger, [str(folder / n) for n in names], chunk_seconds=1.0,
                          progress=False)
  for name, result in zip(names, chunked):
    assert result.error is None, result.error
    np.testing.assert_allclose(result.probabilities, one_shot[name].probabilities,
                               rtol=0, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(result.embedding, one_shot[name].embedding,
                               rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_preprocess_records_the_decoder(dataset):
  _, clips, _ = dataset
  for name in _ok_names():
    assert clips[name]["decoder"] == CASES[name][1][2], name


@pytest.mark.parametrize("name", sorted(n for n in CASES if n != THREE_HOURS))
def test_one_shot_and_random_access_decoding_agree(folder, name):
  path = str(folder / name)
  expected = CASES[name][1]
  if expected[0] == "refused":
    with pytest.raises(audio.AudioDecodeError) as one_shot:
      audio.decode_audio(path)
    with pytest.raises(audio.AudioDecodeError) as random_access:
      audio.open_decoded(path)
    assert str(one_shot.value) == str(random_access.value)
    assert str(one_shot.value).startswith(path)
    return
  samples, rate = audio.decode_audio(path)
  with audio.open_decoded(path, "mean", memory_limit=1 << 16) as decoded:  # spooled
    assert (decoded.info.container, decoded.info.decoder) == expected[1:]
    assert not decoded.in_memory
    assert (decoded.num_frames, decoded.rate) == (samples.shape[0], rate)
    np.testing.assert_array_equal(
        decoded.read(0, decoded.num_frames),
        audio.to_mono(samples, "mean"))
