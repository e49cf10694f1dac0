"""absl entry points of the training stages; thin layers over ``deepbof_tf``."""

from deepbof_tf import cli as _cli

_cli.quiet_console_script()  # before TensorFlow loads: no C++ start-up chatter
