"""The glimpse task through the trainer: a short run beats chance; batches, evaluation, picture."""

import numpy as np
import pytest
import torch

from hardalign.cli import main as hardalign_main
from hardalign.train.config import ConfigError, TrainConfig, resolve_config
from hardalign.train.loop import train
from hardalign.vision.task import GlimpseConfig, GlimpseTask

SMALL_RAM = {
    "task": "glimpse",
    "model": "ram",
    "variant": "mnist",
    "num_glimpses": 4,
    "patch_size": 8,
    "num_scales": 1,
    "glimpse_hidden": 32,
    "hidden_size": 64,
    "estimator": "reinforce",
    "estimator_options": {"baseline": "ema"},
    "num_samples": 1,
    "batch_size": 32,
    "lr": 0.003,
    "progress": False,
    "tensorboard": False,
    "log_every": 50,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def trained_ram(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ram")
    config = resolve_config({**SMALL_RAM, "out_dir": str(out_dir), "max_steps": 150})
    torch.set_num_threads(1)
    result = train(config)
    return out_dir, result


def test_short_training_run_beats_chance(trained_ram):
    _, result = trained_ram
    # chance is 10%; 150 steps of 32 digits reached 45% on the 500 dev digits when written (M = 1, one sampled rollout)
    assert result.eval_metrics["accuracy"] > 0.25, result.eval_metrics
    assert result.eval_metrics["error"] == pytest.approx(1 - result.eval_metrics["accuracy"])


def test_plot_glimpses_command_writes_a_png(trained_ram, tmp_path):
    out_dir, _ = trained_ram
    png = tmp_path / "glimpses.png"
    status = hardalign_main(["plot", "glimpses", "--checkpoint", str(out_dir / "checkpoint.pt"), "--out", str(png), "--num-images", "3"])
    assert status == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert hardalign_main(["plot", "glimpses", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(png)]) == 1


def _task(**options):
    config = GlimpseConfig(**{"train_limit": 600, "dev_size": 100, **options})
    return GlimpseTask(config, TrainConfig(task="glimpse", batch_size=50, seed=3), device=torch.device("cpu"))


def test_batches_are_seeded_fresh_per_epoch_and_sharded():
    task = _task()
    first = list(task.train_batches(0))
    again = list(task.train_batches(0))
    later = list(task.train_batches(1))
    assert len(first) == 10 and first[0]["images"].shape == (50, 1, 60, 60) and first[0]["images"].dtype == torch.uint8
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(first, again))
    assert not torch.equal(first[0]["images"], later[0]["images"])
    shards = [list(GlimpseTask(task.config, task.train_config, device=torch.device("cpu"), rank=r, world_size=2).train_batches(0)) for r in (0, 1)]
    joined = torch.cat([shards[0][0]["labels"], shards[1][0]["labels"]])
    assert torch.equal(joined, first[0]["labels"])
    # the dev split is held out of the training digits; the test canvases are fixed
    dev_images, dev_labels = task.split_data("dev")
    assert dev_images.shape == (100, 1, 60, 60)
    np.testing.assert_array_equal(dev_labels.numpy(), task.digits["dev"][1])
    assert torch.equal(task.split_data("test")[0], _task().split_data("test")[0])


def test_evaluation_is_single_rollout_unless_monte_carlo_is_asked():
    task = _task(model="ram", num_glimpses=2, patch_size=6, num_scales=2, hidden_size=16, glimpse_hidden=8, eval_num_samples=3)
    model = task.build_model().eval()
    metrics = task.evaluate(model, "dev")
    assert set(metrics) == {"accuracy", "error", "accuracy_mc3", "error_mc3"}
    saccader = _task(model="saccader", num_glimpses=2, saccader_channels=8, hidden_size=8)
    metrics = saccader.evaluate(saccader.build_model().eval(), "dev", num_steps=1)
    assert set(metrics) == {"accuracy", "error", "attended_fraction"}
    assert 0 < metrics["attended_fraction"] < 0.2  # one 21x21 box of a 60x60 canvas at most


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="variant"):
        resolve_config({"task": "glimpse", "variant": "rotated"})
    with pytest.raises(ConfigError, match="num_glimpses"):
        resolve_config({"task": "glimpse", "num_glimpses": 0})
    with pytest.raises(ConfigError, match="did you mean 'num_glimpses'"):
        resolve_config({"task": "glimpse", "num_glimpse": 3})
    with pytest.raises(ConfigError, match="'eval_samples' was renamed 'eval_num_samples'"):
        resolve_config({"task": "glimpse"}, ["--eval-samples", "3"])
    with pytest.raises(ValueError, match="split"):
        _task().split_data("valid")
