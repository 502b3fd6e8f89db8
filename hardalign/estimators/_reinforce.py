"""REINFORCE: the score-function estimator of the gradient of ``mean_k log w^k``.

Signal for step t of particle k: the reward-to-go ``R_t^k = sum_{i >= t} l_i^k`` (or the whole
sequence's ``log w^k``) minus a baseline: none, an exponential moving average of past returns
(the pre-update value is subtracted, then updated), or the leave-one-out mean of the other
particles' returns (RLOO, K >= 2).
"""

from __future__ import annotations

import torch
from torch import nn

from hardalign.estimators._baselines import leave_one_out_mean, masked_moments, mean_and_variance, reward_to_go
from hardalign.estimators._inputs import EstimatorOutput, Inputs, canonical_inputs, effective_sample_size, finish
from hardalign.estimators._surrogate import score_function_surrogate

BASELINES = ("none", "ema", "loo")


def returns_for(inputs: Inputs, per_step: bool) -> torch.Tensor:
    """Reward-to-go ``[K, B, T]`` when per-step weights were given and ``per_step``; else ``log w`` as ``[K, B, 1]``."""
    if per_step and inputs.per_step:
        return reward_to_go(inputs.step_log_weights)
    return inputs.log_weights.unsqueeze(-1)


def _reinforce(inputs: Inputs, *, baseline, leave_one_out: bool, per_step: bool) -> tuple[EstimatorOutput, torch.Tensor]:
    returns = returns_for(inputs, per_step)  # [K, B, T] or [K, B, 1]
    baseline_values = torch.zeros_like(returns)
    if leave_one_out:
        baseline_values = baseline_values + leave_one_out_mean(returns.detach(), dim=0)
    if baseline is not None:
        baseline_values = baseline_values + baseline
    signals = (returns - baseline_values).detach().expand_as(inputs.log_probs)
    log_weights = inputs.log_weights  # [K, B]
    surrogate = score_function_surrogate(signals, inputs.log_probs, inputs.mask)  # [K, B], value 0
    loss = -(log_weights + surrogate).mean(0)  # [B]
    stats = {"baseline_mean": baseline_values.detach().mean()}
    if log_weights.shape[0] > 1:
        stats["ess"] = effective_sample_size(log_weights)
    return finish(inputs, loss, log_weights.mean(0), signals, stats), returns


def reinforce_loss(
    log_weights: torch.Tensor,
    log_probs: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    baseline: torch.Tensor | float | None = None,
    leave_one_out: bool = False,
    per_step: bool = True,
) -> EstimatorOutput:
    """REINFORCE surrogate loss for the objective ``mean_k log w^k`` (ELBO / expected reward).

    ``loss = -mean_b mean_k [ log w^k + sum_t stopgrad(R_t^k - b_t^k) (log q_t^k - stopgrad(log q_t^k)) ]``,
    with ``R_t^k`` the reward-to-go (``per_step``) or ``log w^k``, and ``b`` the given baseline
    plus, with ``leave_one_out``, ``mean_{j != k} R_t^j``. The loss value is ``-mean objective``.

    Args:
        log_weights: per-step log weights ``[K, B, T]`` or totals ``[K, B]``.
        log_probs: ``log q`` of the sampled decisions, ``[K, B, T]`` or ``[K, B]``.
        mask: bool, shape of ``log_probs``: steps that get a signal (default all).
        baseline: a constant subtracted from the returns (scalar or broadcastable to ``[K, B, T]``).
        leave_one_out: subtract the other particles' mean return (RLOO); needs K >= 2.
        per_step: reward-to-go per step rather than the whole sequence's log weight.

    Returns:
        :class:`EstimatorOutput`.

    Example:
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> q = torch.distributions.Bernoulli(logits=logits.expand(4, 2, 3))
        >>> z = q.sample()
        >>> out = reinforce_loss((2 * z - 1), q.log_prob(z), leave_one_out=True)
        >>> out.loss.backward(); logits.grad.shape
        torch.Size([3])

    References:
        Williams (1992); Kool et al. (2019), "Buy 4 REINFORCE samples, get a baseline for free".
    """
    inputs = canonical_inputs("reinforce", log_weights, log_probs, mask, min_samples=2 if leave_one_out else 1)
    return _reinforce(inputs, baseline=baseline, leave_one_out=leave_one_out, per_step=per_step)[0]


class REINFORCE(nn.Module):
    """REINFORCE with no baseline, a moving-average baseline (``ema``) or leave-one-out (``loo``).

    Args:
        baseline: ``"none"``, ``"ema"`` or ``"loo"`` (K >= 2).
        per_step: reward-to-go per step (with per-step log weights) instead of the sequence total.
        decay: the moving average's decay; it is bias-corrected as in Adam and synchronised
            across ``torch.distributed`` ranks.

    Example:
        >>> est = REINFORCE(baseline="ema")
        >>> out = est(torch.randn(4, 2, 5), torch.randn(4, 2, 5, requires_grad=True))
        >>> sorted(out.stats)
        ['baseline_mean', 'ess', 'signal_mean', 'signal_std']
    """

    def __init__(self, *, baseline: str = "none", per_step: bool = True, decay: float = 0.9):
        super().__init__()
        if baseline not in BASELINES:
            raise ValueError(f"reinforce: baseline must be one of {list(BASELINES)}, got {baseline!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"reinforce: decay must be in [0, 1), got {decay}")
        self.baseline, self.per_step, self.decay = baseline, per_step, decay
        self.register_buffer("ema_value", torch.zeros((), dtype=torch.float64))
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return f"baseline={self.baseline!r}, per_step={self.per_step}, decay={self.decay}"

    def forward(self, log_weights, log_probs, mask=None, baseline=None) -> EstimatorOutput:
        if baseline is not None:
            raise ValueError("reinforce: takes no input-dependent baseline tensor; use the 'nvil' estimator for a learned baseline")
        inputs = canonical_inputs("reinforce", log_weights, log_probs, mask, min_samples=2 if self.baseline == "loo" else 1)
        ema = None
        if self.baseline == "ema":
            # bias-corrected pre-update value; 0 before the first update
            correction = 1.0 - self.decay ** self.ema_updates.clamp_min(1).to(self.ema_value.dtype)
            ema = torch.where(self.ema_updates > 0, self.ema_value / correction, torch.zeros_like(self.ema_value))
            ema = ema.to(dtype=inputs.step_log_weights.dtype, device=inputs.step_log_weights.device)
        out, returns = _reinforce(inputs, baseline=ema, leave_one_out=self.baseline == "loo", per_step=self.per_step)
        if self.baseline == "ema" and self.training:
            batch_mean, _ = mean_and_variance(masked_moments(returns.expand_as(inputs.mask), inputs.mask))
            self.ema_value.mul_(self.decay).add_((1.0 - self.decay) * batch_mean.to(self.ema_value))
            self.ema_updates.add_(1)
        return out
