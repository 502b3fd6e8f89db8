"""Log-space reductions over the particle axis, stable when one particle dominates.

The leave-one-out log-sum-exp ``log sum_{j != k} w^j`` is the quantity VIMCO needs for every k.
Subtracting in linear space (``sum_j w^j - w^k``) or clamping ``LSE - log w^k`` loses several nats
when one weight dominates, which is the common case early in training. Here it is computed in
O(K) time and memory, without K x K tiles:

* for every particle that is not the largest, ``LSE + log1p(-softmax_k)``, accurate because
  ``softmax_k <= 1/2`` for those;
* for the largest particle, a log-sum-exp over the others with that one masked out.
"""

from __future__ import annotations

import math

import torch


def log_mean_exp(log_weights: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``log (1/K) sum_k exp(log_weights_k)`` along ``dim``.

    Example:
        >>> float(log_mean_exp(torch.log(torch.tensor([1.0, 3.0]))))  # log 2
        0.6931471824645996
    """
    return torch.logsumexp(log_weights, dim=dim) - math.log(log_weights.shape[dim])


def leave_one_out_logsumexp(log_weights: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``log sum_{j != k} exp(log_weights_j)`` for every ``k`` along ``dim`` (size K >= 2).

    Args:
        log_weights: any shape with ``log_weights.shape[dim] = K >= 2``.
        dim: the particle axis.

    Returns:
        a tensor of the same shape.

    Example:
        >>> lw = torch.log(torch.tensor([1.0, 2.0, 5.0]))
        >>> [round(v, 4) for v in leave_one_out_logsumexp(lw).exp().tolist()]
        [7.0, 6.0, 3.0]
    """
    if log_weights.shape[dim] < 2:
        raise ValueError(f"leave_one_out_logsumexp needs at least 2 particles along dim {dim}, got {log_weights.shape[dim]}")
    total = torch.logsumexp(log_weights, dim=dim, keepdim=True)
    # Non-dominant particles: log(sum - w_k) = LSE + log1p(-w_k / sum), with w_k / sum <= 1/2.
    others = total + torch.log1p(-torch.exp(log_weights - total))
    # The dominant particle: a log-sum-exp over the rest, with that particle masked out.
    top = log_weights.argmax(dim=dim, keepdim=True)
    is_top = torch.zeros_like(log_weights, dtype=torch.bool).scatter_(dim, top, True)
    masked = log_weights.masked_fill(is_top, float("-inf"))
    top_value = torch.logsumexp(masked, dim=dim, keepdim=True)
    return torch.where(is_top, top_value.expand_as(log_weights), others)
