"""The training loop: exact resume, non-finite losses, metrics, budgets."""

import json

import pytest
import torch

from hardalign.train import NonFiniteLossError, load_checkpoint, resolve_config, train


def toy_config(tmp_path, name, **values):
    base = {"task": "toy", "estimator": "nvil", "num_samples": 3, "batch_size": 8, "lr": 0.05, "log_every": 3,
            "progress": False, "tensorboard": False, "out_dir": str(tmp_path / name)}
    return resolve_config({**base, **values})


def assert_same_state(a, b):
    for part in ("model", "estimator"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]


def test_exact_resume_after_crash(tmp_path, toy_task):
    """N steps straight == N/2 steps, a crash, resume, the rest (global-RNG sampling, evals between)."""
    common = dict(global_noise=True, eval_every=4, max_steps=20)  # 64 examples / 8 = 8 steps per epoch
    train(toy_config(tmp_path, "straight", **common))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(toy_config(tmp_path, "crashed", checkpoint_every=10, crash_at_step=13, **common))
    assert load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")["step"] == 10
    result = train(toy_config(tmp_path, "crashed", resume="auto", **common))
    assert result.step == 20
    assert_same_state(load_checkpoint(tmp_path / "straight" / "checkpoint.pt"),
                      load_checkpoint(tmp_path / "crashed" / "checkpoint.pt"))
    # the estimator's running statistics moved (so the comparison above is not vacuous)
    assert load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["estimator"]["running_var"] > 0


def test_resume_with_another_estimator_is_a_clear_error(tmp_path, toy_task):
    """A run trained with one estimator cannot be resumed exactly with another (their states differ):
    the error names the checkpoint and both estimators, and the checkpoint is left as it was."""
    from hardalign.train.checkpoint import CheckpointError

    train(toy_config(tmp_path, "run", estimator="vimco", max_steps=4))
    before = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    saved_config = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match=r"trained with estimator 'vimco', the config asks for 'nvil'.*--estimator vimco"):
        train(toy_config(tmp_path, "run", estimator="nvil", max_steps=8, resume="auto"))
    after = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert after["step"] == before["step"] == 4 and after["config"]["estimator"] == "vimco"
    assert (tmp_path / "run" / "config.yaml").read_text() == saved_config


def test_exact_resume_sbn(tmp_path):
    """The real sbn task: 6 steps == 3 steps, stop, resume for 3 more (crossing an epoch boundary)."""
    base = {"task": "sbn", "estimator": "reinforce", "estimator_options": {"baseline": "ema"}, "num_samples": 2,
            "batch_size": 100, "train_limit": 200, "layers": "8,4", "eval_num_samples": 2, "eval_batch_size": 500,
            "log_every": 2, "progress": False, "tensorboard": False}
    train(resolve_config({**base, "max_steps": 6, "out_dir": str(tmp_path / "a")}))
    train(resolve_config({**base, "max_steps": 3, "out_dir": str(tmp_path / "b")}))
    train(resolve_config({**base, "max_steps": 6, "out_dir": str(tmp_path / "b"), "resume": "auto"}))
    assert_same_state(load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt"))


def test_nan_loss_names_step_and_terms_and_keeps_checkpoint(tmp_path, toy_task):
    config = toy_config(tmp_path, "nan", max_steps=20, log_every=5, checkpoint_every=2, nan_at_step=6)
    with pytest.raises(NonFiniteLossError) as info:
        train(config)
    message = str(info.value)
    # the model was called with step index 6, i.e. the 7th optimiser step (checked before the
    # checkpoint at step 8 could overwrite the good one from step 6)
    assert "non-finite loss at step 7" in message
    assert "loss=nan" in message and "objective=" in message and "log_lik=" in message
    assert "checkpoint.pt' (step 6) is kept" in message
    state = load_checkpoint(tmp_path / "nan" / "checkpoint.pt")
    assert state["step"] == 6
    assert all(torch.isfinite(value).all() for value in state["model"].values())


def test_metrics_log_every_term(tmp_path, toy_task):
    result = train(toy_config(tmp_path, "m", max_steps=6, eval_every=3))
    lines = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [line for line in lines if line["split"] == "train"]
    assert [line["step"] for line in train_lines] == [3, 6]
    for name in ("loss", "objective", "log_lik", "grad_norm", "lr", "baseline_loss"):
        assert name in train_lines[0], name
    assert [line["step"] for line in lines if line["split"] == "dev"] == [3, 6]
    assert result.eval_metrics.keys() == {"mse"} and result.stopped_by == "max_steps"
    assert (tmp_path / "m" / "config.yaml").is_file()


def test_refuses_to_overwrite_and_wall_clock_budget(tmp_path, toy_task):
    train(toy_config(tmp_path, "o", max_steps=2))
    with pytest.raises(FileExistsError, match="--resume auto"):
        train(toy_config(tmp_path, "o", max_steps=2))
    result = train(toy_config(tmp_path, "t", max_steps=10**6, max_minutes=0.02))  # ~1 s
    assert result.stopped_by == "max_minutes" and 0 < result.step < 10**6
    assert load_checkpoint(tmp_path / "t" / "checkpoint.pt")["step"] == result.step


def test_tensorboard_events_written(tmp_path, toy_task):
    train(toy_config(tmp_path, "tb", max_steps=3, tensorboard=True))
    assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))


def test_nan_found_when_the_next_step_fails_first(tmp_path, toy_task):
    """NaN parameters make the next forward fail (Bernoulli rejects NaN logits) before any log:
    the error still reports the root cause."""
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3 .*no checkpoint had been written"):
        train(toy_config(tmp_path, "nan2", max_steps=20, log_every=100, nan_at_step=2))


def test_evaluation_does_not_perturb_training(tmp_path, toy_task):
    """The toy evaluate draws from the global RNG; training must not notice how often it runs."""
    train(toy_config(tmp_path, "rare", global_noise=True, max_steps=9, eval_every=0))
    train(toy_config(tmp_path, "often", global_noise=True, max_steps=9, eval_every=2))
    assert_same_state(load_checkpoint(tmp_path / "rare" / "checkpoint.pt"), load_checkpoint(tmp_path / "often" / "checkpoint.pt"))


def test_non_scalar_term_is_named(tmp_path, toy_task):
    with pytest.raises(TypeError, match=r"term 'per_example' must be a 0-dim tensor .* got \[8\]"):
        train(toy_config(tmp_path, "v", max_steps=2, vector_term=True))


def test_cosine_schedule_spans_the_time_budget(tmp_path, toy_task, monkeypatch):
    """lr_schedule cosine with max_minutes: the learning rate falls from lr to ~0 as the budget is spent."""
    import itertools

    import hardalign.train.loop as loop

    ticks = itertools.count()
    monkeypatch.setattr(loop.time, "monotonic", lambda: 0.05 * next(ticks))  # a clock that advances 50 ms per reading
    result = train(toy_config(tmp_path, "cos", max_steps=10**6, max_minutes=0.05, lr_schedule="cosine", log_every=1))
    assert result.stopped_by == "max_minutes" and 10 < result.step < 10**6
    rows = [json.loads(line) for line in (tmp_path / "cos" / "metrics.jsonl").read_text().splitlines()]
    lrs = [row["lr"] for row in rows if row["split"] == "train"]
    assert lrs[0] == pytest.approx(0.05, rel=0.02)
    assert all(later <= earlier for earlier, later in zip(lrs, lrs[1:]))
    assert lrs[-1] < 0.05 * 0.05  # near 0 at the end of the budget
    assert any(0.2 * 0.05 < lr < 0.8 * 0.05 for lr in lrs)  # and in between on the way
