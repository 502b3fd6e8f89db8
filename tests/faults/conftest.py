"""Helpers of the fault-injection suite: run a command in-process, snapshot files, a tiny faulty task.

Every case of the suite injects one fault and checks two things: the message the user gets (one
line naming the file, key or step, and the fix) and that nothing already written is lost (the
files that existed before the fault still exist with the same bytes, or the newest good
checkpoint still loads).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import pytest

HERE = Path(__file__).resolve().parent

#: A tiny training run of the toy task (tests/train/toytask.py): 8 steps per epoch, a checkpoint every 2.
TOY = [
    "--task", "faulty", "--estimator", "vimco", "--num-samples", "2", "--batch-size", "8", "--log-every", "2",
    "--checkpoint-every", "2", "--progress", "false", "--tensorboard", "false",
]


def register_faulty_task() -> None:
    """Register the toy task with injectable faults (tests/faults/faulttask.py) as ``faulty``."""
    from hardalign.train import TASKS

    TASKS["faulty"] = "tests.faults.faulttask:FaultyTask"


@pytest.fixture(autouse=True)
def _faulty_task():
    register_faulty_task()
    yield
    from hardalign.train import TASKS

    TASKS.pop("faulty", None)


def hardalign(*args: str) -> tuple[int, str]:
    """Run ``hardalign ARGS`` in this process; returns (exit status, stderr)."""
    from hardalign.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main([str(a) for a in args])
    return status, err.getvalue()


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_kept(before: dict[str, bytes], root: Path) -> None:
    """Nothing written before the fault is lost: every file is still there with the same bytes."""
    after = snapshot(root)
    lost = [name for name in before if name not in after]
    changed = [name for name in before if name in after and after[name] != before[name]]
    assert not lost and not changed, f"lost {lost}, changed {changed}"


@dataclass
class Outcome:
    """What a case produced: the exit status (None: a library call) and the message."""

    status: Union[int, None]
    message: str
