"""One conformance suite over the registry: shapes, dtypes, masks, loss value, K rules, errors."""

import inspect

import pytest
import torch

import hardalign.estimators as estimators
from hardalign.estimators import ESTIMATORS, build_estimator

# One case per registered estimator (completeness is checked below): options and the smallest K.
CASES = {
    "reinforce": [({}, 1), ({"baseline": "ema"}, 1), ({"baseline": "loo"}, 2)],
    "nvil": [({}, 1), ({"normalize_variance": False}, 2)],
    "vimco": [({}, 2), ({"loo": "arithmetic"}, 2)],
    "vimco-seq": [({}, 2)],
}
ALL = [(name, options, k) for name, cases in CASES.items() for options, k in cases]


def test_every_registered_estimator_has_a_case():
    assert set(CASES) == set(ESTIMATORS)


def test_every_public_name_is_documented():
    for name in estimators.__all__:
        assert inspect.getdoc(getattr(estimators, name)), f"hardalign.estimators.{name} has no docstring"


def make_inputs(k, b=3, t=6, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    log_weights = torch.randn(k, b, t, generator=g, dtype=dtype).to(device).requires_grad_(True)
    log_probs = (-torch.rand(k, b, t, generator=g, dtype=dtype)).to(device).requires_grad_(True)
    mask = torch.rand(k, b, t, generator=g).to(device) < 0.7
    return log_weights, log_probs, mask


def baseline_for(name, log_weights):
    return torch.zeros_like(log_weights, requires_grad=True) if name == "nvil" else None


@pytest.mark.parametrize("name,options,k", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtype_device(name, options, k, dtype, device):
    log_weights, log_probs, mask = make_inputs(k + 2, dtype=dtype, device=device)
    out = build_estimator(name, **options).to(device)(log_weights, log_probs, mask, baseline_for(name, log_weights))
    assert out.loss.shape == () and out.loss.dtype == dtype and out.loss.device == log_weights.device
    assert out.objective.shape == (3,) and out.objective.dtype == dtype and not out.objective.requires_grad
    assert out.signals.shape == log_probs.shape and not out.signals.requires_grad
    assert bool((out.signals[~mask] == 0).all())
    assert all(v.dim() == 0 and not v.requires_grad for v in out.stats.values())
    out.loss.backward()
    assert log_weights.grad is not None and log_probs.grad is not None


@pytest.mark.parametrize("name,options,k", ALL)
def test_totals_and_per_sample_log_probs(name, options, k):
    """[K, B] log weights and log probs are accepted; signals come back as [K, B]."""
    log_weights, log_probs, _ = make_inputs(k + 1)
    total_w, total_q = log_weights.sum(-1), log_probs.sum(-1)
    baseline = torch.zeros_like(total_w) if name == "nvil" else None
    out = build_estimator(name, **options)(total_w, total_q, None, baseline)
    assert out.signals.shape == total_q.shape


@pytest.mark.parametrize("name,options,k", ALL)
def test_loss_value_is_minus_objective(name, options, k):
    """The surrogate terms change the gradient, never the loss value (NVIL adds its regression term)."""
    log_weights, log_probs, mask = make_inputs(k + 1)
    out = build_estimator(name, **options)(log_weights, log_probs, mask, baseline_for(name, log_weights))
    expected = -out.objective.mean() + out.stats.get("baseline_loss", 0.0)
    torch.testing.assert_close(out.loss.detach(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,options,k", ALL)
def test_masked_steps_carry_no_signal(name, options, k):
    """Changing log q on masked steps changes neither the loss nor any gradient."""
    log_weights, log_probs, mask = make_inputs(k + 1)
    grads = []
    for shift in (0.0, 5.0):
        lp = log_probs.detach().clone().requires_grad_(True)
        lw = log_weights.detach().clone().requires_grad_(True)
        changed = torch.where(mask, lp, lp + shift)
        out = build_estimator(name, **options)(lw, changed, mask, baseline_for(name, lw))
        out.loss.backward()
        grads.append((out.loss.detach(), lp.grad, lw.grad))
        assert bool((lp.grad[~mask] == 0).all())
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["vimco", "vimco-seq"])
def test_vimco_needs_two_samples(name):
    log_weights, log_probs, _ = make_inputs(1)
    with pytest.raises(ValueError, match=r"K >= 2.*got K=1"):
        build_estimator(name)(log_weights, log_probs)


def test_leave_one_out_needs_two_samples():
    log_weights, log_probs, _ = make_inputs(1)
    with pytest.raises(ValueError, match="K >= 2"):
        build_estimator("reinforce", baseline="loo")(log_weights, log_probs)


BAD_INPUTS = {
    "log_probs wrong T": (lambda w, q, m: (w, q[..., :-1], None), ValueError, r"log_weights: expected shape \[K, B, T\]"),
    "log_probs wrong B": (lambda w, q, m: (w, q[:, :-1], None), ValueError, r"log_probs: expected the leading \[K, B\]"),
    "mask wrong shape": (lambda w, q, m: (w, q, m[..., :-1]), ValueError, r"mask: expected shape"),
    "mask not bool": (lambda w, q, m: (w, q, m.float()), TypeError, r"mask: expected a bool tensor"),
    "integer log weights": (lambda w, q, m: (w.long(), q, None), TypeError, r"log_weights: expected a floating-point"),
    "rank 4": (lambda w, q, m: (w[..., None], q, None), ValueError, r"log_weights: expected shape \[K, B, T\] or \[K, B\]"),
    "dtype mismatch": (lambda w, q, m: (w, q.float(), None), TypeError, r"log_probs: has dtype torch.float32"),
    "per-step weights, total log probs": (lambda w, q, m: (w, q.sum(-1), None), ValueError, r"log_probs: got per-sample totals"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_bad_inputs_name_the_argument(name, case):
    make, error, pattern = BAD_INPUTS[case]
    log_weights, log_probs, mask = make_inputs(3)
    with pytest.raises(error, match=pattern):
        build_estimator(name)(*make(log_weights.detach(), log_probs.detach(), mask))


def test_nvil_baseline_shape_is_checked():
    log_weights, log_probs, _ = make_inputs(2)
    with pytest.raises(ValueError, match=r"baseline: expected shape \[K, B\] = \[2, 3\]"):
        build_estimator("nvil")(log_weights, log_probs, baseline=torch.zeros(2, 3, 5, dtype=torch.float64))


def test_registry_errors_list_the_valid_choices():
    with pytest.raises(ValueError, match="valid estimators: reinforce, nvil, vimco, vimco-seq"):
        build_estimator("vimcoo")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['decay'\]; valid options: \['loo'\]"):
        build_estimator("vimco", decay=0.5)
    with pytest.raises(ValueError, match="baseline must be one of"):
        build_estimator("reinforce", baseline="mean")


@pytest.mark.parametrize("name,options", [("reinforce", {"baseline": "ema"}), ("nvil", {})])
def test_running_statistics_are_buffers_and_update_only_in_training(name, options):
    estimator = build_estimator(name, **options)
    before = {key: value.clone() for key, value in estimator.state_dict().items()}
    assert before, "running statistics must be in state_dict"
    log_weights, log_probs, mask = make_inputs(2)
    estimator.eval()(log_weights, log_probs, mask)
    assert all(torch.equal(before[key], value) for key, value in estimator.state_dict().items())
    estimator.train()(log_weights, log_probs, mask)
    assert any(not torch.equal(before[key], value) for key, value in estimator.state_dict().items())


def test_ema_subtracts_the_pre_update_value():
    estimator = build_estimator("reinforce", baseline="ema", per_step=False, decay=0.5)
    ones = torch.ones(1, 1, 1, dtype=torch.float64)
    first = estimator(3 * ones, ones)
    assert float(first.signals) == 3.0  # nothing subtracted before the first update
    second = estimator(5 * ones, ones)
    assert float(second.signals) == 2.0  # the bias-corrected average after one update is 3
    third = estimator(5 * ones, ones)
    # after two updates the raw average is 0.5*(0.5*3) + 0.5*5 = 3.25, corrected by 1 - 0.25
    assert float(third.signals) == pytest.approx(5 - 3.25 / 0.75)


def test_cli_lists_every_estimator(capsys):
    from hardalign.estimators._cli import _list

    class Args:
        verbose = True

    assert _list(Args()) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(ESTIMATORS)
    assert "baseline='none'" in lines[0]
