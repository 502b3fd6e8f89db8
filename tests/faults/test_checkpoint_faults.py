"""Faults in checkpoints: damaged, missing, unsafe (a pickle that runs code), older format; NaN in the data.

Each row starts from a toy run that wrote checkpoints at steps 2 and 4 (``keep_checkpoints=2``:
``checkpoint-2.pt``, ``checkpoint-4.pt`` and ``checkpoint.pt``, the newest), injects one fault
and runs a ``hardalign`` command. It checks the exit status, the message, and what must
survive: the files written before, or the newest good checkpoint.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from tests.faults.conftest import TOY, assert_kept, hardalign, snapshot


class RunsCode:
    """Unpickling this creates the folder ``path`` (a stand-in for any code an attacker would run)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def write_malicious(path: Path, marker: Path) -> Path:
    state = torch.load(path.parent / "checkpoint.pt", weights_only=True)
    state["model"]["payload"] = RunsCode(marker)
    torch.save(state, path)
    return path


def write_format_1(run: Path, path: Path) -> Path:
    """Rewrite the run's newest checkpoint the way hardalign wrote them before format 2."""
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["format"] = 1
    state["rng"] = [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}]
    torch.save(state, path)
    return path


@dataclass
class CheckpointFault:
    id: str
    inject: Callable[[Path], list]  # run folder -> the hardalign command to run after the fault
    status: int
    message: str  # regex over stderr
    check: Callable[[Path, dict], None] = lambda run, before: None  # what must survive


def _resume(run: Path, *extra) -> list:
    return ["train", *TOY, "--out-dir", run, "--max-steps", "6", "--resume", "auto", *extra]


def truncate_newest(run: Path) -> list:
    data = (run / "checkpoint-4.pt").read_bytes()
    (run / "checkpoint-4.pt").write_bytes(data[: len(data) // 2])  # checkpoint.pt is the same file (a hard link)
    return _resume(run)


def damaged_newest_survives(run: Path, before: dict) -> None:
    assert (run / "checkpoint-4.pt.damaged").read_bytes() == before["checkpoint-4.pt"]  # set aside, not deleted
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 6
    assert (run / "metrics.jsonl").read_bytes().startswith(before["metrics.jsonl"])


def damage_all(run: Path) -> list:
    for name in ("checkpoint-2.pt", "checkpoint-4.pt"):
        (run / name).write_bytes(b"PK\x03\x04 not really a zip")
    return _resume(run)


def delete_stable_name(run: Path) -> list:
    (run / "checkpoint.pt").unlink()
    return _resume(run)


def resumed_to_six(run: Path, before: dict) -> None:
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 6


def garbage_resume_file(run: Path) -> list:
    (run / "other.pt").write_bytes(b"garbage" * 100)
    return _resume(run)[:-2] + ["--resume", run / "other.pt"]


def malicious_resume(run: Path) -> list:
    write_malicious(run / "evil.pt", run / "PWNED")
    return _resume(run)[:-2] + ["--resume", run / "evil.pt"]


def malicious_evaluate(run: Path) -> list:
    return ["evaluate", "--checkpoint", write_malicious(run / "evil.pt", run / "PWNED")]


def malicious_convert(run: Path) -> list:
    return ["checkpoint", "convert", write_malicious(run / "evil.pt", run / "PWNED"), run / "converted.pt"]


def nothing_ran(run: Path, before: dict) -> None:
    assert not (run / "PWNED").exists()
    assert not (run / "converted.pt").exists()


def format_1_resume(run: Path) -> list:
    write_format_1(run, run / "checkpoint-4.pt")
    return _resume(run)


def format_1_trusted(run: Path) -> list:
    write_format_1(run, run / "checkpoint-4.pt")
    return _resume(run, "--trust-checkpoint")


def format_1_convert(run: Path) -> list:
    write_format_1(run, run / "old.pt")
    return ["checkpoint", "convert", run / "old.pt", run / "new.pt"]


def converted_loads(run: Path, before: dict) -> None:
    state = torch.load(run / "new.pt", weights_only=True)
    assert state["format"] == 2 and state["step"] == 4
    assert (run / "old.pt").read_bytes() == before["old.pt"]  # the original is untouched


def nan_features(run: Path) -> list:
    return _resume(run, "--nan-features", "true")


def last_good_kept(run: Path, before: dict) -> None:
    assert_kept({k: v for k, v in before.items() if k.startswith("checkpoint")}, run)


CHECKPOINT_FAULTS = [
    CheckpointFault("truncated-newest-checkpoint", truncate_newest, 0,
                    r"warning: skipped a damaged checkpoint: checkpoint '.*checkpoint-4.pt' cannot be read.*moved it to "
                    r"checkpoint-4.pt.damaged\n(.*\n)*resumed from .*checkpoint-2.pt at step 2", damaged_newest_survives),
    CheckpointFault("every-checkpoint-damaged", damage_all, 2,
                    r"^hardalign train: resume=auto: none of the 2 checkpoint\(s\) in '.*' loads .*not starting from scratch",
                    lambda run, before: assert_kept(before, run)),
    CheckpointFault("stable-name-missing", delete_stable_name, 0, r"resumed from .*checkpoint-4.pt at step 4", resumed_to_six),
    CheckpointFault("resume-file-not-a-checkpoint", garbage_resume_file, 2,
                    r"^hardalign train: checkpoint '.*other.pt' cannot be read", lambda run, before: assert_kept(before, run)),
    CheckpointFault("checkpoint-that-runs-code-on-resume", malicious_resume, 2,
                    r"^hardalign train: checkpoint '.*evil.pt' refused: loading it would unpickle \S*mkdir.*--trust-checkpoint",
                    nothing_ran),
    CheckpointFault("checkpoint-that-runs-code-on-evaluate", malicious_evaluate, 2,
                    r"^hardalign evaluate: checkpoint '.*evil.pt' refused: loading it would unpickle \S*mkdir", nothing_ran),
    CheckpointFault("checkpoint-that-runs-code-on-convert", malicious_convert, 2,
                    r"^hardalign checkpoint convert: .*evil.pt' refused.*not a hardalign format-1 checkpoint", nothing_ran),
    CheckpointFault("format-1-checkpoint", format_1_resume, 2,
                    r"^hardalign train: checkpoint '(.*checkpoint-4.pt)' looks like an older hardalign checkpoint \(format 1.*\); "
                    r"convert it once with: hardalign checkpoint convert \1 \1$", lambda run, before: assert_kept(before, run)),
    CheckpointFault("format-1-checkpoint-trusted", format_1_trusted, 0, r"resumed from .*checkpoint-4.pt at step 4", resumed_to_six),
    CheckpointFault("format-1-checkpoint-converted", format_1_convert, 0, r"^$", converted_loads),
    CheckpointFault("nan-in-features", nan_features, 1,
                    r"^hardalign train: step 5: the batch holds NaN or infinite values in x; the input data are damaged.*"
                    r"the last good checkpoint '.*checkpoint.pt' \(step 4\) is kept$",
                    last_good_kept),
]


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory) -> Path:
    from tests.faults.conftest import register_faulty_task

    register_faulty_task()
    run = tmp_path_factory.mktemp("checkpointed") / "run"
    status, err = hardalign("train", *TOY, "--max-steps", "4", "--keep-checkpoints", "2", "--out-dir", run)
    assert status == 0, err
    assert sorted(p.name for p in run.glob("checkpoint*")) == ["checkpoint-2.pt", "checkpoint-4.pt", "checkpoint.pt"]
    return run


@pytest.mark.parametrize("fault", CHECKPOINT_FAULTS, ids=lambda f: f.id)
def test_checkpoint_fault(fault, tmp_path, checkpointed_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run, symlinks=True)
    (run / "checkpoint.pt").unlink()  # copytree copies; restore the hard link the trainer makes
    (run / "checkpoint.pt").hardlink_to(run / "checkpoint-4.pt")
    command = fault.inject(run)
    before = snapshot(run)
    status, err = hardalign(*command)
    assert status == fault.status, err
    assert re.search(fault.message, err.strip(), re.MULTILINE), err
    if fault.status:  # one error line, the last (progress lines such as "resumed from" may come before it)
        assert [line for line in err.splitlines() if line.startswith("hardalign ")] == err.strip().splitlines()[-1:], err
    fault.check(run, before)
