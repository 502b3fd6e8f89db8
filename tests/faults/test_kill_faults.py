"""SIGKILL: during training and in the middle of a checkpoint write (real subprocesses).

A killed run loses at most the steps since its last checkpoint: the checkpoints on disk all load,
a half-written one only ever exists under a temporary name (removed on resume, with a note), and
``--resume auto`` continues from the newest and says so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from tests.faults.conftest import HERE, TOY, hardalign

REPO = HERE.parents[1]

CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from hardalign.train import TASKS
    TASKS["faulty"] = "tests.faults.faulttask:FaultyTask"
    {patch}
    from hardalign.cli import main
    sys.exit(main({args!r}))
    """
)

#: Write half the checkpoint, tell the parent, and wait to be killed (at the second checkpoint).
SLOW_WRITE = textwrap.dedent(
    """
    import os, time
    import hardalign.train.checkpoint as checkpoint
    real = checkpoint.atomic_write_bytes
    calls = []
    def slow(path, data, **kwargs):
        calls.append(path)
        if len(calls) < 2:
            return real(path, data, **kwargs)
        import tempfile
        fd, name = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path))
        os.write(fd, data[: len(data) // 2]); os.fsync(fd)
        print("half written", flush=True)
        time.sleep(600)
    checkpoint.atomic_write_bytes = slow
    """
)


def _child(args: list, patch: str = "") -> subprocess.Popen:
    code = CHILD.format(repo=str(REPO), patch=patch,
                        args=[str(a) for a in args])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigkill_during_training(tmp_path):
    run = tmp_path / "run"
    process = _child(["train", *TOY, "--out-dir", run, "--max-steps", "100000", "--keep-checkpoints", "2"])
    try:
        # any kept checkpoint from step 4 on: rotation may already have removed checkpoint-4.pt
        _wait_for(lambda: any(int(p.stem.rpartition("-")[2]) >= 4 for p in run.glob("checkpoint-*.pt") if p.stem.rpartition("-")[2].isdigit()), process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close(), process.stderr.close()
    steps = sorted(torch.load(p, weights_only=True)["step"] for p in run.glob("checkpoint-*.pt"))
    # every kept checkpoint loads; a kill between writing the newest and removing the oldest leaves one extra
    assert len(steps) in (2, 3) and steps[-1] >= 4
    status, err = hardalign("train", *TOY, "--out-dir", run, "--max-steps", str(steps[-1] + 2), "--resume", "auto", "--keep-checkpoints", "2")
    assert status == 0, err
    assert f"resumed from {run / f'checkpoint-{steps[-1]}.pt'} at step {steps[-1]}" in err
    final = torch.load(run / "checkpoint.pt", weights_only=True)
    assert final["step"] == steps[-1] + 2
    # the training wall-clock carries over the kill (it is what train_wall_s reports)
    assert final["train_wall_s"] > torch.load(run / f"checkpoint-{steps[-1]}.pt", weights_only=True)["train_wall_s"] > 0


def test_sigkill_during_a_checkpoint_write(tmp_path):
    run = tmp_path / "run"
    process = _child(["train", *TOY, "--out-dir", run, "--max-steps", "8", "--keep-checkpoints", "2"], patch=SLOW_WRITE)
    try:
        assert process.stdout.readline().strip() == "half written", process.stderr.read()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close(), process.stderr.close()
    partial = list(run.glob(".checkpoint-4.pt.*.tmp"))
    assert len(partial) == 1  # the half-written data went to a temporary name only
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2  # the previous one is intact
    status, err = hardalign("train", *TOY, "--out-dir", run, "--max-steps", "4", "--resume", "auto", "--keep-checkpoints", "2")
    assert status == 0, err
    assert f"removed {partial[0].name}, a partial checkpoint left by an interrupted write" in err
    assert "resumed from" in err and "at step 2" in err
    assert not partial[0].exists() and torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4
