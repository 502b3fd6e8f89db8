"""Atomic checkpoints: a crash while writing leaves the previous checkpoint intact."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hardalign.train import load_checkpoint, save_checkpoint
from hardalign.train.checkpoint import rng_state, set_rng_state


def test_crash_mid_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "weights": torch.ones(3)})

    def crash(fd):
        raise KeyboardInterrupt("simulated crash during fsync")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2, "weights": torch.zeros(3)})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # the temp file was removed


def test_killed_writer_leaves_previous_intact(tmp_path):
    """SIGKILL a process while it writes a large checkpoint: the old file still loads."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})
    script = textwrap.dedent(
        f"""
        import os, sys, torch
        from hardalign.train.checkpoint import save_checkpoint
        real_write = os.fdopen
        def slow_fdopen(*args, **kwargs):
            handle = real_write(*args, **kwargs)
            write = handle.write
            def write_slowly(data):
                write(data[: len(data) // 2]); handle.flush()
                print("half written", flush=True)
                sys.stdin.readline()  # wait here until the parent kills us
                return write(data[len(data) // 2 :])
            handle.write = write_slowly
            return handle
        os.fdopen = slow_fdopen
        save_checkpoint({str(path)!r}, {{"step": 2, "weights": torch.zeros(100_000)}})
        """
    )
    root = Path(__file__).resolve().parents[2]  # the repository, for an uninstalled checkout
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    with subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env) as process:
        try:
            assert process.stdout.readline().strip() == b"half written"
            assert len(list(tmp_path.glob(".checkpoint.pt.*.tmp"))) == 1  # the new data went to a temp file
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    assert load_checkpoint(path)["step"] == 1


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
