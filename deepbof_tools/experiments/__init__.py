"""The paper's experiments (Nam, Herrera, Lee, Figs. 4–8) as sweeps of the pipeline.

``deepbof-experiment --grid=NAME --output_dir=DIR`` runs one grid of settings through
the pipeline's own command lines and writes ``DIR/results.csv``, ``DIR/results.md``
and ``DIR/<grid>.png``. One concern per module:

  grids     the settings of each grid (which knobs, which values, how to plot them)
  commands  the command lines of the chain's tools (shared with ``deepbof-demo``)
  plan      the grid as a DAG of command lines that shares the common stages
  runner    runs the DAG: stamps, logs, failures, progress (also the demo's chain)
  results   results.csv / results.md from the cells' ``metrics.json``
  figures   the paper-style box plots of per-tag ROC-AUC
  cli       the ``deepbof-experiment`` console script

Nothing here imports ``beam_jobs``, ``trainer`` or ``serving`` (TensorFlow only for
``tf.io.gfile`` when a figure is saved): every stage
runs in a subprocess, as a user would run it.
"""
