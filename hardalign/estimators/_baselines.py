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

    Example:
        >>> leave_one_out_mean(torch.tensor([1.0, 2.0, 6.0])).tolist()
        [4.0, 3.5, 1.5]
    """
    num = x.shape[dim]
    if num < 2:
        raise ValueError(f"a leave-one-out baseline needs K >= 2 samples along dim {dim}, got K={num}")
    return (x.sum(dim=dim, keepdim=True) - x) / (num - 1)


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


def mean_and_variance(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance from :func:`masked_moments`; zero where the count is zero."""
    count = moments[0].clamp_min(1)
    mean = moments[1] / count
    variance = (moments[2] / count - mean * mean).clamp_min(0)
    return mean, variance
