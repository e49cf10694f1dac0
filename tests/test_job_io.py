"""The run protocol of the Beam jobs (``beam_jobs.job_io``): work directories of killed
runs are removed by the next run and live ones never are; paths, runner choice,
progress files, error records, counters and publishing a finished run."""

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from beam_jobs import job_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTI_PROCESS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
_CLAIM = ("import sys, time\n"
          "from beam_jobs import job_io\n"
          "print(job_io.claim_work_dir(sys.argv[1]), flush=True)\n"
          "time.sleep(600)\n")


def _claim_in_subprocess(output_dir):
  proc = subprocess.Popen([sys.executable, "-c", _CLAIM, output_dir], stdout=subprocess.PIPE,
                          text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO,
                                                        TF_CPP_MIN_LOG_LEVEL="3"))
  return proc, proc.stdout.readline().strip()


# --------------------------------------------------------------------------------------
# Work directories.
# --------------------------------------------------------------------------------------


def test_killed_runs_are_removed_and_live_ones_kept(tmp_path):
  output = str(tmp_path / "dataset")
  killed, killed_dir = _claim_in_subprocess(output)
  live, live_dir = _claim_in_subprocess(output)
  try:
    assert os.path.isdir(killed_dir) and os.path.isdir(live_dir)
    assert killed_dir.startswith(output + ".incomplete-")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    # Without an owner record: kept while young, removed once a day old.
    young, old = tmp_path / "dataset.incomplete-young", tmp_path / "dataset.incomplete-old"
    young.mkdir()
    old.mkdir()
    day_ago = time.time() - 2 * job_io.UNOWNED_MAX_AGE_SECONDS
    os.utime(old, (day_ago, day_ago))
    # Another host's run (we cannot tell whether it lives) and another output's work dir.
    foreign = tmp_path / "dataset.incomplete-foreign"
    foreign.mkdir()
    record = {**job_io.owner_record(), "host": "some-other-host", "pid": 999999}
    (foreign / job_io.OWNER_FILE).write_text(json.dumps(record))
    unrelated = tmp_path / "other.incomplete-1234"
    unrelated.mkdir()
    # A record whose pid now belongs to another process (pid reuse) is stale too.
    reused = tmp_path / "dataset.incomplete-reused"
    reused.mkdir()
    record = {**job_io.owner_record(), "process_start": "1"}
    (reused / job_io.OWNER_FILE).write_text(json.dumps(record))

    removed = job_io.remove_stale_work_dirs(output)
    assert sorted(removed) == sorted([killed_dir, str(old), str(reused)])
    for kept in (live_dir, young, foreign, unrelated):
      assert os.path.isdir(kept), kept
    assert job_io.remove_stale_work_dirs(output) == []  # nothing more to do
  finally:
    live.kill()
    live.wait(timeout=30)
  assert job_io.remove_stale_work_dirs(output) == [live_dir]  # now it is gone too


def test_a_failed_body_removes_its_work_dir(tmp_path):
  output = str(tmp_path / "out")
  with pytest.raises(RuntimeError, match="boom"):
    with job_io.work_dir_of(output) as work_dir:
      assert work_dir.startswith(output + job_io.INCOMPLETE)
      assert os.path.isfile(os.path.join(work_dir, job_io.OWNER_FILE))
      raise RuntimeError("boom")
  assert os.listdir(tmp_path) == []


def test_a_non_empty_output_dir_is_refused_without_overwrite(tmp_path):
  empty, full = tmp_path / "empty", tmp_path / "full"
  empty.mkdir()
  full.mkdir()
  (full / "x").write_text("x")
  job_io.check_output_dir(str(empty), overwrite=False)
  job_io.check_output_dir(str(tmp_path / "missing"), overwrite=False)
  job_io.check_output_dir(str(full), overwrite=True)
  with pytest.raises(FileExistsError, match="full: output directory exists"):
    job_io.check_output_dir(str(full), overwrite=False)


# --------------------------------------------------------------------------------------
# Paths, runner choice, counters.
# --------------------------------------------------------------------------------------


def test_paths_local_and_urls():
  assert job_io.is_url("gs://bucket/a") and not job_io.is_url("/data/a")
  assert job_io.join("gs://bucket", "clips", "a") == "gs://bucket/clips/a"
  assert job_io.join("data", "clips") == os.path.join("data", "clips")
  assert job_io.resolve_audio_path("/audio", "x/a.mp3") == os.path.join("/audio", "x/a.mp3")
  assert job_io.resolve_audio_path("gs://b/audio", "a.mp3") == "gs://b/audio/a.mp3"
  for kept in ("/abs/a.mp3", "gs://b/a.mp3"):
    assert job_io.resolve_audio_path("/audio", kept) == kept
  assert job_io.resolve_audio_path("", "a.mp3") == "a.mp3"
  assert job_io.file_system("/data") is job_io.LocalFileSystem
  assert job_io.file_system("gs://bucket/x") is tf.io.gfile


def test_local_runs_use_the_fn_api_runner():
  from apache_beam.options.pipeline_options import PipelineOptions
  from apache_beam.runners.portability.fn_api_runner import fn_runner
  for args in ([], ["--runner=DirectRunner"], MULTI_PROCESS):
    # Never DirectRunner's Prism attempt, which downloads a binary at run time.
    assert isinstance(job_io.make_runner(PipelineOptions(args)), fn_runner.FnApiRunner)
  assert job_io.make_runner(PipelineOptions(["--runner=DataflowRunner"])) is None


def test_runner_choice_by_name():
  from apache_beam.options.pipeline_options import PipelineOptions
  for runner in ("DirectRunner", "direct", "FnApiRunner"):
    assert job_io.is_local_runner(PipelineOptions([f"--runner={runner}"])), runner
  assert job_io.is_local_runner(PipelineOptions([]))
  for runner in ("DataflowRunner", "PortableRunner"):
    assert not job_io.is_local_runner(PipelineOptions([f"--runner={runner}"])), runner


def test_counters_of_a_run_and_their_fallback():
  class _Unsupported:
    def metrics(self):
      raise NotImplementedError("no metrics here")

  from apache_beam.options.pipeline_options import PipelineOptions
  assert job_io.query_counters(_Unsupported()) is None
  options = PipelineOptions(["--runner=DirectRunner"])
  pipeline = job_io.beam.Pipeline(runner=job_io.make_runner(options), options=options)

  def count(element):
    job_io.counter("things_seen").inc()
    return element

  _ = pipeline | job_io.beam.Create([1, 2, 3]) | job_io.beam.Map(count)
  counters = job_io.query_counters(job_io.run_and_wait(pipeline))
  assert counters == {"things_seen": 3}
  from_outputs = {"things_seen": 3, "things_lost": 0}
  assert job_io.reported_counts(from_outputs, counters) == (
      {"things_seen": 3, "things_lost": 0}, "beam_metrics")
  assert job_io.reported_counts(from_outputs, None) == (
      from_outputs, "outputs (the runner reported no Beam counters)")


def test_crcmod_warning_is_dropped_and_others_kept():
  drop = job_io.DropCrcmodWarning()

  def record(message):
    return logging.LogRecord("x", logging.WARNING, __file__, 1, message, None, None)

  assert not drop.filter(record("crcmod package not found. This package is required"))
  assert drop.filter(record("a warning of ours"))
  assert job_io.beam.__name__ == "apache_beam"
  # On only while Beam loads.
  assert not [f for f in logging.getLogger().filters
              if isinstance(f, job_io.DropCrcmodWarning)]


# --------------------------------------------------------------------------------------
# Progress files.
# --------------------------------------------------------------------------------------


def test_progress_counts_add_up_over_workers(tmp_path):
  directory = str(tmp_path / "_progress")
  first, second = job_io.ProgressCounter(directory), job_io.ProgressCounter(directory)
  for _ in range(3):
    first.tick()
  second.tick()
  assert job_io.count_progress(directory) == 4
  assert sorted(name.endswith(".count") for name in os.listdir(directory)) == [True, True]
  stream = io.StringIO()
  with job_io.ProgressReporter(directory, 8, 60.0, "deepbof-preprocess", stream=stream):
    pass
  assert stream.getvalue().startswith("deepbof-preprocess: clips 4/8 (50 %), ")


def test_progress_only_for_local_runners_and_paths(tmp_path):
  work = str(tmp_path / "work")
  runner = object()
  assert job_io.progress_dir_of(work, runner, 15.0) == os.path.join(work, "_progress")
  assert job_io.progress_dir_of(work, None, 15.0) is None
  assert job_io.progress_dir_of(work, runner, 0) is None
  assert job_io.progress_dir_of("gs://bucket/work", runner, 15.0) is None


# --------------------------------------------------------------------------------------
# What a run leaves: summary, error records; publishing.
# --------------------------------------------------------------------------------------


def test_error_records_of_every_file_in_name_order(tmp_path):
  errors = tmp_path / "errors"
  errors.mkdir()
  (errors / "errors-00001-of-00002.jsonl").write_text(
      json.dumps({"path": "c.wav", "stage": "decode", "error": "c.wav: not audio"}) + "\n")
  (errors / "errors-00000-of-00002.jsonl").write_text(
      json.dumps({"path": "a.wav", "stage": "read", "error": "a.wav: no such file"})
      + "\n\n" + json.dumps({"path": "b.wav", "stage": "validate", "error": "short"}) + "\n")
  (errors / "notes.txt").write_text("not an error file\n")
  records = job_io.read_error_records(str(tmp_path))
  assert [r["path"] for r in records] == ["a.wav", "b.wav", "c.wav"]
  assert records[0] == {"path": "a.wav", "stage": "read", "error": "a.wav: no such file"}
  assert job_io.read_error_records(str(tmp_path / "nothing")) == []


def test_pop_summary_reads_and_removes_it(tmp_path):
  (tmp_path / job_io.SUMMARY_FILE).write_text(json.dumps({"files_matched": 3}))
  assert job_io.pop_summary(str(tmp_path)) == {"files_matched": 3}
  assert not (tmp_path / job_io.SUMMARY_FILE).exists()


def test_finish_and_publish_renames_and_replaces(tmp_path):
  output = tmp_path / "out"
  output.mkdir()
  (output / "old.txt").write_text("old")
  work = tmp_path / "out.incomplete-1"
  (work / "clips").mkdir(parents=True)
  (work / "clips" / "a").write_text("a")
  (work / job_io.OWNER_FILE).write_text("{}")
  with pytest.raises(FileExistsError):
    job_io.finish_and_publish(str(work), str(output), {"b": 1, "a": 2}, overwrite=False)
  (work / job_io.OWNER_FILE).write_text("{}")
  job_io.finish_and_publish(str(work), str(output), {"b": 1, "a": 2}, overwrite=True)
  assert sorted(os.listdir(tmp_path)) == ["out"]
  assert sorted(os.listdir(output)) == ["clips", "metadata.json"]
  assert (output / "metadata.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
  assert (output / "clips" / "a").read_text() == "a"


def test_publish_by_copy_writes_metadata_last(tmp_path):
  work = tmp_path / "work"
  (work / "clips").mkdir(parents=True)
  (work / "clips" / "train-00000-of-00001.tfrecord.gz").write_bytes(b"x")
  (work / "metadata.json").write_text("{}")
  order = []
  real_copy = tf.io.gfile.copy

  def spy(src, dst, overwrite=False):
    order.append(os.path.basename(dst))
    real_copy(src, dst, overwrite=overwrite)

  tf.io.gfile.copy = spy
  try:
    job_io.copy_tree(str(work), str(tmp_path / "out"), last="metadata.json")
  finally:
    tf.io.gfile.copy = real_copy
  assert order == ["train-00000-of-00001.tfrecord.gz", "metadata.json"]
  assert (tmp_path / "out" / "clips" / "train-00000-of-00001.tfrecord.gz").read_bytes() == b"x"


@pytest.mark.parametrize("args, inputs, per_worker, expected", [
    # a small run on a 2-worker request: in this process
    (["--direct_num_workers=2", "--direct_running_mode=multi_processing"], 40, 50,
     ["--direct_num_workers=1", "--direct_running_mode=in_memory"]),
    # enough inputs for both workers: as given
    (["--direct_num_workers=2", "--direct_running_mode=multi_processing"], 100, 50, []),
    # 4 asked for, 150 inputs: 3 workers, the running mode kept
    (["--direct_num_workers=4", "--direct_running_mode=multi_processing"], 150, 50,
     ["--direct_num_workers=3"]),
    # one worker process asked for: kept (e.g. to measure a worker's memory)
    (["--direct_num_workers=1", "--direct_running_mode=multi_processing"], 3, 50, []),
    # the rule switched off
    (["--direct_num_workers=2", "--direct_running_mode=multi_processing"], 3, 0, []),
    # not a local runner
    (["--runner=DataflowRunner", "--direct_num_workers=2"], 3, 50, []),
])
def test_sized_local_args(args, inputs, per_worker, expected):
  sized, note = job_io.sized_local_args(args, inputs, per_worker)
  assert sized == args + expected
  assert (note is None) == (not expected)
  if expected:
    assert f"{inputs} file(s) to tag" in note


def test_sized_local_args_counts_all_cores_for_zero_workers(monkeypatch):
  monkeypatch.setattr(os, "cpu_count", lambda: 8)
  sized, _ = job_io.sized_local_args(["--direct_num_workers=0"], 120, 50)
  assert sized[-1] == "--direct_num_workers=2"
