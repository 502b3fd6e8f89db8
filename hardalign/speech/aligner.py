"""CTC forward-backward: when does each label start, and the emission hazard it implies.

The posterior q(z | x, y) of the hard-alignment model may use anything in x and y. One strong
ingredient is an *aligner*: a small unidirectional CTC model inside q (trained by its own CTC
loss, used only in training) whose alignment posterior says, for every label u of the target and
every step t, how likely it is that label u is first recognised at step t. A unidirectional CTC
model spikes once it has heard a phone, which is when an online recogniser should emit it.

* :func:`label_start_posteriors`: ``P(t_u = t | x, y)`` under the CTC alignment posterior, where
  ``t_u`` is the first step of label u's run, by the forward-backward recursions in log space,
  vectorised over the batch and the ``2U + 1`` extended states (a loop over steps only; the
  backward recursion runs as the forward one on the reversed utterances, in the same loop).
* :func:`emission_hazard`: ``P(t_u = t | t_u >= t) = P(t_u = t) / sum_{t' >= t} P(t_u = t')``, the
  probability of emitting label u now given that it has not been emitted yet (smoothed so that a
  label whose start has passed is emitted at once).
"""

from __future__ import annotations

import torch

__all__ = ["label_start_posteriors", "emission_hazard"]

# log 0 in the recursions: finite, so that sums and differences of log-zeros stay finite (no inf - inf)
_LOG_ZERO = -1e30


def _log_sum_exp(*terms: torch.Tensor) -> torch.Tensor:
    """``log(sum_i exp(terms[i]))`` elementwise, for finite terms (log-zero is a large negative
    number here). By one maximum: on CPU, torch's ``logaddexp`` goes through a scalar ``log1p`` and
    takes several times as long (this is the inner loop of the recursions)."""
    largest = terms[0]
    for term in terms[1:]:
        largest = torch.maximum(largest, term)
    total = torch.sub(terms[0], largest).exp_()
    for term in terms[1:]:
        total.add_(torch.sub(term, largest).exp_())
    return total.log_().add_(largest)


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
    neg = _LOG_ZERO
    device = log_probs.device
    # The backward recursion is the forward one on the reversed problem (each utterance's valid
    # steps and labels in reverse order), so both run as one forward recursion over 2B rows: one
    # loop over the steps instead of two, each step a handful of whole-row operations.
    log_probs = log_probs.clamp_min(neg)  # log 0 = -inf would give inf - inf below
    steps = torch.arange(T, device=device)
    labels = torch.arange(U, device=device)
    reverse_steps = (lengths.view(B, 1) - 1 - steps).clamp(0, T - 1)  # [B, T]
    reverse_labels = (target_lengths.view(B, 1) - 1 - labels).clamp_min(0)  # [B, U]
    both_log_probs = torch.cat([log_probs, log_probs.gather(1, reverse_steps.unsqueeze(-1).expand(B, T, C))])
    reversed_targets = torch.where(labels < target_lengths.view(B, 1), targets.gather(1, reverse_labels), 0)
    alphas, emit = _ctc_forward(both_log_probs, torch.cat([targets, reversed_targets]), target_lengths.repeat(2))
    last = (2 * target_lengths).unsqueeze(1)  # final blank; the final label is last - 1
    ends = (lengths - 1).clamp(0, T - 1)
    alpha_end = alphas[:B].gather(1, ends.view(B, 1, 1).expand(B, 1, S)).squeeze(1)  # each utterance's last step
    log_z = torch.logsumexp(torch.cat([alpha_end.gather(1, last), alpha_end.gather(1, (last - 1).clamp_min(0))], 1), 1)
    log_z = torch.where(target_lengths > 0, log_z, alpha_end[:, 0])  # no labels: only the blank state
    # log P(x_<=t, enter label u at t): from state s - 1 (the blank before, or the previous label
    # when a blank may be skipped) at t - 1; label u is state 2u + 1
    forward = alphas[:B]  # [B, T, S]
    before = torch.cat([forward.new_full((B, 1, S), neg), forward[:, :-1]], 1)  # at t - 1
    previous_label = torch.cat([before.new_full((B, T, 1), neg), before[:, :, 1:-2:2]], 2)  # label u - 1 at t - 1
    may_skip = (targets != _shift(targets, 1, -1)) & (labels > 0)  # [B, U]: label u - 1 differs
    entries = _log_sum_exp(before[:, :, 0:-1:2], torch.where(may_skip.unsqueeze(1), previous_label, neg)) + emit[:B, :, 1::2]
    entries[:, 0] = torch.where(labels == 0, emit[:B, 0, 1::2], neg)  # only the first label can start at t = 0
    # log P(x_>=t | in label u's state at t), read from the reversed run: step t is its step
    # length - 1 - t, label state 2u + 1 its state 2 (U_b - 1 - u) + 1
    reversed_run = alphas[B:].gather(1, reverse_steps.unsqueeze(-1).expand(B, T, S))[:, :, 1::2]  # [B, T, U]
    from_here = reversed_run.gather(2, reverse_labels.unsqueeze(1).expand(B, T, U))
    post = torch.exp(entries + from_here - emit[:B, :, 1::2] - log_z.view(B, 1, 1))
    feasible = (log_z > neg / 2).view(B, 1, 1)
    inside = (steps.view(1, T, 1) < lengths.view(B, 1, 1)) & (labels.view(1, 1, U) < target_lengths.view(B, 1, 1))
    return torch.where(feasible & inside, post, torch.zeros_like(post))


def _ctc_forward(log_probs: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CTC's forward variables ``log P(x_<=t, state s at t)``, ``[N, T, 2U + 1]``, and the emission
    log-probabilities of the extended states (blank, label 1, blank, ..., blank; masked past each
    utterance's ``2 U_n + 1`` states), ``[N, T, 2U + 1]``. Steps past an utterance's end are computed
    but meaningless (log Z comes from its last step)."""
    N, T, _ = log_probs.shape
    U = targets.shape[1]
    S = 2 * U + 1
    neg = _LOG_ZERO
    dtype, device = log_probs.dtype, log_probs.device
    ext = torch.zeros(N, S, dtype=torch.long, device=device)
    if U:
        ext[:, 1::2] = targets
    states = torch.arange(S, device=device)
    valid_state = states.unsqueeze(0) < (2 * target_lengths + 1).unsqueeze(1)  # [N, S]
    # time-major and contiguous: each step reads and writes whole rows
    emit = log_probs.transpose(0, 1).gather(2, ext.unsqueeze(0).expand(T, N, S))  # [T, N, S]
    emit = emit.masked_fill(~valid_state.unsqueeze(0), neg).contiguous()
    skip = (states % 2 == 1) & (states >= 3)
    skip = skip.unsqueeze(0) & (ext != _shift(ext, 2, -1))  # [N, S] may jump over a blank
    # transitions as additive log-penalties (0 or neg), and rows padded with two neg columns in
    # front (s - 1, s - 2), so that a step is whole-row operations on views (no shifting copies)
    skip_from = torch.where(skip, 0.0, neg).to(dtype)  # into s from s - 2
    alphas = torch.full((T, N, S + 2), neg, dtype=dtype, device=device)
    alphas[0, :, 2:4] = emit[0, :, :2]
    for t in range(1, T):
        before = alphas[t - 1]  # stay in s, advance from s - 1, skip from s - 2
        torch.add(_log_sum_exp(before[:, 2:], before[:, 1:-1], before[:, :-2] + skip_from), emit[t], out=alphas[t, :, 2:])
    return alphas[:, :, 2:].transpose(0, 1), emit.transpose(0, 1)


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
