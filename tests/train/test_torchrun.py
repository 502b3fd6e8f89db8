"""``torchrun -m hardalign.cli train`` end to end (2 CPU ranks, gloo): rank 0 alone writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import socket

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_cli(tmp_path):
    out_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
               "-m", "hardalign.cli", "train", "--task", "sbn", "--estimator", "nvil", "--num-samples", "2",
               "--layers", "20,10", "--max-steps", "40", "--batch-size", "50", "--log-every", "20",
               "--eval-num-samples", "4", "--out-dir", str(out_dir), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and json.loads(summaries[0])["step"] == 40  # printed by rank 0 only
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(line["step"], line["split"]) for line in lines] == [(20, "train"), (40, "train"), (40, "dev")]
