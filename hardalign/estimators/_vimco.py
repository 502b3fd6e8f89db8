"""VIMCO (Mnih & Rezende 2016) and the sequential VIMCO baseline for hard alignments.

Objective: the K-sample bound ``L = log (1/K) sum_k w^k``. The pathwise gradient comes from
differentiating ``L`` through ``log w``; the proposal gets ``sum_k A^k grad log q(z^k)`` with
per-particle signals

* VIMCO: ``A^k = L - L_{-k}``, ``L_{-k} = log((sum_{j != k} w^j + exp(g_{-k})) / K)`` where
  ``g_{-k}`` is the mean of the other particles' log weights (geometric mean of their weights;
  ``loo="arithmetic"`` uses the log of their arithmetic mean instead);
* sequential VIMCO (*reconstructed* from Lawson et al. 2018, see DESIGN.md section 2.4): at step
  t the stand-in for particle k keeps its own past and averages the others' futures,
  ``log wbar_k^(t) = sum_{i < t} l_i^k + (1/(K-1)) sum_{j != k} sum_{i >= t} l_i^j``, and
  ``A_t^k = L - log((sum_{j != k} w^j + wbar_k^(t)) / K)``. It depends only on ``z^k_{<t}`` and
  the other particles, so the estimator stays unbiased; at t = 1 it equals VIMCO.

Both are O(K) (O(K*T)) in time and memory; ``log sum_{j != k} w^j`` comes from the stable
leave-one-out log-sum-exp in :mod:`hardalign.estimators._logspace`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hardalign.estimators._inputs import EstimatorOutput, Inputs, canonical_inputs, check_values, effective_sample_size, finish
from hardalign.estimators._logspace import leave_one_out_logsumexp, log_mean_exp
from hardalign.estimators._surrogate import score_function_surrogate

LEAVE_ONE_OUT = ("geometric", "arithmetic")


def _multi_sample(inputs: Inputs, signals: torch.Tensor, bound: torch.Tensor) -> EstimatorOutput:
    surrogate = score_function_surrogate(signals, inputs.log_probs, inputs.mask).sum(0)  # [B]
    loss = -(bound + surrogate)
    stats = {"ess": effective_sample_size(inputs.log_weights)}
    return finish(inputs, loss, bound, signals, stats)


def vimco_loss(
    log_weights: torch.Tensor,
    log_probs: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    loo: str = "geometric",
    check_finite: bool = False,
) -> EstimatorOutput:
    """VIMCO surrogate loss: ``-mean_b (L + sum_k stopgrad(A^k) sum_t (log q_t^k - stopgrad(log q_t^k)))``.

    Args:
        log_weights: per-step ``[K, B, T]`` or totals ``[K, B]`` (only ``log w^k = sum_t l_t^k`` is used).
        log_probs: ``[K, B, T]`` or ``[K, B]``.
        mask: bool, shape of ``log_probs``.
        loo: ``"geometric"`` (the paper's) or ``"arithmetic"`` stand-in for the left-out weight.

    Returns:
        :class:`EstimatorOutput` with ``objective`` the K-sample bound ``[B]``.

    Raises:
        ValueError: K < 2, or an unknown ``loo``.

    Example:
        >>> lw = torch.tensor([[0.0], [2.0]])  # K=2, B=1
        >>> out = vimco_loss(lw, torch.zeros(2, 1, requires_grad=True))
        >>> [round(a, 4) for a in out.signals[:, 0].tolist()]  # L - L_{-k}, L = log((1 + e^2) / 2)
        [-0.5662, 1.4338]
    """
    inputs = canonical_inputs("vimco", log_weights, log_probs, mask, min_samples=2)
    if check_finite:
        check_values("vimco", inputs, impossible_ok=True)
    return _vimco(inputs, loo)


def _vimco(inputs: Inputs, loo: str) -> EstimatorOutput:
    if loo not in LEAVE_ONE_OUT:
        raise ValueError(f"vimco: loo must be one of {list(LEAVE_ONE_OUT)}, got {loo!r}")
    log_weights = inputs.log_weights  # [K, B], carries the pathwise gradient
    num = log_weights.shape[0]
    bound = log_mean_exp(log_weights, dim=0)  # [B]
    lw = log_weights.detach()
    others = leave_one_out_logsumexp(lw, dim=0)  # log sum_{j != k} w^j
    if loo == "geometric":
        stand_in = (lw.sum(0, keepdim=True) - lw) / (num - 1)
    else:
        stand_in = others - math.log(num - 1)
    bound_without = torch.logaddexp(others, stand_in) - math.log(num)  # L_{-k}, [K, B]
    signals = (bound.detach() - bound_without).unsqueeze(-1)  # same at every step: [K, B, 1]
    return _multi_sample(inputs, signals.expand_as(inputs.log_probs), bound)


def sequential_vimco_loss(
    log_weights: torch.Tensor,
    log_probs: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    check_finite: bool = False,
) -> EstimatorOutput:
    """Sequential VIMCO: per-step signals ``A_t^k = L - L_{-k}^(t)`` (see the module docstring).

    With per-sample totals ``[K, B]`` there is no step structure and this equals :func:`vimco_loss`.

    Args:
        log_weights: per-step log weights ``[K, B, T]`` (or totals ``[K, B]``).
        log_probs: ``[K, B, T]`` (or ``[K, B]``).
        mask: bool, shape of ``log_probs``.

    Returns:
        :class:`EstimatorOutput` with ``objective`` the K-sample bound ``[B]``.

    Example:
        >>> lw = torch.tensor([[[0.0, 1.0]], [[2.0, -1.0]]])  # K=2, B=1, T=2
        >>> out = sequential_vimco_loss(lw, torch.zeros(2, 1, 2, requires_grad=True))
        >>> out.signals.shape
        torch.Size([2, 1, 2])
    """
    inputs = canonical_inputs("vimco-seq", log_weights, log_probs, mask, min_samples=2)
    if check_finite:
        check_values("vimco-seq", inputs, impossible_ok=True)
    if not inputs.per_step:
        return _vimco(inputs, "geometric")
    steps = inputs.step_log_weights.detach()  # [K, B, T]
    num = steps.shape[0]
    log_weights = inputs.log_weights  # [K, B]
    bound = log_mean_exp(log_weights, dim=0)  # [B]
    future = steps.flip(-1).cumsum(-1).flip(-1)  # sum_{i >= t} l_i^k, [K, B, T]
    past = log_weights.detach().unsqueeze(-1) - future  # sum_{i < t} l_i^k
    others_future = (future.sum(0, keepdim=True) - future) / (num - 1)  # mean_{j != k} of the others' futures
    stand_in = past + others_future  # log wbar_k^(t)
    others = leave_one_out_logsumexp(log_weights.detach(), dim=0).unsqueeze(-1)  # independent of t
    bound_without = torch.logaddexp(others, stand_in) - math.log(num)  # [K, B, T]
    signals = bound.detach().unsqueeze(-1) - bound_without
    return _multi_sample(inputs, signals, bound)


class VIMCO(nn.Module):
    """VIMCO (K >= 2), stateless; ``loo`` selects the geometric (default) or arithmetic stand-in.

    Example:
        >>> VIMCO()(torch.randn(4, 3), torch.randn(4, 3, requires_grad=True)).objective.shape
        torch.Size([3])
    """

    def __init__(self, *, loo: str = "geometric", check_finite: bool = False):
        super().__init__()
        if loo not in LEAVE_ONE_OUT:
            raise ValueError(f"vimco: loo must be one of {list(LEAVE_ONE_OUT)}, got {loo!r}")
        self.loo, self.check_finite = loo, check_finite

    def extra_repr(self) -> str:
        return f"loo={self.loo!r}"

    @property
    def takes_baseline(self) -> bool:
        """Always False: the baseline is built from the other particles."""
        return False

    def forward(self, log_weights, log_probs, mask=None, *, baseline=None, progress=None) -> EstimatorOutput:
        if baseline is not None:
            raise ValueError("vimco: takes no baseline tensor (its baseline is built from the other particles); pass baseline=None")
        return vimco_loss(log_weights, log_probs, mask, loo=self.loo, check_finite=self.check_finite)


class SequentialVIMCO(nn.Module):
    """Sequential VIMCO (K >= 2), stateless: per-step leave-one-out baselines for long sequences.

    Example:
        >>> SequentialVIMCO()(torch.randn(4, 3, 7), torch.randn(4, 3, 7, requires_grad=True)).signals.shape
        torch.Size([4, 3, 7])
    """

    def __init__(self, *, check_finite: bool = False):
        super().__init__()
        self.check_finite = check_finite

    @property
    def takes_baseline(self) -> bool:
        """Always False: the baseline is built from the other particles."""
        return False

    def forward(self, log_weights, log_probs, mask=None, *, baseline=None, progress=None) -> EstimatorOutput:
        if baseline is not None:
            raise ValueError("vimco-seq: takes no baseline tensor (its baseline is built from the other particles); pass baseline=None")
        return sequential_vimco_loss(log_weights, log_probs, mask, check_finite=self.check_finite)
