"""``hardalign prepare timit`` and ``hardalign prepare synth``: corpus preparation commands."""

from __future__ import annotations

import argparse
import sys


def _prepare_timit(args: argparse.Namespace) -> int:
    from hardalign.data.timit import PrepareError, prepare_timit

    try:
        result = prepare_timit(args.root, args.out, skip_bad=args.skip_bad)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for problem in result.problems:
        print(f"skipped: {problem}", file=sys.stderr)
    counts = result.counts()
    print(f"wrote {args.out}: train {counts['train']}, dev {counts['dev']}, test {counts['test']} utterances "
          f"({result.excluded_sa} SA utterances excluded, {len(result.skipped)} skipped as bad)")
    return 0


def register(commands) -> None:
    """Add ``prepare timit`` (and ``prepare synth``) to the ``hardalign`` command."""
    p = commands.add_to_group("prepare", "timit", _prepare_timit,
                              help="scan a TIMIT copy and write train/dev/test manifests",
                              description="Scan a TIMIT-layout corpus (TRAIN/TEST/DR*/SPK/*.WAV, any case), report "
                                          "every problem, and write train.jsonl (3696 SI+SX utterances), dev.jsonl "
                                          "(50 speakers, 400) and test.jsonl (24 core-test speakers, 192).")
    p.add_argument("root", help="corpus root holding TRAIN and TEST")
    p.add_argument("--out", required=True, help="output directory for the manifests")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out (and list) utterances with problems instead of failing")
