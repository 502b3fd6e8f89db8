"""The hard-attention protocol shared by the speech and glimpse models, and its rollout.

A hard-attention model decides, step by step, *where* to attend and then sees only what is
there. Every model family implements the same small protocol (:class:`HardAttention`):

* ``initial_state(memory)`` -> the recurrent state before the first step;
* ``policy(state, memory)`` -> a ``torch.distributions.Distribution`` over the next location,
  the proposal q that is sampled (Bernoulli emit/skip for monotonic alignment, Normal over
  (x, y) for a retina, Categorical over grid cells with visited cells masked);
* ``read(memory, location)`` -> what is seen there (an encoder frame, glimpse patches);
* ``update(state, memory, location, glimpse)`` -> ``(state, log_p, valid)``: advance the model,
  returning the per-step log p term (``log p(z_t, y-emissions at t | past)``, which includes the
  classifier's ``log p(y | ...)`` where that is scored) and which examples are still running;
* optionally ``forced(state, memory)`` -> ``(is_forced, value)``: deterministic decisions
  (forced emission, nothing after end-of-sequence). Forced steps take ``value``, have log q = 0
  and carry no learning signal.

:func:`rollout` draws K particles for each of B examples in one batched pass (particles folded
into the batch, :mod:`hardalign.sampling`), with no host synchronisation inside the step loop,
and returns a :class:`Trajectory` whose fields the estimators consume directly::

    traj = rollout(model, memory, num_samples=K, num_steps=T)
    out = estimator(traj.log_weights, traj.log_q, mask=traj.mask, progress=traj.progress)

Models do not call estimators themselves: a model's training ``forward`` returns the trajectory
in a :class:`hardalign.objective.LatentOutput` and :func:`hardalign.objective.training_terms`
applies the estimator, the same way for every model family.

Per-step log weights follow docs/estimators.md (Notation): ``l_t = log_p_t - log_q_t``. When the proposal
*is* the model's own policy, ``log_p_t`` contains the same ``log q`` term and the two cancel,
leaving the reward (for example ``z_t log d_t[y_next]``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import distributions as D

from hardalign.sampling import fold_tree, sample, unfold

__all__ = ["HardAttention", "Trajectory", "rollout"]


@runtime_checkable
class HardAttention(Protocol):
    """What a hard-attention model provides to :func:`rollout` (all tensors batch-first, ``N = K * B``)."""

    def initial_state(self, memory: Any) -> Any:
        """The recurrent state before step 0 for a folded batch of ``N`` rows."""

    def policy(self, state: Any, memory: Any) -> D.Distribution:
        """The proposal over the next location, batch shape ``[N]``."""

    def read(self, memory: Any, location: torch.Tensor) -> torch.Tensor:
        """What is seen at ``location`` (``[N, ...]``)."""

    def update(self, state: Any, memory: Any, location: torch.Tensor, glimpse: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Advance: returns ``(state, log_p [N], valid [N] bool)``."""


@dataclass
class Trajectory:
    """What one rollout recorded, every field ``[K, B, T, ...]`` (particles, batch, steps).

    Attributes:
        locations: the decisions taken, ``[K, B, T, *event_shape]`` (detached).
        log_q: log-probability of each decision under the proposal, 0 at forced and padding steps;
            differentiable in the proposal's parameters. ``[K, B, T]``.
        log_p: the model's per-step log p term, 0 at padding steps. ``[K, B, T]``.
        log_weights: ``log_p - log_q`` per step, 0 at padding steps. ``[K, B, T]``.
        entropy: entropy of the proposal at free steps, 0 elsewhere. ``[K, B, T]``.
        mask: steps whose decision was sampled (valid and not forced). ``[K, B, T]`` bool.
        valid: steps before the end of each example (padding excluded). ``[K, B, T]`` bool.
        final_state: the model's state after the last step (folded, ``N = K * B`` rows).
        progress: optional integer ``[K, B, T]``, non-decreasing along T: which states are
            comparable across particles (the speech model: labels emitted before step t). The
            sequential estimators align the particles' futures on it; ``None`` means the step
            index t.
        alternative: optional :class:`hardalign.estimators.Alternative` for binary decisions:
            the sampled decision and the step log weight had the other been taken (what
            ``vimco-seq``'s lookahead stand-in reads); the speech model's time-parallel path
            supplies it.
    """

    locations: torch.Tensor | None
    log_q: torch.Tensor
    log_p: torch.Tensor
    log_weights: torch.Tensor
    entropy: torch.Tensor
    mask: torch.Tensor
    valid: torch.Tensor
    final_state: Any
    progress: torch.Tensor | None = None
    alternative: Any = None

    @property
    def num_samples(self) -> int:
        return self.log_q.shape[0]

    @classmethod
    def from_log_weights(cls, log_weights: torch.Tensor, log_q: torch.Tensor, mask: torch.Tensor | None = None) -> "Trajectory":
        """A trajectory of a model that samples its latents without :func:`rollout` (e.g. a
        sigmoid belief net whose layers are the steps): per-step ``log_weights`` and ``log_q``
        ``[K, B, T]``; every step valid, ``mask`` (default all True) marks the sampled ones."""
        if mask is None:
            mask = torch.ones(log_q.shape, dtype=torch.bool, device=log_q.device)
        valid = torch.ones(log_q.shape, dtype=torch.bool, device=log_q.device)
        return cls(
            locations=None,
            log_q=log_q,
            log_p=log_weights + log_q,
            log_weights=log_weights,
            entropy=torch.zeros_like(log_q),
            mask=mask,
            valid=valid,
            final_state=None,
        )


def _entropy(dist: D.Distribution, like: torch.Tensor) -> torch.Tensor:
    try:
        return dist.entropy()
    except NotImplementedError:  # e.g. a TransformedDistribution: record nothing rather than guess
        return torch.zeros_like(like)


def rollout(
    model: HardAttention,
    memory: Any,
    *,
    num_samples: int,
    num_steps: int,
    generator: torch.Generator | None = None,
) -> Trajectory:
    """Run ``num_samples`` particles of ``model`` over ``num_steps`` steps in one batched pass.

    ``memory`` is batch-first (``[B, ...]`` tensors, or a dict / tuple of them): the work that
    does not depend on the decisions (an encoder over the whole input) is done once per example
    by the caller, and the rollout only folds it to ``[K * B, ...]``.

    Args:
        model: an object implementing :class:`HardAttention`.
        memory: batch-first tensors, folded here for the K particles.
        num_samples: K >= 1 particles per example.
        num_steps: T, the number of steps (padding is reported by ``update``'s ``valid``).
        generator: optional ``torch.Generator`` for the decisions (reproducible rollouts).

    Returns:
        a :class:`Trajectory` with every field ``[K, B, T, ...]``.
    """
    if num_steps < 1:
        raise ValueError(f"rollout(): num_steps must be >= 1, got {num_steps}")
    # argument validation of torch.distributions checks values (a host sync on CUDA at every step)
    with _argument_validation(False):
        return _rollout(model, memory, num_samples, num_steps, generator)


@contextmanager
def _argument_validation(enabled: bool):
    previous = D.Distribution._validate_args
    D.Distribution.set_default_validate_args(enabled)
    try:
        yield
    finally:
        D.Distribution.set_default_validate_args(previous)


def _rollout(model: HardAttention, memory: Any, num_samples: int, num_steps: int, generator: torch.Generator | None) -> Trajectory:
    memory = fold_tree(memory, num_samples)  # [B, ...] -> [K * B, ...]
    state = model.initial_state(memory)
    forced_fn = getattr(model, "forced", None)
    records: dict[str, list[torch.Tensor]] = {name: [] for name in ("locations", "log_q", "log_p", "entropy", "mask", "valid")}
    for _ in range(num_steps):
        dist = model.policy(state, memory)
        location = sample(dist, generator)
        free = torch.ones(location.shape[: len(dist.batch_shape)], dtype=torch.bool, device=location.device)
        if forced_fn is not None:
            is_forced, forced_value = forced_fn(state, memory)
            # broadcast the per-row flag over the event dimensions of the location
            expand = is_forced.reshape(is_forced.shape + (1,) * (location.dim() - is_forced.dim()))
            location = torch.where(expand, forced_value.to(location.dtype), location)
            free = ~is_forced
        log_q = dist.log_prob(location)
        entropy = _entropy(dist, log_q)
        glimpse = model.read(memory, location)
        state, log_p, valid = model.update(state, memory, location, glimpse)
        mask = free & valid
        zero = torch.zeros_like(log_q)
        records["locations"].append(location)
        records["log_q"].append(torch.where(mask, log_q, zero))
        records["log_p"].append(torch.where(valid, log_p, zero))
        records["entropy"].append(torch.where(mask, entropy, zero))
        records["mask"].append(mask)
        records["valid"].append(valid)
    # each record: T x [K * B, ...] -> [K * B, T, ...] -> [K, B, T, ...]
    stacked = {name: unfold(torch.stack(values, dim=1), num_samples) for name, values in records.items()}
    return Trajectory(
        locations=stacked["locations"].detach(),
        log_q=stacked["log_q"],
        log_p=stacked["log_p"],
        log_weights=stacked["log_p"] - stacked["log_q"],
        entropy=stacked["entropy"],
        mask=stacked["mask"],
        valid=stacked["valid"],
        final_state=state,
    )
