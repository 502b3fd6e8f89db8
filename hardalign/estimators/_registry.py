"""The estimator registry: a dict from name to class and one builder."""

from __future__ import annotations

import inspect

from torch import nn

from hardalign.estimators._nvil import NVIL
from hardalign.estimators._reinforce import REINFORCE
from hardalign.estimators._vimco import VIMCO, SequentialVIMCO

#: name -> estimator class; every class is called as ``est(log_weights, log_probs, mask=None, baseline=None)``.
ESTIMATORS: dict[str, type[nn.Module]] = {
    "reinforce": REINFORCE,
    "nvil": NVIL,
    "vimco": VIMCO,
    "vimco-seq": SequentialVIMCO,
}


def estimator_options(name: str) -> dict[str, object]:
    """The keyword options of estimator ``name`` with their defaults."""
    cls = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    return {key: p.default for key, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def build_estimator(name: str, **options) -> nn.Module:
    """Build a registered estimator by name.

    Args:
        name: one of ``reinforce``, ``nvil``, ``vimco``, ``vimco-seq``.
        **options: the estimator's keyword options (e.g. ``baseline="loo"`` for reinforce).

    Raises:
        ValueError: unknown name or option; the message lists the valid ones.

    Example:
        >>> build_estimator("reinforce", baseline="loo")
        REINFORCE(baseline='loo', per_step=True, decay=0.9)
    """
    cls = _lookup(name)
    valid = estimator_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"estimator {name!r}: unknown option(s) {unknown}; valid options: {sorted(valid) or 'none'}")
    return cls(**options)


def _lookup(name: str) -> type[nn.Module]:
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; valid estimators: {', '.join(ESTIMATORS)}") from None


def describe(name: str) -> str:
    """The first line of the estimator's docstring."""
    return (inspect.getdoc(_lookup(name)) or "").splitlines()[0].replace("``", "")
