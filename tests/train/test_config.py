"""Config: YAML + kebab-case overrides, errors that name the nearest key, wrong types, round trip."""

from dataclasses import dataclass
from typing import Union

import pytest
import yaml

from hardalign.train import TRAIN_KEYS, ConfigError, TrainConfig, resolve_config, save_config
from hardalign.train.config import load_yaml, parse_overrides


@dataclass
class TaskOptions:
    hidden: int = 16
    dropout: float = 0.1
    layers: str = "200,200"
    root: Union[str, None] = None
    bidirectional: bool = False


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "task: sbn\nestimator: vimco\nnum_samples: 4\nlr: 3e-4\nhidden: 32\n"
                           "estimator_options: {baseline: loo}\n")
    cfg = resolve_config(path, ["--estimator", "reinforce", "--num-samples", "16", "--dropout=0.25",
                                "--bidirectional", "--root", "/data/timit", "--grad-clip", "5"],
                         task_config_class=TaskOptions)
    assert cfg.train.estimator == "reinforce" and cfg.train.num_samples == 16
    assert cfg.train.lr == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as a string: accepted as a float
    assert cfg.train.grad_clip == 5.0 and isinstance(cfg.train.grad_clip, float)
    assert cfg.train.estimator_options == {"baseline": "loo"}
    assert (cfg.task.hidden, cfg.task.dropout, cfg.task.bidirectional, cfg.task.root) == (32, 0.25, True, "/data/timit")


def test_defaults_and_real_sbn_task():
    cfg = resolve_config(None, ["--estimator", "reinforce", "--estimator-options", "baseline=ema,decay=0.5", "--no-progress"])
    assert cfg.train.task == "sbn" and cfg.task.layers == "200,200"
    assert cfg.train.estimator_options == {"baseline": "ema", "decay": 0.5}
    assert cfg.train.progress is False


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--num-sample", "3"], "unknown key 'num_sample'; did you mean 'num_samples'"),
        (["--hiden", "3"], "did you mean 'hidden'"),
        (["--learning-rate", "3"], "unknown key 'learning_rate'"),
        (["--num-samples", "3.5"], "num_samples must be int, got 3.5"),
        (["--lr", "fast"], "lr must be float, got 'fast'"),
        (["--bidirectional", "maybe"], "bidirectional must be bool"),
        (["--max-minutes", "soon"], "max_minutes must be float or null"),
        (["--num-samples", "0"], "num_samples=0: must be >= 1"),
        (["--optimizer", "adagrad"], "optimizer='adagrad': must be one of adam, adamw, sgd"),
        (["--estimator-options", "baseline"], "must look like name=value"),
        (["estimator", "vimco"], "expected --key value"),
        (["--estimator", "vimcoo"], "estimator='vimcoo' is not registered; did you mean 'vimco'?"),
        (["--estimator", "vimco", "--estimator-options", "baseline=loo"],
         "'vimco' has no option 'baseline'"),
        (["--estimator", "reinforce", "--estimator-options", "baselin=loo"], "did you mean 'baseline'?"),
        (["--keep-checkpoints", "0"], "keep_checkpoints=0: must be >= 1"),
        # the estimator is built and called once with K = num_samples: its own checks, now
        (["--estimator", "vimco", "--num-samples", "1"], "num_samples=1 with estimator='vimco': vimco: needs K >= 2"),
        (["--estimator", "vimco-seq", "--num-samples", "1"], "needs K >= 2"),
        (["--estimator", "reinforce", "--estimator-options", "baseline=loo", "--num-samples", "1"], "needs K >= 2"),
        (["--estimator", "nvil", "--estimator-options", "decay=1.5"], "estimator_options: nvil: decay must be in [0, 1)"),
    ],
)
def test_override_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        resolve_config({}, overrides, task_config_class=TaskOptions)
    assert message in str(info.value)


def test_options_cleared_when_switching_estimator(tmp_path):
    path = write(tmp_path, "estimator: reinforce\nestimator_options: {baseline: loo}\n")
    cfg = resolve_config(path, ["--estimator", "vimco", "--estimator-options", ""], task_config_class=TaskOptions)
    assert cfg.train.estimator == "vimco" and cfg.train.estimator_options == {}


def test_yaml_errors_name_the_file_and_key(tmp_path):
    path = write(tmp_path, "task: sbn\nbatchsize: 8\n")
    with pytest.raises(ConfigError, match=r"exp.yaml.*unknown key 'batchsize'; did you mean 'batch_size'"):
        resolve_config(path, task_config_class=TaskOptions)
    path = write(tmp_path, "hidden: [1, 2]\n")
    with pytest.raises(ConfigError, match="hidden must be a scalar"):
        resolve_config(path, task_config_class=TaskOptions)
    path = write(tmp_path, "hidden: '12'\n")
    with pytest.raises(ConfigError, match="hidden must be int, got '12'"):
        resolve_config(path, task_config_class=TaskOptions)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(tmp_path / "missing.yaml", task_config_class=TaskOptions)
    path = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(path)


def test_unknown_task_and_clashing_task_keys():
    with pytest.raises(ValueError, match="unknown task 'sbm'.*did you mean 'sbn'"):
        resolve_config({"task": "sbm"})

    @dataclass
    class Clashing:
        lr: float = 0.1

    with pytest.raises(ConfigError, match=r"reuses trainer keys \['lr'\]"):
        resolve_config({}, task_config_class=Clashing)


def test_saved_config_round_trips(tmp_path):
    cfg = resolve_config({"estimator": "reinforce", "estimator_options": {"baseline": "loo"}},
                         ["--max-minutes", "2.5", "--hidden", "7"], task_config_class=TaskOptions)
    save_config(cfg, tmp_path / "config.yaml")
    flat = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert list(flat)[: len(TRAIN_KEYS)] == list(TRAIN_KEYS)
    again = resolve_config(tmp_path / "config.yaml", task_config_class=TaskOptions)
    assert again == cfg


def test_numbers_given_for_text_keys_are_text():
    cfg = resolve_config({"out_dir": 2024}, ["--layers", "200"], task_config_class=TaskOptions)
    assert cfg.train.out_dir == "2024" and cfg.task.layers == "200"
    with pytest.raises(ConfigError, match="layers must be str, got True"):
        resolve_config({}, ["--layers", "true"], task_config_class=TaskOptions)


def test_parse_overrides_forms():
    assert parse_overrides(["--resume", "null", "--seed=3", "--tensorboard", "--out-dir", "exp/a"]) == {
        "resume": None, "seed": 3, "tensorboard": True, "out_dir": "exp/a"}
    assert TrainConfig().estimator in ("reinforce", "nvil", "vimco", "vimco-seq")
    # an empty value is the empty string (e.g. --eval-noise "" = clean only), not YAML's null
    assert parse_overrides(["--layers", "", "--out-dir="]) == {"layers": "", "out_dir": ""}
    assert resolve_config({}, ["--layers", ""], task_config_class=TaskOptions).task.layers == ""


def test_single_sample_estimators_accept_k_1():
    for estimator in ("reinforce", "nvil"):
        assert resolve_config({}, ["--estimator", estimator, "--num-samples", "1"], task_config_class=TaskOptions).train.num_samples == 1


@dataclass
class PathOptions:
    data_dir: str = ""
    mnist_root: Union[str, None] = None


def test_check_run_names_missing_folders_and_existing_work(tmp_path):
    from hardalign.train.config import check_run

    def check(*overrides):
        check_run(resolve_config({"out_dir": str(tmp_path / "run")}, list(overrides), task_config_class=PathOptions))

    check("--data-dir", str(tmp_path))  # an existing folder, a new out_dir: fine
    with pytest.raises(ConfigError, match=r"data_dir='.*missing': no such folder"):
        check("--data-dir", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"mnist_root='/nope': no such folder"):
        check("--mnist-root", "/nope")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"out_dir='.*file' exists and is not a folder"):
        check("--out-dir", str(tmp_path / "file"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint-4.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"already holds checkpoints \(checkpoint-4.pt\); continue it with --resume auto"):
        check()
    check("--resume", "auto")
    with pytest.raises(ConfigError, match=r"resume='/nope.pt': no such checkpoint file"):
        check("--resume", "/nope.pt")
