"""The hard-alignment recogniser: forced emission, masks, log-probabilities, decoding, CTC baseline."""

from __future__ import annotations

import pytest
import torch
import torchaudio.functional as AF

from hardalign.objective import training_terms

from hardalign.estimators import ESTIMATORS, build_estimator
from hardalign.speech.ctc import CTCRecognizer
from hardalign.speech.decode import beam_search, greedy_decode
from hardalign.speech.model import HardAlignmentRecognizer, forced_decisions
from tests.speech.toy import toy_batch, toy_utterances

DIM, PHONES = 12, 8


def small_model(**kwargs) -> HardAlignmentRecognizer:
    options = dict(hidden_size=16, encoder_layers=1, decision_hidden=16, label_embedding=8, posterior_hidden=16, baseline_hidden=8)
    options.update(kwargs)
    return HardAlignmentRecognizer(DIM, PHONES, **options)


def tight_batch() -> dict:
    """Lengths chosen to exercise the edge cases: T == U + 1 (every step forced), slack, padding."""
    batch = toy_batch(toy_utterances(6, num_phones=PHONES, dim=DIM))
    batch["feature_lengths"][0] = batch["target_lengths"][0] + 1  # no freedom at all
    return batch


@pytest.mark.parametrize("proposal", ["posterior", "prior"])
def test_forced_emission_and_masks_are_exact(proposal):
    model = small_model(proposal=proposal, posterior_kind="recurrent")  # the lattice q: tests/speech/test_time_parallel.py
    batch = tight_batch()
    # large emit bias either way: forcing, not the policy, must produce the counts
    for bias in (-8.0, 8.0):
        with torch.no_grad():
            model.emit_head.bias.fill_(bias)
            model.posterior.out.bias.fill_(bias)
        traj = model.sample_alignments(batch, num_samples=5)
        K, B, T = traj.log_q.shape
        steps = torch.arange(T)
        valid = steps < batch["feature_lengths"].unsqueeze(1)  # [B, T]
        assert torch.equal(traj.valid, valid.expand(K, B, T))
        emissions = (traj.locations * traj.valid).sum(-1)  # [K, B]
        assert torch.equal(emissions, (batch["target_lengths"] + 1).to(emissions.dtype).expand(K, B))
        assert not (traj.locations.bool() & ~traj.valid).any()  # nothing in the padding
        # after EOS nothing is emitted: the last emission is the (U+1)-th and no later step emits
        # forced steps and padding have log q = 0, no entropy, no mask
        assert (traj.log_q[~traj.mask] == 0).all()
        assert (traj.entropy[~traj.mask] == 0).all()
        assert (traj.log_weights[~traj.valid] == 0).all()
        # the fully constrained utterance has no free step
        assert not traj.mask[:, 0].any()


def test_forced_decisions_rules():
    is_forced, value = forced_decisions(
        3,
        num_steps=torch.tensor([10, 5, 5, 3, 6]),
        emitted=torch.tensor([0, 0, 2, 1, 4]),
        num_labels=torch.tensor([4, 2, 2, 2, 4]),
    )
    # free; remaining 2 labels in 2 steps -> emit; all emitted -> skip; padding -> skip; done -> skip
    assert is_forced.tolist() == [False, True, True, True, True]
    assert value.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]


def test_log_p_of_forced_decisions_is_zero():
    """At forced steps log p holds only the label term z_t log d_t[y_next]; at free steps also log p(z_t)."""
    model = small_model(proposal="posterior")
    batch = tight_batch()
    traj = model.sample_alignments(batch, num_samples=3)
    z = traj.locations
    forced = traj.valid & ~traj.mask
    skipped_forced = forced & (z == 0)
    assert (traj.log_p[skipped_forced] == 0).all()
    # utterance 0 is fully forced: its log p is exactly the sum of label log-probabilities (<= 0, nonzero)
    assert (traj.log_p[:, 0][z[:, 0] == 1] < 0).all()
    free_skip = traj.mask & (z == 0)
    assert (traj.log_p[free_skip] < 0).all()  # log p(z_t = 0) of a free skip


def test_prior_proposal_reduces_to_the_reward():
    """With q = p the per-step log weight is z_t log d_t[y_next] (the decision terms cancel)."""
    model = small_model(proposal="prior")
    batch = tight_batch()
    traj = model.sample_alignments(batch, num_samples=2)
    assert (traj.log_weights[traj.locations == 0].abs() < 1e-6).all()


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
@pytest.mark.parametrize("proposal", ["posterior", "prior"])
def test_training_step_gives_finite_gradients(name, proposal):
    model = small_model(proposal=proposal, dropout=0.2, dropout_ramp_steps=10)
    batch = tight_batch()
    # Luo et al.'s REINFORCE uses the learned per-step baseline (the estimator option "learned")
    estimator = build_estimator(name, **({"baseline": "learned"} if name == "reinforce" else {}))
    out = training_terms(model(batch, num_samples=3, step=5), estimator)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    for key, value in out.items():
        assert value.dim() == 0, key
        if key != "loss":
            assert not value.requires_grad, key
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    proposal_params = model.posterior.parameters() if proposal == "posterior" else model.emit_head.parameters()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in proposal_params)
    if name == "nvil" or (name == "reinforce" and proposal == "prior"):
        assert model.baseline_net[-1].bias.grad.abs() > 0  # the learned baseline is trained


def test_encoder_runs_once_per_utterance_not_per_particle():
    model = small_model()
    calls = []
    hook = model.encoder[0].register_forward_hook(lambda module, args, out: calls.append(args[0]))
    batch = tight_batch()
    model.sample_alignments(batch, num_samples=7)
    hook.remove()
    assert len(calls) == 1
    assert calls[0].shape[0] == batch["features"].shape[0]  # B rows, not K * B


def test_too_short_utterance_is_reported_by_id():
    model = small_model()
    batch = tight_batch()
    batch["feature_lengths"][2] = batch["target_lengths"][2]  # one step short of labels + EOS
    with pytest.raises(ValueError, match="utt2"):
        model.sample_alignments(batch, num_samples=1)


def test_entropy_and_dropout_schedules():
    model = small_model(entropy_weight=1.0, entropy_weight_final=0.1, entropy_decay_steps=100, dropout=0.3, dropout_ramp_steps=10)
    assert model.entropy_weight_at(0) == 1.0
    assert model.entropy_weight_at(50) == pytest.approx(0.55)
    assert model.entropy_weight_at(1000) == pytest.approx(0.1)
    assert model.dropout_at(0) == 0.0 and model.dropout_at(5) == pytest.approx(0.15) and model.dropout_at(99) == 0.3


def _confident_model() -> HardAlignmentRecognizer:
    """A trivial model: emits with probability 0.9 at every step, always the same phone, no EOS."""
    model = small_model().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.emit_head.bias.fill_(2.2)
        model.label_head.bias[2] = 6.0  # label 3
    return model


def test_greedy_and_beam_agree_on_a_trivial_model():
    model = _confident_model()
    batch = tight_batch()
    greedy = greedy_decode(model, batch["features"], batch["feature_lengths"])
    for width in (1, 3):
        beam = beam_search(model, batch["features"], batch["feature_lengths"], beam_size=width)
        for g, b, length in zip(greedy, beam, batch["feature_lengths"].tolist()):
            assert g.labels == b.labels == [3] * length
            assert g.steps == b.steps == list(range(length))


def test_greedy_and_beam_stop_after_eos():
    model = small_model().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.emit_head.bias.fill_(3.0)
        model.label_head.bias[PHONES] = 6.0  # EOS (label n + 1, class n)
    batch = tight_batch()
    for hyps in (greedy_decode(model, batch["features"], batch["feature_lengths"]), beam_search(model, batch["features"], batch["feature_lengths"], beam_size=2)):
        assert all(h.labels == [] and h.ended for h in hyps)


@pytest.mark.parametrize("emit_prob", [0.3, 0.8])
def test_median_rule_emits_where_the_next_emission_has_probability_one_half(emit_prob):
    """``rule="median"``: with b_t = 0.3 at every step, step-wise greedy never emits, the median
    rule emits every second step (survival 0.7, then 0.49 <= 0.5); with 0.8 the two agree."""
    import math

    model = small_model(posterior_aligner=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.emit_head.bias.fill_(math.log(emit_prob / (1 - emit_prob)))
        model.label_head.bias[2] = 6.0  # phone 3
    batch = tight_batch()
    step = greedy_decode(model, batch["features"], batch["feature_lengths"])
    median = greedy_decode(model, batch["features"], batch["feature_lengths"], rule="median")
    for s, m, length in zip(step, median, batch["feature_lengths"].tolist()):
        if emit_prob < 0.5:
            assert s.labels == [] and m.steps == list(range(1, length, 2)) and m.labels == [3] * len(m.steps)
        else:
            assert s.steps == m.steps == list(range(length)) and s.labels == m.labels
    with pytest.raises(ValueError, match="rule"):
        greedy_decode(model, batch["features"], batch["feature_lengths"], rule="mode")


def test_beam_search_finds_a_better_scoring_path_than_greedy():
    torch.manual_seed(3)
    model = small_model().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    batch = tight_batch()
    greedy = greedy_decode(model, batch["features"], batch["feature_lengths"])
    beam = beam_search(model, batch["features"], batch["feature_lengths"], beam_size=8)
    # score greedy paths with the beam's scoring through a width-1 search of the same rule: beam >= width 1
    narrow = beam_search(model, batch["features"], batch["feature_lengths"], beam_size=1)
    assert all(b.score >= n.score - 1e-5 for b, n in zip(beam, narrow))
    assert len(greedy) == len(beam)


def test_ctc_baseline_trains_and_decodes():
    torch.manual_seed(0)
    model = CTCRecognizer(DIM, PHONES, hidden_size=32, num_layers=1)
    train = toy_utterances(64, num_phones=PHONES, dim=DIM)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for step in range(40):
        batch = toy_batch(train[(step % 4) * 16 : (step % 4 + 1) * 16])
        out = model(batch, step=step)
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
        first = first if first is not None else float(out["loss"].detach())
    assert float(out["loss"].detach()) < 0.5 * first
    model.eval()
    batch = toy_batch(train[:8])
    hyps = model.decode(batch["features"], batch["feature_lengths"])
    errors = sum(AF.edit_distance(h.labels, y[: int(n)].tolist()) for h, y, n in zip(hyps, batch["targets"], batch["target_lengths"]))
    assert errors / int(batch["target_lengths"].sum()) < 0.5
    assert all(all(s1 < s2 for s1, s2 in zip(h.steps, h.steps[1:])) for h in hyps)


def test_training_smoke_lowers_per_on_a_tiny_corpus():
    """vimco-seq with the posterior proposal learns the toy corpus: greedy online PER drops from 100%."""
    torch.manual_seed(0)
    train = toy_utterances(128, num_phones=PHONES, dim=DIM)
    dev = toy_batch(toy_utterances(32, num_phones=PHONES, dim=DIM, seed=1))
    model = small_model(hidden_size=32, decision_hidden=32, posterior_hidden=32, entropy_weight=0.1, entropy_weight_final=0.0, entropy_decay_steps=50)
    estimator = build_estimator("vimco-seq")
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)

    def per() -> float:
        model.eval()
        hyps = greedy_decode(model, dev["features"], dev["feature_lengths"])
        model.train()
        errors = sum(AF.edit_distance(h.labels, y[: int(n)].tolist()) for h, y, n in zip(hyps, dev["targets"], dev["target_lengths"]))
        return errors / int(dev["target_lengths"].sum())

    before = per()
    for step in range(100):
        batch = toy_batch(train[(step % 8) * 16 : (step % 8 + 1) * 16])
        out = training_terms(model(batch, num_samples=4, step=step), estimator)
        optimiser.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimiser.step()
    after = per()
    assert before > 0.9 and after < 0.3, (before, after)


def test_the_ctc_emit_prior_makes_p_emit_where_the_ctc_head_spikes():
    """With the cue, an untrained decision cell decodes the CTC head's spikes: emit where "not blank" wins."""
    from hardalign.speech.decode import greedy_decode

    model = small_model(ctc_emit_prior=True).eval()
    assert model.uses_ctc_emit_prior
    batch = toy_batch(toy_utterances(3, num_phones=PHONES, dim=DIM))
    with torch.no_grad():
        model.emit_head.weight.zero_()
        model.emit_head.bias.zero_()
        model.label_head.weight.zero_()
        model.label_head.bias[-1] = -20.0  # EOS (its CTC prior is 0) not before the end
        head = model.posterior.aligner_out
        head.weight.zero_()
        head.bias.zero_()
        head.bias[0] = 4.0  # blank wins everywhere ...
    spikes = {}

    def spike_at(module, inputs, output):  # ... except at chosen steps, where phone 2 wins
        output = output.clone()
        for b, t in spikes.items():
            output[b, t, 2] = 12.0
        return output

    hook = model.posterior.aligner_out.register_forward_hook(spike_at)
    try:
        spikes.update({0: 3, 1: 5, 2: 1})
        hyps = greedy_decode(model, batch["features"], batch["feature_lengths"])
    finally:
        hook.remove()
    assert [hyp.steps for hyp in hyps] == [[3], [5], [1]]
    assert [hyp.labels for hyp in hyps] == [[2], [2], [2]]
    # without the cue the same model emits by its emit head alone (b_t = 0.5: never strictly above)
    plain = small_model(ctc_emit_prior=False).eval()
    assert not plain.uses_ctc_emit_prior and not hasattr(plain, "emit_cue_scale")
    assert small_model().uses_ctc_emit_prior  # the default


def test_ctc_greedy_start_makes_p_decide_as_the_ctc_heads_greedy_decoding():
    """p's own heads silenced, it emits where P_ctc(blank) < 0.5 and names the head's best phone."""
    torch.manual_seed(0)
    model = small_model(ctc_greedy_start=True, eos_start_logit=-2.5).eval()
    assert model.starts_as_ctc_greedy and not small_model().starts_as_ctc_greedy
    assert model.emit_head.bias.item() == 0.0 and model.label_head.bias[-1].item() == -2.5
    assert not small_model(ctc_greedy_start=True, ctc_emit_prior=False).starts_as_ctc_greedy  # needs the cue
    batch = toy_batch(toy_utterances(4, num_phones=PHONES, dim=DIM))
    with torch.no_grad():
        model.posterior.aligner_out.weight.mul_(20.0)  # a peaky head: blank and phones both win somewhere
        model.emit_head.weight.zero_()
        model.label_head.weight.zero_()
        model.label_head.bias[-1] = -20.0
        memory = model.encode(batch["features"], batch["feature_lengths"])
        _, label_prior, _ = model._split_step_inputs(memory["gate_inputs"].value)
        ctc = model.posterior.aligner_log_probs(batch["features"], model._encode_frames(batch["features"]))
    # the label prior is a distribution over the phones (EOS's column is 0 beside it)
    torch.testing.assert_close(label_prior[..., :-1].logsumexp(-1), torch.zeros(label_prior.shape[:-1]))
    hyps = greedy_decode(model, batch["features"], batch["feature_lengths"])
    for b, hyp in enumerate(hyps):
        steps = torch.arange(int(batch["feature_lengths"][b]))
        emits = ctc[b, steps, 0].exp() < 0.5
        assert 0 < int(emits.sum()) < len(steps), "the test needs both decisions"
        assert hyp.steps == steps[emits].tolist()
        assert hyp.labels == (ctc[b, steps[emits], 1:].argmax(-1) + 1).tolist()


def test_ctc_new_label_log_probs_against_a_loop_in_float64():
    from hardalign.speech.model import ctc_new_label_log_probs

    torch.manual_seed(1)
    ctc = torch.log_softmax(3 * torch.randn(2, 7, 5, dtype=torch.float64), -1)
    ctc[0, 1] = torch.log(torch.tensor([1.0 - 4e-12, 1e-12, 1e-12, 1e-12, 1e-12], dtype=torch.float64))  # blank, then
    ctc[0, 2:4] = torch.log(torch.tensor([1e-12, 1.0 - 4e-12, 1e-12, 1e-12, 1e-12], dtype=torch.float64))  # a two-frame spike
    phones, log_new, log_not_new = ctc_new_label_log_probs(ctc)
    p = ctc.exp()
    for b in range(2):
        for t in range(7):
            before = p[b, t - 1, 1:] if t > 0 else torch.zeros(4, dtype=torch.float64)
            new = p[b, t, 1:] * (1 - before)
            torch.testing.assert_close(phones[b, t].exp(), new, atol=1e-9, rtol=1e-6)
            torch.testing.assert_close(log_new[b, t, 0].exp(), new.sum(), atol=1e-9, rtol=1e-6)
            torch.testing.assert_close(log_not_new[b, t, 0].exp(), 1 - new.sum(), atol=1e-9, rtol=1e-6)
    assert log_new[0, 2] > 0.0 - 1e-6 and log_new[0, 3] < -20  # the spike's second frame is no new label
    leaf = ctc.float().requires_grad_()
    sum(x.sum() for x in ctc_new_label_log_probs(leaf)).backward()
    assert torch.isfinite(leaf.grad).all()


def test_the_new_label_cue_collapses_a_spike_over_several_frames():
    """Greedy start with ``ctc_emit_cue: new_label``: a phone spiking over frames 3-5 is emitted once, at 3."""
    model = small_model(ctc_greedy_start=True, ctc_emit_cue="new_label").eval()
    batch = toy_batch(toy_utterances(2, num_phones=PHONES, dim=DIM))
    with torch.no_grad():
        model.emit_head.weight.zero_()
        model.label_head.weight.zero_()
        head = model.posterior.aligner_out
        head.weight.zero_()
        head.bias.zero_()
        head.bias[0] = 6.0  # blank everywhere ...

    def spike(module, inputs, output):  # ... but phone 4 over steps 3-5 and phone 2 at steps 7 and 9
        output = output.clone()
        output[:, 3:6, 4] = 14.0
        output[:, [7, 9], 2] = 14.0
        return output

    hook = head.register_forward_hook(spike)
    try:
        hyps = greedy_decode(model, batch["features"], batch["feature_lengths"])
        plain = small_model(ctc_greedy_start=True).eval()
        plain.load_state_dict(model.state_dict())
        plain.posterior.aligner_out.register_forward_hook(spike)
        every_frame = greedy_decode(plain, batch["features"], batch["feature_lengths"])
    finally:
        hook.remove()
    for hyp, length in zip(hyps, batch["feature_lengths"].tolist()):
        expected = [(3, 4), (7, 2), (9, 2)]  # a blank between the two 2s: both are kept
        assert list(zip(hyp.steps, hyp.labels)) == [(t, c) for t, c in expected if t < length]
    assert every_frame[0].steps[:3] == [3, 4, 5]  # the not-blank cue emits at every frame of the spike
    with pytest.raises(ValueError, match="ctc_emit_cue"):
        small_model(ctc_emit_cue="blank")


@pytest.mark.parametrize("kind", ["recurrent", "lattice"])
def test_forced_emissions_are_scored_in_p_and_nothing_else_changes(kind):
    """score_forced_emissions: p's emit decision counts where q had to emit; forced skips stay free."""
    batch = tight_batch()
    logs = {}
    for scored in (True, False):
        torch.manual_seed(0)
        # without the CTC emit cue, p's emit probability is the emit head's alone
        model = small_model(posterior_kind=kind, score_forced_emissions=scored, ctc_emit_prior=False)
        with torch.no_grad():
            model.emit_head.weight.zero_()
            model.emit_head.bias.fill_(-3.0)  # log p(emit) = logsigmoid(-3) at every step
        traj = model.sample_alignments(batch, num_samples=3, generator=torch.Generator().manual_seed(2))
        logs[scored] = traj
    on, off = logs[True], logs[False]
    assert torch.equal(on.locations, off.locations) and torch.equal(on.log_q, off.log_q)
    forced_emission = on.valid & ~on.mask & (on.locations > 0.5)
    assert forced_emission[:, 0].any()  # utterance 0 has no freedom: all its emissions are forced
    difference = on.log_p - off.log_p
    expected = torch.nn.functional.logsigmoid(torch.tensor(-3.0))
    torch.testing.assert_close(difference[forced_emission], expected.expand(int(forced_emission.sum())))
    assert torch.equal(difference[~forced_emission], torch.zeros(int((~forced_emission).sum())))


@pytest.mark.parametrize("kind", ["recurrent", "lattice"])
def test_the_forced_emission_loss_trains_p_to_emit_what_q_forced(kind):
    """forced_emission_weight: -w * sum of log b_t over the forced emissions, mean over particles and utterances."""
    batch = tight_batch()
    torch.manual_seed(0)
    model = small_model(posterior_kind=kind, forced_emission_weight=0.5, ctc_emit_prior=False)  # b_t from the emit head alone
    with torch.no_grad():
        model.emit_head.weight.zero_()
        model.emit_head.bias.fill_(-3.0)
    output = model(batch, num_samples=3)
    traj = output.trajectory
    forced_emissions = (traj.valid & ~traj.mask & (traj.locations > 0.5)).sum()
    expected = -0.5 * torch.nn.functional.logsigmoid(torch.tensor(-3.0)) * forced_emissions / (3 * traj.locations.shape[1])
    torch.testing.assert_close(output.losses["forced_emission"], expected)
    output.losses["forced_emission"].backward()
    assert model.emit_head.bias.grad < 0  # descending it raises p's emit probability
    assert "forced_emission" not in small_model(posterior_kind=kind, forced_emission_weight=0.0)(batch, num_samples=2).losses


@pytest.mark.parametrize("kind", ["recurrent", "lattice"])
def test_ctc_prior_gradient_scales_what_the_bound_sends_into_the_ctc_head(kind):
    """ctc_prior_gradient: p reads the CTC head the same way (same forward), and the gradient of the
    bound's terms into the head is scaled: 0 leaves the head to the aligner's own CTC loss."""
    batch = tight_batch()
    grads, outputs = {}, {}
    for scale in (1.0, 0.5, 0.0):
        torch.manual_seed(0)
        model = small_model(posterior_kind=kind, ctc_prior_gradient=scale)
        torch.manual_seed(1)
        output = model(batch, num_samples=3)
        outputs[scale] = output.trajectory.log_p.detach()
        terms = training_terms(output, build_estimator("vimco-seq"))
        loss = terms["loss"] - output.losses["aligner_ctc"]  # everything but the aligner's own CTC loss
        loss.backward()
        grad = model.posterior.aligner_out.weight.grad
        grads[scale] = torch.zeros_like(model.posterior.aligner_out.weight) if grad is None else grad
    torch.testing.assert_close(outputs[1.0], outputs[0.0])
    assert grads[1.0].abs().sum() > 0 and grads[0.0].abs().sum() == 0
    torch.testing.assert_close(grads[0.5], 0.5 * grads[1.0])


def test_the_prior_proposal_still_trains_the_ctc_head_it_reads():
    """Without q (``proposal: prior``) p still reads the CTC head's priors, so the aligner's CTC
    loss is still a training term and reaches the head."""
    model = small_model(proposal="prior", ctc_prior_gradient=0.0)
    output = model(tight_batch(), num_samples=2)
    assert "aligner_ctc" in output.losses
    output.losses["aligner_ctc"].backward()
    assert model.posterior.aligner_out.weight.grad.abs().sum() > 0


def test_ctc_warmup_trains_the_encoder_by_the_aligners_ctc_loss_then_hands_over():
    """ctc_warmup: while the budget spent is below it, a step is the aligner's CTC loss on p's
    encoder alone (the CTC baseline's loss on the same encoder and head); from then on the full
    output, whose entropy schedule starts at the step the warm-up ended."""
    batch = tight_batch()
    torch.manual_seed(0)
    model = small_model(ctc_warmup=0.5, entropy_weight=1.0, entropy_weight_final=0.0, entropy_decay_steps=10)
    model.train()
    model.budget_spent = 0.49
    terms = training_terms(model(batch, num_samples=3, step=40), build_estimator("vimco-seq"))
    assert terms["warmup"] == 1 and "objective" not in terms
    log_probs = model.posterior.aligner_log_probs(batch["features"], model._encode_frames(batch["features"]))
    expected = torch.nn.functional.ctc_loss(
        log_probs.transpose(0, 1), batch["targets"], batch["feature_lengths"], batch["target_lengths"], reduction="none", zero_infinity=True
    ).mean()
    torch.testing.assert_close(terms["loss"], expected)
    terms["loss"].backward()
    assert model.encoder[0].weight_ih_l0.grad.abs().sum() > 0 and model.posterior.aligner_out.weight.grad.abs().sum() > 0
    assert model.label_head.weight.grad is None and model.posterior.direct.weight.grad is None  # p's decisions and q untouched
    model.budget_spent = 0.5
    after = model(batch, num_samples=3, step=41)
    assert "entropy_bonus" in after.losses and after.metrics["entropy_weight"] == 1.0  # the schedule's start
    assert model(batch, num_samples=3, step=46).metrics["entropy_weight"] == 0.5
    # the switch is kept in the state (a resumed run does not go back to the warm-up) ...
    restored = small_model(ctc_warmup=0.5, entropy_weight=1.0, entropy_weight_final=0.0, entropy_decay_steps=10)
    restored.load_state_dict(model.state_dict())
    restored.train()
    assert restored(batch, num_samples=3, step=46).metrics["entropy_weight"] == 0.5
    # ... checkpoints from before the option load as "no warm-up"
    old = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    restored.load_state_dict(old)
    assert restored(batch, num_samples=3, step=6).metrics["entropy_weight"] == 0.4
    model.eval()  # evaluation and decoding are never the warm-up
    model._ctc_warmup_end, model.budget_spent = None, 0.0
    assert not isinstance(model(batch, num_samples=2, step=0), dict)


def test_ctc_warmup_needs_the_shared_encoder_and_the_aligner():
    with pytest.raises(ValueError, match="ctc_warmup"):
        small_model(ctc_warmup=0.5, posterior_encoder="own")
    with pytest.raises(ValueError, match="ctc_warmup"):
        small_model(ctc_warmup=0.5, posterior_aligner=False)
    with pytest.raises(ValueError, match="ctc_warmup"):
        small_model(ctc_warmup=1.0)


def test_frame_consistency_is_the_kl_per_frame_summed_over_valid_frames():
    from hardalign.speech.ctc import frame_consistency

    g = torch.Generator().manual_seed(0)
    noisy = torch.log_softmax(torch.randn(3, 5, 4, generator=g, dtype=torch.float64), -1).requires_grad_(True)
    clean = torch.log_softmax(torch.randn(3, 5, 4, generator=g, dtype=torch.float64), -1)
    lengths = torch.tensor([5, 2, 3])
    expected = sum(
        sum(float(clean[b, t, c].exp() * (clean[b, t, c] - noisy.detach()[b, t, c])) for c in range(4)) for b in range(3) for t in range(int(lengths[b]))
    ) / 3
    value = frame_consistency(noisy, clean, lengths)
    assert abs(float(value.detach()) - expected) < 1e-12
    padded = noisy.detach().clone()
    padded[1, 2:] = torch.log_softmax(torch.randn(3, 4, generator=g, dtype=torch.float64), -1)
    assert float(frame_consistency(padded, clean, lengths)) == pytest.approx(float(value.detach()), abs=1e-12)  # padding ignored
    assert float(frame_consistency(clean, clean, lengths)) == 0.0
    value.backward()
    # d KL / d log q = -p on valid frames (the target is a constant), 0 on padding
    valid = (torch.arange(5) < lengths.unsqueeze(1)).unsqueeze(-1)
    torch.testing.assert_close(noisy.grad, -(clean.exp() * valid) / 3)
    f32 = frame_consistency(noisy.detach().float(), clean.float(), lengths)
    assert abs(float(f32) - expected) < 1e-5 * max(1.0, expected)
    with pytest.raises(ValueError, match="the same"):
        frame_consistency(noisy, clean[:, :4], lengths)


@pytest.mark.parametrize("model", ["hard", "ctc"])
def test_consistency_term_in_training(model):
    """``consistency_weight``: a loss term from the batch's ``clean_features`` (zero when they equal
    the input and dropout is off), in the CTC warm-up and with the bound; its gradient reaches the
    encoder, the clean pass has none; not in evaluation mode or without clean features."""
    from hardalign.speech.ctc import CTCRecognizer

    torch.manual_seed(0)
    B, T, F_, n = 3, 12, 6, 5
    batch = {
        "features": torch.randn(B, T, F_), "feature_lengths": torch.tensor([12, 10, 9]),
        "targets": torch.tensor([[1, 2, 3], [4, 5, 0], [2, 0, 0]]), "target_lengths": torch.tensor([3, 2, 1]),
    }
    if model == "hard":
        net = HardAlignmentRecognizer(F_, n, hidden_size=8, decision_hidden=4, label_embedding=4, posterior_hidden=8, baseline_hidden=4,
                                      ctc_warmup=0.5, consistency_weight=2.0)
        encoder = net.encoder[0].weight_ih_l0

        def terms(b, spent):
            net.budget_spent = spent
            out = net(b, num_samples=2, step=5)
            return ({"loss": out["loss"]}, out) if isinstance(out, dict) else (out.losses, {**out.losses, **out.metrics})
    else:
        net = CTCRecognizer(F_, n, hidden_size=8, consistency_weight=2.0)
        encoder = net.layers[0].weight_ih_l0

        def terms(b, spent):
            out = net(b, step=5)
            return {"loss": out["loss"]}, out
    net.train()
    for spent in ((0.1, 0.9) if model == "hard" else (0.0,)):
        same = {**batch, "clean_features": batch["features"]}
        _, logged = terms(same, spent)
        assert float(logged["consistency"].detach()) == pytest.approx(0.0, abs=1e-6)
        noisy = {**batch, "features": batch["features"] + torch.randn(B, T, F_), "clean_features": batch["features"]}
        losses, logged = terms(noisy, spent)
        assert float(logged["consistency"].detach()) > 0
        net.zero_grad()
        consistency = losses["consistency"] if "consistency" in losses else losses["loss"]
        consistency.backward()
        assert encoder.grad is not None and encoder.grad.abs().sum() > 0
        _, logged = terms(batch, spent)
        assert "consistency" not in logged
    net.eval()
    _, logged = terms({**batch, "clean_features": batch["features"] + 1}, 0.9)
    assert "consistency" not in logged
    with pytest.raises(ValueError, match="consistency_weight"):
        HardAlignmentRecognizer(F_, n, consistency_weight=-1.0)
    with pytest.raises(ValueError, match="consistency_weight"):
        CTCRecognizer(F_, n, consistency_weight=-1.0)
