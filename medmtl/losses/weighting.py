"""How the task losses of multi-task training are combined.

Loss-weighting strategies are modules mapping the unweighted task losses to weighted terms:
fixed weights, and learned homoscedastic uncertainty (Kendall, Gal and Cipolla, "Multi-task learning
using uncertainty to weigh losses for scene geometry and semantics", CVPR 2018). The gradient-based
method is PCGrad (Yu et al., "Gradient surgery for multi-task learning", NeurIPS 2020), which acts on
gradients rather than on the loss: :func:`pcgrad_backward` replaces ``loss.backward()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn as nn

__all__ = [
    "WEIGHTINGS",
    "FixedWeighting",
    "PCGradWeighting",
    "TaskWeighting",
    "UncertaintyWeighting",
    "get_weighting",
    "pcgrad_backward",
    "pcgrad_project",
]


class TaskWeighting(nn.Module):
    """Base class: turn unweighted task losses into weighted terms whose sum is the training loss.

    Args:
        weights: a fixed weight per task name (e.g. ``{"seg": l2, "gen": l1}``).
    """

    #: True when the strategy needs :func:`pcgrad_backward` instead of a plain backward of the sum.
    gradient_surgery: bool = False

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__()
        self.weights = {str(k): float(v) for k, v in weights.items()}

    def _check(self, losses: Mapping[str, torch.Tensor]) -> None:
        unknown = set(losses) - set(self.weights)
        if unknown:
            raise ValueError(
                f"no weight for task(s) {sorted(unknown)}; weighted tasks are {sorted(self.weights)}"
            )

    def forward(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weighted terms, one per task present in ``losses``.

        Args:
            losses: unweighted scalar loss per task (a subset of the configured tasks).

        Returns:
            Task name -> weighted scalar term.
        """
        raise NotImplementedError

    def effective_weights(self) -> dict[str, float]:
        """The multiplier currently applied to each task's loss.

        Returns:
            Task name -> weight.
        """
        return dict(self.weights)


class FixedWeighting(TaskWeighting):
    """``term_i = w_i * L_i`` with constant weights."""

    def forward(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weighted terms.

        Args:
            losses: unweighted scalar loss per task.

        Returns:
            Task name -> ``w_i * L_i``.
        """
        self._check(losses)
        return {k: self.weights[k] * v for k, v in losses.items()}


class PCGradWeighting(FixedWeighting):
    """Fixed weights whose terms are combined by PCGrad (:func:`pcgrad_backward`) rather than summed."""

    gradient_surgery = True


class UncertaintyWeighting(TaskWeighting):
    """Learned homoscedastic-uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018).

    ``term_i = exp(-s_i) * w_i * L_i + s_i`` with ``s_i = log sigma_i**2`` a learnable scalar per task
    (initialised to 0, i.e. weight ``w_i``). For a fixed loss the term is minimal at
    ``s_i = log(w_i * L_i)``, so a task whose loss stays large is down-weighted; the ``+ s_i`` term keeps
    the weights from collapsing to zero. The ``s_i`` are ``nn.Parameter``s: add the module's (or the
    owning loss's) ``parameters()`` to the optimiser.

    Args:
        weights: a fixed prior weight per task, multiplying the learned one.
    """

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__(weights)
        self.log_vars = nn.ParameterDict({k: nn.Parameter(torch.zeros(())) for k in self.weights})

    def forward(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weighted terms.

        Args:
            losses: unweighted scalar loss per task.

        Returns:
            Task name -> ``exp(-s_i) * w_i * L_i + s_i``.
        """
        self._check(losses)
        out = {}
        for k, v in losses.items():
            s = self.log_vars[k]
            out[k] = torch.exp(-s) * (self.weights[k] * v) + s
        return out

    def effective_weights(self) -> dict[str, float]:
        """The current weights ``w_i * exp(-s_i)``.

        Returns:
            Task name -> weight.
        """
        return {k: self.weights[k] * float(torch.exp(-self.log_vars[k].detach())) for k in self.weights}


#: name -> weighting class.
WEIGHTINGS: dict[str, type[TaskWeighting]] = {
    "fixed": FixedWeighting,
    "uncertainty": UncertaintyWeighting,
    "pcgrad": PCGradWeighting,
}


def get_weighting(name: str, weights: Mapping[str, float]) -> TaskWeighting:
    """Build a weighting strategy by name.

    Args:
        name: ``"fixed"``, ``"uncertainty"`` or ``"pcgrad"``.
        weights: fixed (prior) weight per task.

    Returns:
        The strategy module.

    Raises:
        ValueError: for an unknown name.
    """
    key = name.lower()
    if key not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; expected one of {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[key](weights)


def pcgrad_project(grads: Sequence[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
    """Combine flat per-task gradients with PCGrad's projection (Yu et al., NeurIPS 2020, Algorithm 1).

    Each task gradient ``g_i`` is visited against the other tasks' original gradients ``g_j`` in a
    random order; where ``g_i . g_j < 0`` the component of ``g_i`` along ``g_j`` is removed. The
    projected gradients are summed. Gradients that do not conflict are left as they are, so the
    result is then the plain sum.

    Args:
        grads: one flat gradient vector per task, all the same length.
        generator: random generator for the visiting order (reproducibility).

    Returns:
        The combined flat gradient.
    """
    if not grads:
        raise ValueError("pcgrad_project needs at least one gradient")
    total = torch.zeros_like(grads[0])
    n = len(grads)
    for i in range(n):
        g = grads[i].clone()
        others = [j for j in torch.randperm(n, generator=generator).tolist() if j != i]
        for j in others:
            # clamp instead of a branch: only conflicting (negative) components are removed, and no
            # device-to-host sync is needed
            conflict = torch.dot(g, grads[j]).clamp(max=0.0)
            g = g - conflict / grads[j].pow(2).sum().clamp_min(1e-20) * grads[j]
        total += g
    return total


def pcgrad_backward(
    task_losses: Sequence[torch.Tensor],
    shared_params: Iterable[nn.Parameter],
    other_params: Iterable[nn.Parameter] = (),
    generator: torch.Generator | None = None,
) -> None:
    """Backward pass with PCGrad on the shared parameters; writes ``.grad`` for an optimiser step.

    Shared parameters (the encoder) receive the PCGrad combination of the task gradients; the other
    parameters (task heads, which each task's loss reaches alone) receive the plain sum. Gradients
    are accumulated into ``.grad`` like ``loss.backward()`` does. One backward pass per task.

    Args:
        task_losses: one scalar loss per task (already weighted), from the same forward pass.
        shared_params: parameters every task reaches (frozen ones, ``requires_grad=False``, are skipped).
        other_params: task-specific parameters.
        generator: random generator for PCGrad's visiting order.
    """
    shared = [p for p in shared_params if p.requires_grad]
    shared_ids = {id(p) for p in shared}
    other = [p for p in other_params if p.requires_grad and id(p) not in shared_ids]
    params = shared + other
    if not params:
        raise ValueError("pcgrad_backward: no parameter requires a gradient")
    flat_shared: list[torch.Tensor] = []
    other_sum: list[torch.Tensor | None] = [None] * len(other)
    for t, loss in enumerate(task_losses):
        grads = torch.autograd.grad(loss, params, retain_graph=t < len(task_losses) - 1, allow_unused=True)
        flat_shared.append(
            torch.cat(
                [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, shared)]
            )
            if shared
            else torch.zeros(0)
        )
        for k, g in enumerate(grads[len(shared) :]):
            if g is not None:
                other_sum[k] = g if other_sum[k] is None else other_sum[k] + g
    if shared:
        combined = pcgrad_project(flat_shared, generator)
        offset = 0
        for p in shared:
            n = p.numel()
            _accumulate(p, combined[offset : offset + n].view_as(p))
            offset += n
    for p, g in zip(other, other_sum):
        if g is not None:
            _accumulate(p, g)


def _accumulate(p: nn.Parameter, g: torch.Tensor) -> None:
    if p.grad is None:
        p.grad = g.detach().clone()
    else:
        p.grad.add_(g)
