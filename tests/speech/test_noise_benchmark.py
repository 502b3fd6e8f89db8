"""Smoke run of ``benchmarks/speech_noise.py`` on a tiny corpus: six runs of two steps with tiny
networks, every test condition scored, the table and JSON written, then a re-run that reuses
every finished run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    assert speech_noise.run_config("multi", "ctc", args)[1] == ["--mix-speaker", "0.25", "--cmvn", "utterance", "--specaug-freq", "8", "--specaug-time", "10"]
    assert speech_noise.run_config("clean", "ctc", args)[1] == [] and speech_noise.run_config("noisy", "hard", args)[0].name == "noisy.yaml"


@pytest.mark.slow
def test_table_json_and_reuse(speech_noise, tmp_path, capsys):
    from hardalign.data.synth import build_synth_corpus

    data = tmp_path / "data"
    build_synth_corpus(data, speakers=2, utterances=4, eval_speakers=2, eval_utterances=2, seed=3)
    overrides = " ".join(a for a in TINY_MODEL if a not in ("--max-minutes", "null", "--progress", "false"))
    out = tmp_path / "noise.md"
    argv = ["--data-dir", str(data), "--work-dir", str(tmp_path / "work"), "--out", str(out), "--steps", "2", "--jobs", "2",
            "--model-overrides", overrides]
    assert speech_noise.main(argv) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert [(r["training"], r["model"]) for r in summary["runs"]] == [(t, m) for t in ("clean", "noisy", "multi") for m in ("hard", "ctc")]
    for run in summary["runs"]:
        assert run["steps"] == 2 and set(run["per"]) == set(speech_noise.COLUMNS) and all(v >= 0 for v in run["per"].values())
    assert [t["limit"] for t in summary["targets"]] == [1.6, 3.0, 1.2]
    table = out.read_text()
    assert "| noisy (multi-condition) | CTC baseline |" in table and "babble 0 dB" in table and "mix0.25" in table
    capsys.readouterr()
    assert speech_noise.main(argv) == 0  # re-run: every run reused
    printed = capsys.readouterr().out
    assert "training ->" not in printed and printed.count("reusing") == 6
