"""Online decoding of the hard-alignment recogniser: greedy and beam search.

Both decoders run model p alone (no posterior, no targets) one step at a time, as it would run on
a live stream: at step t the model has read steps ``0..t`` only, decides whether to emit, and if
it does, emits a phone which it feeds back. Decoding of an utterance stops emitting once EOS is
emitted. Each emitted phone carries its step index, its *emission time*.

* Greedy: emit when ``b_t > 0.5``, the phone ``argmax d_t``.
* Greedy on the median emission time (``rule="median"``, the task's ``decoder: median``): emit at
  the first step by which the next emission has probability at least 0.5, i.e. where the
  survival ``prod_s (1 - b_s)`` over the steps since the last emission falls to 0.5 or below.
  Where p spreads an emission over several steps (``b_t`` below 0.5 at each, as after a flat
  start, docs/speech.md), step-wise greedy never emits; the median still does once. Where ``b_t``
  is sharp the two agree.
* Beam search over decisions and labels: each hypothesis extends by "skip" (score
  ``log(1 - b_t)``) or "emit c" (``log b_t + log d_t[c]``); the ``beam_size`` best of all
  extensions survive. Utterances and hypotheses are batched (``B * W`` rows); the only host
  transfer is at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hardalign.sampling import fold

__all__ = ["Hypothesis", "greedy_decode", "beam_search"]


@dataclass
class Hypothesis:
    """One decoded utterance: emitted phone ids (EOS excluded) and the step of each emission."""

    labels: list[int]
    steps: list[int]
    score: float = 0.0
    ended: bool = False  # EOS was emitted
    emit_probs: list[float] | None = None  # b_t along the decoded path (greedy only), one per valid step


def _check(model, features: torch.Tensor, feature_lengths: torch.Tensor) -> None:
    if features.dim() != 3:
        raise ValueError(f"features: expected [B, T, F], got {list(features.shape)}")
    if feature_lengths.shape != features.shape[:1]:
        raise ValueError(f"feature_lengths: expected [{features.shape[0]}], got {list(feature_lengths.shape)}")


@torch.no_grad()
def greedy_decode(model, features: torch.Tensor, feature_lengths: torch.Tensor, *, rule: str = "step") -> list[Hypothesis]:
    """Greedy online decoding.

    Args:
        model: a :class:`~hardalign.speech.model.HardAlignmentRecognizer` (put it in eval mode).
        features: ``[B, T, F]``.
        feature_lengths: ``[B]`` long.
        rule: ``"step"`` (emit where ``b_t > 0.5``) or ``"median"`` (emit where the probability
            that the next emission has happened by step t reaches 0.5; module docstring).

    Returns:
        one :class:`Hypothesis` per utterance.
    """
    _check(model, features, feature_lengths)
    if rule not in ("step", "median"):
        raise ValueError(f"rule={rule!r}: must be 'step' or 'median'")
    B, T, _ = features.shape
    memory = model.encode(features, feature_lengths)
    gates = memory["gates"]
    device = features.device
    h = features.new_zeros(B, model.hidden_size)
    c = torch.zeros_like(h)
    z = features.new_zeros(B)
    label_prev = torch.zeros(B, dtype=torch.long, device=device)
    ended = torch.zeros(B, dtype=torch.bool, device=device)
    emitted = torch.zeros(B, T, dtype=torch.long, device=device)  # label emitted at each step (0: none)
    probs = features.new_zeros(B, T)
    log_survival = features.new_zeros(B)  # log prod (1 - b_s) over the steps since the last emission
    half = -torch.log(features.new_tensor(2.0))
    h, c, emit_logit, label_logp = model._p_step(gates[0], h, c, z, label_prev)
    for t in range(T):
        label = label_logp.argmax(-1) + 1  # class c-1 is label c
        probs[:, t] = torch.sigmoid(emit_logit)
        if rule == "median":
            log_survival = log_survival - F.softplus(emit_logit)  # log(1 - b_t) = -softplus(logit)
            decide = log_survival <= half
        else:
            decide = emit_logit > 0
        emit = decide & ~ended & (feature_lengths > t)
        if rule == "median":  # the next emission's clock restarts
            log_survival = torch.where(emit, torch.zeros_like(log_survival), log_survival)
        emitted[:, t] = torch.where(emit, label, torch.zeros_like(label))
        ended = ended | (emit & (label == model.eos_id))
        label_prev = torch.where(emit, label, label_prev)
        z = emit.to(features.dtype)
        if t + 1 < T:
            h, c, emit_logit, label_logp = model._p_step(gates[t + 1], h, c, z, label_prev)
    hyps = _collect(emitted, model.eos_id, ended)
    probs, lengths = probs.cpu(), feature_lengths.cpu()
    for b, hyp in enumerate(hyps):
        hyp.emit_probs = probs[b, : int(lengths[b])].tolist()
    return hyps


def _collect(emitted: torch.Tensor, eos_id: int, ended: torch.Tensor, scores: torch.Tensor | None = None) -> list[Hypothesis]:
    emitted = emitted.cpu()
    out = []
    for b in range(emitted.shape[0]):
        steps = emitted[b].nonzero().flatten().tolist()
        labels = emitted[b, steps].tolist()
        if labels and labels[-1] == eos_id:
            labels, steps = labels[:-1], steps[:-1]
        score = float(scores[b]) if scores is not None else 0.0
        out.append(Hypothesis(labels=labels, steps=steps, score=score, ended=bool(ended[b])))
    return out


@torch.no_grad()
def beam_search(model, features: torch.Tensor, feature_lengths: torch.Tensor, *, beam_size: int = 4) -> list[Hypothesis]:
    """Beam search over emit decisions and labels, all utterances and hypotheses batched.

    Args:
        model: a :class:`~hardalign.speech.model.HardAlignmentRecognizer` in eval mode.
        features: ``[B, T, F]``.
        feature_lengths: ``[B]`` long.
        beam_size: W >= 1 hypotheses kept per utterance.

    Returns:
        the best :class:`Hypothesis` per utterance (``score`` = its log-probability
        ``sum_t log p(z_t) + z_t log d_t[label_t]``).
    """
    _check(model, features, feature_lengths)
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    B, T, _ = features.shape
    W = beam_size
    device, dtype = features.device, features.dtype
    memory = model.encode(features, feature_lengths)
    gates = memory["gates"]
    lengths = fold(feature_lengths, W)  # [W * B], row w * B + b
    h = features.new_zeros(W * B, model.hidden_size)
    c = torch.zeros_like(h)
    z = features.new_zeros(W * B)
    label_prev = torch.zeros(W * B, dtype=torch.long, device=device)
    ended = torch.zeros(W * B, dtype=torch.bool, device=device)
    history = torch.zeros(W * B, T, dtype=torch.long, device=device)
    # only hypothesis 0 is live at the start: the others begin at -inf
    scores = torch.full((W, B), float("-inf"), dtype=dtype, device=device)
    scores[0] = 0.0
    scores = scores.reshape(W * B)
    h, c, emit_logit, label_logp = model._p_step(fold(gates[0], W), h, c, z, label_prev)
    C = label_logp.shape[-1]
    batch_index = torch.arange(B, device=device)
    for t in range(T):
        frozen = ended | (lengths <= t)  # forced skip at cost 0
        skip = torch.where(frozen, torch.zeros_like(emit_logit), F.logsigmoid(-emit_logit))
        emit = F.logsigmoid(emit_logit).unsqueeze(-1) + label_logp  # [W * B, C]
        emit = emit.masked_fill(frozen.unsqueeze(-1), float("-inf"))
        candidates = scores.unsqueeze(-1) + torch.cat([skip.unsqueeze(-1), emit], dim=-1)  # [W * B, 1 + C]
        # [W * B, 1 + C] -> [W, B, 1 + C] -> [B, W * (1 + C)]
        candidates = candidates.reshape(W, B, 1 + C).permute(1, 0, 2).reshape(B, W * (1 + C))
        top_scores, top_index = candidates.topk(W, dim=-1)  # [B, W]
        parent = top_index // (1 + C)  # [B, W] which hypothesis
        choice = top_index % (1 + C)  # 0: skip, c >= 1: emit label c
        rows = (parent * B + batch_index.unsqueeze(1)).t().reshape(W * B)  # folded parent rows, [W * B]
        choice = choice.t().reshape(W * B)
        scores = top_scores.t().reshape(W * B)
        h, c = h[rows], c[rows]
        history = history[rows]
        label_prev = label_prev[rows]
        ended = ended[rows]
        did_emit = choice > 0
        history[:, t] = choice
        label_prev = torch.where(did_emit, choice, label_prev)
        ended = ended | (did_emit & (choice == model.eos_id))
        z = did_emit.to(dtype)
        if t + 1 < T:
            h, c, emit_logit, label_logp = model._p_step(fold(gates[t + 1], W), h, c, z, label_prev)
    best = scores.reshape(W, B).argmax(0)  # [B]
    rows = best * B + batch_index
    return _collect(history[rows], model.eos_id, ended[rows], scores[rows])
