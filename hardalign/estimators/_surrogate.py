"""The score-function surrogate shared by every estimator.

For learning signals ``A`` (treated as constants) and log-probabilities ``log q`` of the sampled
decisions, ``sum_t A_t * (log q_t - stopgrad(log q_t))`` has value exactly 0 and gradient
``sum_t A_t grad log q_t``. Adding it to an objective changes the gradient, never the loss value
that is logged.
"""

from __future__ import annotations

import torch


def score_function_surrogate(signals: torch.Tensor, log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_t stopgrad(A_t) * (log q_t - stopgrad(log q_t))`` over the steps where ``mask`` holds.

    Args:
        signals: learning signals ``[K, B, T]`` (detached here).
        log_probs: ``log q`` of the sampled decisions ``[K, B, T]``.
        mask: bool ``[K, B, T]``.

    Returns:
        ``[K, B]``, value 0, gradient ``sum_t A_t grad log q_t`` on the masked steps.
    """
    centred = log_probs - log_probs.detach()
    # where() rather than a product so that non-finite log q at padding cannot leak NaN
    terms = torch.where(mask, signals.detach() * centred, torch.zeros_like(centred))
    return terms.sum(-1)
