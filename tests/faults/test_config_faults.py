"""Faults in what the user asks for: flags, YAML, estimator/K, device, paths, noise specs and folders.

Every row runs ``hardalign train`` in this process over an ``out_dir`` that already holds a
finished run's files; each must fail before any work starts with exit status 2 and ONE line
``hardalign train: <message>`` naming the key or path, create no new output folder, and leave the
earlier run's files byte for byte.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile
import torch

from tests.faults.conftest import TOY, assert_kept, hardalign, snapshot


def _noise_folder(root: Path, *, fake: bool = False, empty: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if empty:
        return root
    rng = np.random.default_rng(0)
    for k in range(3):
        soundfile.write(str(root / f"n{k}.wav"), 0.1 * rng.standard_normal(1600).astype(np.float32), 16000)
    if fake:
        (root / "n3.wav").write_text("this is a text file named like audio")
    return root


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@dataclass
class ConfigFault:
    id: str
    args: Callable[[Path], list]  # tmp_path -> arguments after `hardalign train`
    message: str  # regex the one-line error must match
    skip_if: Callable[[], bool] = field(default=lambda: False)


def _toy(*extra):
    return lambda tmp: [*TOY, "--out-dir", tmp / "new-run", *extra]


def _timit(*extra):
    return lambda tmp: ["--task", "timit", "--data-dir", tmp, "--out-dir", tmp / "new-run", *extra]


CONFIG_FAULTS = [
    ConfigFault("unknown-flag", _toy("--num-sample", "3"), r"unknown key 'num_sample'; did you mean 'num_samples'\?"),
    ConfigFault("flag-without-dashes", _toy("num_samples", "3"), r"expected --key value, got 'num_samples'"),
    ConfigFault("wrong-type", _toy("--batch-size", "eight"), r"batch_size must be int, got 'eight'"),
    ConfigFault("out-of-range", _toy("--lr", "-1"), r"lr=-1.0: must be > 0"),
    ConfigFault("bad-yaml", lambda tmp: ["--config", _write(tmp / "bad.yaml", "task: toy\nlr: [0.1\n"), "--out-dir", tmp / "new-run"],
                r"bad.yaml' is not valid YAML"),
    ConfigFault("yaml-not-a-mapping", lambda tmp: ["--config", _write(tmp / "list.yaml", "- task\n- toy\n"), "--out-dir", tmp / "new-run"],
                r"list.yaml' must hold a mapping of keys to values, got list"),
    ConfigFault("yaml-unknown-key", lambda tmp: ["--config", _write(tmp / "typo.yaml", "task: faulty\nbatchsize: 8\n"), "--out-dir", tmp / "new-run"],
                r"typo.yaml'.*unknown key 'batchsize'; did you mean 'batch_size'\?"),
    ConfigFault("missing-config-file", lambda tmp: ["--config", tmp / "nope.yaml"], r"config file '.*nope.yaml' does not exist"),
    ConfigFault("unknown-task", lambda tmp: ["--task", "timmit", "--out-dir", tmp / "new-run"], r"unknown task 'timmit'; did you mean 'timit'\?"),
    ConfigFault("unknown-estimator", _toy("--estimator", "vimcoo"), r"estimator='vimcoo' is not registered; did you mean 'vimco'\?"),
    ConfigFault("vimco-with-one-sample", _toy("--num-samples", "1"), r"num_samples=1 with estimator='vimco'.*K >= 2.*--num-samples 2"),
    ConfigFault("loo-baseline-with-one-sample", _toy("--estimator", "reinforce", "--estimator-options", "baseline=loo", "--num-samples", "1"),
                r"num_samples=1 with estimator='reinforce'.*K >= 2"),
    ConfigFault("bad-estimator-option-value", _toy("--estimator", "nvil", "--estimator-options", "decay=2"), r"decay must be in \[0, 1\), got 2"),
    ConfigFault("unknown-estimator-option", _toy("--estimator", "reinforce", "--estimator-options", "baselin=loo"), r"did you mean 'baseline'\?"),
    ConfigFault("cuda-without-cuda", _toy("--device", "cuda"), r"device='cuda' but CUDA is not available", skip_if=torch.cuda.is_available),
    ConfigFault("missing-data-dir", lambda tmp: ["--task", "timit", "--data-dir", tmp / "no-data", "--out-dir", tmp / "new-run"],
                r"data_dir='.*no-data': no such folder"),
    ConfigFault("missing-eval-noise-folder", _timit("--eval-noise", "dir:/missing:10"), r"eval_noise='dir:/missing:10': noise folder '/missing' does not exist"),
    ConfigFault("missing-train-noise-folder", _timit("--noise", "dir:/does/not/exist"),
                r"noise='dir:/does/not/exist': noise folder '/does/not/exist' does not exist"),
    ConfigFault("unknown-noise-type", _timit("--noise", "white,foo"), r"noise='foo': unknown noise type 'foo'"),
    ConfigFault("old-train-noise-key", _timit("--train-noise", "white:0:15"), r"key 'train_noise' was retired: .*--noise white --snr 0:15"),
    ConfigFault("old-mix-scale-key", _timit("--mix-scale", "0.25"), r"key 'mix_scale' was renamed 'mix_speaker' \(--mix-speaker"),
    ConfigFault("empty-noise-folder", lambda tmp: _timit("--noise", f"dir:{_noise_folder(tmp / 'empty', empty=True)}")(tmp),
                r"noise folder '.*empty' holds 0 audio file\(s\)"),
    ConfigFault("noise-file-that-is-not-audio", lambda tmp: _timit("--eval-noise", f"dir:{_noise_folder(tmp / 'noises', fake=True)}:5")(tmp),
                r"noise file '.*n3.wav' is not readable audio"),
    ConfigFault("fresh-run-over-existing-checkpoints", lambda tmp: [*TOY, "--out-dir", tmp / "old-run"],
                r"out_dir '.*old-run' already holds checkpoints.*--resume auto"),
    ConfigFault("resume-from-missing-file", _toy("--resume", "/nope/checkpoint.pt"), r"resume='/nope/checkpoint.pt': no such checkpoint file"),
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished toy run, copied under each case's tmp_path: the work that must not be lost."""
    root = tmp_path_factory.mktemp("finished")
    from tests.faults.conftest import register_faulty_task

    register_faulty_task()
    status, err = hardalign("train", *TOY, "--max-steps", "4", "--out-dir", root / "old-run")
    assert status == 0, err
    return root / "old-run"


@pytest.mark.parametrize("fault", CONFIG_FAULTS, ids=lambda f: f.id)
def test_config_fault_fails_first_in_one_line(fault, tmp_path, finished_run):
    if fault.skip_if():
        pytest.skip("the condition this case injects is not present on this machine")
    import shutil

    shutil.copytree(finished_run, tmp_path / "old-run")
    (tmp_path / "train.jsonl").write_text("")  # makes tmp_path look like a data folder where one is wanted
    before = snapshot(tmp_path)
    started = time.monotonic()
    status, err = hardalign("train", *fault.args(tmp_path))
    elapsed = time.monotonic() - started
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hardalign train: "), err
    assert re.search(fault.message, lines[0]), lines[0]
    assert elapsed < 1.0, f"took {elapsed:.2f} s: the check must come before any work"
    assert not (tmp_path / "new-run").exists()  # no output folder was created
    assert_kept(before, tmp_path)


def test_debug_shows_the_traceback(tmp_path):
    from hardalign.train.config import ConfigError

    with pytest.raises(ConfigError, match="num_samples=1"):
        hardalign("train", *TOY, "--num-samples", "1", "--out-dir", tmp_path / "run", "--debug")
