"""VIMCO (Mnih & Rezende 2016) and the sequential VIMCO baseline for hard alignments.

Objective: the K-sample bound ``L = log (1/K) sum_k w^k``. The pathwise gradient comes from
differentiating ``L`` through ``log w``; the proposal gets ``sum_k A^k grad log q(z^k)`` with
per-particle signals

* VIMCO: ``A^k = L - L_{-k}``, ``L_{-k} = log((sum_{j != k} w^j + exp(g_{-k})) / K)`` where
  ``g_{-k}`` is the mean of the other particles' log weights (geometric mean of their weights;
  ``loo="arithmetic"`` uses the log of their arithmetic mean instead);
* sequential VIMCO (*reconstructed* from Lawson et al. 2018, see docs/estimators.md): at step
  t the stand-in for particle k keeps its own past and averages the others' futures,
  ``log wbar_k^(t) = sum_{i < t} l_i^k + (1/(K-1)) sum_{j != k} F^j(tau_j)`` with
  ``F^j(s) = sum_{i >= s} l_i^j``, and ``A_t^k = L - log((sum_{j != k} w^j + wbar_k^(t)) / K)``.
  ``align="time"`` takes ``tau_j = t``; ``align="progress"`` takes ``tau_j = #{i : p_i^j < p_t^k}``,
  the step at which j has made the progress k has made before t (labels emitted), from a
  ``progress`` index the model supplies; ``"progress-time"`` matches (progress, frames left)
  (:mod:`hardalign.estimators._align`); ``"fitted"`` blends the time- and progress-aligned
  stand-ins, ``(1 - a) s_time + a s_progress``. ``mix = beta`` replaces the stand-in by
  ``(1 - beta) log wbar_k^(t) + beta g_{-k}``. The module fits ``a`` and ``beta`` on earlier
  batches. The stand-in depends only on ``z^k_{<t}`` and the other particles and the coefficients
  on earlier batches, so every variant is unbiased; at t = 1 the time-aligned form equals VIMCO.
* the lookahead stand-in (binary decisions, an :class:`Alternative` passed): for both branches d
  of step t, ``s_t(d)`` = k's past, step t's log weight under d, and the others' future from where
  they match k after step t (progress ``p_t + d``, or step t + 1 by time); with ``b_t(d) = L_{-k}``
  under ``s_t(d)``, ``A_t^k = L - (q_t(0) b_t(1) + q_t(1) b_t(0))``: the score term of step t is
  then its exact expectation over the step's decision plus the noise of the later steps.
* the future control variate (``future_weight = lambda``, with the lookahead): the later steps'
  noise is what a baseline of step t cannot remove; each later decision's share of it is
  estimated by the lookahead's values ``v_s(d) = b_s(d)`` as the innovation
  ``D_s = v_s(z_s) - (q_s(1) v_s(1) + q_s(0) v_s(0))``, and step t's signal loses
  ``lambda sum_{s > t} D_s``. ``D_s`` has mean 0 given everything before step s (``z_t``
  included), so the estimate stays unbiased for any ``lambda`` that does not depend on the current
  sample; where the values explain the return, ``lambda = 1`` leaves step t only the noise the
  values miss. The module fits ``lambda`` on earlier batches.
* the model's values (``values="model"``, or ``"auto"`` where the :class:`Alternative` carries
  ``values``): the lookahead's stand-ins take k's future after step t from the model, ``s_t(d) =``
  k's past + step t's log weight under d + ``V_{t+1}(d)``, the expected log weight of the later
  steps under q given k's past and d, instead of from the other particles. A model whose steps
  form a lattice computes ``V`` exactly by one backward recursion (the speech model:
  :meth:`hardalign.speech.model.HardAlignmentRecognizer.expected_future_log_weights`); any
  function of ``z^k_{<=t}`` keeps the estimate unbiased, and exact values let the future control
  variate's innovations explain the later steps' noise.

Weight control (``weight_control=True``, both estimators): differentiating ``L`` through
``log w^k = log p - log q(z^k)`` also gives the proposal ``- sum_k wtilde^k grad log q(z^k)``
(``wtilde`` the normalised weights), a score-function term of its own that no baseline above
touches. The option adds the control variate ``c^k grad log q(z^k)`` with ``c^k = wbar /
(sum_{j != k} w^j + wbar)``, the normalised weight the stand-in ``wbar`` would have had in k's
place (zero mean: it depends only on what the stand-in depends on), so each particle's signal
becomes ``L - L_{-k} + c^k``, and its total coefficient ``L - wtilde^k - (L_{-k} - c^k)``, the
same function of the real and of the stand-in log weight. Where the particles agree (a trained
proposal) both parts cancel. Use it only where the log weights carry ``-log q`` with its gradient
(the speech model); where they do not depend on q (a policy that is its own proposal, e.g. the
glimpse models) it only adds noise. ``vimco-seq``'s default ``weight_control="auto"`` decides by
what the model says: on where the ``alternative`` has ``carries_log_q=True``. Its default
``future_control="auto"`` turns the future control variate on where the lookahead's stand-ins
take the model's values. On the speech model the defaults are therefore the values, weight and
future control together, the form measured best (docs/estimators.md).

Impossible samples: a particle with log weight ``-inf`` (an alignment the model rules out, a
legitimate zero-weight sample) is a normal particle: it adds nothing to ``L``, gets no pathwise
gradient and a finite signal. An example whose K particles are *all* impossible has objective
``-inf``; it contributes 0 to the loss (no gradient to anything, its signals are 0) and is counted
in ``stats["impossible_fraction"]`` (the fraction of such examples). The estimate is then unbiased for the
gradient of ``E[log mean_k w^k; some w^k > 0]`` (all-impossible draws counted as 0); for that,
a particle whose others are all impossible gets the baseline ``L_{-k} = 0`` (signal ``L``): any
other value would correlate with the event that the example is dropped.

Everything is O(K) (O(K*T)) in memory, with no loops over particles or steps (the progress forms
sort each example's K*T progress values once); ``log sum_{j != k} w^j`` comes from the stable
leave-one-out log-sum-exp in :mod:`hardalign.estimators._logspace`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hardalign.estimators._align import ALIGNMENTS, alignment_key, exclusive_cumsum, others_future_mean
from hardalign.estimators._baselines import leave_one_out_mean, masked_sums
from hardalign.estimators._inputs import (
    Alternative, EstimatorOutput, Inputs, alternative_values, check_alternative, canonical_inputs, check_progress, check_values, effective_sample_size,
    finish,
)
from hardalign.estimators._logspace import leave_one_out_logsumexp, log_mean_exp
from hardalign.estimators._surrogate import score_function_surrogate

LEAVE_ONE_OUT = ("geometric", "arithmetic")
MIXES = ("none", "running")
VALUES = ("auto", "others", "model")
NEG_INF = float("-inf")


class _Bound(NamedTuple):
    log_weights: torch.Tensor  # [K, B], 0 for all-impossible examples (keeps logsumexp's backward finite)
    bound: torch.Tensor  # [B], differentiable
    impossible: torch.Tensor  # [B] bool: every particle has log weight -inf


def _bound(inputs: Inputs) -> _Bound:
    log_weights = inputs.log_weights  # [K, B], carries the pathwise gradient
    impossible = (log_weights.detach() == NEG_INF).all(0)  # [B]
    safe = torch.where(impossible, torch.zeros_like(log_weights), log_weights)
    return _Bound(safe, log_mean_exp(safe, dim=0), impossible)


def _bound_without(others: torch.Tensor, stand_in: torch.Tensor, num: int) -> torch.Tensor:
    """``L_{-k} = log((exp(others) + exp(stand_in)) / K)``; 0 where every other particle is impossible."""
    bound_without = torch.logaddexp(others, stand_in) - math.log(num)
    return torch.where(others == NEG_INF, torch.zeros_like(bound_without), bound_without)


def _stand_in_weight(others: torch.Tensor, stand_in: torch.Tensor) -> torch.Tensor:
    """``c^k = wbar / (sum_{j != k} w^j + wbar)``, the stand-in's normalised weight; 0 where every
    other particle is impossible (whether the example counts then depends on particle k itself, so
    any other value there would bias the estimate, as for ``L_{-k}``) or the stand-in is."""
    weight = torch.exp(stand_in - torch.logaddexp(others, stand_in))
    return torch.where((others == NEG_INF) | (stand_in == NEG_INF), torch.zeros_like(weight), weight)


def _multi_sample(inputs: Inputs, signals: torch.Tensor, bound: _Bound, extra_stats: dict | None = None) -> EstimatorOutput:
    dropped = bound.impossible[None, :, None]  # [1, B, 1]
    signals = torch.where(dropped, torch.zeros_like(signals), signals)
    surrogate = score_function_surrogate(signals, inputs.log_probs, inputs.mask).sum(0)  # [B]
    loss = torch.where(bound.impossible, torch.zeros_like(surrogate), -(bound.bound + surrogate))
    objective = torch.where(bound.impossible, torch.full_like(bound.bound, NEG_INF), bound.bound)
    stats = {
        "ess": effective_sample_size(bound.log_weights, valid=~bound.impossible),
        "impossible_fraction": bound.impossible.to(signals.dtype).mean(),
        **(extra_stats or {}),
    }
    return finish(inputs, loss, objective, signals, stats)


def _check(name: str, inputs: Inputs, check_finite: bool, progress=None) -> None:
    if check_finite:
        check_values(name, inputs, progress=progress, impossible_ok=True)


def vimco_loss(
    log_weights: torch.Tensor,
    log_probs: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    loo: str = "geometric",
    weight_control: bool = False,
    check_finite: bool = False,
) -> EstimatorOutput:
    """VIMCO surrogate loss: ``-mean_b (L + sum_k stopgrad(A^k) sum_t (log q_t^k - stopgrad(log q_t^k)))``.

    Args:
        log_weights: per-step ``[K, B, T]`` or totals ``[K, B]`` (only ``log w^k = sum_t l_t^k`` is used);
            ``-inf`` marks an impossible sample (see the module docstring).
        log_probs: ``[K, B, T]`` or ``[K, B]``.
        mask: bool, shape of ``log_probs``.
        loo: ``"geometric"`` (the paper's) or ``"arithmetic"`` stand-in for the left-out weight.
        weight_control: add the stand-in's normalised weight to each signal (module docstring).
        check_finite: value checks (a host sync): NaN or ``+inf`` log weights, or non-finite
            ``log_probs`` on masked-in steps, raise a ValueError naming the argument.

    Returns:
        :class:`EstimatorOutput` with ``objective`` the K-sample bound ``[B]`` and ``stats``
        ``ess``, ``impossible_fraction`` (fraction of examples whose particles are all impossible).

    Raises:
        ValueError: K < 2, an unknown ``loo``, bad values with ``check_finite``.

    Example:
        >>> lw = torch.tensor([[0.0], [2.0]])  # K=2, B=1
        >>> out = vimco_loss(lw, torch.zeros(2, 1, requires_grad=True))
        >>> [round(a, 4) for a in out.signals[:, 0].tolist()]  # L - L_{-k}, L = log((1 + e^2) / 2)
        [-0.5662, 1.4338]
        >>> lw = torch.tensor([[0.0, float("-inf")], [2.0, float("-inf")]])  # example 2: both impossible
        >>> out = vimco_loss(lw, torch.zeros(2, 2, requires_grad=True))
        >>> [round(v, 4) for v in out.objective.tolist()], round(out.loss.item(), 4), out.stats["impossible_fraction"].item()
        ([1.4338, -inf], -0.7169, 0.5)
    """
    inputs = canonical_inputs("vimco", log_weights, log_probs, mask, min_samples=2)
    _check("vimco", inputs, check_finite)
    return _vimco(inputs, loo, weight_control)


def _plain_stand_in(log_weights: torch.Tensor, others: torch.Tensor, loo: str) -> torch.Tensor:
    """VIMCO's stand-in for the left-out log weight, ``[K, B]``."""
    if loo == "geometric":
        return leave_one_out_mean(log_weights, dim=0)  # g_{-k}
    return others - math.log(log_weights.shape[0] - 1)


def _vimco(inputs: Inputs, loo: str, weight_control: bool = False) -> EstimatorOutput:
    if loo not in LEAVE_ONE_OUT:
        raise ValueError(f"vimco: loo must be one of {list(LEAVE_ONE_OUT)}, got {loo!r}")
    bound = _bound(inputs)
    log_weights = bound.log_weights.detach()  # [K, B]
    others = leave_one_out_logsumexp(log_weights, dim=0)  # log sum_{j != k} w^j
    stand_in = _plain_stand_in(log_weights, others, loo)
    bound_without = _bound_without(others, stand_in, log_weights.shape[0])  # L_{-k}, [K, B]
    signals = bound.bound.detach() - bound_without
    if weight_control:
        signals = signals + _stand_in_weight(others, stand_in)
    signals = signals.unsqueeze(-1)  # same at every step: [K, B, 1]
    return _multi_sample(inputs, signals.expand_as(inputs.log_probs), bound)


def _convex(a: torch.Tensor, b: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``(1 - beta) a + beta b`` without ``0 * -inf`` at beta = 0 or 1."""
    mixed = (1 - beta) * a + beta * b
    return torch.where(beta == 0, a, torch.where(beta == 1, b, mixed))


def sequential_vimco_loss(
    log_weights: torch.Tensor,
    log_probs: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    progress: torch.Tensor | None = None,
    align: str = "progress",
    mix: torch.Tensor | float = 0.0,
    progress_weight: torch.Tensor | float = 0.5,
    weight_control: bool | str = "auto",
    alternative: Alternative | None = None,
    future_weight: torch.Tensor | float = 0.0,
    values: str = "auto",
    check_finite: bool = False,
) -> EstimatorOutput:
    """Sequential VIMCO: per-step signals ``A_t^k = L - L_{-k}^(t)`` (see the module docstring).

    With per-sample totals ``[K, B]`` there is no step structure and this equals :func:`vimco_loss`.

    Args:
        log_weights: per-step log weights ``[K, B, T]`` (or totals ``[K, B]``); ``-inf`` steps mark
            impossible samples.
        log_probs: ``[K, B, T]`` (or ``[K, B]``).
        mask: bool, shape of ``log_probs``.
        progress: integer ``[K, B, T]``, non-decreasing along T, a function of ``z^k_{<t}`` (for the
            speech model: labels emitted before step t). None: ``p_t = t``, the time-aligned form.
        align: ``"time"`` (ignore ``progress``), ``"progress"`` (match the others' futures on
            progress), ``"progress-time"`` (on progress, then on frames left) or ``"fitted"``
            (``(1 - a) s_time + a s_progress`` with ``a = progress_weight``).
        mix: ``beta`` in [0, 1]: the stand-in is ``(1 - beta) log wbar_k^(t) + beta g_{-k}`` (0: the
            per-step stand-in, 1: VIMCO's geometric one). Unbiased for any beta that does not
            depend on the current sample (the module estimates it from earlier batches).
        progress_weight: ``a`` in [0, 1] for ``align="fitted"`` (the module fits it on earlier batches).
        weight_control: add the per-step stand-in's normalised weight to each signal (module
            docstring); ``"auto"`` (the default): where an ``alternative`` says the log weights
            carry ``-log q`` (``Alternative.carries_log_q``).
        alternative: for binary decisions, the sampled decision and the step log weight of the
            other one (:class:`Alternative`): the baseline then looks one decision ahead (the
            lookahead stand-in, module docstring). With ``progress``, the positive decision
            advances it by one.
        future_weight: ``lambda`` in [0, 1], with an ``alternative`` only: step t's signal also
            loses ``lambda`` times the later steps' innovations (the future control variate,
            module docstring); 0: off. Unbiased for any lambda that does not depend on the
            current sample (the module fits it on earlier batches).
        values: with an ``alternative``, where the lookahead's stand-ins take particle k's
            future from: ``"others"`` (the other particles' average future from the matched
            progress), ``"model"`` (``alternative.values``, the model's expected log weight of
            the later steps given k's past and decision; ``align`` and ``progress_weight`` then
            do not apply) or ``"auto"`` (the default): ``"model"`` where the alternative carries
            values, ``"others"`` where it does not.
        check_finite: value checks (a host sync): NaN or ``+inf`` log weights, non-finite
            ``log_probs`` on masked-in steps or a decreasing ``progress`` raise a ValueError.

    Returns:
        :class:`EstimatorOutput` with ``objective`` the K-sample bound ``[B]``.

    Raises:
        ValueError: K < 2, an unknown ``align``, a ``progress`` of the wrong shape or device, a
            coefficient outside [0, 1]; TypeError: a ``progress`` that is not an integer tensor.

    Example:
        >>> lw = torch.tensor([[[0.0, 1.0]], [[2.0, -1.0]]])  # K=2, B=1, T=2
        >>> out = sequential_vimco_loss(lw, torch.zeros(2, 1, 2, requires_grad=True))
        >>> out.signals.shape
        torch.Size([2, 1, 2])
        >>> labels = torch.tensor([[[0, 1]], [[0, 0]]])  # labels emitted before each step
        >>> sequential_vimco_loss(lw, torch.zeros(2, 1, 2), progress=labels).signals.shape
        torch.Size([2, 1, 2])
    """
    inputs = canonical_inputs("vimco-seq", log_weights, log_probs, mask, min_samples=2)
    progress = _progress_for(align, progress, inputs)
    _check("vimco-seq", inputs, check_finite, progress)
    for name, value in (("mix", mix), ("progress_weight", progress_weight), ("future_weight", future_weight)):
        if not isinstance(value, torch.Tensor) and not 0.0 <= value <= 1.0:
            raise ValueError(f"vimco-seq: {name} must be in [0, 1], got {value}")
    if values not in VALUES:
        raise ValueError(f"vimco-seq: values must be one of {list(VALUES)}, got {values!r}")
    _check_switch("weight_control", weight_control)
    model_values = None
    if alternative is not None:
        alternative = check_alternative("vimco-seq", alternative, inputs)
        model_values = _model_values(values, alternative, inputs)
    future = future_weight if isinstance(future_weight, torch.Tensor) or future_weight != 0.0 else None
    return _sequential_vimco(
        inputs, progress, align, mix, progress_weight, weight_control=_weight_control_for(weight_control, alternative), alternative=alternative,
        future=future, model_values=model_values,
    )[0]


def _check_switch(name: str, value) -> None:
    if not (isinstance(value, bool) or value == "auto"):
        raise ValueError(f"vimco-seq: {name} must be true, false or 'auto', got {value!r}")


def _weight_control_for(weight_control, alternative: Alternative | None) -> bool:
    """Whether weight control applies: as configured, or (``"auto"``) where an alternative says the
    log weights carry ``-log q`` (the proposal's share of the pathwise gradient it controls)."""
    if weight_control == "auto":
        return alternative is not None and bool(alternative.carries_log_q)
    return bool(weight_control)


def _model_values(values: str, alternative: Alternative, inputs: Inputs) -> torch.Tensor | None:
    """The checked model values the lookahead's stand-ins take (``values="model"``, or ``"auto"``
    where the alternative carries them), or None where they take the others' futures."""
    if values == "model" or (values == "auto" and alternative.values is not None):
        return alternative_values("vimco-seq", alternative, inputs)
    return None


def _progress_for(align: str, progress, inputs: Inputs):
    """The checked progress index, or None when the alignment does not use it."""
    if align not in ALIGNMENTS:
        raise ValueError(f"vimco-seq: align must be one of {list(ALIGNMENTS)}, got {align!r}")
    if progress is None or align == "time":
        return None
    return check_progress("vimco-seq", progress, inputs)


def _sequential_vimco(
    inputs: Inputs, progress, align: str, mix, progress_weight=0.5, *, fit: bool = False, weight_control: bool = False,
    alternative: Alternative | None = None, future=None, fit_future: bool = False, model_values: torch.Tensor | None = None,
):
    """The estimate and, with ``fit``, the batch sums for the running least-squares fit of the
    coefficients (:func:`_fit_sums`; None without ``fit`` or with per-sample totals). With an
    ``alternative``, the lookahead stand-ins (:func:`_cross_weighted`); with ``future`` (lambda),
    the future control variate, and with ``fit_future`` the batch sums for lambda's fit. With
    ``model_values`` ``[2, K, B, T]``, the lookahead's stand-ins take k's future from them."""
    if not inputs.per_step:
        return _vimco(inputs, "geometric", weight_control), None, None
    bound = _bound(inputs)
    log_weights = bound.log_weights.detach()  # [K, B]
    steps = torch.where(bound.impossible[None, :, None], torch.zeros_like(inputs.step_log_weights), inputs.step_log_weights)
    steps = steps.detach()  # [K, B, T]
    num, _, length = steps.shape
    like = dict(dtype=steps.dtype, device=steps.device)
    stats = {}
    weight = torch.as_tensor(progress_weight, **like).clamp(0, 1)
    if align == "fitted" and model_values is None:
        stats["progress_weight"] = weight
    plain = leave_one_out_mean(log_weights, dim=0).unsqueeze(-1)  # g_{-k}, [K, B, 1]
    configured_mix = isinstance(mix, torch.Tensor) or mix != 0.0
    if configured_mix:  # a stats key only where a mix is configured
        mix = torch.as_tensor(mix, **like).clamp(0, 1)
        stats["mix_coefficient"] = mix
    others = leave_one_out_logsumexp(log_weights, dim=0).unsqueeze(-1)  # independent of t: [K, B, 1]

    def stand_ins(own_past, future):
        """``(base, alternative or None, stand-in)`` from k's own past and ``future(key)``,
        the others' average future: the fitted blend, then the mix with VIMCO's stand-in."""
        if align == "fitted":  # the base is the time-aligned stand-in, the alternative the progress-aligned one
            base = own_past + future(None)
            other = base if progress is None else own_past + future(alignment_key(progress, "progress", length))
            stand_in = _convex(base, other, weight)
        else:
            base = stand_in = own_past + future(alignment_key(progress, align, length))
            other = None
        return base, other, (_convex(stand_in, plain, mix) if configured_mix else stand_in)

    valid = inputs.mask & ~bound.impossible[None, :, None]
    if alternative is None:
        base, other, stand_in = stand_ins(exclusive_cumsum(steps), lambda key: others_future_mean(steps, key))  # log wbar_k^(t)
        baseline = _branch_value(others, stand_in, num, weight_control)
    else:  # both branches at once, [2, K, B, T]: index 0 the positive decision, 1 the negative one
        taken = alternative.taken
        other_step = alternative.log_weights.detach()
        own_past = exclusive_cumsum(steps) + torch.stack([torch.where(taken, steps, other_step), torch.where(taken, other_step, steps)])
        if model_values is None:
            base, other, branch_stand_ins = stand_ins(own_past, _future_after_step(steps, progress, align))
        else:  # the model's expected future: no alignment of the others' futures, nothing to fit for it
            base = branch_stand_ins = own_past + model_values
            other = None
            if configured_mix:
                branch_stand_ins = _convex(branch_stand_ins, plain, mix)
        # the sampled branch's stand-ins feed the running fit
        base, other = (None if x is None else torch.where(taken, x[0], x[1]) for x in (base, other))
        q_positive = torch.exp(inputs.log_probs.detach())
        q_positive = torch.where(taken, q_positive, 1 - q_positive)  # q_t(1), detached
        value_positive, value_negative = (_branch_value(others, branch, num, weight_control) for branch in branch_stand_ins.unbind(0))
        # the same cross weights keep the weight-control term independent of the step's decision
        baseline = _cross_weighted(value_positive, value_negative, q_positive)
    sums = _fit_sums(log_weights, base, other, plain, valid) if fit else None
    signals = bound.bound.detach()[None, :, None] - baseline  # [K, B, T]
    future_sums = None
    if alternative is not None and future is not None:
        later = _later_innovations(value_positive, value_negative, taken, q_positive, valid)
        future_sums = masked_sums([torch.where(valid, signals, torch.zeros_like(signals)) * later, later * later], valid) if fit_future else None
        signals = signals - torch.as_tensor(future, **like).clamp(0, 1) * later
        stats["future_coefficient"] = torch.as_tensor(future, **like)
    return _multi_sample(inputs, signals, bound, stats), sums, future_sums


def _branch_value(others: torch.Tensor, stand_in: torch.Tensor, num: int, weight_control: bool) -> torch.Tensor:
    """The baseline a stand-in gives: ``L_{-k}``, less the stand-in's normalised weight ``c^k`` with
    weight control (the signal is then ``L - L_{-k} + c^k``)."""
    value = _bound_without(others, stand_in, num)
    return value - _stand_in_weight(others, stand_in) if weight_control else value


def _later_innovations(value_positive, value_negative, taken, q_positive, valid) -> torch.Tensor:
    """``sum_{s > t} D_s`` with ``D_s = v_s(z_s) - (q_s(1) v_s(1) + q_s(0) v_s(0))``, ``[K, B, T]``:
    how much better each later decision of particle k turned out than its expectation under q, in
    the lookahead's values ``v_s(d)``. Each ``D_s`` has mean 0 given everything before step s, which
    includes ``z_t`` for every ``t < s``, so subtracting the sum (times any coefficient fitted on
    earlier batches) from step t's signal leaves the estimate unbiased; where the values explain the
    return, it removes the later steps' noise, which no baseline of step t can."""
    realised = torch.where(taken, value_positive, value_negative)
    expected = q_positive * value_positive + (1 - q_positive) * value_negative
    innovation = realised - expected
    innovation = torch.where(valid & torch.isfinite(innovation), innovation, torch.zeros_like(innovation))
    return innovation.flip(-1).cumsum(-1).flip(-1) - innovation


def _future_after_step(steps, progress, align: str):
    """``future(key)`` for the lookahead: the others' average future from where they match particle
    k *after* step t, for k's positive and negative decision at t, ``[2, K, B, T]`` (progress
    ``p_t + 1`` and ``p_t``; one sort serves both), or ``[K, B, T]`` by time (from step t + 1,
    0 past the end; the same for both branches)."""
    length = steps.shape[-1]
    by_time = F.pad(others_future_mean(steps, None)[..., 1:], (0, 1))

    def future(key):
        if key is None:
            return by_time
        after = progress.unsqueeze(0) + torch.tensor([1, 0], device=progress.device, dtype=progress.dtype).view(2, 1, 1, 1)
        if align == "progress-time":  # (progress, then time) after the step: time t + 1
            time = torch.arange(length, device=progress.device, dtype=progress.dtype)
            return others_future_mean(steps, key, after * (length + 1) + time + 1)
        return others_future_mean(steps, key, after)

    return future


def _cross_weighted(positive: torch.Tensor, negative: torch.Tensor, q_positive: torch.Tensor) -> torch.Tensor:
    """The lookahead baseline ``q_t(0) b_t(1) + q_t(1) b_t(0)`` from the two branches' values
    (``b_t(d) = L_{-k}`` with particle k's stand-in after step t had it decided d). The cross
    weights make it the variance-optimal decision-independent baseline where ``L`` is explained
    by the decision (``L = b(z)``: the score-function term is then ``(b(1) - b(0)) grad q_t(1)``
    whichever decision was drawn, the step's exact expectation). It depends on ``z^k_{<t}``, the
    step's probabilities and the other particles only, so the estimate stays unbiased."""
    return (1 - q_positive) * positive + q_positive * negative


def _fit_sums(log_weights, base, other, plain, mask) -> torch.Tensor:
    """Masked sums ``[count, r d1, r d2, d1^2, d2^2, d1 d2]`` over finite entries, with ``r = log w^k - s``,
    ``d1 = s_other - s``, ``d2 = g_{-k} - s`` (``s`` the base stand-in; ``d1 = 0`` without an
    alternative): the normal equations of the least-squares fit of ``log w^k`` by
    ``s + c1 d1 + c2 d2``. Summed across ``torch.distributed`` ranks."""
    residual = log_weights.unsqueeze(-1) - base
    towards_other = torch.zeros_like(base) if other is None else other - base
    towards_plain = plain - base
    valid = mask & torch.isfinite(residual) & torch.isfinite(towards_other) & torch.isfinite(towards_plain)
    zero = torch.zeros_like(residual)
    r, d1, d2 = (torch.where(valid, x, zero) for x in (residual, towards_other, towards_plain))
    return masked_sums([r * d1, r * d2, d1 * d1, d2 * d2, d1 * d2], valid)


class VIMCO(nn.Module):
    """VIMCO (K >= 2), stateless; ``loo`` selects the geometric (default) or arithmetic stand-in.

    Call: ``est(log_weights, log_probs, mask=None, *, baseline=None, progress=None)``; a baseline
    tensor is refused (the baseline comes from the other particles) and ``progress`` is ignored
    (one signal per particle, so step alignment does not matter).

    Example:
        >>> VIMCO()(torch.randn(4, 3), torch.randn(4, 3, requires_grad=True)).objective.shape
        torch.Size([3])
    """

    def __init__(self, *, loo: str = "geometric", weight_control: bool = False, check_finite: bool = False):
        super().__init__()
        if loo not in LEAVE_ONE_OUT:
            raise ValueError(f"vimco: loo must be one of {list(LEAVE_ONE_OUT)}, got {loo!r}")
        self.loo, self.weight_control, self.check_finite = loo, bool(weight_control), check_finite

    @property
    def takes_baseline(self) -> bool:
        """Always False: the baseline is built from the other particles."""
        return False

    def extra_repr(self) -> str:
        return f"loo={self.loo!r}" + (", weight_control=True" if self.weight_control else "")

    def forward(self, log_weights, log_probs, mask=None, *, baseline=None, progress=None, alternative=None) -> EstimatorOutput:
        if baseline is not None:
            raise ValueError("vimco: takes no baseline tensor (its baseline is built from the other particles); pass baseline=None")
        return vimco_loss(log_weights, log_probs, mask, loo=self.loo, weight_control=self.weight_control, check_finite=self.check_finite)


class SequentialVIMCO(nn.Module):
    """Sequential VIMCO (K >= 2): per-step leave-one-out baselines for long sequences.

    Call: ``est(log_weights, log_probs, mask=None, *, baseline=None, progress=None, alternative=None)``;
    a baseline tensor is refused. ``progress`` (integer ``[K, B, T]``, e.g. labels emitted before
    step t) aligns the others' futures when ``align`` is not ``"time"``; without it, steps match by
    time. ``alternative`` (:class:`Alternative`, binary decisions) turns on the lookahead stand-in.

    Args:
        align: ``"fitted"`` (default): ``(1 - a) s_time + a s_progress``, ``a`` fitted on earlier
            batches (time-aligned without a ``progress`` tensor); or a fixed alignment,
            ``"progress"``, ``"progress-time"`` or ``"time"`` (see :func:`sequential_vimco_loss`).
            The default was chosen by measurement: on the benchmark's label-structured problems
            the fitted blend is within a few percent of the best fixed form on each, while the
            best fixed form changes from problem to problem (``docs/estimators.md``).
        mix: ``"none"`` (the per-step stand-in) or ``"running"``: a convex combination
            ``(1 - beta) s + beta g_{-k}`` with VIMCO's stand-in, ``beta`` fitted on earlier batches.
        decay: the running means' decay for the fitted coefficients.
        weight_control: add the stand-in's normalised weight to each signal, a control variate for
            the proposal's share of the pathwise gradient (module docstring; only where the log
            weights carry ``-log q``). ``"auto"`` (the default): on where the call's
            ``alternative`` says they do (``Alternative.carries_log_q``; the speech model's
            posterior proposal), off elsewhere (e.g. a policy that is its own proposal).
        lookahead: use an ``alternative`` when the caller passes one: the stand-in weighs both
            branches of each step's decision (module docstring). Measured on the speech model at
            initialisation, K = 4: 0.70x VIMCO's variance against 0.75x without (``docs/estimators.md``).
        future_control: with the lookahead, also subtract the later steps' innovations from each
            step's signal (the future control variate, module docstring), scaled by a coefficient
            ``lambda`` fitted on earlier batches. ``"auto"`` (the default): on where the lookahead's
            stand-ins take the model's values (it needs good values: with the others' futures
            it raised the speech model's variance in one of the measured rows).
        values: where the lookahead's stand-ins take particle k's future from: ``"others"`` (the
            other particles' average future from the matched progress), ``"model"`` (the model's
            expected log weight of the later steps under the proposal, given k's past and
            decision: ``Alternative.values``; the speech model computes it exactly on its lattice
            posterior, see docs/estimators.md) or ``"auto"`` (the default): ``"model"`` where the
            alternative carries values, ``"others"`` where it does not.
        check_finite: value checks on every call (a host sync), see :func:`sequential_vimco_loss`.

    The fitted coefficients are the least-squares fit of ``log w^k`` (the value of the stand-in
    that would make the signal 0) by ``s + c1 (s_progress - s) + c2 (g_{-k} - s)`` from running
    means of the normal equations' sums (buffer ``fit_moments``: ``r d1, r d2, d1^2, d2^2, d1 d2``,
    decay ``decay``, updated after use in training mode, summed across ranks), clamped to
    [0, 1]: ``beta = c2``, ``a = c1 / (1 - beta)``. Before the first update ``a = 0.5``, ``beta = 0``.
    ``stats`` reports them as ``progress_weight`` and ``mix_coefficient``. With ``future_control``,
    ``lambda`` is the least-squares fit of the signal by the later innovations, ``E[A F] / E[F^2]``
    (buffer ``future_moments``, the same running means), clamped to [0, 1], 0.5 before the first
    update; ``stats["future_coefficient"]``. Coefficients from earlier batches do not depend on the
    current sample, so the estimate stays unbiased.

    Example:
        >>> est = SequentialVIMCO(mix="running")
        >>> est(torch.randn(4, 3, 7), torch.randn(4, 3, 7, requires_grad=True)).signals.shape
        torch.Size([4, 3, 7])
        >>> [0.0 <= float(c) <= 1.0 for c in est.coefficients()]
        [True, True]
    """

    def __init__(
        self, *, align: str = "fitted", mix: str = "none", decay: float = 0.9, weight_control: bool | str = "auto", lookahead: bool = True,
        future_control: bool | str = "auto", values: str = "auto", check_finite: bool = False,
    ):
        super().__init__()
        if align not in ALIGNMENTS:
            raise ValueError(f"vimco-seq: align must be one of {list(ALIGNMENTS)}, got {align!r}")
        if mix not in MIXES:
            raise ValueError(f"vimco-seq: mix must be one of {list(MIXES)}, got {mix!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"vimco-seq: decay must be in [0, 1), got {decay}")
        _check_switch("weight_control", weight_control)
        _check_switch("future_control", future_control)
        if future_control is True and not lookahead:
            raise ValueError("vimco-seq: future_control=True needs lookahead=True (its innovations are the lookahead's branch values)")
        if values not in VALUES:
            raise ValueError(f"vimco-seq: values must be one of {list(VALUES)}, got {values!r}")
        if values == "model" and not lookahead:
            raise ValueError("vimco-seq: values='model' needs lookahead=True (the values are the lookahead's branch futures)")
        self.values = values
        self.align, self.mix, self.decay, self.check_finite = align, mix, decay, check_finite
        self.weight_control, self.future_control = weight_control, future_control
        self.lookahead = bool(lookahead)
        self.register_buffer("fit_moments", torch.zeros(5, dtype=torch.float64))
        self.register_buffer("future_moments", torch.zeros(2, dtype=torch.float64))  # E[A F], E[F^2]

    @property
    def takes_baseline(self) -> bool:
        """Always False: the baseline is built from the other particles."""
        return False

    def extra_repr(self) -> str:
        fitted = self.mix == "running" or self.align == "fitted"
        return (
            f"align={self.align!r}, mix={self.mix!r}" + (f", decay={self.decay}" if fitted else "")
            + (f", weight_control={self.weight_control!r}" if self.weight_control != "auto" else "") + ("" if self.lookahead else ", lookahead=False")
            + (f", future_control={self.future_control!r}" if self.future_control != "auto" else "")
            + (f", values={self.values!r}" if self.values != "auto" else "")
        )

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, beta)`` for the next call: the progress weight (``align="fitted"``) and the mix
        coefficient (``mix="running"``) from the running least-squares fit (see the class docstring)."""
        rd1, rd2, d11, d22, d12 = self.fit_moments.unbind()
        zero = torch.zeros_like(rd1)
        fitted, running = self.align == "fitted", self.mix == "running"
        # one-coefficient fits; 0 (beta) or 0.5 (a) while there is no data
        a = torch.where(d11 > 0, rd1 / d11.clamp_min(1e-300), zero + 0.5) if fitted else zero + 0.5
        beta = torch.where(d22 > 0, rd2 / d22.clamp_min(1e-300), zero) if running else zero
        if fitted and running:  # the joint fit where the 2 x 2 normal equations are well conditioned
            det = d11 * d22 - d12 * d12
            solvable = det > 1e-9 * d11 * d22
            c1 = (rd1 * d22 - rd2 * d12) / torch.where(solvable, det, zero + 1)
            c2 = (rd2 * d11 - rd1 * d12) / torch.where(solvable, det, zero + 1)
            beta = torch.where(solvable, c2, beta).clamp(0, 1)
            a = torch.where(solvable & (beta < 1), c1 / (1 - beta).clamp_min(1e-12), a)
        return a.clamp(0, 1), beta.clamp(0, 1)

    def future_coefficient(self) -> torch.Tensor:
        """``lambda`` for the next call (``future_control``): ``E[A F] / E[F^2]`` from the running
        means, clamped to [0, 1]; 0.5 while there is no data."""
        signal_times_future, future_squared = self.future_moments.unbind()
        fitted = signal_times_future / future_squared.clamp_min(1e-300)
        return torch.where(future_squared > 0, fitted, torch.full_like(fitted, 0.5)).clamp(0, 1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the fitted coefficients existed hold no fit_moments: start afresh
        state_dict.setdefault(prefix + "fit_moments", torch.zeros_like(self.fit_moments))
        state_dict.setdefault(prefix + "future_moments", torch.zeros_like(self.future_moments))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, log_weights, log_probs, mask=None, *, baseline=None, progress=None, alternative=None) -> EstimatorOutput:
        if baseline is not None:
            raise ValueError("vimco-seq: takes no baseline tensor (its baseline is built from the other particles); pass baseline=None")
        inputs = canonical_inputs("vimco-seq", log_weights, log_probs, mask, min_samples=2)
        progress = _progress_for(self.align, progress, inputs)
        _check("vimco-seq", inputs, self.check_finite, progress)
        like = dict(dtype=inputs.step_log_weights.dtype, device=inputs.step_log_weights.device)
        weight, beta = (c.to(**like) for c in self.coefficients())
        if alternative is not None:
            alternative = check_alternative("vimco-seq", alternative, inputs)
        weight_control = _weight_control_for(self.weight_control, alternative)  # the lookahead need not be on for it
        alternative = alternative if self.lookahead else None
        model_values = None if alternative is None else _model_values(self.values, alternative, inputs)
        future_control = model_values is not None if self.future_control == "auto" else self.future_control
        future = self.future_coefficient().to(**like) if future_control and alternative is not None else None
        fits_align = self.align == "fitted" and progress is not None and model_values is None
        learn = self.training and (self.mix == "running" or fits_align)
        out, sums, future_sums = _sequential_vimco(
            inputs, progress, self.align, beta if self.mix == "running" else 0.0, weight, fit=learn,
            weight_control=weight_control, alternative=alternative, future=future, fit_future=self.training and future is not None, model_values=model_values,
        )
        # running means, updated after use so the coefficients never see the current sample
        if sums is not None:
            self._update(self.fit_moments, sums)
        if future_sums is not None:
            self._update(self.future_moments, future_sums)
        return out

    def _update(self, moments: torch.Tensor, sums: torch.Tensor) -> None:
        """Running means of batch sums ``[count, ...]``; a batch with no usable step leaves them
        alone (no host sync)."""
        sums = sums.to(moments)
        means = sums[1:] / sums[0].clamp_min(1)
        moments.copy_(torch.where(sums[0] > 0, self.decay * moments + (1.0 - self.decay) * means, moments))
