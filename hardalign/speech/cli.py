"""Speech-model commands: ``hardalign decode`` and ``hardalign plot alignment``.

``hardalign decode --checkpoint exp/run/checkpoint.pt --split test --out exp/run/hyp-test``
decodes a split online (greedy or beam search) and writes ``hyp-test.jsonl`` (one object per
utterance: id, hypothesis phones, their emission times in seconds, reference) and
``hyp-test.txt`` (``id phone@time ...``); it prints the 39-phone PER.

``hardalign plot alignment --checkpoint ... --utt ID --out fig.png`` draws the spectrogram, the
emission probabilities of p (along its own greedy path and along an alignment drawn from q) and
of q, and the phones at their emission times.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["register", "load_run"]


def load_run(checkpoint: str, overrides: Sequence[str] = ()) -> tuple[Any, torch.nn.Module, Any]:
    """Rebuild ``(task, model, config)`` of a trained speech run from its checkpoint (model in eval mode).

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        ValueError: it holds no config, or it is not a speech (``timit``) run.
    """
    from hardalign.train.checkpoint import load_checkpoint
    from hardalign.train.config import resolve_config
    from hardalign.train.distributed import resolve_device
    from hardalign.train.tasks import build_task

    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist")
    state = load_checkpoint(checkpoint)
    if "config" not in state:
        raise ValueError(f"checkpoint {checkpoint!r} holds no config")
    config = resolve_config(state["config"], list(overrides))
    if config.train.task != "timit":
        raise ValueError(f"checkpoint {checkpoint!r} is a {config.train.task!r} run, not a speech (timit) run")
    device = resolve_device(config.train.device)
    task = build_task("timit", config.task, config.train, device=device)
    model = task.build_model().to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return task, model, config


def _seconds(step: int, task: Any) -> float:
    """Emission time of step ``step``: the end of its frames (the model has heard them all)."""
    frames = (step + 1) * task.features.stack
    return frames * task.features.frame_shift_ms / 1000.0 + (task.features.frame_length_ms - task.features.frame_shift_ms) / 1000.0


def _decode_command(args: argparse.Namespace) -> int:
    from hardalign.data import phone_error_rate

    try:
        overrides = list(args.overrides or [])
        if args.decoder:
            overrides += ["--decoder", args.decoder]
        if args.beam_size:
            overrides += ["--beam-size", str(args.beam_size)]
        task, model, _ = load_run(args.checkpoint, overrides)
        ids, hyps, refs = task.decode(model, args.split)
    except (FileNotFoundError, ValueError) as error:
        print(f"hardalign decode: {error}", file=sys.stderr)
        return 2
    out = Path(args.out or Path(args.checkpoint).parent / f"hyp-{args.split}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".jsonl"), "w", encoding="utf-8") as jsonl, open(out.with_suffix(".txt"), "w", encoding="utf-8") as text:
        for utt, hyp, ref in zip(ids, hyps, refs):
            phones = task.vocab.decode(hyp.labels)
            times = [round(_seconds(step, task), 3) for step in hyp.steps]
            jsonl.write(json.dumps({"id": utt, "phones": phones, "times": times, "ref": ref}) + "\n")
            text.write(utt + " " + " ".join(f"{p}@{t:.2f}" for p, t in zip(phones, times)) + "\n")
    counts = phone_error_rate([task.vocab.decode(h.labels) for h in hyps], refs)
    print(f"{args.split}: PER {100 * counts.per:.2f}% ({counts.substitutions} sub, {counts.deletions} del, "
          f"{counts.insertions} ins, {counts.ref_tokens} tokens); wrote {out.with_suffix('.jsonl')} and .txt")
    return 0


def plot_alignment(task: Any, model: torch.nn.Module, utt: str | None, split: str, out: str | Path, *, seed: int = 0) -> Path:
    """Draw one utterance's alignment picture (PNG) and return its path.

    Panels: the log-mel spectrogram; p's emit probability along its greedy online path, and p's
    and q's emit probabilities along one alignment drawn from q given the reference (hard-alignment
    models with a posterior only); the decoded phones at their emission times and the phones of
    the drawn alignment at theirs.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hardalign.data import collate_speech
    from hardalign.speech.decode import greedy_decode
    from hardalign.speech.model import HardAlignmentRecognizer

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
    steps_x = [_seconds(t, task) for t in range(T)]
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
            decoded_phones = [(_seconds(s, task), p) for s, p in zip(hyp.steps, task.vocab.decode(hyp.labels))]
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
                drawn_phones = [(_seconds(s, task), p) for s, p in zip(emit_steps, labels)]
        else:  # CTC: the probability of a non-blank output per step stands in for "emit"
            hyp = model.decode(batch["features"], batch["feature_lengths"])[0]
            non_blank = 1.0 - model.log_probs(batch["features"], batch["feature_lengths"])[0, :T, 0].exp()
            axes[1].plot(steps_x, non_blank.cpu().tolist(), label="CTC: 1 - P(blank)", color="C0")
            decoded_phones = [(_seconds(s, task), p) for s, p in zip(hyp.steps, task.vocab.decode(hyp.labels))]
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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _plot_command(args: argparse.Namespace) -> int:
    try:
        task, model, _ = load_run(args.checkpoint, list(args.overrides or []))
        path = plot_alignment(task, model, args.utt, args.split, args.out, seed=args.seed)
    except (FileNotFoundError, ValueError) as error:
        print(f"hardalign plot alignment: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


class _OverridesParser(argparse.ArgumentParser):
    """Collects unknown ``--key value`` pairs as config overrides (e.g. ``--data-dir DIR``)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        namespace.overrides = list(getattr(namespace, "overrides", None) or []) + list(extras)
        return namespace, []


def register(commands) -> None:
    """Add ``decode`` and ``plot alignment`` to the ``hardalign`` command."""
    decode = commands.add(
        "decode",
        _decode_command,
        help="decode a split online with a trained speech model; writes hypotheses with emission times",
        description="Decode dev or test with a speech checkpoint (greedy or beam search), write OUT.jsonl and "
        "OUT.txt (phones with emission times in seconds) and print the 39-phone PER. Other --key value "
        "pairs override the stored config (e.g. --data-dir DIR).",
        allow_abbrev=False,
    )
    decode.__class__ = _OverridesParser
    decode.add_argument("--checkpoint", required=True, help="checkpoint of a timit run")
    decode.add_argument("--split", choices=("dev", "test"), default="test")
    decode.add_argument("--decoder", choices=("greedy", "beam"), default=None, help="default: the run's config")
    decode.add_argument("--beam-size", type=int, default=None)
    decode.add_argument("--out", default=None, help="output path without suffix (default: next to the checkpoint, hyp-SPLIT)")
    plot = commands.add_to_group(
        "plot",
        "alignment",
        _plot_command,
        help="spectrogram, emission probabilities of p and q, phones at their emission times (PNG)",
        allow_abbrev=False,
    )
    plot.__class__ = _OverridesParser
    plot.add_argument("--checkpoint", required=True, help="checkpoint of a timit run")
    plot.add_argument("--split", choices=("dev", "test"), default="test")
    plot.add_argument("--utt", default=None, help="utterance id (default: the split's first)")
    plot.add_argument("--seed", type=int, default=0, help="seed of the alignment drawn from q")
    plot.add_argument("--out", required=True, help="PNG path")
