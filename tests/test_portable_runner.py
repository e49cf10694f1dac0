"""Both Beam jobs on Beam's portable (Fn API) path, equal to the in-process runner's output.

Dataflow Runner v2, Flink and Spark run a pipeline the portable way: the pipeline is
serialised to its proto, submitted to a job service, and executed by SDK worker
processes that talk to the runner over gRPC. Here ``--runner=PortableRunner
--job_endpoint=embed`` starts Beam's job service in process and
``--environment_type=EXTERNAL`` sends the work to a worker pool started from this
environment (``python -m apache_beam.runners.worker.worker_pool_main``), so every DoFn,
coder and side output of both jobs goes through that path. The outputs must equal the
in-process FnApiRunner's record for record: ids, paths, counts, labels and error
records exactly, float features to float32 rounding (see ``assert_same_records``).
"""

import glob
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

import serving_fixtures as fx
from beam_jobs import preprocess_lib
from beam_jobs import catalog_runs
from beam_jobs import tag_catalog_lib
from deepbof_tf import catalog_parts
from deepbof_tf.config import SamplingConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_PROCESS = ["--runner=DirectRunner", "--direct_num_workers=1"]
# Written by the run, not by the data: they differ between any two runs.
RUN_FIELDS = ("created_utc", "elapsed_seconds", "counters", "runner", "beam_args",
              "output_dir")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def worker_pool(tmp_path_factory):
  """An external SDK worker pool from this environment; yields its Beam options."""
  port = _free_port()
  env = dict(os.environ)
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  log = open(tmp_path_factory.mktemp("pool") / "worker_pool.log", "w")
  pool = subprocess.Popen(
      [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
       f"--service_port={port}"], env=env, stdout=log, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 60
  while True:
    try:
      socket.create_connection(("localhost", port), timeout=1).close()
      break
    except OSError:
      if pool.poll() is not None or time.monotonic() > deadline:
        pool.kill()
        raise RuntimeError(f"the worker pool did not start; see {log.name}")
      time.sleep(0.2)
  yield ["--runner=PortableRunner", "--job_endpoint=embed",
         "--environment_type=EXTERNAL", f"--environment_config=localhost:{port}"]
  pool.terminate()
  pool.wait(timeout=30)
  log.close()


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
  root = tmp_path_factory.mktemp("portable_audio")
  files = {"a.wav": (6.0, 22050, "train"), "b.flac": (5.0, 44100, "train"),
           "c.ogg": (4.0, 32000, "valid"), "d.wav": (5.0, 22050, "test")}
  rows = ["path,split,tags"]
  for i, (name, (seconds, rate, split)) in enumerate(sorted(files.items())):
    sf.write(str(root / name), fx.music_like_signal(seconds, 40 + i, rate), rate)
    rows.append(f"{name},{split},{'rock' if i % 2 else 'rock;piano'}")
  (root / "broken.wav").write_bytes(b"RIFF\x00\x00")
  rows.append("broken.wav,train,rock")
  (root / "manifest.csv").write_text("\n".join(rows) + "\n")
  return root


def _records(pattern):  # a glob pattern, or a list of files
  """Every tf.Example of the shards matching ``pattern`` as a feature dict, sorted.

  Parsed, not compared as bytes: a tf.Example's feature map has no fixed order when
  serialised, so two equal records can differ byte for byte.
  """
  out = []
  for path in sorted(glob.glob(pattern) if isinstance(pattern, str) else pattern):
    for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
      example = tf.train.Example.FromString(record.numpy())
      out.append({key: list(getattr(value, value.WhichOneof("kind")).value)
                  for key, value in example.features.feature.items()})
  return sorted(out, key=_identity)


def _identity(record):
  """The record's non-float features (ids, paths, counts, labels' kind): its sort key."""
  return json.dumps({k: v for k, v in record.items()
                     if not (v and isinstance(v[0], float))}, sort_keys=True, default=repr)


def assert_same_records(ours, theirs, what):
  """Equal ids and integer/bytes features; float features to float32 rounding.

  The in-process run computes in the test process, whose TensorFlow and BLAS thread
  pools earlier tests may have set; the portable workers start their own (one thread,
  beam_jobs.worker_threads). Reductions split over another number of threads round
  differently, by a few float32 ulps.
  """
  assert len(ours) == len(theirs) > 0, what
  for mine, other in zip(ours, theirs):
    assert _identity(mine) == _identity(other), what
    for key, value in mine.items():
      if value and isinstance(value[0], float):
        np.testing.assert_allclose(value, other[key], rtol=1e-5, atol=1e-6,
                                   err_msg=f"{what}: {key}")


def _lines(pattern):  # a glob pattern, or a list of files
  return sorted(line for path in (glob.glob(pattern) if isinstance(pattern, str)
                                  else pattern)
                for line in open(path).read().splitlines() if line)


def _metadata(directory):
  with open(os.path.join(directory, "metadata.json")) as f:
    metadata = json.load(f)
  return {k: v for k, v in metadata.items() if k not in RUN_FIELDS}


@pytest.mark.slow
def test_preprocess_on_the_portable_runner_equals_the_in_process_run(
    audio, worker_pool, tmp_path):
  outputs = {}
  for name, beam_args in (("in_process", IN_PROCESS), ("portable", worker_pool)):
    out = str(tmp_path / name)
    config = preprocess_lib.PreprocessConfig(
        manifest=str(audio / "manifest.csv"), audio_root=str(audio), output_dir=out,
        sampling=SamplingConfig(num_blocks=24))
    preprocess_lib.run(config, beam_args=beam_args)
    outputs[name] = out
  a, b = outputs["in_process"], outputs["portable"]
  for sub in ("clips/*", "blocks/*"):
    assert_same_records(_records(os.path.join(a, sub)), _records(os.path.join(b, sub)), sub)
  assert len(_records(os.path.join(a, "clips/*"))) == 4
  errors = _lines(os.path.join(a, "errors", "*"))
  assert len(errors) == 1 and "broken.wav" in errors[0]
  assert errors == _lines(os.path.join(b, "errors", "*"))
  assert _metadata(a) == _metadata(b)


@pytest.mark.slow
def test_tag_catalog_on_the_portable_runner_equals_the_in_process_run(
    audio, worker_pool, tmp_path_factory):
  export = fx.shared_export(tmp_path_factory)
  tables = {}
  for name, beam_args in (("in_process", IN_PROCESS), ("portable", worker_pool)):
    out = str(tmp_path_factory.mktemp(name) / "catalog")
    config = tag_catalog_lib.TagCatalogConfig(
        model=export["export_dir"], input=str(audio / "*.*"), output_dir=out, top_k=3)
    catalog_runs.run(config, beam_args)
    table = catalog_parts.read_table(out).to_pylist()
    tables[name] = (out, sorted(table, key=lambda row: row[tag_catalog_lib.PATH]))
  (a, ours), (b, theirs) = tables["in_process"], tables["portable"]
  assert [r[tag_catalog_lib.PATH] for r in ours] == [r[tag_catalog_lib.PATH] for r in theirs]
  assert len(ours) == 4  # the four good files; broken.wav and the manifest are errors
  for mine, other in zip(ours, theirs):
    assert mine.keys() == other.keys()
    for key, value in mine.items():
      if isinstance(value, list) and value and isinstance(value[0], float):
        np.testing.assert_allclose(value, other[key], rtol=1e-5, atol=1e-6, err_msg=key)
      else:
        assert value == other[key], key
  assert_same_records(_records(catalog_parts.tfrecord_files(a)),
                      _records(catalog_parts.tfrecord_files(b)), "tfrecord")
  assert (_lines(catalog_parts.files(a, "errors"))
          == _lines(catalog_parts.files(b, "errors")))
  assert _metadata(a) == _metadata(b)
