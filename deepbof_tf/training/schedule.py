"""Per-epoch schedules of the RBM trainers (the authors' code).

Pure functions of the epoch index, shared by the sparse Gaussian–binary RBM of the
local features and the ReLU RBMs of the song-level pretraining, so both anneal the
same way. Epochs are **0-based** here; the authors' loop is 1-based, and the mapping
is spelled out in each docstring so the numbers match theirs epoch for epoch.
"""

from __future__ import annotations

import math
from typing import List


def learning_rate(epoch: int, initial: float, decay: float = 0.99,
                  floor: float = 0.0) -> float:
  """Learning rate of 0-based ``epoch``: ``max(floor, initial·decay^epoch)``.

  The authors' code uses ``initial`` for its first epoch and, after every epoch,
  sets ``lr = max(floor, lr·decay)``. For ``decay <= 1`` this recurrence equals the
  closed form above (once the floor is reached it stays there), which is what we
  compute so a resumed run needs no running state.

  Args:
    epoch: 0-based epoch index (>= 0).
    initial: learning rate of epoch 0 (0.007 for the sparse RBM).
    decay: multiplicative annealing per epoch (0.99).
    floor: lower bound of the learning rate (0.003 for the sparse RBM).

  Returns:
    The learning rate to use for every step of that epoch.
  """
  if epoch < 0:
    raise ValueError(f"epoch must be >= 0, got {epoch}")
  if decay <= 0:
    raise ValueError(f"decay must be > 0, got {decay}")
  if decay > 1:
    # A growing schedule with a floor is not the authors' recurrence; keep it exact.
    lr = initial
    for _ in range(epoch):
      lr = max(floor, lr * decay)
    return float(lr)
  return float(max(floor, initial * math.pow(decay, epoch)))


def momentum(epoch: int, num_epochs: int, initial: float = 0.5, final: float = 0.9,
             switch_fraction: float = 0.2) -> float:
  """Momentum of 0-based ``epoch``: ``initial`` until ``num_epochs·switch_fraction``.

  The authors' code switches to the final momentum when its 1-based epoch exceeds
  ``maxEpoch/5``, i.e. 0-based ``epoch + 1 > num_epochs·switch_fraction``. For 300
  epochs, 0-based epochs 0–59 use 0.5 and 60–299 use 0.9.

  Args:
    epoch: 0-based epoch index (>= 0).
    num_epochs: total number of epochs of the run (maxEpoch).
    initial: momentum before the switch (0.5).
    final: momentum after the switch (0.9).
    switch_fraction: the switch point as a fraction of num_epochs (1/5).

  Returns:
    The momentum to use for every step of that epoch.
  """
  if epoch < 0:
    raise ValueError(f"epoch must be >= 0, got {epoch}")
  return float(final if epoch + 1 > num_epochs * switch_fraction else initial)


def learning_rates(num_epochs: int, initial: float, decay: float = 0.99,
                   floor: float = 0.0) -> List[float]:
  """``learning_rate`` for epochs 0…num_epochs−1 (for logs and plots).

  Args:
    num_epochs: number of epochs.
    initial: learning rate of epoch 0.
    decay: multiplicative annealing per epoch.
    floor: lower bound of the learning rate.
  """
  return [learning_rate(e, initial, decay, floor) for e in range(num_epochs)]


def momenta(num_epochs: int, initial: float = 0.5, final: float = 0.9,
            switch_fraction: float = 0.2) -> List[float]:
  """``momentum`` for epochs 0…num_epochs−1 (for logs and plots).

  Args:
    num_epochs: number of epochs.
    initial: momentum before the switch.
    final: momentum after the switch.
    switch_fraction: the switch point as a fraction of num_epochs.
  """
  return [momentum(e, num_epochs, initial, final, switch_fraction)
          for e in range(num_epochs)]
