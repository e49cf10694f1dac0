"""deepbof_tf.catalog_index: the versioned, segmented index of a catalogue against the
NumPy exact search (exact kind: equal; compressed kinds: recall@10 ≥ 0.95 with exact
re-ranked cosines), updates that add a part as a segment and tombstone dropped parts
without touching published files, the atomic swap of CURRENT, rebuild triggers,
filters, and deepbof-similar --build / --query end to end. Catalogues are written with
the real part layout (catalog.json, parts/part-NNNNNN/parquet, metadata.json)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from deepbof_tf import catalog_index
from deepbof_tf import catalog_parts
from deepbof_tf import similarity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAGS = ["rock", "jazz", "pop"]


@pytest.fixture(autouse=True)
def _one_faiss_thread():
  import faiss
  threads = faiss.omp_get_max_threads()
  faiss.omp_set_num_threads(1)  # the test machine is small and shared
  yield
  faiss.omp_set_num_threads(threads)


def _clustered(rng, n, dim, clusters=40, noise=0.6):
  centres = rng.standard_normal([clusters, dim])
  x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal([n, dim])
  return np.abs(x).astype(np.float32) + 0.2  # a shared offset: centring matters


class FakeCatalog:
  """A catalogue in the layout of deepbof-tag-catalog, written part by part."""

  def __init__(self, directory, dim, fingerprint="model-a"):
    self.dir = str(directory)
    self.dim = dim
    self.record = {"format_version": catalog_parts.CATALOG_FORMAT_VERSION,
                   "model_fingerprint": fingerprint, "next_part": 0, "parts": [],
                   "totals": {}}
    self.rows = {}  # part name -> (paths, embeddings, probabilities)
    os.makedirs(self.dir, exist_ok=True)
    self._commit()

  def add_part(self, paths, embeddings, probabilities=None, replaces=()):
    import pyarrow.parquet as pq
    name = catalog_parts.part_name(self.record["next_part"])
    self.record["next_part"] += 1
    n = len(paths)
    if probabilities is None:
      probabilities = np.random.default_rng(len(self.rows)).random([n, len(TAGS)])
    probabilities = np.asarray(probabilities, np.float32)
    table = catalog_parts.parquet_schema().empty_table().from_pylist([
        {"path": p, "duration_seconds": 1.0, "probabilities": probabilities[i].tolist(),
         "top_tags": [TAGS[j] for j in np.argsort(-probabilities[i])[:2]],
         "top_probabilities": sorted(probabilities[i].tolist(), reverse=True)[:2],
         "embedding": np.asarray(embeddings[i], np.float32).tolist()}
        for i, p in enumerate(paths)], schema=catalog_parts.parquet_schema())
    rel = "parquet/tags-00000-of-00001.parquet"
    os.makedirs(os.path.join(self.dir, "parts", name, "parquet"))
    pq.write_table(table, os.path.join(self.dir, "parts", name, rel))
    self.record["parts"] = [p for p in self.record["parts"] if p["name"] not in replaces]
    self.record["parts"].append({"name": name, "files": {"parquet": [rel], "tfrecord": [],
                                                          "errors": []},
                                 "files_matched": n, "files_tagged": n, "files_failed": 0})
    for old in replaces:
      self.rows.pop(old)
    self.rows[name] = (list(paths), np.asarray(embeddings, np.float32), probabilities)
    self._commit()
    return name

  def drop(self, name):
    self.record["parts"] = [p for p in self.record["parts"] if p["name"] != name]
    self.rows.pop(name)
    self._commit()

  def _commit(self):
    with open(os.path.join(self.dir, "catalog.json"), "w") as f:
      json.dump(self.record, f)
    files = [f"parts/{p['name']}/{rel}" for p in self.record["parts"]
             for rel in p["files"]["parquet"]]
    with open(os.path.join(self.dir, "metadata.json"), "w") as f:
      json.dump({"tags": TAGS, "n_tags": len(TAGS), "embedding_size": self.dim,
                 "created_utc": "2026-01-01T00:00:00Z",
                 "files": {"parquet": files, "tfrecord": [], "errors": []}}, f)

  def table(self):
    paths = [p for v in self.rows.values() for p in v[0]]
    x = np.concatenate([v[1] for v in self.rows.values()])
    probabilities = np.concatenate([v[2] for v in self.rows.values()])
    return paths, x, probabilities


def _index_dir(catalog):
  return similarity.index_dir(catalog.dir)


def _rows_to_paths(index, found):
  return [[index.path(r) for r, _ in f] for f in found]


def _exact_paths(paths, x, queries, k, normalization="raw", keep=None):
  scores, ids = similarity.exact_neighbours(x, queries, k, normalization, keep=keep)
  return [[paths[i] for i in row if i >= 0] for row in ids], scores


def _files(directory):
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[path] = (os.stat(path).st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
  return out


@pytest.mark.parametrize("normalization", ["raw", "centred", "centred_csls"])
def test_exact_kind_equals_numpy(tmp_path, rng, normalization):
  catalog = FakeCatalog(tmp_path / "catalog", 24)
  x = _clustered(rng, 900, 24)
  x[7] = 0.0  # similar to nothing
  for i in range(3):
    catalog.add_part([f"music/{i}/{j:03d}.mp3" for j in range(300)], x[300 * i:300 * (i + 1)])
  report = catalog_index.update_catalog_index(catalog.dir, normalization=normalization)
  assert report.action == "build" and report.kind == "exact" and report.added_rows == 900
  index = catalog_index.CatalogIndex.open(_index_dir(catalog))
  assert index.num_items == 900 and index.version == report.version == "v000001"
  paths, table, probabilities = catalog.table()
  queries = table[:30] * 1.01 + 0.01
  found = index.search(queries, 10)
  expected, scores = _exact_paths(paths, table, queries, 10, normalization)
  assert _rows_to_paths(index, found) == expected
  np.testing.assert_allclose([[s for _, s in f] for f in found], scores, atol=1e-5)
  # A catalogue path query: its stored vector, itself left out.
  row = index.row_of(paths[42])
  (own,) = index.search(index.vector(row)[None], 5, exclude_rows=[row], transformed=True)
  keep = np.ones(len(paths), bool)
  keep[42] = False
  assert [index.path(r) for r, _ in own] == _exact_paths(
      paths, table, table[42:43], 5, normalization, keep)[0][0]
  # --where on the stored probabilities, as similarity.tag_mask.
  mask = index.where_mask(["rock>0.5", "jazz<=0.7"])
  np.testing.assert_array_equal(
      mask, similarity.tag_mask(probabilities, TAGS, ["rock>0.5", "jazz<=0.7"]))
  found = index.search(queries, 10, keep=mask)
  assert _rows_to_paths(index, found) == _exact_paths(paths, table, queries, 10,
                                                      normalization, mask)[0]
  assert all(mask[r] for f in found for r, _ in f)
  assert index.top_tags(0) == [TAGS[j] for j in np.argsort(-probabilities[0])[:2]]


def _check_compressed(index, paths, x, normalization, keep=None, recall=0.95):
  mean = similarity.centring_vector(x) if normalization.startswith("centred") else None
  base = similarity.transformed(x, mean).astype(np.float64)
  queries = x[::40] * 1.01
  found = index.search(queries, 10, keep=keep)
  ids = np.array([[r for r, _ in f] for f in found])
  _, exact = similarity.exact_neighbours(x, queries, 10, normalization, keep=keep)
  assert similarity.recall_at_k(ids, exact) >= recall
  q = similarity.transformed(queries, mean).astype(np.float64)
  for i, f in enumerate(found):
    assert len(f) == 10
    cosines = base[[r for r, _ in f]] @ q[i]
    np.testing.assert_allclose([s for _, s in f], cosines, atol=1e-5)
    assert [s for _, s in f] == sorted([s for _, s in f], reverse=True)
    if keep is not None:
      assert all(keep[r] for r, _ in f)


@pytest.mark.parametrize("params", [
    catalog_index.CompressionParams(kind=catalog_index.IVFSQ8, nprobe=8),
    catalog_index.CompressionParams(kind=catalog_index.IVFPQ, pq_m=8, pq_nbits=4,
                                    nprobe=8)], ids=["ivfsq8", "ivfpq"])
def test_compressed_kind_recall_and_exact_scores(tmp_path, rng, params, monkeypatch):
  # Filters keeping more than 100 rows of a segment go through faiss's IDSelector.
  monkeypatch.setattr(catalog_index, "FILTER_EXACT_MAX_ROWS", 100)
  x = _clustered(rng, 4000, 32)
  paths = [f"t{i:05d}" for i in range(len(x))]
  parts = [catalog_index.PartRows(f"p{i}", paths[1000 * i:1000 * (i + 1)],
                                  x[1000 * i:1000 * (i + 1)]) for i in range(4)]
  directory = str(tmp_path / "index")
  report = catalog_index.build_index(directory, parts, dim=32, normalization="centred",
                                     exact_max_items=1000, params=params)
  assert report.kind == params.kind
  index = catalog_index.CatalogIndex.open(directory)
  manifest = index.manifest
  assert manifest["params"]["nlist"] == min(round(4 * np.sqrt(4000)), 4000 // 39)
  assert manifest["params"]["nprobe"] == 8 and manifest["trained"]
  assert os.path.exists(os.path.join(directory, "segments", manifest["segments"][0]["name"],
                                     catalog_index.FAISS_FILE))
  _check_compressed(index, paths, x, "centred")
  # Filters: half the rows, and a selective one (scanned exactly), per-query masks.
  _check_compressed(index, paths, x, "centred", keep=np.arange(len(x)) % 2 == 0)
  _check_compressed(index, paths, x, "centred", keep=np.arange(len(x)) % 97 == 0,
                    recall=1.0)
  masks = np.stack([np.arange(len(x)) % 3 == 0, np.arange(len(x)) % 3 == 1])
  found = index.search(x[:2], 5, keep=masks)
  assert all(r % 3 == i for i, f in enumerate(found) for r, _ in f)
  assert all(len(f) == 5 for f in found)


def test_update_adds_a_segment_and_tombstones_without_touching_published_files(
    tmp_path, rng):
  catalog = FakeCatalog(tmp_path / "catalog", 16)
  x = _clustered(rng, 700, 16)
  first = catalog.add_part([f"a{i}" for i in range(300)], x[:300])
  second = catalog.add_part([f"b{i}" for i in range(200)], x[300:500])
  report = catalog_index.update_catalog_index(catalog.dir)
  assert (report.action, report.version, report.segments) == ("build", "v000001", 1)
  before = _files(os.path.join(_index_dir(catalog), "segments"))
  assert catalog_index.update_catalog_index(catalog.dir).action == "unchanged"
  assert catalog_index.read_current(_index_dir(catalog)) == "v000001"
  catalog.add_part([f"c{i}" for i in range(100)], x[500:600])
  report = catalog_index.update_catalog_index(catalog.dir)
  assert (report.action, report.version, report.added_rows, report.segments) == (
      "update", "v000002", 100, 2)
  assert "added 100 rows in segment" in report.summary()
  after = _files(os.path.join(_index_dir(catalog), "segments"))
  assert all(after[p] == v for p, v in before.items())  # same mtimes and contents
  assert len(after) > len(before)
  index = catalog_index.CatalogIndex.open(_index_dir(catalog))
  assert index.num_items == 600 and len(index.segments) == 2
  # The statistics stay those of the first build: the new rows are centred on them.
  mean = similarity.centring_vector(x[:500])
  np.testing.assert_allclose(index.mean, mean, atol=1e-6)
  np.testing.assert_allclose(index.vector(index.row_of("c5")),
                             similarity.transformed(x[505:506], mean)[0], atol=1e-6)
  (found,) = index.search(x[505:506], 1)
  assert index.path(found[0][0]) == "c5"
  # Part a is rewritten without a0…a9 (a new part replaces it): a is tombstoned.
  catalog.add_part([f"a{i}" for i in range(10, 300)], x[10:300], replaces=[first])
  report = catalog_index.update_catalog_index(catalog.dir, max_tombstone_fraction=0.9)
  assert (report.action, report.tombstoned_rows, report.added_rows) == ("update", 300, 290)
  index = catalog_index.CatalogIndex.open(_index_dir(catalog))
  assert index.num_items == 590 and index.row_of("a3") is None
  assert index.manifest["tombstoned_parts"] == [first]
  paths, table, _ = catalog.table()
  found = index.search(table[:20], 10)
  base = similarity.transformed(table, mean).astype(np.float64)
  q = similarity.transformed(table[:20], mean).astype(np.float64)
  expected = np.argsort(-(q @ base.T), axis=1, kind="stable")[:, :10]
  assert _rows_to_paths(index, found) == [[paths[i] for i in row] for row in expected]
  # Dropping a part only tombstones; compaction merges when tombstones pass 20 %.
  catalog.drop(second)
  report = catalog_index.update_catalog_index(catalog.dir)
  assert report.action == "compact" and report.segments == 1
  index = catalog_index.CatalogIndex.open(_index_dir(catalog))
  assert index.num_items == index.num_rows == 390 and not index.manifest["tombstoned_parts"]
  assert index.row_of("b1") is None and index.row_of("c1") is not None
  np.testing.assert_allclose(index.mean, mean, atol=1e-6)  # still frozen
  # Only the live version and the one before it keep files.
  versions = sorted(os.listdir(os.path.join(_index_dir(catalog), "versions")))
  assert versions == ["v000003.json", "v000004.json"]


def test_an_opened_version_keeps_answering_while_others_are_published(tmp_path, rng):
  catalog = FakeCatalog(tmp_path / "catalog", 16)
  x = _clustered(rng, 400, 16)
  catalog.add_part([f"a{i}" for i in range(200)], x[:200])
  catalog_index.update_catalog_index(catalog.dir)
  old = catalog_index.CatalogIndex.open(_index_dir(catalog))
  answer = old.search(x[:10], 5)
  for i in range(3):  # v2, v3, v4: v1's files are garbage-collected
    catalog.add_part([f"n{i}-{j}" for j in range(50)], x[200 + 50 * i:250 + 50 * i])
    catalog_index.update_catalog_index(catalog.dir)
  assert catalog_index.read_current(_index_dir(catalog)) == "v000004"
  assert not os.path.exists(os.path.join(_index_dir(catalog), "versions", "v000001.json"))
  assert old.search(x[:10], 5) == answer and old.version == "v000001"
  assert [old.path(r) for r, _ in answer[0]] == [old.path(r) for r, _ in
                                                 old.search(x[:1], 5)[0]]


def test_a_build_that_dies_before_the_swap_leaves_the_old_version_live(
    tmp_path, rng, monkeypatch):
  catalog = FakeCatalog(tmp_path / "catalog", 16)
  x = _clustered(rng, 300, 16)
  catalog.add_part([f"a{i}" for i in range(200)], x[:200])
  catalog_index.update_catalog_index(catalog.dir)
  catalog.add_part([f"b{i}" for i in range(100)], x[200:])

  def dies(directory, version):
    raise RuntimeError("killed before the swap")

  monkeypatch.setattr(catalog_index, "_publish_current", dies)
  with pytest.raises(RuntimeError, match="killed"):
    catalog_index.update_catalog_index(catalog.dir)
  assert catalog_index.read_current(_index_dir(catalog)) == "v000001"
  index = catalog_index.CatalogIndex.open(_index_dir(catalog))
  assert index.num_items == 200 and index.row_of("b1") is None
  monkeypatch.undo()
  report = catalog_index.update_catalog_index(catalog.dir)
  assert report.action == "update" and report.added_rows == 100
  index = catalog_index.CatalogIndex.open(_index_dir(catalog))
  assert index.num_items == 300 and index.row_of("b1") is not None
  # The dead build's segment is collected: only referenced segments remain.
  referenced = {s["name"] for v in ("v000001", index.version) for s in
                catalog_index.read_manifest(_index_dir(catalog), v)["segments"]}
  assert set(os.listdir(os.path.join(_index_dir(catalog), "segments"))) == referenced


def test_rebuild_triggers(tmp_path, rng):
  catalog = FakeCatalog(tmp_path / "catalog", 16)
  x = _clustered(rng, 1200, 16)
  catalog.add_part([f"a{i}" for i in range(200)], x[:200])
  assert catalog_index.update_catalog_index(catalog.dir).action == "build"
  report = catalog_index.update_catalog_index(catalog.dir, normalization="raw")
  assert report.action == "build" and "normalization centred → raw" in report.reason
  report = catalog_index.update_catalog_index(catalog.dir, normalization="raw",
                                              rebuild=True)
  assert report.action == "build" and report.reason == "--rebuild"
  catalog.record["model_fingerprint"] = "model-b"
  catalog._commit()  # pylint: disable=protected-access
  report = catalog_index.update_catalog_index(catalog.dir, normalization="raw")
  assert report.action == "build" and report.reason == "another model fingerprint"
  assert catalog_index.read_manifest(_index_dir(catalog))["model_fingerprint"] == "model-b"
  # Past the exact threshold the index is rebuilt compressed.
  catalog.add_part([f"b{i}" for i in range(1000)], x[200:])
  report = catalog_index.update_catalog_index(
      catalog.dir, normalization="raw", exact_max_items=1000,
      params=catalog_index.CompressionParams(kind=catalog_index.IVFSQ8))
  assert report.action == "build" and report.kind == "ivfsq8" and report.num_items == 1200
  # More segments than allowed: all but the largest merged, the trained quantizer kept.
  manifest = catalog_index.read_manifest(_index_dir(catalog))
  trained, largest = manifest["base"], manifest["segments"][0]["name"]
  for i in range(2):
    catalog.add_part([f"c{i}-{j}" for j in range(20)], x[20 * i:20 * (i + 1)] + 0.01)
    report = catalog_index.update_catalog_index(catalog.dir, normalization="raw",
                                                exact_max_items=1000, max_segments=2)
  assert report.action == "compact" and report.segments == 2
  assert "3 segments > 2" in report.reason
  manifest = catalog_index.read_manifest(_index_dir(catalog))
  assert manifest["base"] == trained and manifest["kind"] == "ivfsq8"
  assert manifest["segments"][0]["name"] == largest
  assert manifest["segments"][1]["rows"] == 40 and manifest["num_items"] == 1240
  index = catalog_index.CatalogIndex.open(_index_dir(catalog))
  paths, table, _ = catalog.table()
  _check_compressed(index, paths, table, "raw")


def test_library_api_for_a_benchmark(tmp_path, rng, monkeypatch):
  """Build at N, add a batch, query single and batched (what benchmarks/ calls)."""
  x = _clustered(rng, 2500, 32)
  directory = str(tmp_path / "bench")
  catalog_index.build_index(
      directory, [catalog_index.PartRows("base", [str(i) for i in range(2000)], x[:2000])],
      dim=32, normalization="raw", exact_max_items=500,
      params=catalog_index.CompressionParams(kind=catalog_index.IVFSQ8))
  report = catalog_index.add_parts(
      directory, [catalog_index.PartRows("add-1", [str(i) for i in range(2000, 2500)],
                                         x[2000:])])
  assert report.added_rows == 500 and report.segments == 2
  index = catalog_index.CatalogIndex.open(directory)
  batched = index.search(x[:50], 10, nprobe=16, refine_factor=10)
  single = [index.search(x[i:i + 1], 10, nprobe=16, refine_factor=10)[0] for i in range(50)]
  assert batched == single
  _, exact = similarity.exact_neighbours(x, x[:50], 10)
  assert similarity.recall_at_k(np.array([[r for r, _ in f] for f in batched]), exact) >= 0.95
  # Tombstones with the compressed kind (faiss's IDSelector over the live rows).
  monkeypatch.setattr(catalog_index, "FILTER_EXACT_MAX_ROWS", 100)
  report = catalog_index.add_parts(directory, [], drop=["add-1"],
                                   max_tombstone_fraction=0.5)
  assert report.action == "update" and report.tombstoned_rows == 500
  index = catalog_index.CatalogIndex.open(directory)
  found = index.search(x[1990:2040], 10)
  assert all(r < 2000 for f in found for r, _ in f)
  keep = np.arange(len(x)) < 2000
  _, exact = similarity.exact_neighbours(x, x[1990:2040], 10, keep=keep)
  assert similarity.recall_at_k(np.array([[r for r, _ in f] for f in found]), exact) >= 0.95
  with pytest.raises(ValueError, match="already in version"):
    catalog_index.add_parts(directory, [catalog_index.PartRows("base", ["z"], x[:1])])


def test_an_old_layout_index_is_named(tmp_path, rng):
  x = _clustered(rng, 50, 8)
  directory = str(tmp_path / "index")
  similarity.SimilarityIndex.build(x, [str(i) for i in range(50)]).save(directory)
  assert catalog_index.is_old_layout(directory)
  with pytest.raises(FileNotFoundError, match="old layout.*deepbof-similar --build"):
    catalog_index.CatalogIndex.open(directory)
  with pytest.raises(FileNotFoundError, match="deepbof-similar --build"):
    catalog_index.CatalogIndex.open(str(tmp_path / "none"))


# --------------------------------------------------------------------------------------
# The command line.
# --------------------------------------------------------------------------------------


def _similar(catalog_dir, *flags):
  return subprocess.run([sys.executable, "-m", "serving.similar",
                         f"--catalog_dir={catalog_dir}", *flags], capture_output=True,
                        text=True, env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"),
                        timeout=300)


def test_command_line_build_update_and_query(tmp_path, rng):
  catalog = FakeCatalog(tmp_path / "catalog", 16)
  x = _clustered(rng, 500, 16)
  catalog.add_part([f"music/a{i:03d}.mp3" for i in range(300)], x[:300])
  # An index of the old layout still answers (in memory), with a note.
  similarity.build_catalog_index(catalog.dir, normalization="raw")
  proc = _similar(catalog.dir, "--query=music/a000.mp3", "--top_k=3", "--output=json")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "old layout" in proc.stderr and len(json.loads(proc.stdout)["neighbours"]) == 3
  proc = _similar(catalog.dir, "--build", "--normalization=raw")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "indexed 300 tracks (exact, 16-d, cosine, raw)" in proc.stderr
  assert "version v000001" in proc.stderr and "added 300 rows in segment" in proc.stderr
  assert not os.path.exists(os.path.join(_index_dir(catalog), similarity.INFO_FILE))
  proc = _similar(catalog.dir, "--build", "--normalization=raw")
  assert proc.returncode == 0 and "up to date" in proc.stderr
  assert "added 0 rows" in proc.stderr and "v000001" in proc.stderr
  catalog.add_part([f"music/b{i:03d}.mp3" for i in range(200)], x[300:])
  proc = _similar(catalog.dir, "--query=music/a000.mp3", "--output=json")
  assert proc.returncode == 0 and "lacks 1 new part" in proc.stderr
  proc = _similar(catalog.dir, "--build", "--normalization=raw")
  assert "version v000002" in proc.stderr and "added 200 rows" in proc.stderr
  # The query is answered from the index alone: the Parquet files may go.
  paths, table, probabilities = catalog.table()
  for part in catalog.record["parts"]:
    os.remove(os.path.join(catalog.dir, "parts", part["name"], part["files"]["parquet"][0]))
  proc = _similar(catalog.dir, "--query=music/b010.mp3", "--top_k=5", "--output=json",
                  "--where=rock>0.3")
  assert proc.returncode == 0, proc.stderr[-2000:]
  answer = json.loads(proc.stdout)
  assert answer["index"] == "exact" and answer["version"] == "v000002"
  keep = similarity.tag_mask(probabilities, TAGS, ["rock>0.3"])
  keep[paths.index("music/b010.mp3")] = False
  expected, scores = _exact_paths(paths, table, table[310:311], 5, "raw", keep)
  assert [n["path"] for n in answer["neighbours"]] == expected[0]
  np.testing.assert_allclose([n["score"] for n in answer["neighbours"]], scores[0],
                             atol=1e-5)
  row = paths.index(expected[0][0])
  assert answer["neighbours"][0]["top_tags"] == [TAGS[j] for j in
                                                 np.argsort(-probabilities[row])[:2]]
  csv_path = tmp_path / "tracks.csv"
  csv_path.write_text("path,album\n" + "".join(
      f"{p},{'A' if i % 2 else 'B'}\n" for i, p in enumerate(paths)))
  proc = _similar(catalog.dir, "--query=music/b010.mp3", "--top_k=4",
                  f"--metadata={csv_path}", "--exclude_same=album")
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = [line.split("\t")[2] for line in proc.stdout.splitlines()]
  assert len(got) == 4 and all(paths.index(p) % 2 != paths.index("music/b010.mp3") % 2
                               for p in got)
  proc = _similar(catalog.dir, "--query=music/b010.mp3", "--where=metal>0.5")
  assert proc.returncode == 1 and "unknown tag 'metal'" in proc.stderr


def test_csls_statistics_of_a_new_segment(tmp_path, rng):
  """A new segment's rows get their mean neighbour cosine against every live row; the
  older rows keep theirs; the search orders by cosine − ½ · that statistic."""
  catalog = FakeCatalog(tmp_path / "catalog", 16)
  x = _clustered(rng, 500, 16)
  catalog.add_part([f"a{i}" for i in range(400)], x[:400])
  catalog_index.update_catalog_index(catalog.dir, normalization="centred_csls")
  old = catalog_index.CatalogIndex.open(_index_dir(catalog))
  catalog.add_part([f"b{i}" for i in range(100)], x[400:])
  catalog_index.update_catalog_index(catalog.dir, normalization="centred_csls")
  index = catalog_index.CatalogIndex.open(_index_dir(catalog))
  first, second = index.segments
  np.testing.assert_array_equal(first.neighbour_similarity,
                                old.segments[0].neighbour_similarity)
  base = similarity.transformed(x, index.mean).astype(np.float64)
  scores = base[400:] @ base.T
  scores[np.arange(100), np.arange(400, 500)] = -np.inf
  expected = -np.sort(-scores, axis=1)[:, :similarity.CSLS_NEIGHBOURS].mean(axis=1)
  np.testing.assert_allclose(second.neighbour_similarity, expected, atol=1e-6)
  ns = np.concatenate([first.neighbour_similarity, second.neighbour_similarity])
  q = similarity.transformed(x[:20] * 1.01, index.mean).astype(np.float64)
  rank = q @ base.T - 0.5 * ns[None]
  found = index.search(x[:20] * 1.01, 5)
  assert [[r for r, _ in f] for f in found] == np.argsort(-rank, axis=1,
                                                          kind="stable")[:, :5].tolist()


def test_fast_scan_kind_is_the_default_and_filters_and_grows(tmp_path, rng, monkeypatch):
  """ivfpqfs (4-bit fast-scan PQ, docs/experiments/index-study.md): the default
  compressed kind; recall@10 ≥ 0.95 and exact re-ranked cosines, faiss's IDSelector
  filters (tombstones, keep masks, per-query masks) and a segment added to the trained
  index."""
  assert catalog_index.DEFAULT_COMPRESSION == catalog_index.IVFPQFS
  resolved = catalog_index.CompressionParams().resolved(1_000_000, 1024)
  assert resolved == {"kind": "ivfpqfs", "nlist": 1024, "nprobe": 12, "refine_factor": 20,
                      "pq_m": 512, "pq_nbits": 4, "train_points": 65_536}
  assert catalog_index._factory_string(resolved) == "IVF1024,PQ512x4fs"
  with pytest.raises(ValueError, match="4 bits"):
    catalog_index.CompressionParams(pq_nbits=8).resolved(10_000, 32)
  monkeypatch.setattr(catalog_index, "FILTER_EXACT_MAX_ROWS", 100)
  x = _clustered(rng, 4500, 32)
  paths = [f"t{i:05d}" for i in range(len(x))]
  parts = [catalog_index.PartRows(f"p{i}", paths[1000 * i:1000 * (i + 1)],
                                  x[1000 * i:1000 * (i + 1)]) for i in range(4)]
  directory = str(tmp_path / "index")
  report = catalog_index.build_index(directory, parts, dim=32, normalization="centred",
                                     exact_max_items=1000)
  assert report.kind == catalog_index.IVFPQFS
  index = catalog_index.CatalogIndex.open(directory)
  params = index.manifest["params"]
  assert params["nlist"] == min(round(1.024 * np.sqrt(4000)), 4000 // 39)
  assert (params["nprobe"], params["refine_factor"], params["pq_m"],
          params["pq_nbits"]) == (12, 20, 16, 4)
  import faiss
  assert isinstance(index.segments[0].index, faiss.IndexIVFPQFastScan)
  _check_compressed(index, paths[:4000], x[:4000], "centred")
  _check_compressed(index, paths[:4000], x[:4000], "centred",
                    keep=np.arange(4000) % 2 == 0)
  _check_compressed(index, paths[:4000], x[:4000], "centred",
                    keep=np.arange(4000) % 97 == 0, recall=1.0)
  masks = np.stack([np.arange(4000) % 3 == 0, np.arange(4000) % 3 == 1])
  found = index.search(x[:2], 5, keep=masks)
  assert all(r % 3 == i for i, f in enumerate(found) for r, _ in f)
  assert all(len(f) == 5 for f in found)
  # A segment added to a copy of the trained index: its rows are found, scores exact.
  report = catalog_index.add_parts(
      directory, [catalog_index.PartRows("p4", paths[4000:], x[4000:])])
  assert report.segments == 2 and report.kind == catalog_index.IVFPQFS
  index = catalog_index.CatalogIndex.open(directory)
  assert isinstance(index.segments[1].index, faiss.IndexIVFPQFastScan)
  assert index.segments[1].index.ntotal == 500
  mean = similarity.centring_vector(x[:4000])  # the first build's statistics
  base = similarity.transformed(x, mean).astype(np.float64)
  found = index.search(x[4000:4100], 1)
  assert np.mean([f[0][0] == 4000 + i for i, f in enumerate(found)]) >= 0.95
  q = similarity.transformed(x[::45] * 1.01, mean).astype(np.float64)
  found = index.search(x[::45] * 1.01, 10)
  exact = np.argsort(-(q @ base.T), axis=1, kind="stable")[:, :10]
  assert similarity.recall_at_k(np.array([[r for r, _ in f] for f in found]),
                                exact) >= 0.95
  for i, f in enumerate(found):
    np.testing.assert_allclose([s for _, s in f], base[[r for r, _ in f]] @ q[i],
                               atol=1e-5)
  # Tombstones of the first part through faiss's IDSelector (more than 100 rows kept).
  report = catalog_index.add_parts(directory, [], drop=["p0"], max_tombstone_fraction=0.5)
  index = catalog_index.CatalogIndex.open(directory)
  found = index.search(x[:50], 10)
  assert all(r >= 1000 for f in found for r, _ in f)
  assert all(len(f) == 10 for f in found)
  # Compaction: the live rows merged into one segment added to the trained index.
  report = catalog_index.add_parts(directory, [], compact=True)
  assert report.action == "compact" and report.segments == 1
  index = catalog_index.CatalogIndex.open(directory)
  assert isinstance(index.segments[0].index, faiss.IndexIVFPQFastScan)
  assert index.segments[0].index.ntotal == 3500 and index.num_items == 3500
  found = index.search(x[1000:1100], 1)
  assert np.mean([index.path(f[0][0]) == paths[1000 + i]
                  for i, f in enumerate(found)]) >= 0.95
