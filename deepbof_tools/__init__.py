"""deepbof_tools: the tooling beside the model library ``deepbof_tf``, not a part of it.

  demo           the demo corpus rendered from real scores (``deepbof-make-demo-corpus``)
                 and the demo runner (``deepbof-demo``): the whole chain on that corpus
  experiments    the paper's experiment sweeps (``deepbof-experiment``): grids of
                 settings run through the pipeline's own command lines
  baseline       the MFCC + logistic-regression baseline (``deepbof-baseline``)
  corpus_config  the demo corpus's settings, shared by the demo and the sweeps

It imports the library; the library never imports it. The demo corpus needs the
``demo`` extra (music21, pretty_midi, symusic), which ``make demo`` and ``make test``
install; a plain install of the model library does not.
"""
