"""Builds the package's one native extension; all other metadata lives in setup.cfg.

``deepbof_tf.native._cd1`` is the CPU kernel of the sparse RBM's CD-1 epoch (see the
file's header). It is optional: where it cannot be compiled, the install goes on and
``SparseRBMTrainer`` runs its TensorFlow path.
"""

from setuptools import Extension
from setuptools import setup

setup(ext_modules=[
    Extension("deepbof_tf.native._cd1", sources=["deepbof_tf/native/_cd1.c"],
              extra_compile_args=["-O3", "-Wall", "-Wno-unknown-pragmas"],
              extra_link_args=["-pthread"], optional=True),
])
