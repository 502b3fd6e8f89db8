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


def _all_alignments(memory, model) -> torch.Tensor:
    """Every decision sequence of every utterance that respects the forcing: ``z [A, B, T]`` padded
    with copies of a valid one (with a per-utterance validity mask ``[A, B]``)."""
    from itertools import product

    from hardalign.speech.model import forced_decisions

    num_steps, num_labels = memory["num_steps"], memory["num_labels"]
    T = int(num_steps.max())
    candidates = torch.tensor(list(product([0.0, 1.0], repeat=T)), dtype=torch.float64)  # [2^T, T]
    emitted = candidates.cumsum(-1) - candidates
    keep = []
    for b in range(num_steps.shape[0]):
        is_forced, value = forced_decisions(torch.arange(T), num_steps[b], emitted.long(), num_labels[b])
        keep.append(((~is_forced) | (candidates == value.double())).all(-1))
    return candidates, torch.stack(keep, dim=1)  # [A, T], [A, B]


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("aligner", [True, False])
def test_lattice_step_log_weights_match_scored_paths(aligner, flat):
    """The lattice evaluation gives, at the states a path visits, exactly the step log weights
    that score_alignments gives that path (both decisions: the taken one and the alternative)."""
    model = lattice_model(posterior_aligner=aligner, ctc_emit_prior=aligner, decision_recurrence=False).double().eval()
    batch = _double_batch()
    memory = model.encode(batch["features"], batch["feature_lengths"], batch["targets"], batch["target_lengths"])
    z = model._draw_from_lattice(memory, 6, generator=torch.Generator().manual_seed(3))
    trajectory = model.score_alignments(memory, z, flat=flat)
    lattice, emit_prob, first = model.lattice_step_log_weights(memory, flat=flat, chunk=3)
    assert first is None
    K, B, T = z.shape
    emitted = trajectory.progress
    z_prev = torch.nn.functional.pad(z, (1, 0))[..., :-1].long()
    at = lattice.unsqueeze(0).expand(K, -1, -1, -1, -1, -1)
    index = emitted.view(K, B, T, 1, 1, 1).expand(K, B, T, 1, 2, 2)
    rows = at.gather(3, index).squeeze(3)  # [K, B, T, 2 (z_prev), 2 (d)]
    rows = rows.gather(3, z_prev.view(K, B, T, 1, 1).expand(K, B, T, 1, 2)).squeeze(3)  # [K, B, T, 2 (d)]
    taken = rows.gather(-1, z.long().unsqueeze(-1)).squeeze(-1)
    other = rows.gather(-1, (1 - z).long().unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(taken, trajectory.log_weights, rtol=1e-9, atol=1e-9)
    mask = trajectory.mask
    torch.testing.assert_close(other[mask], trajectory.alternative.log_weights[mask], rtol=1e-9, atol=1e-9)
    assert bool(torch.isfinite(lattice).all())
    # q's emit probability: 0 or 1 at forced steps, the path's own elsewhere
    prob = emit_prob.unsqueeze(0).expand(K, -1, -1, -1).gather(3, emitted.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(torch.log(torch.where(z > 0.5, prob, 1 - prob))[trajectory.valid], trajectory.log_q[trajectory.valid], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("flat", [False, True])
def test_expected_future_log_weights_equal_enumeration(flat):
    """V from the backward recursion is the exact expectation under q of the remaining log weight:
    checked from the start state and, for a branch, after the first decision, by summing over
    every alignment the forcing allows."""
    model = lattice_model(posterior_aligner=True, ctc_emit_prior=True, decision_recurrence=False).double().eval()
    batch = {k: v[:3] if torch.is_tensor(v) else v[:3] for k, v in _double_batch().items()}
    batch["feature_lengths"] = torch.minimum(batch["feature_lengths"], batch["target_lengths"] + 5)
    T = int(batch["feature_lengths"].max())
    batch["features"] = batch["features"][:, :T]
    memory = model.encode(batch["features"], batch["feature_lengths"], batch["targets"], batch["target_lengths"])
    values, first = model.expected_future_log_weights(memory, flat=flat)  # [B, T + 1, L + 1, 2]
    assert first is None
    candidates, keep = _all_alignments(memory, model)
    A, B = keep.shape
    scored = model.score_alignments(memory, candidates.unsqueeze(1).expand(A, B, T).contiguous(), flat=flat)
    q = torch.where(keep, scored.log_q.sum(-1), torch.full_like(keep, float("-inf"), dtype=torch.float64)).exp()  # [A, B]
    torch.testing.assert_close(q.sum(0), torch.ones(B, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    total = scored.log_weights.sum(-1)
    torch.testing.assert_close(values[:, 0, 0, 0], (q * total).sum(0), rtol=1e-9, atol=1e-9)
    # after the first step, for each decision d: E[sum_{t >= 1} l_t | z_0 = d]
    for d in (0, 1):
        branch = q * (candidates[:, :1] == d)
        mass = branch.sum(0)
        later = scored.log_weights[..., 1:].sum(-1)
        possible = mass > 0
        expected = (branch * later).sum(0)[possible] / mass[possible]
        torch.testing.assert_close(values[:, 1, d, d][possible], expected, rtol=1e-9, atol=1e-9)
    # what the trajectory hands vimco-seq: the value after each step under each branch
    z = model._draw_from_lattice(memory, 4, generator=torch.Generator().manual_seed(5))
    trajectory = model.score_alignments(memory, z, flat=flat)
    branch_values = trajectory.alternative.values()
    assert branch_values.shape == (2, *z.shape)
    t = 0
    torch.testing.assert_close(branch_values[0, :, :, t], values[:, 1, 1, 1].expand(4, -1))
    torch.testing.assert_close(branch_values[1, :, :, t], values[:, 1, 0, 0].expand(4, -1))


@pytest.mark.parametrize("window", [0, 3])
def test_lattice_in_float32_matches_float64(window):
    """The lattice's in-place float32 evaluation (its tanh through the sigmoid) against the same
    network in float64, every state and a window."""
    model = lattice_model(posterior_aligner=True, ctc_emit_prior=True, decision_recurrence=False).eval()
    batch = tight_batch()
    memory = model.encode(batch["features"], batch["feature_lengths"], batch["targets"], batch["target_lengths"])
    single, single_prob, single_first = model.lattice_step_log_weights(memory, window=window, chunk=3)
    reference = model.double()
    batch = _double_batch()
    memory = reference.encode(batch["features"], batch["feature_lengths"], batch["targets"], batch["target_lengths"])
    double, double_prob, double_first = reference.lattice_step_log_weights(memory, window=window, chunk=3)
    assert single.dtype == torch.float32 and double.dtype == torch.float64
    assert (single_first is None) == (window == 0) and (window == 0 or torch.equal(single_first, double_first))
    # the float32 error comes from the encoders upstream (1.8e-4 at most on log weights of size ~10,
    # the same with torch.tanh and out-of-place activations)
    torch.testing.assert_close(single.double(), double, rtol=1e-4, atol=5e-4)
    torch.testing.assert_close(single_prob.double(), double_prob, rtol=1e-5, atol=1e-6)


def _values_by_loop(step_log_weights, emit_prob, first):
    """The backward recursion written out state by state (the reference for the vectorised one):
    V_t(n, z') = sum_d q_t(d | n) (l_t(n, z', d) + V_{t+1}(n', d)), n' the slot of n + d at t + 1
    (the nearest inside the window), V_T = 0; the branch a forced decision excludes adds nothing."""
    B, T, S, _, _ = step_log_weights.shape
    values = torch.zeros(B, T + 1, S, 2, dtype=step_log_weights.dtype)
    for b in range(B):
        for t in range(T - 1, -1, -1):
            for j in range(S):
                for z_prev in (0, 1):
                    total = 0.0
                    for d in (0, 1):
                        prob = float(emit_prob[b, t, j]) if d else 1 - float(emit_prob[b, t, j])
                        if prob == 0:
                            continue
                        n = j if first is None else int(first[b, t]) + j
                        slot = n + d if first is None else n + d - int(first[b, min(t + 1, T - 1)])
                        slot = min(max(slot, 0), S - 1)
                        total += prob * (float(step_log_weights[b, t, j, z_prev, d]) + float(values[b, t + 1, slot, d]))
                    values[b, t, j, z_prev] = total
    return values


@pytest.mark.parametrize("window", [0, 3])
def test_values_equal_the_recursion_written_out(window):
    model = lattice_model(posterior_aligner=True, ctc_emit_prior=True, decision_recurrence=False, value_window=window).double()
    batch = _double_batch()
    memory = model.encode(batch["features"], batch["feature_lengths"], batch["targets"], batch["target_lengths"])
    values, first = model.expected_future_log_weights(memory)
    step_log_weights, emit_prob, window_first = model.lattice_step_log_weights(memory, window=window)
    torch.testing.assert_close(values, _values_by_loop(step_log_weights, emit_prob, window_first), rtol=1e-12, atol=1e-12)
    assert (first is None) == (window == 0)


def test_lattice_values_need_a_lattice():
    model = lattice_model(decision_recurrence=True).double()
    batch = _double_batch()
    memory = model.encode(batch["features"], batch["feature_lengths"], batch["targets"], batch["target_lengths"])
    with pytest.raises(ValueError, match="decision_recurrence: false and posterior_kind: lattice"):
        model.lattice_step_log_weights(memory)
    z = model._draw_from_lattice(memory, 2)
    assert model.score_alignments(memory, z).alternative.values is None



def test_value_window_evaluates_the_states_around_q():
    """With value_window W the lattice is evaluated at W states per step (n = first + j), each one
    exactly as on the full lattice; the window follows q's expected progress; W >= L + 1 is the
    full lattice; the branch values read from it are finite and feed a training step."""
    model = lattice_model(posterior_aligner=True, ctc_emit_prior=True, decision_recurrence=False).double().eval()
    batch = _double_batch()
    memory = model.encode(batch["features"], batch["feature_lengths"], batch["targets"], batch["target_lengths"])
    full, full_prob, none = model.lattice_step_log_weights(memory)
    B, T, states = full_prob.shape
    W = 3
    windowed, prob, first = model.lattice_step_log_weights(memory, window=W, chunk=4)
    assert none is None and windowed.shape == (B, T, W, 2, 2) and first.shape == (B, T)
    assert bool((first >= 0).all()) and bool((first <= states - W).all())
    assert bool((first[:, 1:] >= first[:, :-1]).all())  # q's expected progress does not go back
    index = (first.unsqueeze(-1) + torch.arange(W)).view(B, T, W, 1, 1).expand(B, T, W, 2, 2)
    torch.testing.assert_close(windowed, full.gather(2, index), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(prob, full_prob.gather(2, index[..., 0, 0]), rtol=1e-9, atol=1e-9)
    everything, _, first_all = model.lattice_step_log_weights(memory, window=states)
    assert first_all is None and torch.equal(everything, full)
    windowed_model = lattice_model(posterior_aligner=True, ctc_emit_prior=True, decision_recurrence=False, value_window=W).double()
    windowed_model.load_state_dict(model.state_dict())
    values, first = windowed_model.expected_future_log_weights(memory)
    assert values.shape == (B, T + 1, W, 2) and first.shape == (B, T + 1)
    z = windowed_model._draw_from_lattice(memory, 3, generator=torch.Generator().manual_seed(6))
    branch = windowed_model.score_alignments(memory, z).alternative.values()
    assert branch.shape == (2, *z.shape) and bool(torch.isfinite(branch).all())
    windowed_model.train()
    out = windowed_model(batch, num_samples=3, step=0)
    assert out.trajectory.alternative.carries_log_q  # log w = log p - log q: weight control applies
    terms = training_terms(out, build_estimator("vimco-seq").double())
    assert bool(torch.isfinite(terms["loss"]))
    # vimco-seq's defaults are the recipes' form on this model: the lattice's values, weight and future control
    q_params = [p for p in windowed_model.posterior.parameters() if p.requires_grad]

    def q_gradient(estimator):  # the loss's value does not show the signals; q's gradient does
        loss = training_terms(out, estimator.double())["loss"]
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, q_params, retain_graph=True, allow_unused=True) if g is not None])

    default = q_gradient(build_estimator("vimco-seq"))
    torch.testing.assert_close(default, q_gradient(build_estimator("vimco-seq", values="model", weight_control=True, future_control=True)))
    assert not torch.allclose(default, q_gradient(build_estimator("vimco-seq", values="model", weight_control=False, future_control=False)))
    assert "future_coefficient" in terms
    with pytest.raises(ValueError, match="value_window=-1: must be >= 0"):
        lattice_model(value_window=-1)


def test_memoryless_cell_equals_the_lstm_formula_and_its_autograd_gradient():
    """The decision cell without memory, forward and hand-written backward, against
    ``sigmoid(o) tanh(sigmoid(i) tanh(g))`` through autograd (float64, strided inputs included)."""
    from hardalign.speech.model import _MemorylessCell

    torch.manual_seed(0)
    gates = (3 * torch.randn(4, 7, 3 * 5, dtype=torch.float64)).requires_grad_()
    i, g, o = gates.chunk(3, dim=-1)  # views, as the step-by-step rollout passes them
    assert torch.autograd.gradcheck(_MemorylessCell.apply, (i, g, o))
    upstream = torch.randn(4, 7, 5, dtype=torch.float64)
    reference = torch.sigmoid(o) * torch.tanh(torch.sigmoid(i) * torch.tanh(g))
    (expected,) = torch.autograd.grad(reference, gates, upstream)
    cell = _MemorylessCell.apply(i, g, o)
    torch.testing.assert_close(cell, reference, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(torch.autograd.grad(cell, gates, upstream)[0], expected, rtol=1e-12, atol=1e-12)
