"""The objective layer: the one place where an estimator turns a model's rollout into a loss.

Model families only roll out. In training, a model's ``forward(batch, *, num_samples, step)``
returns a :class:`LatentOutput`: the :class:`~hardalign.attention.Trajectory` of its K particles
(log weights, log q of the sampled decisions, masks, optionally a progress index), optionally an
input-dependent baseline prediction, extra loss terms by name (an aligner's CTC loss, an entropy
bonus) and detached metrics. :func:`training_terms` applies the estimator to it, identically for
every family; the model never sees the estimator, and no model code asks what kind of estimator
it is. A model without latent decisions (the CTC baseline, a supervised pre-training stage)
returns a plain dict of terms with a ``"loss"`` entry, which passes through unchanged.

The route of one training step::

    output = model(batch, num_samples=K, step=i)          # LatentOutput (or a dict of terms)
    terms = training_terms(output, estimator)              # {"loss": ..., "objective": ..., ...}
    terms["loss"].backward()

Example:
    >>> import torch
    >>> from torch import distributions as D
    >>> from hardalign.attention import Trajectory
    >>> from hardalign.estimators import build_estimator
    >>> logits = torch.zeros(3, requires_grad=True)
    >>> q = D.Bernoulli(logits=logits.expand(4, 2, 3))       # K=4, B=2, T=3
    >>> z = q.sample()
    >>> log_q = q.log_prob(z)
    >>> traj = Trajectory.from_log_weights(z - 0.5 - log_q, log_q)
    >>> terms = training_terms(LatentOutput(traj, metrics={"rate": z.mean()}), build_estimator("vimco-seq"))
    >>> terms["loss"].shape, {"loss", "objective", "ess", "rate"} <= set(terms)
    (torch.Size([]), True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Union

import torch
from torch import nn

from hardalign.attention import Trajectory

__all__ = ["LatentOutput", "training_terms"]

#: a baseline prediction, or a function computing it (called only when the estimator uses one)
BaselineLike = Union[torch.Tensor, Callable[[], torch.Tensor], None]


@dataclass
class LatentOutput:
    """What a model with discrete latent decisions returns from its training ``forward``.

    Attributes:
        trajectory: the K particles' record, fields ``[K, B, T]``.
        baseline: optional input-dependent baseline prediction of the return, ``[K, B]`` (one per
            sample) or ``[K, B, T]`` (one per step), from the proposal's state before each
            decision (never from the decision itself). May be a zero-argument function that
            computes it, so that models do not pay for it when the estimator takes none. The
            estimator trains it (NVIL, REINFORCE with ``baseline="learned"``).
        losses: extra scalar loss terms by name (e.g. ``"aligner_ctc"``, ``"entropy_bonus"``),
            already weighted; added to the estimator's loss and logged under their names.
        metrics: detached 0-dim values to log (e.g. ``"emit_rate"``, ``"accuracy"``).
    """

    trajectory: Trajectory
    baseline: BaselineLike = None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def training_terms(output: LatentOutput | Mapping[str, Any], estimator: nn.Module) -> dict[str, torch.Tensor]:
    """Apply ``estimator`` to a model's training output; returns the trainer's loss terms.

    ``loss = estimator loss + sum(output.losses)``; every other entry is detached and logged:
    ``objective`` (the estimator's objective, mean over the batch), the estimator's 0-dim stats,
    each extra loss term and each metric.

    Args:
        output: a :class:`LatentOutput`, or a mapping of terms with a ``"loss"`` entry (a model
            without latent decisions; returned as a new dict, unchanged).
        estimator: a built estimator (:func:`hardalign.estimators.build_estimator`). Its
            ``takes_baseline`` says whether it uses the model's baseline prediction.

    Raises:
        TypeError: ``output`` is neither; or a mapping without ``"loss"``.
        ValueError: the estimator takes a baseline and the model provides none, or two terms
            share a name.
    """
    if isinstance(output, Mapping):
        if "loss" not in output:
            raise TypeError(f"a model without latent decisions must return a dict with a 'loss' entry, got keys {sorted(output)}")
        return dict(output)
    if not isinstance(output, LatentOutput):
        raise TypeError(f"the model's forward must return a LatentOutput or a dict of loss terms, got {type(output).__name__}")
    trajectory = output.trajectory
    baseline = None
    if getattr(estimator, "takes_baseline", False):
        baseline = output.baseline() if callable(output.baseline) else output.baseline
        if baseline is None:
            raise ValueError(f"estimator {type(estimator).__name__} uses an input-dependent baseline, but the model provides none")
    result = estimator(
        trajectory.log_weights, trajectory.log_q, trajectory.mask, baseline=baseline, progress=trajectory.progress, alternative=trajectory.alternative
    )
    loss = result.loss
    terms: dict[str, torch.Tensor] = {"objective": result.objective.mean().detach()}
    for name, value in result.stats.items():
        if isinstance(value, torch.Tensor) and value.dim() == 0:
            terms[name] = value.detach()
    for source in (output.losses, output.metrics):
        for name, value in source.items():
            if name in terms or name == "loss":
                raise ValueError(f"two loss terms are named {name!r}; rename the model's term")
            terms[name] = value.detach()
    for value in output.losses.values():
        loss = loss + value
    return {"loss": loss, **terms}
