"""Factories for tiny generated TIMIT-shaped corpora (no shipped audio)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from hardalign.data.audio import write_sphere

LABELS = ["h#", "sh", "iy", "hv", "ae", "dcl", "d", "q", "y", "axr", "h#"]


def _audio(num_samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / 16000
    tone = 0.2 * np.sin(2 * np.pi * (150 + 20 * seed) * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (tone + 0.01 * rng.standard_normal(num_samples)).astype(np.float32)


def write_utterance(spk_dir: Path, stem: str, *, upper: bool, seed: int, num_samples: int = 8000,
                    riff: bool = False, labels=LABELS, rate: int = 16000, phn: bool = True,
                    phn_end: int | None = None) -> None:
    spk_dir.mkdir(parents=True, exist_ok=True)
    name = stem.upper() if upper else stem.lower()
    ext = (lambda e: e.upper() if upper else e.lower())
    wav = _audio(num_samples, seed)
    if riff:
        soundfile.write(str(spk_dir / f"{name}{ext('.wav')}"), wav, rate, subtype="PCM_16", format="WAV")
    else:
        write_sphere(spk_dir / f"{name}{ext('.wav')}", wav, rate)
    bounds = np.linspace(0, num_samples if phn_end is None else phn_end, len(labels) + 1).astype(int)
    if phn:
        (spk_dir / f"{name}{ext('.phn')}").write_text(
            "".join(f"{bounds[i]} {bounds[i + 1]} {lab}\n" for i, lab in enumerate(labels)))
    w = np.linspace(0, num_samples, 4).astype(int)
    (spk_dir / f"{name}{ext('.wrd')}").write_text(f"{w[1]} {w[2]} she\n{w[2]} {w[3]} had\n")
    (spk_dir / f"{name}{ext('.txt')}").write_text(f"0 {num_samples} She had.\n")


def make_tree(root: Path, *, bad: bool = False) -> Path:
    """TRAIN in upper case, test in lower case; an SA file, a RIFF .WAV, unused test speakers."""
    train = root / "TRAIN"
    write_utterance(train / "DR1" / "FCJF0", "SI1027", upper=True, seed=1)
    write_utterance(train / "DR1" / "FCJF0", "SX127", upper=True, seed=2, num_samples=9000)
    write_utterance(train / "DR1" / "FCJF0", "SA1", upper=True, seed=3)
    write_utterance(train / "DR2" / "MABC0", "SX10", upper=True, seed=4, riff=True)
    test = root / "test"
    write_utterance(test / "dr1" / "faks0", "si943", upper=False, seed=5)  # dev speaker
    write_utterance(test / "dr1" / "faks0", "sx43", upper=False, seed=6)
    write_utterance(test / "dr1" / "faks0", "sa2", upper=False, seed=7)
    write_utterance(test / "dr2" / "mdab0", "si1039", upper=False, seed=8)  # core-test speaker
    write_utterance(test / "dr3" / "mxyz0", "si100", upper=False, seed=9)  # in neither list
    if bad:
        spk = train / "DR3" / "MBAD0"
        write_utterance(spk, "SI1", upper=True, seed=10)
        wav = spk / "SI1.WAV"
        wav.write_bytes(wav.read_bytes()[:-3000])  # truncated payload
        write_utterance(spk, "SI2", upper=True, seed=11, phn=False)  # missing .PHN
        write_utterance(spk, "SI3", upper=True, seed=12, labels=["h#", "xx", "h#"])  # label outside the set
        write_utterance(spk, "SI4", upper=True, seed=13, phn_end=9000)  # times past the end
        write_utterance(spk, "SI5", upper=True, seed=14, rate=8000)  # wrong sample rate
        (spk / "SI6.WAV").write_bytes(b"garbage, not audio at all" * 10)  # unreadable
        (spk / "SI6.PHN").write_text("0 100 h#\n")
    return root


@pytest.fixture
def timit_tree(tmp_path) -> Path:
    # the root path itself contains "train": split detection must use components below the root
    return make_tree(tmp_path / "train_copy" / "timit")


@pytest.fixture
def bad_timit_tree(tmp_path) -> Path:
    return make_tree(tmp_path / "bad" / "timit", bad=True)


@pytest.fixture
def prepared(timit_tree, tmp_path) -> Path:
    from hardalign.data import prepare_timit

    out = tmp_path / "prepared"
    prepare_timit(timit_tree, out)
    return out
