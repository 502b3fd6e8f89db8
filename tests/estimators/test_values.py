"""Impossible particles (-inf log weights), opt-in value checks, progress validation, the running mix."""

import pytest
import torch

from hardalign.estimators import ESTIMATORS, Alternative, build_estimator, reinforce_loss, sequential_vimco_loss, vimco_loss
from tests.estimators.test_numerics import random_progress

INF = float("inf")
VIMCO_VARIANTS = [
    ("vimco", {}),
    ("vimco", {"loo": "arithmetic"}),
    ("vimco-seq", {"align": "time"}),
    ("vimco-seq", {"align": "progress"}),
    ("vimco-seq", {"align": "progress-time"}),
    ("vimco-seq", {"align": "progress", "mix": "running"}),
    ("vimco-seq", {"align": "fitted"}),
    ("vimco-seq", {"align": "fitted", "mix": "running"}),
]


def leaves(k=3, b=3, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    steps = torch.randn(k, b, t, generator=g, dtype=torch.float64)
    log_probs = -torch.rand(k, b, t, generator=g, dtype=torch.float64)
    return steps, log_probs, random_progress(k, b, t, g)


@pytest.mark.parametrize("name,options", VIMCO_VARIANTS)
def test_an_impossible_particle_gives_finite_loss_and_gradients(name, options):
    steps, log_probs, progress = leaves()
    steps[1, 0, 2] = -INF  # one impossible particle in example 0
    steps[0, 2, 4] = steps[2, 2, 0] = -INF  # two of three in example 2
    steps, log_probs = steps.requires_grad_(True), log_probs.requires_grad_(True)
    out = build_estimator(name, **options)(steps, log_probs, progress=progress)
    out.loss.backward()
    assert bool(torch.isfinite(out.loss)) and bool(torch.isfinite(out.objective).all())
    assert bool(torch.isfinite(out.signals).all())
    assert bool(torch.isfinite(steps.grad).all()) and bool(torch.isfinite(log_probs.grad).all())
    assert bool((steps.grad[1, 0] == 0).all())  # a zero weight gets no pathwise gradient
    assert float(out.stats["impossible_fraction"]) == 0.0


@pytest.mark.parametrize("name,options", VIMCO_VARIANTS)
def test_an_all_impossible_example_is_dropped_from_the_loss(name, options):
    """Objective -inf for that example, 0 signals and gradients there; the loss stays finite and the
    other examples' contributions are unchanged."""
    steps, log_probs, progress = leaves()
    steps[:, 1, 3] = -INF  # example 1: every particle impossible
    steps, log_probs = steps.requires_grad_(True), log_probs.requires_grad_(True)
    out = build_estimator(name, **options)(steps, log_probs, progress=progress)
    out.loss.backward()
    assert out.objective[1] == -INF and bool(torch.isfinite(out.objective[[0, 2]]).all())
    assert bool(torch.isfinite(out.loss))
    assert bool((out.signals[:, 1] == 0).all())
    assert bool((steps.grad[:, 1] == 0).all()) and bool((log_probs.grad[:, 1] == 0).all())
    assert float(out.stats["impossible_fraction"]) == pytest.approx(1 / 3)
    # the loss is the sum over the possible examples divided by the whole batch size
    keep = [0, 2]
    alone = build_estimator(name, **options)(steps.detach()[:, keep], log_probs.detach()[:, keep], progress=progress[:, keep])
    torch.testing.assert_close(out.loss.detach(), alone.loss * 2 / 3)
    torch.testing.assert_close(out.signals[:, keep], alone.signals)


@pytest.mark.parametrize("name", ["reinforce", "nvil"])
def test_elbo_estimators_with_an_impossible_particle(name):
    """Documented behaviour: the ELBO is -inf and the loss NaN; check_finite says so up front."""
    steps, log_probs, _ = leaves()
    steps[1, 0, 2] = -INF
    out = build_estimator(name)(steps, log_probs)
    assert out.objective[0] == -INF and bool(torch.isnan(out.loss))
    with pytest.raises(ValueError, match=r"log_weights: has 1 bad value\(s\) \(-inf at index \[1, 0, 2\].*use vimco"):
        build_estimator(name, check_finite=True)(steps, log_probs)


@pytest.mark.parametrize("name", list(ESTIMATORS))
@pytest.mark.parametrize("bad", [float("nan"), INF])
def test_check_finite_names_bad_log_weights(name, bad):
    steps, log_probs, _ = leaves()
    steps[2, 1, 3] = bad
    with pytest.raises(ValueError, match=rf"{name}: log_weights: has 1 bad value\(s\) \({bad} at index \[2, 1, 3\]"):
        build_estimator(name, check_finite=True)(steps, log_probs)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_check_finite_names_bad_log_probs_only_on_masked_in_steps(name):
    steps, log_probs, _ = leaves()
    mask = torch.ones_like(log_probs, dtype=torch.bool)
    log_probs[0, 2, 1] = -INF  # a forced step with probability 0 under q: fine once masked off
    mask[0, 2, 1] = False
    estimator = build_estimator(name, check_finite=True)
    estimator(steps, log_probs, mask)
    mask[0, 2, 1] = True
    with pytest.raises(ValueError, match=r"log_probs: has 1 bad value\(s\) \(-inf at index \[0, 2, 1\]"):
        estimator(steps, log_probs, mask)


def test_check_finite_names_a_bad_baseline():
    steps, log_probs, _ = leaves()
    baseline = torch.zeros(3, 3, dtype=torch.float64)
    baseline[1, 1] = float("nan")
    for estimator in (build_estimator("nvil", check_finite=True), build_estimator("reinforce", baseline="learned", check_finite=True)):
        with pytest.raises(ValueError, match=r"baseline: has 1 bad value"):
            estimator(steps, log_probs, baseline=baseline)
    with pytest.raises(ValueError, match=r"baseline: has 1 bad value"):
        reinforce_loss(steps, log_probs, baseline=baseline, check_finite=True)


def test_check_finite_accepts_impossible_particles_for_vimco():
    steps, log_probs, progress = leaves()
    steps[0, 0, 0] = -INF
    vimco_loss(steps, log_probs, check_finite=True)
    sequential_vimco_loss(steps, log_probs, progress=progress, check_finite=True)


def test_without_check_finite_nan_flows_through():
    """No value check by default (it would cost a host sync): NaN in, NaN out."""
    steps, log_probs, _ = leaves()
    steps[0, 0, 0] = float("nan")
    assert bool(torch.isnan(vimco_loss(steps, log_probs).loss))


# --------------------------------------------------------------------------------- progress checks
BAD_PROGRESS = {
    "float": (lambda p: p.double(), TypeError, r"progress: expected an integer tensor .* got dtype torch.float64"),
    "bool": (lambda p: p > 0, TypeError, r"progress: expected an integer tensor"),
    "wrong T": (lambda p: p[..., :-1], ValueError, r"progress: expected shape \[K, B, T\] = \[3, 3, 5\]"),
    "not a tensor": (lambda p: p.tolist(), TypeError, r"progress: expected an integer torch.Tensor"),
}


@pytest.mark.parametrize("case", list(BAD_PROGRESS))
def test_bad_progress_names_the_argument(case):
    make, error, pattern = BAD_PROGRESS[case]
    steps, log_probs, progress = leaves()
    with pytest.raises(error, match=pattern):
        build_estimator("vimco-seq", align="progress")(steps, log_probs, progress=make(progress))
    with pytest.raises(error, match=pattern):
        sequential_vimco_loss(steps, log_probs, progress=make(progress))


BAD_ALTERNATIVE = {
    "not an Alternative": (lambda s, a: (a.taken, a.log_weights), TypeError, r"alternative: expected hardalign.estimators.Alternative"),
    "taken not bool": (lambda s, a: Alternative(a.taken.long(), a.log_weights), TypeError, r"alternative.taken: expected a bool tensor \(True: the positive decision was sampled\)"),
    "taken wrong T": (lambda s, a: Alternative(a.taken[..., :-1], a.log_weights), ValueError, r"alternative.taken: expected shape \[K, B, T\]"),
    "log weights wrong dtype": (lambda s, a: Alternative(a.taken, a.log_weights.float()), TypeError, r"alternative.log_weights: has dtype torch.float32"),
    "log weights wrong T": (lambda s, a: Alternative(a.taken, a.log_weights[..., :-1]), ValueError, r"alternative.log_weights: expected shape"),
    "carries_log_q not bool": (lambda s, a: a._replace(carries_log_q="yes"), TypeError, r"alternative.carries_log_q: expected a bool"),
}


@pytest.mark.parametrize("case", list(BAD_ALTERNATIVE))
def test_bad_alternative_names_the_argument(case):
    make, error, pattern = BAD_ALTERNATIVE[case]
    steps, log_probs, progress = leaves()
    g = torch.Generator().manual_seed(5)
    good = Alternative(torch.rand(steps.shape, generator=g) < 0.5, torch.randn(steps.shape, generator=g, dtype=steps.dtype))
    bad = make(steps, good)
    with pytest.raises(error, match=pattern):
        build_estimator("vimco-seq")(steps, log_probs, progress=progress, alternative=bad)
    with pytest.raises(error, match=pattern):
        sequential_vimco_loss(steps, log_probs, progress=progress, alternative=bad)
    with pytest.raises(ValueError, match="alternative: vimco-seq needs per-step log_weights"):
        sequential_vimco_loss(steps.sum(-1), log_probs.sum(-1), alternative=good)


def test_progress_needs_per_step_terms():
    steps, log_probs, progress = leaves()
    with pytest.raises(ValueError, match="progress: vimco-seq aligns steps, so it needs per-step"):
        sequential_vimco_loss(steps.sum(-1), log_probs.sum(-1), progress=progress)


def test_decreasing_progress_is_caught_only_with_check_finite():
    steps, log_probs, progress = leaves()
    progress[1, 2, 3] = progress[1, 2, 2] - 1
    sequential_vimco_loss(steps, log_probs, progress=progress)  # metadata only: no host sync
    with pytest.raises(ValueError, match=r"progress: must be non-decreasing along T .* after index \[1, 2, 2\]"):
        sequential_vimco_loss(steps, log_probs, progress=progress, check_finite=True)


def test_time_alignment_ignores_progress():
    steps, log_probs, progress = leaves()
    time = sequential_vimco_loss(steps, log_probs, align="time")
    given = sequential_vimco_loss(steps, log_probs, progress=progress.double(), align="time")  # not even checked
    torch.testing.assert_close(given.signals, time.signals)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match=r"align must be one of \['progress', 'time', 'progress-time', 'fitted'\]"):
        build_estimator("vimco-seq", align="labels")
    with pytest.raises(ValueError, match=r"mix must be one of \['none', 'running'\]"):
        build_estimator("vimco-seq", mix=0.5)
    with pytest.raises(ValueError, match=r"mix must be in \[0, 1\]"):
        sequential_vimco_loss(*leaves()[:2], mix=1.5)


# ------------------------------------------------------------------------------ fitted coefficients
def test_running_mix_uses_the_pre_update_coefficient_and_updates_only_in_training():
    steps, log_probs, progress = leaves(k=4, b=6, t=9)
    # per-step terms that nearly cancel within a particle: VIMCO's stand-in predicts log w^k well
    steps = steps - steps.mean(-1, keepdim=True) + 0.05 * torch.arange(4, dtype=torch.float64)[:, None, None]
    estimator = build_estimator("vimco-seq", align="progress", mix="running", decay=0.5)
    assert float(estimator.coefficients()[1]) == 0.0
    first = estimator(steps, log_probs, progress=progress)
    assert float(first.stats["mix_coefficient"]) == 0.0  # nothing learnt before the first call
    torch.testing.assert_close(first.signals, sequential_vimco_loss(steps, log_probs, progress=progress).signals)
    beta = estimator.coefficients()[1]
    assert 0.0 < float(beta) <= 1.0, float(beta)
    second = estimator(steps, log_probs, progress=progress)
    torch.testing.assert_close(second.stats["mix_coefficient"], beta.to(torch.float64))
    torch.testing.assert_close(second.signals, sequential_vimco_loss(steps, log_probs, progress=progress, mix=float(beta)).signals)
    state = {key: value.clone() for key, value in estimator.state_dict().items()}
    estimator.eval()(steps, log_probs, progress=progress)
    assert all(torch.equal(state[key], value) for key, value in estimator.state_dict().items())


def stand_ins(steps, progress):
    from hardalign.estimators._align import exclusive_cumsum, others_future_mean
    from hardalign.estimators._baselines import leave_one_out_mean

    time = exclusive_cumsum(steps) + others_future_mean(steps, None)
    aligned = exclusive_cumsum(steps) + others_future_mean(steps, progress)
    plain = leave_one_out_mean(steps.sum(-1), 0).unsqueeze(-1)
    return time, aligned, plain


@pytest.mark.parametrize("align,mix", [("progress", "running"), ("fitted", "none"), ("fitted", "running")])
def test_coefficients_are_the_least_squares_fit(align, mix):
    """With decay 0 the coefficients are this batch's least-squares fit of log w^k by the stand-ins."""
    g = torch.Generator().manual_seed(11)
    steps = torch.randn(6, 8, 12, generator=g, dtype=torch.float64)
    steps = steps - 0.7 * steps.mean(-1, keepdim=True)  # neither extreme fits best
    progress = random_progress(6, 8, 12, g)
    estimator = build_estimator("vimco-seq", align=align, mix=mix, decay=0.0)
    estimator(steps, log_probs=torch.zeros_like(steps), progress=progress)
    a, beta = estimator.coefficients()
    time, aligned, plain = stand_ins(steps, progress)
    target = steps.sum(-1, keepdim=True)
    base = aligned if align == "progress" else time
    columns = ([aligned - base] if align == "fitted" else []) + ([(plain - base).expand_as(base)] if mix == "running" else [])
    design = torch.stack([c.flatten() for c in columns], -1)
    solution = torch.linalg.lstsq(design, (target - base).flatten().unsqueeze(-1)).solution.flatten()
    assert bool(((solution > 0) & (solution < 1)).all()), solution  # the test data keep the fit inside [0, 1]
    if align == "fitted" and mix == "running":
        expected_beta = solution[1]
        torch.testing.assert_close(beta, expected_beta)
        torch.testing.assert_close(a, solution[0] / (1 - expected_beta))
    elif align == "fitted":
        torch.testing.assert_close(a, solution[0])
        assert float(beta) == 0.0
    else:
        torch.testing.assert_close(beta, solution[0])
    # the next call uses them: module == pure function with those coefficients
    out = estimator(steps, torch.zeros_like(steps), progress=progress)
    expected = sequential_vimco_loss(
        steps, torch.zeros_like(steps), progress=progress, align=align, mix=float(beta) if mix == "running" else 0.0, progress_weight=float(a)
    )
    torch.testing.assert_close(out.signals, expected.signals)


def test_fitted_alignment_starts_halfway():
    steps, log_probs, progress = leaves()
    estimator = build_estimator("vimco-seq", align="fitted")
    out = estimator(steps, log_probs, progress=progress)
    assert float(out.stats["progress_weight"]) == 0.5 and "mix_coefficient" not in out.stats


def test_checkpoints_without_fit_moments_still_load():
    estimator = build_estimator("vimco-seq")
    estimator.load_state_dict({})  # written before the fitted coefficients existed
    assert bool((estimator.fit_moments == 0).all()) and bool((estimator.future_moments == 0).all())


def lookahead_draw(seed=12, k=4, b=6, t=10):
    """Per-step log weights with the other branch of each binary decision, and q's probabilities."""
    g = torch.Generator().manual_seed(seed)
    taken = torch.rand(k, b, t, generator=g) < 0.4
    steps = torch.randn(k, b, t, generator=g, dtype=torch.float64) + 0.8 * taken
    alt = torch.randn(k, b, t, generator=g, dtype=torch.float64) + 0.8 * ~taken
    log_probs = torch.log(torch.rand(k, b, t, generator=g, dtype=torch.float64).clamp(0.05, 0.95))
    progress = taken.long().cumsum(-1) - taken.long()
    return steps, log_probs, progress, Alternative(taken, alt)


def test_future_coefficient_is_the_least_squares_fit_and_is_used_next():
    """``lambda`` starts at 0.5; with decay 0 it becomes this batch's ``sum A F / sum F^2`` (A the
    signal without the control, F the later innovations), and the next call is the pure function
    with that lambda; eval mode leaves it alone; without an ``alternative`` the option does nothing."""
    steps, log_probs, progress, alternative = lookahead_draw()
    estimator = build_estimator("vimco-seq", align="progress", future_control=True, decay=0.0)
    first = estimator(steps, log_probs, progress=progress, alternative=alternative)
    assert float(first.stats["future_coefficient"]) == 0.5
    torch.testing.assert_close(
        first.signals, sequential_vimco_loss(steps, log_probs, progress=progress, alternative=alternative, future_weight=0.5).signals
    )
    plain = sequential_vimco_loss(steps, log_probs, progress=progress, alternative=alternative).signals
    later = (plain - sequential_vimco_loss(steps, log_probs, progress=progress, alternative=alternative, future_weight=1.0).signals)
    expected = float((plain * later).sum() / (later * later).sum())
    assert 0.0 < expected < 1.0, expected  # the test data keep the fit inside [0, 1]
    assert float(estimator.future_coefficient()) == pytest.approx(expected, rel=1e-9)
    second = estimator(steps, log_probs, progress=progress, alternative=alternative)
    torch.testing.assert_close(
        second.signals, sequential_vimco_loss(steps, log_probs, progress=progress, alternative=alternative, future_weight=expected).signals
    )
    state = {key: value.clone() for key, value in estimator.state_dict().items()}
    estimator.eval()(steps, log_probs, progress=progress, alternative=alternative)
    assert all(torch.equal(state[key], value) for key, value in estimator.state_dict().items())
    without = estimator(steps, log_probs, progress=progress)
    assert "future_coefficient" not in without.stats
    torch.testing.assert_close(without.signals, sequential_vimco_loss(steps, log_probs, progress=progress).signals)


def test_future_weight_is_checked():
    steps, log_probs, progress, alternative = lookahead_draw()
    with pytest.raises(ValueError, match=r"future_weight must be in \[0, 1\]"):
        sequential_vimco_loss(steps, log_probs, progress=progress, alternative=alternative, future_weight=1.5)
    with pytest.raises(ValueError, match=r"future_control=True needs lookahead=True"):
        build_estimator("vimco-seq", future_control=True, lookahead=False)


BAD_VALUES = {
    "none supplied": (lambda a: Alternative(a.taken, a.log_weights), ValueError, r"alternative.values: vimco-seq with values='model' needs the model's expected"),
    "wrong shape": (lambda a: Alternative(a.taken, a.log_weights, torch.zeros(a.log_weights.shape, dtype=a.log_weights.dtype)), ValueError, r"alternative.values: expected shape \[2, K, B, T\]"),
    "wrong dtype": (lambda a: Alternative(a.taken, a.log_weights, torch.zeros(2, *a.log_weights.shape)), TypeError, r"alternative.values: has dtype torch.float32"),
    "callable, wrong shape": (lambda a: Alternative(a.taken, a.log_weights, lambda: torch.zeros(3, *a.log_weights.shape, dtype=a.log_weights.dtype)), ValueError, r"alternative.values: expected shape"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_model_values_name_the_argument(case):
    make, error, pattern = BAD_VALUES[case]
    steps, log_probs, progress, alternative = lookahead_draw()
    with pytest.raises(error, match=pattern):
        sequential_vimco_loss(steps, log_probs, progress=progress, alternative=make(alternative), values="model")
    with pytest.raises(error, match=pattern):
        build_estimator("vimco-seq", values="model")(steps, log_probs, progress=progress, alternative=make(alternative))
    # values="others" never reads them
    sequential_vimco_loss(steps, log_probs, progress=progress, alternative=make(alternative), values="others")
    build_estimator("vimco-seq", values="others")(steps, log_probs, progress=progress, alternative=make(alternative))


def test_auto_values_use_the_model_values_where_supplied():
    steps, log_probs, progress, alternative = lookahead_draw()
    values = torch.randn(2, *steps.shape, dtype=steps.dtype, generator=torch.Generator().manual_seed(3))
    with_values = Alternative(alternative.taken, alternative.log_weights, values)
    module = lambda **options: lambda *a, **k: build_estimator("vimco-seq", **options).eval()(*a, **k)  # noqa: E731
    pure = lambda **options: lambda *a, **k: sequential_vimco_loss(*a, **options, **k)  # noqa: E731
    for make in (module, pure):
        auto = make()(steps, log_probs, progress=progress, alternative=with_values).signals
        torch.testing.assert_close(auto, make(values="model")(steps, log_probs, progress=progress, alternative=with_values).signals)
        plain = make()(steps, log_probs, progress=progress, alternative=alternative).signals
        torch.testing.assert_close(plain, make(values="others")(steps, log_probs, progress=progress, alternative=alternative).signals)
        assert not torch.allclose(auto, plain)


def test_values_option_is_checked():
    steps, log_probs, progress, alternative = lookahead_draw()
    with pytest.raises(ValueError, match=r"values must be one of \[.auto., .others., .model.\]"):
        sequential_vimco_loss(steps, log_probs, alternative=alternative, values="lattice")
    with pytest.raises(ValueError, match=r"values must be one of"):
        build_estimator("vimco-seq", values="lattice")
    with pytest.raises(ValueError, match=r"values='model' needs lookahead=True"):
        build_estimator("vimco-seq", values="model", lookahead=False)
    assert "values='model'" in repr(build_estimator("vimco-seq", values="model"))


def test_auto_controls_follow_what_the_alternative_carries():
    """The default ``weight_control="auto"`` turns weight control on exactly where the alternative
    says the log weights carry -log q (module and pure function, with or without the lookahead);
    ``future_control="auto"`` (module) turns the future control variate on exactly where the
    lookahead's stand-ins take the model's values."""
    steps, log_probs, progress, alternative = lookahead_draw()
    values = torch.randn(2, *steps.shape, dtype=steps.dtype, generator=torch.Generator().manual_seed(3))
    call = dict(progress=progress)

    def signals(alt, **options):
        return build_estimator("vimco-seq", **options).eval()(steps, log_probs, **call, alternative=alt).signals

    cases = [  # (alternative, the explicit options "auto" must equal)
        (alternative, dict(weight_control=False, future_control=False)),
        (alternative._replace(carries_log_q=True), dict(weight_control=True, future_control=False)),
        (alternative._replace(values=values), dict(weight_control=False, future_control=True)),
        (alternative._replace(values=values, carries_log_q=True), dict(weight_control=True, future_control=True)),
    ]
    for alt, explicit in cases:
        auto = signals(alt)
        torch.testing.assert_close(auto, signals(alt, **explicit))
        other = {key: not value for key, value in explicit.items()}
        assert not torch.allclose(auto, signals(alt, **other))  # each switch changes the estimate here
        pure = sequential_vimco_loss(steps, log_probs, **call, alternative=alt, values="others").signals
        torch.testing.assert_close(pure, sequential_vimco_loss(steps, log_probs, **call, alternative=alt, values="others", weight_control=explicit["weight_control"]).signals)
    # without the lookahead the alternative still switches weight control (it needs no lookahead)
    carrying = alternative._replace(carries_log_q=True)
    no_lookahead = build_estimator("vimco-seq", lookahead=False).eval()(steps, log_probs, **call, alternative=carrying).signals
    torch.testing.assert_close(no_lookahead, build_estimator("vimco-seq", lookahead=False, weight_control=True).eval()(steps, log_probs, **call).signals)
    # without an alternative: neither control
    torch.testing.assert_close(
        build_estimator("vimco-seq").eval()(steps, log_probs, **call).signals,
        build_estimator("vimco-seq", weight_control=False, future_control=False).eval()(steps, log_probs, **call).signals,
    )


def test_control_switches_are_checked():
    for name in ("weight_control", "future_control"):
        with pytest.raises(ValueError, match=rf"vimco-seq: {name} must be true, false or 'auto', got 'on'"):
            build_estimator("vimco-seq", **{name: "on"})
    steps, log_probs, progress, alternative = lookahead_draw()
    with pytest.raises(ValueError, match=r"weight_control must be true, false or 'auto', got 1"):
        sequential_vimco_loss(steps, log_probs, alternative=alternative, weight_control=1)
    assert repr(build_estimator("vimco-seq")) == "SequentialVIMCO(align='fitted', mix='none', decay=0.9)"
    assert "weight_control=False, future_control=True" in repr(build_estimator("vimco-seq", weight_control=False, future_control=True))
