"""deepbof-tag-catalog on a catalogue that grows: a second run tags nothing, new and
changed files are tagged in new parts, --force and --prune replace rows, another model
is refused, and a run killed with SIGKILL between parts is finished by the next one
(docs/catalog.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

import serving_fixtures as fx
from beam_jobs import catalog_record
from beam_jobs import catalog_runs
from beam_jobs import tag_catalog_lib as lib
from deepbof_tf import catalog_parts
from deepbof_tf import exported as exported_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_PROCESS = ["--runner=DirectRunner", "--direct_num_workers=1"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  return fx.shared_export(tmp_path_factory)


def _write(folder, name, seed, seconds=2.0):
  sf.write(str(folder / name), fx.music_like_signal(seconds, seed, 22050), 22050)
  return str(folder / name)


def _run(exported, folder, out, **kwargs):
  config = lib.TagCatalogConfig(model=exported["export_dir"], input=str(folder),
                                output_dir=out, top_k=3, max_batch_size=4, **kwargs)
  return catalog_runs.run(config, IN_PROCESS)


def _rows(out):
  table = catalog_parts.read_table(out).to_pylist()
  paths = [row["path"] for row in table]
  assert len(paths) == len(set(paths)), "a path has two visible rows"
  return {row["path"]: row for row in table}


def _part_metadata(out, name):
  with open(os.path.join(out, "parts", name, "metadata.json")) as f:
    return json.load(f)


def _inputs(out):
  return catalog_parts.read_inputs(out)


def _assert_reconciled(out, metadata, expected_paths, failed=()):
  record = catalog_parts.read_record(out)
  assert catalog_parts.read_metadata(out) == metadata
  c = metadata["counters"]
  assert c["reconciled"] and c["matches_outputs"]
  assert c["files_matched"] == len(expected_paths)
  assert c["files_failed"] == len(failed)
  assert c["files_tagged"] == len(expected_paths) - len(failed)
  assert record["totals"] == {"files": c["files_matched"], "files_tagged":
                              c["files_tagged"], "files_failed": c["files_failed"]}
  assert sum(p["files_matched"] for p in record["parts"]) == len(expected_paths)
  assert set(_rows(out)) == set(expected_paths) - set(failed)
  assert sorted(e["path"] for e in catalog_runs.read_errors(out)) == sorted(failed)
  assert set(_inputs(out)) == set(expected_paths)
  listed = sorted(os.listdir(os.path.join(out, "parts")))
  assert listed == sorted(p["name"] for p in record["parts"]), "unlisted or missing parts"
  assert metadata["files"]["tfrecord"] == [
      os.path.relpath(p, out) for p in catalog_parts.tfrecord_files(out)]


def test_new_and_changed_files_only_are_tagged(exported, tmp_path):
  folder = tmp_path / "audio"
  folder.mkdir()
  paths = [_write(folder, f"{name}.wav", seed) for seed, name in enumerate("abc")]
  out = str(tmp_path / "catalog")
  first = _run(exported, folder, out)
  assert os.path.exists(os.path.join(out, catalog_parts.CATALOG_FILE))
  assert first["parts"] == ["part-000000"]
  _assert_reconciled(out, first, paths)
  for line in _inputs(out).values():
    assert line["status"] == "tagged" and line["size"] > 0 and line["mtime_ns"] > 0
  rows = _rows(out)

  second = _run(exported, folder, out)  # nothing new: nothing tagged, nothing changed
  assert second["last_run"]["files_to_tag"] == 0
  assert second["last_run"]["files_held"] == 3
  assert second["last_run"]["parts_added"] == []
  assert second["parts"] == ["part-000000"]
  assert _rows(out) == rows

  paths += [_write(folder, f"{name}.wav", 10 + seed) for seed, name in enumerate("de")]
  third = _run(exported, folder, out)
  assert third["last_run"]["files_to_tag"] == 2
  (added,) = third["last_run"]["parts_added"]
  assert third["parts"] == ["part-000000", added]
  part = _part_metadata(out, added)["counters"]
  assert part["files_matched"] == 2 and part["files_tagged"] == 2
  assert part["beam_counters"]["files_tagged"] == 2
  now = _rows(out)
  for path, row in rows.items():
    assert now[path] == row
  _assert_reconciled(out, third, paths)

  before = os.stat(paths[0]).st_mtime_ns
  _write(folder, "a.wav", 99, seconds=3.0)  # new content, new size, new time
  os.utime(paths[0], ns=(before + 10**9, before + 10**9))
  fourth = _run(exported, folder, out)
  assert fourth["last_run"]["files_to_tag"] == 1
  changed = _rows(out)
  assert changed[paths[0]]["duration_seconds"] == pytest.approx(3.0, abs=1e-3)
  assert changed[paths[0]]["embedding"] != rows[paths[0]]["embedding"]
  for path in paths[1:]:
    assert changed[path] == now[path]
  assert "part-000000" not in fourth["parts"]  # rewritten without a.wav
  _assert_reconciled(out, fourth, paths)


def test_content_identity_ignores_a_touch(exported, tmp_path):
  folder = tmp_path / "audio"
  folder.mkdir()
  paths = [_write(folder, f"{name}.wav", seed) for seed, name in enumerate("ab")]
  out = str(tmp_path / "catalog")
  _run(exported, folder, out, identity="content")
  assert all(len(line["sha256"]) == 64 for line in _inputs(out).values())
  os.utime(paths[0], ns=(1, 1))
  metadata = _run(exported, folder, out, identity="content")
  assert metadata["last_run"]["files_to_tag"] == 0
  metadata = _run(exported, folder, out)  # by size and time: the touched file again
  assert metadata["last_run"]["files_to_tag"] == 1
  _assert_reconciled(out, metadata, paths)


def test_failures_are_retried_force_retags_prune_drops(exported, tmp_path):
  folder = tmp_path / "audio"
  folder.mkdir()
  paths = [_write(folder, f"{name}.wav", seed) for seed, name in enumerate("abc")]
  bad = str(folder / "bad.wav")
  open(bad, "wb").close()
  paths.append(bad)
  out = str(tmp_path / "catalog")
  first = _run(exported, folder, out)
  _assert_reconciled(out, first, paths, failed=[bad])
  assert _inputs(out)[bad]["status"] == "failed"
  rows = _rows(out)

  again = _run(exported, folder, out)  # a failure is not held: tried again
  assert again["last_run"]["files_to_tag"] == 1
  assert again["failed_by_stage"] == {"decode": 1}
  _assert_reconciled(out, again, paths, failed=[bad])

  forced = _run(exported, folder, out, force=True, part_max_files=3)
  assert forced["last_run"]["files_to_tag"] == 4
  assert len(forced["last_run"]["parts_added"]) == 2
  _assert_reconciled(out, forced, paths, failed=[bad])
  now = _rows(out)
  for path, row in rows.items():
    np.testing.assert_allclose(now[path]["embedding"], row["embedding"], atol=1e-6)

  os.remove(paths[1])
  kept = _run(exported, folder, out)  # without --prune the deleted file stays
  assert paths[1] in _rows(out)
  assert kept["last_run"]["files_pruned"] == 0
  pruned = _run(exported, folder, out, prune=True)
  assert pruned["last_run"]["files_pruned"] == 1
  _assert_reconciled(out, pruned, [p for p in paths if p != paths[1]], failed=[bad])


def test_another_model_is_refused(exported, tmp_path):
  folder = tmp_path / "audio"
  folder.mkdir()
  _write(folder, "a.wav", 0)
  out = str(tmp_path / "catalog")
  _run(exported, folder, out)
  other = tmp_path / "other_export"
  version = exported_lib.resolve_version_dir(exported["export_dir"])
  shutil.copytree(version, other)
  info_path = other / "assets" / exported_lib.EXPORT_INFO_FILE
  info = json.loads(info_path.read_text())
  info["retrained"] = True
  info_path.write_text(json.dumps(info))
  with pytest.raises(ValueError, match="another model.*another --output_dir"):
    _run({"export_dir": str(other)}, folder, out)
  assert catalog_runs.export_fingerprint(version) == catalog_runs.export_fingerprint(version)
  assert catalog_runs.export_fingerprint(version) != catalog_runs.export_fingerprint(str(other))


def test_a_run_killed_between_parts_is_finished_by_the_next(exported, tmp_path):
  folder = tmp_path / "audio"
  folder.mkdir()
  paths = [_write(folder, f"f{i}.wav", 30 + i) for i in range(7)]
  out = str(tmp_path / "catalog")
  record = os.path.join(out, catalog_parts.CATALOG_FILE)
  command = [sys.executable, "-m", "beam_jobs.tag_catalog",
             f"--model={exported['export_dir']}", f"--input={folder}",
             f"--output_dir={out}", "--part_max_files=2", "--top_k=3", *IN_PROCESS]
  proc = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=ROOT),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          start_new_session=True)
  try:
    deadline = time.monotonic() + 300
    while not os.path.exists(record) and proc.poll() is None:
      assert time.monotonic() < deadline
      time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its decoder processes
    proc.wait()
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
  proc.stdout.close()
  proc.stderr.close()
  published = catalog_parts.read_record(out)["parts"]
  assert 1 <= len(published) < 4
  kept = _rows(out)
  assert len(kept) == sum(p["files_tagged"] for p in published)

  # What a kill can leave besides: a work directory whose owner record is gone (killed
  # just before its rename) and a part published but not yet listed.
  os.makedirs(os.path.join(out, "parts", "part-000042.incomplete-deadbeef", "parquet"))
  os.makedirs(os.path.join(out, "parts", "part-000043", "parquet"))
  rerun = subprocess.run(command, env=dict(os.environ, PYTHONPATH=ROOT),
                         capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "files matched 7 = tagged 7 + failed 0: reconciled" in rerun.stdout
  metadata = catalog_parts.read_metadata(out)
  assert metadata["last_run"]["files_held"] == len(kept)
  assert metadata["last_run"]["files_to_tag"] == 7 - len(kept)
  _assert_reconciled(out, metadata, paths)
  rows = _rows(out)
  for path, row in kept.items():
    assert rows[path] == row
  assert not [d for d in os.listdir(tmp_path) if ".incomplete-" in d]


def test_a_catalogue_of_the_one_part_layout_is_read_as_one_part(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  out = tmp_path / "old_catalog"
  (out / "parquet").mkdir(parents=True)
  (out / "errors").mkdir()
  rows = [{"path": "a.wav", "duration_seconds": 1.0, "probabilities": [0.5],
           "top_tags": ["rock"], "top_probabilities": [0.5], "embedding": [1.0, 2.0]}]
  pq.write_table(pa.Table.from_pylist(rows, schema=lib.parquet_schema()),
                 str(out / "parquet" / "tags-00000-of-00001.parquet"))
  error = {"path": "b.wav", "stage": "decode", "error": "b.wav: empty"}
  (out / "errors" / "errors-00000-of-00001.jsonl").write_text(json.dumps(error) + "\n")
  (out / "metadata.json").write_text(json.dumps({"files": {
      "parquet": ["parquet/tags-00000-of-00001.parquet"], "tfrecord": [],
      "errors": ["errors/errors-00000-of-00001.jsonl"]}}))
  assert catalog_parts.read_record(str(out)) is None
  assert catalog_parts.part_dirs(str(out)) == [str(out)]
  assert catalog_parts.read_table(str(out)).to_pylist() == rows
  assert catalog_parts.read_errors(str(out)) == [error]
  assert catalog_parts.tfrecord_files(str(out)) == []
  assert catalog_parts.read_inputs(str(out)) == {}
  config = lib.TagCatalogConfig(model="unused", input=str(tmp_path), output_dir=str(out))
  with pytest.raises(FileExistsError, match="no catalog.json.*--overwrite"):
    catalog_runs.run(config, IN_PROCESS)
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "catalog.json").write_text(json.dumps(catalog_record.new_record("x")))
  assert catalog_parts.read_table(str(empty)).num_rows == 0
  assert catalog_parts.read_table(str(empty)).schema.equals(lib.parquet_schema())
