"""The training-time posterior q(z | x, y) over emit decisions (non-causal).

DESIGN.md section 4: q sees the whole utterance and the whole label sequence. Here it combines

* a bidirectional LSTM over the frames (once per utterance),
* a bidirectional LSTM over the label sequence (EOS included), read at the *next* label to emit,
* counts of labels and steps left, and the logit of their ratio (the emit rate of a uniform
  alignment) which enters the output logit with coefficient 1 at initialisation, so that an
  untrained q already spreads emissions evenly instead of piling them at the start or the end,
* p's own view of the step, detached: its emit logit, ``log d_t[y_next]`` and ``log d_t[EOS]``
  (q may condition on anything that is a function of x, y and z_{<t}; p's state is one),
* its own step RNN (a tanh RNN cell) fed z_{t-1}.

Everything that does not depend on the decisions is projected once per utterance; the step only
gathers, adds and runs one small recurrent matrix product for all particles.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["Posterior"]


class Posterior(nn.Module):
    """q(z_t | x, y, z_{<t}) as a Bernoulli logit per step.

    Args:
        input_dim: frame feature dimension F.
        num_phones: n (labels ``1..n``, EOS ``n + 1``, 0 padding).
        hidden_size: width of the encoders (each direction: half) and of the step RNN.
    """

    def __init__(self, input_dim: int, num_phones: int, *, hidden_size: int = 128):
        super().__init__()
        half = max(1, hidden_size // 2)
        self.hidden_size = hidden_size
        self.frames = nn.LSTM(input_dim, half, batch_first=True, bidirectional=True)
        self.label_embedding = nn.Embedding(num_phones + 2, hidden_size // 2 or 1, padding_idx=0)
        self.labels = nn.LSTM(self.label_embedding.embedding_dim, half, batch_first=True, bidirectional=True)
        self.frame_proj = nn.Linear(2 * half, hidden_size)
        self.label_proj = nn.Linear(2 * half, hidden_size, bias=False)
        self.recurrent = nn.Linear(hidden_size, hidden_size, bias=False)
        self.decision = nn.Embedding(2, hidden_size)
        self.side = nn.Linear(6, hidden_size, bias=False)  # 3 counts + 3 values of p's view
        self.out = nn.Linear(hidden_size, 1)
        self.direct = nn.Linear(6, 1, bias=False)  # counts and p's view straight into the logit
        with torch.no_grad():
            nn.init.zeros_(self.decision.weight)
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()
            self.direct.weight.zero_()
            self.direct.weight[0, 2] = 1.0  # logit(labels left / steps left)

    def encode(self, features: torch.Tensor, feature_lengths: torch.Tensor, labels: torch.Tensor, num_labels: torch.Tensor) -> dict[str, Any]:
        """Once per utterance: ``frames`` (tuple of T ``[B, Hq]``) and ``labels [B, L, Hq]``."""
        T = features.shape[1]
        packed = nn.utils.rnn.pack_padded_sequence(features, feature_lengths.cpu(), batch_first=True, enforce_sorted=False)
        frames, _ = self.frames(packed)
        frames, _ = nn.utils.rnn.pad_packed_sequence(frames, batch_first=True, total_length=T)
        frames = self.frame_proj(frames)  # [B, T, Hq]
        L = labels.shape[1]
        packed = nn.utils.rnn.pack_padded_sequence(self.label_embedding(labels), num_labels.cpu(), batch_first=True, enforce_sorted=False)
        encoded, _ = self.labels(packed)
        encoded, _ = nn.utils.rnn.pad_packed_sequence(encoded, batch_first=True, total_length=L)
        return {"frames": frames.unbind(1), "labels": self.label_proj(encoded)}

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
        labels = memory["labels"]
        index = emitted.clamp(max=labels.shape[1] - 1)
        label_next = labels[torch.arange(labels.shape[0], device=labels.device), index]  # [N, Hq]
        side = torch.cat([counts, p_view.clamp(-30, 30)], dim=-1)
        hidden = torch.tanh(frames + label_next + self.recurrent(hidden) + self.decision(z_prev.long()) + self.side(side))
        logit = self.out(hidden).squeeze(-1) + self.direct(side).squeeze(-1)
        return hidden, logit
