"""CTC forward-backward: when does each label start, and the emission hazard it implies.

The posterior q(z | x, y) of the hard-alignment model may use anything in x and y. One strong
ingredient is an *aligner*: a small unidirectional CTC model inside q (trained by its own CTC
loss, used only in training) whose alignment posterior says, for every label u of the target and
every step t, how likely it is that label u is first recognised at step t. A unidirectional CTC
model spikes once it has heard a phone, which is when an online recogniser should emit it.

* :func:`label_start_posteriors`: ``P(t_u = t | x, y)`` under the CTC alignment posterior, where
  ``t_u`` is the first step of label u's run, by the forward-backward recursions in log space,
  vectorised over the batch and the ``2U + 1`` extended states (a loop over steps only).
* :func:`emission_hazard`: ``P(t_u = t | t_u >= t) = P(t_u = t) / sum_{t' >= t} P(t_u = t')``, the
  probability of emitting label u now given that it has not been emitted yet (smoothed so that a
  label whose start has passed is emitted at once).
"""

from __future__ import annotations

import torch

__all__ = ["label_start_posteriors", "emission_hazard"]


def _shift(x: torch.Tensor, by: int, fill: float) -> torch.Tensor:
    """``out[..., s] = x[..., s - by]`` (``fill`` for ``s < by``)."""
    return torch.cat([x.new_full(x.shape[:-1] + (by,), fill), x], dim=-1)[..., : x.shape[-1]]


@torch.no_grad()
def label_start_posteriors(log_probs: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Posterior probability that label u's CTC run starts at step t.

    Args:
        log_probs: ``[B, T, C]`` CTC log-probabilities, blank = 0.
        lengths: ``[B]`` valid steps.
        targets: ``[B, U]`` label ids (``1..C-1``), padded.
        target_lengths: ``[B]``.

    Returns:
        ``[B, T, U]``: for each label, a distribution over its start step (zero at padding and for
        padded labels; all zero for an utterance whose targets cannot be aligned).

    Example:
        >>> lp = torch.log(torch.tensor([[[0.1, 0.9, 0.0], [0.1, 0.1, 0.8], [0.9, 0.05, 0.05]]]))
        >>> post = label_start_posteriors(lp, torch.tensor([3]), torch.tensor([[1, 2]]), torch.tensor([2]))
        >>> [round(float(v), 3) for v in post[0, :, 0]], [round(float(v), 3) for v in post[0, :, 1]]
        ([0.999, 0.001, 0.0], [0.0, 0.986, 0.014])
    """
    B, T, C = log_probs.shape
    U = targets.shape[1]
    S = 2 * U + 1
    neg = -1e30
    dtype, device = log_probs.dtype, log_probs.device
    ext = torch.zeros(B, S, dtype=torch.long, device=device)
    if U:
        ext[:, 1::2] = targets
    states = torch.arange(S, device=device)
    valid_state = states.unsqueeze(0) < (2 * target_lengths + 1).unsqueeze(1)  # [B, S]
    # time-major and contiguous: each step reads and writes whole rows
    emit = log_probs.transpose(0, 1).gather(2, ext.unsqueeze(0).expand(T, B, S))  # [T, B, S]
    emit = emit.masked_fill(~valid_state.unsqueeze(0), neg).contiguous()
    skip = (states % 2 == 1) & (states >= 3)
    skip = skip.unsqueeze(0) & (ext != _shift(ext, 2, -1))  # [B, S] may jump over a blank
    # transitions as additive log-penalties (0 or neg), and the recursions on padded rows, so that
    # each step is a handful of whole-row operations on views (no shifting copies, no masking):
    # alpha rows carry two neg columns in front (s - 1, s - 2), beta rows two behind (s + 1, s + 2)
    skip_from = torch.where(skip, 0.0, neg).to(dtype)  # into s from s - 2
    skip_to = _shift(skip_from.flip(1), 2, neg).flip(1)  # from s into s + 2 (as seen from s)
    alphas = torch.full((T, B, S + 2), neg, dtype=dtype, device=device)
    entries = torch.full((T, B, S), neg, dtype=dtype, device=device)  # log P(x_<=t, enter s at t)
    alphas[0, :, 2:4] = emit[0, :, :2]
    entries[0, :, 1:2] = emit[0, :, 1:2]  # entering the first label at t = 0
    into = torch.empty(B, S, dtype=dtype, device=device)
    for t in range(1, T):  # past an utterance's end the rows are not read (log Z comes from its last step)
        before = alphas[t - 1]
        torch.logaddexp(before[:, 1:-1], before[:, :-2] + skip_from, out=into)
        torch.add(into, emit[t], out=entries[t])
        alphas[t, :, 2:] = torch.logaddexp(before[:, 2:], into) + emit[t]
    last = (2 * target_lengths).unsqueeze(1)  # final blank; the final label is last - 1
    final = torch.zeros(B, S, dtype=torch.bool, device=device)
    final.scatter_(1, last, True)
    final.scatter_(1, (last - 1).clamp_min(0), True)
    final &= valid_state
    beta_final = torch.where(final, 0.0, neg).to(dtype)  # [B, S]
    ends = (lengths - 1).clamp(0, T - 1)
    alpha_end = alphas[:, :, 2:].gather(0, ends.view(1, B, 1).expand(1, B, S))[0]  # each utterance's last step
    log_z = torch.logsumexp(alpha_end + beta_final, dim=1)
    betas = torch.full((T, B, S + 2), neg, dtype=dtype, device=device)
    betas[T - 1, :, :S] = beta_final
    ahead = torch.full((B, S + 2), neg, dtype=dtype, device=device)
    inside = (torch.arange(T, device=device).unsqueeze(1) < (lengths - 1).unsqueeze(0)).unsqueeze(-1)  # [T, B, 1]
    for t in range(T - 2, -1, -1):
        torch.add(betas[t + 1, :, :S], emit[t + 1], out=ahead[:, :S])
        stay_or_next = torch.logaddexp(ahead[:, :S], ahead[:, 1:-1])
        betas[t, :, :S] = torch.where(inside[t], torch.logaddexp(stay_or_next, ahead[:, 2:] + skip_to), beta_final)
    post = torch.exp(entries + betas[:, :, :S] - log_z.view(1, B, 1))[:, :, 1::2].transpose(0, 1)  # label states -> [B, T, U]
    feasible = (log_z > neg / 2).view(B, 1, 1)
    steps = torch.arange(T, device=device).view(1, T, 1)
    return torch.where(feasible & (steps < lengths.view(B, 1, 1)), post, torch.zeros_like(post))


def emission_hazard(start: torch.Tensor, eps: float = 1e-4, smoothing: float = 1e-3) -> torch.Tensor:
    """``P(t_u = t | t_u >= t)`` from start posteriors ``[B, T, U]``, clamped to ``[eps, 1 - eps]``.

    The ratio is smoothed, ``(P(t_u = t) + s) / (sum_{t' >= t} P(t_u = t') + s)``, so that once a
    label's likely start lies in the past (a sampled alignment fell behind) the hazard tends to 1
    and the label is emitted at once instead of being pushed to the forced emissions at the end.

    Example:
        >>> [round(v, 3) for v in emission_hazard(torch.tensor([[[0.25], [0.25], [0.5], [0.0]]]))[0, :, 0].tolist()]
        [0.251, 0.334, 1.0, 1.0]
    """
    survival = start.flip(1).cumsum(1).flip(1)  # sum_{t' >= t}
    return ((start + smoothing) / (survival + smoothing)).clamp(eps, 1 - eps)
