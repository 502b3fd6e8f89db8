"""REINFORCE: the score-function estimator of the gradient of ``mean_k log w^k``.

Signal for step t of particle k: the reward-to-go ``R_t^k = sum_{i >= t} l_i^k`` (or the whole
sequence's ``log w^k``) minus a baseline: none, an exponential moving average of past returns
(the pre-update value is subtracted, then updated), the leave-one-out mean of the other
particles' returns (RLOO, K >= 2), or an input-dependent baseline ``b_psi`` predicted by the
caller's network (``"learned"``). A given baseline tensor is subtracted detached; when it requires
grad the loss also regresses it onto the detached returns (masked mean squared error), as NVIL
does for its baseline, reported as ``stats["baseline_loss"]``.

Impossible samples: a particle with log weight ``-inf`` makes the ELBO ``mean_k log w^k`` of its
example ``-inf``; its reward-to-go is ``-inf`` and the loss is NaN. REINFORCE cannot use such
samples; ``check_finite=True`` turns this into a ValueError naming ``log_weights`` (the VIMCO
variants handle them).
"""

from __future__ import annotations

import torch
from torch import nn

from hardalign import _checks
from hardalign.estimators._baselines import leave_one_out_mean, masked_moments, mean_and_variance, reward_to_go
from hardalign.estimators._inputs import EstimatorOutput, Inputs, canonical_inputs, check_baseline, check_values, effective_sample_size, finish
from hardalign.estimators._surrogate import score_function_surrogate

BASELINES = ("none", "ema", "loo", "learned")


def returns_for(inputs: Inputs, per_step: bool) -> torch.Tensor:
    """Reward-to-go ``[K, B, T]`` when per-step weights were given and ``per_step``; else ``log w`` as ``[K, B, 1]``."""
    if per_step and inputs.per_step:
        return reward_to_go(inputs.step_log_weights)
    return inputs.log_weights.unsqueeze(-1)


def baseline_tensor(baseline, inputs: Inputs) -> torch.Tensor | float | None:
    """A given baseline in a form that broadcasts against ``[K, B, T]``: ``[K, B]`` becomes ``[K, B, 1]``."""
    if baseline is None or not isinstance(baseline, torch.Tensor) or baseline.dim() == 0:
        return baseline
    K, B, T = inputs.log_probs.shape
    if baseline.shape in ((K, B), (K, B, T)):
        return check_baseline(baseline, inputs)
    _checks.check_floating("baseline", baseline)
    _checks.check_same_device_dtype("baseline", baseline, "log_weights", inputs.step_log_weights)
    try:
        shape = torch.broadcast_shapes(baseline.shape, (K, B, T))
    except RuntimeError:
        shape = None
    if shape != (K, B, T):
        raise ValueError(
            f"baseline: expected [K, B] = {_checks.shape_str((K, B))}, [K, B, T] = {_checks.shape_str((K, B, T))} "
            f"or a shape that broadcasts to it, got {_checks.shape_str(baseline.shape)}"
        )
    return baseline


def baseline_regression(learned: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B]``: the mean over the masked steps of ``(b - stopgrad(target))^2``, which trains a baseline network."""
    learned, target = torch.broadcast_tensors(learned, target.detach())
    learned, target = learned.expand_as(mask), target.expand_as(mask)
    error = torch.where(mask, (learned - target) ** 2, torch.zeros_like(target))
    return error.sum((0, 2)) / mask.sum((0, 2)).clamp_min(1)


def _reinforce(inputs: Inputs, *, baseline, leave_one_out: bool, per_step: bool, moving_average=None) -> tuple[EstimatorOutput, torch.Tensor]:
    returns = returns_for(inputs, per_step)  # [K, B, T] or [K, B, 1]
    given = baseline_tensor(baseline, inputs)
    baseline_values = torch.zeros_like(returns)
    if leave_one_out:
        baseline_values = baseline_values + leave_one_out_mean(returns.detach(), dim=0)
    if moving_average is not None:
        baseline_values = baseline_values + moving_average
    if given is not None:
        baseline_values = baseline_values + (given.detach() if isinstance(given, torch.Tensor) else given)
    signals = (returns.detach() - baseline_values).expand_as(inputs.log_probs)
    log_weights = inputs.log_weights  # [K, B]
    surrogate = score_function_surrogate(signals, inputs.log_probs, inputs.mask)  # [K, B], value 0
    loss = -(log_weights + surrogate).mean(0)  # [B]
    stats = {"baseline_mean": baseline_values.detach().mean()}
    if isinstance(given, torch.Tensor) and given.requires_grad:
        regression = baseline_regression(given if given.dim() else given.expand_as(returns), returns, inputs.mask)
        loss = loss + regression
        stats["baseline_loss"] = regression.mean()
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
    check_finite: bool = False,
) -> EstimatorOutput:
    """REINFORCE surrogate loss for the objective ``mean_k log w^k`` (ELBO / expected reward).

    ``loss = -mean_b mean_k [ log w^k + sum_t stopgrad(R_t^k - b_t^k) (log q_t^k - stopgrad(log q_t^k)) ]``,
    with ``R_t^k`` the reward-to-go (``per_step``) or ``log w^k``, and ``b`` the given baseline
    plus, with ``leave_one_out``, ``mean_{j != k} R_t^j``. When the given baseline tensor requires
    grad (a baseline network's prediction ``b_psi``), the loss adds its regression onto the
    returns, ``mean_b mean_{masked k,t} (b_psi - stopgrad(R_t^k))^2`` (``stats["baseline_loss"]``);
    otherwise the loss value is ``-mean objective``.

    Args:
        log_weights: per-step log weights ``[K, B, T]`` or totals ``[K, B]``.
        log_probs: ``log q`` of the sampled decisions, ``[K, B, T]`` or ``[K, B]``.
        mask: bool, shape of ``log_probs``: steps that get a signal (default all).
        baseline: subtracted from the returns (detached): a scalar, ``[K, B]`` (one per sample),
            ``[K, B, T]`` (one per step) or a shape that broadcasts to ``[K, B, T]``.
        leave_one_out: subtract the other particles' mean return (RLOO); needs K >= 2.
        per_step: reward-to-go per step rather than the whole sequence's log weight.
        check_finite: value checks (a host sync): NaN or ``+-inf`` in ``log_weights``, non-finite
            ``log_probs`` on masked-in steps or a non-finite baseline raise a ValueError.

    Returns:
        :class:`EstimatorOutput`.

    Raises:
        ValueError: bad shapes, K < 2 with ``leave_one_out``, bad values with ``check_finite``.

    Example:
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> q = torch.distributions.Bernoulli(logits=logits.expand(4, 2, 3))
        >>> z = q.sample()
        >>> out = reinforce_loss((2 * z - 1), q.log_prob(z), leave_one_out=True)
        >>> out.loss.backward(); logits.grad.shape
        torch.Size([3])
        >>> b_psi = torch.zeros(4, 2, requires_grad=True)  # a baseline network's prediction
        >>> sorted(reinforce_loss(2 * z - 1, q.log_prob(z), baseline=b_psi).stats)
        ['baseline_loss', 'baseline_mean', 'ess', 'signal_mean', 'signal_std']

    References:
        Williams (1992); Kool et al. (2019), "Buy 4 REINFORCE samples, get a baseline for free".
    """
    inputs = canonical_inputs("reinforce", log_weights, log_probs, mask, min_samples=2 if leave_one_out else 1)
    if check_finite:
        check_values("reinforce", inputs, baseline=baseline, impossible_ok=False)
    return _reinforce(inputs, baseline=baseline, leave_one_out=leave_one_out, per_step=per_step)[0]


class REINFORCE(nn.Module):
    """REINFORCE with no baseline, a moving average (``ema``), leave-one-out (``loo``) or a ``learned`` one.

    Call: ``est(log_weights, log_probs, mask=None, *, baseline=None, progress=None)``. ``progress``
    is ignored (the signals do not depend on how steps align across particles).

    Args:
        baseline: ``"none"``, ``"ema"``, ``"loo"`` (K >= 2) or ``"learned"``: the caller passes
            its baseline network's prediction ``baseline=b_psi`` (``[K, B]`` or ``[K, B, T]``),
            which is subtracted (detached) and, when it requires grad, regressed onto the returns
            (``stats["baseline_loss"]``). A baseline tensor given with the other options is
            subtracted in addition, as in :func:`reinforce_loss`.
        per_step: reward-to-go per step (with per-step log weights) instead of the sequence total.
        decay: the moving average's decay; it is bias-corrected as in Adam and synchronised
            across ``torch.distributed`` ranks.
        check_finite: value checks on every call (a host sync), see :func:`reinforce_loss`.

    Attributes:
        takes_baseline: True exactly for ``baseline="learned"``: the caller must pass ``baseline=``.

    Example:
        >>> est = REINFORCE(baseline="ema")
        >>> out = est(torch.randn(4, 2, 5), torch.randn(4, 2, 5, requires_grad=True))
        >>> sorted(out.stats)
        ['baseline_mean', 'ess', 'signal_mean', 'signal_std']
        >>> REINFORCE(baseline="learned").takes_baseline
        True
    """

    def __init__(self, *, baseline: str = "none", per_step: bool = True, decay: float = 0.9, check_finite: bool = False):
        super().__init__()
        if baseline not in BASELINES:
            raise ValueError(f"reinforce: baseline must be one of {list(BASELINES)}, got {baseline!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"reinforce: decay must be in [0, 1), got {decay}")
        self.baseline, self.per_step, self.decay, self.check_finite = baseline, per_step, decay, check_finite
        self.register_buffer("ema_value", torch.zeros((), dtype=torch.float64))
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    @property
    def takes_baseline(self) -> bool:
        """Whether ``forward`` uses an input-dependent ``baseline=`` tensor (``baseline="learned"``)."""
        return self.baseline == "learned"

    def extra_repr(self) -> str:
        return f"baseline={self.baseline!r}, per_step={self.per_step}, decay={self.decay}"

    def forward(self, log_weights, log_probs, mask=None, *, baseline=None, progress=None, alternative=None) -> EstimatorOutput:
        if self.baseline == "learned" and baseline is None:
            raise ValueError(
                "reinforce: baseline='learned' needs the baseline network's prediction: call "
                "est(log_weights, log_probs, mask, baseline=b_psi) with b_psi [K, B] or [K, B, T]"
            )
        inputs = canonical_inputs("reinforce", log_weights, log_probs, mask, min_samples=2 if self.baseline == "loo" else 1)
        if self.check_finite:
            check_values("reinforce", inputs, baseline=baseline, impossible_ok=False)
        ema = None
        if self.baseline == "ema":
            # bias-corrected pre-update value; 0 before the first update
            correction = 1.0 - self.decay ** self.ema_updates.clamp_min(1).to(self.ema_value.dtype)
            ema = torch.where(self.ema_updates > 0, self.ema_value / correction, torch.zeros_like(self.ema_value))
            ema = ema.to(dtype=inputs.step_log_weights.dtype, device=inputs.step_log_weights.device)
        out, returns = _reinforce(
            inputs, baseline=baseline, leave_one_out=self.baseline == "loo", per_step=self.per_step, moving_average=ema
        )
        if self.baseline == "ema" and self.training:
            batch_mean, _ = mean_and_variance(masked_moments(returns.expand_as(inputs.mask), inputs.mask))
            self.ema_value.mul_(self.decay).add_((1.0 - self.decay) * batch_mean.to(self.ema_value))
            self.ema_updates.add_(1)
        return out
