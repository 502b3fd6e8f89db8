"""Smoke run of ``benchmarks/speech_noise.py`` on a tiny corpus: six runs of two steps with tiny
networks, every test condition scored, the table and JSON written, then a re-run that reuses
every finished run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import load_script
from tests.speech.test_recipe import TINY_MODEL

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def speech_noise():
    return load_script("benchmarks/speech_noise.py")


def test_ctc_runs_copy_the_noise_keys(speech_noise):
    args = type("Args", (), {"conf_dir": str(REPO / "recipes/timit/conf")})()
    config, keys = speech_noise.run_config("noisy", "ctc", args)
    assert config.name == "ctc.yaml" and keys[keys.index("--noise") + 1] == "white,pink,babble" and "--snr" in keys
    noisy = yaml.safe_load((REPO / "recipes/timit/conf/noisy.yaml").read_text())
    assert keys[keys.index("--noise-copies") + 1] == str(noisy["noise_copies"])  # CTC trains on the same cached copies
    # a multi-speaker run per mix level: the hard run sets the level, the CTC run copies the config's keys and sets it too
    assert speech_noise.run_config("multi0.5", "hard", args) == (REPO / "recipes/timit/conf/multispeaker.yaml", ["--mix-speaker", "0.5"])
    assert speech_noise.run_config("multi0.1", "ctc", args)[1] == ["--cmvn", "utterance", "--specaug-freq", "8", "--specaug-time", "10", "--mix-speaker", "0.1"]
    assert speech_noise.run_config("clean", "ctc", args)[1] == [] and speech_noise.run_config("noisy", "hard", args)[0].name == "noisy.yaml"
    assert speech_noise.trainings((0.1, 0.5)) == ("clean", "noisy", "multi0.1", "multi0.5")
    assert speech_noise.columns((0.25,))[-1] == "mix0.25" and speech_noise.training_label("multi0.25") == "multi-speaker 0.25"


def test_finished_runs_are_scored_only_on_missing_columns(speech_noise):
    args = type("Args", (), {"mixes": (0.1, 0.25)})()
    full = {c: 0.1 for c in speech_noise.columns((0.1, 0.25))}
    assert speech_noise.missing_evaluations({"per": full}, args) == []
    assert speech_noise.missing_evaluations({"per": {k: v for k, v in full.items() if k != "mix0.1"}}, args) == ["mix0.1"]
    assert speech_noise.missing_evaluations({"per": {"mix0.25": 0.2}}, args) == ["noise", "mix0.1"]
    assert list(speech_noise.evaluations(args)) == ["noise", "mix0.1", "mix0.25"]
    assert speech_noise.evaluations(args)["mix0.1"] == {"mix_speaker": 0.1, "eval_noise": "", "eval_limit": 0}


@pytest.mark.slow
def test_table_json_and_reuse(speech_noise, tmp_path, capsys):
    from hardalign.data.synth import build_synth_corpus

    data = tmp_path / "data"
    build_synth_corpus(data, speakers=2, utterances=4, eval_speakers=2, eval_utterances=2, seed=3)
    overrides = " ".join(a for a in TINY_MODEL if a not in ("--max-minutes", "null", "--progress", "false"))
    out = tmp_path / "noise.md"
    argv = ["--data-dir", str(data), "--work-dir", str(tmp_path / "work"), "--out", str(out), "--steps", "2", "--jobs", "2",
            "--model-overrides", overrides, "--mixes", "0.25"]
    assert speech_noise.main(argv) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert [(r["training"], r["model"]) for r in summary["runs"]] == [(t, m) for t in ("clean", "noisy", "multi0.25") for m in ("hard", "ctc")]
    for run in summary["runs"]:
        assert run["steps"] == 2 and set(run["per"]) == set(speech_noise.columns((0.25,))) and all(v >= 0 for v in run["per"].values())
    assert [t["limit"] for t in summary["targets"]] == [1.6, 3.0, 1.2]
    table = out.read_text()
    assert "| noisy (multi-condition) | CTC baseline |" in table and "babble 0 dB" in table and "mix0.25" in table
    capsys.readouterr()
    assert speech_noise.main(argv) == 0  # re-run: every run reused
    printed = capsys.readouterr().out
    assert "training ->" not in printed and printed.count("reusing") == 6
    # a new mix level: two new runs, the six finished ones scored on its column only
    assert speech_noise.main([*argv[:-1], "0.25,0.5"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("training ->") == 2 and printed.count("scoring mix0.5 of") == 6
    summary = json.loads(out.with_suffix(".json").read_text())
    assert all(set(run["per"]) == set(speech_noise.columns((0.25, 0.5))) for run in summary["runs"])
    assert [r["training"] for r in summary["runs"]][-2:] == ["multi0.5", "multi0.5"]
