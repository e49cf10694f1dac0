"""absl entry points of the training stages; thin layers over ``deepbof_tf``."""
