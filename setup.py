"""Builds the package's C extension; all other metadata lives in setup.cfg.

``deepbof_tf.native._cd1`` is the CPU kernel of the sparse RBM's CD-1 epoch. Its sources
and flags, and how the package's other native kernel (the fused front-end op) is built,
are in ``deepbof_tf/native/build.py`` (loaded here by path: the package itself imports
TensorFlow, which an isolated build does not have). The extension is optional: where it
cannot be compiled, the install goes on and ``SparseRBMTrainer`` runs its TensorFlow
path (``make install`` then reports it, and fails under CI; see build.py).
"""

import importlib.util
import os

from setuptools import Extension
from setuptools import setup

_spec = importlib.util.spec_from_file_location(
    "deepbof_native_build",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "deepbof_tf", "native",
                 "build.py"))
native_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(native_build)

setup(ext_modules=[Extension(**native_build.cd1_extension_kwargs())])
