"""NVIL (Mnih & Gregor 2014): an input-dependent baseline, centring and variance normalisation.

Signal ``(R - c - b_psi) / max(1, sqrt(v))`` where ``b_psi`` comes from the caller's baseline
network, and ``c``, ``v`` are running mean and variance of ``R - b_psi`` updated *after* use with
decay alpha (0.8). The loss also regresses ``b_psi`` onto the detached centred return ``R - c``.

Impossible samples: as for REINFORCE, a particle with log weight ``-inf`` makes the ELBO ``-inf``
and the loss NaN; ``check_finite=True`` raises a ValueError naming ``log_weights`` instead.
"""

from __future__ import annotations

import torch
from torch import nn

from hardalign.estimators._baselines import masked_moments, mean_and_variance
from hardalign.estimators._inputs import EstimatorOutput, Inputs, canonical_inputs, check_baseline, check_values, effective_sample_size, finish
from hardalign.estimators._reinforce import baseline_regression, returns_for
from hardalign.estimators._surrogate import score_function_surrogate


def _nvil(inputs: Inputs, *, baseline, centre, scale, per_step: bool) -> tuple[EstimatorOutput, torch.Tensor, torch.Tensor]:
    returns = returns_for(inputs, per_step)  # [K, B, T] or [K, B, 1]
    learned = torch.zeros_like(returns[..., :1]) if baseline is None else check_baseline(baseline, inputs)
    residual = (returns.detach() - learned.detach()).expand_as(inputs.log_probs)  # R - b_psi
    signals = (residual - centre) / scale
    log_weights = inputs.log_weights
    surrogate = score_function_surrogate(signals, inputs.log_probs, inputs.mask)
    loss = -(log_weights + surrogate).mean(0)  # [B]
    # on the inputs' device and dtype (a float centre must not become a CPU tensor next to CUDA ones)
    like = dict(device=signals.device, dtype=signals.dtype)
    stats = {"centre": torch.as_tensor(centre, **like).detach(), "scale": torch.as_tensor(scale, **like).detach()}
    if baseline is not None:
        # regress b_psi onto the centred return R - c on the steps that carry a signal
        regression = baseline_regression(learned, returns.detach() - centre, inputs.mask)  # [B]
        loss = loss + regression
        stats["baseline_loss"] = regression.mean()
        stats["baseline_mean"] = learned.detach().mean()
    if log_weights.shape[0] > 1:
        stats["ess"] = effective_sample_size(log_weights)
    return finish(inputs, loss, log_weights.mean(0), signals, stats), residual


def nvil_loss(
    log_weights: torch.Tensor,
    log_probs: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    baseline: torch.Tensor | None = None,
    centre: torch.Tensor | float = 0.0,
    scale: torch.Tensor | float = 1.0,
    per_step: bool = True,
    check_finite: bool = False,
) -> EstimatorOutput:
    """NVIL surrogate loss for ``mean_k log w^k`` with given centre ``c`` and divisor ``scale``.

    ``A_t^k = (R_t^k - c - b_psi) / scale``; ``loss = -mean_b mean_k [log w^k + sum_t stopgrad(A_t^k)
    (log q_t^k - stopgrad(log q_t^k))] + mean_b mean_{masked k,t} (b_psi - stopgrad(R - c))^2``.

    Args:
        log_weights: ``[K, B, T]`` or ``[K, B]``.
        log_probs: ``[K, B, T]`` or ``[K, B]``.
        mask: bool, shape of ``log_probs``.
        baseline: ``b_psi`` from the caller's network, ``[K, B]`` or ``[K, B, T]``, or None.
        centre: ``c``, the running mean of ``R - b_psi``.
        scale: the divisor ``max(1, sqrt(v))``.
        per_step: reward-to-go per step.
        check_finite: value checks (a host sync): NaN or ``+-inf`` in ``log_weights``, non-finite
            ``log_probs`` on masked-in steps or a non-finite baseline raise a ValueError.

    Returns:
        :class:`EstimatorOutput`; ``stats["baseline_loss"]`` is the regression term.

    Example:
        >>> b_psi = torch.zeros(2, 3, requires_grad=True)
        >>> out = nvil_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4, requires_grad=True), baseline=b_psi)
        >>> out.loss.backward(); b_psi.grad.shape
        torch.Size([2, 3])
    """
    inputs = canonical_inputs("nvil", log_weights, log_probs, mask)
    if check_finite:
        check_values("nvil", inputs, baseline=baseline, impossible_ok=False)
    return _nvil(inputs, baseline=baseline, centre=centre, scale=scale, per_step=per_step)[0]


class NVIL(nn.Module):
    """NVIL with running centre/variance buffers (saved in ``state_dict``, synchronised across ranks).

    Call: ``est(log_weights, log_probs, mask=None, *, baseline=b_psi, progress=None)``; ``takes_baseline``
    is True (without ``baseline`` it uses the running centre only); ``progress`` is ignored.

    Args:
        decay: alpha of the running mean and variance of ``R - b_psi`` (updated after use).
        normalize_variance: divide the signal by ``max(1, sqrt(v))``.
        per_step: reward-to-go per step (with per-step log weights).
        check_finite: value checks on every call (a host sync), see :func:`nvil_loss`.

    Example:
        >>> est = NVIL()
        >>> b = torch.zeros(1, 2, 5, requires_grad=True)
        >>> out = est(torch.randn(1, 2, 5), torch.randn(1, 2, 5, requires_grad=True), baseline=b)
        >>> out.loss.backward(); b.grad.shape
        torch.Size([1, 2, 5])
    """

    def __init__(self, *, decay: float = 0.8, normalize_variance: bool = True, per_step: bool = True, check_finite: bool = False):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"nvil: decay must be in [0, 1), got {decay}")
        self.decay, self.normalize_variance, self.per_step = decay, normalize_variance, per_step
        self.check_finite = check_finite
        self.register_buffer("running_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("running_var", torch.zeros((), dtype=torch.float64))

    def extra_repr(self) -> str:
        return f"decay={self.decay}, normalize_variance={self.normalize_variance}, per_step={self.per_step}"

    @property
    def takes_baseline(self) -> bool:
        """Always True: NVIL uses the caller's input-dependent baseline ``b_psi`` when given."""
        return True

    def forward(self, log_weights, log_probs, mask=None, *, baseline=None, progress=None, alternative=None) -> EstimatorOutput:
        inputs = canonical_inputs("nvil", log_weights, log_probs, mask)
        if self.check_finite:
            check_values("nvil", inputs, baseline=baseline, impossible_ok=False)
        like = inputs.step_log_weights
        centre = self.running_mean.to(dtype=like.dtype, device=like.device)
        scale = torch.ones_like(centre)
        if self.normalize_variance:
            scale = self.running_var.to(dtype=like.dtype, device=like.device).sqrt().clamp_min(1.0)
        out, residual = _nvil(inputs, baseline=baseline, centre=centre, scale=scale, per_step=self.per_step)
        if self.training:
            mean, variance = mean_and_variance(masked_moments(residual, inputs.mask))
            self.running_mean.mul_(self.decay).add_((1.0 - self.decay) * mean.to(self.running_mean))
            self.running_var.mul_(self.decay).add_((1.0 - self.decay) * variance.to(self.running_var))
        return out
