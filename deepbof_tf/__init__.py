"""deepbof_tf: the Deep Bag-of-Features music auto-tagging model (Nam, Herrera, Lee).

The package root imports nothing heavy so that Beam workers and command-line tools
start quickly; import the submodules you need (``deepbof_tf.frontend``,
``deepbof_tf.layers``, ...).
"""

__version__ = "0.1.0"
