"""Two gloo processes with the global batch split between them == one process on the whole batch."""

import socket

import pytest
import torch
import torch.multiprocessing as mp

from hardalign.train import load_checkpoint, resolve_config, train

CASES = {
    "nvil": {"estimator": "nvil"},  # running mean/variance buffers + a learned baseline
    "reinforce-ema": {"estimator": "reinforce", "estimator_options": {"baseline": "ema"}},
    "vimco": {"estimator": "vimco"},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.distributed
def test_two_ranks_match_one_process(tmp_path, toy_task):
    from toytask import distributed_worker

    def config(name, case, world):
        return {"task": "toy", "num_samples": 3, "batch_size": 8, "lr": 0.05, "max_steps": 12, "log_every": 4,
                "checkpoint_every": 6, "grad_clip": 5.0, "progress": False, "tensorboard": False,
                "out_dir": str(tmp_path / f"{name}-{world}"), **case}

    mp.spawn(distributed_worker, args=(2, free_port(), [config(n, c, 2) for n, c in CASES.items()]), nprocs=2, join=True)
    for name, case in CASES.items():
        train(resolve_config(config(name, case, 1)))
        single = load_checkpoint(tmp_path / f"{name}-1" / "checkpoint.pt")
        double = load_checkpoint(tmp_path / f"{name}-2" / "checkpoint.pt")
        assert double["world_size"] == 2 and len(double["rng"]) == 2 and double["step"] == single["step"] == 12
        for part in ("model", "estimator"):
            for key, value in single[part].items():
                torch.testing.assert_close(double[part][key], value, rtol=1e-4, atol=1e-5, msg=f"{name}: {part}.{key}")
        if name == "nvil":
            assert single["estimator"]["running_var"] > 0
        if name == "reinforce-ema":
            assert single["estimator"]["ema_updates"] == 12
        # only rank 0 wrote: one metrics file, one line per log interval plus the final evaluation
        lines = (tmp_path / f"{name}-2" / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 12 // 4 + 1
