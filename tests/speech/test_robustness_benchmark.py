"""Smoke run of ``benchmarks/speech_robustness.py`` on tiny corpora (~50 s on the shared 2-core machine).

Two conditions: ``small`` (a corpus the script synthesises itself) and ``noisy`` (the given
default corpus with training noise and a frozen white-10-dB test copy), both models, two steps
each with tiny networks; then a re-run that must reuse every finished run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_script
from tests.speech.test_recipe import TINY_MODEL



@pytest.fixture(scope="module")
def robustness():
    return load_script("benchmarks/speech_robustness.py")


def test_two_conditions_table_json_and_reuse(robustness, tmp_path, capsys):
    from hardalign.data.synth import build_synth_corpus

    default = tmp_path / "default"
    build_synth_corpus(default, speakers=2, utterances=4, eval_speakers=2, eval_utterances=2, seed=3)
    overrides = " ".join(a for a in TINY_MODEL if a not in ("--max-minutes", "null", "--progress", "false"))
    out = tmp_path / "results" / "robustness.md"
    argv = [
        "--conditions", "small,noisy", "--default-data", str(default), "--work-dir", str(tmp_path / "work"), "--out", str(out),
        "--steps", "2", "--jobs", "2", "--model-overrides", overrides, "--synth-eval-speakers", "2", "--synth-eval-utterances", "2",
        "--small-speakers", "2", "--small-utterances", "3",
    ]
    assert robustness.main(argv) == 0
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| small") or line.startswith("| noisy")]
    assert [r.split(" | ")[:2] for r in rows] == [
        ["| small", "hard alignment (vimco-seq)"], ["| small", "CTC baseline"],
        ["| noisy", "hard alignment (vimco-seq)"], ["| noisy", "CTC baseline"],
    ]
    summary = json.loads(out.with_suffix(".json").read_text())
    assert [(r["condition"], r["model"]) for r in summary["rows"]] == [("small", "hard"), ("small", "ctc"), ("noisy", "hard"), ("noisy", "ctc")]
    for row in summary["rows"]:
        assert row["failed"] is None and row["steps"] == 2 and row["test_per"] >= 0 and row["dev_per"] >= 0
    hard = {r["condition"]: r for r in summary["rows"] if r["model"] == "hard"}
    ctc = {r["condition"]: r for r in summary["rows"] if r["model"] == "ctc"}
    assert hard["noisy"]["ratio"] == pytest.approx(hard["noisy"]["test_per"] / ctc["noisy"]["test_per"])
    if ctc["noisy"]["test_per_noise"] > 0:  # the target is judged on the noisy test copy too
        assert hard["noisy"]["ratio_noise"] == pytest.approx(hard["noisy"]["test_per_noise"] / ctc["noisy"]["test_per_noise"])
    assert "ratio_noise" not in hard["small"]
    assert hard["noisy"]["test_per_noise"] is not None and hard["small"]["test_per_noise"] is None  # white 10 dB only where asked
    noisy_keys = next(r["keys"] for r in summary["runs"] if r["condition"] == "noisy")
    assert any("noise" in key for key in noisy_keys) and "white:10" in noisy_keys and "--clean-fraction" in noisy_keys
    small_data = Path(next(r["data_dir"] for r in summary["runs"] if r["condition"] == "small"))
    assert len((small_data / "train.jsonl").read_text().splitlines()) == 6
    capsys.readouterr()

    # re-running reuses the prepared corpora and every finished run
    assert robustness.main(argv) == 0
    printed = capsys.readouterr().out
    assert "training ->" not in printed and printed.count("reusing") == 4 and "already prepared" in printed
    assert json.loads(out.with_suffix(".json").read_text())["rows"] == summary["rows"]

    # a second seed: seed 0's runs are reused, seed 1's trained; the table gives the means
    argv_seeds = [a if a != "small,noisy" else "small" for a in argv] + ["--seeds", "1,0"]
    assert robustness.main(argv_seeds) == 0
    printed = capsys.readouterr().out
    assert printed.count("reusing") == 2 and printed.count("training ->") == 2
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    hard2, ctc2 = rows
    assert hard2["seeds"]["test_per"][0] == hard["small"]["test_per"]  # seeds in ascending order: 0 first
    assert hard2["test_per"] == pytest.approx(sum(hard2["seeds"]["test_per"]) / 2)
    assert hard2["ratio"] == pytest.approx(hard2["test_per"] / ctc2["test_per"]) if ctc2["test_per"] > 0 else True
    assert len(hard2["seed_ratios"]) == 2 and (tmp_path / "work" / "runs" / "seed1" / "small" / "hard" / "result.json").is_file()
    assert "(mean; per seed)" in out.read_text()
    with pytest.raises(SystemExit):
        robustness.main(argv + ["--seeds", "one"])
