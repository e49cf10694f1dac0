"""deepbof-tag-catalog's limit per file (``--file_timeout_s``): the decoder child process
(``beam_jobs.decode_process``) gives the worker the same samples and error records as
decoding in the worker, is stopped and restarted when a file hangs or crashes it, and a
whole Beam run turns a hanging file into a ``timeout`` error while the others are
tagged. The hang is real (the child sleeps, test-only hook
``decode_process.HANG_PATTERN_ENV``) and needs no broken codec."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf

import serving_fixtures as fx
from beam_jobs import decode_process
from beam_jobs import catalog_runs
from beam_jobs import tag_catalog_lib as lib
from deepbof_tf import catalog_parts
from deepbof_tf import streaming

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTI_PROCESS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
# Well above a good file's decode on a loaded 2-core machine (a 70-s FLAC took over 5 s
# there), far below the hang.
LIMIT_S = 20.0

# name → (seconds, rate, channels)
_GOOD = {
    "clip_a.wav": (4.0, 22050, 1),
    "clip_b.flac": (3.0, 44100, 2),
    "clip_c.ogg": (5.0, 32000, 1),
    "clip_d.wav": (2.0, 48000, 1),
}
_HANGS = "hang_*"


def _write_good(root):
  for i, (name, (seconds, rate, channels)) in enumerate(sorted(_GOOD.items())):
    x = fx.music_like_signal(seconds, 40 + i, rate)
    if channels == 2:
      x = np.stack([x, 0.5 * x], axis=1)
    sf.write(str(root / name), x, rate)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("timeout_audio")
  _write_good(root)
  sf.write(str(root / "hang_me.wav"), fx.music_like_signal(3.0, 50), 22050)
  (root / "empty.wav").write_bytes(b"")
  (root / "not_audio.mp3").write_text("this is not audio\n" * 40)
  x = fx.music_like_signal(3.0, 8, 22050)
  x[20000:20100] = np.nan
  sf.write(str(root / "nan.wav"), x, 22050, subtype="FLOAT")
  sf.write(str(root / "long.flac"), fx.music_like_signal(70.0, 51, 44100), 44100)
  return root


@pytest.fixture
def decoder(monkeypatch):
  monkeypatch.setenv(decode_process.HANG_PATTERN_ENV, _HANGS)
  d = decode_process.DecoderProcess(LIMIT_S)
  yield d
  d.stop()


def test_a_hanging_file_times_out_and_the_next_file_decodes_in_a_new_process(
    decoder, folder):
  good = str(folder / "clip_a.wav")
  source = decoder.open(good, 22050)
  first_pid = decoder.pid
  source.close()
  hanging = str(folder / "hang_me.wav")
  start = time.monotonic()
  with pytest.raises(decode_process.DecodeTimeout) as raised:
    decoder.open(hanging, 22050)
  elapsed = time.monotonic() - start
  assert LIMIT_S <= elapsed < LIMIT_S + 10
  assert str(raised.value).startswith(f"{hanging}: decoding took longer than the limit "
                                      "of 20 s per file (--file_timeout_s)")
  assert not decoder.alive() and decoder.starts == 1
  # The next file starts a new child and decodes as in this process.
  source = decoder.open(good, 22050)
  assert decoder.starts == 2 and decoder.pid != first_pid
  with streaming.ResampledNativeWaveform(good, 22050) as here:
    assert source.num_samples == here.num_samples
    np.testing.assert_array_equal(source.read(-100, here.num_samples + 50),
                                  here.read(-100, here.num_samples + 50))
    np.testing.assert_array_equal(source.resampled(1000, 9000),
                                  here.resampled(1000, 9000))
  source.close()
  assert decoder.starts == 2  # reused between files


def test_a_decoder_that_dies_fails_its_file_and_the_next_file_restarts_it(decoder,
                                                                          folder):
  hanging = str(folder / "hang_me.wav")
  decoder.file_timeout_s = 60.0
  decoder.open(str(folder / "clip_b.flac"), 22050).close()
  pid = decoder.pid
  killer = threading.Timer(1.0, os.kill, (pid, signal.SIGKILL))
  killer.start()
  start = time.monotonic()
  with pytest.raises(decode_process.DecoderError) as raised:
    decoder.open(hanging, 22050)
  killer.join()
  assert time.monotonic() - start < 30
  assert raised.value.stage == "decode"
  assert str(raised.value) == (f"{hanging}: the decoder process exited while decoding "
                               "it (killed by signal 9)")
  # Killed between files: found dead at the next open and started again.
  source = decoder.open(str(folder / "clip_c.ogg"), 22050)
  assert decoder.starts == 2
  os.kill(decoder.pid, signal.SIGKILL)
  time.sleep(0.5)
  with pytest.raises(decode_process.DecoderError):
    source.read(0, 100)
  source.close()
  assert decoder.open(str(folder / "clip_c.ogg"), 22050).num_samples == 5 * 22050
  assert decoder.starts == 3


def test_a_hung_decoder_ends_with_its_worker(folder, monkeypatch):
  """A worker killed while its child hangs leaves no decoder process behind."""
  monkeypatch.setenv(decode_process.HANG_PATTERN_ENV, _HANGS)
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  script = ("import sys; from beam_jobs import decode_process as d; "
            "p = d.DecoderProcess(600); p.open(sys.argv[1], 22050).close(); "
            "print(p.pid, flush=True); p.open(sys.argv[2], 22050)")
  worker = subprocess.Popen([sys.executable, "-c", script, str(folder / "clip_a.wav"),
                             str(folder / "hang_me.wav")], stdout=subprocess.PIPE,
                            text=True, env=env)
  child = int(worker.stdout.readline())
  time.sleep(1.0)  # the child is in its hang now
  worker.kill()
  worker.wait()
  worker.stdout.close()
  deadline = time.monotonic() + 20
  while time.monotonic() < deadline:
    try:
      with open(f"/proc/{child}/stat") as f:
        if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # exited, not yet reaped
          break
    except FileNotFoundError:
      break
    time.sleep(0.2)
  else:
    os.kill(child, signal.SIGKILL)
    pytest.fail(f"decoder process {child} outlived its worker")


def test_a_long_store_is_filled_from_the_decoder_process_bit_for_bit(folder):
  path = str(folder / "long.flac")
  # A limit no loaded machine reaches on a 70-s file: this test is about the samples.
  decoder = decode_process.DecoderProcess(300.0)
  with streaming.ResampledNativeWaveform(path, 22050) as here:
    expected = streaming.resampled_store(here, memory_limit=1 << 20)  # spooled
    source = decoder.open(path, 22050)
    for limit in (1 << 20, None):  # spooled, in memory
      store = streaming.resampled_store(source, memory_limit=limit)
      assert store.num_samples == expected.num_samples == 70 * 22050
      np.testing.assert_array_equal(store.read(-5, store.num_samples + 5),
                                    expected.read(-5, store.num_samples + 5))
      store.close()
    source.close()
    expected.close()
  decoder.stop()


def _outputs(dofn, path):
  return [(o.tag, o.value) if hasattr(o, "tag") else ("short", o)
          for o in dofn.process(path)]


def test_the_dofn_gives_the_same_outputs_and_errors_in_a_decoder_process(folder,
                                                                        monkeypatch):
  """Every good and broken file (and a missing one): the same waveforms and error
  records with and without the decoder process; the hanging file times out."""
  monkeypatch.setenv(decode_process.HANG_PATTERN_ENV, _HANGS)
  here = lib.DecodeAudioDoFn(22050, "first", 4096, 80 * 22050)
  limited = lib.DecodeAudioDoFn(22050, "first", 4096, 80 * 22050,
                                file_timeout_s=LIMIT_S)
  here.setup()
  limited.setup()
  try:
    names = sorted(n for n in os.listdir(folder) if not n.startswith("hang_"))
    for name in names + ["missing.wav"]:
      path = str(folder / name)
      a, b = _outputs(here, path), _outputs(limited, path)
      assert len(a) == len(b) == 1 and a[0][0] == b[0][0], (name, a, b)
      if a[0][0] == "short":
        assert a[0][1][0] == b[0][1][0] == path
        np.testing.assert_array_equal(a[0][1][1], b[0][1][1])
        assert b[0][1][1].dtype == np.float32
      else:
        assert a[0][1] == b[0][1], name
    stages = {n: _outputs(limited, str(folder / n))[0][1].get("stage")
              for n in ("empty.wav", "not_audio.mp3", "nan.wav", "missing.wav")}
    assert stages == {"empty.wav": "decode", "not_audio.mp3": "decode",
                      "nan.wav": "decode", "missing.wav": "read"}
    start = time.monotonic()
    hanging = str(folder / "hang_me.wav")
    ((tag, record),) = _outputs(limited, hanging)
    assert time.monotonic() - start < LIMIT_S + 10
    assert tag == lib.ERROR_TAG and record["stage"] == "timeout"
    assert record["path"] == hanging and "20 s" in record["error"]
    assert record["error"].startswith(hanging)
    ((tag, (path, waveform)),) = _outputs(limited, str(folder / "clip_a.wav"))
    assert tag == "short" and waveform.size == 4 * 22050
  finally:
    limited.teardown()
  assert not limited._decoder.alive()  # pylint: disable=protected-access


def test_the_limit_is_a_config_field_and_a_flag():
  config = lib.TagCatalogConfig(model="m", input="i", output_dir="o")
  assert config.file_timeout_s == lib.DEFAULT_FILE_TIMEOUT_S == 600.0
  assert lib.TagCatalogConfig(model="m", input="i", output_dir="o",
                              file_timeout_s=0).file_timeout_s == 0
  with pytest.raises(ValueError, match="file_timeout_s"):
    lib.TagCatalogConfig(model="m", input="i", output_dir="o", file_timeout_s=-1)
  assert "timeout" in lib.STAGES
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  shown = subprocess.run([sys.executable, "-m", "beam_jobs.tag_catalog", "--help"],
                         capture_output=True, text=True, env=env, timeout=300)
  assert shown.returncode == 0, shown.stderr
  help_text = " ".join(shown.stdout.split())
  assert "--file_timeout_s: The longest one file's decode may take" in help_text
  assert "'timeout'" in help_text and "(default: 600.0)" in help_text


@pytest.mark.slow
def test_a_hanging_file_becomes_a_timeout_error_and_the_job_goes_on(folder,
                                                                   tmp_path_factory,
                                                                   monkeypatch):
  monkeypatch.setenv(decode_process.HANG_PATTERN_ENV, _HANGS)  # the workers inherit it
  exported = fx.shared_export(tmp_path_factory)
  out = str(tmp_path_factory.mktemp("timeout_catalog") / "catalog")
  config = lib.TagCatalogConfig(model=exported["export_dir"], input=str(folder),
                                output_dir=out, top_k=3, max_batch_size=4,
                                file_timeout_s=LIMIT_S,
                                min_files_per_worker=0)  # two worker processes
  start = time.monotonic()
  metadata = catalog_runs.run(config, MULTI_PROCESS)
  elapsed = time.monotonic() - start
  assert elapsed < decode_process.HANG_SECONDS / 6
  hanging = str(folder / "hang_me.wav")
  errors = {e["path"]: e for e in catalog_runs.read_errors(out)}
  assert errors[hanging]["stage"] == "timeout"
  assert errors[hanging]["error"].startswith(f"{hanging}: decoding took longer than "
                                             "the limit of 20 s")
  tagged = set(catalog_parts.read_table(out).column("path")
               .to_pylist())
  assert tagged == {str(folder / n) for n in _GOOD} | {str(folder / "long.flac")}
  c = metadata["counters"]
  assert c["files_matched"] == len(_GOOD) + 5
  assert c["files_tagged"] == len(_GOOD) + 1 and c["files_failed"] == 4
  assert c["reconciled"] and c["matches_outputs"]
  assert metadata["failed_by_stage"] == {"timeout": 1, "decode": 3}


@pytest.mark.parametrize("threads", [1, 2])
def test_the_decoder_process_computes_with_its_workers_blas_threads(folder, threads):
  # A Beam worker caps its BLAS at one thread (beam_jobs.worker_threads); a child with
  # the machine's default count would round the resampler's products differently.
  from threadpoolctl import threadpool_limits
  path = str(folder / "clip_b.flac")  # 44.1 kHz: resampled by matrix products
  with threadpool_limits(limits=threads, user_api="blas"):
    with streaming.ResampledNativeWaveform(path, 22050) as here:
      expected = here.read(0, here.num_samples)
    decoder = decode_process.DecoderProcess(300.0)
    try:
      source = decoder.open(path, 22050)
      np.testing.assert_array_equal(source.read(0, source.num_samples), expected)
      source.close()
    finally:
      decoder.stop()
