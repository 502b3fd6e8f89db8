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
    return torch.cat([x.new_full(x.shape[:-1] + (by,), fill), x[..., :-by]], dim=-1)


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
    dtype = log_probs.dtype
    ext = torch.zeros(B, S, dtype=torch.long, device=log_probs.device)
    if U:
        ext[:, 1::2] = targets
    emit = log_probs.gather(2, ext.unsqueeze(1).expand(B, T, S))  # [B, T, S]
    states = torch.arange(S, device=log_probs.device)
    valid_state = states.unsqueeze(0) < (2 * target_lengths + 1).unsqueeze(1)  # [B, S]
    emit = emit.masked_fill(~valid_state.unsqueeze(1), neg)
    skip = (states % 2 == 1) & (states >= 3)
    skip = skip.unsqueeze(0) & (ext != _shift(ext, 2, -1))  # [B, S] may jump over a blank
    alpha = torch.full((B, S), neg, dtype=dtype, device=log_probs.device)
    alpha[:, 0] = emit[:, 0, 0]
    if S > 1:
        alpha[:, 1] = emit[:, 0, 1]
    alphas = [alpha]
    entries = [alpha.clone().masked_fill_((states % 2 == 0).unsqueeze(0), neg)]  # entering a label at t = 0
    for t in range(1, T):
        into = torch.logaddexp(_shift(alpha, 1, neg), torch.where(skip, _shift(alpha, 2, neg), torch.full_like(alpha, neg)))
        running = t < lengths  # [B]
        entry = into + emit[:, t]
        new = torch.logaddexp(alpha, into) + emit[:, t]
        alpha = torch.where(running.unsqueeze(1), new, alpha)
        alphas.append(alpha)
        entries.append(torch.where(running.unsqueeze(1), entry, torch.full_like(entry, neg)))
    last = (2 * target_lengths).unsqueeze(1)  # final blank; the final label is last - 1
    final = torch.zeros(B, S, dtype=torch.bool, device=log_probs.device)
    final.scatter_(1, last, True)
    final.scatter_(1, (last - 1).clamp_min(0), True)
    final &= valid_state
    beta_final = torch.where(final, torch.zeros(B, S, dtype=dtype, device=log_probs.device), torch.full((B, S), neg, dtype=dtype, device=log_probs.device))
    log_z = torch.logsumexp(alpha + beta_final, dim=1)  # alpha frozen at each utterance's last step
    betas = [None] * T
    beta = beta_final
    betas[T - 1] = beta
    for t in range(T - 2, -1, -1):
        ahead = beta + emit[:, t + 1]  # [B, S]
        back1 = torch.cat([ahead[:, 1:], ahead.new_full((B, 1), neg)], dim=1)  # s + 1
        skip_next = torch.cat([skip[:, 2:], skip.new_zeros(B, 2)], dim=1)  # jump s -> s + 2 allowed
        back2 = torch.where(skip_next, torch.cat([ahead[:, 2:], ahead.new_full((B, 2), neg)], dim=1), torch.full_like(ahead, neg))
        new = torch.logsumexp(torch.stack([ahead, back1, back2]), dim=0)
        beta = torch.where((t < lengths - 1).unsqueeze(1), new, beta_final)
        betas[t] = beta
    entry = torch.stack(entries, dim=1)  # [B, T, S]
    beta_all = torch.stack(betas, dim=1)
    post = torch.exp(entry + beta_all - log_z.view(B, 1, 1))[:, :, 1::2]  # label states -> [B, T, U]
    feasible = (log_z > neg / 2).view(B, 1, 1)
    steps = torch.arange(T, device=log_probs.device).view(1, T, 1)
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
