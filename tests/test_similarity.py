"""deepbof-similar and deepbof_tf.similarity: the faiss indexes against a NumPy exact
search, save/load, and on a demo-corpus catalogue (a model whose local features are
learnt from that corpus, tagged by deepbof-tag-catalog) the nearest neighbours share
the query's tags far more than random pairs do; the command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from deepbof_tf import similarity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CLIPS = 120
DEMO_SECONDS = 5.0


def _clustered(rng, n, dim, clusters=50, noise=0.6):
  centres = rng.standard_normal([clusters, dim])
  x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal([n, dim])
  return np.abs(x).astype(np.float32)  # non-negative, like bags-of-features


def test_exact_index_matches_numpy(rng):
  x = _clustered(rng, 800, 24)
  x[5] = 0.0  # a zero embedding is similar to nothing
  index = similarity.SimilarityIndex.build(x, [f"t{i}" for i in range(len(x))])
  assert index.kind == "exact"
  queries = x[:40] + 0.01
  found = index.search(queries, 10)
  scores, ids = similarity.exact_neighbours(x, queries, 10)
  for row, (f, s, i) in enumerate(zip(found, scores, ids)):
    assert [r for r, _ in f] == i.tolist(), row
    np.testing.assert_allclose([v for _, v in f], s, atol=1e-5)
  own = index.search(x[:3], 4, exclude_rows=[0, 1, 2])
  assert all(len(f) == 4 and r not in [q for q, _ in f] for r, f in enumerate(own))


def test_hnsw_recall_against_exact_search(rng):
  x = _clustered(rng, 6000, 32)
  index = similarity.SimilarityIndex.build(x, [str(i) for i in range(len(x))],
                                           exact_max_items=1000)
  assert index.kind == "hnsw" and index.info["m"] == similarity.HNSW_M
  queries = x[rng.choice(len(x), 200, replace=False)] * 1.01
  ids = np.array([[r for r, _ in f] for f in index.search(queries, 10)])
  _, exact = similarity.exact_neighbours(x, queries, 10)
  assert similarity.recall_at_k(ids, exact) >= 0.95


def test_save_and_load(tmp_path, rng):
  x = _clustered(rng, 3000, 16)
  paths = [f"gs-like/{i}.mp3" for i in range(len(x))]
  for exact_max in (10_000, 100):
    index = similarity.SimilarityIndex.build(x, paths, exact_max_items=exact_max)
    directory = str(tmp_path / f"index{exact_max}")
    index.save(directory)
    loaded = similarity.SimilarityIndex.load(directory)
    assert loaded.paths == paths and loaded.info == index.info
    assert loaded.search(x[:5], 3) == index.search(x[:5], 3)
  with pytest.raises(FileNotFoundError, match="deepbof-similar --build"):
    similarity.SimilarityIndex.load(str(tmp_path / "none"))


# --------------------------------------------------------------------------------------
# A demo-corpus catalogue.
# --------------------------------------------------------------------------------------


def _train_demo_model(corpus_dir, clips, model_dir):
  """PCA whitening and a sparse RBM learnt from the corpus's train clips (512 hidden
  units, 100 CD-1 epochs: seconds), a random-weight DNN head (the embedding does not
  depend on it), saved as deepbof-train does."""
  from deepbof_tf import audio, frontend, models
  from deepbof_tf import model_dir as layout
  from deepbof_tf.config import DNNConfig, FrontendConfig, SparseRBMConfig
  from deepbof_tf.layers.pca import PCAWhitening
  from deepbof_tf.training.sparse_rbm_trainer import SparseRBMTrainer
  config = FrontendConfig()
  blocks = []
  for clip in clips:
    if clip["split"] != "train":
      continue
    waveform = audio.load_audio(os.path.join(corpus_dir, "audio", clip["path"]))
    log_mel = np.asarray(frontend.compute_features(waveform, config)[0])
    blocks += [log_mel[s:s + 8].reshape(-1) for s in range(0, log_mel.shape[0] - 8, 4)]
  blocks = np.asarray(blocks, np.float32)
  pca = PCAWhitening(retained_variance=0.9, epsilon=0.01)
  pca.adapt(blocks)
  hidden = 512
  trainer = SparseRBMTrainer(pca.output_dim, SparseRBMConfig(num_hidden=hidden, epochs=100))
  trainer.fit(np.asarray(pca(blocks)))
  models.save_local_features(model_dir, pca, trainer.layer(), block_frames=8, n_mels=128,
                             pool_frames=43, info={"test": "demo corpus"})
  tags = sorted({t for clip in clips for t in clip["tags"]})
  tagger = models.build_song_dnn(
      len(tags), DNNConfig(num_hidden_layers=1, hidden_units=16), input_dim=hidden,
      mean=np.zeros(hidden, np.float32), std=np.ones(hidden, np.float32), seed=0)
  tagger.save(os.path.join(model_dir, layout.TAGGER_FILE))
  models.save_tag_names(model_dir, tags)


@pytest.fixture(scope="module")
def demo_catalog(tmp_path_factory):
  from beam_jobs import catalog_runs
  from beam_jobs import tag_catalog_lib
  from deepbof_tools.demo import corpus as demo_corpus
  from serving import export_lib
  root = tmp_path_factory.mktemp("demo_similar")
  corpus_dir = str(root / "corpus")
  demo_corpus.make_demo_corpus(
      corpus_dir, demo_corpus.DemoCorpusConfig(num_clips=DEMO_CLIPS,
                                               clip_seconds=DEMO_SECONDS, seed=3),
      num_workers=2, cache_dir=str(root / "cache"), progress=False)
  with open(os.path.join(corpus_dir, "corpus.json")) as f:
    clips = json.load(f)["clips"]
  model_dir = str(root / "model")
  _train_demo_model(corpus_dir, clips, model_dir)
  export_dir = str(root / "export")
  export_lib.export(model_dir, export_dir)
  catalog_dir = str(root / "catalog")
  metadata = catalog_runs.run(tag_catalog_lib.TagCatalogConfig(
      model=export_dir, input=os.path.join(corpus_dir, "audio"),
      output_dir=catalog_dir), ["--direct_num_workers=1"])
  assert metadata["counters"]["files_tagged"] == DEMO_CLIPS
  tags = {os.path.join(corpus_dir, "audio", c["path"]): set(c["tags"]) for c in clips}
  families = {os.path.join(corpus_dir, "audio", c["path"]): c["plan"]["family"]
              for c in clips}
  return {"catalog_dir": catalog_dir, "tags": tags, "families": families,
          "corpus_dir": corpus_dir, "clips": clips}


@pytest.mark.slow
def test_demo_neighbours_share_the_query_tags(demo_catalog):
  """Top-5 neighbours of every clip: tag overlap (Jaccard) and same featured instrument
  family, against all pairs of clips. Measured at 120 clips of 5 s with the catalogue
  default (centred): Jaccard 0.251 vs 0.140 (×1.79), family 0.207 vs 0.057 (×3.6);
  with the raw cosine 0.236 (×1.69) and 0.18 (×3.2)."""
  index = similarity.build_catalog_index(demo_catalog["catalog_dir"])
  _, columns = similarity.load_catalog(demo_catalog["catalog_dir"])
  paths = columns["path"]
  tags = [demo_catalog["tags"][p] for p in paths]
  family = [demo_catalog["families"][p] for p in paths]
  found = index.search(columns["embedding"], 5, exclude_rows=list(range(len(paths))))

  def jaccard(a, b):
    return len(a & b) / len(a | b)

  pairs = [(i, j) for i in range(len(paths)) for j in range(len(paths)) if i != j]
  near = np.mean([np.mean([jaccard(tags[i], tags[r]) for r, _ in f])
                  for i, f in enumerate(found)])
  random_pairs = np.mean([jaccard(tags[i], tags[j]) for i, j in pairs])
  near_family = np.mean([np.mean([family[i] == family[r] for r, _ in f])
                         for i, f in enumerate(found)])
  random_family = np.mean([family[i] == family[j] for i, j in pairs])
  print(f"top-5 Jaccard {near:.3f} vs random {random_pairs:.3f}; same family "
        f"{near_family:.3f} vs {random_family:.3f}")
  assert near >= 1.4 * random_pairs
  assert near_family >= 2.0 * random_family


@pytest.mark.slow
def test_command_line_build_and_queries(demo_catalog, tmp_path):
  catalog_dir = demo_catalog["catalog_dir"]
  env = dict(os.environ, PYTHONPATH=ROOT)
  command = [sys.executable, "-m", "serving.similar", f"--catalog_dir={catalog_dir}"]
  # The plain cosine, so that the NumPy exact search below is the reference (the
  # default, centred, is tested in tests/test_similarity_filters.py).
  proc = subprocess.run(command + ["--build", "--normalization=raw"], capture_output=True,
                        text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"indexed {DEMO_CLIPS} tracks (exact" in proc.stderr
  _, columns = similarity.load_catalog(catalog_dir)
  query = columns["path"][7]
  proc = subprocess.run(command + [f"--query={query}", "--top_k=4", "--output=json"],
                        capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  answer = json.loads(proc.stdout)
  assert answer["query_embedding"] == "catalogue" and answer["index"] == "exact"
  got = [n["path"] for n in answer["neighbours"]]
  _, exact = similarity.exact_neighbours(np.delete(columns["embedding"], 7, axis=0),
                                         columns["embedding"][7:8], 4)
  others = [p for i, p in enumerate(columns["path"]) if i != 7]
  assert got == [others[i] for i in exact[0]] and query not in got
  # An audio file outside the catalogue (a copy of a clip) is embedded with the
  # catalogue's model: the clip itself comes first, with cosine 1.
  copy = str(tmp_path / ("copy" + os.path.splitext(query)[1]))
  shutil.copy(query, copy)
  proc = subprocess.run(command + [f"--query={copy}", "--top_k=3"], capture_output=True,
                        text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  first = proc.stdout.splitlines()[0].split("\t")
  assert first[0] == "1" and first[2] == query and float(first[1]) > 0.99999
  proc = subprocess.run(command + ["--query=/no/such/file.wav"], capture_output=True,
                        text=True, env=env, timeout=300)
  assert proc.returncode == 1 and "neither a path of the catalogue" in proc.stderr


def test_catalogue_paths_are_found_relative_or_absolute(rng):
  x = _clustered(rng, 10, 8)
  index = similarity.SimilarityIndex.build(x, ["music/a.mp3", "/abs/b.mp3",
                                               "gs://bucket/c.mp3"] + list("defghij"))
  assert index.row_of("music/a.mp3") == 0
  assert index.row_of(os.path.abspath("music/a.mp3")) == 0
  assert index.row_of("/abs/b.mp3") == 1 and index.row_of("gs://bucket/c.mp3") == 2
  assert index.row_of("music/none.mp3") is None
