"""A NaN or -inf log weight into each estimator: a named error (``check_finite=True``) or a loss the
trainer stops on (the default, no host sync), never a silently finite gradient from NaN input.

-inf is a legitimate zero-weight (impossible) sample for the VIMCO variants: their loss and
gradient stay finite while another particle is possible. REINFORCE and NVIL optimise
``mean_k log w^k``, which is then -inf: an error with ``check_finite``, a non-finite loss without.
The inputs are never modified in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from hardalign.estimators import ESTIMATORS, build_estimator, estimator_options


@dataclass
class WeightFault:
    estimator: str
    value: float

    @property
    def id(self) -> str:
        return f"{self.estimator}-{'nan' if self.value != self.value else 'neg-inf'}-log-weight"


WEIGHT_FAULTS = [WeightFault(name, value) for name in ESTIMATORS for value in (float("nan"), float("-inf"))]


def _inputs(value: float):
    generator = torch.Generator().manual_seed(0)
    log_weights = torch.randn(3, 2, 4, dtype=torch.float64, generator=generator)  # [K, B, T]
    log_weights[0, 1, 2] = value
    logits = torch.zeros(3, 2, 4, dtype=torch.float64, requires_grad=True)
    log_probs = torch.nn.functional.logsigmoid(logits)
    return log_weights, log_probs, logits


def _finite_values_allowed(fault: WeightFault) -> bool:
    return fault.value == float("-inf") and fault.estimator.startswith("vimco")


@pytest.mark.parametrize("fault", WEIGHT_FAULTS, ids=lambda f: f.id)
def test_bad_log_weight(fault):
    baseline = torch.zeros(3, 2, dtype=torch.float64) if fault.estimator == "nvil" else None
    log_weights, log_probs, logits = _inputs(fault.value)
    kept = log_weights.clone()
    # default: no value check (no host sync); a NaN must reach the loss, where the trainer stops
    out = build_estimator(fault.estimator)(log_weights, log_probs, baseline=baseline)
    if _finite_values_allowed(fault):
        out.loss.backward()
        assert torch.isfinite(out.loss) and torch.isfinite(logits.grad).all()
    else:
        assert not torch.isfinite(out.loss)
    assert torch.equal(log_weights.isnan(), kept.isnan()) and torch.equal(log_weights.nan_to_num(), kept.nan_to_num())
    if "check_finite" not in estimator_options(fault.estimator):
        pytest.skip(f"{fault.estimator} has no check_finite option yet")
    estimator = build_estimator(fault.estimator, check_finite=True)
    if _finite_values_allowed(fault):
        assert torch.isfinite(estimator(log_weights, log_probs, baseline=baseline).loss)
    else:
        with pytest.raises(ValueError, match=rf"{fault.estimator}: log_weights: has 1 bad value\(s\) \((nan|-inf) at index \[0, 1, 2\]"):
            estimator(log_weights, log_probs, baseline=baseline)
