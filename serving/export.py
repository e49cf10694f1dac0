r"""``deepbof-export``: write a trained model as a TF Serving SavedModel.

Usage::

  deepbof-export --model_dir=MODEL --export_dir=EXPORT [--version=N] [--data_dir=DATA]

writes ``EXPORT/<N>/`` (default N: one more than the newest existing version, 1 for a
new directory) through a temporary directory renamed into place. See
``serving/export_lib.py`` for the signatures and ``serving/README.md`` for serving it.
"""

from __future__ import annotations

from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from deepbof_tf import cli
from deepbof_tf.config import ExportConfig

FLAGS = flags.FLAGS
_DEFAULTS = ExportConfig()  # flag defaults come from the config


def define_flags() -> None:
  flags.DEFINE_string("model_dir", None, "The --model_dir of deepbof-train (local/, "
                      "tagger.keras, tags.json).")
  flags.DEFINE_string("export_dir", None, "TF Serving model base path; the export goes "
                      "to EXPORT_DIR/<version>/.")
  flags.DEFINE_integer("version", None, "Integer version directory (default: the next "
                       "one after the existing versions).", lower_bound=0)
  flags.DEFINE_string("data_dir", None, "The preprocessed dataset the model was trained "
                      "on; its metadata.json gives the front-end settings (default: "
                      "MODEL_DIR/frontend.json, else the default front end).")
  flags.DEFINE_integer("pool_frames", None, "Override the pooling window (block "
                       "positions) stored with the local features.", lower_bound=1)
  flags.DEFINE_integer("clips_in_flight", _DEFAULTS.clips_in_flight,
                       "Clips of one request computed at the same time inside the "
                       "SavedModel (each goes through the front end and the encoder "
                       "alone, which keeps its intermediates in cache); 2 suits 2 "
                       "cores, raise it for bigger servers.", lower_bound=1)
  flags.DEFINE_float("max_request_seconds", _DEFAULTS.max_request_seconds,
                     "Longest clip (seconds) the one-shot signatures accept; a longer "
                     "one is refused with INVALID_ARGUMENT before it is computed (long "
                     "audio: the stream_* signatures).", lower_bound=1.0)
  flags.DEFINE_boolean("fused_frontend", _DEFAULTS.fused_frontend,
                       "Compute the one-shot signatures' front end with the fused "
                       "DeepbofLogMel kernel (the whole signature ~1.5x faster on 2 "
                       "cores). The SavedModel then "
                       "loads only where deepbof_tf.native.frontend_op is loaded "
                       "(Python, the catalog job, deepbof-tag), not in a stock TF "
                       "Serving binary: see serving/README.md#fused-front-end.")
  flags.mark_flags_as_required(["model_dir", "export_dir"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from serving import export_lib
  path = export_lib.export(FLAGS.model_dir, FLAGS.export_dir, version=FLAGS.version,
                           data_dir=FLAGS.data_dir, pool_frames=FLAGS.pool_frames,
                           clips_in_flight=FLAGS.clips_in_flight,
                           max_request_seconds=FLAGS.max_request_seconds,
                           fused_frontend=FLAGS.fused_frontend)
  info = export_lib.read_export_info(path)
  logging.info("exported %s", path)
  print(f"{path}\t{len(info['tags'])} tags, embedding {info['embedding_size']}, "
        f"sample rate {info['frontend']['sample_rate']} Hz")


def run() -> None:
  """Console-script entry point ``deepbof-export``."""
  cli.run_console_script(main, define_flags, __doc__)


if __name__ == "__main__":
  run()
