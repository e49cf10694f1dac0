r"""deepbof-tag-catalog: a catalogue of audio files → tags and embeddings (Apache Beam).

Tags every file of a pattern or a manifest with an exported model (``deepbof-export``)
and writes, per file, the path, the duration, every tag probability, the top-k tags and
the bag-of-features embedding, as TFRecords (``tfrecord/``) and Parquet (``parquet/``),
plus ``errors/*.jsonl`` (one line per failed file) and ``metadata.json``
(docs/catalog.md). A catalogue grows: a run tags only the files it does not hold yet
(``--identity``, ``--force``, ``--prune``), in parts of ``--part_max_files`` files, each
published as it is done, so a killed run keeps its parts. Recordings up to
``--one_shot_seconds`` are decoded once and tagged in one piece, batched across files by length; longer ones are encoded chunk by chunk
(``--chunk_seconds``), with the numbers of ``deepbof-tag``. ``--segment_seconds=10``
also stores one embedding per 10-s segment of each track, for ``deepbof-similar
--segments`` (search by excerpt; docs/catalog.md). Flags not defined here are Beam
pipeline options:

  deepbof-tag-catalog --model=EXPORT --input='music/*.mp3' --output_dir=CATALOG \
      --direct_num_workers=2 --direct_running_mode=multi_processing

  rm -rf dist && pip wheel --no-deps -w dist .   # deepbof_tf + beam_jobs for the workers
  deepbof-tag-catalog --model=gs://bucket/export/1 --input='gs://bucket/audio/**' \
      --output_dir=gs://bucket/catalog --runner=DataflowRunner --project=my-project \
      --region=us-central1 --temp_location=gs://bucket/tmp \
      --extra_package="$(ls dist/deepbof-*.whl)"

Dataflow needs ``pip install 'deepbof[gcp]'`` on the launching machine.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Sequence

from absl import app
from absl import flags

from beam_jobs import catalog_runs
from beam_jobs import tag_catalog_lib as lib
from deepbof_tf import cli
from deepbof_tf.audio import CHANNEL_MODES

FLAGS = flags.FLAGS
MAX_ERROR_LINES = 20  # failed files named on stderr; all of them are in errors/*.jsonl
_OUR_FLAGS = []  # the names define_flags adds; every other flag goes to Beam


def define_flags() -> None:
  """Defines the tool's flags (at run time: importing the module defines nothing)."""
  before = set(FLAGS)
  # Flag defaults are the config's.
  defaults = {f.name: f.default for f in dataclasses.fields(lib.TagCatalogConfig)}
  flags.DEFINE_string("model", None, "deepbof-export output: a version directory or "
                      "the export base directory (its newest version is used).")
  flags.DEFINE_string("input", None, "A file pattern (local or gs://; a directory means "
                      "every file under it) or a manifest (see --input_format).")
  flags.DEFINE_string("output_dir", None, "Catalogue directory to create (local or "
                      "gs://…).")
  flags.DEFINE_enum("input_format", defaults["input_format"], list(lib.INPUT_FORMATS),
                    "pattern, csv ('path,split,tags'), mtt (annotations_final.csv) or "
                    "auto (a .csv file is a manifest, anything else a pattern).")
  flags.DEFINE_string("audio_root", defaults["audio_root"], "Directory (or gs:// "
                      "prefix) that relative manifest paths are joined to.")
  flags.DEFINE_integer("top_k", defaults["top_k"], "Tags kept per file in top_tags "
                       "(every probability is stored).", lower_bound=0)
  flags.DEFINE_float("chunk_seconds", defaults["chunk_seconds"], "Recordings longer "
                     "than --one_shot_seconds are encoded in chunks of about this length; "
                     "a batch holds about --max_batch_size x this much audio.",
                     lower_bound=1.0)
  flags.DEFINE_float("one_shot_seconds", defaults["one_shot_seconds"], "Recordings up "
                     "to this long (and the export's longest request) are tagged in one "
                     "piece, batched across files by length.", lower_bound=1.0)
  flags.DEFINE_enum("channel_mode", defaults["channel_mode"], list(CHANNEL_MODES),
                    "Multi-channel audio: the first channel or the mean (default: as "
                    "the model's training data).")
  flags.DEFINE_integer("min_batch_size", defaults["min_batch_size"],
                       "RunInference's smallest batch.", lower_bound=1)
  flags.DEFINE_integer("max_batch_size", defaults["max_batch_size"], "RunInference's "
                       "largest batch (clips, or combined bags-of-features).",
                       lower_bound=1)
  flags.DEFINE_integer("num_shards", defaults["num_shards"], "Files per output format; "
                       "0 lets the runner choose.", lower_bound=0)
  flags.DEFINE_bool("overwrite", defaults["overwrite"],
                    "Replace an existing non-empty --output_dir.")
  flags.DEFINE_integer("intra_op_threads", defaults["intra_op_threads"],
                       "TensorFlow threads per Beam worker process.")
  flags.DEFINE_float("file_timeout_s", defaults["file_timeout_s"], "The longest one "
                     "file's decode may take, in seconds: a file that takes longer (a "
                     "decoder hung on an odd file) becomes an error of stage 'timeout' "
                     "and the job goes on. Files are decoded in a child process per "
                     "worker thread, killed and restarted on a timeout; 0: no limit, "
                     "decoded in the worker itself.", lower_bound=0.0)
  flags.DEFINE_enum("identity", defaults["identity"], list(lib.IDENTITIES), "What "
                    "makes an input file one the catalogue holds: stat (path, size and "
                    "modification time) or content (path, size and sha256 of its "
                    "bytes, read on every run).")
  flags.DEFINE_bool("force", defaults["force"], "Re-tag every file the input lists, "
                    "held or not (its old rows are replaced).")
  flags.DEFINE_bool("prune", defaults["prune"], "Drop from the catalogue the files the "
                    "input no longer lists.")
  flags.DEFINE_integer("part_max_files", defaults["part_max_files"], "The files to tag "
                       "are cut into slices of at most this many, each tagged and "
                       "published as one part (a killed run keeps its parts).",
                       lower_bound=1)
  flags.DEFINE_float("segment_seconds", defaults["segment_seconds"], "Also store one "
                     "embedding per segment of about this many seconds of each track "
                     "(columns segment_starts, segment_windows, segment_embeddings), "
                     "for deepbof-similar --segments (search by excerpt). Unset: no "
                     "segments. A catalogue keeps the setting it was made with.")
  flags.DEFINE_integer("min_files_per_worker", defaults["min_files_per_worker"], "Local "
                       "runs: at most one worker process per this many files of a part; "
                       "a part of fewer than twice as many is tagged in this process. 0: "
                       "--direct_num_workers and --direct_running_mode as given.",
                       lower_bound=0)
  _OUR_FLAGS[:] = sorted(set(FLAGS) - before)


# Our flags parsed, the rest left to Beam; near misses (--chunk_second) refused.
_parse_flags = cli.beam_flags_parser(__doc__, _OUR_FLAGS)


def config_from_flags() -> lib.TagCatalogConfig:
  """The :class:`TagCatalogConfig` of the parsed flags."""
  if not FLAGS.model or not FLAGS.input or not FLAGS.output_dir:
    raise app.UsageError("--model, --input and --output_dir are required")
  return lib.TagCatalogConfig(
      model=FLAGS.model, input=FLAGS.input, output_dir=FLAGS.output_dir,
      input_format=FLAGS.input_format, audio_root=FLAGS.audio_root, top_k=FLAGS.top_k,
      chunk_seconds=FLAGS.chunk_seconds, one_shot_seconds=FLAGS.one_shot_seconds,
      channel_mode=FLAGS.channel_mode,
      min_batch_size=FLAGS.min_batch_size, max_batch_size=FLAGS.max_batch_size,
      num_shards=FLAGS.num_shards, overwrite=FLAGS.overwrite,
      intra_op_threads=FLAGS.intra_op_threads, file_timeout_s=FLAGS.file_timeout_s,
      identity=FLAGS.identity, force=FLAGS.force, prune=FLAGS.prune,
      part_max_files=FLAGS.part_max_files, segment_seconds=FLAGS.segment_seconds,
      min_files_per_worker=FLAGS.min_files_per_worker)


def _print_errors(config: lib.TagCatalogConfig, unused_metadata) -> None:
  """The first failed files on stderr; all of them are in errors/*.jsonl."""
  errors = catalog_runs.read_errors(config.output_dir)
  for record in errors[:MAX_ERROR_LINES]:
    print(f"deepbof-tag-catalog: error: {record['error']} (stage {record['stage']})",
          file=sys.stderr)
  if len(errors) > MAX_ERROR_LINES:
    print(f"deepbof-tag-catalog: … and {len(errors) - MAX_ERROR_LINES} more in "
          f"{config.output_dir}/parts/*/{lib.ERRORS_DIR}/", file=sys.stderr)


def main(argv: Sequence[str]) -> int:
  return cli.run_beam_job("deepbof-tag-catalog", argv, config_from_flags,
                          catalog_runs.run, catalog_runs.format_counts,
                          on_done=_print_errors)


def console_main() -> None:
  """Console-script entry point (``deepbof-tag-catalog``)."""
  cli.run_console_script(main, define_flags, __doc__, flags_parser=_parse_flags)


if __name__ == "__main__":
  console_main()
