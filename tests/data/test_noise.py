"""Added noise and the two-speaker mix: SNR accuracy, seeding, frozen conditions, disjoint noise files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch

from hardalign.data import load_speech_dataset, read_audio, read_manifest
from hardalign.data.noise import (
    NoiseConfig,
    NoiseMixer,
    add_at_snr,
    check_noise_options,
    colored_noise,
    measure_snr,
    noise_files,
    parse_eval_noise,
    parse_noise_list,
    parse_noise_spec,
)


@pytest.fixture
def noise_dir(tmp_path):
    d = tmp_path / "noises"
    d.mkdir()
    rng = np.random.default_rng(0)
    for k, rate in enumerate([8000, 16000, 44100, 22050]):
        soundfile.write(str(d / f"n{k}.wav"), 0.1 * rng.standard_normal(rate // 2).astype(np.float32), rate)
    soundfile.write(str(d / "n4.flac"), 0.1 * rng.standard_normal(3000).astype(np.float32), 16000)
    return d


def _mixer(prepared, split, config):
    return NoiseMixer(config, read_manifest(prepared / f"{split}.jsonl"), split=split, manifest_dir=prepared)


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "babble", "dir"])
@pytest.mark.parametrize("snr", [20.0, 5.0, 0.0, -5.0])
def test_snr_within_0_05_db(prepared, noise_dir, kind, snr):
    noise = f"dir:{noise_dir}" if kind == "dir" else kind
    mixer = _mixer(prepared, "train", NoiseConfig(noise, snr))
    rec = mixer.records["fcjf0_si1027"]
    clean, _ = read_audio(rec["audio"])
    cond = mixer.condition(rec, epoch=3)
    noisy = mixer.apply(clean, rec, cond)
    assert noisy.dtype == np.float32 and noisy.shape == clean.shape
    assert abs(measure_snr(clean, noisy.astype(np.float64) - clean) - snr) < 0.05


def test_colored_noise_spectra():
    rng = np.random.default_rng(1)
    slopes = {}
    for kind in ("white", "pink", "brown"):
        x = colored_noise(kind, 1 << 16, rng)
        assert abs(np.sqrt(np.mean(x ** 2)) - 1) < 1e-9
        f = np.arange(1, (1 << 15))
        p = np.abs(np.fft.rfft(x))[1:(1 << 15)] ** 2
        slopes[kind] = np.polyfit(np.log(f[100:]), np.log(p[100:] + 1e-30), 1)[0]
    assert abs(slopes["white"]) < 0.1 and abs(slopes["pink"] + 1) < 0.1 and abs(slopes["brown"] + 2) < 0.1


def test_seeding_by_epoch_and_utterance(prepared):
    mixer = _mixer(prepared, "train", NoiseConfig("white", "0:15", seed=4))
    rec = mixer.records["fcjf0_si1027"]
    clean, _ = read_audio(rec["audio"])
    a = mixer.apply(clean, rec, mixer.condition(rec, 1))
    b = _mixer(prepared, "train", NoiseConfig("white", "0:15", seed=4)).apply(clean, rec, mixer.condition(rec, 1))
    assert np.array_equal(a, b)  # same epoch and utterance: same mixture, even from a fresh mixer
    c1, c2 = mixer.condition(rec, 1), mixer.condition(rec, 2)
    assert c1 != c2 and 0 <= c1["snr"] <= 15 and 0 <= c2["snr"] <= 15
    other = mixer.condition(mixer.records["fcjf0_sx127"], 1)
    assert other["seed"] != c1["seed"]
    assert _mixer(prepared, "train", NoiseConfig("white", "0:15", seed=5)).condition(rec, 1) != c1


def test_test_conditions_frozen(prepared, noise_dir):
    config = NoiseConfig(f"dir:{noise_dir}", "0:15")
    mixer = _mixer(prepared, "dev", config)
    path = prepared / "conditions" / f"dev-{config.tag()}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["id"] for r in rows} == set(mixer.records)
    assert all({"file", "offset", "snr", "seed"} <= set(r) for r in rows)
    rec = mixer.records[rows[0]["id"]]
    assert mixer.condition(rec, epoch=0) == mixer.condition(rec, epoch=7) == rows[0]
    # the frozen file wins over a fresh draw: edit it and the edit is used
    rows[0]["snr"] = 3.25
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _mixer(prepared, "dev", config).condition(rec)["snr"] == 3.25
    assert set(noise_files(noise_dir)["dev"]) >= {r["file"] for r in rows}


def test_noise_files_disjoint(noise_dir, tmp_path):
    split = noise_files(noise_dir)
    assert sum(len(v) for v in split.values()) == 5 and all(split.values())
    assert not set(split["train"]) & (set(split["dev"]) | set(split["test"]))
    assert not set(split["dev"]) & set(split["test"])
    few = tmp_path / "few"
    few.mkdir()
    soundfile.write(str(few / "a.wav"), np.ones(100, np.float32) * 0.1, 16000)
    with pytest.raises(ValueError, match="at least 3"):
        noise_files(few)


def test_multispeaker_mix(prepared):
    mixer = _mixer(prepared, "train", NoiseConfig(mix_speaker=0.25))
    rec = mixer.records["fcjf0_si1027"]
    cond = mixer.condition(rec, 0)
    partner = mixer.records[cond["mix_partner"]]
    assert partner["gender"] == "m" and cond == mixer.condition(rec, 5)  # fixed partner
    clean, _ = read_audio(rec["audio"])
    other, _ = read_audio(partner["audio"])
    mixed = mixer.apply(clean, rec, cond)
    added = mixed.astype(np.float64) - clean
    n = min(len(clean), len(other))
    # the partner is level-matched to the primary and scaled by 0.25 (-12.04 dB)
    assert abs(measure_snr(clean, added[:n] if n < len(clean) else added) - 20 * np.log10(4)) < 0.1
    with pytest.raises(ValueError, match="opposite-gender"):
        _mixer(prepared, "dev", NoiseConfig(mix_speaker=0.1))  # dev holds one female speaker only


def test_dataset_with_noise(prepared):
    clean = load_speech_dataset(prepared, "train", cache_dir=None)
    noisy = load_speech_dataset(prepared, "train", noise=NoiseConfig("pink", 0), cache_dir=None)
    a = noisy[0]["features"]
    noisy.set_epoch(1)
    b = noisy[0]["features"]
    noisy.set_epoch(0)
    assert torch.equal(noisy[0]["features"], a) and not torch.equal(a, b)
    assert not torch.equal(a, clean[0]["features"]) and a.shape == clean[0]["features"].shape
    assert torch.equal(noisy[0]["targets"], clean[0]["targets"])


def test_bad_options_named(tmp_path):
    with pytest.raises(ValueError, match="--noise"):
        NoiseConfig("violet")
    with pytest.raises(ValueError, match="--snr"):
        NoiseConfig("white", "ten")
    with pytest.raises(ValueError, match="does not exist"):
        NoiseConfig(f"dir:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="--mix-speaker"):
        NoiseConfig(mix_speaker=2.0)
    with pytest.raises(ValueError, match="silent"):
        add_at_snr(np.ones(10), np.zeros(10), 0.0)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("pink:0:15", ("pink", "0:15")),
        ("white:10", ("white", "10")),
        ("babble:-5", ("babble", "-5")),
        ("brown:-5:5", ("brown", "-5:5")),
    ],
)
def test_parse_noise_spec(spec, expected):
    assert parse_noise_spec(spec, key="eval_noise") == expected


def test_parse_dir_spec_with_colons(noise_dir):
    assert parse_noise_list(f"dir:{noise_dir},white") == (f"dir:{noise_dir}", "white")
    assert parse_eval_noise(f"dir:{noise_dir}:5,white:0") == [(f"dir:{noise_dir}", 5.0), ("white", 0.0)]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"noise": "foo"}, r"noise='foo': unknown noise type 'foo'"),
        ({"noise": "white,pinkk"}, r"noise='pinkk': unknown noise type 'pinkk'; did you mean 'pink'\?"),
        ({"noise": "pink:0:15"}, r"the SNR is its own option: --noise pink --snr 0:15"),
        ({"noise": "dir:/does/not/exist:0:10"}, r"--noise dir:/does/not/exist --snr 0:10"),
        ({"noise": "dir:/does/not/exist"}, r"noise='dir:/does/not/exist': noise folder '/does/not/exist' does not exist"),
        ({"snr": "high"}, r"--snr must be a number of dB or a range lo:hi"),
        ({"snr": "15:0"}, r"low end above its high end"),
        ({"snr": "620"}, r"outside \[-50, 100\] dB.*base-60"),
        ({"clean_fraction": 1.5}, r"clean_fraction=1.5: must be in \[0, 1\]"),
        ({"mix_speaker": 2.0}, r"mix_speaker=2.0: must be in \[0, 1\]"),
        ({"eval_noise": "white:10,violet:0"}, r"eval_noise='violet:0': unknown noise type 'violet'"),
        ({"eval_noise": "dir:/missing:10"}, r"noise folder '/missing' does not exist"),
        ({"eval_noise": "white:0:10"}, r"eval_noise='white:0:10': expected TYPE:SNR"),
    ],
)
def test_noise_options_checked_up_front(options, message):
    with pytest.raises(ValueError, match=message):
        check_noise_options(**options)


def test_noise_folder_checked_by_content(tmp_path, noise_dir):
    (noise_dir / "README.txt").write_text("not audio, not named as audio: skipped")
    assert len(sum(noise_files(noise_dir).values(), [])) == 5
    (noise_dir / "fake.wav").write_bytes(b"RIFF....WAVEjunk" * 10)
    with pytest.raises(ValueError, match=r"fake.wav.*not readable audio"):
        check_noise_options(noise=f"dir:{noise_dir}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"holds 0 audio file"):
        check_noise_options(eval_noise=f"dir:{empty}:10")
