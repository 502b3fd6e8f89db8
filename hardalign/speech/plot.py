"""Pictures of speech models: one utterance's alignment (``hardalign plot alignment``).

:func:`plot_alignment` draws the log-mel spectrogram, the emission probabilities of p (along its
own greedy path and along an alignment drawn from q) and of q, and the phones at their emission
times; :func:`emission_seconds` converts a model step to the time at which its label is emitted.
Matplotlib's Agg backend is used (no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["emission_seconds", "plot_alignment"]


def emission_seconds(step: int, task: Any) -> float:
    """Emission time of model step ``step`` in seconds: the end of its frames (the model has heard them all).

    ``task.features`` gives the frame stacking, shift and length (a :class:`~hardalign.data.FeatureConfig`).
    """
    frames = (step + 1) * task.features.stack
    return frames * task.features.frame_shift_ms / 1000.0 + (task.features.frame_length_ms - task.features.frame_shift_ms) / 1000.0


def plot_alignment(task: Any, model: torch.nn.Module, utt: str | None, split: str, out: str | Path, *, seed: int = 0) -> Path:
    """Draw one utterance's alignment picture (PNG) and return its path.

    Panels: the log-mel spectrogram; p's emit probability along its greedy online path, and p's
    and q's emit probabilities along one alignment drawn from q given the reference (hard-alignment
    models with a posterior only); the decoded phones at their emission times and the phones of
    the drawn alignment at theirs.
    """
    from hardalign._figures import pyplot, save_figure
    from hardalign.data import collate_speech
    from hardalign.speech.decode import greedy_decode
    from hardalign.speech.model import HardAlignmentRecognizer

    plt = pyplot()
    ds = task.dataset(split)
    index = 0
    if utt is not None:
        matches = [i for i, r in enumerate(ds.records) if r["id"] == utt]
        if not matches:
            raise ValueError(f"utterance {utt!r} is not in {split} (e.g. {ds.records[0]['id']!r})")
        index = matches[0]
    record = ds.records[index]
    batch = collate_speech([ds[index]])
    batch = {k: (v.to(task.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    spectrogram = ds.raw_features(record)[:, 1 : 1 + task.features.num_mel_bins].T  # [mel, frames], energy dropped
    T = int(batch["feature_lengths"][0])
    steps_x = [emission_seconds(t, task) for t in range(T)]
    fig, axes = plt.subplots(3, 1, figsize=(12, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.4]})
    duration = spectrogram.shape[1] * task.features.frame_shift_ms / 1000.0
    axes[0].imshow(spectrogram.cpu().numpy(), origin="lower", aspect="auto", extent=(0, duration, 0, spectrogram.shape[0]), cmap="magma")
    axes[0].set_ylabel("mel bin")
    axes[0].set_title(f"{record['id']}")
    decoded_phones: list[tuple[float, str]] = []
    drawn_phones: list[tuple[float, str]] = []
    with torch.no_grad():
        if isinstance(model, HardAlignmentRecognizer):
            hyp = greedy_decode(model, batch["features"], batch["feature_lengths"])[0]
            axes[1].plot(steps_x, hyp.emit_probs, label="p: emit prob. (greedy path)", color="C0")
            decoded_phones = [(emission_seconds(s, task), p) for s, p in zip(hyp.steps, task.vocab.decode(hyp.labels))]
            if model.proposal == "posterior":
                generator = torch.Generator(device=task.device).manual_seed(seed)
                traj = model.sample_alignments(batch, num_samples=1, generator=generator, record=True)
                record_ = traj.final_state["record"]
                p_emit = torch.stack(record_["p_emit"], 1)[0, :T].cpu()
                q_emit = torch.stack(record_["q_emit"], 1)[0, :T].cpu()
                axes[1].plot(steps_x, p_emit.tolist(), label="p: emit prob. (path drawn from q)", color="C2", alpha=0.8)
                axes[1].plot(steps_x, q_emit.tolist(), label="q: emit prob.", color="C3", alpha=0.8)
                emit_steps = traj.locations[0, 0, :T].nonzero().flatten().tolist()
                labels = task.vocab.decode(batch["targets"][0, : int(batch["target_lengths"][0])].tolist()) + ["</s>"]
                drawn_phones = [(emission_seconds(s, task), p) for s, p in zip(emit_steps, labels)]
        else:  # CTC: the probability of a non-blank output per step stands in for "emit"
            hyp = model.decode(batch["features"], batch["feature_lengths"])[0]
            non_blank = 1.0 - model.log_probs(batch["features"], batch["feature_lengths"])[0, :T, 0].exp()
            axes[1].plot(steps_x, non_blank.cpu().tolist(), label="CTC: 1 - P(blank)", color="C0")
            decoded_phones = [(emission_seconds(s, task), p) for s, p in zip(hyp.steps, task.vocab.decode(hyp.labels))]
    axes[1].set_ylim(-0.02, 1.02)
    axes[1].set_ylabel("emit prob.")
    axes[1].legend(loc="upper right", fontsize=7)
    for y, phones, colour in ((0.7, decoded_phones, "C0"), (0.25, drawn_phones, "C3")):
        for time, phone in phones:
            axes[2].axvline(time, color=colour, alpha=0.3, linewidth=0.8)
            axes[2].text(time, y, phone, rotation=90, fontsize=7, ha="center", va="center", color=colour)
    axes[2].set_yticks([0.7, 0.25], ["decoded", "drawn from q"])
    axes[2].set_ylim(0, 1)
    axes[2].set_xlabel("time (s): phones at their emission times")
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)
