"""The corpus writer: TIMIT-layout files from espeak-ng, then the manifests (docs/speech-data.md, "The offline corpus").

:func:`build_synth_corpus` turns sentences from the project's grammar
(:mod:`hardalign.data.synth.text`) into a corpus that ``prepare timit`` reads unchanged:

* ``corpus/TRAIN/DR<k>/<SPK>/SX<n>.{WAV,PHN,WRD,TXT}`` and ``corpus/TEST/...``, upper-case names,
  SPHERE ``.WAV`` at 16 kHz with a hand-written 1024-byte ``NIST_1A`` header;
* ``.PHN`` from the phoneme events (:mod:`hardalign.data.synth.segments`), ``h#`` for the leading
  and trailing silence; ``.WRD`` from the phones of each word; ``.TXT`` as ``0 N Sentence.``;
* speakers from :mod:`hardalign.data.synth.speakers` (eight English accents as the dialect regions
  ``DR1``..``DR8``); dev/test sentences never occur in the training text;
* each utterance gets 80-250 ms of leading/trailing silence and a low noise floor (no digital
  silence); the whole corpus is deterministic for a given seed.

Finally the manifests are written with :func:`hardalign.data.timit.prepare_timit` into the output
directory itself, so it can be passed straight to :func:`hardalign.data.load_speech_dataset`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from hardalign.data.audio import write_sphere
from hardalign.data.synth.espeak import ESPEAK_RATE, espeak_synthesize
from hardalign.data.synth.segments import timit_segments, word_spans
from hardalign.data.synth.speakers import SynthSpeaker, hash_name, synth_speakers
from hardalign.data.synth.text import sentence_sets
from hardalign.data.timit import prepare_timit

__all__ = ["SAMPLE_RATE", "SynthResult", "build_synth_corpus"]

#: Sample rate of the written corpus (Hz).
SAMPLE_RATE = 16000


@dataclass
class SynthResult:
    """What :func:`build_synth_corpus` produced."""

    out_dir: Path
    corpus_dir: Path
    speakers: list[SynthSpeaker]
    counts: dict[str, int]
    audio_seconds: float
    seconds: float  # wall-clock build time (synthesis + writing + manifests)


def _write_utterance(spk_dir: Path, stem: str, text: str, speaker: SynthSpeaker, rng: np.random.Generator) -> float:
    audio22, events = espeak_synthesize(text, speaker.voice, pitch=speaker.pitch, rate=speaker.rate)
    # polyphase 22050 -> 16000 (320/441): ~40x faster here than a windowed-sinc resample per call
    wav16 = resample_poly(audio22.astype(np.float32) / 32768.0, 320, 441).astype(np.float32) * speaker.gain
    lead, tail = (int(rng.integers(80, 251)) * SAMPLE_RATE // 1000 for _ in range(2))
    body = len(wav16)
    samples = np.concatenate([np.zeros(lead, np.float32), wav16, np.zeros(tail, np.float32)])
    samples = samples + rng.normal(0.0, 3.0 / 32768.0, len(samples)).astype(np.float32)  # recording noise floor
    segments = timit_segments(events, len(audio22), text, lead, SAMPLE_RATE / ESPEAK_RATE, accent=speaker.accent)
    total = len(samples)
    # silences at the edges are h#; the last event span runs to the end of the synthesised audio
    segments = [s for s in segments if s[2] > s[1]]
    while segments and segments[0][0] == "pau":
        segments.pop(0)
    while segments and segments[-1][0] == "pau":
        segments.pop()
    segments[-1][2] = min(segments[-1][2], lead + body)
    phones = [["h#", 0, segments[0][1], None]] + segments + [["h#", segments[-1][2], total, None]]
    words = word_spans(segments, text)
    write_sphere(spk_dir / f"{stem}.WAV", samples, SAMPLE_RATE)
    (spk_dir / f"{stem}.PHN").write_text("".join(f"{s} {e} {lab}\n" for lab, s, e, _ in phones))
    (spk_dir / f"{stem}.WRD").write_text("".join(f"{a} {b} {w}\n" for w, a, b in words))
    (spk_dir / f"{stem}.TXT").write_text(f"0 {total} {text[0].upper()}{text[1:]}.\n")
    return total / SAMPLE_RATE


def build_synth_corpus(out_dir: str | Path, *, speakers: int = 20, utterances: int = 80, eval_speakers: int = 8,
                       eval_utterances: int = 20, seed: int = 0, voices: str = "default",
                       progress: bool = False) -> SynthResult:
    """Synthesise the offline corpus into ``out_dir/corpus`` and write its manifests into ``out_dir``.

    Args:
        out_dir: output directory (``corpus/`` is replaced if present; manifests land beside it).
        speakers: training speakers (default 20, half female).
        utterances: utterances per training speaker (default 80: 1600 training utterances).
        eval_speakers: speakers in each of dev and test (default 8: 4 female, 4 male, one per
            accent), voices unseen in training; dev and test speakers are twins of similar difficulty.
        eval_utterances: utterances per dev / test speaker (default 20: 160 per split); sentences
            unseen in training.
        seed: everything (speaker settings, sentences, silences, noise floor) follows from it.
        voices: the voice-variant pool, ``"default"`` (the recipe's corpus) or ``"alternate"``
            (variants the default pool never uses, same accents;
            :data:`~hardalign.data.synth.speakers.VOICE_POOLS`). With the same seed the two corpora
            have the same sentences, speaker names, accents, pitches, rates and levels.
        progress: show a tqdm bar.

    Returns:
        a :class:`SynthResult` (counts per split, seconds of audio, build time).

    Raises:
        ValueError: sizes out of range, or an unknown ``voices`` pool.
    """
    if speakers < 2 or eval_speakers < 2:
        raise ValueError(f"need at least 2 training and 2 dev/test speakers (both genders), got {speakers} / {eval_speakers}")
    if utterances < 1 or eval_utterances < 1:
        raise ValueError(f"utterances per speaker must be >= 1, got {utterances} / {eval_utterances}")
    spk_list = synth_speakers(speakers, eval_speakers, eval_speakers, seed, voices=voices)  # validates first
    started = time.perf_counter()
    out_dir = Path(out_dir)
    corpus = out_dir / "corpus"
    if corpus.exists():
        shutil.rmtree(corpus)
    train_text, held_out = sentence_sets(speakers * utterances, 2 * eval_speakers * eval_utterances, seed)
    jobs = []
    k_train = k_eval = 0
    for spk in spk_list:
        count = utterances if spk.split == "train" else eval_utterances
        spk_dir = corpus / ("TRAIN" if spk.split == "train" else "TEST") / f"DR{spk.dialect}" / spk.name
        for j in range(count):
            if spk.split == "train":
                text, k_train = train_text[k_train], k_train + 1
            else:
                text, k_eval = held_out[k_eval], k_eval + 1
            jobs.append((spk_dir, f"SX{100 + j}", text, spk))
    # libespeak-ng carries wave-generator state (e.g. its pitch-flutter phase) from one utterance to
    # the next, and Terminate/Initialize does not reset it: the same text comes out a few samples
    # different after different histories. A fresh process that synthesises the jobs in a fixed
    # order makes the corpus a function of the seed alone. (A plain subprocess rather than a
    # multiprocessing "spawn" pool, which would re-run an unguarded calling script.)
    payload = json.dumps({"seed": seed, "progress": progress,
                          "jobs": [[str(d), stem, text, asdict(spk)] for d, stem, text, spk in jobs]})
    proc = subprocess.run([sys.executable, "-c", "from hardalign.data.synth.corpus import _worker_main; _worker_main()"],
                          input=payload, stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_package_root(), os.environ.get("PYTHONPATH")]))})
    if proc.returncode != 0:
        raise RuntimeError(f"the espeak-ng synthesis worker failed (exit status {proc.returncode}); see its error above")
    seconds = float(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"])
    result = prepare_timit(corpus, out_dir)
    return SynthResult(out_dir, corpus, spk_list, result.counts(), seconds, time.perf_counter() - started)


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[3])


def _worker_main() -> None:
    """Entry point of the synthesis subprocess: jobs as JSON on stdin, ``{"seconds": ...}`` on stdout."""
    request = json.loads(sys.stdin.read())
    jobs = [(Path(d), stem, text, SynthSpeaker(**spk)) for d, stem, text, spk in request["jobs"]]
    seconds = _synthesize_jobs(jobs, request["seed"], request["progress"])
    print(json.dumps({"seconds": seconds}))


def _synthesize_jobs(jobs, seed: int, progress: bool) -> float:
    """Synthesise and write every job in order; returns seconds of audio."""
    iterator = jobs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc="synthesising", unit="utt")
    seconds = 0.0
    for spk_dir, stem, text, spk in iterator:
        spk_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, hash_name(spk.name), int(stem[2:])])
        seconds += _write_utterance(spk_dir, stem, text, spk, rng)
    return seconds
