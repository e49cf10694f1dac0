"""SavedModel export, TF Serving assets, the serving client and the ``deepbof-tag`` CLI."""

from deepbof_tf import cli as _cli

_cli.quiet_console_script()  # before TensorFlow loads: no C++ start-up chatter
