r"""``deepbof-similar``: the most similar tracks of a catalogue (cosine, faiss).

Usage::

  deepbof-similar --catalog_dir=CATALOG --build [--rebuild] [--normalization=centred]
  deepbof-similar --catalog_dir=CATALOG --query=FILE_OR_PATH [--top_k=10] \
      [--output=table|json] [--model=EXPORT_DIR] [--where=TAG>0.5 ...] \
      [--metadata=TRACKS.csv --exclude_same=album,artist] [--nprobe=N]
  deepbof-similar --catalog_dir=CATALOG [--build] --segments --query=EXCERPT.wav

``CATALOG`` is the output of ``deepbof-tag-catalog``. ``--build`` brings the
catalogue's index (``CATALOG/index/``, ``deepbof_tf.catalog_index``) up to date: the
first time it is built; later the catalogue's new parts are added as a new segment and
the parts it no longer lists are tombstoned, in a new version made live atomically
(``--rebuild`` forces a full build; so do another model, another ``--normalization``
and an exact index grown past ``--exact_max_items``). Up to ``--exact_max_items``
tracks the index is exact, above it compressed (``--compression``: IVF with 4-bit
fast-scan product quantization, the default, 8-bit product quantization or int8
scalar quantization) with every candidate re-ranked by its exact cosine.
What the update did is printed on stderr.

``--query`` is a path of the catalogue (its stored embedding is used and the track
itself is left out of the answer) or an audio file, embedded with the model the
catalogue was made with (recorded in its ``metadata.json``) or ``--model``. Queries are
answered from the index alone (the catalogue's Parquet is not read); without a built
index (or with an index of the old one-directory layout) the catalogue is loaded and
searched in memory as before. The answer goes to stdout: rank, cosine similarity, path
and the track's top tags.

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
  from deepbof_tf import catalog_index
  from deepbof_tf import similarity
  flags.DEFINE_string("catalog_dir", None, "A deepbof-tag-catalog output directory.")
  flags.DEFINE_bool("build", False, "Bring the catalogue's index up to date (the first "
                    "time: build it; later: add the new parts, tombstone the dropped "
                    "ones, in a new version).")
  flags.DEFINE_bool("rebuild", False, "--build from scratch (new statistics, a newly "
                    "trained quantizer).")
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
  flags.DEFINE_integer("exact_max_items", catalog_index.EXACT_MAX_ITEMS, "--build: "
                       "catalogues up to this many tracks get an exact index, larger "
                       "ones a compressed one (--compression) re-ranked exactly.",
                       lower_bound=0)
  flags.DEFINE_enum("compression", catalog_index.DEFAULT_COMPRESSION,
                    list(catalog_index.COMPRESSED_KINDS), "--build above "
                    "--exact_max_items: ivfpqfs (4-bit fast-scan product quantization), "
                    "ivfpq (8-bit product quantization) or ivfsq8 (int8).")
  flags.DEFINE_integer("nlist", None, "--build, compressed: inverted lists (default "
                       "about 1·sqrt(tracks) for ivfpqfs, 4·sqrt(tracks) for the "
                       "others).", lower_bound=1)
  flags.DEFINE_integer("pq_m", None, "--build, ivfpqfs / ivfpq: sub-quantizers (a "
                       "divisor of the embedding size; default size/2 for ivfpqfs, "
                       "size/16 for ivfpq).", lower_bound=1)
  flags.DEFINE_integer("nprobe", None, "Compressed index: inverted lists probed per "
                       "query (default: as built).", lower_bound=1)
  flags.DEFINE_integer("refine_factor", None, "Compressed index: candidates re-ranked "
                       "exactly per neighbour (default: as built).", lower_bound=1)
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
  build = FLAGS.build or FLAGS.rebuild
  if not build and not FLAGS.query:
    raise app.UsageError("give --build, --query=FILE_OR_PATH, or both")
  exclude_same = [c.strip() for value in FLAGS.exclude_same for c in value.split(",")
                  if c.strip()]
  if exclude_same and not FLAGS.metadata:
    raise app.UsageError("--exclude_same needs --metadata=FILE.csv")
  if FLAGS.segments:  # search by excerpt (deepbof_tf.excerpt_search)
    from deepbof_tf import excerpt_search
    return excerpt_search.command(
        FLAGS.catalog_dir, FLAGS.query, build=build, top_k=FLAGS.top_k,
        output=FLAGS.output, model=FLAGS.model, chunk_seconds=FLAGS.chunk_seconds,
        channel_mode=FLAGS.channel_mode, exact_max_items=FLAGS.exact_max_items,
        normalization=FLAGS.normalization, where=FLAGS.where,
        metadata_csv=FLAGS.metadata, exclude_same=exclude_same)
  from deepbof_tf import catalog_index
  from deepbof_tf import similarity
  directory = similarity.index_dir(FLAGS.catalog_dir)
  if build:
    params = catalog_index.CompressionParams(
        kind=FLAGS.compression, nlist=FLAGS.nlist, pq_m=FLAGS.pq_m,
        nprobe=FLAGS.nprobe, refine_factor=FLAGS.refine_factor)
    try:
      report = catalog_index.update_catalog_index(
          FLAGS.catalog_dir, normalization=FLAGS.normalization, rebuild=FLAGS.rebuild,
          exact_max_items=FLAGS.exact_max_items, params=params)
    except (FileNotFoundError, KeyError, ValueError) as error:
      return _fail(str(error))
    print(report.summary(), file=sys.stderr)
    if not FLAGS.query:
      return 0
  try:
    index = catalog_index.CatalogIndex.open(directory)
  except FileNotFoundError:
    return _query_in_memory(exclude_same)
  except (KeyError, ValueError) as error:
    return _fail(f"{directory}: {error}; run deepbof-similar --build --rebuild")
  return _query_index(index, exclude_same)


def _embed_audio(metadata, embedding_size: int):
  """``(embedding [1, H], source)`` of the audio file ``--query``, or an error code."""
  import numpy as np
  import tensorflow as tf
  if not tf.io.gfile.exists(FLAGS.query):
    return _fail(f"{FLAGS.query}: neither a path of the catalogue nor an existing file")
  from deepbof_tf import exported
  model = FLAGS.model or metadata.get("model_version_dir") or metadata.get("model")
  try:
    tagger = exported.ExportedModel(model)
    if tagger.embedding_size != embedding_size:
      return _fail(f"{model}: embeddings of size {tagger.embedding_size}, the "
                   f"catalogue's are {embedding_size}")
    _, _, embedding = tagger.tag_file(
        FLAGS.query, FLAGS.chunk_seconds,
        FLAGS.channel_mode or metadata.get("channel_mode"))
  except (OSError, ValueError, KeyError) as error:
    return _fail(str(error))
  return np.asarray(embedding, np.float32)[None], f"embedded with {model}"


def _write_answer(neighbours, kind: str, normalization: str, source: str,
                  extra=None) -> int:
  if FLAGS.output == "json":
    sys.stdout.write(json.dumps({"query": FLAGS.query, "query_embedding": source,
                                 "index": kind, "normalization": normalization,
                                 **dict(extra or {}), "neighbours": neighbours},
                                indent=2) + "\n")
  else:
    for n in neighbours:
      tags = " ".join(n["top_tags"][:5])
      sys.stdout.write(f"{n['rank']}\t{n['score']:.4f}\t{n['path']}\t{tags}\n")
  return 0


def _track_metadata(exclude_same):
  """``--metadata`` read (or None), its columns checked against ``--exclude_same``.

  Raises:
    FileNotFoundError, ValueError: naming the file or the missing column.
  """
  from deepbof_tf import similarity
  track_metadata = (similarity.read_track_metadata(FLAGS.metadata) if FLAGS.metadata
                    else None)
  if exclude_same:
    similarity.same_value_mask([], track_metadata, None, exclude_same)  # the columns
  return track_metadata


def _query_index(index, exclude_same) -> int:
  """A query answered from the index alone (no Parquet read)."""
  from deepbof_tf import catalog_index
  from deepbof_tf import similarity
  try:
    keep = index.where_mask(FLAGS.where) if FLAGS.where else None
    track_metadata = _track_metadata(exclude_same)
  except (FileNotFoundError, ValueError) as error:
    return _fail(str(error))
  new, dropped = catalog_index.stale_parts(FLAGS.catalog_dir, index)
  if new or dropped:
    print(f"deepbof-similar: warning: the index ({index.version}) lacks {len(new)} new "
          f"part(s) of the catalogue and still holds {len(dropped)} dropped one(s); run "
          "deepbof-similar --build", file=sys.stderr)
  row = index.row_of(FLAGS.query)
  if row is not None:
    query, source, transformed = index.vector(row)[None], "catalogue", True
  else:
    try:
      metadata = similarity.read_catalog_metadata(FLAGS.catalog_dir)
    except FileNotFoundError as error:
      return _fail(str(error))
    embedded = _embed_audio(metadata, index.dim)
    if isinstance(embedded, int):
      return embedded
    (query, source), transformed = embedded, False
  if exclude_same:
    same = index.same_value_mask(track_metadata,
                                 index.path(row) if row is not None else FLAGS.query,
                                 exclude_same)
    keep = same if keep is None else keep & same
  (found,) = index.search(query, FLAGS.top_k, exclude_rows=[row], keep=keep,
                          nprobe=FLAGS.nprobe, refine_factor=FLAGS.refine_factor,
                          transformed=transformed)
  neighbours = [{"rank": rank, "path": index.path(r), "score": round(score, 6),
                 "top_tags": index.top_tags(r)}
                for rank, (r, score) in enumerate(found, 1)]
  return _write_answer(neighbours, index.kind, index.normalization, source,
                       {"version": index.version})


def _query_in_memory(exclude_same) -> int:
  """No versioned index: the catalogue loaded and searched in memory (an index of the
  old one-directory layout is used when there is one)."""
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
    track_metadata = _track_metadata(exclude_same)
  except (FileNotFoundError, ValueError) as error:
    return _fail(str(error))
  try:
    index = similarity.SimilarityIndex.load(similarity.index_dir(FLAGS.catalog_dir))
    print("deepbof-similar: note: an index of the old layout; run deepbof-similar "
          "--build to bring it up to date", file=sys.stderr)
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
    embedded = _embed_audio(metadata, columns["embedding"].shape[1])
    if isinstance(embedded, int):
      return embedded
    query, source = embedded
  if exclude_same:
    same = similarity.same_value_mask(
        index.paths, track_metadata,
        index.paths[row] if row is not None else FLAGS.query, exclude_same)
    keep = same if keep is None else keep & same
  (found,) = index.search(np.asarray(query, np.float32), FLAGS.top_k,
                          exclude_rows=[row], keep=keep)
  neighbours = [{"rank": rank, "path": index.paths[r],
                 "score": round(score, 6), "top_tags": columns["top_tags"][r]}
                for rank, (r, score) in enumerate(found, 1)]
  return _write_answer(neighbours, index.kind, index.normalization, source)


def run() -> None:
  """Console-script entry point ``deepbof-similar``."""
  cli.run_console_script(main, define_flags, __doc__)


if __name__ == "__main__":
  run()
