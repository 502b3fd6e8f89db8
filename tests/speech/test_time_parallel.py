"""Time-parallel training (lattice posterior): the same log-probabilities as the step-by-step rollout."""

from __future__ import annotations

import pytest
import torch

from hardalign.estimators import build_estimator
from hardalign.objective import training_terms
from hardalign.speech.model import HardAlignmentRecognizer
from tests.speech.toy import toy_batch, toy_utterances

DIM, PHONES = 12, 8


def lattice_model(**kwargs) -> HardAlignmentRecognizer:
    options = dict(hidden_size=16, encoder_layers=1, decision_hidden=16, label_embedding=8, posterior_hidden=16, baseline_hidden=8)
    options.update(kwargs)
    torch.manual_seed(0)
    model = HardAlignmentRecognizer(DIM, PHONES, posterior_kind="lattice", **options)
    with torch.no_grad():  # make every path matter: non-trivial weights everywhere
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model


def tight_batch() -> dict:
    batch = toy_batch(toy_utterances(6, num_phones=PHONES, dim=DIM))
    batch["feature_lengths"][0] = batch["target_lengths"][0] + 1  # every step forced
    return batch


def _double_batch() -> dict:
    return {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in tight_batch().items()}


@pytest.mark.parametrize("encoder,emit_cue", [("own", False), ("shared", False), ("shared", True)])
@pytest.mark.parametrize("aligner", [True, False])
@pytest.mark.parametrize("recurrence", [True, False])
def test_parallel_scores_equal_the_step_by_step_rollout(aligner, encoder, emit_cue, recurrence):
    model = lattice_model(posterior_aligner=aligner, posterior_encoder=encoder, ctc_emit_prior=emit_cue, decision_recurrence=recurrence).double()
    assert model.uses_ctc_emit_prior == (emit_cue and aligner)
    batch = _double_batch()
    stepwise = model.sample_alignments(batch, num_samples=5, generator=torch.Generator().manual_seed(1))
    memory = model.encode(batch["features"], batch["feature_lengths"], batch["targets"], batch["target_lengths"])
    parallel = model.score_alignments(memory, stepwise.locations)
    for name in ("log_q", "log_p", "log_weights", "entropy"):
        torch.testing.assert_close(getattr(parallel, name), getattr(stepwise, name), rtol=1e-9, atol=1e-9, msg=name)
    for name in ("mask", "valid", "progress"):
        assert torch.equal(getattr(parallel, name), getattr(stepwise, name)), name
    stepwise_states = torch.stack(stepwise.final_state["record"]["proposal_state"], dim=1)
    torch.testing.assert_close(parallel.final_state["record"]["proposal_state"](), stepwise_states)


@pytest.mark.parametrize("aligner", [True, False])
def test_alternative_is_the_step_log_weight_of_the_other_decision(aligner):
    """What vimco-seq's lookahead reads: at every free step, the log weight had the decision been
    flipped there (same past), i.e. step t of the re-scored path with z_t flipped."""
    model = lattice_model(posterior_aligner=aligner, ctc_emit_prior=aligner).double()
    batch = _double_batch()
    memory = model.encode(batch["features"], batch["feature_lengths"], batch["targets"], batch["target_lengths"])
    z = model._draw_from_lattice(memory, 3, generator=torch.Generator().manual_seed(2))
    trajectory = model.score_alignments(memory, z)
    alternative = trajectory.alternative
    assert torch.equal(alternative.taken, z > 0.5)
    assert bool(trajectory.mask.any())
    for t in range(z.shape[-1]):
        flipped = z.clone()
        flipped[..., t] = 1 - flipped[..., t]
        expected = model.score_alignments(memory, flipped).log_weights[..., t]
        free = trajectory.mask[..., t]
        torch.testing.assert_close(alternative.log_weights[..., t][free], expected[free], rtol=1e-9, atol=1e-9)
        assert bool((alternative.log_weights[..., t][~free] == 0).all())


def test_lattice_draws_respect_forcing_and_match_the_rollout_distribution():
    model = lattice_model()
    batch = tight_batch()
    memory = model.encode(batch["features"], batch["feature_lengths"], batch["targets"], batch["target_lengths"])
    z = model._draw_from_lattice(memory, 4000, generator=torch.Generator().manual_seed(0))
    steps = torch.arange(z.shape[-1])
    valid = steps < batch["feature_lengths"].unsqueeze(1)
    assert not (z.bool() & ~valid).any()  # nothing in the padding
    assert torch.equal((z * valid).sum(-1), (batch["target_lengths"] + 1).to(z.dtype).expand(z.shape[:2]))
    # first-step emission frequency against q's probability there (forced rows excluded)
    traj = model.score_alignments(memory, z)
    free = traj.mask[:, :, 0]
    expected = torch.sigmoid(model.posterior.path_logits(memory["posterior"], torch.zeros_like(z, dtype=torch.long))[:, :, 0])
    for b in range(z.shape[1]):
        if free[:, b].all():
            frequency = z[:, b, 0].mean()
            assert abs(frequency - expected[0, b]) < 4.5 * (expected[0, b] * (1 - expected[0, b]) / z.shape[0]).sqrt() + 1e-6


@pytest.mark.parametrize("name", ["vimco-seq", "nvil", "reinforce"])
def test_time_parallel_training_step(name):
    model = lattice_model(dropout=0.2, dropout_ramp_steps=4)
    estimator = build_estimator(name, **({"baseline": "learned"} if name == "reinforce" else {}))
    terms = training_terms(model(tight_batch(), num_samples=3, step=2), estimator)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"])
    assert model.posterior.gain.grad is not None and model.posterior.gain.grad.abs() > 0
    assert model.gate_decision.weight.grad.abs().sum() > 0 and model.emit_head.weight.grad.abs().sum() > 0
    if name != "vimco-seq":
        assert model.baseline_net[-1].bias.grad.abs() > 0


def test_conv_lookahead_reads_only_the_window_ahead_and_trains():
    model = lattice_model(posterior_lookahead="conv", posterior_lookahead_steps=3).double()
    posterior = model.posterior
    assert not hasattr(posterior, "frames_behind")
    encoded = torch.randn(2, 9, 16, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([9, 6])
    ahead = posterior._frames_ahead(encoded, lengths)
    assert ahead.shape == (2, 9, 8)
    for t, b in [(0, 0), (4, 0), (8, 0), (2, 1), (5, 1)]:
        (grad,) = torch.autograd.grad(ahead[b, t].sum(), encoded, retain_graph=True)
        reads = grad[b].abs().sum(-1) > 0  # steps that step t of utterance b reads
        expected = torch.zeros(9, dtype=torch.bool)
        expected[t : min(t + 3, int(lengths[b]))] = True
        assert torch.equal(reads, expected), (b, t)
        assert grad[1 - b].abs().sum() == 0
    # the parallel scores still equal the rollout's, and a training step reaches the new layers
    batch = _double_batch()
    stepwise = model.sample_alignments(batch, num_samples=3, generator=torch.Generator().manual_seed(1))
    memory = model.encode(batch["features"], batch["feature_lengths"], batch["targets"], batch["target_lengths"])
    torch.testing.assert_close(model.score_alignments(memory, stepwise.locations).log_q, stepwise.log_q)
    terms = training_terms(model(batch, num_samples=3, step=2), build_estimator("vimco-seq"))
    terms["loss"].backward()
    assert posterior.lookahead_conv.weight.grad.abs().sum() > 0 and posterior.lookahead_proj.weight.grad.abs().sum() > 0


def test_lookahead_options_are_checked():
    with pytest.raises(ValueError, match="posterior_lookahead"):
        lattice_model(posterior_lookahead="bidirectional")
    with pytest.raises(ValueError, match="posterior_lookahead_steps"):
        lattice_model(posterior_lookahead="conv", posterior_lookahead_steps=0)


@pytest.mark.parametrize("aligner", [True, False])
def test_flat_start_scores_every_alignment_alike(aligner):
    """``flat_start``: the decisions' log-probability under the uniform alignment prior is the same
    for every alignment, -log C(T, U + 1); the labels' terms and q are unchanged; p's own decision
    log-probabilities are kept for its loss; the lookahead's alternative is the flipped path's."""
    model = lattice_model(posterior_aligner=aligner, ctc_emit_prior=aligner).double()
    batch = _double_batch()
    memory = model.encode(batch["features"], batch["feature_lengths"], batch["targets"], batch["target_lengths"])
    z = model._draw_from_lattice(memory, 5, generator=torch.Generator().manual_seed(3))
    learnt, flat = model.score_alignments(memory, z), model.score_alignments(memory, z, flat=True)
    torch.testing.assert_close(flat.log_q, learnt.log_q)
    p_decisions = flat.final_state["record"]["decision_logp"]
    assert "decision_logp" not in learnt.final_state["record"]
    assert bool((p_decisions[~learnt.mask] == 0).all()) and bool((p_decisions[learnt.mask] < 0).all())
    labels_only = learnt.log_p.sum(-1) - p_decisions.sum(-1)  # forced steps carry no decision term
    T, U1 = batch["feature_lengths"].double(), (batch["target_lengths"] + 1).double()
    log_paths = torch.lgamma(T + 1) - torch.lgamma(U1 + 1) - torch.lgamma(T - U1 + 1)  # log C(T, U + 1)
    torch.testing.assert_close(flat.log_p.sum(-1), labels_only - log_paths, rtol=1e-9, atol=1e-9)
    for t in range(z.shape[-1]):
        flipped = z.clone()
        flipped[..., t] = 1 - flipped[..., t]
        expected = model.score_alignments(memory, flipped, flat=True).log_weights[..., t]
        free = flat.mask[..., t]
        torch.testing.assert_close(flat.alternative.log_weights[..., t][free], expected[free], rtol=1e-9, atol=1e-9)


def test_flat_start_trains_the_emit_head_by_its_own_loss_then_ends():
    model = lattice_model(posterior_aligner=False, flat_start=0.5)
    estimator = build_estimator("vimco-seq")
    model.budget_spent = 0.2
    output = model(tight_batch(), num_samples=3, step=1)
    assert "flat_start_decisions" in output.losses
    terms = training_terms(output, estimator)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"])
    assert model.emit_head.weight.grad.abs().sum() > 0 and model.posterior.gain.grad.abs() > 0
    # the emit head's gradient comes from that loss alone: without it, none reaches the head
    model.zero_grad()
    output = model(tight_batch(), num_samples=3, step=1)
    output.losses.pop("flat_start_decisions")
    output.losses.pop("forced_emission", None)
    training_terms(output, estimator)["loss"].backward()
    assert model.emit_head.weight.grad is None or model.emit_head.weight.grad.abs().sum() == 0
    model.budget_spent = 0.5
    assert "flat_start_decisions" not in model(tight_batch(), num_samples=3, step=2).losses
    model.eval()
    model.budget_spent = 0.0
    with torch.no_grad():
        assert "flat_start_decisions" not in model(tight_batch(), num_samples=3, step=0).losses


def test_flat_start_options_are_checked():
    with pytest.raises(ValueError, match="flat_start"):
        lattice_model(flat_start=1.0)
    with pytest.raises(ValueError, match="flat_start=0.3 .*posterior_kind='lattice'"):
        HardAlignmentRecognizer(DIM, PHONES, posterior_kind="recurrent", flat_start=0.3)
