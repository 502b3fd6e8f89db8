"""A difficulty proxy for held-out voices: frame phone error of a small classifier per speaker.

Used to design and check the dev / test speaker sets of the offline corpus (docs/speech-data.md):
an MLP over fbank frames with +-5 frames of context is trained on the training split's frames
(labels: the ``.PHN`` segments folded to the 39 scoring phones, ``q`` left out) and scored frame by
frame on every dev and test speaker. It takes ~1-2 minutes on two CPU cores and needs no trained
model, so it can be rerun whenever the voices change::

    python -m hardalign.data.synth.difficulty exp/timit/data

Frame error is not PER, but it ranks the splits the same way on the old default corpus: its dev
(belinda, grandma, m2, ian) gave 24.4% against test's (f4, Andrea, m4, m6) 9.4%, where a trained
model gave 18.5% and 5.2% PER.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from hardalign.data.audio import read_audio
from hardalign.data.features import FeatureConfig, extract_features
from hardalign.data.phones import phone_map
from hardalign.data.timit import read_manifest

__all__ = ["frame_error_by_speaker"]

_CONTEXT = 5  # frames either side
_SHIFT = 160  # samples per 10 ms frame at 16 kHz


def _frames(record: dict, folded: dict, symbols: dict) -> tuple[torch.Tensor, torch.Tensor]:
    audio, _ = read_audio(record["audio"])
    feats = extract_features(torch.as_tensor(audio, dtype=torch.float32), FeatureConfig(delta_order=0))  # [T, 41]
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-3)  # per-utterance CMVN
    labels = np.full(len(feats), -1)
    for phone, start, end in zip(record["phones"], record["phone_starts"], record["phone_ends"]):
        if folded[phone] is not None:
            labels[start // _SHIFT:end // _SHIFT] = symbols.setdefault(folded[phone], len(symbols))
    context = torch.cat([torch.roll(feats, k, 0) for k in range(-_CONTEXT, _CONTEXT + 1)], 1)  # [T, 11 * 41]
    keep = torch.from_numpy(labels >= 0)
    return context[keep], torch.from_numpy(labels)[keep]


def frame_error_by_speaker(data_dir: str | Path, *, train_per_speaker: int = 16, eval_per_speaker: int = 20,
                           epochs: int = 8, seed: int = 0) -> dict[str, dict[str, float]]:
    """Frame phone error (%) of a classifier trained on ``train``, per dev / test speaker.

    Args:
        data_dir: a prepared corpus (``train/dev/test.jsonl``).
        train_per_speaker: training utterances per training speaker (the first ones).
        eval_per_speaker: dev / test utterances per speaker (the first ones).
        epochs: passes over the training frames (Adam, batches of 256).
        seed: initialisation and batch order.

    Returns:
        ``{"dev": {speaker: error, ...}, "test": {...}}``, errors in percent of frames.
    """
    data_dir = Path(data_dir)
    folded, symbols = phone_map(39), {}
    gen = torch.Generator().manual_seed(seed)

    def take(split: str, per_speaker: int) -> dict[str, list[dict]]:
        by_speaker: dict[str, list[dict]] = {}
        for rec in read_manifest(data_dir / f"{split}.jsonl"):
            by_speaker.setdefault(rec["speaker"], []).append(rec)
        return {spk: recs[:per_speaker] for spk, recs in by_speaker.items()}

    train = [_frames(r, folded, symbols) for recs in take("train", train_per_speaker).values() for r in recs]
    x, y = torch.cat([t[0] for t in train]), torch.cat([t[1] for t in train])
    mean, std = x.mean(0), x.std(0) + 1e-3
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                              torch.nn.ReLU(), torch.nn.Linear(512, 64))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 256):
            batch = order[i:i + 256]
            loss = torch.nn.functional.cross_entropy(net((x[batch] - mean) / std), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for split in ("dev", "test"):
            out[split] = {}
            for spk, recs in sorted(take(split, eval_per_speaker).items()):
                frames = [_frames(r, folded, symbols) for r in recs]
                xe, ye = torch.cat([f[0] for f in frames]), torch.cat([f[1] for f in frames])
                out[split][spk] = round(100.0 * (net((xe - mean) / std).argmax(1) != ye).float().mean().item(), 1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", help="a prepared corpus (train/dev/test.jsonl)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    errors = frame_error_by_speaker(args.data_dir, seed=args.seed)
    for split, per in errors.items():
        values = list(per.values())
        print(f"{split}: mean {np.mean(values):.1f}% frame error over {len(values)} speakers: "
              + ", ".join(f"{s} {e}" for s, e in per.items()))
    print(json.dumps(errors))


if __name__ == "__main__":
    main()
