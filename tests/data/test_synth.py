"""The offline espeak-ng corpus: TIMIT layout, SPHERE headers, labels, determinism, held-out speakers/text."""

from __future__ import annotations

import hashlib
import inspect

import pytest

from hardalign.data import load_speech_dataset, phone_set, read_manifest
from hardalign.data.phones import load_speaker_list
from hardalign.data.audio import audio_info
from hardalign.data.synth import (
    ACCENTS,
    ESPEAK_TO_TIMIT,
    VOICES,
    build_synth_corpus,
    espeak_synthesize,
    synth_speakers,
    timit_mapping,
)
from hardalign.data.synth.text import TEMPLATES, lexicon

SMALL = dict(speakers=2, utterances=3, eval_speakers=2, eval_utterances=2)
#: sha1 of the default speaker list (names, voices, pitches, rates, levels) at the default sizes, seed 0, as
#: before the alternate voice pool existed (checked against that code): the default corpus must not change
DEFAULT_SPEAKERS_SHA1 = "8d017c16b760a1e9bc53bd40975a0eac2a69202c"


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return build_synth_corpus(out, seed=7, **SMALL)


def _digest(corpus_dir):
    h = hashlib.sha1()
    for p in sorted(corpus_dir.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(corpus_dir)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_layout_is_read_by_prepare_timit(small_corpus):
    out = small_corpus.out_dir
    assert small_corpus.counts == {"train": 6, "dev": 4, "test": 4}
    train = read_manifest(out / "train.jsonl")
    dev, test = read_manifest(out / "dev.jsonl"), read_manifest(out / "test.jsonl")
    assert {r["gender"] for r in train} == {"f", "m"} and {r["gender"] for r in dev} == {"f", "m"}
    wavs = sorted(small_corpus.corpus_dir.rglob("*.WAV"))
    assert len(wavs) == 14 and all(p.parts[-4] in ("TRAIN", "TEST") and p.parts[-3].startswith("DR") for p in wavs)
    for p in wavs:
        head = p.read_bytes()[:1024]
        assert head.startswith(b"NIST_1A\n   1024\n") and b"end_head" in head
        info = audio_info(p)
        assert info.sample_rate == 16000 and p.stat().st_size == 1024 + 2 * info.num_samples
    for rec in train + dev + test:
        assert set(rec["phones"]) <= set(phone_set(61))
        assert rec["phones"][0] == rec["phones"][-1] == "h#"
        assert rec["phone_starts"][0] == 0 and rec["phone_ends"][-1] == rec["num_samples"]
        assert rec["phone_starts"][1:] == rec["phone_ends"][:-1]  # contiguous, no gaps
        assert all(e > s for s, e in zip(rec["phone_starts"], rec["phone_ends"]))
        assert rec["words"] == rec["text"].rstrip(".").lower().split()
        assert all(s < e for s, e in zip(rec["word_starts"], rec["word_ends"]))


def test_held_out_speakers_and_sentences(small_corpus):
    out = small_corpus.out_dir
    train = read_manifest(out / "train.jsonl")
    held = read_manifest(out / "dev.jsonl") + read_manifest(out / "test.jsonl")
    assert not {r["text"] for r in train} & {r["text"] for r in held}
    settings = {s.name.lower(): (s.voice, s.pitch, s.rate) for s in small_corpus.speakers}
    train_voices = {settings[r["speaker"]][0] for r in train}
    assert not train_voices & {settings[r["speaker"]][0] for r in held}
    assert not {settings[r["speaker"]] for r in train} & {settings[r["speaker"]] for r in held}


def test_deterministic_per_seed(small_corpus, tmp_path):
    again = build_synth_corpus(tmp_path / "again", seed=7, **SMALL)
    assert _digest(again.corpus_dir) == _digest(small_corpus.corpus_dir)
    other = build_synth_corpus(tmp_path / "other", seed=8, **SMALL)
    assert _digest(other.corpus_dir) != _digest(small_corpus.corpus_dir)


def test_dataset_on_synth_corpus(small_corpus):
    ds = load_speech_dataset(small_corpus.out_dir, "test", cache_dir=None)
    item = ds[0]
    assert item["features"].shape[1] == 369 and item["features"].shape[0] > len(item["targets"]) + 1


def test_difficulty_proxy_runs_on_a_corpus(small_corpus):
    from hardalign.data.synth.difficulty import frame_error_by_speaker

    errors = frame_error_by_speaker(small_corpus.out_dir, train_per_speaker=2, eval_per_speaker=1, epochs=1)
    assert set(errors) == {"dev", "test"} and all(len(per) == 2 for per in errors.values())
    assert all(0.0 <= e <= 100.0 for per in errors.values() for e in per.values())


def test_default_size_and_speaker_settings():
    sig = inspect.signature(build_synth_corpus).parameters
    assert sig["speakers"].default * sig["utterances"].default >= 1500 and sig["speakers"].default >= 10
    spk = synth_speakers(sig["speakers"].default, sig["eval_speakers"].default, sig["eval_speakers"].default, seed=0)
    train = [s for s in spk if s.split == "train"]
    assert len({(s.voice, s.pitch, s.rate) for s in train}) == len(train)
    assert len({s.voice for s in train}) >= 10 and {s.gender for s in train} == {"f", "m"}
    assert {s.accent for s in train} == set(ACCENTS)
    variants = {split: {s.voice.split("+")[1] for s in spk if s.split == split} for split in ("train", "dev", "test")}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not set(VOICES[a]["f"] + VOICES[a]["m"]) & set(VOICES[b]["f"] + VOICES[b]["m"])
        assert not variants[a] & variants[b]
    assert len({s.name for s in spk}) == len(spk)


@pytest.mark.parametrize("num_eval", [2, 8, 13, 16])
def test_eval_splits_are_twins_with_the_same_mix(num_eval):
    spk = synth_speakers(4, num_eval, num_eval, seed=1)
    dev, test = ([s for s in spk if s.split == split] for split in ("dev", "test"))
    assert len(dev) == len(test) == num_eval
    for d, t in zip(dev, test):
        assert (d.gender, d.accent, d.dialect, d.pitch, d.rate, d.gain) == (t.gender, t.accent, t.dialect, t.pitch,
                                                                             t.rate, t.gain)
        assert d.voice != t.voice
    assert len({(s.voice, s.pitch, s.rate) for s in dev}) == num_eval  # no two identical speakers


def test_default_eval_splits():
    sig = inspect.signature(build_synth_corpus).parameters
    n, utts = sig["eval_speakers"].default, sig["eval_utterances"].default
    assert n >= 8 and 120 <= n * utts <= 250
    spk = synth_speakers(sig["speakers"].default, n, n, seed=0)
    for split in ("dev", "test"):
        held = [s for s in spk if s.split == split]
        assert len(held) == n and len({s.voice for s in held}) == n
        assert [s.gender for s in held].count("f") == n // 2 and {s.accent for s in held} == set(ACCENTS)
        # the names select these speakers under the standard split rules
        assert {s.name.lower() for s in held} <= set(load_speaker_list(split))


def test_default_eval_voices_are_the_documented_ones():
    # docs/speech-data.md's voice table; the pairs were chosen by measured difficulty, so a change here is a
    # change of the corpus design: re-run `python -m hardalign.data.synth.difficulty` and update the docs
    spk = synth_speakers(20, 8, 8, seed=0)
    table = {split: [(s.name, s.voice, s.pitch, s.rate) for s in spk if s.split == split] for split in ("dev", "test")}
    assert table["dev"] == [
        ("FAKS0", "en-us+steph3", 36, 150), ("MGWT0", "en-us-nyc+m4", 48, 150), ("FDAC1", "en+belinda", 60, 150),
        ("MJAR0", "en-gb-x-rp+robert", 36, 170), ("FJEM0", "en-gb-scotland+Andrea", 48, 170),
        ("MMDB1", "en-029+klatt2", 60, 170), ("FCMH0", "en-gb-x-gbclan+grandma", 36, 190),
        ("MMDM2", "en-gb-x-gbcwmd+Andy", 48, 190)]
    assert [(name, voice) for name, voice, _, _ in table["test"]] == [
        ("FELC0", "en-us+steph2"), ("MDAB0", "en-us-nyc+paul"), ("FPAS0", "en+Nguyen"), ("MWBT0", "en-gb-x-rp+Gene"),
        ("FPKT0", "en-gb-scotland+f4"), ("MTAS1", "en-029+m8"), ("FJLM0", "en-gb-x-gbclan+anikaRobot"),
        ("MWEW0", "en-gb-x-gbcwmd+m2")]


def test_too_many_eval_speakers_is_an_error():
    with pytest.raises(ValueError, match="at most 16 test speakers"):
        synth_speakers(2, 18, 18)


def test_every_lexicon_word_maps_to_timit_phones():
    words = sorted({w for ws in lexicon().values() for w in ws} |
                   {w for t in TEMPLATES for w in t.split() if not w.startswith("{")})
    unknown = {}
    for accent in ACCENTS:
        for variant in ("m3", "f4"):
            audio, events = espeak_synthesize(" ".join(words), f"{accent}+{variant}")
            mnemonics = {m.replace("'", "").replace(",", "") for t, _, _, m in events if t == 7}
            missing = {m for m in mnemonics if not m.startswith("_") and m not in timit_mapping(accent)}
            if missing:
                unknown[f"{accent}+{variant}"] = sorted(missing)
            assert len(audio) > 16000
        assert all(set(v) <= set(phone_set(61)) for v in timit_mapping(accent).values())
    assert not unknown, f"espeak-ng mnemonics without a TIMIT mapping: {unknown}"
    assert set(ESPEAK_TO_TIMIT) <= set(timit_mapping("en-gb-x-rp"))


def test_unmapped_mnemonic_is_reported():
    from hardalign.data.synth.segments import timit_segments

    events = [(7, 0, 1, "t"), (7, 10, 2, "t["), (5, 20, 3, "")]
    assert [s[0] for s in timit_segments(events, 30, "ta", 0, 1.0, accent="en-029")] == ["t", "t"]
    with pytest.raises(KeyError, match=r"'t\['.*en-us.*ACCENT_OVERRIDES"):
        timit_segments(events, 30, "ta", 0, 1.0, accent="en-us")
    with pytest.raises(ValueError, match="known accents"):
        timit_segments(events, 30, "ta", 0, 1.0, accent="en-au")


def test_bad_sizes_are_errors(tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        build_synth_corpus(tmp_path, speakers=1)


def test_prepare_synth_command(tmp_path, capsys):
    import argparse

    from hardalign.cli import Commands
    from hardalign.data.cli import register

    parser = argparse.ArgumentParser(prog="hardalign")
    register(Commands(parser))
    args = parser.parse_args(["prepare", "synth", "--out", str(tmp_path), "--speakers", "2", "--utterances", "2",
                              "--eval-speakers", "2", "--eval-utterances", "1", "--seed", "3", "--quiet"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "train 4, dev 2, test 2" in out and "cached default features" in out
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 8
    assert (tmp_path / "corpus" / "TRAIN").is_dir() and (tmp_path / "train.jsonl").is_file()
    bad = parser.parse_args(["prepare", "synth", "--out", str(tmp_path), "--speakers", "1", "--quiet"])
    assert bad.func(bad) == 1 and "at least 2" in capsys.readouterr().err


def test_alternate_voice_pool_is_disjoint_from_the_default():
    from hardalign.data.synth import ALTERNATE_VOICES, VOICE_POOLS

    assert VOICE_POOLS["default"] is VOICES and VOICE_POOLS["alternate"] is ALTERNATE_VOICES
    variants = {name: {v for split in pool.values() for g in pool[next(iter(pool))] for v in split[g]}
                for name, pool in VOICE_POOLS.items()}
    assert variants["alternate"] and not variants["default"] & variants["alternate"]
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):  # unseen dev/test variants, as by default
        assert not set(ALTERNATE_VOICES[a]["f"] + ALTERNATE_VOICES[a]["m"]) & set(ALTERNATE_VOICES[b]["f"] + ALTERNATE_VOICES[b]["m"])
    default = synth_speakers(20, 8, 8, seed=0)
    other = synth_speakers(20, 8, 8, seed=0, voices="alternate")
    assert not {s.voice for s in default} & {s.voice for s in other}  # every speaker of every split
    # the same seed gives the same speakers otherwise: names, accents, pitches, rates, levels
    strip = lambda s: (s.name, s.gender, s.split, s.dialect, s.accent, s.pitch, s.rate, s.gain)  # noqa: E731
    assert [strip(s) for s in default] == [strip(s) for s in other]
    assert synth_speakers(20, 8, 8, seed=0, voices="default") == default


def test_default_pool_unchanged():
    # the default corpus must stay byte-identical: its speaker list (and so every espeak call) is pinned here
    spk = synth_speakers(20, 8, 8, seed=0)
    digest = hashlib.sha1(repr([(s.name, s.voice, s.pitch, s.rate, round(s.gain, 12)) for s in spk]).encode()).hexdigest()
    assert digest == DEFAULT_SPEAKERS_SHA1
    assert inspect.signature(build_synth_corpus).parameters["voices"].default == "default"


def test_unknown_voice_pool_is_an_error(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"voices: unknown voice pool 'other'; choose from default, alternate"):
        synth_speakers(2, 2, 2, voices="other")
    with pytest.raises(ValueError, match="voices: unknown voice pool"):
        build_synth_corpus(tmp_path / "x", voices="other", **SMALL)
    assert not (tmp_path / "x").exists()
    import argparse

    from hardalign.cli import Commands
    from hardalign.data.cli import register

    parser = argparse.ArgumentParser(prog="hardalign")
    register(Commands(parser))
    with pytest.raises(SystemExit):
        parser.parse_args(["prepare", "synth", "--out", str(tmp_path), "--voices", "other"])
    assert "argument --voices: invalid choice: 'other'" in capsys.readouterr().err


def test_alternate_voices_keep_the_phoneme_events():
    # every alternate variant exists in the installed espeak-ng data, and a variant changes the voice, not the
    # phoneme events the labels come from (so every accent's TIMIT mapping covers it)
    from hardalign.data.synth import ALTERNATE_VOICES

    text = "she had your dark suit in greasy wash water"
    _, reference = espeak_synthesize(text, "en-gb-scotland+m3")
    phones = [m for t, _, _, m in reference if t == 7]
    for variant in sorted({v for split in ALTERNATE_VOICES.values() for vs in split.values() for v in vs}):
        audio, events = espeak_synthesize(text, f"en-gb-scotland+{variant}")
        assert [m for t, _, _, m in events if t == 7] == phones, variant
        assert len(audio) > 16000, variant


def test_prepare_synth_command_alternate_voices(tmp_path, capsys):
    import argparse

    from hardalign.cli import Commands
    from hardalign.data.cli import register

    parser = argparse.ArgumentParser(prog="hardalign")
    register(Commands(parser))
    args = parser.parse_args(["prepare", "synth", "--out", str(tmp_path), "--speakers", "2", "--utterances", "1",
                              "--eval-speakers", "2", "--eval-utterances", "1", "--voices", "alternate", "--quiet",
                              "--no-features"])
    assert args.voices == "alternate" and args.func(args) == 0
    assert "train 2, dev 2, test 2" in capsys.readouterr().out
    alternate = {s.name.lower(): s.voice for s in synth_speakers(2, 2, 2, voices="alternate")}
    records = [r for split in ("train", "dev", "test") for r in read_manifest(tmp_path / f"{split}.jsonl")]
    assert {r["speaker"] for r in records} == set(alternate)
    default_variants = {v for split in VOICES.values() for vs in split.values() for v in vs}
    assert not {v.split("+")[1] for v in alternate.values()} & default_variants
    assert parser.parse_args(["prepare", "synth", "--out", str(tmp_path)]).voices == "default"
    # deterministic (a fresh synthesis process each time), and other audio than the default pool's
    sizes = dict(speakers=2, utterances=1, eval_speakers=2, eval_utterances=1)
    again = build_synth_corpus(tmp_path / "again", voices="alternate", **sizes)
    assert _digest(again.corpus_dir) == _digest(tmp_path / "corpus")
    default = build_synth_corpus(tmp_path / "default", **sizes)
    assert read_manifest(tmp_path / "default" / "train.jsonl")[0]["text"] == read_manifest(tmp_path / "train.jsonl")[0]["text"]
    assert _digest(default.corpus_dir) != _digest(tmp_path / "corpus")
