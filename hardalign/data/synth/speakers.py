"""Speaker design of the offline corpus: voice variant x pitch x rate, both genders.

``espeakPITCH`` / ``espeakRATE`` are set *after* each voice switch (which resets them). Dev and
test speakers use voice variants, pitches and rates that never occur in training and carry names
from TIMIT's dev / core-test speaker lists, so that the standard split rules select them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hardalign.data.phones import load_speaker_list

__all__ = ["VOICES", "PITCHES", "RATES", "SynthSpeaker", "synth_speakers", "hash_name"]

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


def hash_name(name: str) -> int:
    """A stable (process-independent) integer for a name (Python's ``hash`` is salted per process)."""
    return int.from_bytes(name.encode(), "little") % (2 ** 31)
