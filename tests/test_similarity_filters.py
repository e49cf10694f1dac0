"""deepbof-similar's filters (--where, --exclude_same) and normalizations (centred,
csls) on a hand-made catalogue whose neighbours are known: 30 tracks on an arc, track
i at angle 2i + 0.01i² degrees, so the nearer in i the more similar (and no ties)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from deepbof_tf import catalog_index
from deepbof_tf import similarity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 30
TAGS = ["rock", "jazz"]


def _arc() -> np.ndarray:
  degrees = 2.0 * np.arange(N) + 0.01 * np.arange(N) ** 2
  x = np.zeros([N, 8], np.float32)
  x[:, 0] = np.cos(np.radians(degrees))
  x[:, 1] = np.sin(np.radians(degrees))
  return x * (1.0 + np.arange(N)[:, None] % 3)  # the norm does not matter


PATHS = [f"music/t{i:02d}.mp3" for i in range(N)]
PROBABILITIES = np.stack([np.arange(N) / (N - 1), 1.0 - np.arange(N) / (N - 1)], 1)


def _metadata_csv(path) -> str:
  """album A for t00–t09, B for t10–t19, empty for t20–t24; t25–t29 unlisted;
  artist x for even tracks, y for odd ones (t20–t24 included)."""
  lines = ["path,album,artist"]
  for i in range(25):
    album = "A" if i < 10 else "B" if i < 20 else ""
    lines.append(f"{PATHS[i]},{album},{'x' if i % 2 == 0 else 'y'}")
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def _names(found) -> list:
  return [PATHS[r].split("/")[1][:3] for r, _ in found]


def test_known_neighbours_and_the_query_is_never_its_own():
  index = similarity.SimilarityIndex.build(_arc(), PATHS)
  assert _names(index.search(_arc()[:1], 3, exclude_rows=[0])[0]) == ["t01", "t02", "t03"]
  assert _names(index.search(_arc()[27:28], 3, exclude_rows=[27])[0]) == [
      "t26", "t28", "t25"]
  # Filtered searches leave the query out too.
  keep = np.ones(N, bool)
  assert _names(index.search(_arc()[5:6], 2, exclude_rows=[5], keep=keep)[0]) == [
      "t04", "t06"]


def test_exclude_same_album_widens_the_search(tmp_path):
  index = similarity.SimilarityIndex.build(_arc(), PATHS)
  meta = similarity.read_track_metadata(_metadata_csv(tmp_path / "tracks.csv"))

  def query(row, k, columns):
    keep = similarity.same_value_mask(PATHS, meta, PATHS[row], columns)
    return _names(index.search(_arc()[row:row + 1], k, exclude_rows=[row], keep=keep)[0])

  # The 8 first candidates (4 × k) are all album A: the search doubles to 16.
  asked = []

  class Counting:
    def __init__(self, inner):
      self.inner = inner

    def search(self, q, k):
      asked.append(k)
      return self.inner.search(q, k)

  index.index = Counting(index.index)
  assert similarity.WIDEN_FACTOR * 2 < 10
  assert query(0, 2, ["album"]) == ["t10", "t11"]
  assert asked == [8, 16]
  assert query(0, 3, ["album", "artist"]) == ["t11", "t13", "t15"]
  assert query(12, 3, ["album"]) == ["t09", "t08", "t07"]
  # A query with an empty album, or not in the CSV, excludes nothing for that column.
  assert query(22, 3, ["album"]) == ["t21", "t23", "t20"]
  assert query(27, 3, ["album", "artist"]) == ["t26", "t28", "t25"]
  # Everything else filtered out: fewer than k, from the whole catalogue.
  keep = np.zeros(N, bool)
  keep[[29, 28]] = True
  assert _names(index.search(_arc()[:1], 5, exclude_rows=[0], keep=keep)[0]) == [
      "t28", "t29"]


def test_where_conditions():
  index = similarity.SimilarityIndex.build(_arc(), PATHS)
  keep = similarity.tag_mask(PROBABILITIES, TAGS, ["rock>0.5"])
  assert keep.tolist() == [i >= 15 for i in range(N)]
  assert _names(index.search(_arc()[:1], 3, exclude_rows=[0], keep=keep)[0]) == [
      "t15", "t16", "t17"]
  keep = similarity.tag_mask(PROBABILITIES, TAGS, ["rock>0.5", "jazz >= 0.4"])
  assert _names(index.search(_arc()[:1], 5, exclude_rows=[0], keep=keep)[0]) == [
      "t15", "t16", "t17"]
  keep = similarity.tag_mask(PROBABILITIES, TAGS, ["rock<=0.1"])
  assert _names(index.search(_arc()[29:30], 2, exclude_rows=[29], keep=keep)[0]) == [
      "t02", "t01"]
  # Per-query masks.
  masks = np.stack([similarity.tag_mask(PROBABILITIES, TAGS, ["rock<0.2"]),
                    similarity.tag_mask(PROBABILITIES, TAGS, ["rock>0.9"])])
  found = index.search(_arc()[[10, 10]], 1, keep=masks)
  assert [_names(f) for f in found] == [["t05"], ["t27"]]


def test_filter_errors_name_the_problem(tmp_path):
  with pytest.raises(ValueError, match=r"unknown tag 'metal'.*rock, jazz"):
    similarity.tag_mask(PROBABILITIES, TAGS, ["metal>0.5"])
  with pytest.raises(ValueError, match=r"expected TAG OP NUMBER"):
    similarity.parse_where("rock=0.5", TAGS)
  with pytest.raises(ValueError, match=r"'high' is not a number"):
    similarity.parse_where("rock>high", TAGS)
  meta = similarity.read_track_metadata(_metadata_csv(tmp_path / "tracks.csv"))
  with pytest.raises(ValueError, match=r"no such column.*path, album, artist"):
    similarity.same_value_mask(PATHS, meta, PATHS[0], ["label"])
  (tmp_path / "bad.csv").write_text("file,album\na.mp3,A\n")
  with pytest.raises(ValueError, match=r"needs a 'path' column \(found file, album\)"):
    similarity.read_track_metadata(str(tmp_path / "bad.csv"))
  index = similarity.SimilarityIndex.build(_arc(), PATHS)
  with pytest.raises(ValueError, match="keep has shape"):
    index.search(_arc()[:1], 3, keep=np.ones(N + 1, bool))


def _clustered(rng, n, dim, clusters=12):
  centres = rng.standard_normal([clusters, dim])
  x = centres[rng.integers(0, clusters, n)] + 0.7 * rng.standard_normal([n, dim])
  return np.abs(x).astype(np.float32) + 0.5  # a shared offset: centring matters


@pytest.mark.parametrize("normalization", ["centred", "csls", "centred_csls"])
def test_normalization_is_stored_and_applied_to_queries(tmp_path, rng, normalization):
  x = _clustered(rng, 300, 16)
  paths = [f"t{i}" for i in range(len(x))]
  built = similarity.SimilarityIndex.build(x, paths, normalization=normalization)
  built.save(str(tmp_path))
  assert os.path.exists(tmp_path / similarity.NORMALIZATION_FILE)
  index = similarity.SimilarityIndex.load(str(tmp_path))
  assert index.normalization == normalization and index.info == built.info
  if normalization.startswith("centred"):
    np.testing.assert_allclose(index.mean, similarity.centring_vector(x), atol=1e-7)
  rows = list(range(0, 300, 7))
  found = index.search(x[rows], 10, exclude_rows=rows)
  differs = 0
  for row, f in zip(rows, found):
    keep = np.ones(len(x), bool)
    keep[row] = False
    scores, ids = similarity.exact_neighbours(x, x[row:row + 1], 10, normalization,
                                              keep=keep)
    assert [r for r, _ in f] == ids[0].tolist(), row
    np.testing.assert_allclose([s for _, s in f], scores[0], atol=1e-5)
    _, raw = similarity.exact_neighbours(x, x[row:row + 1], 11)
    differs += raw[0][1:].tolist() != ids[0].tolist()
  assert differs > 0  # the transform changes the answer
  # Filters work under the transform too.
  keep = np.arange(len(x)) % 2 == 0
  (f,) = index.search(x[3:4], 5, exclude_rows=[3], keep=keep)
  _, ids = similarity.exact_neighbours(x, x[3:4], 5, normalization, keep=keep)
  assert [r for r, _ in f] == ids[0].tolist()


def test_index_written_before_normalizations_loads_as_raw(tmp_path, rng):
  import faiss
  x = _clustered(rng, 200, 16)
  paths = [f"t{i}" for i in range(len(x))]
  flat = faiss.IndexFlatIP(16)
  flat.add(similarity.normalized(x))
  (tmp_path / similarity.INDEX_FILE).write_bytes(faiss.serialize_index(flat).tobytes())
  (tmp_path / similarity.PATHS_FILE).write_text(json.dumps(paths))
  (tmp_path / similarity.INFO_FILE).write_text(json.dumps({
      "kind": "exact", "num_items": 200, "dim": 16, "metric": "cosine",
      "exact_max_items": 10000, "ef_search": 128, "library": "faiss 1.15.1"}))
  index = similarity.SimilarityIndex.load(str(tmp_path))
  assert index.normalization == "raw" and index.mean is None
  found = index.search(x[:20] + 0.01, 5)
  scores, ids = similarity.exact_neighbours(x, x[:20] + 0.01, 5)
  assert [[r for r, _ in f] for f in found] == ids.tolist()
  # A centred index whose statistics are missing is refused, not queried wrongly.
  similarity.SimilarityIndex.build(x, paths, normalization="centred").save(
      str(tmp_path / "centred"))
  os.remove(tmp_path / "centred" / similarity.NORMALIZATION_FILE)
  with pytest.raises(FileNotFoundError):
    similarity.SimilarityIndex.load(str(tmp_path / "centred"))


# --------------------------------------------------------------------------------------
# The command line, on the hand-made catalogue written as deepbof-tag-catalog does.
# --------------------------------------------------------------------------------------


@pytest.fixture
def arc_catalog(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  catalog = tmp_path / "catalog"
  (catalog / "parquet").mkdir(parents=True)
  table = pa.table({
      "path": PATHS,
      "embedding": [row.tolist() for row in _arc()],
      "probabilities": [row.astype(np.float32).tolist() for row in PROBABILITIES],
      "top_tags": [[TAGS[int(np.argmax(p))]] for p in PROBABILITIES]})
  pq.write_table(table, str(catalog / "parquet" / "tags-00000-of-00001.parquet"))
  (catalog / "metadata.json").write_text(json.dumps({
      "tags": TAGS, "n_tags": 2, "embedding_size": 8, "created_utc": "now",
      "files": {"parquet": ["parquet/tags-00000-of-00001.parquet"]}}))
  return str(catalog), _metadata_csv(tmp_path / "tracks.csv")


def _similar(catalog, *flags):
  return subprocess.run([sys.executable, "-m", "serving.similar",
                         f"--catalog_dir={catalog}", *flags], capture_output=True,
                        text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)


def _paths(proc) -> list:
  assert proc.returncode == 0, proc.stderr[-2000:]
  return [n["path"].split("/")[1][:3] for n in json.loads(proc.stdout)["neighbours"]]


def test_command_line_filters(arc_catalog):
  catalog, csv_path = arc_catalog
  proc = _similar(catalog, "--build", "--normalization=raw")
  assert proc.returncode == 0 and "(exact, 8-d, cosine, raw)" in proc.stderr
  common = ["--output=json", "--query=music/t00.mp3"]
  assert _paths(_similar(catalog, *common, "--top_k=3")) == ["t01", "t02", "t03"]
  assert _paths(_similar(catalog, *common, "--top_k=3", f"--metadata={csv_path}",
                         "--exclude_same=album,artist")) == ["t11", "t13", "t15"]
  assert _paths(_similar(catalog, *common, "--top_k=3", f"--metadata={csv_path}",
                         "--exclude_same=album", "--exclude_same=artist")) == [
                             "t11", "t13", "t15"]
  assert _paths(_similar(catalog, *common, "--top_k=5", "--where=rock>0.5",
                         "--where=jazz>=0.4")) == ["t15", "t16", "t17"]
  proc = _similar(catalog, *common, "--where=metal>0.5")
  assert proc.returncode == 1 and "unknown tag 'metal'" in proc.stderr
  assert "rock, jazz" in proc.stderr
  proc = _similar(catalog, *common, "--exclude_same=album")
  assert proc.returncode != 0 and "--exclude_same needs --metadata" in proc.stderr
  proc = _similar(catalog, *common, f"--metadata={csv_path}", "--exclude_same=label")
  assert proc.returncode == 1 and "no such column" in proc.stderr


def test_command_line_default_is_centred(arc_catalog):
  catalog, _ = arc_catalog
  proc = _similar(catalog, "--build")
  assert proc.returncode == 0 and "cosine, centred)" in proc.stderr
  # The live version's manifest (deepbof_tf.catalog_index) records the normalization.
  manifest = catalog_index.read_manifest(similarity.index_dir(catalog))
  assert manifest["normalization"] == "centred"
  proc = _similar(catalog, "--output=json", "--query=music/t10.mp3", "--top_k=4")
  keep = np.ones(N, bool)
  keep[10] = False
  _, ids = similarity.exact_neighbours(_arc(), _arc()[10:11], 4, "centred", keep=keep)
  assert _paths(proc) == [PATHS[i].split("/")[1][:3] for i in ids[0]]
  assert json.loads(proc.stdout)["normalization"] == "centred"
