"""Faults in the corpus: damaged audio and label files, wrong rates, impossible alignments, noise files.

Each row adds one bad utterance (or noise folder) next to a corpus that was already prepared; the
preparation must name the file and what is wrong, and the manifests written before must be
untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile

from tests.data.conftest import LABELS, make_tree, write_utterance
from tests.faults.conftest import assert_kept, hardalign, snapshot

BAD = ("TRAIN", "DR3", "MBAD0")


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def truncated_sphere(spk: Path) -> None:
    write_utterance(spk, "SI1", upper=True, seed=10)
    _truncate(spk / "SI1.WAV", 1024 + 2000)  # header and 1000 of 8000 samples


def truncated_riff(spk: Path) -> None:
    write_utterance(spk, "SI1", upper=True, seed=10, riff=True)
    _truncate(spk / "SI1.WAV", 44 + 3000)


def garbage_audio(spk: Path) -> None:
    write_utterance(spk, "SI1", upper=True, seed=10)
    (spk / "SI1.WAV").write_bytes(b"\x00\x01garbage, not audio" * 50)


def wrong_rate(spk: Path) -> None:
    write_utterance(spk, "SI1", upper=True, seed=10, rate=8000)


def missing_labels(spk: Path) -> None:
    write_utterance(spk, "SI1", upper=True, seed=10, phn=False)


def unknown_phone(spk: Path) -> None:
    write_utterance(spk, "SI1", upper=True, seed=10, labels=["h#", "zz", "h#"])


def labels_past_end(spk: Path) -> None:
    write_utterance(spk, "SI1", upper=True, seed=10, phn_end=12000)


def corrupt_label_line(spk: Path) -> None:
    write_utterance(spk, "SI1", upper=True, seed=10)
    (spk / "SI1.PHN").write_text("0 100 h#\n100 two-hundred sh\n")


def empty_labels(spk: Path) -> None:
    write_utterance(spk, "SI1", upper=True, seed=10)
    (spk / "SI1.PHN").write_text("")


def binary_labels(spk: Path) -> None:
    write_utterance(spk, "SI1", upper=True, seed=10)
    (spk / "SI1.PHN").write_bytes(b"\xff\xfe\x00garbage\x80")


@dataclass
class CorpusFault:
    id: str
    make: Callable[[Path], None]
    file: str  # the file the message must name
    message: str  # regex


CORPUS_FAULTS = [
    CorpusFault("truncated-sphere-audio", truncated_sphere, "SI1.WAV", r"truncated: header promises 8000 samples"),
    CorpusFault("truncated-riff-audio", truncated_riff, "SI1.WAV", r"truncated: RIFF data chunk declares"),
    CorpusFault("corrupt-audio", garbage_audio, "SI1.WAV", r"unreadable audio"),
    CorpusFault("wrong-sample-rate", wrong_rate, "SI1.WAV", r"sample rate 8000 Hz, expected 16000"),
    CorpusFault("missing-labels", missing_labels, "SI1.PHN", r"missing \.PHN file"),
    CorpusFault("unknown-phone", unknown_phone, "SI1.PHN", r"labels outside the 61-phone TIMIT set: zz"),
    CorpusFault("labels-past-end-of-audio", labels_past_end, "SI1.PHN", r"run past the end of the audio: last end 12000 > 8000"),
    CorpusFault("corrupt-label-line", corrupt_label_line, "SI1.PHN", r"line 2: start/end are not integers"),
    CorpusFault("empty-label-file", empty_labels, "SI1.PHN", r"empty \.PHN file"),
    CorpusFault("binary-label-file", binary_labels, "SI1.PHN", r"unreadable \.PHN file"),
]


@pytest.mark.parametrize("fault", CORPUS_FAULTS, ids=lambda f: f.id)
def test_corpus_fault_is_named_and_prepared_data_kept(fault, tmp_path):
    root = make_tree(tmp_path / "timit")
    out = tmp_path / "prepared"
    assert hardalign("prepare", "timit", root, "--out", out)[0] == 0
    before = snapshot(out)
    fault.make(root.joinpath(*BAD))
    status, err = hardalign("prepare", "timit", root, "--out", out)
    assert status != 0
    line = next((x for x in err.splitlines() if fault.file in x), "")
    assert re.search(fault.message, line), err
    assert_kept(before, out)
    # --skip-bad keeps the good utterances and leaves the bad one out, by name
    status, err = hardalign("prepare", "timit", root, "--out", tmp_path / "skipped", "--skip-bad")
    assert status == 0 and "MBAD0/SI1" in err


def test_more_labels_than_frames(tmp_path):
    """An utterance with fewer model steps than labels + EOS cannot be aligned: named before training."""
    from hardalign.data import UnalignableError, load_speech_dataset, prepare_timit

    root = make_tree(tmp_path / "timit")
    write_utterance(root.joinpath(*BAD), "SI1", upper=True, seed=10, num_samples=800, labels=LABELS)  # 5 frames, 11 labels
    out = tmp_path / "prepared"
    prepare_timit(root, out)
    before = snapshot(out)
    with pytest.raises(UnalignableError, match=r"mbad0_si1 \(\d+ steps < \d+ labels \+ EOS\).*on_short='skip'"):
        load_speech_dataset(out, "train", cache_dir=None)
    assert len(load_speech_dataset(out, "train", cache_dir=None, on_short="skip")) == 3
    assert {k: v for k, v in snapshot(out).items() if k in before} == before


def test_noise_file_shorter_than_the_utterance(tmp_path):
    """A 0.05 s noise recording under a 0.5 s utterance is looped, at the requested SNR."""
    from hardalign.data import prepare_timit, read_audio, read_manifest
    from hardalign.data.noise import NoiseConfig, NoiseMixer, measure_snr

    root = make_tree(tmp_path / "timit")
    out = tmp_path / "prepared"
    prepare_timit(root, out)
    noises = tmp_path / "noises"
    noises.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        soundfile.write(str(noises / f"short{k}.wav"), 0.1 * rng.standard_normal(800).astype(np.float32), 16000)
    mixer = NoiseMixer(NoiseConfig(f"dir:{noises}", 5.0), read_manifest(out / "train.jsonl"), split="train")
    record = mixer.records["fcjf0_si1027"]
    clean, _ = read_audio(record["audio"])
    noisy = mixer.apply(clean, record, mixer.condition(record, 0))
    assert noisy.shape == clean.shape and len(clean) == 8000
    assert abs(measure_snr(clean, noisy.astype(np.float64) - clean) - 5.0) < 0.05
