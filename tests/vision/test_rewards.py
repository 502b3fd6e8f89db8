"""Per-step rewards of the glimpse models: values, the unchanged objective, exact unbiasedness."""

import itertools

import pytest
import torch

from hardalign.estimators import build_estimator, reinforce_loss
from hardalign.objective import training_terms
from hardalign.sampling import unfold
from hardalign.vision.ram import RAM
from hardalign.vision.saccader import Saccader


def _ram(**kwargs):
    options = dict(num_glimpses=3, patch_size=4, num_scales=2, glimpse_hidden=8, hidden_size=16)
    options.update(kwargs)
    return RAM(**options)


def _batch(n=6, height=20, width=30, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    return {
        "images": torch.rand(n, 1, height, width, generator=generator, dtype=dtype),
        "labels": torch.randint(0, 10, (n,), generator=generator),
    }


def _step_log_lik(traj, num_samples):
    return unfold(torch.stack(traj.final_state["step_log_lik"], dim=1), num_samples)  # [K * B, T] -> [K, B, T]


@pytest.mark.parametrize("glimpse_net", ["mlp", "conv"])
def test_step_rewards_values_and_the_same_total_for_increments(glimpse_net):
    batch = _batch()
    runs = {}
    for rewards in ("final", "increments", "sum"):
        torch.manual_seed(3)
        model = _ram(step_rewards=rewards, glimpse_net=glimpse_net, patch_size=8)
        runs[rewards] = model.run(model.encode(batch), num_samples=2, generator=torch.Generator().manual_seed(5))
    a = _step_log_lik(runs["sum"], 2)  # a_t = log p(y | glimpses <= t), [K, B, T]
    torch.testing.assert_close(runs["sum"].log_weights, a)
    torch.testing.assert_close(runs["increments"].log_weights, torch.diff(a, dim=-1, prepend=torch.zeros_like(a[..., :1])))
    torch.testing.assert_close(runs["final"].log_weights[..., -1], a[..., -1])
    assert runs["final"].log_weights[..., :-1].abs().max() == 0
    # increments sum to the final log-likelihood: the objective is unchanged
    torch.testing.assert_close(runs["increments"].log_weights.sum(-1), runs["final"].log_weights.sum(-1))


def test_increments_change_the_sequential_signals_and_not_the_pathwise_gradient():
    batch = _batch(dtype=torch.float64)
    grads, signals = {}, {}
    for rewards in ("final", "increments"):
        torch.manual_seed(3)
        model = _ram(step_rewards=rewards).double()
        traj = model.run(model.encode(batch), num_samples=3, generator=torch.Generator().manual_seed(5))
        for name in ("vimco", "vimco-seq"):
            signals[rewards, name] = build_estimator(name)(traj.log_weights, traj.log_q, traj.mask).signals
        params = [model.classifier.weight, model.core.weight_hh]
        grads[rewards] = torch.autograd.grad(traj.log_weights.sum(), params)
    for g_final, g_increments in zip(grads["final"], grads["increments"]):
        torch.testing.assert_close(g_final, g_increments, rtol=1e-10, atol=1e-12)
    # with one reward at the end vimco-seq is vimco; with per-step increments it is not
    torch.testing.assert_close(signals["final", "vimco"], signals["final", "vimco-seq"])
    assert (signals["increments", "vimco"] - signals["increments", "vimco-seq"]).abs().max() > 1e-3


@pytest.mark.parametrize("rewards", ["final", "increments", "sum"])
def test_step_loss_trains_the_early_predictions_but_never_the_location_network(rewards):
    model = _ram(step_rewards=rewards, step_loss_weight=0.5)
    output = model(_batch(), num_samples=2, step=0)
    assert set(output.losses) == {"step_nll"} and "log_lik_first" in output.metrics
    a = _step_log_lik(output.trajectory, 2)
    torch.testing.assert_close(output.losses["step_nll"], -0.5 * a[..., :-1].mean())
    step_nll = output.losses["step_nll"]
    locator = list(model.locator.parameters())
    assert all(g is None for g in torch.autograd.grad(step_nll, locator, retain_graph=True, allow_unused=True))
    assert torch.autograd.grad(step_nll, model.classifier.weight, retain_graph=True)[0].abs().max() > 0
    terms = training_terms(output, build_estimator("nvil"))
    assert "step_nll" in terms and torch.isfinite(terms["loss"])
    # "final" without the auxiliary loss classifies only at the end
    plain = _ram()
    assert not plain.classify_every_step and plain(_batch(), num_samples=1, step=0).losses == {}


def _protocol_run(model, memory, cells):
    """The protocol along a given cell sequence: per-step log pi and log weights ``[T]``, one example."""
    state = model.initial_state(memory)
    log_pis, log_weights = [], []
    for cell in cells:
        location = torch.tensor([cell])
        log_pis.append(model.policy(state, memory).log_prob(location))
        state, log_p, _ = model.update(state, memory, location, model.read(memory, location))
        log_weights.append(log_p - log_pis[-1])
    return torch.cat(log_pis), torch.cat(log_weights)


def test_increments_are_unbiased_exactly_by_enumeration():
    # a Saccader on 8x8 images has 2x2 = 4 cells; with T = 2 glimpses there are 12 trajectories,
    # so the expected REINFORCE gradient (no baseline) is a finite sum: the same for "final" and
    # "increments" (a_{t-1} is a baseline), different for "sum" (another objective)
    expected = {}
    for rewards in ("final", "increments", "sum"):
        torch.manual_seed(0)
        model = Saccader(num_glimpses=2, channels=8, hidden_size=8, step_rewards=rewards).double()
        batch = {"images": torch.rand(1, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), "labels": torch.tensor([3])}
        params = [p for name, p in model.named_parameters() if name.startswith(("attention", "keys", "query", "cell."))]
        total = [torch.zeros_like(p) for p in params]
        for cells in itertools.permutations(range(4), 2):
            memory = dict(model.encode(batch), num_steps=2)
            log_pi, log_weights = _protocol_run(model, memory, cells)
            out = reinforce_loss(log_weights.detach()[None, None], log_pi[None, None], per_step=True)
            grads = torch.autograd.grad(out.loss, params, allow_unused=True)
            probability = log_pi.sum().exp().detach()
            for acc, g in zip(total, grads):
                if g is not None:
                    acc += probability * g
        expected[rewards] = total
    assert any(g.abs().max() > 1e-6 for g in expected["final"])
    for g_final, g_increments in zip(expected["final"], expected["increments"]):
        torch.testing.assert_close(g_final, g_increments, rtol=1e-9, atol=1e-12)
    assert any((g_final - g_sum).abs().max() > 1e-6 for g_final, g_sum in zip(expected["final"], expected["sum"]))


def test_invalid_reward_options():
    with pytest.raises(ValueError, match="step_rewards"):
        _ram(step_rewards="every")
    with pytest.raises(ValueError, match="step_loss_weight"):
        _ram(step_loss_weight=-1.0)
    with pytest.raises(ValueError, match="glimpse_net"):
        _ram(glimpse_net="resnet")
