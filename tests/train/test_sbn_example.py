"""examples/sbn.py trains with every estimator and its test bound improves; the sbn task via the CLI."""

import json
import shutil

import pytest

from hardalign.cli import main as hardalign_main
from tests.conftest import load_script
from hardalign.estimators import ESTIMATORS



def load_example():
    return load_script("examples/sbn.py")


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_example_bound_improves(estimator, capsys):
    example = load_example()
    result = example.main(["--estimator", estimator, "--num-samples", "4", "--steps", "300", "--lr", "3e-3",
                           "--layers", "50,20", "--eval-samples", "10", "--test-limit", "300"])
    # the model starts at the pixel marginals (about -208 nats here); 300 steps gain 20-50 nats
    assert result["after"] > result["before"] + 10, result
    assert "test bound (K=10, 300 digits)" in capsys.readouterr().out


def test_sbn_task_through_the_cli(tmp_path, capsys):
    out_dir = tmp_path / "sbn"
    status = hardalign_main(["train", "--task", "sbn", "--estimator", "vimco-seq", "--num-samples", "3",
                             "--layers", "20,10", "--max-steps", "40", "--batch-size", "50", "--lr", "3e-3",
                             "--eval-num-samples", "4", "--log-every", "20", "--out-dir", str(out_dir),
                             "--no-progress", "--no-tensorboard"])
    assert status == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 40
    status = hardalign_main(["evaluate", "--checkpoint", str(out_dir / "checkpoint.pt"), "--split", "test",
                             "--eval-num-samples", "8"])
    assert status == 0
    result = json.loads((out_dir / "eval-test.json").read_text())
    assert result["metrics"]["num_samples"] == 8 and result["step"] == 40 and result["estimator"] == "vimco-seq"
    assert -300 < result["metrics"]["bound"] < 0
    assert "| bound |" in (out_dir / "eval-test.md").read_text()
    # a copy of the checkpoint elsewhere is scored there: the run's own reports stay as they were
    copy = tmp_path / "copy" / "averaged.pt"
    copy.parent.mkdir()
    shutil.copy(out_dir / "checkpoint.pt", copy)
    before = (out_dir / "eval-test.json").read_bytes()
    assert hardalign_main(["evaluate", "--checkpoint", str(copy), "--split", "test", "--eval-num-samples", "2"]) == 0
    assert (out_dir / "eval-test.json").read_bytes() == before
    assert json.loads((copy.parent / "eval-test.json").read_text())["metrics"]["num_samples"] == 2
    # a typo in an override exits with 2 and names the nearest key
    assert hardalign_main(["train", "--task", "sbn", "--num-sampels", "3", "--out-dir", str(tmp_path / "x")]) == 2
    assert "did you mean 'num_samples'" in capsys.readouterr().err
