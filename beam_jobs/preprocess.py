r"""deepbof-preprocess: audio catalogue → clip and block TFRecords (Apache Beam).

Reads a manifest, computes the log-mel spectrogram and novelty of every clip, writes
``clips/{train,valid,test}-*.tfrecord.gz``, samples feature-learning blocks from the
train split into ``blocks/train-*.tfrecord.gz`` and writes ``metadata.json`` and
``errors/*.jsonl`` (docs/data.md). Flags not defined here are Beam pipeline options:

  deepbof-preprocess --manifest=annotations_final.csv --manifest_format=mtt \
      --audio_root=/data/mtt/mp3 --output_dir=/data/mtt/deepbof \
      --direct_num_workers=2 --direct_running_mode=multi_processing

  rm -rf dist && pip wheel --no-deps -w dist .   # deepbof_tf + beam_jobs for the workers
  deepbof-preprocess --manifest=gs://bucket/annotations_final.csv --manifest_format=mtt \
      --audio_root=gs://bucket/mp3 --output_dir=gs://bucket/deepbof \
      --runner=DataflowRunner --project=my-project --region=us-central1 \
      --temp_location=gs://bucket/tmp \
      --extra_package="$(ls dist/deepbof-*.whl)"   # a platform wheel (C extension)

Dataflow needs ``pip install 'deepbof[gcp]'`` on the launching machine.
"""

from __future__ import annotations

import dataclasses
from typing import List, Sequence

from absl import app
from absl import flags

from beam_jobs import preprocess_lib
from deepbof_tf import cli
from deepbof_tf.audio import CHANNEL_MODES
from deepbof_tf.config import FrontendConfig, SamplingConfig

FLAGS = flags.FLAGS

# Names of the flags _define_flags adds (everything else on the command line goes to Beam).
_OUR_FLAGS: List[str] = []


def _define_flags() -> None:
  """Defines the tool's flags (once), with the defaults of the config dataclasses."""
  if _OUR_FLAGS:
    return
  before = set(FLAGS)
  defaults = {f.name: f.default for f in dataclasses.fields(preprocess_lib.PreprocessConfig)}
  sampling = SamplingConfig()
  flags.DEFINE_string("manifest", None, "Manifest: CSV 'path,split,tags' or MagnaTagATune "
                      "annotations_final.csv (local path or gs://…).")
  flags.DEFINE_string("audio_root", "", "Directory (or gs:// prefix) that relative "
                      "manifest paths are joined to.")
  flags.DEFINE_string("output_dir", None, "Dataset directory to create (local or gs://…).")
  flags.DEFINE_enum("manifest_format", defaults["manifest_format"], ["csv", "mtt"],
                    "Manifest format.")
  flags.DEFINE_integer("top_n_tags", defaults["top_n_tags"],
                       "Keep the N most frequent tags (0 keeps all).")
  flags.DEFINE_bool("drop_untagged", defaults["drop_untagged"],
                    "Drop clips with none of the kept tags.")
  flags.DEFINE_bool("skip_bad_rows", defaults["skip_bad_rows"], "Skip (and count) "
                    "malformed manifest rows instead of failing.")
  flags.DEFINE_enum("sampling", sampling.scheme, ["onset", "random"], "Block sampling "
                    "scheme: the novelty maximum of each segment, or a random block.")
  flags.DEFINE_integer("block_frames", sampling.block_frames, "Frames per spectral block.")
  flags.DEFINE_integer("segment_frames", sampling.segment_frames,
                       "Block starts per sampling segment (≈1 s).")
  flags.DEFINE_integer("num_blocks", sampling.num_blocks,
                       "Global block budget over the train split.")
  flags.DEFINE_integer("blocks_per_clip", sampling.blocks_per_clip, "Candidate blocks "
                       "per clip; 0 derives the passes per clip from the budget like the "
                       "authors' get_samples.m.")
  flags.DEFINE_integer("seed", sampling.seed,
                       "Seed of the random scheme and of the budget subsample.")
  flags.DEFINE_integer("num_shards", defaults["num_shards"], "TFRecord files per split; "
                       "0 writes one per Beam bundle (streaming), > 0 regroups the "
                       "records (a shuffle).")
  flags.DEFINE_enum("channel_mode", defaults["channel_mode"], list(CHANNEL_MODES),
                    "Multi-channel to mono: the first channel (authors' code) or the mean.")
  flags.DEFINE_bool("overwrite", defaults["overwrite"],
                    "Replace an existing non-empty --output_dir.")
  flags.DEFINE_integer("intra_op_threads", defaults["intra_op_threads"],
                       "TensorFlow threads per Beam worker process.")
  flags.DEFINE_float("progress_seconds", defaults["progress_seconds"],
                     "On local runners, print clips done / total, rate and time left "
                     "this often (0: never).")
  _OUR_FLAGS.extend(sorted(set(FLAGS) - before))


# Our flags parsed (defined first), the rest left to Beam; near misses refused.
_parse_flags = cli.beam_flags_parser(__doc__, _OUR_FLAGS, _define_flags)


def config_from_flags() -> preprocess_lib.PreprocessConfig:
  """The :class:`PreprocessConfig` of the parsed flags."""
  if not FLAGS.manifest or not FLAGS.output_dir:
    raise app.UsageError("--manifest and --output_dir are required")
  return preprocess_lib.PreprocessConfig(
      manifest=FLAGS.manifest, audio_root=FLAGS.audio_root, output_dir=FLAGS.output_dir,
      manifest_format=FLAGS.manifest_format, top_n_tags=FLAGS.top_n_tags,
      drop_untagged=FLAGS.drop_untagged, skip_bad_rows=FLAGS.skip_bad_rows,
      channel_mode=FLAGS.channel_mode, num_shards=FLAGS.num_shards,
      overwrite=FLAGS.overwrite, frontend=FrontendConfig(),
      sampling=SamplingConfig(scheme=FLAGS.sampling, block_frames=FLAGS.block_frames,
                              segment_frames=FLAGS.segment_frames,
                              num_blocks=FLAGS.num_blocks,
                              blocks_per_clip=FLAGS.blocks_per_clip, seed=FLAGS.seed),
      intra_op_threads=FLAGS.intra_op_threads, progress_seconds=FLAGS.progress_seconds)


def main(argv: Sequence[str]) -> int:
  return cli.run_beam_job("deepbof-preprocess", argv, config_from_flags,
                          preprocess_lib.run, preprocess_lib.format_counts)


def console_main() -> None:
  """Console-script entry point (``deepbof-preprocess``)."""
  cli.run_console_script(main, _define_flags, __doc__, flags_parser=_parse_flags)


if __name__ == "__main__":
  console_main()
