"""One conformance suite over the registry: shapes, dtypes, masks, loss value, K rules, errors."""

import inspect

import pytest
import torch

import hardalign.estimators as estimators
from hardalign.estimators import ESTIMATORS, build_estimator

# One case per registered estimator (completeness is checked below): options and the smallest K.
CASES = {
    "reinforce": [({}, 1), ({"baseline": "ema"}, 1), ({"baseline": "loo"}, 2), ({"baseline": "learned"}, 1)],
    "nvil": [({}, 1), ({"normalize_variance": False}, 2)],
    "vimco": [({}, 2), ({"loo": "arithmetic"}, 2)],
    "vimco-seq": [({}, 2), ({"align": "time"}, 2), ({"align": "progress", "mix": "running"}, 2), ({"align": "progress-time"}, 2)],
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


def baseline_for(estimator, log_weights):
    """What the objective layer passes: the baseline network's prediction only when the estimator takes one."""
    return torch.zeros_like(log_weights, requires_grad=True) if estimator.takes_baseline else None


def call(name, options, log_weights, log_probs, mask=None, device="cpu"):
    estimator = build_estimator(name, **options).to(device)
    return estimator(log_weights, log_probs, mask, baseline=baseline_for(estimator, log_weights))


@pytest.mark.parametrize("name,options,k", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtype_device(name, options, k, dtype, device):
    log_weights, log_probs, mask = make_inputs(k + 2, dtype=dtype, device=device)
    out = call(name, options, log_weights, log_probs, mask, device)
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
    estimator = build_estimator(name, **options)
    baseline = torch.zeros_like(total_w) if estimator.takes_baseline else None
    out = estimator(total_w, total_q, None, baseline=baseline)
    assert out.signals.shape == total_q.shape


@pytest.mark.parametrize("name,options,k", ALL)
def test_loss_value_is_minus_objective(name, options, k):
    """The surrogate terms change the gradient, never the loss value (NVIL adds its regression term)."""
    log_weights, log_probs, mask = make_inputs(k + 1)
    out = call(name, options, log_weights, log_probs, mask)
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
        out = call(name, options, lw, changed, mask)
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
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['decay'\]; valid options: \['check_finite', 'loo', 'weight_control'\]"):
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


# ------------------------------------------------------------------------------ call convention
TAKES_BASELINE = {
    ("reinforce", "none"): False,
    ("reinforce", "ema"): False,
    ("reinforce", "loo"): False,
    ("reinforce", "learned"): True,
    ("nvil", None): True,
    ("vimco", None): False,
    ("vimco-seq", None): False,
}


@pytest.mark.parametrize("name,option", list(TAKES_BASELINE))
def test_takes_baseline_is_a_read_only_flag(name, option):
    estimator = build_estimator(name, **({"baseline": option} if option else {}))
    assert estimator.takes_baseline is TAKES_BASELINE[(name, option)]
    with pytest.raises(AttributeError):
        estimator.takes_baseline = not estimator.takes_baseline


def test_forward_signature_is_shared():
    for name, cls in ESTIMATORS.items():
        params = inspect.signature(cls.forward).parameters
        assert list(params) == ["self", "log_weights", "log_probs", "mask", "baseline", "progress", "alternative"], name
        assert params["baseline"].kind is inspect.Parameter.KEYWORD_ONLY and params["baseline"].default is None
        assert params["progress"].kind is inspect.Parameter.KEYWORD_ONLY and params["progress"].default is None
        assert params["mask"].default is None


@pytest.mark.parametrize("name,options,k", ALL)
def test_every_estimator_accepts_progress(name, options, k):
    """A valid progress index is accepted everywhere; estimators that do not align steps ignore it."""
    log_weights, log_probs, mask = make_inputs(k + 1)
    progress = torch.arange(6).expand(k + 1, 3, 6)
    plain = call(name, options, log_weights, log_probs, mask)
    estimator = build_estimator(name, **options)
    out = estimator(log_weights, log_probs, mask, baseline=baseline_for(estimator, log_weights), progress=progress)
    torch.testing.assert_close(out.signals, plain.signals)  # p_t = t is the default alignment


@pytest.mark.parametrize("name", ["vimco", "vimco-seq"])
def test_vimco_variants_refuse_a_baseline(name):
    log_weights, log_probs, _ = make_inputs(3)
    with pytest.raises(ValueError, match=f"{name}: takes no baseline tensor"):
        build_estimator(name)(log_weights, log_probs, baseline=torch.zeros_like(log_weights))


def test_learned_reinforce_baseline_is_required():
    log_weights, log_probs, _ = make_inputs(2)
    with pytest.raises(ValueError, match=r"baseline='learned' needs the baseline network's prediction.*baseline=b_psi"):
        build_estimator("reinforce", baseline="learned")(log_weights, log_probs)


@pytest.mark.parametrize("per_step", [True, False])
@pytest.mark.parametrize("shape", ["[K, B]", "[K, B, T]"])
def test_learned_reinforce_baseline_is_subtracted_and_regressed(per_step, shape):
    """Module and pure function agree; the signal is R - b; the loss adds mean (b - R)^2 over masked steps."""
    from hardalign.estimators import reinforce_loss

    log_weights, log_probs, mask = make_inputs(2)
    g = torch.Generator().manual_seed(5)
    b_psi = torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    if shape == "[K, B]":
        b_psi = b_psi[..., 0]
    b_psi.requires_grad_(True)
    module = build_estimator("reinforce", baseline="learned", per_step=per_step)(log_weights, log_probs, mask, baseline=b_psi)
    function = reinforce_loss(log_weights, log_probs, mask, baseline=b_psi, per_step=per_step)
    torch.testing.assert_close(module.loss, function.loss)
    torch.testing.assert_close(module.signals, function.signals)
    lw = log_weights.detach()
    returns = lw.flip(-1).cumsum(-1).flip(-1) if per_step else lw.sum(-1, keepdim=True).expand_as(lw)
    b = b_psi.detach() if shape == "[K, B, T]" else b_psi.detach().unsqueeze(-1).expand_as(lw)
    torch.testing.assert_close(module.signals, torch.where(mask, returns - b, torch.zeros_like(b)))
    regression = (torch.where(mask, (b - returns) ** 2, torch.zeros_like(b)).sum((0, 2)) / mask.sum((0, 2))).mean()
    torch.testing.assert_close(module.stats["baseline_loss"], regression)
    torch.testing.assert_close(module.loss.detach(), -module.objective.mean() + regression)
    (grad,) = torch.autograd.grad(module.loss, b_psi)
    assert bool(grad.abs().sum() > 0)


def test_a_baseline_without_grad_is_not_regressed():
    from hardalign.estimators import reinforce_loss

    log_weights, log_probs, mask = make_inputs(2)
    out = reinforce_loss(log_weights, log_probs, mask, baseline=torch.ones(2, 3, dtype=torch.float64))
    assert "baseline_loss" not in out.stats
