"""Feature-extraction throughput (real-time factor) of the speech front ends, on this machine.

Real-time factor here = seconds of audio processed per second of wall-clock time (higher is
faster; 100 means one hour of audio takes 36 s). Rows:

* ``kaldi`` / ``librosa`` front ends alone (fbank + energy, with and without deltas), on
  in-memory 16 kHz audio;
* the dataset path per utterance: read the SPHERE file, extract, normalise, stack (no cache);
* the same with a warm feature cache (the second epoch);
* added noise (pink at 10 dB) on top of the uncached path;
* optionally (``--synth``) building the default offline corpus and caching its features, as
  ``hardalign prepare synth`` does.

    python benchmarks/features_rtf.py [--utterances 60] [--synth] [--out benchmarks/results/features_rtf.md]

Uses one thread (``torch.set_num_threads(1)``) so numbers are per core.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hardalign.data import FeatureConfig, NoiseConfig, extract_features, load_speech_dataset  # noqa: E402
from hardalign.data.synth import build_synth_corpus  # noqa: E402


def best_of(fn, repeats: int) -> float:
    """Fastest wall-clock time of ``repeats`` calls (robust to a shared machine)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--utterances", type=int, default=60, help="utterances of the small synthetic corpus used")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--synth", action="store_true", help="also time building the default offline corpus + features")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "features_rtf.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        speakers = max(2, args.utterances // 10)
        corpus = build_synth_corpus(tmp, speakers=speakers, utterances=max(1, args.utterances // speakers),
                                    eval_speakers=2, eval_utterances=1, seed=0)
        ds = load_speech_dataset(tmp, "train", cache_dir=None)
        waves = [ds.load_waveform(r) for r in ds.records]
        audio_s = sum(len(w) for w in waves) / 16000

        def front(config):
            return lambda: [extract_features(w, config) for w in waves]

        for name, config in [("kaldi fbank 40+energy", FeatureConfig(delta_order=0)),
                             ("kaldi fbank + deltas (123 dims)", FeatureConfig()),
                             ("librosa fbank 40+energy", FeatureConfig(frontend="librosa", delta_order=0)),
                             ("librosa fbank + deltas (123 dims)", FeatureConfig(frontend="librosa")),
                             ("kaldi fbank, PCEN in place of the log, + deltas", FeatureConfig(compression="pcen"))]:
            t = best_of(front(config), args.repeats)
            rows.append((name, audio_s, t))

        def items(dataset):
            return lambda: [dataset[i] for i in range(len(dataset))]

        t = best_of(items(ds), args.repeats)
        rows.append(("dataset item: read SPHERE + features + CMVN + stack, no cache", audio_s, t))
        cached = load_speech_dataset(tmp, "train", cache_dir=os.path.join(tmp, "cache"))
        items(cached)()  # fill
        t = best_of(items(cached), args.repeats)
        rows.append(("dataset item from a warm feature cache", audio_s, t))
        noisy = load_speech_dataset(tmp, "train", noise=NoiseConfig("pink", 10), cache_dir=None)
        t = best_of(items(noisy), args.repeats)
        rows.append(("dataset item + pink noise at 10 dB, no cache", audio_s, t))
        note = f"{len(waves)} utterances of the offline corpus, {audio_s:.0f} s of audio ({corpus.counts['train']} train)"

    synth_line = ""
    if args.synth:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = build_synth_corpus(tmp)
            built = time.perf_counter() - start
            start = time.perf_counter()
            for split in ("train", "dev", "test"):
                d = load_speech_dataset(tmp, split, on_short="skip")
                for r in d.records:
                    d.raw_features(r)
            feats = time.perf_counter() - start
            size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(os.path.join(tmp, "corpus")) for f in fs)
            c = result.counts
            synth_line = (f"\nDefault offline corpus (`hardalign prepare synth`): {c['train']} train / {c['dev']} dev / "
                          f"{c['test']} test utterances, {len(result.speakers)} speakers, {result.audio_seconds / 60:.1f} min "
                          f"of audio, {size / 2 ** 20:.0f} MiB on disk; synthesis + manifests {built:.1f} s, "
                          f"features + CMVN for all splits {feats:.1f} s, total {built + feats:.1f} s.\n")

    lines = [
        "Feature extraction real-time factor (seconds of audio per second of wall clock, one thread, best of "
        f"{args.repeats}); {note}; {platform.processor() or platform.machine()}, torch {torch.__version__}.",
        "",
        f"{os.cpu_count()} CPU cores shared with other jobs: repeated runs differ by up to ~2x per row.",
        "",
        "| path | audio (s) | time (s) | real-time factor |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {a:.1f} | {t:.3f} | {a / t:.0f}x |" for name, a, t in rows]
    text = "\n".join(lines) + "\n" + synth_line
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
