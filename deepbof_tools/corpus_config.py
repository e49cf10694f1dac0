"""The demo corpus's settings, shared by the corpus generator and the sweeps.

``deepbof-make-demo-corpus`` (``deepbof_tools.demo.corpus``) generates what a
:class:`DemoCorpusConfig` says; ``deepbof-demo`` takes its flag defaults from it, and
``deepbof-experiment --scale=demo`` (``deepbof_tools.experiments.plan``) builds a corpus
of the default size. It lives apart from the generator so that the sweeps know the
corpus without importing the demo: the demo runs its chain on the sweeps' runner, and
the imports run that way only (demo → experiments).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DemoCorpusConfig:
  """What to generate.

  Args:
    num_clips: number of clips.
    clip_seconds: length of every clip in seconds.
    seed: seed of every random choice (plan, piece order, excerpts, arrangement).
  """

  num_clips: int = 600
  clip_seconds: float = 15.0
  seed: int = 0

  def __post_init__(self):
    if self.num_clips < 1:
      raise ValueError(f"num_clips must be >= 1, got {self.num_clips}")
    if not 3.0 <= self.clip_seconds <= 120.0:
      raise ValueError(f"clip_seconds must be in [3, 120] (the silence checks look at "
                       f"the first and last second), got {self.clip_seconds}")
