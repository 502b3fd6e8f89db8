"""RAM: the protocol, log weights, log-prob of the raw sample, and gradient routing."""

import pytest
import torch
from torch import distributions as D

from hardalign.objective import training_terms

from hardalign.attention import HardAttention
from hardalign.estimators import ESTIMATORS, build_estimator
from hardalign.vision.ram import RAM


def _model(**kwargs):
    options = dict(num_glimpses=3, patch_size=4, num_scales=2, glimpse_hidden=8, hidden_size=16)
    options.update(kwargs)
    return RAM(**options)


def _batch(n=6, channels=1, height=20, width=30):
    generator = torch.Generator().manual_seed(0)
    return {
        "images": torch.rand(n, channels, height, width, generator=generator),
        "labels": torch.randint(0, 10, (n,), generator=generator),
    }


def test_implements_protocol_and_log_weights_are_the_reward():
    model = _model()
    assert isinstance(model, HardAttention)
    batch = _batch()
    memory = model.encode(batch)
    traj = model.run(memory, num_samples=4)
    assert traj.log_weights.shape == (4, 6, 3) and traj.locations.shape == (4, 6, 3, 2)
    # proposal = policy: every step's log weight is 0 except the last, which is log p(y | x, l)
    assert traj.log_weights[..., :-1].abs().max() == 0
    log_softmax = torch.log_softmax(model.classifier(traj.final_state["h"]), -1).reshape(4, 6, 10)
    expected = log_softmax.gather(-1, batch["labels"].expand(4, 6)[..., None]).squeeze(-1)
    torch.testing.assert_close(traj.log_weights[..., -1], expected)
    assert traj.mask.all()


def test_log_prob_is_of_the_raw_sample_and_the_retina_sees_the_clamped_one():
    model = _model(location_std=3.0)  # wide: most samples fall outside [-1, 1]
    batch = _batch()
    memory = model.encode(batch)
    memory["num_steps"] = model.num_glimpses
    state = model.initial_state(memory)
    dist = model.policy(state, memory)
    raw = torch.tensor([[2.5, -3.0]]).expand(6, 2)
    mean = torch.tanh(model.locator(state["h"]))
    expected = D.Normal(mean, 3.0).log_prob(raw).sum(-1)
    torch.testing.assert_close(dist.log_prob(raw), expected)
    torch.testing.assert_close(model.read(memory, raw), model.retina(memory["images"], raw.clamp(-1, 1)))
    traj = model.run(memory, num_samples=2)
    assert traj.locations.abs().max() > 1  # the trajectory keeps the raw samples
    torch.testing.assert_close(
        traj.log_q[0, :, 0], model.policy(model.initial_state(memory), memory).log_prob(traj.locations[0, :, 0])
    )


def _grads(loss, params):
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.mark.parametrize("detach_policy_input", [True, False])
def test_classification_gradient_never_reaches_the_location_network(detach_policy_input):
    model = _model(detach_policy_input=detach_policy_input)
    traj = model.run(model.encode(_batch()), num_samples=2)
    locator = list(model.locator.parameters())
    # the classifier's log-likelihood (the reward) has no path into the location network ...
    reward = traj.log_weights.sum()
    assert all(g.abs().max() == 0 for g in _grads(reward, locator))
    # ... but it does train the classifier, the core and the glimpse network
    assert _grads(reward, [model.classifier.weight])[0].abs().max() > 0
    assert _grads(reward, [model.what.weight])[0].abs().max() > 0
    # the score function does reach it
    assert all(g.abs().max() > 0 for g in _grads(traj.log_q.sum(), locator))


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_location_network_gets_exactly_the_estimators_score_function_term(name):
    torch.manual_seed(1)
    model = _model().double()  # float64: the cancelling pathwise terms leave no rounding residue
    estimator = build_estimator(name)
    batch = _batch()
    batch["images"] = batch["images"].double()
    traj = model.run(model.encode(batch), num_samples=3)
    baseline = None
    if name == "nvil":
        from hardalign.sampling import unfold

        baseline = unfold(torch.stack(traj.final_state["baselines"], 1), 3)
    estimator.eval()  # NVIL: use, but do not update, its running statistics (called twice here)
    out = estimator(traj.log_weights, traj.log_q, mask=traj.mask, baseline=baseline)
    locator = list(model.locator.parameters())
    # the same estimator with the pathwise path cut: only its score-function term is left, which
    # is all the location network may receive
    score_only = estimator(traj.log_weights.detach(), traj.log_q, mask=traj.mask, baseline=baseline)
    expected = _grads(score_only.loss, locator)
    got = _grads(out.loss, locator)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
        assert e.abs().max() > 0


def test_random_policy_control_has_no_trainable_location_network():
    model = _model(policy="random")
    traj = model.run(model.encode(_batch()), num_samples=2)
    assert traj.locations.abs().max() <= 1
    assert not traj.log_q.requires_grad
    out = training_terms(model(_batch(), num_samples=1, step=0), build_estimator("reinforce"))
    out["loss"].backward()
    assert model.locator.weight.grad is None and model.classifier.weight.grad is not None


def test_three_channels_and_non_square_images_train():
    model = _model(in_channels=3)
    batch = _batch(channels=3, height=17, width=41)
    out = training_terms(model(batch, num_samples=2, step=0), build_estimator("vimco-seq"))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="channel"):
        model(_batch(channels=1), num_samples=2, step=0)


def test_invalid_options():
    with pytest.raises(ValueError, match="policy"):
        _model(policy="uniform")
    with pytest.raises(ValueError, match="location_std"):
        _model(location_std=0.0)


def test_context_network_makes_the_first_location_depend_on_the_image():
    batch = _batch(n=2)
    images = batch["images"].clone()
    images[1] = 0.0  # a second, different image
    for context, differs in ((False, False), (True, True)):
        torch.manual_seed(0)
        model = _model(context=context)
        memory = model.encode({"images": images})
        first = model.location_policy(model.initial_state(memory), memory).mean  # [B, 2]
        assert bool((first[0] - first[1]).abs().max() > 1e-6) == differs, context
    # the context network is trained by the classification gradient through the core
    traj = model.run(model.encode(batch), num_samples=2)
    assert _grads(traj.log_weights.sum(), [model.context.weight])[0].abs().max() > 0
    # and the location network still gets no classification gradient through it
    assert all(g.abs().max() == 0 for g in _grads(traj.log_weights.sum(), list(model.locator.parameters())))
