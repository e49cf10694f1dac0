"""The stages of ``deepbof-train``, a module each, and the training loops they run."""
