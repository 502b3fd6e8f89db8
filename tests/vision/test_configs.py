"""Every recipe config (recipes/glimpse/conf/*.yaml) trains: a short run beats chance.

The configs are used as shipped, with only the budget cut down (steps, training digits, the
Saccader's stage lengths), so a config whose model, task options or defaults stop learning fails
here. Chance is 10% on the 500 dev digits (standard error 1.3 points), so the bar below is many
standard errors above it.
"""

from pathlib import Path

import pytest
import torch

from hardalign.train.config import resolve_config
from hardalign.train.loop import train

CONF = Path(__file__).resolve().parents[2] / "recipes" / "glimpse" / "conf"
CONFIGS = sorted(path.name for path in CONF.glob("*.yaml"))

#: the cut-down budget: steps and batch of the short run, per model family
SHORT = {
    "ram": {"max_steps": 150, "batch_size": 32},
    "saccader": {"max_steps": 150, "batch_size": 32, "representation_steps": 100, "pretrain_steps": 20},
}


def test_every_config_is_covered():
    assert len(CONFIGS) >= 5, CONFIGS


# The cluttered configs do not yet beat chance within this test's short budget (issue 12 is open):
# they are kept as known failures, not dropped, so that the day they pass is seen.
NOT_YET = {"ram_cluttered60.yaml", "ram_cluttered100.yaml", "saccader_cluttered60.yaml"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason="short run not above chance yet (issue 12)")) if n in NOT_YET else n for n in CONFIGS])
def test_short_run_of_every_config_beats_chance(name, tmp_path):
    base = resolve_config(CONF / name)
    short = SHORT[base.task.model]
    overrides = {
        **short,
        "out_dir": str(tmp_path / "run"),
        "max_minutes": None,
        "train_limit": 2000,  # 1,500 training digits, 500 dev
        "num_threads": 1,
        "progress": False,
        "tensorboard": False,
        "log_every": 50,
        "eval_every": 0,
        "eval_split": "dev",
        "device": "cpu",
        "seed": 0,
    }
    config = resolve_config(CONF / name, overrides)
    torch.manual_seed(0)
    result = train(config)
    assert result.step == short["max_steps"]
    accuracy = result.eval_metrics["accuracy"]  # one sampled rollout per dev canvas (M = 1)
    assert accuracy > 0.2, (name, result.eval_metrics)
