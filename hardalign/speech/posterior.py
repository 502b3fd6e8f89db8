"""The training-time posterior q(z | x, y) over emit decisions (non-causal).

docs/speech.md: q sees the whole utterance and the whole label sequence. Here it combines

* a bidirectional LSTM over the frames (once per utterance),
* a bidirectional LSTM over the label sequence (EOS included), read at the *next* label to emit,
* counts of labels and steps left, and the logit of their ratio (the emit rate of a uniform
  alignment) which enters the output logit with coefficient 1 at initialisation, so that an
  untrained q already spreads emissions evenly instead of piling them at the start or the end,
* p's own view of the step, detached: its emit logit, ``log d_t[y_next]`` and ``log d_t[EOS]``
  relative to a uniform softmax (q may condition on anything that is a function of x, y and
  z_{<t}; p's state is one); ``log d_t[y_next]`` enters the logit with coefficient ``coupling``
  at initialisation, so that q emits where p expects the next label (a soft form of the
  hard-EM alignment step), while still free to learn otherwise,
* its own step RNN (a tanh RNN cell) fed z_{t-1},
* an *aligner* (:mod:`hardalign.speech.aligner`): a small unidirectional CTC model over the
  frames, trained by its own CTC loss on the targets (an auxiliary loss on q's parameters only;
  q is used only in training, so this changes which proposal is used, never what p optimises).
  The CTC alignment posterior gives, for the next label and step t, the probability that the
  label's CTC run starts now given that it has not started yet; its logit enters q's logit with
  coefficient 1 at initialisation. A unidirectional CTC model spikes once it has heard a phone,
  which is when an online recogniser can emit it, so q proposes acoustically grounded
  alignments long before the estimator's score-function signal alone would find them.

Everything that does not depend on the decisions is projected once per utterance; the step only
gathers, adds and runs one small recurrent matrix product for all particles.

Two kinds (``kind``):

* ``"recurrent"``: all of the above; q at step t depends on ``z_{<t}`` through its step RNN and
  p's view, so sampling from it is a recurrent pass over the particles;
* ``"lattice"``: q's emit logit depends on ``z_{<t}`` only through n, the labels emitted so far:
  ``logit(t, n) = gain * <frames_t, labels_n> / sqrt(Hq) + w . [counts(t, n), aligner(t, n)]``, a
  ``[B, T, L]`` table computed in parallel once per utterance (as a transducer's joint network
  is). Drawing K alignments is then a loop of cheap gathers with no network in it, and log q of
  given alignments is one gather (:meth:`Posterior.path_logits`), which is what lets the
  hard-alignment model train time-parallel (:meth:`HardAlignmentRecognizer.forward`).
"""

from __future__ import annotations

from typing import Any

import math

import torch
import torch.nn.functional as F
from torch import nn

from hardalign.speech.aligner import emission_hazard, label_start_posteriors

__all__ = ["KINDS", "LOOKAHEADS", "Posterior", "count_features", "reverse_within_length"]

KINDS = ("recurrent", "lattice")
LOOKAHEADS = ("lstm", "conv")


def count_features(step, num_steps: torch.Tensor, emitted: torch.Tensor, num_labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[..., 3]``: log of labels left, log of steps left, and the logit of their ratio (the uniform emit rate).

    The arguments broadcast: ``step`` is an int or a tensor of step indices, the others tensors.

    Example:
        >>> count_features(0, torch.tensor([4]), torch.tensor([0]), torch.tensor([2]), torch.float32)[0, 2].item()
        0.0
    """
    labels_left = (num_labels - emitted).clamp_min(0).to(dtype)
    steps_left = (num_steps - step).clamp_min(1).to(dtype)
    rate = (labels_left / steps_left).clamp(1e-3, 1 - 1e-3)
    return torch.stack(torch.broadcast_tensors(torch.log1p(labels_left), torch.log1p(steps_left), torch.logit(rate)), dim=-1)


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of ``x`` ``[B, T, D]`` within its own length (padding stays at the end).

    Example:
        >>> reverse_within_length(torch.tensor([[1, 2, 3], [4, 5, 0]]).unsqueeze(-1), torch.tensor([3, 2]))[..., 0].tolist()
        [[3, 2, 1], [5, 4, 0]]
    """
    T = x.shape[1]
    steps = torch.arange(T, device=x.device).unsqueeze(0)  # [1, T]
    index = torch.where(steps < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - steps, steps)  # [B, T]
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class _Bidirectional(nn.Module):
    """A bidirectional LSTM over padded sequences without packing: the backward direction runs a
    unidirectional LSTM over each sequence reversed within its length (on CPU the packed LSTM's
    backward pass is several times slower)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.forward_lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.backward_lstm = nn.LSTM(input_size, hidden_size, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        ahead, _ = self.forward_lstm(x)
        behind, _ = self.backward_lstm(reverse_within_length(x, lengths))
        return torch.cat([ahead, reverse_within_length(behind, lengths)], dim=-1)  # [B, T, 2 * hidden]


class _Unfolded:
    """Holds a tensor that :func:`hardalign.sampling.fold_tree` must not copy K times (a non-tensor leaf)."""

    def __init__(self, value: torch.Tensor):
        self.value = value


class Posterior(nn.Module):
    """q(z_t | x, y, z_{<t}) as a Bernoulli logit per step.

    Args:
        input_dim: frame feature dimension F.
        num_phones: n (labels ``1..n``, EOS ``n + 1``, 0 padding).
        hidden_size: width of the encoders (each direction: half) and of the step RNN.
        coupling: initial coefficient of p's relative ``log d_t[y_next]`` in the logit.
        aligner: include the CTC aligner (:mod:`hardalign.speech.aligner`); its emission hazard
            enters the logit with coefficient 1 at initialisation (otherwise the uniform rate does).
        kind: ``"recurrent"`` or ``"lattice"`` (see the module docstring); ``coupling`` applies
            to the recurrent kind only (the lattice does not read p).
        shared_width: 0: q encodes the frames itself (a bidirectional LSTM, and an LSTM under
            the aligner's CTC head). > 0: q reads the output of p's encoder (this width) instead:
            its frame encoding is that output (detached) with a backward LSTM over it, and the
            aligner is a linear CTC head on it, *not* detached, so the aligner's CTC loss is also
            an auxiliary loss on p's encoder (as in hybrid CTC/attention training). Much less
            computation; see docs/speech.md.
        lookahead: with ``shared_width``, how q sees the frames ahead of step t (p's encoder
            covers those behind): ``"lstm"``, a backward LSTM over the whole utterance, or
            ``"conv"``, a row convolution (Wang et al. 2016, DeepSpeech 2): a projection to
            ``hidden_size // 2`` channels, then each channel a learned weighted sum of steps
            ``t .. t + lookahead_steps - 1``, all steps at once (no recurrence).
        lookahead_steps: the window of the ``"conv"`` lookahead.
    """

    def __init__(
        self,
        input_dim: int,
        num_phones: int,
        *,
        hidden_size: int = 128,
        coupling: float = 0.0,
        aligner: bool = True,
        kind: str = "recurrent",
        shared_width: int = 0,
        lookahead: str = "lstm",
        lookahead_steps: int = 10,
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"posterior kind must be one of {KINDS}, got {kind!r}")
        if lookahead not in LOOKAHEADS:
            raise ValueError(f"posterior lookahead must be one of {LOOKAHEADS}, got {lookahead!r}")
        if lookahead_steps < 1:
            raise ValueError(f"posterior lookahead_steps must be >= 1, got {lookahead_steps}")
        self.kind = kind
        half = max(1, hidden_size // 2)
        self.hidden_size = hidden_size
        self.shared_width = shared_width
        self.lookahead = lookahead if shared_width else "lstm"
        if shared_width and lookahead == "lstm":
            self.frames_behind = nn.LSTM(shared_width, half, batch_first=True)  # the forward direction is p's encoder
            frame_width = shared_width + half
        elif shared_width:  # row convolution: one learned filter per channel over the next steps
            self.lookahead_proj = nn.Linear(shared_width, half)
            self.lookahead_conv = nn.Conv1d(half, half, lookahead_steps, groups=half)
            frame_width = shared_width + half
        else:
            self.frames = _Bidirectional(input_dim, half)
            frame_width = 2 * half
        self.label_embedding = nn.Embedding(num_phones + 2, hidden_size // 2 or 1, padding_idx=0)
        self.labels = _Bidirectional(self.label_embedding.embedding_dim, half)
        self.frame_proj = nn.Linear(frame_width, hidden_size)
        self.label_proj = nn.Linear(2 * half, hidden_size, bias=False)
        if kind == "recurrent":
            self.recurrent = nn.Linear(hidden_size, hidden_size, bias=False)
            self.decision = nn.Embedding(2, hidden_size)
            self.side = nn.Linear(7, hidden_size, bias=False)  # 3 counts + 3 values of p's view + aligner
            self.out = nn.Linear(hidden_size, 1)
            self.direct = nn.Linear(7, 1, bias=False)  # the same features straight into the logit
        else:
            self.gain = nn.Parameter(torch.tensor(0.1))  # of the frame-label score (small at first)
            self.direct = nn.Linear(4, 1, bias=False)  # 3 counts + the aligner's hazard logit
        self.use_aligner = aligner
        self.eos_id = num_phones + 1
        if aligner and shared_width:
            self.aligner_out = nn.Linear(shared_width, num_phones + 1)  # CTC head on p's encoder
        elif aligner:
            self.aligner = nn.LSTM(input_dim, hidden_size, batch_first=True)  # unidirectional CTC inside q
            self.aligner_out = nn.Linear(hidden_size, num_phones + 1)  # blank + phones
        with torch.no_grad():
            self.direct.weight.zero_()
            if kind == "lattice":
                self.direct.weight[0, 3 if aligner else 2] = 1.0
                return
            nn.init.zeros_(self.decision.weight)
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()
            if aligner:
                self.direct.weight[0, 6] = 1.0  # logit of the aligner's emission hazard
            else:
                self.direct.weight[0, 2] = 1.0  # logit(labels left / steps left): a uniform alignment
            self.direct.weight[0, 4] = coupling  # p's log d_t[y_next] + log(classes)

    def aligner_log_probs(self, features: torch.Tensor, shared: torch.Tensor | None = None) -> torch.Tensor:
        """The aligner's CTC log-probabilities ``[B, T, blank + n]``: its head on p's encoder output
        ``shared`` (with ``shared_width``) or on its own LSTM over ``features``."""
        hidden = shared if self.shared_width else self.aligner(features)[0]
        return torch.log_softmax(self.aligner_out(hidden), dim=-1)

    def _aligner_targets(self, labels: torch.Tensor, num_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``labels [B, L]`` ending with EOS -> CTC targets ``[B, L - 1]`` (EOS dropped) and their lengths."""
        return labels.masked_fill(labels == self.eos_id, 0)[:, : labels.shape[1] - 1], num_labels - 1

    def aligner_nll(self, log_probs: torch.Tensor, feature_lengths: torch.Tensor, labels: torch.Tensor, num_labels: torch.Tensor) -> torch.Tensor:
        """The aligner's CTC loss per utterance ``[B]`` (nats) from its ``log_probs [B, T, blank + n]``
        and ``labels [B, L]`` ending with EOS (EOS is not a CTC target)."""
        targets, target_lengths = self._aligner_targets(labels, num_labels)
        return F.ctc_loss(log_probs.transpose(0, 1), targets, feature_lengths, target_lengths, blank=0, reduction="none", zero_infinity=True)

    def encode(
        self,
        features: torch.Tensor,
        feature_lengths: torch.Tensor,
        labels: torch.Tensor,
        num_labels: torch.Tensor,
        shared: torch.Tensor | None = None,
        aligner_log_probs: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Once per utterance: ``frames`` (tuple of T ``[B, Hq]``), the label encodings and, with
        the aligner, its CTC loss per utterance (``aligner_nll [B]``) and the emission-hazard logits.

        The label encodings ``[B * L, Hq]`` are kept unfolded (one copy, not K): a step looks up
        row ``b * L + emitted`` for particle row ``k * B + b``. ``labels [B, L]`` end with EOS.
        ``shared``: p's encoder output ``[B, T, shared_width]`` (required when ``shared_width``).
        ``aligner_log_probs``: the CTC head's log-probabilities ``[B, T, n + 1]`` on ``shared``,
        when the caller has computed them already (they are computed here otherwise).
        """
        if self.shared_width:
            if shared is None or shared.shape[-1] != self.shared_width:
                raise ValueError(f"posterior: expected p's encoder output [B, T, {self.shared_width}] as shared=")
            ahead = shared.detach()  # q's score-function gradient must not reach p's encoder
            frames = self.frame_proj(torch.cat([ahead, self._frames_ahead(ahead, feature_lengths)], dim=-1))  # [B, T, Hq]
        else:
            frames = self.frame_proj(self.frames(features, feature_lengths))  # [B, T, Hq]
        B, L = labels.shape
        T = features.shape[1]
        encoded = self.label_proj(self.labels(self.label_embedding(labels), num_labels))  # [B, L, Hq]
        memory = {
            "frames": frames.unbind(1),  # per step, for the step-by-step rollout
            "frame_table": _Unfolded(frames),  # [B, T, Hq], for the time-parallel path
            "labels": _Unfolded(encoded.reshape(B * L, -1)),
            "num_labels_max": L,
            "batch": B,
        }
        if self.use_aligner:
            targets, target_lengths = self._aligner_targets(labels, num_labels)
            if aligner_log_probs is None:
                aligner_log_probs = self.aligner_log_probs(features, shared)
            log_probs = aligner_log_probs  # [B, T, n + 1]
            memory["aligner_nll"] = _Unfolded(self.aligner_nll(log_probs, feature_lengths, labels, num_labels))
            start = label_start_posteriors(log_probs.detach(), feature_lengths, targets, target_lengths)  # [B, T, L - 1]
            hazard = emission_hazard(start)
            # EOS (and padding slots): 0.5 per step, so that EOS follows the last phone closely
            hazard = F.pad(hazard, (0, 1), value=0.5)  # [B, T, L]
            slot = torch.arange(L, device=features.device).view(1, 1, L)
            hazard = torch.where(slot >= target_lengths.view(B, 1, 1), torch.full_like(hazard, 0.5), hazard)
            hazard = torch.logit(hazard)  # [B, T, L]
            memory["hazard"] = hazard.unbind(1)  # T x [B, L]
        if self.kind == "lattice":
            memory["table"] = _Unfolded(self._table(frames, encoded, feature_lengths, num_labels, hazard if self.use_aligner else None))
        return memory

    def _frames_ahead(self, encoded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """What q knows of the steps after t, from p's encoder output ``[B, T, D]``: ``[B, T, Hq / 2]``."""
        if self.lookahead == "lstm":
            behind, _ = self.frames_behind(reverse_within_length(encoded, lengths))
            return reverse_within_length(behind, lengths)
        steps = torch.arange(encoded.shape[1], device=encoded.device).view(1, -1, 1)
        # padding is zeroed so that the window of the last valid steps sees nothing beyond the end
        projected = torch.tanh(self.lookahead_proj(encoded)).masked_fill(steps >= lengths.view(-1, 1, 1), 0.0)
        window = self.lookahead_conv.kernel_size[0]
        return torch.tanh(self.lookahead_conv(F.pad(projected.transpose(1, 2), (0, window - 1)))).transpose(1, 2)

    def _table(self, frames, labels, num_steps, num_labels, hazard) -> torch.Tensor:
        """The lattice kind's emit logits ``[B, T, L]`` for every (step t, labels emitted n)."""
        B, T, _ = frames.shape
        L = labels.shape[1]
        score = torch.bmm(frames, labels.transpose(1, 2)) / math.sqrt(self.hidden_size)  # [B, T, L]
        steps = torch.arange(T, device=frames.device).view(1, T, 1)
        emitted = torch.arange(L, device=frames.device).view(1, 1, L)
        counts = count_features(steps, num_steps.view(B, 1, 1), emitted, num_labels.view(B, 1, 1), frames.dtype)  # [B, T, L, 3]
        aligner = hazard if hazard is not None else counts[..., 2]
        features = torch.cat([counts, aligner.unsqueeze(-1)], dim=-1)  # [B, T, L, 4]
        return self.gain * score + self.direct(features).squeeze(-1)

    def path_logits(self, memory: dict[str, Any], emitted: torch.Tensor) -> torch.Tensor:
        """The lattice kind's emit logits along given paths: ``emitted [K, B, T]`` (labels emitted
        before each step) -> ``[K, B, T]``, differentiable (one gather from the unfolded table)."""
        table = memory["table"].value  # [B, T, L]
        L = table.shape[-1]
        index = emitted.clamp(max=L - 1)  # [K, B, T]
        return table.unsqueeze(0).expand(index.shape[0], -1, -1, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)

    def initial_state(self, memory: dict[str, Any], num_rows: int) -> torch.Tensor:
        first = memory["frames"][0]
        return first.new_zeros(num_rows, self.hidden_size)

    def step(
        self,
        memory: dict[str, Any],
        hidden: torch.Tensor,
        t: int,
        emitted: torch.Tensor,
        z_prev: torch.Tensor,
        counts: torch.Tensor,
        p_view: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step for all ``N`` rows: returns ``(hidden [N, Hq], logit [N])``.

        Args:
            memory: folded output of :meth:`encode` (``N`` rows).
            hidden: ``[N, Hq]`` step-RNN state.
            t: step index.
            emitted: ``[N]`` long, labels emitted before step t (index of the next label).
            z_prev: ``[N]`` previous decision.
            counts: ``[N, 3]`` count features (the last is the logit of the uniform emit rate).
            p_view: ``[N, 3]`` detached features of model p at this step.
        """
        frames = memory["frames"][min(t, len(memory["frames"]) - 1)]
        L, B = memory["num_labels_max"], memory["batch"]
        example = torch.arange(emitted.shape[0], device=emitted.device) % B  # row k * B + b -> b
        rows = example * L + emitted.clamp(max=L - 1)
        label_next = F.embedding(rows, memory["labels"].value)  # [N, Hq]; backward is an index_add
        if self.kind == "lattice":
            table = memory["table"].value  # [B, T, L]
            T = table.shape[1]
            logit = table.reshape(-1)[(example * T + min(t, T - 1)) * L + emitted.clamp(max=L - 1)]
            return torch.tanh(frames + label_next), logit  # the state the baseline network reads
        if "hazard" in memory:
            hazard = memory["hazard"][min(t, len(memory["hazard"]) - 1)]  # [N, L]
            aligner = hazard.gather(1, emitted.clamp(max=L - 1).unsqueeze(1))  # [N, 1]
        else:
            aligner = counts[:, 2:3]
        side = torch.cat([counts, p_view.clamp(-30, 30), aligner], dim=-1)
        hidden = torch.tanh(frames + label_next + self.recurrent(hidden) + self.decision(z_prev.long()) + self.side(side))
        logit = self.out(hidden).squeeze(-1) + self.direct(side).squeeze(-1)
        return hidden, logit
