"""The others' average future, matched to particle k's step by time or by a progress index.

Sequential VIMCO's stand-in for particle k at step t keeps k's own past and borrows the other
particles' futures. Which step of particle j "matches" step t of particle k is the alignment
(docs/estimators.md, item 4 of "The estimators"):

* by time: j's future from the same step t, ``F^j(t) = sum_{i >= t} l_i^j``;
* by progress: with a non-decreasing integer index ``p_t^k`` (labels emitted before step t),
  j's future from ``tau_j(n) = #{i : p_i^j < n}``, the first step at which j has made the same
  progress ``n = p_t^k`` (a future past the end is 0).

:func:`others_future_mean` returns ``(1/(K-1)) sum_{j != k} F^j(tau_j(p_t^k))`` for every k and t
in O(K*T) memory without loops. With ``P(n) = sum_{(j, i) : p_i^j < n} l_i^j`` (all particles'
steps whose progress is below n) and ``F^j(tau_j(n)) = log w^j - sum_{i : p_i^j < n} l_i^j``,

    sum_{j != k} F^j(tau_j(n)) = (sum_j log w^j - log w^k) - (P(n) - P^k(n)),

so one sort of the example's K*T progress values and a cumulative sum give ``P`` at every queried
``n`` (the query is a value in the sorted list: ``P`` there is the prefix sum where its run of equal
values starts); ``P^k`` is k's own exclusive cumulative sum gathered at ``tau_k``.
No table over the range of n is built and nothing synchronises with the host.

``-inf`` per-step log weights (impossible alignments) are exact: the sums run in two channels, the
finite part and the number of ``-inf`` terms, so no ``-inf - (-inf)`` ever appears; a future that
contains a ``-inf`` step is ``-inf``.
"""

from __future__ import annotations

import torch

from hardalign.estimators._baselines import leave_one_out_mean, reward_to_go

ALIGNMENTS = ("progress", "time", "progress-time", "fitted")


def alignment_key(progress: torch.Tensor | None, align: str, steps: int) -> torch.Tensor | None:
    """The integer key that steps are matched on, ``[K, B, T]``, or None for matching by time.

    ``"progress-time"`` matches on (labels emitted, frames left): the key ``p_t * (T + 1) + t``
    orders steps by progress first and by time within one progress value, so ``tau_j`` is the
    step of j with the same progress nearest to t (j's future starts at t while j is still at
    that progress, else where j reaches it or leaves it). Frames left are ``T_b - t``, the same
    for every particle of an example, so matching on them is matching on t.
    """
    if align not in ALIGNMENTS:
        raise ValueError(f"vimco-seq: align must be one of {list(ALIGNMENTS)}, got {align!r}")
    if align in ("time", "fitted") or progress is None:  # "fitted" builds its two keys itself
        return None
    if align == "progress":
        return progress
    time = torch.arange(steps, device=progress.device, dtype=progress.dtype)
    return progress * (steps + 1) + time


def exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """``sum_{i < t} x_i`` along the last axis (k's own past); exact with ``-inf`` entries.

    Example:
        >>> exclusive_cumsum(torch.tensor([1.0, 2.0, 3.0])).tolist()
        [0.0, 1.0, 3.0]
    """
    return torch.cat([torch.zeros_like(x[..., :1]), x.cumsum(-1)[..., :-1]], dim=-1)


def others_future_mean(steps: torch.Tensor, key: torch.Tensor | None = None, query: torch.Tensor | None = None) -> torch.Tensor:
    """``(1/(K-1)) sum_{j != k} F^j(tau_j(key_t^k))`` for every k and t (see the module docstring).

    Args:
        steps: detached per-step log weights ``[K, B, T]`` (K >= 2); entries may be ``-inf``.
        key: integer ``[K, B, T]``, non-decreasing along T; None matches by time (``key_t = t``).
        query: integer ``[K, B, T]`` or ``[D, K, B, T]`` (with ``key``): the value(s) to match for
            particle k at entry t instead of ``key_t^k`` itself, e.g. the progress k would have
            after step t under each of its D possible decisions; it need not occur among the keys
            (binary searches then find ``#{i : key_i^j < query}``; one sort serves all D). None: ``key``.

    Returns:
        ``[K, B, T]`` (``[D, K, B, T]`` for such a query) in ``steps``' dtype.

    Example:
        >>> steps = torch.tensor([[[1.0, 2.0, 3.0]], [[10.0, 20.0, 30.0]]])  # K=2, B=1, T=3
        >>> others_future_mean(steps).tolist()  # by time: the other's future from t
        [[[60.0, 50.0, 30.0]], [[6.0, 5.0, 3.0]]]
        >>> key = torch.tensor([[[0, 0, 1]], [[0, 1, 1]]])  # particle 1 reaches progress 1 at t=1
        >>> others_future_mean(steps, key).tolist()
        [[[60.0, 60.0, 50.0]], [[6.0, 3.0, 3.0]]]
    """
    if key is None:
        return leave_one_out_mean(reward_to_go(steps), dim=0)
    K, B, T = steps.shape
    impossible = steps == float("-inf")
    # two channels: the finite part and the count of -inf terms, [2, K, B, T]
    channels = torch.stack([torch.where(impossible, torch.zeros_like(steps), steps), impossible.to(steps.dtype)])
    totals = channels.sum(-1)  # log w^j per channel, [2, K, B]
    others_total = totals.sum(1, keepdim=True) - totals  # sum_{j != k} log w^j, [2, K, B]
    # P(n) over all particles: sort the example's K*T keys, prefix-sum the weights in that order
    flat_key = key.permute(1, 0, 2).reshape(B, K * T).contiguous()  # [B, K*T], particle-major within an example
    flat_channels = channels.permute(0, 2, 1, 3).reshape(2, B, K * T)
    sorted_key, order = torch.sort(flat_key, dim=-1, stable=True)
    prefix = exclusive_prefix(flat_channels.gather(-1, order.expand(2, B, K * T)))  # [2, B, K*T + 1]
    if query is None:
        # #{(j, i) : key_i^j < key_t^k} is where the run of k's key value starts in the sorted order
        below = torch.empty_like(order).scatter_(-1, order, run_starts(sorted_key))  # [B, K*T], back in original order
        # P^k(n): k's own steps with key below n are its first tau_k(n) steps (key is non-decreasing),
        # and tau_k(key_t^k) is where k's run of equal keys containing t starts
        tau = run_starts(key).unsqueeze(0)  # [1, K, B, T]
        branches, squeeze = 1, True
    else:  # values that may not occur among the keys: binary searches (left: counts keys below them)
        squeeze = query.dim() == 3
        query = query.to(key.dtype).reshape(-1, K, B, T)  # [D, K, B, T]
        branches = query.shape[0]
        flat_query = query.permute(2, 0, 1, 3).reshape(B, branches * K * T).contiguous()
        below = torch.searchsorted(sorted_key, flat_query)  # [B, D*K*T]
        tau = torch.searchsorted(key.expand(branches, K, B, T).contiguous(), query.contiguous())  # k's own steps below it
    size = branches * K * T
    all_past = prefix.gather(-1, below.expand(2, B, size)).reshape(2, B, branches, K, T).permute(0, 2, 3, 1, 4)  # [2, D, K, B, T]
    own_prefix = exclusive_prefix(channels).unsqueeze(1).expand(2, branches, K, B, T + 1)
    own_past = own_prefix.gather(-1, tau.expand(2, branches, K, B, T))  # [2, D, K, B, T]
    others_future = others_total[:, None, :, :, None] - (all_past - own_past)  # [2, D, K, B, T]
    if squeeze:
        others_future = others_future.squeeze(1)
    mean = others_future[0] / (K - 1)
    # a count above 1/2 (counts are exact small integers) means some other future holds a -inf step
    return torch.where(others_future[1] > 0.5, torch.full_like(mean, float("-inf")), mean)


def run_starts(key: torch.Tensor) -> torch.Tensor:
    """For a key sorted along the last axis: the index where each entry's run of equal values starts,
    i.e. ``#{i : key_i < key_t}`` (a cumulative maximum, cheaper than ``searchsorted``).

    Example:
        >>> run_starts(torch.tensor([0, 0, 1, 3, 3, 3])).tolist()
        [0, 0, 2, 3, 3, 3]
    """
    positions = torch.arange(key.shape[-1], device=key.device).expand_as(key)
    new_run = torch.ones_like(key, dtype=torch.bool)
    new_run[..., 1:] = key[..., 1:] != key[..., :-1]
    return torch.where(new_run, positions, torch.zeros_like(positions)).cummax(-1).values


def exclusive_prefix(x: torch.Tensor) -> torch.Tensor:
    """``[..., N] -> [..., N + 1]``: the sums of the first 0, 1, ..., N entries along the last axis."""
    return torch.cat([torch.zeros_like(x[..., :1]), x.cumsum(-1)], dim=-1)
