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


def _prepare_synth(args: argparse.Namespace) -> int:
    import time

    from hardalign.data.dataset import load_speech_dataset
    from hardalign.data.features import FeatureConfig
    from hardalign.data.synth import build_synth_corpus

    try:
        result = build_synth_corpus(args.out, speakers=args.speakers, utterances=args.utterances,
                                    eval_speakers=args.eval_speakers, eval_utterances=args.eval_utterances,
                                    seed=args.seed, voices=args.voices, progress=not args.quiet)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    c = result.counts
    print(f"wrote {result.corpus_dir} and manifests in {args.out}: train {c['train']}, dev {c['dev']}, test {c['test']} "
          f"utterances, {result.audio_seconds / 60:.1f} min of audio, {len(result.speakers)} speakers, "
          f"built in {result.seconds:.1f} s")
    if not args.no_features:
        import torch

        started = time.perf_counter()
        # one utterance's fbank is too small to share across threads: intra-op threads only add
        # overhead, ~7x on two busy cores (measured: 0.7 s vs 4.8 s for the 160 dev utterances)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for split in ("train", "dev", "test"):
                ds = load_speech_dataset(args.out, split, features=FeatureConfig(), on_short="skip")
                for i in range(len(ds)):  # fills the feature cache (and CMVN statistics) for the default front end
                    ds.raw_features(ds.records[i])
                if ds.skipped:
                    print(f"note: {len(ds.skipped)} {split} utterance(s) have fewer steps than labels + EOS",
                          file=sys.stderr)
        finally:
            torch.set_num_threads(threads)
        print(f"cached default features in {time.perf_counter() - started:.1f} s")
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
    s = commands.add_to_group("prepare", "synth", _prepare_synth,
                              help="synthesise the offline TIMIT-layout corpus with espeak-ng and prepare it",
                              description="Synthesise a TIMIT-layout corpus offline (libespeak-ng from espeakng-loader) "
                                          "into OUT/corpus, write train/dev/test manifests into OUT and cache the "
                                          "default features. Dev/test speakers use voices unseen in training; "
                                          "dev/test sentences never occur in the training text. --voices alternate "
                                          "draws every speaker from espeak-ng voice variants the default corpus "
                                          "never uses (a corpus of other voices).")
    s.add_argument("--out", required=True, help="output directory (manifests; the corpus goes to OUT/corpus)")
    s.add_argument("--speakers", type=int, default=20, help="training speakers (default 20)")
    s.add_argument("--utterances", type=int, default=80, help="utterances per training speaker (default 80)")
    s.add_argument("--eval-speakers", type=int, default=8, help="speakers in each of dev and test (default 8)")
    s.add_argument("--eval-utterances", type=int, default=20, help="utterances per dev/test speaker (default 20)")
    s.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    s.add_argument("--voices", choices=("default", "alternate"), default="default",
                   help="voice pool of every speaker (train, dev and test): default (the recipe's corpus) or "
                        "alternate (espeak-ng variants the default pool never uses, the same 8 English accents: "
                        "espeak-ng has no others; same seed: same sentences, names, pitches and rates)")
    s.add_argument("--no-features", action="store_true", help="do not precompute the default features")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
