"""The TIMIT recipe end to end on a tiny generated corpus (espeak-ng, offline).

One test drives the stages through the library in one process (prepare synth, features, train,
evaluate with a noise condition, decode, plot); another runs ``recipes/timit/run.sh`` itself,
every stage as a subprocess (~45 s on the shared 2-core machine), and checks that re-running
skips the finished stages and that a bad ``--timit`` is reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = [
    "--hidden-size", "16", "--encoder-layers", "1", "--decision-hidden", "16", "--label-embedding", "8",
    "--posterior-hidden", "16", "--baseline-hidden", "8", "--batch-size", "4", "--num-samples", "2",
    "--log-every", "1", "--progress", "false", "--tensorboard", "false", "--max-minutes", "null",
]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    from hardalign.data.synth import build_synth_corpus

    out = tmp_path_factory.mktemp("timit_synth")
    build_synth_corpus(out, speakers=2, utterances=4, eval_speakers=2, eval_utterances=2, seed=3)
    return out


def test_recipe_stages_in_process(tiny_corpus, tmp_path, capsys):
    from hardalign.cli import main as hardalign
    from hardalign.speech.prepare_features import precompute_features
    from hardalign.train.config import resolve_config
    from hardalign.train.evaluate import evaluate_checkpoint
    from hardalign.train.loop import train

    counts = precompute_features(str(tiny_corpus), eval_noise="white:10")
    assert counts == {"train/clean": 8, "dev/clean": 4, "dev/white10db": 4, "test/clean": 4, "test/white10db": 4}
    run = tmp_path / "run"
    config = resolve_config(
        str(REPO / "recipes/timit/conf/vimco-seq.yaml"),
        ["--data-dir", str(tiny_corpus), "--out-dir", str(run), "--max-steps", "3", "--eval-noise", "white:10", *TINY_MODEL],
    )
    result = train(config)
    assert result.step == 3 and (run / "checkpoint.pt").is_file()
    metrics = evaluate_checkpoint(None, checkpoint=run / "checkpoint.pt", split="test")["metrics"]
    assert 0.0 <= metrics["per"] and "per_white10db" in metrics and metrics["ref_tokens"] > 0
    report = json.loads((run / "eval-test.json").read_text())
    assert report["metrics"]["per"] == metrics["per"] and report["uses_estimator"] is True
    assert "estimator `vimco-seq`" in (run / "eval-test.md").read_text()
    assert hardalign(["decode", "--checkpoint", str(run / "checkpoint.pt"), "--split", "test", "--out", str(run / "hyp"), "--decoder", "beam", "--beam-size", "2"]) == 0
    lines = [json.loads(line) for line in (run / "hyp.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(len(x["phones"]) == len(x["times"]) for x in lines)
    assert all(a <= b for x in lines for a, b in zip(x["times"], x["times"][1:]))
    assert "PER" in capsys.readouterr().out
    png = run / "align.png"
    assert hardalign(["plot", "alignment", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ctc_warmup_takes_the_first_part_of_the_budget_and_survives_a_resume(tiny_corpus, tmp_path):
    """``ctc_warmup: 0.5`` of ``max_steps: 4``: steps 1-2 are the CTC warm-up, 3-4 the bound; a
    resumed run with more steps does not go back to the warm-up."""
    from hardalign.train.config import resolve_config
    from hardalign.train.loop import train

    run = tmp_path / "run"
    args = ["--data-dir", str(tiny_corpus), "--out-dir", str(run), "--ctc-warmup", "0.5", "--checkpoint-every", "1", *TINY_MODEL]
    train(resolve_config(str(REPO / "recipes/timit/conf/vimco-seq.yaml"), [*args, "--max-steps", "4"]))
    train(resolve_config(str(REPO / "recipes/timit/conf/vimco-seq.yaml"), [*args, "--max-steps", "6", "--resume", "auto"]))
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    warmup = {row["step"]: "warmup" in row for row in logged if row.get("split") == "train"}
    assert warmup == {1: True, 2: True, 3: False, 4: False, 5: False, 6: False}
    assert all("objective" in row for row in logged if row.get("split") == "train" and row["step"] > 2)


def test_decode_reports_a_missing_checkpoint(tmp_path, capsys):
    from hardalign.cli import main as hardalign

    assert hardalign(["decode", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_run_sh_end_to_end(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [
        "bash", str(REPO / "recipes/timit/run.sh"), "--exp", str(tmp_path / "exp"), "--synth-speakers", "2",
        "--synth-utterances", "4", "--synth-eval-speakers", "2", "--synth-eval-utterances", "2", "--eval-noise", "white:10",
        "--plots", "1", "--", "--max-steps", "2", *TINY_MODEL,
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "exp" / "vimco-seq"
    for name in ("checkpoint.pt", "eval-dev.json", "eval-test.md", "hyp-test.jsonl", "hyp-test.txt"):
        assert (run / name).is_file(), name
    assert len(list((run / "plots").glob("*.png"))) == 1
    again = subprocess.run(command[:2] + ["--stop-stage", "1", *command[2:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "stage 0 prepare: already done" in again.stdout and "stage 1 features: already done" in again.stdout
    bad = subprocess.run(["bash", str(REPO / "recipes/timit/run.sh"), "--timit", str(tmp_path / "missing")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "missing" in bad.stderr


@pytest.mark.parametrize("conf", sorted(p.name for p in (REPO / "recipes/timit/conf").glob("*.yaml")))
def test_every_recipe_config_trains_one_step(conf, tiny_corpus):
    """Each config resolves, builds its task (noise, speaker mix, CTC, prior proposal) and takes a step."""
    import torch

    from hardalign.estimators import build_estimator
    from hardalign.objective import training_terms
    from hardalign.train.config import resolve_config
    from hardalign.train.tasks import build_task

    tiny = [a for a in TINY_MODEL if a not in ("--max-minutes", "null")]
    config = resolve_config(str(REPO / "recipes/timit/conf" / conf), ["--data-dir", str(tiny_corpus), *tiny])
    task = build_task("timit", config.task, config.train, device=torch.device("cpu"))
    model = task.build_model()
    model.budget_spent = 1.0  # past any ctc_warmup stage: the config's own objective
    batch = next(iter(task.train_batches(0)))
    estimator = build_estimator(config.train.estimator, **config.train.estimator_options)
    out = training_terms(model(batch, num_samples=config.train.num_samples, step=0), estimator)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


def test_ctc_run_decodes_and_plots(tiny_corpus, tmp_path):
    from hardalign.cli import main as hardalign
    from hardalign.train.config import resolve_config
    from hardalign.train.loop import train

    run = tmp_path / "ctc"
    config = resolve_config(
        str(REPO / "recipes/timit/conf/ctc.yaml"),
        ["--data-dir", str(tiny_corpus), "--out-dir", str(run), "--max-steps", "2", "--hidden-size", "16", "--batch-size", "4",
         "--progress", "false", "--tensorboard", "false", "--max-minutes", "null"],
    )
    train(config)
    assert hardalign(["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--split", "dev"]) == 0
    report = json.loads((run / "eval-dev.json").read_text())
    assert report["model"] == "CTCRecognizer" and report["uses_estimator"] is False
    assert "no estimator" in (run / "eval-dev.md").read_text()  # not the unused default estimator's name
    assert hardalign(["decode", "--checkpoint", str(run / "checkpoint.pt"), "--split", "dev"]) == 0
    assert (run / "hyp-dev.jsonl").is_file()
    assert hardalign(["plot", "alignment", "--checkpoint", str(run / "checkpoint.pt"), "--split", "dev", "--out", str(run / "a.png")]) == 0
    assert (run / "a.png").stat().st_size > 0
