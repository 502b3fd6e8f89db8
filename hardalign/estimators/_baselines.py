"""Returns and baselines for score-function learning signals.

Pure functions over ``[K, B, T]`` tensors (particles, batch, steps): reward-to-go, the
leave-one-out mean over particles, and masked moments that the stateful baselines (moving
average, NVIL's running statistics) feed into their buffers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def reward_to_go(log_weights: torch.Tensor) -> torch.Tensor:
    """``R_t = sum_{i >= t} l_i`` along the last axis.

    Args:
        log_weights: per-step log weights ``[K, B, T]``.

    Returns:
        ``[K, B, T]``.

    Example:
        >>> reward_to_go(torch.tensor([[[1.0, 2.0, 3.0]]])).tolist()
        [[[6.0, 5.0, 3.0]]]
    """
    return log_weights.flip(-1).cumsum(-1).flip(-1)


def leave_one_out_mean(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``(1/(K-1)) sum_{j != k} x_j`` for every ``k`` along ``dim`` (K >= 2).

    Infinite entries are handled exactly: the others' mean is ``-inf`` when one of the others is
    ``-inf`` (a zero-weight particle's log weight), whatever ``x_k`` is; a plain ``sum - x_k`` would
    give ``-inf - (-inf) = NaN`` for the ``-inf`` particle itself. NaN among the others gives NaN.

    Example:
        >>> leave_one_out_mean(torch.tensor([1.0, 2.0, 6.0])).tolist()
        [4.0, 3.5, 1.5]
        >>> leave_one_out_mean(torch.tensor([1.0, 3.0, float("-inf")])).tolist()
        [-inf, -inf, 2.0]
    """
    num = x.shape[dim]
    if num < 2:
        raise ValueError(f"a leave-one-out baseline needs K >= 2 samples along dim {dim}, got K={num}")
    finite = torch.isfinite(x)
    finite_part = torch.where(finite, x, torch.zeros_like(x))
    mean = (finite_part.sum(dim=dim, keepdim=True) - finite_part) / (num - 1)

    def others(hit: torch.Tensor) -> torch.Tensor:  # how many of the *other* particles are hit
        return hit.sum(dim=dim, keepdim=True) - hit.to(torch.long)

    below, above = others(x == float("-inf")) > 0, others(x == float("inf")) > 0
    undefined = (below & above) | (others(torch.isnan(x)) > 0)
    mean = torch.where(below, torch.full_like(mean, float("-inf")), mean)
    mean = torch.where(above, torch.full_like(mean, float("inf")), mean)
    return torch.where(undefined, torch.full_like(mean, float("nan")), mean)


def masked_moments(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[count, sum, sum of squares]`` of ``x`` over the entries where ``mask`` is True.

    Summed across processes when ``torch.distributed`` runs with more than one rank, so the
    statistics built from them (moving averages, NVIL's centre and scale) stay identical on every
    rank. Returns a detached ``[3]`` tensor in ``x``'s dtype.
    """
    x = x.detach()
    weights = mask.to(x.dtype)
    moments = torch.stack([weights.sum(), (x * weights).sum(), (x * x * weights).sum()])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(moments)
    return moments


def masked_sums(values: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """``[count, sum v_1, ..., sum v_n]`` over the entries where ``mask`` is True, detached, in one
    ``all_reduce`` across ``torch.distributed`` ranks (as :func:`masked_moments`)."""
    weights = mask.to(values[0].dtype)
    sums = torch.stack([weights.sum(), *((v.detach() * weights).sum() for v in values)])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(sums)
    return sums


def mean_and_variance(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance from :func:`masked_moments`; zero where the count is zero."""
    count = moments[0].clamp_min(1)
    mean = moments[1] / count
    variance = (moments[2] / count - mean * mean).clamp_min(0)
    return mean, variance
