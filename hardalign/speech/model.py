"""The online hard-alignment phoneme recogniser: model p, posterior q and NVIL baseline in one module.

Model p (docs/speech.md) reads one step of stacked frames at a time with a unidirectional
stacked LSTM. At step t it outputs an emit probability ``b_t`` (a Bernoulli decision ``z_t``) and
a softmax ``d_t`` over phones + end-of-sequence; when ``z_t = 1`` the next target label is scored
with ``log d_t[y_next]`` and fed back. Decisions are deterministic (*forced*) when the remaining
steps equal the remaining labels (emit) and after the last label, EOS, has been emitted (skip);
forced steps have ``log q = 0`` and carry no learning signal.

Layout of the computation, chosen so that the work that does not depend on the decisions is done
once per utterance and not once per particle:

* the lower layers of p form the *encoder*, a stacked unidirectional ``torch.nn.LSTM`` over the
  frames (``encoder_layers x hidden_size``, fused kernels, no feedback: the same encoder as the CTC
  baseline), run once per utterance; its outputs are projected to the gate pre-activations of the
  top layer once per utterance;
* the top layer of p, the *decision cell* (``decision_hidden`` units; by default without memory
  of its own, ``decision_recurrence: true`` makes it an LSTM cell), runs over all ``K * B``
  particles at once; the fed-back previous decision ``z_{t-1}`` and last emitted label enter it
  as embeddings added to its gates (an embedding of size ``4H`` is exactly
  an input projection of a one-hot vector). Feeding the decisions back into the top layer only,
  rather than into the first as in Luo et al., is what lets the encoder run once per utterance;
  the model stays causal: its step t depends on x_{<=t}, the previous decision and the last
  emitted label (with the recurrence, on all of z_{<t} and the labels emitted so far);
* the posterior q(z | x, y) (:mod:`hardalign.speech.posterior`) encodes frames and labels once per
  utterance with bidirectional LSTMs and runs its own small step RNN over the particles.

The module implements the :class:`hardalign.attention.HardAttention` protocol, so one call of
:func:`hardalign.attention.rollout` draws all K particles of all utterances in one batched pass.
The location of step t is the decision ``z_t``; ``read`` returns it unchanged (what the model "sees"
next, the frame ``t + 1``, does not depend on where it looked, only on whether it emitted).

Label ids follow :class:`hardalign.data.phones.Vocabulary`: 0 is padding, phones are ``1..n``,
EOS is ``n + 1``. The softmax ``d_t`` covers ``1..n+1`` (``n + 1`` classes, class ``c - 1`` is
label ``c``); the fed-back label 0 means "nothing emitted yet".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn

from hardalign.attention import Trajectory, rollout
from hardalign.estimators import Alternative
from hardalign.objective import LatentOutput
from hardalign.sampling import fold_tree, unfold
from hardalign.speech.ctc import frame_consistency
from hardalign.speech.posterior import KINDS, LOOKAHEADS, Posterior, _Unfolded, count_features

__all__ = ["HardAlignmentConfig", "HardAlignmentRecognizer", "append_eos", "ctc_new_label_log_probs", "forced_decisions"]


def append_eos(targets: torch.Tensor, target_lengths: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Append the end-of-sequence label after each target sequence.

    Args:
        targets: ``[B, U]`` long, padded with 0.
        target_lengths: ``[B]`` long.
        eos_id: the EOS label id.

    Returns:
        ``(labels [B, U + 1], label_lengths [B])`` with ``labels[b, target_lengths[b]] = eos_id``.

    Example:
        >>> labels, lengths = append_eos(torch.tensor([[3, 4], [5, 0]]), torch.tensor([2, 1]), eos_id=9)
        >>> labels.tolist(), lengths.tolist()
        ([[3, 4, 9], [5, 9, 0]], [3, 2])
    """
    labels = F.pad(targets, (0, 1))  # [B, U + 1]
    labels = labels.scatter(1, target_lengths.unsqueeze(1), eos_id)
    return labels, target_lengths + 1


def ctc_new_label_log_probs(ctc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where a CTC head's greedy decoding starts a new label, from its frame posteriors.

    Args:
        ctc: ``[B, T, 1 + n]`` log-probabilities (blank first) of each step, independent across steps.

    Returns:
        ``(phones [B, T, n], log_new [B, T, 1], log_not_new [B, T, 1])``: ``log P(frame t is phone
        c and frame t - 1 is not c)``, its log-sum over c (a new label starts at t) and the log of
        the rest (blank, or the same phone as at t - 1, which greedy decoding collapses). Causal:
        step t reads steps t - 1 and t only.
    """
    phones = ctc[..., 1:]
    # nothing before the first step: a finite "log 0", so that gradients stay finite
    previous = F.pad(phones[:, :-1], (0, 0, 1, 0), value=-1e4)
    # log(1 - p) of the previous step's phones, kept finite where p rounds to 1
    not_previous = torch.log(-torch.expm1(previous.clamp(max=-torch.finfo(previous.dtype).eps)))
    new = phones + not_previous
    log_new = torch.logsumexp(new, dim=-1, keepdim=True)
    log_not_new = torch.logaddexp(ctc[..., :1], torch.logsumexp(phones + previous, dim=-1, keepdim=True))
    return new, log_new, log_not_new


def forced_decisions(step: int, num_steps: torch.Tensor, emitted: torch.Tensor, num_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which decisions at ``step`` are deterministic, and their value.

    Forced emission when the remaining steps are no more than the remaining labels (one label per
    step is the most the model can emit), forced skip once every label has been emitted and at
    padding steps (``step >= num_steps``).

    Args:
        step: the step index t (a Python int).
        num_steps: ``[N]`` long, number of valid steps of each row.
        emitted: ``[N]`` long, labels emitted before step t.
        num_labels: ``[N]`` long, labels (EOS included) to emit in total.

    Returns:
        ``(is_forced [N] bool, value [N] float)``.

    Example:
        >>> forced, value = forced_decisions(2, torch.tensor([4, 4, 4]), torch.tensor([0, 1, 3]), torch.tensor([2, 3, 3]))
        >>> forced.tolist(), value.tolist()
        ([True, True, True], [1.0, 1.0, 0.0])
    """
    remaining_labels = num_labels - emitted
    remaining_steps = num_steps - step
    must_emit = (remaining_labels > 0) & (remaining_labels >= remaining_steps) & (remaining_steps > 0)
    is_forced = must_emit | (remaining_labels <= 0) | (remaining_steps <= 0)
    return is_forced, must_emit.float()


@dataclass
class HardAlignmentConfig:
    """The options of :class:`HardAlignmentRecognizer` (and of the ``timit`` task, which extends it).

    Attributes:
        hidden_size: width of the encoder LSTM layers of p (shared with the CTC baseline).
        encoder_layers: number of encoder layers (below the decision cell).
        decision_hidden: H, width of the decision cell (the top layer, which reads the feedback).
        decision_recurrence: ``False`` (the default since 2026-12-05): the decision cell keeps no
            memory of its own: ``h_t`` comes from the step's inputs (the encoder output below it,
            an LSTM over all frames so far, the previous decision and the last emitted label; the
            cell state is not carried), so scoring sampled alignments in time-parallel training is
            one batched pass with no loop over steps. ``True``: an LSTM cell, which also remembers
            earlier decisions; time-parallel scoring then loops over the steps. On the main
            command (10 minutes, 2 processes) the cell without memory made 2730 steps against
            2310 and scored dev 4.3% / test 4.3% against 4.7% / 4.5% (docs/speech.md).
        label_embedding: width of the embedding of the fed-back label *before* its gate projection
            (the embedding is factored as ``[n + 2, E] x [E, 4H]``).
        posterior_hidden: width of the posterior's encoders and step RNN.
        baseline_hidden: width of the baseline network (the input-dependent baseline used by
            ``nvil`` and by ``reinforce`` with ``baseline=learned``).
        proposal: ``"posterior"`` (sample z from q(z | x, y), variational training) or ``"prior"``
            (sample from p itself, REINFORCE on the reward ``sum_t z_t log d_t[y_next]``).
        emit_prior: initial emit probability of p (bias of its emit head).
        dropout: dropout rate on encoder outputs and on the heads' input, reached after
            ``dropout_ramp_steps`` training steps (linear ramp from 0).
        dropout_ramp_steps: length of that ramp.
        entropy_weight, entropy_weight_final, entropy_decay_steps: weight of the bonus on the
            proposal's entropy (summed over steps, per utterance), decayed linearly.
        posterior_coupling: initial coefficient of p's ``log d_t[y_next]`` (relative to a uniform
            softmax) in q's emit logit: q starts out emitting where p expects the next label.
        posterior_aligner: give q its CTC aligner (:mod:`hardalign.speech.aligner`).
        aligner_weight: weight of the aligner's CTC loss (trains q's aligner only).
        posterior_kind: ``"lattice"`` (q's emit logit depends on the step and the labels emitted
            so far through a table computed in parallel: training is time-parallel) or
            ``"recurrent"`` (q runs its own step RNN and reads p's state: training rolls out step
            by step). See :mod:`hardalign.speech.posterior`.
        posterior_encoder: ``"own"`` (q encodes the frames with its own LSTMs) or ``"shared"``
            (q reads p's encoder output: detached for its frame encoding, and its aligner is a
            CTC head on it, so ``aligner_weight`` times the aligner's CTC loss also trains p's
            encoder, as in hybrid CTC/attention training).
        posterior_lookahead: with the shared encoder, how q reads the frames after step t:
            ``"lstm"`` (a backward LSTM over the utterance) or ``"conv"`` (a row convolution over
            the next ``posterior_lookahead_steps`` steps, time-parallel). See docs/speech.md.
        ctc_label_prior: with the shared encoder and the aligner, p's label softmax adds the CTC
            head's log-probabilities of the phones at step t (EOS: 0) to its own logits: ``d_t =
            softmax(label_head(h_t) + log P_ctc(phone | x_<=t))``. The CTC head becomes part of p
            (trained by both losses); p starts out naming phones as well as the CTC head does and
            its decision cell learns the corrections.
        ctc_emit_prior: with the CTC label prior, p's emit logit also adds ``emit_cue_scale`` (a
            learned scalar, 1 at initialisation) times the CTC head's log-odds of "not blank" at
            step t: ``log(1 - P_ctc(blank | x_<=t)) - log P_ctc(blank | x_<=t)``. The cue is causal
            and label-free, so decoding can use it; p starts out emitting where the CTC head
            spikes (a warm start of its emission decisions from q's aligner) instead of having to
            find those places through the estimator's signal alone. On by default: with the
            forced-emission loss, dev PER on the offline corpus at step 100 is 36-38% against
            89-100% without it, and at step 600 7.7-8.0% (two seeds) against 8.8% (docs/speech.md).
        score_forced_emissions: p's emit decision is scored at the steps where the proposal had to
            emit (too few steps left for the labels left: the last labels of every path, the final
            silence and EOS among them). p itself is then not forced: it learns to emit what the
            proposal could only force, as it must when decoding, where nothing forces it. (The
            bound stays a bound: q's paths are the valid alignments, p's mass on paths that do not
            emit every label is simply lost.) ``False``: forced steps carry no decision term in p
            either (the model of the earlier runs; decoding then never learned to emit EOS).
            Off by default: inside the bound these terms make late paths costlier, and on noisy
            training, where the aligner is slow to become informative, q then drifted to emitting
            early (``emission_explosion``; docs/speech.md).
        forced_emission_weight: weight of an auxiliary loss on p alone, ``-sum_t log b_t`` over the
            forced emissions of the K sampled paths (mean over particles and utterances): p learns
            to emit the labels that q had to force (the final silence and EOS) without these terms
            entering the importance weights, so q's learning signal is the bound's. 0: off (the
            earlier runs).
        ctc_prior_gradient: scale of the bound's gradient that reaches the CTC head (and through it
            the encoder) by way of the CTC label prior and emit cue; the forward pass is the same.
            0 (the default): p reads the CTC head's log-probabilities as fixed inputs and only the
            aligner's CTC loss trains the head. Why: while the aligner still sits on CTC's
            all-blank plateau (long under noise), q's alignments are uninformed, and with the
            gradient flowing (1, the earlier default) the bound pulls the shared head toward them;
            on white-noise training the aligner then never left the plateau in 700 steps and q
            emitted at every step (``emission_explosion``), dev PER 97% / 80% at white 10 dB,
            while with 0 it left the plateau at step ~350 as CTC alone does (29% at white 10 dB by
            step 700; 0.25: 35%). The price on the clean corpus: dev PER at step 600 8.6%
            (0.25: 8.7%) against 7.7-8.0% with 1 (docs/speech.md).
        ctc_warmup: the first fraction of the training budget (of ``max_steps`` or ``max_minutes``,
            whichever is further on, as the learning-rate schedule counts it; the trainer sets
            :attr:`HardAlignmentRecognizer.budget_spent`) trains p's encoder and the CTC head by the
            aligner's CTC loss alone (no alignments sampled, no decision cell, no q): a CTC
            pre-training stage at CTC's step cost, as attention and transducer models are often
            started from a CTC encoder. With the CTC label prior and emit cue, p then starts its
            variational stage deciding as the CTC head would. The entropy-bonus schedule counts
            from the step the warm-up ended (kept in the checkpoint). Needs the shared encoder and
            the aligner. 0: off. On the main command, 0.5 (four seeds): dev / test PER 3.7 /
            3.6% against 4.0 / 3.8% without; CTC 3.7 / 3.2% (docs/speech.md).
        ctc_greedy_start: with the CTC label prior and emit cue, p starts out deciding as the CTC
            head's greedy decoding does, so that a CTC warm-up hands the bound a decoder that
            already works: the label prior is the head's distribution over phones *given* that a
            phone is emitted, ``log P_ctc(c | x_<=t) - log(1 - P_ctc(blank | x_<=t))`` (so that
            it does not lose to EOS's 0 where the head spikes), the emit head's bias starts at 0
            (p emits where ``P_ctc(blank) < 0.5``) and EOS's label bias at ``eos_start_logit``.
            ``False``: the label prior is the head's ``log P_ctc(c | x_<=t)`` itself and the emit
            bias is ``emit_prior``'s log-odds (the earlier runs). On the main command after
            ``ctc_warmup: 0.5`` (four seeds): dev / test PER 3.9 / 3.2% against 3.7 / 3.6%
            (docs/speech.md).
        eos_start_logit: EOS's initial label bias with ``ctc_greedy_start``.
        value_window: the lattice states at which :meth:`HardAlignmentRecognizer.expected_future_log_weights`
            evaluates p for ``vimco-seq``'s values (``values="model"``/``"auto"``): 0, every state
            (exact values); W > 0, at each step the W values of "labels emitted" around the
            posterior's expected progress there (q's forward recursion), the others read as the
            nearest state in the window. The values stay a valid baseline either way (any
            function of the particle's past keeps the estimate unbiased); the window only trades
            their accuracy far from where q puts its mass for time. Default 12: on the speech-step
            batch 84 against 228 ms when measured (fourteenth session), the same gradient variance,
            more steps in a time budget; narrower windows raised the variance (docs/estimators.md).
        flat_start: the first fraction of the training budget (counted from the start, as
            ``ctc_warmup`` counts it; with both set, the flat stage follows the warm-up) in which
            the bound scores every alignment under the uniform alignment prior instead of p's
            decisions: at a free step with r labels (EOS included) left to emit in s steps,
            p(emit) = r / s, which makes every alignment equally likely.
            p's decision head still learns, from the bound's own gradient for it (the
            self-normalised weights times its log-probabilities of the drawn decisions), but q's
            learning signal no longer rewards alignments for being easy for p to predict. Why:
            without the CTC aligner, q collapses within a few hundred steps onto emitting every
            label as early as it may (the one alignment p's decision head learns to predict at no
            cost) while p's encoder has not yet learnt where any phone is; under the uniform prior
            only the labels' likelihood and q's entropy shape q, as an HMM's flat start does.
            Needs the time-parallel path (``proposal: posterior``, ``posterior_kind: lattice``).
            0: off. Without the aligner, 20 minutes, one thread: vimco-seq test PER 76.1% -> 9.1%
            with 0.5 and ``decoder: median`` (docs/speech.md).
        ctc_emit_cue: what the emit cue and the label prior read from the CTC head. ``not_blank``:
            ``P_ctc(blank) < 0.5`` at step t (a spike over several frames is emitted at each).
            ``new_label``: the probability that the head's greedy decoding starts a new label at
            t, ``sum_c P_t(c) (1 - P_{t-1}(c))`` (frame posteriors as independent; repeats over
            consecutive frames collapsed, as CTC's greedy decoding collapses them), and phones
            weighted the same way (:func:`ctc_new_label_log_probs`).
        consistency_weight: weight of noisy-clean consistency training: the CTC head's frame
            distributions on the noisy training input are pulled toward those on the same utterance
            clean (:func:`hardalign.speech.ctc.frame_consistency`, the clean pass without gradient
            or dropout; the batch's ``clean_features``, given by the ``timit`` task under training
            noise or the mix), in the warm-up and with the bound. The head is on p's encoder, so
            the term asks the encoder to read noisy speech as it reads clean speech. 0: off.
    """

    hidden_size: int = 256
    encoder_layers: int = 2
    decision_hidden: int = 64
    decision_recurrence: bool = False
    label_embedding: int = 64
    posterior_hidden: int = 128
    baseline_hidden: int = 64
    proposal: str = "posterior"
    emit_prior: float = 0.35
    dropout: float = 0.0
    dropout_ramp_steps: int = 0
    entropy_weight: float = 1.0
    entropy_weight_final: float = 0.1
    entropy_decay_steps: int = 1000
    posterior_coupling: float = 0.0
    posterior_aligner: bool = True
    aligner_weight: float = 1.0
    posterior_kind: str = "lattice"
    posterior_encoder: str = "shared"
    posterior_lookahead: str = "lstm"
    posterior_lookahead_steps: int = 10
    ctc_label_prior: bool = True
    ctc_emit_prior: bool = True
    score_forced_emissions: bool = False
    forced_emission_weight: float = 1.0
    ctc_prior_gradient: float = 0.0
    ctc_warmup: float = 0.0
    ctc_greedy_start: bool = False
    eos_start_logit: float = -3.0
    ctc_emit_cue: str = "not_blank"
    flat_start: float = 0.0
    value_window: int = 12
    consistency_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.posterior_encoder not in ("own", "shared"):
            raise ValueError(f"posterior_encoder={self.posterior_encoder!r}: must be 'own' or 'shared'")
        if self.posterior_kind not in KINDS:
            raise ValueError(f"posterior_kind={self.posterior_kind!r}: must be one of {KINDS}")
        if self.posterior_lookahead not in LOOKAHEADS:
            raise ValueError(f"posterior_lookahead={self.posterior_lookahead!r}: must be one of {LOOKAHEADS}")
        if self.proposal not in ("prior", "posterior"):
            raise ValueError(f"proposal={self.proposal!r}: must be 'prior' or 'posterior'")
        for name in ("hidden_size", "encoder_layers", "decision_hidden", "label_embedding", "posterior_hidden", "baseline_hidden", "posterior_lookahead_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if not 0.0 < self.emit_prior < 1.0:
            raise ValueError(f"emit_prior={self.emit_prior}: must be in (0, 1)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout}: must be in [0, 1)")
        if self.ctc_emit_cue not in ("not_blank", "new_label"):
            raise ValueError(f"ctc_emit_cue={self.ctc_emit_cue!r}: must be 'not_blank' or 'new_label'")
        if not 0.0 <= self.ctc_warmup < 1.0:
            raise ValueError(f"ctc_warmup={self.ctc_warmup}: must be a fraction of the training budget in [0, 1)")
        if self.ctc_warmup and not (self.posterior_encoder == "shared" and self.posterior_aligner):
            raise ValueError(
                f"ctc_warmup={self.ctc_warmup} trains p's encoder through the aligner's CTC head, "
                "which needs posterior_encoder='shared' and posterior_aligner=true"
            )
        if not 0.0 <= self.flat_start < 1.0:
            raise ValueError(f"flat_start={self.flat_start}: must be a fraction of the training budget in [0, 1)")
        if self.consistency_weight < 0:
            raise ValueError(f"consistency_weight={self.consistency_weight}: must be >= 0 (0: off)")
        if self.consistency_weight and not (self.posterior_encoder == "shared" and self.posterior_aligner):
            raise ValueError(
                f"consistency_weight={self.consistency_weight} compares the CTC head on p's encoder for noisy and clean input, "
                "which needs posterior_encoder='shared' and posterior_aligner=true"
            )
        if self.value_window < 0:
            raise ValueError(f"value_window={self.value_window}: must be >= 0 (0: every lattice state)")
        if self.flat_start and not (self.proposal == "posterior" and self.posterior_kind == "lattice"):
            raise ValueError(
                f"flat_start={self.flat_start} changes the time-parallel scoring of alignments, "
                f"which needs proposal='posterior' and posterior_kind='lattice' (got {self.proposal!r}, {self.posterior_kind!r})"
            )


_READ_GATES = (0, 2, 3)  # i, g, o of the gate layout (i, f, g, o): the forget gate is unread without memory


def _tanh_(x: torch.Tensor) -> torch.Tensor:
    """``tanh`` in place as ``2 sigmoid(2x) - 1``: on one CPU thread torch's float tanh takes about
    four times as long as this (2.0 against 0.5 ms on the lattice's [32, 16, 12, 2, 64] chunks), and
    the lattice evaluation applies it to every state twice. Exact to rounding (3e-16 in float64)."""
    return x.mul_(2).sigmoid_().mul_(2).sub_(1)


class _MemorylessCell(torch.autograd.Function):
    """The decision cell without memory, ``h = sigmoid(o) tanh(sigmoid(i) tanh(g))``, with its
    backward written out: tanh by :func:`_tanh_`, and the backward's products in place on the saved
    activations. On one CPU thread forward + backward take about two thirds of autograd's time for
    the six separate operations (8 against 12 ms at the time-parallel scoring's [128, 100, 64]).
    Tested against autograd's gradient in float64."""

    @staticmethod
    def forward(ctx, i: torch.Tensor, g: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        input_gate, candidate, output_gate = torch.sigmoid(i), _tanh_(g.clone()), torch.sigmoid(o)
        squashed = _tanh_(input_gate * candidate)  # tanh(c)
        ctx.save_for_backward(input_gate, candidate, squashed, output_gate)
        return output_gate * squashed

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        input_gate, candidate, squashed, output_gate = ctx.saved_tensors
        grad_o = (grad_h * squashed).mul_(output_gate - output_gate * output_gate)  # sigmoid' = s (1 - s)
        grad_c = (grad_h * output_gate).mul_(1 - squashed * squashed)  # tanh' = 1 - tanh^2
        grad_i = (grad_c * candidate).mul_(input_gate - input_gate * input_gate)
        grad_g = grad_c.mul_(input_gate).mul_(1 - candidate * candidate)
        return grad_i, grad_g, grad_o


class HardAlignmentRecognizer(nn.Module):
    """Online hard-alignment phoneme recogniser with its training-time posterior and baseline network.

    Args:
        input_dim: feature dimension F of a step (369 for 123-dim frames stacked by 3).
        num_phones: n, the number of phone labels (ids ``1..n``; EOS is ``n + 1``).
        config: a :class:`HardAlignmentConfig` (default: all defaults).
        **options: fields of :class:`HardAlignmentConfig` that override ``config``'s.

    Training: ``model(batch, num_samples=K, step=i)`` returns a
    :class:`hardalign.objective.LatentOutput` (the K alignments drawn from the proposal, the
    baseline network's per-step prediction, the aligner's CTC loss and the entropy bonus); the
    trainer applies the estimator to it (:func:`hardalign.objective.training_terms`).
    """

    def __init__(self, input_dim: int, num_phones: int, config: HardAlignmentConfig | None = None, **options: Any):
        super().__init__()
        config = replace(config or HardAlignmentConfig(), **options)
        if num_phones < 1 or input_dim < 1:
            raise ValueError(f"input_dim and num_phones must be >= 1, got {input_dim}, {num_phones}")
        self.config = config
        self.input_dim = input_dim
        self.num_phones = num_phones
        self.eos_id = num_phones + 1
        self.num_classes = num_phones + 1  # softmax over labels 1..n+1
        self.hidden_size = config.decision_hidden
        self.encoder_hidden = config.hidden_size
        self.proposal = config.proposal
        self.dropout = config.dropout
        self.dropout_ramp_steps = config.dropout_ramp_steps
        self.entropy_weight = config.entropy_weight
        self.entropy_weight_final = config.entropy_weight_final
        self.entropy_decay_steps = config.entropy_decay_steps
        H, hidden_size = config.decision_hidden, config.hidden_size
        # --- model p ---
        # encoder: no feedback, once per utterance (dropout between layers is applied by hand below)
        self.encoder = nn.ModuleList(
            nn.LSTM(input_dim if i == 0 else hidden_size, hidden_size, batch_first=True) for i in range(config.encoder_layers)
        )
        self.gate_input = nn.Linear(hidden_size, 4 * H)  # encoder output -> decision-cell gates (its bias)
        if config.decision_recurrence:
            self.gate_hidden = nn.Linear(H, 4 * H, bias=False)  # decision-cell recurrence
        self.gate_decision = nn.Embedding(2, 4 * H)  # fed-back z_{t-1}
        self.label_embedding = nn.Embedding(num_phones + 2, config.label_embedding)  # 0 = nothing emitted yet
        self.gate_label = nn.Linear(config.label_embedding, 4 * H, bias=False)
        self.emit_head = nn.Linear(H, 1)
        self.label_head = nn.Linear(H, self.num_classes)
        # --- posterior q(z | x, y), used only in training ---
        self.posterior = Posterior(
            input_dim,
            num_phones,
            hidden_size=config.posterior_hidden,
            coupling=config.posterior_coupling,
            aligner=config.posterior_aligner,
            kind=config.posterior_kind,
            shared_width=config.hidden_size if config.posterior_encoder == "shared" else 0,
            lookahead=config.posterior_lookahead,
            lookahead_steps=config.posterior_lookahead_steps,
        )
        self.aligner_weight = config.aligner_weight
        if self.uses_ctc_emit_prior:
            self.emit_cue_scale = nn.Parameter(torch.ones(()))
        # --- input-dependent baseline: per step, reads the proposal's state (detached) and the counts ---
        proposal_width = config.posterior_hidden if config.proposal == "posterior" else H
        self.baseline_net = nn.Sequential(nn.Linear(proposal_width + 3, config.baseline_hidden), nn.Tanh(), nn.Linear(config.baseline_hidden, 1))
        self._initialise(config.emit_prior)
        self._dropout_now = 0.0
        #: the fraction of the training budget spent before this step, set by the trainer
        #: (:class:`hardalign.train.loop.TrainingStep`); drives ``ctc_warmup``
        self.budget_spent = 0.0
        self._ctc_warmup_end: int | None = None  # the first step after the CTC warm-up
        self.register_load_state_dict_pre_hook(_default_extra_state)

    def _initialise(self, emit_prior: float) -> None:
        H = self.hidden_size
        with torch.no_grad():
            nn.init.zeros_(self.gate_decision.weight)
            nn.init.normal_(self.gate_label.weight, std=0.3 / math.sqrt(self.gate_label.in_features))
            self.gate_input.bias.zero_()
            self.gate_input.bias[H : 2 * H] = 1.0  # forget-gate bias 1: remember by default
            self.emit_head.weight.mul_(0.1)
            # with the greedy start, the emit cue alone decides: emit where the CTC head's blank < 0.5
            self.emit_head.bias.fill_(0.0 if self.starts_as_ctc_greedy else math.log(emit_prior / (1 - emit_prior)))
            self.label_head.weight.mul_(0.1)
            self.label_head.bias.zero_()
            if self.starts_as_ctc_greedy:
                self.label_head.bias[-1] = self.config.eos_start_logit
            self.baseline_net[-1].weight.zero_()
            self.baseline_net[-1].bias.zero_()

    # ------------------------------------------------------------------ schedules
    def dropout_at(self, step: int) -> float:
        """Dropout rate at training step ``step``: ramped linearly from 0 over ``dropout_ramp_steps``."""
        if self.dropout_ramp_steps <= 0:
            return self.dropout
        return self.dropout * min(1.0, step / self.dropout_ramp_steps)

    def entropy_weight_at(self, step: int) -> float:
        """Entropy-bonus weight at ``step``: linear from ``entropy_weight`` to ``entropy_weight_final``."""
        if self.entropy_decay_steps <= 0:
            return self.entropy_weight_final
        frac = min(1.0, step / self.entropy_decay_steps)
        return self.entropy_weight + frac * (self.entropy_weight_final - self.entropy_weight)

    # ------------------------------------------------------------------ encoder (once per utterance)
    def encode(
        self,
        features: torch.Tensor,
        feature_lengths: torch.Tensor,
        targets: torch.Tensor | None = None,
        target_lengths: torch.Tensor | None = None,
        *,
        with_posterior: bool = True,
    ) -> dict[str, Any]:
        """The decision-independent work, once per utterance: the memory that :func:`rollout` folds.

        Args:
            features: ``[B, T, F]``.
            feature_lengths: ``[B]`` long, valid steps per utterance.
            targets: ``[B, U]`` long phone ids (padded with 0), or ``None`` when decoding.
            target_lengths: ``[B]`` long.
            with_posterior: also encode frames and labels for q (training with the posterior).

        Returns:
            dict with ``gates`` (a tuple of T tensors ``[B, 4H]``: decision-cell gate inputs of each step),
            ``num_steps [B]`` and, with targets, ``labels [B, U + 1]`` (EOS appended) and
            ``num_labels [B]``, plus the posterior's memory under ``posterior``.
        """
        if features.dim() != 3 or features.shape[-1] != self.input_dim:
            raise ValueError(f"features: expected [B, T, {self.input_dim}], got {list(features.shape)}")
        B, T, _ = features.shape
        if feature_lengths.shape != (B,):
            raise ValueError(f"feature_lengths: expected [{B}], got {list(feature_lengths.shape)}")
        encoded = self._encode_frames(features)  # [B, T, hidden]
        gates = self.gate_input(encoded)  # [B, T, 4H], once per utterance
        memory: dict[str, Any] = {"num_steps": feature_lengths}
        # the CTC head's log-probabilities: p's label prior and emit cue, and the aligner's loss
        ctc = self.posterior.aligner_log_probs(features, encoded) if self.uses_ctc_label_prior else None  # [B, T, blank + n]
        if ctc is not None:
            memory["aligner_log_probs"] = _Unfolded(ctc)  # for the consistency term; not per particle
        if targets is not None:
            if target_lengths is None or target_lengths.shape != (B,) or targets.dim() != 2 or targets.shape[0] != B:
                raise ValueError(f"targets [B, U] and target_lengths [B] needed with B={B}, got {list(targets.shape)}")
            labels, num_labels = append_eos(targets, target_lengths, self.eos_id)
            memory["labels"] = labels
            memory["num_labels"] = num_labels
            if with_posterior:
                memory["posterior"] = self.posterior.encode(features, feature_lengths, labels, num_labels, shared=encoded, aligner_log_probs=ctc)
                if "aligner_nll" in memory["posterior"]:
                    memory["aligner_nll"] = memory["posterior"]["aligner_nll"]
            elif ctc is not None:
                # the prior proposal: q is not built, but p's priors still need a trained head
                memory["aligner_nll"] = _Unfolded(self.posterior.aligner_nll(ctc, feature_lengths, labels, num_labels))
        if ctc is not None:
            # the step inputs carry the label prior beside the gates: [B, T, 4H + n + 1]
            ctc = self._scale_prior_gradient(ctc)
            if self.config.ctc_emit_cue == "new_label":
                phones, log_emit, log_no_emit = ctc_new_label_log_probs(ctc)
            else:
                phones, log_no_emit = ctc[..., 1:], ctc[..., :1]
                log_emit = torch.logsumexp(phones, dim=-1, keepdim=True)
            if self.starts_as_ctc_greedy:
                phones = phones - log_emit  # which phone, given that one is emitted
            priors = [phones, torch.zeros_like(ctc[..., :1])]  # phones, EOS 0
            if self.uses_ctc_emit_prior:  # the emit cue's log-odds: the last column
                priors.append(log_emit - log_no_emit)
            gates = torch.cat([gates, *priors], dim=-1)
        # a tuple of per-step slices: indexing a [N, T, 4H] tensor per step would make autograd
        # allocate a full-size zero gradient at every step; unbind's backward is one stack.
        memory["gates"] = gates.unbind(1)
        memory["gate_inputs"] = _Unfolded(gates)
        return memory

    def _encode_frames(self, features: torch.Tensor) -> torch.Tensor:
        """p's encoder: ``[B, T, F]`` -> ``[B, T, hidden]`` (with dropout after each layer in training)."""
        encoded = features
        for layer in self.encoder:
            # unidirectional: padding at the end cannot reach valid steps, so no packing (on CPU the
            # packed LSTM's backward is several times slower)
            encoded, _ = layer(encoded)
            if self.training and self._dropout_now > 0:
                encoded = F.dropout(encoded, self._dropout_now, training=True)
        return encoded

    def _scale_prior_gradient(self, ctc: torch.Tensor) -> torch.Tensor:
        """The CTC head's log-probabilities ``[B, T, blank + n]`` as p's priors read them: the same
        values, with the bound's gradient into the head scaled by ``ctc_prior_gradient``."""
        scale = self.config.ctc_prior_gradient
        if scale == 0:
            return ctc.detach()  # no graph from the priors back to the head at all
        if scale == 1:
            return ctc
        return ctc.detach() + scale * (ctc - ctc.detach())

    # ------------------------------------------------------------------ one step of p
    @property
    def uses_ctc_label_prior(self) -> bool:
        return self.config.ctc_label_prior and self.posterior.shared_width > 0 and self.posterior.use_aligner

    @property
    def uses_ctc_emit_prior(self) -> bool:
        return self.uses_ctc_label_prior and self.config.ctc_emit_prior

    @property
    def starts_as_ctc_greedy(self) -> bool:
        return self.uses_ctc_emit_prior and self.config.ctc_greedy_start

    def _split_step_inputs(self, step_inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``[..., 4H (+ n + 1 (+ 1))]`` -> the decision cell's gate inputs, the label prior and the emit cue (or None)."""
        width = 4 * self.hidden_size
        if not self.uses_ctc_label_prior:
            return step_inputs, None, None
        if not self.uses_ctc_emit_prior:
            return step_inputs[..., :width], step_inputs[..., width:], None
        return step_inputs[..., :width], step_inputs[..., width:-1], step_inputs[..., -1]

    def _p_forced(self, is_forced: torch.Tensor, emit: torch.Tensor) -> torch.Tensor:
        """Where p's decision term is 0: the forced steps, less the forced emissions with ``score_forced_emissions``."""
        return is_forced & ~emit if self.config.score_forced_emissions else is_forced

    def _emit_logit(self, out: torch.Tensor, emit_cue: torch.Tensor | None) -> torch.Tensor:
        emit_logit = self.emit_head(out).squeeze(-1)
        return emit_logit if emit_cue is None else emit_logit + self.emit_cue_scale * emit_cue

    def _feedback_gates(self) -> torch.Tensor:
        """The decision cell's gate inputs from the fed-back (last label, previous decision) pair,
        ``[2 (n + 2), 4H]``, row ``2 * label + z``: one table for the time-parallel paths, where one
        lookup replaces the two layers' separate lookups and adds."""
        label_gates = self.gate_label(self.label_embedding.weight)  # [n + 2, 4H]: one row per label id
        return (label_gates.unsqueeze(1) + self.gate_decision.weight.unsqueeze(0)).flatten(0, 1)

    def _cell(self, gates: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The decision cell's update from its gate pre-activations ``[..., 4H]`` (i, f, g, o) and
        the previous cell state: ``(h, c)``. Without ``decision_recurrence`` the cell state is not
        carried (nor is the forget gate read)."""
        return self._cell_update(*gates.chunk(4, dim=-1), c)

    def _cell_update(self, i, f, g, o, c: torch.Tensor | None, *, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`_cell` from the four gates' pre-activations, given apart (``f`` unread without
        ``decision_recurrence``; contiguous gates make the elementwise work several times faster).
        Without ``decision_recurrence`` the cell state is not returned (None): nothing reads it.
        ``inplace`` (no autograd, no memory): overwrite the pre-activations instead of allocating."""
        if not self.config.decision_recurrence:
            if inplace:
                return o.sigmoid_().mul_(_tanh_(i.sigmoid_().mul_(_tanh_(g)))), None
            return _MemorylessCell.apply(i, g, o), None
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c_new), c_new

    def _p_step(self, gates_in: torch.Tensor, h: torch.Tensor, c: torch.Tensor, z_prev: torch.Tensor, label_prev: torch.Tensor):
        """Decision-cell LSTM step with the fed-back decision and label; returns ``(h, c, emit_logit, label_logp)``.

        ``gates_in``: the step's inputs from :meth:`encode` (gate inputs, and the label prior)."""
        gates_in, label_prior, emit_cue = self._split_step_inputs(gates_in)
        gates = gates_in + self.gate_decision(z_prev.long()) + self.gate_label(self.label_embedding(label_prev))
        if self.config.decision_recurrence:
            gates = gates + self.gate_hidden(h)
        h, c_new = self._cell(gates, c)
        c = c if c_new is None else c_new  # without memory the (unread) state is carried as it came
        out = h
        if self.training and self._dropout_now > 0:
            out = F.dropout(h, self._dropout_now, training=True)
        emit_logit = self._emit_logit(out, emit_cue)  # [N]
        label_logits = self.label_head(out) if label_prior is None else self.label_head(out) + label_prior
        label_logp = torch.log_softmax(label_logits, dim=-1)  # [N, n + 1]
        return h, c, emit_logit, label_logp

    # ------------------------------------------------------------------ HardAttention protocol
    def initial_state(self, memory: dict[str, Any]) -> dict[str, Any]:
        gates0 = memory["gates"][0]
        N = gates0.shape[0]
        zeros_h = gates0.new_zeros(N, self.hidden_size)
        z_prev = gates0.new_zeros(N)
        label_prev = torch.zeros(N, dtype=torch.long, device=gates0.device)
        h, c, emit_logit, label_logp = self._p_step(gates0, zeros_h, zeros_h, z_prev, label_prev)
        state = {
            "t": 0,
            "h": h,
            "c": c,
            "emit_logit": emit_logit,
            "label_logp": label_logp,
            "emitted": torch.zeros(N, dtype=torch.long, device=gates0.device),
            "record": {"p_emit": [], "q_emit": [], "proposal_state": []},
        }
        if "labels" in memory:
            state["label_next_logp"] = self._next_label_logp(state, memory)
            if self.proposal == "posterior" and "posterior" in memory:
                state["q"] = self.posterior.initial_state(memory["posterior"], N)
                self._posterior_step(state, memory, z_prev)
        return state

    def _next_label_logp(self, state: dict[str, Any], memory: dict[str, Any]) -> torch.Tensor:
        """``log d_t[y_next]`` for every row (rows with nothing left read their last label; unused)."""
        labels = memory["labels"]
        index = state["emitted"].clamp(max=labels.shape[1] - 1).unsqueeze(1)
        label_next = labels.gather(1, index).squeeze(1)  # [N]
        return state["label_logp"].gather(1, (label_next - 1).clamp_min(0).unsqueeze(1)).squeeze(1)

    def _posterior_step(self, state: dict[str, Any], memory: dict[str, Any], z_prev: torch.Tensor) -> None:
        counts = count_features(state["t"], memory["num_steps"], state["emitted"], memory["num_labels"], z_prev.dtype)
        # p's view of this step (detached): q can learn to emit where p expects the next label
        # log-probabilities relative to a uniform softmax: 0 at initialisation
        log_classes = math.log(self.num_classes)
        p_view = torch.stack([state["emit_logit"], state["label_next_logp"] + log_classes, state["label_logp"][:, -1] + log_classes], dim=-1).detach()
        state["q"], state["q_logit"] = self.posterior.step(memory["posterior"], state["q"], state["t"], state["emitted"], z_prev, counts, p_view)

    def policy(self, state: dict[str, Any], memory: dict[str, Any]) -> D.Distribution:
        if self.proposal == "posterior" and "q_logit" in state:
            return D.Bernoulli(logits=state["q_logit"])
        return D.Bernoulli(logits=state["emit_logit"])

    def forced(self, state: dict[str, Any], memory: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        is_forced, value = forced_decisions(state["t"], memory["num_steps"], state["emitted"], memory["num_labels"])
        state["is_forced"] = is_forced  # reused by update() at this step
        return is_forced, value.to(state["emit_logit"].dtype)

    def read(self, memory: dict[str, Any], location: torch.Tensor) -> torch.Tensor:
        return location

    def update(self, state: dict[str, Any], memory: dict[str, Any], location: torch.Tensor, glimpse: torch.Tensor):
        t = state["t"]
        z = location
        emit = z > 0.5
        is_forced = state.get("is_forced")
        if is_forced is None:
            is_forced, _ = forced_decisions(t, memory["num_steps"], state["emitted"], memory["num_labels"])
        valid = memory["num_steps"] > t
        # log p(z_t | past) at free steps + z_t log d_t[y_next]
        log_p_decision = -F.binary_cross_entropy_with_logits(state["emit_logit"], z, reduction="none")
        log_p = torch.where(self._p_forced(is_forced, emit), torch.zeros_like(log_p_decision), log_p_decision)
        log_p = log_p + torch.where(emit, state["label_next_logp"], torch.zeros_like(log_p))
        record = state["record"]
        if self.config.forced_emission_weight > 0:  # what the auxiliary loss reads (forward)
            record.setdefault("forced_emission_logp", []).append(torch.where(is_forced & emit, log_p_decision, torch.zeros_like(log_p_decision)))
        if memory.get("record_probs"):
            record["p_emit"].append(torch.sigmoid(state["emit_logit"]).detach())
            if "q_logit" in state:
                record["q_emit"].append(torch.sigmoid(state["q_logit"]).detach())
        # the proposal's state before the decision: what the baseline network reads (afterwards,
        # in one batched call, and only when the estimator uses a baseline)
        record["proposal_state"].append((state["q"] if "q" in state else state["h"]).detach())
        # advance to step t + 1 with the fed-back decision and label
        labels = memory["labels"]
        label_now = labels.gather(1, state["emitted"].clamp(max=labels.shape[1] - 1).unsqueeze(1)).squeeze(1)
        label_prev = state.get("label_prev")
        if label_prev is None:
            label_prev = torch.zeros_like(label_now)
        label_prev = torch.where(emit, label_now, label_prev)
        emitted = state["emitted"] + emit.long()
        gates_next = memory["gates"][min(t + 1, len(memory["gates"]) - 1)]
        h, c, emit_logit, label_logp = self._p_step(gates_next, state["h"], state["c"], z, label_prev)
        new_state = {
            "t": t + 1,
            "h": h,
            "c": c,
            "emit_logit": emit_logit,
            "label_logp": label_logp,
            "emitted": emitted,
            "label_prev": label_prev,
            "record": record,
        }
        new_state["label_next_logp"] = self._next_label_logp(new_state, memory)
        if "q" in state:
            new_state["q"] = state["q"]
            self._posterior_step(new_state, memory, z)
        return new_state, log_p, valid

    def baselines(self, trajectory: Trajectory, memory: dict[str, Any]) -> torch.Tensor:
        """The baseline network's prediction of the return at every step, ``[K, B, T]``.

        It reads what the proposal knew before each decision: its state (detached) and the
        counts of labels and steps left, so it depends on ``z_{<t}`` only.
        """
        K = trajectory.num_samples
        states = trajectory.final_state["record"]["proposal_state"]
        states = states() if callable(states) else torch.stack(states, dim=1)  # [K * B, T, H]
        z = trajectory.locations.flatten(0, 1)  # [K, B, T] -> [K * B, T]
        emitted = (z.cumsum(-1) - z).long()  # labels emitted before step t
        steps = torch.arange(z.shape[1], device=z.device)  # [T]
        folded = fold_tree({"num_steps": memory["num_steps"], "num_labels": memory["num_labels"]}, K)
        counts = count_features(steps, folded["num_steps"].unsqueeze(1), emitted, folded["num_labels"].unsqueeze(1), states.dtype)
        values = self.baseline_net(torch.cat([states, counts], dim=-1)).squeeze(-1)  # [K * B, T]
        return unfold(values, K)  # [K, B, T]

    # ------------------------------------------------------------------ training
    def sample_alignments(
        self,
        batch: dict[str, Any],
        *,
        num_samples: int,
        generator: torch.Generator | None = None,
        record: bool = False,
    ) -> Trajectory:
        """Draw ``num_samples`` alignments per utterance from the proposal in one batched rollout.

        Args:
            batch: the speech batch (``features [B, T, F]``, ``feature_lengths [B]``, ``targets
                [B, U]``, ``target_lengths [B]``).
            num_samples: K.
            generator: optional ``torch.Generator`` for the decisions.
            record: also record p's and q's emit probabilities per step (for pictures).

        Returns:
            the :class:`Trajectory` (``[K, B, T]`` fields); ``final_state["record"]`` holds the
            per-step lists ``p_emit``, ``q_emit`` (emit probabilities, ``[K * B]`` each; with
            ``record``) and ``proposal_state`` (the proposal's state before each decision, which
            :meth:`baselines` reads).

        Raises:
            ValueError: an utterance has fewer steps than labels + EOS (it cannot be aligned).
        """
        self._check_alignable(batch)
        return self._rollout(batch, num_samples, generator, record)[0]

    @staticmethod
    def _check_alignable(batch: dict[str, Any]) -> None:
        too_short = batch["feature_lengths"] < batch["target_lengths"] + 1
        if bool(too_short.any()):  # one host sync per batch, outside the step loop
            ids = batch.get("ids")
            bad = [ids[i] if ids is not None else str(i) for i in too_short.nonzero().flatten().tolist()]
            raise ValueError(f"utterances with fewer steps than labels + EOS cannot be aligned: {bad}")

    def _rollout(self, batch, num_samples, generator=None, record=False) -> tuple[Trajectory, dict[str, Any]]:
        features, feature_lengths = batch["features"], batch["feature_lengths"]
        memory = self.encode(features, feature_lengths, batch["targets"], batch["target_lengths"], with_posterior=self.proposal == "posterior")
        memory["record_probs"] = record
        trajectory = rollout(self, memory, num_samples=num_samples, num_steps=features.shape[1], generator=generator)
        # progress of each particle: labels emitted before step t (what makes states comparable
        # across particles for the sequential estimators)
        z = trajectory.locations.long()
        trajectory.progress = z.cumsum(-1) - z
        return trajectory, memory

    # ------------------------------------------------------------------ time-parallel training (lattice q)
    @torch.no_grad()
    def _draw_from_lattice(self, memory: dict[str, Any], num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """K alignments per utterance from the lattice posterior: ``z [K, B, T]`` (forced steps included).

        A loop over steps of gathers and comparisons only (no network, no autograd, no host sync).
        """
        prob = self._lattice_emit_prob(memory)  # [B, T, L + 1]: each step of the loop is one gather, one comparison and one add
        B, T, states = prob.shape
        N = num_samples * B
        flat = prob.reshape(-1)
        row = (torch.arange(N, device=prob.device) % B) * (T * states)  # row k * B + b reads utterance b
        uniforms = torch.rand(T, N, generator=generator, device=prob.device, dtype=prob.dtype)
        decisions = []
        for t in range(T):
            z = uniforms[t] < flat[row + t * states]  # u < 1 always, u < 0 never: forced values are exact
            row = row + z  # the next step reads one label further
            decisions.append(z)
        return torch.stack(decisions, dim=-1).to(prob.dtype).reshape(num_samples, B, T)  # [K * B, T] -> [K, B, T]

    @staticmethod
    def _lattice_emit_prob(memory: dict[str, Any]) -> torch.Tensor:
        """q's emit probability at every (step t, labels emitted n), ``[B, T, L + 1]``, detached, with
        the forced decisions folded in (1: must emit, 0: must skip; n = L, everything emitted, is a
        forced skip): what the sampler draws from."""
        table = F.pad(memory["posterior"]["table"].value.detach(), (0, 1))  # [B, T, L + 1]
        B, T, states = table.shape
        is_forced, must_emit = forced_decisions(
            torch.arange(T, device=table.device).view(1, T, 1), memory["num_steps"].view(B, 1, 1),
            torch.arange(states, device=table.device).view(1, 1, states), memory["num_labels"].view(B, 1, 1),
        )
        return torch.where(is_forced, must_emit.to(table.dtype), torch.sigmoid(table))

    @torch.no_grad()
    def lattice_step_log_weights(
        self, memory: dict[str, Any], *, flat: bool = False, chunk: int = 16, window: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Every step's log weight at every state of the lattice, and the proposal's emit probability there.

        With the decision cell without memory and the lattice posterior, a step's log weight
        ``l_t = log p(z_t, emission | past) - log q(z_t | past)`` depends on the past only through
        the state ``(n, z_{t-1})`` (labels emitted before t, previous decision), and q's decision
        only through n, so the alignments form a lattice over ``(t, n, z_{t-1})``. This evaluates
        p's decision cell and heads at all of its states, step by step in chunks of ``chunk``
        steps (forward only, detached, without dropout: in training, the heads' dropout masks
        differ from particle to particle, so the values are those of the expected, undropped
        network), exactly as :meth:`score_alignments` scores a path through them in evaluation
        mode (tested).

        Args:
            memory: from :meth:`encode` with targets and the lattice posterior.
            flat: score p's decisions under the uniform alignment prior (``flat_start``).
            window: 0, every state; W > 0 (and < L + 1), at step t only the W states
            ``n = first[b, t] + j``, ``j < W``, centred on q's expected progress at t.

        Returns:
            ``(log_weights [B, T, S, 2, 2], emit_prob [B, T, S], first)`` with S = L + 1 states
            (``first`` None) or the window's W (``first [B, T]``, the window's first n at each
            step): ``log_weights[b, t, j, z_prev, d]`` is the step log weight of decision d at step
            t after n labels (state j) and previous decision ``z_prev`` (0 at padding steps;
            finite everywhere, including states no path reaches); ``emit_prob`` is q's emit
            probability with the forced decisions folded in (1: must emit, 0: must skip), as the
            sampler draws it. ``L`` is the padded number of labels (EOS included).

        Raises:
            ValueError: the model's decision cell has memory (``decision_recurrence``) or q is not
                the lattice kind: the states are then not a lattice.
        """
        if self.config.decision_recurrence or not self.time_parallel:
            raise ValueError(
                "lattice_step_log_weights: needs decision_recurrence: false and posterior_kind: lattice "
                "(otherwise a step's log weight depends on the whole past, not on a lattice state)"
            )
        gates, label_prior, emit_cue = self._split_step_inputs(memory["gate_inputs"].value.detach())
        labels, num_labels, num_steps = memory["labels"], memory["num_labels"], memory["num_steps"]
        B, T, _ = gates.shape
        L = labels.shape[1]
        device = gates.device
        emitted = torch.arange(L + 1, device=device)  # n, labels emitted before the step
        # the fed-back (last label, previous decision) of every state, [B, L + 1, 2, 4H]
        label_prev = F.pad(labels, (1, 0))  # label n - 1, or 0 before the first emission
        feedback = F.embedding(2 * label_prev.unsqueeze(-1) + torch.arange(2, device=device), self._feedback_gates())
        H = self.hidden_size
        feedback_gates_by_kind = feedback.unflatten(-1, (4, H))  # [B, L + 1, 2, 4, H]: i, f, g, o
        next_class = (labels.gather(1, emitted.clamp(max=L - 1).expand(B, L + 1)) - 1).clamp_min(0)  # [B, L + 1]
        steps = torch.arange(T, device=device)
        valid = (steps.view(1, T) < num_steps.view(B, 1)).view(B, T, 1, 1)
        q_table = memory["posterior"]["table"].value.detach()  # [B, T, L]; n = L is always forced (read as L - 1, unused)
        q_prob = self._lattice_emit_prob(memory)  # [B, T, L + 1]
        first = None
        if 0 < window < L + 1:
            first = self._value_window(q_prob, window)  # [B, T]
            states = first.unsqueeze(-1) + torch.arange(window, device=device)  # [B, T, W]: n of each state
        else:
            states = emitted.view(1, 1, L + 1)
        S = states.shape[-1]
        state_class = next_class.gather(1, states.expand(B, T, S).flatten(1)).view(B, T, S)
        is_forced, _ = forced_decisions(steps.view(1, T, 1), num_steps.view(B, 1, 1), states, num_labels.view(B, 1, 1))
        emit_logits, next_logps = [], []
        if first is not None:  # one table per gate read (i, g, o; f is unread without memory), row b * (L + 1) + n
            rows = torch.arange(B, device=device).view(B, 1, 1) * (L + 1) + states  # [B, T, W]
            gate_tables = [feedback_gates_by_kind[..., k, :].reshape(B * (L + 1), 2 * H) for k in _READ_GATES]
        for start in range(0, T, chunk):
            stop = min(T, start + chunk)
            # each gate's pre-activation on its own: the broadcast sums come out contiguous
            step_gates = gates[:, start:stop].unflatten(-1, (4, H))[:, :, None, None]  # [B, c, 1, 1, 4, H]
            if first is None:  # every state: broadcast over the steps
                feedback_here = feedback_gates_by_kind[:, None]  # [B, 1, L + 1, 2, 4, H]
                i, g, o = (step_gates[..., k, :] + feedback_here[..., k, :] for k in _READ_GATES)
            else:  # the window's rows by embedding lookups (an index_select), then the step's gates added in place
                index = rows[:, start:stop]
                i, g, o = (
                    F.embedding(index, table).unflatten(-1, (2, H)).add_(step_gates[..., k, :])
                    for table, k in zip(gate_tables, _READ_GATES)
                )
            out, _ = self._cell_update(i, None, g, o, None, inplace=True)  # [B, c, S, 2, H]: fresh tensors, no autograd
            cue = None if emit_cue is None else emit_cue[:, start:stop, None, None]
            emit_logits.append(self._emit_logit(out, cue))
            label_logits = self.label_head(out)
            if label_prior is not None:
                label_logits.add_(label_prior[:, start:stop, None, None, :])
            index = state_class[:, start:stop, :, None, None].expand(B, stop - start, S, 2, 1)
            # the next label's log-probability (torch's fused log_softmax, then one gather: about half
            # the time of the logit less a logsumexp, which runs as several passes)
            next_logps.append(torch.log_softmax(label_logits, dim=-1).gather(-1, index).squeeze(-1))
        emit_logit, next_logp = torch.cat(emit_logits, 1), torch.cat(next_logps, 1)  # [B, T, S, 2]
        if flat:  # the uniform alignment prior, as score_alignments has it
            left = (num_labels.view(B, 1, 1) - states).to(gates.dtype)
            hazard = (left / (num_steps.view(B, 1, 1) - steps.view(1, T, 1)).clamp_min(1).to(gates.dtype)).clamp(1e-6, 1 - 1e-6)
            decision = [torch.log1p(-hazard).unsqueeze(-1).expand_as(emit_logit), hazard.log().unsqueeze(-1).expand_as(emit_logit)]
        else:
            decision = [F.logsigmoid(-emit_logit), F.logsigmoid(emit_logit)]
        q_logit = q_table.gather(2, states.clamp(max=L - 1).expand(B, T, S))  # [B, T, S]
        sampled = valid & ~is_forced.unsqueeze(-1)  # [B, T, S, 1]: where q decides
        zero = torch.zeros_like(emit_logit)
        columns = []
        for d in (0, 1):
            p_forced = is_forced & ~torch.tensor(bool(d), device=device) if self.config.score_forced_emissions else is_forced
            log_p = torch.where(p_forced.unsqueeze(-1), zero, decision[d]) + (next_logp if d else zero)
            log_q = torch.where(sampled, F.logsigmoid(q_logit if d else -q_logit).unsqueeze(-1), zero)
            columns.append(torch.where(valid, log_p - log_q, zero))
        emit_prob = q_prob.gather(2, states.expand(B, T, S))
        return torch.stack(columns, dim=-1), emit_prob, first

    @staticmethod
    def _value_window(prob: torch.Tensor, window: int) -> torch.Tensor:
        """``first [B, T]``: the window of ``window`` states at each step, centred on q's expected
        labels emitted there (its forward recursion over the lattice of :meth:`_lattice_emit_prob`,
        ``prob``, a loop of cheap steps)."""
        B, T, states = prob.shape
        device = prob.device
        emitted = torch.arange(states, device=device)
        occupancy = F.one_hot(torch.zeros(B, dtype=torch.long, device=device), states).to(prob.dtype)
        expected = []
        for t in range(T):
            expected.append((occupancy * emitted).sum(-1))
            moved = occupancy * prob[:, t]
            occupancy = occupancy - moved + F.pad(moved, (1, 0))[:, :-1]
        centre = torch.stack(expected, dim=1)  # [B, T]
        return (torch.round(centre) - window // 2).clamp(0, states - window).long()

    @torch.no_grad()
    def expected_future_log_weights(self, memory: dict[str, Any], *, flat: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(V [B, T + 1, S, 2], first)``: the expected sum of the log weights of steps t, t + 1, ...
        under the lattice posterior, from the state ``(n, z_{t-1})`` at step t (``V[:, T] = 0``);
        S = L + 1 states (``first`` None) or, with ``value_window`` W, the W states from
        ``first [B, T + 1]`` on at each step (:meth:`lattice_step_log_weights`).

        One backward recursion over the steps on :meth:`lattice_step_log_weights`,
        ``V_t(n, z') = sum_d q_t(d | n) (l_t(n, z', d) + V_{t+1}(n + d, d))``: exact (no sampling;
        with a window, a successor outside it reads the nearest state inside), O(T L) per
        utterance after the lattice's network evaluation, detached. These are the values
        ``vimco-seq`` reads with ``values="model"`` (:class:`Alternative` ``values``).
        """
        step_log_weights, emit_prob, first = self.lattice_step_log_weights(memory, flat=flat, window=self.config.value_window)
        B, T, states, _, _ = step_log_weights.shape
        slots = torch.arange(states, device=emit_prob.device)
        # V_t(n, z') = E_d[l_t(n, z', d)] + E_d[V_{t+1}(n + d, d)]: the second term does not depend on z'.
        # Everything but the recursion's gather runs over all steps at once. A forced decision's
        # excluded branch gets weight exactly 0 (the log weights are finite everywhere).
        weight = torch.stack([1 - emit_prob, emit_prob], dim=-1)  # [B, T, S, 2]: q's skip / emit probability
        expected_step = (step_log_weights * weight.unsqueeze(-2)).sum(-1)  # [B, T, S, 2 (z')]
        if first is None:  # the same n after a skip, n + 1 after an emission (n = L never emits: weight 0)
            shift = slots.expand(B, T, states)
        else:  # the window moves: n = first_t + j is slot n - first_{t+1} at t + 1 (nearest in the window)
            next_first = torch.cat([first[:, 1:], first[:, -1:]], dim=1)
            shift = (first - next_first).unsqueeze(-1) + slots  # [B, T, W]
        # where each branch reads V_{t+1} in its [B, S * 2] layout (slot, previous decision): skip -> (n, 0), emit -> (n + 1, 1)
        read = torch.stack([2 * shift.clamp(0, states - 1), 2 * (shift + 1).clamp(0, states - 1) + 1], dim=-1).flatten(2)  # [B, T, 2S]
        weight = weight.flatten(2)
        future = step_log_weights.new_zeros(B, states, 2)
        values = [future]
        for t in range(T - 1, -1, -1):
            ahead = future.reshape(B, 2 * states).gather(1, read[:, t]).mul_(weight[:, t]).view(B, states, 2).sum(-1)  # [B, S]
            future = expected_step[:, t] + ahead.unsqueeze(-1)
            values.append(future)
        return torch.stack(values[::-1], dim=1), (None if first is None else torch.cat([first, first[:, -1:]], dim=1))

    def _branch_values(self, memory: dict[str, Any], emitted: torch.Tensor, flat: bool) -> torch.Tensor:
        """``[2, K, B, T]``: for each particle and step t, the expected log weight of the steps
        after t had it emitted (index 0) or skipped (index 1) at t, from :meth:`expected_future_log_weights`."""
        values, first = self.expected_future_log_weights(memory, flat=flat)  # [B, T + 1, S, 2], [B, T + 1] or None
        B, T1, states, _ = values.shape
        K = emitted.shape[0]
        flat_values = values[:, 1:].reshape(B, -1)  # after step t: row t of values[:, 1:]
        steps = torch.arange(T1 - 1, device=emitted.device).view(1, 1, -1)
        offset = 0 if first is None else first[:, 1:].unsqueeze(0)  # the window's first n after step t
        branches = []
        for d in (1, 0):
            state = (emitted + d - offset).clamp(0, states - 1)
            index = (steps * states + state) * 2 + d  # [K, B, T]
            branches.append(flat_values.unsqueeze(0).expand(K, -1, -1).gather(2, index))
        return torch.stack(branches)

    def score_alignments(self, memory: dict[str, Any], z: torch.Tensor, *, flat: bool = False) -> Trajectory:
        """The trajectory of given alignments, every step at once (the time-parallel path).

        log p(z_t, y-emissions | past) for all K x B rows and T steps: the decision cell's inputs
        (encoder gates, previous decision, last emitted label) are known once z is, so the cell
        runs as one lean recurrence and the heads as batched matmuls; log q is a gather from the
        lattice posterior's table. Gives the same fields as :func:`hardalign.attention.rollout`
        on the same alignments (tested).

        Args:
            memory: from :meth:`encode` with targets and the lattice posterior.
            z: ``[K, B, T]`` decisions (0/1), forced steps included.
            flat: score the decisions under the uniform alignment prior (``flat_start``) instead
                of p's emit head; p's own log-probabilities of the free decisions are then kept
                in ``final_state["record"]["decision_logp"]`` for the loss that trains its head.
        """
        K, B, T = z.shape
        gates, label_prior, emit_cue = self._split_step_inputs(memory["gate_inputs"].value)  # [B, T, 4H], [B, T, n + 1], [B, T]
        labels, num_labels, num_steps = memory["labels"], memory["num_labels"], memory["num_steps"]
        L = labels.shape[1]
        emitted = (z.cumsum(-1) - z).long()  # labels emitted before step t, [K, B, T]
        steps = torch.arange(T, device=z.device)
        valid = (steps < num_steps.view(1, B, 1)).expand(K, B, T)
        is_forced, _ = forced_decisions(steps, num_steps.view(1, B, 1), emitted, num_labels.view(1, B, 1))
        mask = valid & ~is_forced
        emit = z > 0.5
        # --- model p: the decision cell over all steps ---
        z_prev = F.pad(z, (1, 0))[..., :-1]  # [K, B, T]
        last = labels.unsqueeze(0).expand(K, B, L).gather(2, (emitted - 1).clamp(0, L - 1))  # label emitted last
        label_prev = torch.where(emitted > 0, last, torch.zeros_like(last))
        # the fed-back (label, decision) pair through one table, row 2 * label + z: one lookup and
        # one add over the [K, B, T, 4H] inputs instead of two of each
        feedback_gates = self._feedback_gates()  # [2 (n + 2), 4H]
        feedback = 2 * label_prev + z_prev.long()  # [K, B, T]: row of the table
        if self.config.decision_recurrence:
            inputs = (gates.unsqueeze(0) + F.embedding(feedback, feedback_gates)).flatten(0, 1)  # [K * B, T, 4H]
            h = c = gates.new_zeros(K * B, self.hidden_size)
            hidden = []
            for x in inputs.unbind(1):
                h, c = self._cell(x + self.gate_hidden(h), c)
                hidden.append(h)
            out = torch.stack(hidden, dim=1)  # [K * B, T, H]
        else:  # no memory in the cell: every step at once, each gate read (i, g, o) summed on its own:
            # contiguous gates make the activations several times faster than views of one [.., 4H]
            # tensor, and the unread forget gate gets no zero gradient to concatenate in the backward
            H = self.hidden_size
            step_gates, table = gates.unflatten(-1, (4, H)), feedback_gates.unflatten(-1, (4, H))
            i, g, o = ((step_gates[..., k, :].unsqueeze(0) + F.embedding(feedback, table[:, k])).flatten(0, 1) for k in _READ_GATES)
            out, _ = self._cell_update(i, None, g, o, None)  # [K * B, T, H]
        if self.training and self._dropout_now > 0:
            out = F.dropout(out, self._dropout_now, training=True)
        emit_logit = unfold(self._emit_logit(out, None if emit_cue is None else emit_cue.repeat(K, 1)), K)  # [K, B, T]
        label_logits = self.label_head(out)  # [K * B, T, n + 1]
        if label_prior is not None:
            label_logits = label_logits + label_prior.repeat(K, 1, 1)  # rows k * B + b
        label_logp = unfold(torch.log_softmax(label_logits, dim=-1), K)  # [K, B, T, n + 1]
        label_next = labels.unsqueeze(0).expand(K, B, L).gather(2, emitted.clamp(max=L - 1))
        label_next_logp = label_logp.gather(-1, (label_next - 1).clamp_min(0).unsqueeze(-1)).squeeze(-1)
        zero = torch.zeros_like(emit_logit)

        def head_logp(decisions: torch.Tensor) -> torch.Tensor:  # p's emit head
            return -F.binary_cross_entropy_with_logits(emit_logit, decisions, reduction="none")

        log_p_decision = head_logp(z)  # the bound's decision term, or (flat start) what trains the head
        decision_logp = head_logp  # how the bound scores decisions
        if flat:  # the uniform alignment prior: r labels left (EOS included) in s steps, p(emit) = r / s
            left = (num_labels.view(1, B, 1) - emitted).to(emit_logit.dtype)
            hazard = (left / (num_steps.view(1, B, 1) - steps).clamp_min(1).to(emit_logit.dtype)).clamp(1e-6, 1 - 1e-6)

            def decision_logp(decisions: torch.Tensor) -> torch.Tensor:
                return torch.where(decisions > 0.5, hazard.log(), torch.log1p(-hazard))

        log_p = torch.where(self._p_forced(is_forced, emit), zero, decision_logp(z) if flat else log_p_decision)
        log_p = torch.where(valid, log_p + torch.where(emit, label_next_logp, zero), zero)
        # --- the proposal q: its logits along the paths ---
        q_logit = self.posterior.path_logits(memory["posterior"], emitted)  # [K, B, T]
        log_q = torch.where(mask, -F.binary_cross_entropy_with_logits(q_logit, z, reduction="none"), zero)
        q_prob = torch.sigmoid(q_logit)
        entropy = torch.where(mask, F.binary_cross_entropy_with_logits(q_logit, q_prob, reduction="none"), zero)
        with torch.no_grad():  # each free step's log weight had the other decision been taken (vimco-seq's lookahead)
            other = 1 - z
            other_log_p = decision_logp(other) + torch.where(emit, zero, label_next_logp)
            other_log_q = -F.binary_cross_entropy_with_logits(q_logit, other, reduction="none")
            alternative = Alternative(
                taken=emit, log_weights=torch.where(mask, other_log_p - other_log_q, zero),
                # evaluated only by an estimator that reads them (vimco-seq, values="model")
                values=(lambda: self._branch_values(memory, emitted, flat)) if not self.config.decision_recurrence else None,
                carries_log_q=True,  # log w = log p - log q under the posterior proposal (weight control applies)
            )

        def proposal_state() -> torch.Tensor:  # what the lattice posterior "knew" before each decision
            frames = memory["posterior"]["frame_table"].value  # [B, T, Hq]
            encoded = memory["posterior"]["labels"].value.view(B, L, -1)  # [B, L, Hq]
            label_next_code = encoded.unsqueeze(0).expand(K, -1, -1, -1).gather(2, emitted.clamp(max=L - 1).unsqueeze(-1).expand(-1, -1, -1, encoded.shape[-1]))
            return torch.tanh(frames.unsqueeze(0) + label_next_code).flatten(0, 1).detach()  # [K * B, T, Hq]

        record: dict[str, Any] = {"proposal_state": proposal_state}
        if self.config.forced_emission_weight > 0:  # what the auxiliary loss reads (forward)
            record["forced_emission_logp"] = torch.where(is_forced & emit, log_p_decision, zero)
        if flat:  # what trains p's emit head while the bound does not read it (forward)
            record["decision_logp"] = torch.where(mask, log_p_decision, zero)
        return Trajectory(
            locations=z,
            log_q=log_q,
            log_p=log_p,
            log_weights=log_p - log_q,
            entropy=entropy,
            mask=mask,
            valid=valid,
            final_state={"record": record},
            progress=emitted,
            alternative=alternative,
        )

    def _in_ctc_warmup(self, step: int) -> bool:
        """Whether training step ``step`` is in the CTC warm-up; records the step it ends at."""
        if self.config.ctc_warmup == 0 or self._ctc_warmup_end is not None:
            return False
        if self.budget_spent < self.config.ctc_warmup:
            return True
        self._ctc_warmup_end = step
        return False

    def get_extra_state(self) -> dict[str, Any]:
        return {"ctc_warmup_end": self._ctc_warmup_end}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._ctc_warmup_end = state.get("ctc_warmup_end")

    def _ctc_warmup_terms(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """A step of the CTC warm-up (``ctc_warmup``): the aligner's CTC loss on p's encoder."""
        features, feature_lengths = batch["features"], batch["feature_lengths"]
        labels, num_labels = append_eos(batch["targets"], batch["target_lengths"], self.eos_id)
        log_probs = self.posterior.aligner_log_probs(features, self._encode_frames(features))
        nll = self.posterior.aligner_nll(log_probs, feature_lengths, labels, num_labels).mean()
        terms = {"loss": nll, "aligner_ctc": nll.detach(), "warmup": nll.new_ones(())}
        consistency = self._consistency(batch, log_probs)
        if consistency is not None:
            terms["loss"] = nll + self.config.consistency_weight * consistency
            terms["consistency"] = consistency.detach()
        return terms

    def _consistency(self, batch: dict[str, Any], log_probs: torch.Tensor | None) -> torch.Tensor | None:
        """:func:`hardalign.speech.ctc.frame_consistency` of the CTC head's ``log_probs`` on the
        (noisy) training input against the same head on ``batch["clean_features"]`` (no gradient,
        no dropout); None when off, not training, or the batch has no clean input."""
        if not (self.training and self.config.consistency_weight > 0 and log_probs is not None and "clean_features" in batch):
            return None
        dropout, self._dropout_now = self._dropout_now, 0.0
        try:
            with torch.no_grad():
                clean = batch["clean_features"]
                clean_log_probs = self.posterior.aligner_log_probs(clean, self._encode_frames(clean))
        finally:
            self._dropout_now = dropout
        return frame_consistency(log_probs, clean_log_probs, batch["feature_lengths"])

    @property
    def time_parallel(self) -> bool:
        """Whether training draws from the lattice posterior and scores all steps at once."""
        return self.proposal == "posterior" and self.posterior.kind == "lattice"

    def forward(self, batch: dict[str, Any], *, num_samples: int, step: int = 0) -> LatentOutput:
        """Draw K alignments per utterance from the proposal: the training output.

        Args:
            batch: the speech batch (``features [B, T, F]``, ``feature_lengths [B]``, ``targets
                [B, U]``, ``target_lengths [B]``).
            num_samples: K.
            step: the optimiser step (drives the dropout ramp and the entropy-weight schedule).

        Returns:
            a :class:`hardalign.objective.LatentOutput`: the trajectory (with ``progress``, the
            labels emitted before each step), the baseline network's per-step prediction
            (computed only if the estimator uses it), the loss terms ``entropy_bonus`` (minus the
            scheduled weight times the proposal's entropy per utterance), ``aligner_ctc``
            (weighted) and, with ``consistency_weight`` and clean input in the batch, ``consistency``
            (weighted), and the metrics ``entropy``, ``entropy_weight``, ``emit_rate`` (emissions
            per valid step) and ``free_emit_rate`` (emissions per sampled, unforced step).
            During the CTC warm-up (``ctc_warmup``, training only) instead a dict of terms:
            ``loss`` (the aligner's CTC loss, mean over utterances, not scaled by
            ``aligner_weight``, plus the weighted consistency term if any), ``aligner_ctc`` (the
            CTC loss, detached), ``consistency`` (the unweighted term, detached, if any) and
            ``warmup`` (1).

        Raises:
            ValueError: an utterance has fewer steps than labels + EOS (it cannot be aligned).
        """
        self._dropout_now = self.dropout_at(step) if self.training else 0.0
        if self.training and self._in_ctc_warmup(step):
            return self._ctc_warmup_terms(batch)
        self._check_alignable(batch)
        flat = False
        if self.time_parallel:
            memory = self.encode(batch["features"], batch["feature_lengths"], batch["targets"], batch["target_lengths"])
            flat = self.training and self.budget_spent < self.config.flat_start
            trajectory = self.score_alignments(memory, self._draw_from_lattice(memory, num_samples), flat=flat)
        else:
            trajectory, memory = self._rollout(batch, num_samples)
        entropy = trajectory.entropy.sum(-1).mean()  # per utterance, mean over particles and batch
        warmup_end = self._ctc_warmup_end if self.training and self._ctc_warmup_end is not None else 0
        weight = self.entropy_weight_at(max(0, step - warmup_end))  # q's schedule starts with q
        losses = {"entropy_bonus": -weight * entropy}
        if self.config.forced_emission_weight > 0:
            forced = trajectory.final_state["record"]["forced_emission_logp"]
            forced = forced if torch.is_tensor(forced) else unfold(torch.stack(forced, dim=-1), num_samples)  # [K, B, T]
            losses["forced_emission"] = -self.config.forced_emission_weight * forced.sum(-1).mean()
        if "aligner_nll" in memory:
            losses["aligner_ctc"] = self.aligner_weight * memory["aligner_nll"].value.mean()
        consistency = self._consistency(batch, memory["aligner_log_probs"].value if "aligner_log_probs" in memory else None)
        if consistency is not None:
            losses["consistency"] = self.config.consistency_weight * consistency
        if flat:  # flat start: the bound's gradient for p's emit head, sum_k wtilde^k grad log p(z^k)
            wtilde = torch.softmax(trajectory.log_weights.sum(-1).detach(), dim=0)  # [K, B]
            losses["flat_start_decisions"] = -(wtilde * trajectory.final_state["record"]["decision_logp"].sum(-1)).sum(0).mean()
        valid = trajectory.valid
        metrics = {
            "entropy": entropy.detach(),
            "entropy_weight": entropy.new_tensor(weight).detach(),
            "emit_rate": (trajectory.locations * valid).sum() / valid.sum().clamp_min(1),
            # at the sampled (not forced) steps: what the health report watches (emit_rate itself is
            # the data's labels per step, whatever the model does, since forcing completes every path)
            "free_emit_rate": (trajectory.locations * trajectory.mask).sum() / trajectory.mask.sum().clamp_min(1),
        }
        return LatentOutput(trajectory, baseline=lambda: self.baselines(trajectory, memory), losses=losses, metrics=metrics)


def _default_extra_state(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Checkpoints written before ``ctc_warmup`` existed hold no extra state: no warm-up ran."""
    state_dict.setdefault(f"{prefix}_extra_state", {"ctc_warmup_end": 0})
