"""The call convention shared by every estimator: argument checks and the result type."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from hardalign import _checks

LAYOUT = "[K, B, T] or [K, B]"


class EstimatorOutput(NamedTuple):
    """What every estimator returns.

    Attributes:
        loss: scalar to minimise: the mean over the batch of per-example surrogate losses; its
            negative gradient is the estimate of the gradient of the objective (NVIL adds the
            regression term that trains its baseline).
        objective: ``[B]`` detached objective per example (the ELBO ``mean_k log w^k`` for
            REINFORCE/NVIL, the K-sample bound ``log mean_k w^k`` for the VIMCO variants).
        signals: detached learning signals, the shape of ``log_probs`` (0 where ``mask`` is False).
        stats: detached 0-dim diagnostics (signal mean/std, effective sample size for K > 1,
            baseline values).
    """

    loss: torch.Tensor
    objective: torch.Tensor
    signals: torch.Tensor
    stats: dict


class Inputs(NamedTuple):
    """Arguments in canonical form: ``step_log_weights [K, B, T']`` with T' = T, or T' = 1 when
    only per-sample totals were given; ``log_probs`` and ``mask`` ``[K, B, T]``."""

    step_log_weights: torch.Tensor
    log_probs: torch.Tensor
    mask: torch.Tensor
    per_step: bool  # True when log_weights had a step axis matching log_probs
    squeeze: bool  # True when log_probs were given as [K, B]: signals go back as [K, B]

    @property
    def log_weights(self) -> torch.Tensor:
        """Per-sample totals ``log w^k`` ``[K, B]``."""
        return self.step_log_weights.sum(-1)


def canonical_inputs(name: str, log_weights, log_probs, mask, *, min_samples: int = 1) -> Inputs:
    """Check the shared arguments and bring them to ``[K, B, T]`` form.

    ``log_weights`` may be per-step ``[K, B, T]`` (the shape of ``log_probs``) or totals ``[K, B]``;
    ``log_probs`` may be ``[K, B, T]`` or ``[K, B]``; ``mask`` is bool with ``log_probs``' shape.
    """
    _checks.check_floating("log_weights", log_weights)
    _checks.check_floating("log_probs", log_probs)
    _checks.check_rank("log_weights", log_weights, (2, 3), LAYOUT)
    _checks.check_rank("log_probs", log_probs, (2, 3), LAYOUT)
    _checks.check_same_device_dtype("log_probs", log_probs, "log_weights", log_weights)
    if log_weights.shape[:2] != log_probs.shape[:2]:
        raise ValueError(
            f"log_probs: expected the leading [K, B] = {_checks.shape_str(log_weights.shape[:2])} of log_weights, "
            f"got {_checks.shape_str(log_probs.shape)}"
        )
    if log_weights.dim() == 3:
        _checks.check_same_shape("log_weights", log_weights, "log_probs", log_probs if log_probs.dim() == 3 else log_weights, "[K, B, T]")
        if log_probs.dim() == 2:
            raise ValueError(
                f"log_probs: got per-sample totals {_checks.shape_str(log_probs.shape)} with per-step log_weights "
                f"{_checks.shape_str(log_weights.shape)}; pass log_probs per step [K, B, T] or log_weights.sum(-1)"
            )
    squeeze = log_probs.dim() == 2
    if mask is None:
        mask = torch.ones(log_probs.shape, dtype=torch.bool, device=log_probs.device)
    else:
        _checks.check_mask("mask", mask, "log_probs", log_probs, LAYOUT)
    num_samples = log_weights.shape[0]
    if num_samples < min_samples:
        raise ValueError(
            f"{name}: needs K >= {min_samples} samples per example (the leading axis of log_weights), got K={num_samples}; "
            f"draw more particles (e.g. --num-samples {max(min_samples, 2)})"
        )
    if squeeze:
        log_probs, mask = log_probs.unsqueeze(-1), mask.unsqueeze(-1)
    step_log_weights = log_weights if log_weights.dim() == 3 else log_weights.unsqueeze(-1)
    return Inputs(step_log_weights, log_probs, mask, per_step=log_weights.dim() == 3 and not squeeze, squeeze=squeeze)


def check_progress(name: str, progress, inputs: Inputs) -> torch.Tensor:
    """The progress index ``p_t^k``: an integer ``[K, B, T]`` tensor (the shape of ``log_probs``) on their device.

    Metadata only; whether it is non-decreasing along T is a value check (:func:`check_values`).
    """
    if not isinstance(progress, torch.Tensor):
        raise TypeError(f"progress: expected an integer torch.Tensor [K, B, T], got {type(progress).__name__}")
    if progress.dtype == torch.bool or torch.is_floating_point(progress) or torch.is_complex(progress):
        raise TypeError(f"progress: expected an integer tensor (e.g. labels emitted before step t), got dtype {progress.dtype}; convert it with .long()")
    if not inputs.per_step:
        raise ValueError(
            f"progress: {name} aligns steps, so it needs per-step log_weights and log_probs [K, B, T]; "
            f"got per-sample totals (drop progress, or pass the per-step terms)"
        )
    _checks.check_same_shape("progress", progress, "log_probs", inputs.log_probs, "[K, B, T]")
    if progress.device != inputs.log_probs.device:
        raise ValueError(f"progress: is on {progress.device} but log_probs is on {inputs.log_probs.device}; move both to one device")
    return progress


class Alternative(NamedTuple):
    """The other branch of each binary decision, for ``vimco-seq``'s ``lookahead`` stand-in.

    Attributes:
        taken: bool ``[K, B, T]``, the decision that was sampled (True: the positive one, which
            advances ``progress`` by one: for the speech model, emit).
        log_weights: ``[K, B, T]``, the step log weight ``l_t^k`` had the other decision been
            taken at step t (with the same past); read detached. Only steps in ``mask`` are used,
            where both decisions must be possible to the proposal.
        values: optional ``[2, K, B, T]`` (or a zero-argument callable returning it, evaluated
            only by an estimator that reads it): the expected log weight of the steps *after* t
            under the proposal, given ``z^k_{<t}`` and the decision at t (index 0: the positive
            decision, 1: the negative one), from a model that can compute it (the speech model's
            lattice posterior). ``vimco-seq`` with ``values="model"`` builds its lookahead
            stand-ins from them instead of from the other particles' futures. Read detached.
        carries_log_q: True where the log weights are ``log p - log q`` with ``log q`` the
            differentiable ``log_probs`` of a separate proposal (the speech model's posterior), so
            that differentiating the bound through them gives the proposal a score-function term
            of its own; ``vimco-seq``'s ``weight_control="auto"`` (its default) controls that term
            only then. False (the default) for a policy that is its own proposal.
    """

    taken: torch.Tensor
    log_weights: torch.Tensor
    values: Any = None
    carries_log_q: bool = False


def check_alternative(name: str, alternative, inputs: Inputs) -> Alternative:
    """Metadata checks of an :class:`Alternative`: bool ``taken`` and floating ``log_weights`` of
    ``log_probs``' shape ``[K, B, T]``, on its device, ``log_weights`` in its dtype."""
    if not isinstance(alternative, Alternative):
        raise TypeError(f"alternative: expected hardalign.estimators.Alternative(taken, log_weights), got {type(alternative).__name__}")
    if not inputs.per_step:
        raise ValueError(f"alternative: {name} needs per-step log_weights and log_probs [K, B, T] with it; got per-sample totals")
    _checks.check_mask("alternative.taken", alternative.taken, "log_probs", inputs.log_probs, "[K, B, T]", meaning="True: the positive decision was sampled")
    _checks.check_floating("alternative.log_weights", alternative.log_weights)
    _checks.check_same_shape("alternative.log_weights", alternative.log_weights, "log_probs", inputs.log_probs, "[K, B, T]")
    _checks.check_same_device_dtype("alternative.log_weights", alternative.log_weights, "log_weights", inputs.step_log_weights)
    if not isinstance(alternative.carries_log_q, bool):
        raise TypeError(f"alternative.carries_log_q: expected a bool (do the log weights carry -log q?), got {type(alternative.carries_log_q).__name__}")
    return alternative


def alternative_values(name: str, alternative: Alternative, inputs: Inputs) -> torch.Tensor:
    """The checked ``alternative.values`` ``[2, K, B, T]`` (a callable is evaluated here), detached.

    Raises:
        ValueError: the alternative carries no values (the model does not supply them), or they
            have the wrong shape; TypeError: wrong dtype or device.
    """
    values = alternative.values
    if values is None:
        raise ValueError(
            f"alternative.values: {name} with values='model' needs the model's expected future log weights "
            "(Alternative.values [2, K, B, T]); this model does not supply them (use values='others')"
        )
    values = values() if callable(values) else values
    _checks.check_floating("alternative.values", values)
    expected = (2, *inputs.log_probs.shape)
    if tuple(values.shape) != expected:
        raise ValueError(f"alternative.values: expected shape [2, K, B, T] = {list(expected)}, got {list(values.shape)}")
    _checks.check_same_device_dtype("alternative.values", values, "log_weights", inputs.step_log_weights)
    return values.detach()


def check_values(name: str, inputs: Inputs, *, baseline=None, progress=None, impossible_ok: bool) -> None:
    """Opt-in value checks (``check_finite=True``): one host synchronisation, so never on by default.

    * ``log_weights``: no NaN and no ``+inf``; ``-inf`` (an impossible sample, zero weight) only when
      ``impossible_ok`` (the VIMCO variants handle it; the ELBO of REINFORCE/NVIL is then ``-inf``).
    * ``log_probs``: finite on the steps where ``mask`` holds.
    * ``baseline``: finite.
    * ``progress``: non-decreasing along T.

    Raises:
        ValueError: naming the argument, the kind of bad value, how many and where the first is.
    """
    weights = inputs.step_log_weights.detach()
    bad_weights = torch.isnan(weights) | (weights == float("inf"))
    if not impossible_ok:
        bad_weights = bad_weights | (weights == float("-inf"))
    problems = [("log_weights", weights, bad_weights)]
    log_probs = inputs.log_probs.detach()
    problems.append(("log_probs", log_probs, inputs.mask & ~torch.isfinite(log_probs)))
    if isinstance(baseline, torch.Tensor):
        problems.append(("baseline", baseline.detach(), ~torch.isfinite(baseline.detach())))
    for arg, values, bad in problems:
        if bool(bad.any()):  # host sync: this is the opt-in check
            first = [int(i) for i in bad.nonzero()[0]]
            value = float(values[tuple(first)])
            hint = {
                "log_weights": "-inf is a zero-weight (impossible) sample" + (
                    "; this estimator's objective mean_k log w^k would be -inf: use vimco/vimco-seq, or keep impossible samples out"
                    if not impossible_ok and value == float("-inf") else ""),
                "log_probs": "the log-probability of a sampled decision must be finite on the steps that carry a signal (mask them off otherwise)",
                "baseline": "the baseline network's output must be finite",
            }[arg]
            raise ValueError(
                f"{name}: {arg}: has {int(bad.sum())} bad value(s) ({value} at index {first}, of shape "
                f"{_checks.shape_str(values.shape)}); {hint}"
            )
    if progress is not None and progress.shape[-1] > 1:
        decreasing = progress[..., 1:] < progress[..., :-1]
        if bool(decreasing.any()):
            first = [int(i) for i in decreasing.nonzero()[0]]
            raise ValueError(
                f"{name}: progress: must be non-decreasing along T (a count such as labels emitted before step t); "
                f"it decreases after index {first}"
            )


def check_baseline(baseline: torch.Tensor, inputs: Inputs) -> torch.Tensor:
    """NVIL's baseline: ``[K, B]`` (one per sample) or ``[K, B, T]`` (one per step); returned as ``[K, B, T']``."""
    _checks.check_floating("baseline", baseline)
    _checks.check_same_device_dtype("baseline", baseline, "log_weights", inputs.step_log_weights)
    K, B, T = inputs.log_probs.shape
    if baseline.shape == (K, B):
        return baseline.unsqueeze(-1)
    if baseline.shape == (K, B, T) and not inputs.squeeze:
        return baseline
    raise ValueError(
        f"baseline: expected shape [K, B] = {_checks.shape_str((K, B))} (one value per sample) or [K, B, T] = "
        f"{_checks.shape_str((K, B, T))} (one per step), got {_checks.shape_str(baseline.shape)}"
    )


def finish(inputs: Inputs, loss_per_example: torch.Tensor, objective: torch.Tensor, signals: torch.Tensor, stats: dict) -> EstimatorOutput:
    """Mask and detach the signals, add their moments and the mean loss, package the result."""
    signals = torch.where(inputs.mask, signals.detach(), torch.zeros_like(signals)).expand_as(inputs.log_probs)
    count = inputs.mask.sum().clamp_min(1)
    mean = signals.sum() / count
    std = (((signals - mean) ** 2 * inputs.mask).sum() / count).sqrt()
    stats = {"signal_mean": mean, "signal_std": std, **{k: v.detach() for k, v in stats.items()}}
    if inputs.squeeze:
        signals = signals.squeeze(-1)
    return EstimatorOutput(loss=loss_per_example.mean(), objective=objective.detach(), signals=signals, stats=stats)


def effective_sample_size(log_weights: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of ``1 / sum_k softmax(log w)_k^2`` for ``[K, B]`` log weights (between 1 and K).

    ``valid`` (bool ``[B]``) restricts the mean to those examples (0 when there is none).
    """
    normalized = torch.softmax(log_weights.detach(), dim=0)
    per_example = 1.0 / (normalized * normalized).sum(0)  # [B]
    if valid is None:
        return per_example.mean()
    weights = valid.to(per_example.dtype)
    return (per_example * weights).sum() / weights.sum().clamp_min(1)
