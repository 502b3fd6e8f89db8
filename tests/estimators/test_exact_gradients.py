"""Estimators against exact gradients of enumerable models (docs/estimators.md).

N independent replicas of one problem go through one batched call; each replica's gradient is
one estimate. The mean of the N estimates must match the gradient of the enumerated objective
within Z standard errors (measured). With Z = 4.5 and ~200 compared components the chance of a
false failure is about 1e-3 (two-sided normal tail 6.8e-6 per component); the seeds are fixed,
so a run is deterministic. A biased control estimator must fail the same check.
"""

import pytest
import torch

from hardalign.estimators import build_estimator, reinforce_loss
from tests.estimators.problems import IMPOSSIBLE_PROBLEMS, PROBLEMS, MarkovBernoulli, with_prefix_values

Z = 4.5
REPLICAS = 20000

# (estimator, options, K, objective's K): the objective is the ELBO (K=1) for REINFORCE/NVIL and
# the K-sample bound for the VIMCO variants.
CASES = [
    ("reinforce", {}, 1, 1),
    ("reinforce", {"per_step": False}, 1, 1),
    ("reinforce", {"baseline": "loo"}, 3, 1),
    ("reinforce", {"baseline": "ema"}, 2, 1),
    ("nvil", {}, 1, 1),
    ("nvil", {"per_step": False}, 2, 1),
    ("vimco", {}, 2, 2),
    ("vimco", {"loo": "arithmetic"}, 3, 3),
    ("vimco-seq", {}, 2, 2),  # lookahead on the binary problems (the default), plain stand-ins elsewhere
    ("vimco-seq", {}, 3, 3),
    ("vimco-seq", {"lookahead": False}, 3, 3),
    ("vimco-seq", {"align": "progress"}, 3, 3),
    ("vimco-seq", {"align": "progress-time", "lookahead": False}, 2, 2),
    ("vimco-seq", {"align": "time"}, 3, 3),
    ("vimco-seq", {"align": "progress-time"}, 3, 3),
    ("vimco-seq", {"align": "progress", "mix": "running"}, 3, 3),  # coefficients from prepared running statistics
    ("vimco-seq", {"align": "time", "mix": "running"}, 2, 2),
    ("vimco-seq", {"align": "fitted"}, 3, 3),
    ("vimco-seq", {"align": "fitted", "mix": "running"}, 2, 2),
    ("vimco", {"weight_control": True}, 3, 3),
    ("vimco-seq", {"weight_control": True}, 3, 3),
    ("vimco-seq", {"align": "progress", "weight_control": True}, 2, 2),
    ("vimco-seq", {"future_control": True}, 3, 3),  # with the lookahead only (binary problems)
    ("vimco-seq", {"future_control": True, "weight_control": True}, 2, 2),
    ("vimco-seq", {"values": "model"}, 3, 3),  # the lookahead's stand-ins from the model's values
    ("vimco-seq", {"values": "model", "future_control": True, "weight_control": True}, 2, 2),
    ("reinforce", {"baseline": "learned"}, 2, 1),
]
#: the VIMCO variants also run on problems with impossible (log weight -inf) states
IMPOSSIBLE_CASES = [case for case in CASES if case[0].startswith("vimco")]


def estimate(problem, name, options, num_samples, *, seed, prepare=None):
    """N gradient estimates [N, D] for phi and theta."""
    generator = torch.Generator().manual_seed(seed)
    estimator = build_estimator(name, **options).double()
    if prepare is not None:
        prepare(estimator)
    phi, theta = problem.leaves(REPLICAS)
    log_weights, log_probs, progress, alternative = problem.sample(phi, theta, num_samples, generator)
    if alternative is not None and options.get("values") == "model":
        alternative = with_prefix_values(alternative)
    baseline = None
    if estimator.takes_baseline:  # a stand-in for the baseline network, different per step; its
        # regression term must not bias the proposal's or the model's gradient
        baseline = torch.linspace(-0.5, 0.5, log_weights.shape[-1], dtype=torch.float64).expand_as(log_weights)
        if not options.get("per_step", True):
            baseline = baseline[..., 0]
        baseline = baseline.clone().requires_grad_(True)
    out = estimator(log_weights, log_probs, baseline=baseline, progress=progress, alternative=alternative)
    out.loss.backward()
    # loss is the batch mean: replica b's own estimate of -grad is N * grad[b]
    return -REPLICAS * phi.grad, -REPLICAS * theta.grad


def exact(problem, num_samples):
    phi = problem.phi0.to(torch.float64).clone().requires_grad_(True)
    theta = problem.theta0.to(torch.float64).clone().requires_grad_(True)
    objective = problem.exact_objective(phi, theta, num_samples)
    return torch.autograd.grad(objective, (phi, theta))


def assert_unbiased(estimates, expected, label):
    mean = estimates.mean(0)
    stderr = estimates.std(0) / REPLICAS**0.5
    z = (mean - expected).abs() / (stderr + 1e-12)
    if not bool((z <= Z).all()):
        raise AssertionError(f"{label}: mean {mean.tolist()} vs exact {expected.tolist()}, z-scores {z.tolist()} (limit {Z})")


def warm_up(estimator):
    """Give the stateful baselines non-trivial pre-update values (the estimate must stay unbiased)."""
    if hasattr(estimator, "fit_moments"):  # coefficients a = 0.3 (progress weight), beta = 0.4 (mix), lambda = 0.7
        estimator.fit_moments.copy_(torch.tensor([0.3, 0.4, 1.0, 1.0, 0.0]))
        estimator.future_moments.copy_(torch.tensor([0.7, 1.0]))
        return
    baseline = torch.zeros(2, 4, 3, dtype=torch.float64) if estimator.takes_baseline else None
    estimator(torch.full((2, 4, 3), 1.5, dtype=torch.float64), torch.zeros(2, 4, 3, dtype=torch.float64), baseline=baseline)


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize("name,options,num_samples,objective_samples", CASES, ids=lambda c: str(c))
def test_mean_estimate_matches_exact_gradient(problem, name, options, num_samples, objective_samples):
    phi_hat, theta_hat = estimate(problem, name, options, num_samples, seed=1, prepare=warm_up)
    phi_exact, theta_exact = exact(problem, objective_samples)
    assert_unbiased(phi_hat, phi_exact, f"{name}{options} K={num_samples} phi")
    assert_unbiased(theta_hat, theta_exact, f"{name}{options} K={num_samples} theta")


@pytest.mark.parametrize("problem", IMPOSSIBLE_PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize("name,options,num_samples,objective_samples", IMPOSSIBLE_CASES, ids=lambda c: str(c))
def test_impossible_particles_keep_the_estimate_unbiased(problem, name, options, num_samples, objective_samples):
    """Some particles have log weight -inf (and some draws have all K impossible): the estimate is
    unbiased for the bound that counts all-impossible draws as 0."""
    phi_hat, theta_hat = estimate(problem, name, options, num_samples, seed=4, prepare=warm_up)
    assert bool(torch.isfinite(phi_hat).all() and torch.isfinite(theta_hat).all())
    phi_exact, theta_exact = exact(problem, objective_samples)
    assert_unbiased(phi_hat, phi_exact, f"{name}{options} K={num_samples} phi ({problem.name})")
    assert_unbiased(theta_hat, theta_exact, f"{name}{options} K={num_samples} theta ({problem.name})")


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_nvil_variance_normalisation_scales_the_proposal_gradient(problem):
    """With running variance v, the proposal's gradient is the exact one divided by max(1, sqrt v)."""

    def prepare(estimator):
        estimator.running_mean.fill_(0.4)
        estimator.running_var.fill_(9.0)

    phi_hat, theta_hat = estimate(problem, "nvil", {}, 1, seed=2, prepare=prepare)
    phi_exact, theta_exact = exact(problem, 1)
    assert_unbiased(phi_hat, phi_exact / 3.0, "nvil phi / 3")
    assert_unbiased(theta_hat, theta_exact, "nvil theta")


def test_z_test_rejects_a_biased_estimator():
    """Control: a baseline equal to the sample's own return removes the score term, which is biased."""
    problem = MarkovBernoulli(3)
    generator = torch.Generator().manual_seed(3)
    phi, theta = problem.leaves(REPLICAS)
    log_weights, log_probs = problem.draw(phi, theta, 1, generator)
    own_return = log_weights.detach().flip(-1).cumsum(-1).flip(-1)
    reinforce_loss(log_weights, log_probs, baseline=own_return).loss.backward()
    phi_exact, _ = exact(problem, 1)
    with pytest.raises(AssertionError, match="z-scores"):
        assert_unbiased(-REPLICAS * phi.grad, phi_exact, "biased control")
