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


class _RunsCode:
    """Unpickling this creates a marker folder: any code an attacker's checkpoint would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    from hardalign.train.checkpoint import UnsafeCheckpointError

    marker = tmp_path / "PWNED"
    torch.save({"step": 1, "model": {"w": torch.ones(2), "payload": _RunsCode(marker)}}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"evil.pt' refused: loading it would unpickle \S*mkdir.*--trust-checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    # --trust-checkpoint is the explicit opt-in: then the pickle runs (which is why it is opt-in)
    load_checkpoint(tmp_path / "evil.pt", trust=True)
    assert marker.exists()


def _format_1(path):
    """A checkpoint written the way hardalign wrote them before format 2 (python/numpy RNG objects)."""
    import random

    import numpy as np

    state = {"format": 1, "step": 7, "model": {"w": torch.arange(3.0)},
             "rng": [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}]}
    torch.save(state, path)
    return state


def test_format_1_checkpoint_gives_the_conversion_command_and_converts(tmp_path):
    from hardalign.train.checkpoint import UnsafeCheckpointError, convert_checkpoint

    old = tmp_path / "old.pt"
    written = _format_1(old)
    with pytest.raises(UnsafeCheckpointError, match=rf"format 1.*convert it once with: hardalign checkpoint convert {old} {old}$"):
        load_checkpoint(old)
    assert load_checkpoint(old, trust=True)["step"] == 7  # the opt-in route
    convert_checkpoint(old, old)  # in place, reading only numpy's array types
    state = load_checkpoint(old)
    assert state["format"] == 2 and state["step"] == 7 and torch.equal(state["model"]["w"], torch.arange(3.0))
    import random

    import numpy as np

    set_rng_state(state["rng"][0])  # the converted states restore the same streams
    after_convert = (random.random(), np.random.rand())
    random.setstate(written["rng"][0]["python"])
    np.random.set_state(written["rng"][0]["numpy"])
    assert (random.random(), np.random.rand()) == after_convert


def test_checkpoint_holds_only_plain_types(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"step": 1, "rng": [rng_state()]})
    state = torch.load(tmp_path / "c.pt", weights_only=True)  # no allow-listed extras needed
    set_rng_state(state["rng"][0])


def test_rotation_keeps_the_newest_n(tmp_path):
    path = tmp_path / "checkpoint.pt"
    for step in (2, 4, 6, 8):
        save_checkpoint(path, {"step": step}, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4.pt", "checkpoint-6.pt", "checkpoint-8.pt", "checkpoint.pt"]
    assert os.path.samefile(path, tmp_path / "checkpoint-8.pt")  # the stable name is a hard link, not a copy
    save_checkpoint(path, {"step": 10})  # keep=1: only the stable name
    assert load_checkpoint(path)["step"] == 10


def test_resume_falls_back_past_a_damaged_newest(tmp_path):
    from hardalign.train.checkpoint import CheckpointError, find_resume_checkpoint

    path = tmp_path / "checkpoint.pt"
    assert find_resume_checkpoint(path, "auto") == (None, None, [])  # nothing yet: a fresh start
    for step in (2, 4):
        save_checkpoint(path, {"step": step}, keep=2)
    with pytest.raises(FileExistsError, match="--resume auto"):
        find_resume_checkpoint(path, None)
    (tmp_path / "checkpoint-4.pt").write_bytes(b"damaged")
    chosen, state, warnings = find_resume_checkpoint(path, "auto")
    assert chosen == tmp_path / "checkpoint-2.pt" and state["step"] == 2
    assert len(warnings) == 1 and "checkpoint-4.pt' cannot be read" in warnings[0] and "checkpoint-4.pt.damaged" in warnings[0]
    assert (tmp_path / "checkpoint-4.pt.damaged").read_bytes() == b"damaged"  # set aside, not deleted
    (tmp_path / "checkpoint-2.pt").write_bytes(b"damaged too")
    with pytest.raises(CheckpointError, match="none of the 2 checkpoint.*not starting from scratch"):
        find_resume_checkpoint(path, "auto")
