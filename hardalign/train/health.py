"""The training health report: one-line warnings, with the numbers, when a run is stalling.

The trainer feeds a :class:`HealthMonitor` the training terms it already averaged at each log
interval (host floats: no extra device sync) and the metrics of each evaluation. The monitor
warns once per *onset* of a condition (when it has held for its patience; again only after it
has cleared and come back):

========================  ========================================================================
``emission_collapse``     the proposal emits almost only where forced: ``free_emit_rate`` (the
                          emission rate at sampled steps) < ``emit_low`` x ``emit_rate`` (the
                          rate over all valid steps, which for the speech model is the data's
                          labels per step: every label and EOS is emitted, forced if need be).
``emission_explosion``    the proposal emits at nearly every step until the labels run out:
                          ``free_emit_rate`` > ``min(emit_high x r, (1 + r) / 2)``, r = ``emit_rate``.
``ess_at_one``            the K particles' effective sample size ``ess`` (1..K) stays within
                          ``ess_fraction`` x (K - 1) of 1 for ``ess_patience`` log intervals: one
                          particle carries all the weight.
``no_improvement``        the dev metric (the task's ``metrics_to_minimize``, else
                          ``metrics_to_maximize``, else a ``bound``/``elbo``/``accuracy``, maximised)
                          has not improved by ``plateau_min_rel`` of its best value for
                          ``plateau_evals`` evaluations.
``entropy_collapse``      within the first ``entropy_early_steps`` steps, the proposal's ``entropy``
                          falls below ``entropy_fraction`` of its first logged value.
``grad_explosion``        ``grad_norm`` exceeds ``grad_factor`` x the median of its first
                          ``grad_reference`` logged values.
========================  ========================================================================

A check whose terms a run does not log is skipped (the SBN logs no emission rate). Log intervals
with a nonzero ``warmup`` term (the speech model's ``ctc_warmup`` stage) and the evaluations made
during them are not checked and set no reference; the early-step windows count from their end. What to do
about each warning: ``recipes/timit/README.md`` ("When training stalls: the health report") and
``docs/training.md`` ("Training health").

Example:
    >>> monitor = HealthMonitor(num_samples=4, thresholds=HealthThresholds(emit_patience=2))
    >>> monitor.observe_train(10, {"emit_rate": 0.35, "free_emit_rate": 0.33})
    []
    >>> monitor.observe_train(20, {"emit_rate": 0.35, "free_emit_rate": 0.01})
    []
    >>> [w.name for w in monitor.observe_train(30, {"emit_rate": 0.35, "free_emit_rate": 0.01})]
    ['emission_collapse']
    >>> monitor.observe_train(40, {"emit_rate": 0.35, "free_emit_rate": 0.01})  # once per onset
    []
"""

from __future__ import annotations

import math
import statistics
import weakref
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["HealthThresholds", "HealthWarning", "HealthMonitor", "watched_metric", "check_train", "check_eval"]

#: Where each task's users read what to do about a warning.
ADVICE = {
    "timit": 'recipes/timit/README.md, "When training stalls: the health report"',
}
DEFAULT_ADVICE = 'docs/training.md, "Training health"'

#: Dev metrics that are maximised when a task declares neither direction.
MAXIMISED = ("bound", "elbo", "accuracy")


@dataclass(frozen=True)
class HealthThresholds:
    """When each check fires (defaults are the trainer's; see the module docstring).

    Attributes:
        emit_low: collapse when ``free_emit_rate < emit_low * emit_rate``.
        emit_high: explosion when ``free_emit_rate > min(emit_high * emit_rate, (1 + emit_rate) / 2)``.
        emit_patience: consecutive log intervals an emission condition must hold.
        ess_fraction: ``ess`` counts as 1 when ``ess - 1 <= ess_fraction * (K - 1)``.
        ess_patience: consecutive log intervals of ESS at 1 before the warning.
        plateau_evals: evaluations without improvement before the warning.
        plateau_min_rel: an improvement must beat the best value by this fraction of its size.
        entropy_fraction: entropy collapse below this fraction of the first logged entropy.
        entropy_early_steps: the entropy check watches only the steps up to this one.
        entropy_patience: consecutive log intervals the entropy must stay collapsed.
        grad_factor: gradient explosion above this multiple of the reference gradient norm.
        grad_reference: the reference is the median of this many first logged ``grad_norm``.
    """

    emit_low: float = 0.25
    emit_high: float = 2.5
    emit_patience: int = 3
    ess_fraction: float = 0.05
    ess_patience: int = 10
    plateau_evals: int = 5
    plateau_min_rel: float = 0.01
    entropy_fraction: float = 0.01
    entropy_early_steps: int = 1000
    entropy_patience: int = 3
    grad_factor: float = 100.0
    grad_reference: int = 5

    def __post_init__(self) -> None:
        for name in ("emit_patience", "ess_patience", "plateau_evals", "entropy_patience", "grad_reference"):
            if getattr(self, name) < 1:
                raise ValueError(f"HealthThresholds: {name}={getattr(self, name)} must be >= 1")
        if not 0.0 < self.emit_low < 1.0 < self.emit_high:
            raise ValueError(f"HealthThresholds: need 0 < emit_low < 1 < emit_high, got {self.emit_low}, {self.emit_high}")


@dataclass(frozen=True)
class HealthWarning:
    """One warning: its name, the step, the numbers behind it and the one-line message."""

    name: str
    step: int
    numbers: dict[str, float]
    message: str

    def record(self) -> dict[str, Any]:
        """The ``metrics.jsonl`` record (the trainer adds ``step`` and ``"split": "health"``)."""
        return {"warning": self.name, **self.numbers, "message": self.message}


def watched_metric(task: Any, metrics: Mapping[str, float]) -> tuple[str, bool] | None:
    """The dev metric to watch for a plateau and whether it is maximised, or ``None``.

    The task's ``metrics_to_minimize`` first, then its ``metrics_to_maximize``, then the first of
    :data:`MAXIMISED` (the SBN's ``bound``) found in ``metrics``.

    Example:
        >>> class Speech: metrics_to_minimize = ("per",)
        >>> watched_metric(Speech(), {"per": 0.3, "sub": 0.1}), watched_metric(object(), {"bound": -98.0})
        (('per', False), ('bound', True))
    """
    for name in getattr(task, "metrics_to_minimize", ()):
        if name in metrics:
            return name, False
    for name in tuple(getattr(task, "metrics_to_maximize", ())) + MAXIMISED:
        if name in metrics:
            return name, True
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


class HealthMonitor:
    """Watches one run's logged terms and evaluations; returns each warning at its onset.

    Args:
        num_samples: K (the ESS check needs K >= 2).
        thresholds: a :class:`HealthThresholds`.
        advice: where the message tells the user to read what to do.
        task: the task object, to choose the watched dev metric (:func:`watched_metric`).

    ``warnings`` lists every warning returned so far.
    """

    def __init__(self, *, num_samples: int, thresholds: HealthThresholds | None = None, advice: str = DEFAULT_ADVICE, task: Any = None):
        self.num_samples = num_samples
        self.thresholds = thresholds or HealthThresholds()
        self.advice = advice
        self.task = task
        self.warnings: list[HealthWarning] = []
        self._streaks: dict[str, int] = {}
        self._first_entropy: float | None = None
        self._grad_norms: list[float] = []
        self._best: tuple[float, int] | None = None  # (value, step)
        self._evals_since_best = 0
        self._in_warmup = False
        self._start_step = 0  # the first step after a warm-up stage

    def _onset(self, name: str, holds: bool, patience: int) -> bool:
        """Count consecutive intervals that ``name`` holds; True exactly when it reaches ``patience``."""
        streak = self._streaks.get(name, 0) + 1 if holds else 0
        self._streaks[name] = streak
        return streak == patience

    def _warn(self, name: str, step: int, numbers: dict[str, float], what: str) -> HealthWarning:
        shown = " ".join(f"{key}={value:.4g}" for key, value in numbers.items())
        warning = HealthWarning(name, step, numbers, f"health: {name} at step {step}: {shown}: {what}; what to do: {self.advice}")
        self.warnings.append(warning)
        return warning

    def observe_train(self, step: int, terms: Mapping[str, Any]) -> list[HealthWarning]:
        """Check one log interval's averaged terms (host floats); returns the warnings that start now."""
        th, out = self.thresholds, []
        if _number(terms.get("warmup")):  # a warm-up stage: its dynamics are not the run's own
            self._in_warmup, self._start_step = True, step
            return out
        self._in_warmup = False
        rate, free = _number(terms.get("emit_rate")), _number(terms.get("free_emit_rate"))
        if rate is not None and free is not None and rate > 0:
            low, high = th.emit_low * rate, min(th.emit_high * rate, (1.0 + rate) / 2.0)
            numbers = {"free_emit_rate": free, "emit_rate": rate, "ratio": free / rate}
            if self._onset("emission_collapse", free < low, th.emit_patience):
                what = f"the proposal emits almost only where forced (free_emit_rate below {th.emit_low:g}x the data's labels per step)"
                out.append(self._warn("emission_collapse", step, numbers, what))
            if self._onset("emission_explosion", free > high, th.emit_patience):
                what = f"the proposal emits at nearly every step until the labels run out (free_emit_rate above {high:.3g})"
                out.append(self._warn("emission_explosion", step, numbers, what))
        ess = _number(terms.get("ess"))
        if ess is not None and self.num_samples >= 2:
            limit = 1.0 + th.ess_fraction * (self.num_samples - 1)
            if self._onset("ess_at_one", ess <= limit, th.ess_patience):
                what = f"one of the K={self.num_samples} particles carries all the weight for {th.ess_patience} log intervals (ess <= {limit:.3g})"
                out.append(self._warn("ess_at_one", step, {"ess": ess, "num_samples": float(self.num_samples)}, what))
        entropy = _number(terms.get("entropy"))
        if entropy is not None:
            if self._first_entropy is None:
                self._first_entropy = entropy
            start = self._first_entropy
            collapsed = start > 0 and step - self._start_step <= th.entropy_early_steps and entropy < th.entropy_fraction * start
            if self._onset("entropy_collapse", collapsed, th.entropy_patience):
                what = f"the proposal's entropy fell below {th.entropy_fraction:g} of its start early: the K particles are near copies"
                out.append(self._warn("entropy_collapse", step, {"entropy": entropy, "entropy_start": start}, what))
        grad = _number(terms.get("grad_norm"))
        if grad is not None:
            if len(self._grad_norms) < th.grad_reference:
                self._grad_norms.append(grad)
            else:
                reference = statistics.median(self._grad_norms)
                if self._onset("grad_explosion", reference > 0 and grad > th.grad_factor * reference, 1):
                    what = f"the gradient norm is over {th.grad_factor:g}x its early median"
                    out.append(self._warn("grad_explosion", step, {"grad_norm": grad, "grad_norm_reference": reference}, what))
        return out

    def observe_eval(self, step: int, metrics: Mapping[str, Any]) -> list[HealthWarning]:
        """Check one evaluation's metrics; returns a ``no_improvement`` warning at its onset."""
        watched = watched_metric(self.task, metrics)
        value = _number(metrics.get(watched[0])) if watched is not None else None
        if value is None or self._in_warmup:
            return []
        name, maximise = watched
        th = self.thresholds
        if self._best is None:
            self._best = (value, step)
            return []
        best, best_step = self._best
        margin = th.plateau_min_rel * abs(best)
        improved = value > best + margin if maximise else value < best - margin
        if improved:
            self._best, self._evals_since_best = (value, step), 0
            return []
        self._evals_since_best += 1
        perfect = not maximise and best <= 0.0  # an error rate of 0 cannot improve
        if self._evals_since_best != th.plateau_evals or perfect:
            return []
        numbers = {name: value, f"best_{name}": best, "best_step": float(best_step), "evaluations": float(self._evals_since_best)}
        what = f"the dev {name} has not improved for {self._evals_since_best} evaluations ({'maximised' if maximise else 'minimised'})"
        return [self._warn("no_improvement", step, numbers, what)]


# -- the trainer's two call sites: one monitor per run, keyed by the run's logger --
_MONITORS: "weakref.WeakKeyDictionary[Any, HealthMonitor | None]" = weakref.WeakKeyDictionary()


def _monitor(logger: Any, config: Any, task: Any) -> HealthMonitor | None:
    if logger not in _MONITORS:
        tc = config.train
        enabled = getattr(tc, "health_checks", True)
        _MONITORS[logger] = HealthMonitor(num_samples=tc.num_samples, advice=ADVICE.get(tc.task, DEFAULT_ADVICE), task=task) if enabled else None
    return _MONITORS[logger]


def _report(logger: Any, step: int, warnings: list[HealthWarning]) -> list[HealthWarning]:
    for warning in warnings:
        logger.log(step, "health", warning.record(), echo=warning.message)
    return warnings


def check_train(logger: Any, config: Any, task: Any, step: int, terms: Mapping[str, Any]) -> list[HealthWarning]:
    """The trainer's log-interval hook: feed this run's monitor and log each new warning.

    Args:
        logger: the run's logger (``log(step, split, values, echo=line)``); it also identifies
            the run, so that each :func:`hardalign.train.train` call has its own monitor.
        config: the run's :class:`~hardalign.train.config.ResolvedConfig` (``health_checks``,
            ``num_samples``, ``task``).
        task: the task object (chooses the watched dev metric).
        step: the step of the log line.
        terms: the averaged terms just logged.

    Returns:
        the warnings logged now: one ``{"split": "health", "warning": name, ...numbers,
        "message": line}`` record each in ``metrics.jsonl`` and the line on stderr.
    """
    monitor = _monitor(logger, config, task)
    return _report(logger, step, monitor.observe_train(step, terms)) if monitor is not None else []


def check_eval(logger: Any, config: Any, task: Any, step: int, metrics: Mapping[str, Any]) -> list[HealthWarning]:
    """The trainer's evaluation hook (rank 0): like :func:`check_train`, for the dev metrics."""
    monitor = _monitor(logger, config, task)
    return _report(logger, step, monitor.observe_eval(step, metrics)) if monitor is not None else []
