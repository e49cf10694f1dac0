"""The demo: a tagged corpus rendered from real scores, and the whole chain run on it.

Tooling, apart from the model library; it needs the ``demo`` extra (music21,
pretty_midi, symusic), which ``make demo`` and ``make test`` install.

  corpus         ``deepbof-make-demo-corpus``: render, encode and tag the clips
  sources        which pieces of ``music21.corpus`` each style takes (MIDI cache)
  orchestration  each clip's tag-deciding choices and its arrangement (no audio)
  cli            ``deepbof-demo``: the chain as a linear plan on the experiments' runner
"""
