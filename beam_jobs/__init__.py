"""Apache Beam pipelines of deepbof: a library module and a thin absl entry point each."""

from deepbof_tf import cli as _cli

_cli.quiet_console_script()  # before TensorFlow loads: no C++ start-up chatter
