r"""``deepbof-similar``: the most similar tracks of a catalogue (cosine, faiss).

Usage::

  deepbof-similar --catalog_dir=CATALOG --build [--normalization=centred]
  deepbof-similar --catalog_dir=CATALOG --query=FILE_OR_PATH [--top_k=10] \
      [--output=table|json] [--model=EXPORT_DIR] [--where=TAG>0.5 ...] \
      [--metadata=TRACKS.csv --exclude_same=album,artist]
  deepbof-similar --catalog_dir=CATALOG [--build] --segments --query=EXCERPT.wav

``CATALOG`` is the output of ``deepbof-tag-catalog``. ``--build`` indexes its
embeddings into ``CATALOG/index/``: an exact index up to ``--exact_max_items`` tracks,
an HNSW graph above (``deepbof_tf.similarity``). ``--query`` is a path of the
catalogue (its stored embedding is used and the track itself is left out of the
answer) or an audio file, embedded with the model the catalogue was made with
(recorded in its ``metadata.json``) or ``--model``. Without a built index the
catalogue is searched exactly in memory. The answer goes to stdout: rank, cosine
similarity, path and the track's top tags.

``--normalization`` (``--build``): ``centred`` (the default) subtracts the catalogue's
mean embedding before the cosine, ``raw`` is the plain cosine, ``csls`` and
``centred_csls`` re-rank by local scaling (docs/catalog.md). ``--where`` keeps only
neighbours whose stored tag probability satisfies it (all must hold);
``--exclude_same=COLUMN`` leaves out neighbours that share the query's value of a
column of ``--metadata`` (a CSV with a ``path`` column). Filtered searches look
further until ``--top_k`` neighbours pass.

``--segments`` searches by excerpt a catalogue made with ``deepbof-tag-catalog
--segment_seconds``: the query (an audio excerpt, embedded whole; or a catalogue
path, its track embedding) is compared with every segment of every track, and each
answered track comes with the start, in seconds, of its best segment (a column after
the path; ``start`` in json). ``--build --segments`` saves that segment index into
``CATALOG/index_segments/``; without it the segments are searched exactly in memory.
``--where`` and ``--exclude_same`` filter tracks as above (docs/catalog.md, "Search
by excerpt"; the library is ``deepbof_tf.excerpt_search``).
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from absl import app
from absl import flags

from deepbof_tf import cli
from deepbof_tf.config import DEFAULT_CHUNK_SECONDS

FLAGS = flags.FLAGS


def define_flags() -> None:
  from deepbof_tf import audio
  from deepbof_tf import similarity
  flags.DEFINE_string("catalog_dir", None, "A deepbof-tag-catalog output directory.")
  flags.DEFINE_bool("build", False, "Build (or rebuild) the catalogue's index.")
  flags.DEFINE_string("query", None, "A catalogue path or an audio file.")
  flags.DEFINE_integer("top_k", similarity.DEFAULT_NEIGHBOURS, "Neighbours to print.",
                       lower_bound=1)
  flags.DEFINE_enum("output", "table", ["table", "json"], "Output format (stdout).")
  flags.DEFINE_string("model", None, "Export used to embed an audio --query (default: "
                      "the catalogue's model, from its metadata.json).")
  flags.DEFINE_float("chunk_seconds", DEFAULT_CHUNK_SECONDS, "An audio --query longer "
                     "than this is streamed in chunks of about this length.",
                     lower_bound=1.0)
  flags.DEFINE_enum("channel_mode", None, list(audio.CHANNEL_MODES), "Multi-channel "
                    "audio --query (default: as the catalogue).")
  flags.DEFINE_integer("exact_max_items", similarity.EXACT_MAX_ITEMS, "--build: "
                       "catalogues up to this many tracks get an exact index, larger "
                       "ones an HNSW graph.", lower_bound=0)
  flags.DEFINE_enum("normalization", similarity.CATALOG_NORMALIZATION,
                    list(similarity.NORMALIZATIONS), "--build (and a query without a "
                    "built index): how embeddings are compared. centred: cosine after "
                    "subtracting the catalogue's mean unit embedding (less hubness); "
                    "raw: plain cosine; csls, centred_csls: re-ranked by local scaling.")
  flags.DEFINE_multi_string("where", [], "Keep only neighbours whose stored tag "
                            "probability satisfies TAG>X (>, >=, <, <=); repeatable, all "
                            "must hold.")
  flags.DEFINE_string("metadata", None, "A CSV with a path column (paths as the "
                      "catalogue stores them) and columns such as album, artist, for "
                      "--exclude_same.")
  flags.DEFINE_multi_string("exclude_same", [], "Leave out neighbours sharing the "
                            "query's value of this --metadata column (e.g. album); "
                            "repeatable or comma-separated.")
  flags.DEFINE_bool("segments", False, "Search by excerpt: compare the query with every "
                    "segment of a catalogue made with --segment_seconds and print each "
                    "track's best segment start (--build: the segment index, in "
                    "CATALOG/index_segments/).")


def _fail(message: str) -> int:
  print(f"deepbof-similar: error: {message}", file=sys.stderr)
  return 1


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
  if not FLAGS.catalog_dir:
    raise app.UsageError("--catalog_dir is required")
  if not FLAGS.build and not FLAGS.query:
    raise app.UsageError("give --build, --query=FILE_OR_PATH, or both")
  exclude_same = [c.strip() for value in FLAGS.exclude_same for c in value.split(",")
                  if c.strip()]
  if exclude_same and not FLAGS.metadata:
    raise app.UsageError("--exclude_same needs --metadata=FILE.csv")
  if FLAGS.segments:  # search by excerpt (deepbof_tf.excerpt_search)
    from deepbof_tf import excerpt_search
    return excerpt_search.command(
        FLAGS.catalog_dir, FLAGS.query, build=FLAGS.build, top_k=FLAGS.top_k,
        output=FLAGS.output, model=FLAGS.model, chunk_seconds=FLAGS.chunk_seconds,
        channel_mode=FLAGS.channel_mode, exact_max_items=FLAGS.exact_max_items,
        normalization=FLAGS.normalization, where=FLAGS.where,
        metadata_csv=FLAGS.metadata, exclude_same=exclude_same)
  import numpy as np
  from deepbof_tf import similarity
  wanted = ("path", "embedding", "top_tags") + (("probabilities",) if FLAGS.where else ())
  try:
    metadata, columns = similarity.load_catalog(FLAGS.catalog_dir, wanted)
  except (FileNotFoundError, KeyError, ValueError) as error:
    return _fail(str(error))
  keep = None
  try:
    if FLAGS.where:
      keep = similarity.tag_mask(columns["probabilities"], metadata["tags"], FLAGS.where)
    track_metadata = (similarity.read_track_metadata(FLAGS.metadata) if FLAGS.metadata
                      else None)
    if exclude_same:
      similarity.same_value_mask([], track_metadata, None, exclude_same)  # the columns
  except (FileNotFoundError, ValueError) as error:
    return _fail(str(error))
  if FLAGS.build:
    index = similarity.SimilarityIndex.build(columns["embedding"], columns["path"],
                                             exact_max_items=FLAGS.exact_max_items,
                                             normalization=FLAGS.normalization)
    index.save(similarity.index_dir(FLAGS.catalog_dir))
    print(f"indexed {len(index.paths)} tracks ({index.kind}, {index.info['dim']}-d, "
          f"cosine, {index.normalization}) into {similarity.index_dir(FLAGS.catalog_dir)}",
          file=sys.stderr)
    if not FLAGS.query:
      return 0
  else:
    try:
      index = similarity.SimilarityIndex.load(similarity.index_dir(FLAGS.catalog_dir))
    except FileNotFoundError:
      index = similarity.SimilarityIndex.build(columns["embedding"], columns["path"],
                                               exact_max_items=len(columns["path"]),
                                               normalization=FLAGS.normalization)
    except ValueError as error:
      return _fail(str(error))
  if index.paths != columns["path"]:
    return _fail(f"{similarity.index_dir(FLAGS.catalog_dir)} does not match the "
                 "catalogue (it was rebuilt since); run deepbof-similar --build")
  row = index.row_of(FLAGS.query)
  if row is not None:
    query = columns["embedding"][row][None]
    source = "catalogue"
  else:
    import tensorflow as tf
    if not tf.io.gfile.exists(FLAGS.query):
      return _fail(f"{FLAGS.query}: neither a path of the catalogue nor an existing file")
    from deepbof_tf import exported
    model = FLAGS.model or metadata.get("model_version_dir") or metadata.get("model")
    try:
      tagger = exported.ExportedModel(model)
      if tagger.embedding_size != columns["embedding"].shape[1]:
        return _fail(f"{model}: embeddings of size {tagger.embedding_size}, the "
                     f"catalogue's are {columns['embedding'].shape[1]}")
      _, _, embedding = tagger.tag_file(
          FLAGS.query, FLAGS.chunk_seconds,
          FLAGS.channel_mode or metadata.get("channel_mode"))
    except (OSError, ValueError, KeyError) as error:
      return _fail(str(error))
    query = np.asarray(embedding, np.float32)[None]
    source = f"embedded with {model}"
  if exclude_same:
    same = similarity.same_value_mask(
        index.paths, track_metadata,
        index.paths[row] if row is not None else FLAGS.query, exclude_same)
    keep = same if keep is None else keep & same
  (found,) = index.search(query, FLAGS.top_k, exclude_rows=[row], keep=keep)
  neighbours = [{"rank": rank, "path": index.paths[r], "score": round(score, 6),
                 "top_tags": columns["top_tags"][r]}
                for rank, (r, score) in enumerate(found, 1)]
  if FLAGS.output == "json":
    sys.stdout.write(json.dumps({"query": FLAGS.query, "query_embedding": source,
                                 "index": index.kind,
                                 "normalization": index.normalization,
                                 "neighbours": neighbours},
                                indent=2) + "\n")
  else:
    for n in neighbours:
      tags = " ".join(n["top_tags"][:5])
      sys.stdout.write(f"{n['rank']}\t{n['score']:.4f}\t{n['path']}\t{tags}\n")
  return 0


def run() -> None:
  """Console-script entry point ``deepbof-similar``."""
  cli.run_console_script(main, define_flags, __doc__)


if __name__ == "__main__":
  run()
