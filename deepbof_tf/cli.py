"""Shared plumbing of the absl console scripts (``deepbof-train``, ``deepbof-tag``, ...)."""

from __future__ import annotations

import os
import shutil
import sys
from typing import Callable, List, Optional, Sequence

from absl import app
from absl import flags


def console_script(name: str) -> str:
  """The console script ``name`` next to this interpreter (the venv), else on PATH.

  The demo and the experiment sweeps run the pipeline's own commands in subprocesses;
  this finds them in the same environment as the caller.
  """
  candidate = os.path.join(os.path.dirname(sys.executable), name)
  if os.path.exists(candidate):
    return candidate
  found = shutil.which(name)
  if not found:
    raise FileNotFoundError(f"console script {name!r} not found next to {sys.executable} "
                            "or on PATH; is the package installed (pip install -e .)?")
  return found


def run_console_script(main: Callable[[Sequence[str]], Optional[int]],
                       define_flags: Optional[Callable[[], None]], doc: str,
                       flags_parser: Optional[Callable[[List[str]], List[str]]] = None
                       ) -> None:
  """Defines a tool's flags and runs its absl ``main`` so that ``--help`` shows the tool.

  A console script runs a generated wrapper as ``__main__``, while absl's ``--help``
  prints the docstring and the key flags of ``__main__``: the tool's docstring and the
  flags ``define_flags`` adds are registered there.

  Args:
    main: the absl main function.
    define_flags: defines the tool's flags (at run time, so that importing the module
      defines nothing), or None if the module defines them at import.
    doc: the usage text (the tool module's ``__doc__``).
    flags_parser: optional absl flags parser (e.g. one that forwards unknown flags).
  """
  before = set(flags.FLAGS)
  if define_flags is not None:
    define_flags()
  for name in sorted(set(flags.FLAGS) - before):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  main_module = sys.modules["__main__"]
  if not main_module.__doc__:
    main_module.__doc__ = doc
  if flags_parser is None:
    app.run(main)
  else:
    app.run(main, flags_parser=flags_parser)
