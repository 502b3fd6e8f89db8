"""The offline corpus: TIMIT-layout speech synthesised with libespeak-ng (DESIGN.md section 7).

``espeakng-loader`` ships libespeak-ng and its data; through ``ctypes`` we initialise it with
phoneme events, register a synth callback and call ``espeak_Synth``, receiving 22.05 kHz int16
audio and one PHONEME event (sample position + mnemonic) per phone. :func:`build_synth_corpus`
turns sentences from the project's grammar (:mod:`hardalign.data.synth_text`) into a corpus that
``prepare timit`` reads unchanged:

* ``corpus/TRAIN/DR<k>/<SPK>/SX<n>.{WAV,PHN,WRD,TXT}`` and ``corpus/TEST/...``, upper-case names,
  SPHERE ``.WAV`` at 16 kHz with a hand-written 1024-byte ``NIST_1A`` header;
* ``.PHN`` from the phoneme events mapped to TIMIT symbols (:data:`ESPEAK_TO_TIMIT`; diphthong + r
  mnemonics become two TIMIT phones splitting the span 60/40; stops carry no separate closure),
  ``h#`` for the leading and trailing silence, ``pau`` for pauses inside a sentence; ``.WRD`` from
  the phones of each word; ``.TXT`` as ``0 N Sentence.``;
* speakers = voice variant x pitch x rate (``espeakPITCH`` / ``espeakRATE`` are set *after*
  each voice switch, which resets them), both genders; dev and test speakers use voice variants
  that never occur in training and carry names from TIMIT's dev / core-test speaker lists so that
  the standard split rules select them; dev/test sentences never occur in the training text;
* each utterance gets 80-250 ms of leading/trailing silence and a low noise floor (no digital
  silence); the whole corpus is deterministic for a given seed.

Finally the manifests are written with :func:`hardalign.data.timit.prepare_timit` into the output
directory itself, so it can be passed straight to :func:`hardalign.data.load_speech_dataset`.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from hardalign.data.audio import write_sphere
from hardalign.data.phones import load_speaker_list
from hardalign.data.synth_text import sentence_sets
from hardalign.data.timit import prepare_timit

__all__ = ["ESPEAK_TO_TIMIT", "SynthSpeaker", "SynthResult", "build_synth_corpus", "espeak_synthesize", "synth_speakers"]

#: espeak-ng (en-us) phoneme mnemonics, stress marks stripped, -> TIMIT labels (61-set).
#: An empty tuple merges the event's span into the previous phone (``;`` marks palatalisation).
ESPEAK_TO_TIMIT: dict[str, tuple[str, ...]] = {
    "0": ("aa",), "3": ("axr",), "3:": ("er",), ";": (), "?": ("q",), "@": ("ax",), "@2": ("ax",),
    "@5": ("ax",), "@L": ("el",), "A:": ("aa",), "A": ("aa",), "A@": ("aa", "r"), "D": ("dh",), "E": ("eh",),
    "e": ("eh",), "I": ("ih",), "I#": ("ix",), "I2": ("ix",), "N": ("ng",), "O2": ("ao",), "O:": ("ao",),
    "O@": ("ao", "r"), "o@": ("ao", "r"), "OI": ("oy",), "S": ("sh",), "T": ("th",), "U": ("uh",),
    "U@": ("uh", "r"), "V": ("ah",), "Z": ("zh",), "a": ("ae",), "a#": ("ax",), "aa": ("ae",), "aI": ("ay",),
    "aI@": ("ay", "ax"), "aI3": ("ay", "er"), "aU": ("aw",), "aU@": ("aw", "ax"), "b": ("b",), "d": ("d",),
    "d#": ("dx",), "dZ": ("jh",), "e@": ("eh", "r"), "eI": ("ey",), "f": ("f",), "g": ("g",), "h": ("hh",),
    "i": ("iy",), "i:": ("iy",), "i@": ("ih", "r"), "i@3": ("ih", "r"), "j": ("y",), "k": ("k",), "l": ("l",),
    "l-": ("el",), "m": ("m",), "m-": ("em",), "n": ("n",), "n-": ("en",), "oU": ("ow",), "p": ("p",),
    "r": ("r",), "r-": ("r",), "s": ("s",), "t": ("t",), "t#": ("dx",), "tS": ("ch",), "u:": ("uw",),
    "v": ("v",), "w": ("w",), "x": ("k",), "z": ("z",), "z#": ("z",),
}

#: Voice variants (``en-us+<variant>``) per split and gender; dev/test variants never occur in training.
VOICES = {
    "train": {"f": ("f1", "Annie", "linda", "anika", "steph", "aunty"),
              "m": ("m1", "m3", "m5", "m7", "klatt", "david", "ed", "adam")},
    "dev": {"f": ("belinda", "grandma"), "m": ("m2", "ian")},
    "test": {"f": ("f4", "Andrea"), "m": ("m4", "m6")},
}
# Variants with "breath" noise (f2, f3, f5, Alicia, Reed, ...) are left out: espeak-ng draws that
# noise differently in every process, which would break determinism.
#: espeakPITCH (0-100) and espeakRATE (words per minute) values; dev/test use values unseen in training.
PITCHES = {"train": (30, 42, 54, 66), "dev": (36, 48, 60), "test": (36, 48, 60)}
RATES = {"train": (140, 160, 180, 200), "dev": (150, 170, 190), "test": (150, 170, 190)}

SAMPLE_RATE = 16000
_ESPEAK_RATE = 22050
_EVENT_WORD, _EVENT_END, _EVENT_PHONEME, _EVENT_LIST_TERMINATED = 1, 5, 7, 0
_PITCH, _RATE = 3, 1  # espeak_PARAMETER values


@dataclass(frozen=True)
class SynthSpeaker:
    """One synthetic speaker: a TIMIT-style name and the espeak settings that make its voice."""

    name: str  # e.g. "FSAB0" (upper case, gender letter first)
    gender: str  # "f" | "m"
    split: str  # "train" | "dev" | "test"
    dialect: int  # 1..8
    voice: str  # espeak voice name, e.g. "en-us+f3"
    pitch: int
    rate: int
    gain: float  # output level


@dataclass
class SynthResult:
    """What :func:`build_synth_corpus` produced."""

    out_dir: Path
    corpus_dir: Path
    speakers: list[SynthSpeaker]
    counts: dict[str, int]
    audio_seconds: float
    seconds: float  # wall-clock build time (synthesis + writing + manifests)


class _EspeakEvent(ctypes.Structure):
    class _Id(ctypes.Union):
        _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _Id)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_EspeakEvent))


class _Espeak:
    """Process-wide libespeak-ng handle (the library keeps global state; calls are serialised)."""

    _instance = None
    _lock = threading.Lock()

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError:
            raise RuntimeError("the offline corpus needs the espeakng-loader package (pip install espeakng-loader)") from None
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                          ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        # AUDIO_OUTPUT_SYNCHRONOUS = 2; options: PHONEME_EVENTS (0x1) | DONT_EXIT (0x8000)
        rate = self.lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0x8001)
        if rate != _ESPEAK_RATE:
            raise RuntimeError(f"libespeak-ng initialisation failed or gave {rate} Hz (expected {_ESPEAK_RATE})")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, str]] = []
        self._callback = _CALLBACK(self._on_audio)  # keep a reference: the library holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> "_Espeak":
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _on_audio(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            e = events[i]
            if e.type == _EVENT_PHONEME:
                self._events.append((e.type, e.sample, e.text_position, e.id.string.decode("ascii", "replace")))
            elif e.type == _EVENT_END:
                self._events.append((e.type, e.sample, e.text_position, ""))
            i += 1
        return 0

    def synthesize(self, text: str, voice: str, pitch: int, rate: int) -> tuple[np.ndarray, list[tuple[int, int, int, str]]]:
        with self._lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            # a voice switch resets rate and pitch, so set them afterwards
            self.lib.espeak_SetParameter(_RATE, int(rate), 0)
            self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            self._chunks, self._events = [], []
            data = text.encode("ascii")
            status = self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 0, None, None)
            self.lib.espeak_Synchronize()
            if status != 0:
                raise RuntimeError(f"espeak_Synth failed with status {status} for {text!r}")
            audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            return audio, list(self._events)


def espeak_synthesize(text: str, voice: str = "en-us", *, pitch: int = 50, rate: int = 175):
    """Synthesise ``text`` with libespeak-ng.

    Returns:
        ``(audio [N] int16 at 22050 Hz, events)``; each event is ``(type, sample, text_position, mnemonic)``
        for PHONEME (type 7) and END (type 5) events, sample positions in the 22.05 kHz audio.
    """
    return _Espeak.get().synthesize(text, voice, pitch, rate)


def _timit_segments(events, num_samples: int, text: str, lead: int, scale: float):
    """Phoneme events -> (phones, starts, ends, word spans) in output samples.

    ``lead`` samples of silence are prepended (output rate); ``scale`` maps espeak samples to output samples.
    """
    phon = [(s, pos, m) for t, s, pos, m in events if t == _EVENT_PHONEME]
    if not phon:
        raise RuntimeError(f"espeak-ng produced no phoneme events for {text!r}")
    segments: list[list] = []  # [label, start, end, text_position]
    for k, (s, pos, m) in enumerate(phon):
        start = lead + int(round(s * scale))
        end = lead + int(round((phon[k + 1][0] if k + 1 < len(phon) else num_samples) * scale))
        mn = m.replace("'", "").replace(",", "")
        if mn.startswith("_"):
            segments.append(["pau", start, end, None])
            continue
        if mn not in ESPEAK_TO_TIMIT:
            raise KeyError(f"espeak-ng phoneme {m!r} (in {text!r}) has no TIMIT mapping; add it to ESPEAK_TO_TIMIT")
        labels = ESPEAK_TO_TIMIT[mn]
        if not labels:
            if segments:
                segments[-1][2] = end
            continue
        if len(labels) == 1:
            segments.append([labels[0], start, end, pos])
        else:
            cut = start + int(round(0.6 * (end - start)))
            segments.append([labels[0], start, cut, pos])
            segments.append([labels[1], cut, end, pos])
    return segments


def _word_spans(segments, text: str) -> list[tuple[str, int, int]]:
    """``(word, start, end)`` per word of ``text`` from the phones' text positions.

    espeak-ng sometimes voices two words as one unit (e.g. "do not"); then all their phones carry
    the first word's position and the unit's phones are shared out in proportion to letters.
    """
    words = text.split()
    starts, pos = [], 0
    for w in words:
        pos = text.index(w, pos)
        starts.append(pos + 1)  # espeak text positions are 1-based
        pos += len(w)
    per_word: list[list[tuple[int, int]]] = [[] for _ in words]
    for label, start, end, p in segments:
        if p is None:
            continue
        k = max(i for i, s in enumerate(starts) if s <= p) if p >= starts[0] else 0
        per_word[k].append((start, end))
    out: list[tuple[str, int, int]] = []
    i = 0
    while i < len(words):
        j = i + 1
        while j < len(words) and not per_word[j]:
            j += 1
        phones = per_word[i]
        group = words[i:j]
        if len(phones) < len(group):
            raise RuntimeError(f"cannot place the words {group} of {text!r} on {len(phones)} phone(s)")
        letters = np.cumsum([len(w) for w in group]) / sum(len(w) for w in group)
        cuts = [0] + [min(len(phones) - (len(group) - 1 - g), max(g + 1, int(round(f * len(phones)))))
                      for g, f in enumerate(letters[:-1])] + [len(phones)]
        for g, w in enumerate(group):
            out.append((w, phones[cuts[g]][0], phones[cuts[g + 1] - 1][1]))
        i = j
    return out


def synth_speakers(num_train: int, num_dev: int, num_test: int, seed: int = 0) -> list[SynthSpeaker]:
    """Speaker settings for each split: alternating genders, voice x pitch x rate combinations.

    Train speakers cycle through the training voices; dev / test speakers take names from TIMIT's
    dev / core-test lists (same gender letter) and voices that training never uses.
    """
    rng = random.Random(f"speakers-{seed}")
    taken = set(load_speaker_list("dev")) | set(load_speaker_list("test"))
    speakers: list[SynthSpeaker] = []
    for split, count in (("train", num_train), ("dev", num_dev), ("test", num_test)):
        combos = {g: [(v, p, r) for v in VOICES[split][g] for p in PITCHES[split] for r in RATES[split]] for g in "fm"}
        for g in "fm":
            # voices in round-robin order so that few speakers still cover many voices
            rng.shuffle(combos[g])
            combos[g].sort(key=lambda c: VOICES[split][g].index(c[0]))
            by_voice: dict[str, list] = {}
            for c in combos[g]:
                by_voice.setdefault(c[0], []).append(c)
            combos[g] = [c for group in zip(*by_voice.values()) for c in group]
        names = {g: [s for s in load_speaker_list(split) if s[0] == g] for g in "fm"} if split != "train" else None
        for i in range(count):
            g = "fm"[i % 2]
            if i // 2 >= len(combos[g]):
                raise ValueError(f"at most {2 * min(len(c) for c in combos.values())} {split} speakers are available")
            voice, pitch, rate = combos[g][i // 2]
            if split == "train":
                while True:
                    name = g + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3)) + str(rng.randrange(10))
                    if name not in taken:
                        break
            else:
                if i // 2 >= len(names[g]):
                    raise ValueError(f"at most {2 * len(names[g])} {split} speakers are available")
                name = names[g][i // 2]
            taken.add(name)
            speakers.append(SynthSpeaker(name.upper(), g, split, 1 + len(speakers) % 8, f"en-us+{voice}", pitch, rate,
                                         gain=rng.uniform(0.5, 1.0)))
    return speakers


def _write_utterance(spk_dir: Path, stem: str, text: str, speaker: SynthSpeaker, rng: np.random.Generator) -> float:
    audio22, events = espeak_synthesize(text, speaker.voice, pitch=speaker.pitch, rate=speaker.rate)
    # polyphase 22050 -> 16000 (320/441): ~40x faster here than a windowed-sinc resample per call
    wav16 = resample_poly(audio22.astype(np.float32) / 32768.0, 320, 441).astype(np.float32) * speaker.gain
    lead, tail = (int(rng.integers(80, 251)) * SAMPLE_RATE // 1000 for _ in range(2))
    body = len(wav16)
    samples = np.concatenate([np.zeros(lead, np.float32), wav16, np.zeros(tail, np.float32)])
    samples = samples + rng.normal(0.0, 3.0 / 32768.0, len(samples)).astype(np.float32)  # recording noise floor
    segments = _timit_segments(events, len(audio22), text, lead, SAMPLE_RATE / _ESPEAK_RATE)
    total = len(samples)
    # silences at the edges are h#; the last event span runs to the end of the synthesised audio
    segments = [s for s in segments if s[2] > s[1]]
    while segments and segments[0][0] == "pau":
        segments.pop(0)
    while segments and segments[-1][0] == "pau":
        segments.pop()
    segments[-1][2] = min(segments[-1][2], lead + body)
    phones = [["h#", 0, segments[0][1], None]] + segments + [["h#", segments[-1][2], total, None]]
    words = _word_spans(segments, text)
    write_sphere(spk_dir / f"{stem}.WAV", samples, SAMPLE_RATE)
    (spk_dir / f"{stem}.PHN").write_text("".join(f"{s} {e} {lab}\n" for lab, s, e, _ in phones))
    (spk_dir / f"{stem}.WRD").write_text("".join(f"{a} {b} {w}\n" for w, a, b in words))
    (spk_dir / f"{stem}.TXT").write_text(f"0 {total} {text[0].upper()}{text[1:]}.\n")
    return total / SAMPLE_RATE


def build_synth_corpus(out_dir: str | Path, *, speakers: int = 20, utterances: int = 80, eval_speakers: int = 4,
                       eval_utterances: int = 30, seed: int = 0, progress: bool = False) -> SynthResult:
    """Synthesise the offline corpus into ``out_dir/corpus`` and write its manifests into ``out_dir``.

    Args:
        out_dir: output directory (``corpus/`` is replaced if present; manifests land beside it).
        speakers: training speakers (default 20, half female).
        utterances: utterances per training speaker (default 80: 1600 training utterances).
        eval_speakers: speakers in each of dev and test (default 4), voices unseen in training.
        eval_utterances: utterances per dev / test speaker (default 30); sentences unseen in training.
        seed: everything (speaker settings, sentences, silences, noise floor) follows from it.
        progress: show a tqdm bar.

    Returns:
        a :class:`SynthResult` (counts per split, seconds of audio, build time).

    Raises:
        ValueError: sizes out of range.
    """
    if speakers < 2 or eval_speakers < 2:
        raise ValueError(f"need at least 2 training and 2 dev/test speakers (both genders), got {speakers} / {eval_speakers}")
    if utterances < 1 or eval_utterances < 1:
        raise ValueError(f"utterances per speaker must be >= 1, got {utterances} / {eval_utterances}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    corpus = out_dir / "corpus"
    if corpus.exists():
        shutil.rmtree(corpus)
    spk_list = synth_speakers(speakers, eval_speakers, eval_speakers, seed)
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
    proc = subprocess.run([sys.executable, "-c", "from hardalign.data.synth import _worker_main; _worker_main()"],
                          input=payload, stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_package_root(), os.environ.get("PYTHONPATH")]))})
    if proc.returncode != 0:
        raise RuntimeError(f"the espeak-ng synthesis worker failed (exit status {proc.returncode}); see its error above")
    seconds = float(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"])
    result = prepare_timit(corpus, out_dir)
    return SynthResult(out_dir, corpus, spk_list, result.counts(), seconds, time.perf_counter() - started)


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


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


def hash_name(name: str) -> int:
    """A stable (process-independent) integer for a name (Python's ``hash`` is salted per process)."""
    return int.from_bytes(name.encode(), "little") % (2 ** 31)
