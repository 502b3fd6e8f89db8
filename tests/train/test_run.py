"""load_run rebuilds config, task and model from a checkpoint; renamed keys of old runs still load."""

import pytest
import torch

from hardalign.train import load_run, resolve_config, train
from hardalign.train.checkpoint import load_checkpoint, save_checkpoint
from hardalign.train.config import ConfigError

BASE = {"task": "sbn", "estimator": "vimco", "num_samples": 2, "batch_size": 50, "train_limit": 100, "layers": "8,4",
        "eval_num_samples": 3, "max_steps": 2, "log_every": 1, "progress": False, "tensorboard": False}


@pytest.fixture(scope="module")
def sbn_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("sbn_run")
    train(resolve_config({**BASE, "out_dir": str(out_dir)}))
    return out_dir


def test_the_stored_run_comes_back_in_eval_mode(sbn_run):
    run = load_run(sbn_run / "checkpoint.pt", overrides=["--eval-num-samples", "5"], device="cpu")
    assert run.step == 2 and run.checkpoint == sbn_run / "checkpoint.pt"
    assert run.config.train.estimator == "vimco" and run.config.task.eval_num_samples == 5
    assert not run.model.training
    stored = load_checkpoint(sbn_run / "checkpoint.pt")["model"]
    assert all(torch.equal(value, run.model.state_dict()[key]) for key, value in stored.items())
    # a config instead of the stored one: the checkpoint defaults to OUT_DIR/checkpoint.pt
    assert load_run(None, config=run.config).checkpoint == sbn_run / "checkpoint.pt"


def test_errors_name_the_problem(sbn_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_run(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="is a 'sbn' run, not a 'timit' run"):
        load_run(sbn_run / "checkpoint.pt", expect_task="timit")
    with pytest.raises(ValueError, match="give a checkpoint"):
        load_run(None)
    with pytest.raises(ConfigError, match="did you mean 'eval_num_samples'|renamed"):
        load_run(sbn_run / "checkpoint.pt", overrides=["--eval-num-sample", "5"])


def test_a_run_stored_under_a_renamed_key_still_loads(sbn_run, tmp_path):
    state = load_checkpoint(sbn_run / "checkpoint.pt")
    state["config"]["eval_samples"] = state["config"].pop("eval_num_samples")  # as written before the rename
    save_checkpoint(tmp_path / "old.pt", state)
    assert load_run(tmp_path / "old.pt").config.task.eval_num_samples == 3
    with pytest.raises(ConfigError, match="'eval_samples' was renamed 'eval_num_samples'"):
        resolve_config({"task": "sbn", "eval_samples": 3})


def test_a_speech_checkpoint_from_before_the_objective_layer_loads(tmp_path):
    """Written the old way: a stored config with the retired ``learned_baseline`` key and without
    the posterior options added since (those runs used the recurrent posterior, own encoder)."""
    import dataclasses

    from hardalign.speech.model import HardAlignmentRecognizer
    from hardalign.train.checkpoint import save_checkpoint
    from hardalign.train.config import resolve_config
    from hardalign.train.run import load_run

    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "dev", "test"):
        (data / f"{split}.jsonl").write_text("")
    config = resolve_config({"task": "timit", "data_dir": str(data), "hidden_size": 8, "encoder_layers": 1, "decision_hidden": 8,
                             "label_embedding": 4, "posterior_hidden": 8, "baseline_hidden": 4})
    stored = config.to_dict()
    del stored["posterior_kind"], stored["posterior_encoder"], stored["ctc_label_prior"]
    stored["learned_baseline"] = True
    sizes = {f.name: getattr(config.task, f.name) for f in dataclasses.fields(config.task) if f.name in
             ("hidden_size", "encoder_layers", "decision_hidden", "label_embedding", "posterior_hidden", "baseline_hidden")}
    old_model = HardAlignmentRecognizer(123 * 3, 60, posterior_kind="recurrent", posterior_encoder="own", ctc_label_prior=False, **sizes)
    save_checkpoint(tmp_path / "checkpoint.pt", {"format": 1, "step": 7, "model": old_model.state_dict(), "config": stored})
    run = load_run(tmp_path / "checkpoint.pt", device="cpu")
    assert run.step == 7 and run.config.task.posterior_kind == "recurrent"
    for key, value in old_model.state_dict().items():
        if key.endswith("_extra_state"):  # the model's non-tensor state (the CTC warm-up's end)
            assert run.model.state_dict()[key] == value, key
            continue
        assert torch.equal(run.model.state_dict()[key], value), key


def test_a_speech_checkpoint_from_before_the_ctc_emit_prior_loads_as_it_was(tmp_path):
    from hardalign.speech.model import HardAlignmentRecognizer

    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "dev", "test"):
        (data / f"{split}.jsonl").write_text("")
    sizes = {"hidden_size": 8, "encoder_layers": 1, "decision_hidden": 8, "label_embedding": 4, "posterior_hidden": 8, "baseline_hidden": 4}
    stored = resolve_config({"task": "timit", "data_dir": str(data), **sizes}).to_dict()
    del stored["ctc_emit_prior"], stored["score_forced_emissions"], stored["forced_emission_weight"]  # these keys did not exist yet; the label prior did
    old_model = HardAlignmentRecognizer(123 * 3, 60, ctc_emit_prior=False, score_forced_emissions=False, **sizes)
    save_checkpoint(tmp_path / "checkpoint.pt", {"format": 2, "step": 3, "model": old_model.state_dict(), "config": stored})
    run = load_run(tmp_path / "checkpoint.pt", device="cpu")
    assert run.config.task.ctc_label_prior and not run.config.task.ctc_emit_prior
    assert not run.config.task.score_forced_emissions and not run.model.config.score_forced_emissions
    assert run.config.task.forced_emission_weight == 0.0
    assert not run.model.uses_ctc_emit_prior
    assert run.model.state_dict().keys() == old_model.state_dict().keys()
