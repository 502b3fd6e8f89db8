"""The objective layer: one place where the estimator meets every model family's rollout."""

from __future__ import annotations

import pytest
import torch
from torch import distributions as D

from hardalign.attention import Trajectory
from hardalign.estimators import ESTIMATORS, build_estimator
from hardalign.objective import LatentOutput, training_terms


def trajectory(K=4, B=3, T=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, generator=generator).requires_grad_()
    q = D.Bernoulli(logits=logits.expand(K, B, T))
    z = (torch.rand(K, B, T, generator=generator) < q.probs).float()
    log_q = q.log_prob(z)
    return Trajectory.from_log_weights(0.7 * z - log_q, log_q), logits


def test_a_dict_without_latent_decisions_passes_through():
    loss = torch.tensor(2.0, requires_grad=True)
    terms = training_terms({"loss": loss, "objective": torch.tensor(-2.0)}, build_estimator("vimco"))
    assert terms["loss"] is loss and set(terms) == {"loss", "objective"}
    with pytest.raises(TypeError, match="'loss'"):
        training_terms({"objective": loss}, build_estimator("vimco"))
    with pytest.raises(TypeError, match="LatentOutput"):
        training_terms(loss, build_estimator("vimco"))


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_extra_losses_are_added_and_logged_and_the_estimator_loss_is_unchanged(name):
    traj, _ = trajectory()
    options = {"baseline": "learned"} if name == "reinforce" else {}
    baseline = torch.zeros(4, 3, 5)
    plain = training_terms(LatentOutput(traj, baseline=baseline), build_estimator(name, **options))
    bonus = torch.tensor(1.5)
    terms = training_terms(LatentOutput(traj, baseline=baseline, losses={"bonus": bonus}, metrics={"rate": torch.tensor(0.3)}), build_estimator(name, **options))
    torch.testing.assert_close(terms["loss"], plain["loss"] + bonus)
    assert terms["bonus"] == bonus and terms["rate"] == 0.3
    assert all(not value.requires_grad for key, value in terms.items() if key != "loss")


def test_the_baseline_is_computed_only_for_estimators_that_take_one():
    traj, logits = trajectory()
    calls = []

    def baseline():
        calls.append(1)
        return torch.zeros(4, 3, 5, requires_grad=True)

    training_terms(LatentOutput(traj, baseline=baseline), build_estimator("vimco-seq"))
    assert calls == []
    training_terms(LatentOutput(traj, baseline=baseline), build_estimator("nvil"))
    training_terms(LatentOutput(traj, baseline=baseline), build_estimator("reinforce", baseline="learned"))
    assert calls == [1, 1]
    with pytest.raises(ValueError, match="provides none"):
        training_terms(LatentOutput(traj), build_estimator("reinforce", baseline="learned"))


def test_a_term_name_may_not_shadow_another():
    traj, _ = trajectory()
    with pytest.raises(ValueError, match="'objective'"):
        training_terms(LatentOutput(traj, metrics={"objective": torch.tensor(0.0)}), build_estimator("vimco"))


def test_progress_reaches_the_sequential_estimator():
    traj, logits = trajectory(T=6)
    estimator = build_estimator("vimco-seq")
    seen = {}
    original = estimator.forward

    def spy(*args, **kwargs):
        seen["progress"] = kwargs.get("progress")
        return original(*args, **kwargs)

    estimator.forward = spy
    traj.progress = torch.zeros(4, 3, 6, dtype=torch.long)
    training_terms(LatentOutput(traj), estimator)["loss"].backward()
    assert seen["progress"] is traj.progress and logits.grad is not None
