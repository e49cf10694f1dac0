"""The fine-tuning optimizer: AdaDelta as the authors' deepmat code runs it.

AdaDelta (Zeiler 2012) keeps two running averages per parameter, of the squared
gradients ``E[g²]`` and of the squared steps ``E[Δ²]``:

    E[g²] ← ρ·E[g²] + (1 − ρ)·g²
    Δ     = −√(E[Δ²] + ε) / √(E[g²] + ε) · g
    E[Δ²] ← ρ·E[Δ²] + (1 − ρ)·Δ²
    θ     ← θ + lr·Δ

deepmat (the authors' fine-tuning code) applies ρ = 0 on the first update of a run, so
both averages *start* at the first squared gradient and the first squared step. Keras'
``Adadelta`` starts them at 0 and decays from there: with ρ = 0.99 its ``E[g²]`` stays
~(1 − ρ^t) of its steady value for the first few hundred updates, and its steps are
correspondingly several times larger — most of a small data set's training. deepmat
has no learning-rate multiplier in this branch; ``lr = 1.0`` is the same thing. See
docs/model.md#fine-tuning.
"""

from __future__ import annotations

from typing import Any, Dict

import keras
from keras import ops

OPTIMIZERS = ("adadelta_deepmat", "adadelta_keras")


@keras.saving.register_keras_serializable(package="deepbof")
class DeepmatAdadelta(keras.optimizers.Optimizer):
  """AdaDelta whose first update uses ρ = 0 (the authors' deepmat), else Keras' AdaDelta.

  Args:
    learning_rate: multiplier of the AdaDelta step (1.0: the algorithm as published and
      as deepmat runs it).
    rho: decay of the running averages after the first update (0.99 in the authors'
      scripts).
    epsilon: inside both square roots (1e-8 in the authors' scripts).
    **kwargs: forwarded to ``keras.optimizers.Optimizer`` (clipping, EMA, …).
  """

  def __init__(self, learning_rate: float = 1.0, rho: float = 0.99,
               epsilon: float = 1e-8, name: str = "deepmat_adadelta", **kwargs):
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    self.rho = float(rho)
    self.epsilon = float(epsilon)

  def build(self, var_list):
    if self.built:
      return
    super().build(var_list)
    self._accumulated_grads = [self.add_variable_from_reference(v, "accumulated_grad")
                               for v in var_list]
    self._accumulated_steps = [self.add_variable_from_reference(v, "accumulated_step")
                               for v in var_list]

  def update_step(self, gradient, variable, learning_rate):
    lr = ops.cast(learning_rate, variable.dtype)
    grad = ops.cast(gradient, variable.dtype)
    index = self._get_variable_index(variable)
    grads_sq, steps_sq = self._accumulated_grads[index], self._accumulated_steps[index]
    # rho = 0 on the optimizer's first update (iterations counts completed updates).
    rho = ops.where(ops.equal(self.iterations, 0), ops.zeros((), variable.dtype),
                    ops.cast(self.rho, variable.dtype))
    new_grads_sq = rho * grads_sq + (1 - rho) * ops.square(grad)
    step = -ops.sqrt(steps_sq + self.epsilon) / ops.sqrt(new_grads_sq + self.epsilon) * grad
    self.assign(grads_sq, new_grads_sq)
    self.assign(steps_sq, rho * steps_sq + (1 - rho) * ops.square(step))
    self.assign_add(variable, lr * step)

  def get_config(self) -> Dict[str, Any]:
    return {**super().get_config(), "rho": self.rho, "epsilon": self.epsilon}


def make_adadelta(kind: str, learning_rate: float, rho: float, epsilon: float
                  ) -> keras.optimizers.Optimizer:
  """The fine-tuning optimizer ``kind`` (one of ``OPTIMIZERS``).

  Args:
    kind: "adadelta_deepmat" (the authors' warm start, default) or "adadelta_keras"
      (``keras.optimizers.Adadelta``: both averages start at 0).
    learning_rate: step multiplier.
    rho: decay of the running averages.
    epsilon: AdaDelta's epsilon.
  """
  if kind == "adadelta_deepmat":
    return DeepmatAdadelta(learning_rate=learning_rate, rho=rho, epsilon=epsilon)
  if kind == "adadelta_keras":
    return keras.optimizers.Adadelta(learning_rate=learning_rate, rho=rho, epsilon=epsilon)
  raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")
