"""A tiny generated phone-recognition problem at the feature level (no audio), for fast tests.

Each phone id has a fixed random prototype vector; an utterance is a random phone sequence, each
phone held for 2-4 steps, plus Gaussian noise. It is learnable in a few dozen steps.
"""

from __future__ import annotations

import torch


def toy_utterances(num: int, *, num_phones: int = 8, dim: int = 12, seed: int = 0, min_len: int = 3, max_len: int = 7, noise: float = 0.5):
    """``num`` pairs ``(features [T, dim], phone ids [U])`` with ids in ``1..num_phones``."""
    prototypes = torch.randn(num_phones + 1, dim, generator=torch.Generator().manual_seed(1234)) * 2
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        phones = torch.randint(1, num_phones + 1, (length,), generator=g)
        durations = torch.randint(2, 5, (length,), generator=g)
        x = prototypes[phones.repeat_interleave(durations)]
        out.append((x + noise * torch.randn(x.shape, generator=g), phones))
    return out


def toy_batch(items) -> dict:
    """Pad ``(features, phones)`` pairs into the speech batch contract."""
    B = len(items)
    T = max(x.shape[0] for x, _ in items)
    U = max(len(y) for _, y in items)
    features = torch.zeros(B, T, items[0][0].shape[1])
    targets = torch.zeros(B, U, dtype=torch.long)
    for i, (x, y) in enumerate(items):
        features[i, : len(x)] = x
        targets[i, : len(y)] = y
    return {
        "features": features,
        "feature_lengths": torch.tensor([len(x) for x, _ in items]),
        "targets": targets,
        "target_lengths": torch.tensor([len(y) for _, y in items]),
        "ids": [f"utt{i}" for i in range(B)],
    }
