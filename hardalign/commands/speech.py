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

__all__ = ["register"]


def _decode_command(args: argparse.Namespace) -> int:
    from hardalign.data import phone_error_rate
    from hardalign.speech.plot import emission_seconds
    from hardalign.train.run import load_run

    try:
        overrides = list(args.overrides or [])
        if args.decoder:
            overrides += ["--decoder", args.decoder]
        if args.beam_size:
            overrides += ["--beam-size", str(args.beam_size)]
        run = load_run(args.checkpoint, overrides=overrides, expect_task="timit")
        task = run.task
        ids, hyps, refs = task.decode(run.model, args.split)
    except (FileNotFoundError, ValueError) as error:
        print(f"hardalign decode: {error}", file=sys.stderr)
        return 2
    out = Path(args.out or Path(args.checkpoint).parent / f"hyp-{args.split}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".jsonl"), "w", encoding="utf-8") as jsonl, open(out.with_suffix(".txt"), "w", encoding="utf-8") as text:
        for utt, hyp, ref in zip(ids, hyps, refs):
            phones = task.vocab.decode(hyp.labels)
            times = [round(emission_seconds(step, task), 3) for step in hyp.steps]
            jsonl.write(json.dumps({"id": utt, "phones": phones, "times": times, "ref": ref}) + "\n")
            text.write(utt + " " + " ".join(f"{p}@{t:.2f}" for p, t in zip(phones, times)) + "\n")
    counts = phone_error_rate([task.vocab.decode(h.labels) for h in hyps], refs)
    print(f"{args.split}: PER {100 * counts.per:.2f}% ({counts.substitutions} sub, {counts.deletions} del, "
          f"{counts.insertions} ins, {counts.ref_tokens} tokens); wrote {out.with_suffix('.jsonl')} and .txt")
    return 0


def _plot_command(args: argparse.Namespace) -> int:
    from hardalign.speech.plot import plot_alignment
    from hardalign.train.run import load_run

    try:
        run = load_run(args.checkpoint, overrides=list(args.overrides or []), expect_task="timit")
        path = plot_alignment(run.task, run.model, args.utt, args.split, args.out, seed=args.seed)
    except (FileNotFoundError, ValueError) as error:
        print(f"hardalign plot alignment: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def _speech_run_parser(add, *args, **kwargs):
    """A parser for a command on a trained speech run: ``--checkpoint``, ``--split`` and config overrides."""
    from hardalign.train.cli import OverridesParser

    parser = add(*args, allow_abbrev=False, **kwargs)
    parser.__class__ = OverridesParser  # unknown --key value pairs become config overrides
    parser.add_argument("--checkpoint", required=True, help="checkpoint of a timit run")
    parser.add_argument("--split", choices=("dev", "test"), default="test")
    return parser


def register(commands) -> None:
    """Add ``decode`` and ``plot alignment`` to the ``hardalign`` command."""
    decode = _speech_run_parser(
        commands.add,
        "decode",
        _decode_command,
        help="decode a split online with a trained speech model; writes hypotheses with emission times",
        description="Decode dev or test with a speech checkpoint (greedy or beam search), write OUT.jsonl and "
        "OUT.txt (phones with emission times in seconds) and print the 39-phone PER. Other --key value "
        "pairs override the stored config (e.g. --data-dir DIR).",
    )
    decode.add_argument("--decoder", choices=("greedy", "median", "beam"), default=None, help="default: the run's config")
    decode.add_argument("--beam-size", type=int, default=None)
    decode.add_argument("--out", default=None, help="output path without suffix (default: next to the checkpoint, hyp-SPLIT)")
    plot = _speech_run_parser(
        commands.add_to_group,
        "plot",
        "alignment",
        _plot_command,
        help="spectrogram, emission probabilities of p and q, phones at their emission times (PNG)",
    )
    plot.add_argument("--utt", default=None, help="utterance id (default: the split's first)")
    plot.add_argument("--seed", type=int, default=0, help="seed of the alignment drawn from q")
    plot.add_argument("--out", required=True, help="PNG path")
