"""The unidirectional CTC baseline, with the same encoder size as the hard-alignment model.

A stacked unidirectional LSTM (``num_layers x hidden_size``, the size of model p) over the stacked
frames, a linear layer to blank + phones, and :func:`torch.nn.functional.ctc_loss`. It is the
reference row of the comparison table: the literature compares the online hard-alignment model
with unidirectional CTC (TIMIT: 20.0% vs 19.6% PER). Decoding is greedy (best path: argmax per
step, merge repeats, drop blanks); the step of a phone's first frame is its emission time.

The model accepts the trainer's call signature ``model(batch, *, estimator, num_samples, step)``
and ignores the estimator: CTC marginalises the alignment exactly, it has no discrete latent to
estimate a gradient for.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hardalign.speech.decode import Hypothesis

__all__ = ["CTCRecognizer", "frame_consistency"]


def frame_consistency(log_probs: torch.Tensor, clean_log_probs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Noisy-clean consistency: ``KL(clean || noisy)`` of the per-frame label distributions, summed
    over valid frames and averaged over utterances (nats per utterance, the CTC loss's scale).

    The clean utterance's distribution is the target (pass it detached: computed without gradient
    and without dropout), so the loss moves only what the model reads from the noisy input toward
    what it reads from the clean one (Liang et al. 2018; the teacher-student form of Li et al.
    2014, with the model as its own teacher).

    Args:
        log_probs: ``[B, T, C]`` log-probabilities from the noisy input (the student).
        clean_log_probs: ``[B, T, C]`` from the same utterances clean (the target).
        lengths: ``[B]`` long, valid frames per utterance.

    Example:
        >>> p = torch.log_softmax(torch.randn(2, 4, 3), -1)
        >>> frame_consistency(p, p, torch.tensor([4, 2])).item()
        0.0
    """
    if log_probs.shape != clean_log_probs.shape or log_probs.dim() != 3:
        raise ValueError(f"log_probs and clean_log_probs: expected the same [B, T, C], got {list(log_probs.shape)} and {list(clean_log_probs.shape)}")
    valid = torch.arange(log_probs.shape[1], device=log_probs.device) < lengths.unsqueeze(1)  # [B, T]
    kl = (clean_log_probs.exp() * (clean_log_probs - log_probs)).sum(-1)  # [B, T]
    return (kl * valid).sum() / log_probs.shape[0]


class CTCRecognizer(nn.Module):
    """Unidirectional LSTM + CTC. Label ids: 0 = blank (the padding id), phones ``1..n``.

    Args:
        input_dim: F.
        num_phones: n.
        hidden_size: LSTM width.
        num_layers: LSTM depth.
        dropout: dropout between layers and before the output layer, ramped from 0 over
            ``dropout_ramp_steps``.
        consistency_weight: weight of :func:`frame_consistency` between the noisy training input
            and the same utterance clean (``clean_features`` in the batch); 0: off.
    """

    #: no discrete latent: the trainer's estimator is not used (reports say so instead of naming it)
    uses_estimator = False

    def __init__(self, input_dim: int, num_phones: int, *, hidden_size: int = 256, num_layers: int = 2, dropout: float = 0.0, dropout_ramp_steps: int = 0,
                 consistency_weight: float = 0.0):
        super().__init__()
        if num_phones < 1 or num_layers < 1:
            raise ValueError(f"num_phones and num_layers must be >= 1, got {num_phones}, {num_layers}")
        self.input_dim = input_dim
        self.num_phones = num_phones
        self.dropout = dropout
        self.dropout_ramp_steps = dropout_ramp_steps
        if consistency_weight < 0:
            raise ValueError(f"consistency_weight={consistency_weight}: must be >= 0 (0: off)")
        self.consistency_weight = consistency_weight
        self.layers = nn.ModuleList(nn.LSTM(input_dim if i == 0 else hidden_size, hidden_size, batch_first=True) for i in range(num_layers))
        self.output = nn.Linear(hidden_size, num_phones + 1)
        self._dropout_now = 0.0

    def dropout_at(self, step: int) -> float:
        if self.dropout_ramp_steps <= 0:
            return self.dropout
        return self.dropout * min(1.0, step / self.dropout_ramp_steps)

    def log_probs(self, features: torch.Tensor, feature_lengths: torch.Tensor) -> torch.Tensor:
        """``[B, T, n + 1]`` per-step log-probabilities over blank and phones."""
        if features.dim() != 3 or features.shape[-1] != self.input_dim:
            raise ValueError(f"features: expected [B, T, {self.input_dim}], got {list(features.shape)}")
        x = features
        for layer in self.layers:
            # unidirectional: end padding never reaches valid steps, so no packing (faster on CPU)
            x, _ = layer(x)
            if self.training and self._dropout_now > 0:
                x = F.dropout(x, self._dropout_now, training=True)
        return torch.log_softmax(self.output(x), dim=-1)

    def forward(self, batch: dict[str, Any], *, estimator: nn.Module | None = None, num_samples: int = 1, step: int = 0) -> dict[str, torch.Tensor]:
        """CTC loss (mean over utterances of the negative log-likelihood); ``objective`` = its negative."""
        self._dropout_now = self.dropout_at(step) if self.training else 0.0
        log_probs = self.log_probs(batch["features"], batch["feature_lengths"])
        nll = F.ctc_loss(
            log_probs.transpose(0, 1),  # [T, B, C]
            batch["targets"],
            batch["feature_lengths"],
            batch["target_lengths"],
            blank=0,
            reduction="none",
            zero_infinity=True,
        )  # [B]
        loss = nll.mean()
        terms = {"objective": -loss.detach()}
        if self.training and self.consistency_weight > 0 and "clean_features" in batch:
            dropout, self._dropout_now = self._dropout_now, 0.0
            try:
                with torch.no_grad():
                    clean = self.log_probs(batch["clean_features"], batch["feature_lengths"])
            finally:
                self._dropout_now = dropout
            consistency = frame_consistency(log_probs, clean, batch["feature_lengths"])
            loss = loss + self.consistency_weight * consistency
            terms["consistency"] = consistency.detach()
        return {"loss": loss, **terms}

    @torch.no_grad()
    def decode(self, features: torch.Tensor, feature_lengths: torch.Tensor) -> list[Hypothesis]:
        """Greedy best-path decoding; a phone's step is the first step of its run."""
        best = self.log_probs(features, feature_lengths).argmax(-1)  # [B, T]
        T = best.shape[1]
        valid = torch.arange(T, device=best.device).unsqueeze(0) < feature_lengths.unsqueeze(1)
        previous = F.pad(best, (1, 0), value=0)[:, :-1]
        starts = (best != 0) & (best != previous) & valid  # first step of a non-blank run
        best, starts = best.cpu(), starts.cpu()
        out = []
        for b in range(best.shape[0]):
            steps = starts[b].nonzero().flatten().tolist()
            out.append(Hypothesis(labels=best[b, steps].tolist(), steps=steps, ended=True))
        return out
