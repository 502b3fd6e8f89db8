"""TIMIT preparation: splits, exclusions, header sniffing, error reports, phone maps, scoring."""

from __future__ import annotations

import json

import pytest
import torchaudio.functional as AF

import argparse

from hardalign.cli import Commands
from hardalign.data import (
    PrepareError,
    Vocabulary,
    audio_info,
    fold_phones,
    load_speaker_list,
    phone_error_rate,
    phone_map,
    phone_set,
    prepare_timit,
    read_audio,
    read_manifest,
    reference_token_count,
)
from hardalign.data.audio import sniff_format
from hardalign.data.scoring import align_counts

# the Kaldi egs/timit/s5 conventions (docs/speech-data.md section 1), written out independently of the shipped map file
_FOLD_39 = {"bcl": "sil", "dcl": "sil", "gcl": "sil", "pcl": "sil", "tcl": "sil", "kcl": "sil", "h#": "sil",
            "pau": "sil", "epi": "sil", "ao": "aa", "ax": "ah", "ax-h": "ah", "axr": "er", "ix": "ih", "ux": "uw",
            "el": "l", "em": "m", "en": "n", "nx": "n", "eng": "ng", "hv": "hh", "zh": "sh", "q": None}
_TIMIT_61 = ("aa ae ah ao aw ax ax-h axr ay b bcl ch d dcl dh dx eh el em en eng epi er ey f g gcl h# hh hv ih ix "
             "iy jh k kcl l m n ng nx ow oy p pau pcl q r s sh t tcl th uh uw ux v w y z zh").split()


def test_splits_and_exclusions(prepared, timit_tree):
    train, dev, test = (read_manifest(prepared / f"{s}.jsonl") for s in ("train", "dev", "test"))
    assert [r["id"] for r in train] == ["fcjf0_si1027", "fcjf0_sx127", "mabc0_sx10"]
    assert [r["id"] for r in dev] == ["faks0_si943", "faks0_sx43"]
    assert [r["id"] for r in test] == ["mdab0_si1039"]
    info = json.loads((prepared / "prepare.json").read_text())
    assert info["excluded_sa"] == 2 and info["unused_test"] == 1 and info["skipped"] == []
    rec = train[0]
    assert rec["speaker"] == "fcjf0" and rec["gender"] == "f" and rec["dialect"] == "dr1"
    assert rec["audio"].startswith("/") and rec["audio"].endswith("SI1027.WAV")
    assert rec["num_samples"] == 8000 and rec["sample_rate"] == 16000
    assert rec["phones"][:3] == ["h#", "sh", "iy"] and rec["phone_ends"][-1] == 8000
    assert len(rec["phone_ends"]) == len(rec["phones"]) == len(rec["phone_starts"])
    assert rec["words"] == ["she", "had"] and rec["text"] == "She had."
    # the root path contains "train", yet no test speaker lands in train
    assert "train" in str(timit_tree)
    assert not {r["speaker"] for r in train} & {r["speaker"] for r in dev + test}


def test_riff_named_wav_is_sniffed(prepared):
    rec = next(r for r in read_manifest(prepared / "train.jsonl") if r["id"] == "mabc0_sx10")
    assert rec["audio"].endswith(".WAV") and sniff_format(rec["audio"]) == "riff"
    samples, rate = read_audio(rec["audio"])
    assert rate == 16000 and samples.shape == (8000,)
    sph = read_manifest(prepared / "train.jsonl")[0]["audio"]
    assert sniff_format(sph) == "sphere" and audio_info(sph).num_samples == 8000
    a, _ = read_audio(sph)
    assert abs(float(a.std()) - float(samples.std())) < 0.05  # both decode to [-1, 1] scale


def test_every_problem_reported_in_one_pass(bad_timit_tree, tmp_path):
    with pytest.raises(PrepareError) as err:
        prepare_timit(bad_timit_tree, tmp_path / "out")
    text = str(err.value)
    expected = {
        "SI1.WAV": "truncated",
        "SI2.PHN": "missing .PHN",
        "SI3.PHN": "outside the 61-phone",
        "SI4.PHN": "past the end",
        "SI5.WAV": "sample rate 8000",
        "SI6.WAV": "unreadable",
    }
    for name, phrase in expected.items():
        assert any(name in p.path and phrase in p.message for p in err.value.problems), (name, text)
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_cli_exit_status_and_skip_bad(bad_timit_tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["prepare", "timit", str(bad_timit_tree), "--out", str(out)]) == 1
    assert "truncated" in capsys.readouterr().err
    assert cli_main(["prepare", "timit", str(bad_timit_tree), "--out", str(out), "--skip-bad"]) == 0
    info = json.loads((out / "prepare.json").read_text())
    assert sorted(info["skipped"]) == [f"mbad0_si{i}" for i in range(1, 7)]
    assert len(read_manifest(out / "train.jsonl")) == 3  # the good ones stay


def cli_main(argv) -> int:
    """Run only this area's subcommands (other areas' modules may not exist yet)."""
    from hardalign.data.cli import register

    parser = argparse.ArgumentParser(prog="hardalign")
    register(Commands(parser))
    args = parser.parse_args(argv)
    return args.func(args)


def test_all_61_mapping_rows():
    assert sorted(phone_set(61)) == sorted(_TIMIT_61)
    m39, m48 = phone_map(39), phone_map(48)
    assert len(m39) == len(m48) == 61
    for p in _TIMIT_61:
        assert m39[p] == _FOLD_39.get(p, p), p
    assert m48["q"] is None and m48["bcl"] == "vcl" and m48["pcl"] == "cl" and m48["ix"] == "ix"
    assert len(set(phone_set(39))) == 39 and len(set(phone_set(48))) == 48
    # 48 -> 39 folding agrees with the 61 -> 39 map
    for p in _TIMIT_61:
        if m48[p] is not None:
            assert fold_phones([m48[p]], 39) == [m39[p]]


def test_speaker_lists_and_vocabulary():
    dev, test = load_speaker_list("dev"), load_speaker_list("test")
    assert len(set(dev)) == 50 and len(set(test)) == 24 and not set(dev) & set(test)
    v = Vocabulary.phones(61)
    assert "q" not in v and len(v.symbols) == 60 and v.eos_id == 61 and v.pad_id == 0
    ids = v.encode(["h#", "aa", "zh"])
    assert min(ids) >= 1 and v.decode(ids + [v.eos_id, 5]) == ["h#", "aa", "zh"]
    with pytest.raises(KeyError, match="'q'"):
        v.encode(["q"])


def test_scoring_counts_agree_with_torchaudio():
    refs = [["h#", "sh", "iy", "hv", "ae", "dcl", "d", "h#"], ["h#", "ao", "q", "pau", "epi", "h#"]]
    hyps = [["sil", "s", "iy", "ae", "d", "d", "sil"], ["sil", "aa", "sil"]]
    counts = phone_error_rate(hyps, refs)
    folded = [(fold_phones(h), fold_phones(r)) for h, r in zip(hyps, refs)]
    assert counts.errors == sum(AF.edit_distance(r, h) for h, r in folded)
    assert counts.ref_tokens == 8 + 5 and counts.utterances == 2
    assert (counts.substitutions, counts.deletions, counts.insertions) == (2, 3, 0)
    merged = phone_error_rate(hyps, refs, merge_sil=True)
    assert merged.ref_tokens == 8 + 3 and merged.errors == 3
    assert align_counts([], ["a", "b"]) == (0, 2, 0) and align_counts(["a"], []) == (0, 0, 1)
    with pytest.raises(ValueError, match="2 hypotheses but 1"):
        phone_error_rate(hyps, refs[:1])


def test_reference_token_count(prepared):
    recs = read_manifest(prepared / "train.jsonl")
    # 11 labels per utterance, one q deleted
    assert reference_token_count(recs) == 3 * 10


def test_full_test_side_gives_kaldi_split_sizes(tmp_path):
    """All 168 TEST speakers x 10 sentences (2 SA, 3 SI, 5 SX) -> dev 400 and core test 192."""
    import numpy as np

    from hardalign.data.audio import write_sphere

    dev, core = load_speaker_list("dev"), load_speaker_list("test")
    others = [f"{'fm'[k % 2]}zz{k:02d}" for k in range(168 - len(dev) - len(core))]
    root = tmp_path / "TIMIT"
    wav = np.zeros(480, np.float32)
    for k, spk in enumerate(list(dev) + list(core) + others):
        d = root / "TEST" / f"DR{1 + k % 8}" / spk.upper()
        d.mkdir(parents=True)
        for stem in ["SA1", "SA2", "SI1", "SI2", "SI3", "SX1", "SX2", "SX3", "SX4", "SX5"]:
            write_sphere(d / f"{stem}.WAV", wav)
            (d / f"{stem}.PHN").write_text("0 480 h#\n")
            (d / f"{stem}.WRD").write_text("0 480 x\n")
            (d / f"{stem}.TXT").write_text("0 480 x.\n")
    train = root / "TRAIN" / "DR1" / "MTRN0"
    train.mkdir(parents=True)
    for stem in ["SA1", "SI1", "SX1"]:
        write_sphere(train / f"{stem}.WAV", wav)
        (train / f"{stem}.PHN").write_text("0 480 h#\n")
        (train / f"{stem}.WRD").write_text("0 480 x\n")
        (train / f"{stem}.TXT").write_text("0 480 x.\n")
    result = prepare_timit(root, tmp_path / "out")
    assert result.counts() == {"train": 2, "dev": 400, "test": 192}
    assert result.excluded_sa == 2 * 168 + 1 and result.unused_test == 8 * len(others)
