"""``benchmarks/speech_compare.py``'s table: the dev-PER-against-time columns (``--dev-at``)."""

from __future__ import annotations

import argparse
import json

from tests.conftest import load_script


def test_dev_per_at_reads_the_last_evaluation_by_then(tmp_path):
    compare = load_script("benchmarks/speech_compare.py")
    metrics = tmp_path / "metrics.jsonl"
    records = [
        {"step": 10, "split": "train", "loss": 1.0},
        {"step": 200, "split": "dev", "train_wall_s": 80.0, "per": 0.9},
        {"step": 400, "split": "dev", "train_wall_s": 170.0, "per": 0.5},
        {"step": 600, "split": "dev", "train_wall_s": 260.0, "per": 0.25},
    ]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert compare.dev_per_at(metrics, 50.0) is None
    assert compare.dev_per_at(metrics, 170.0) == 0.5
    assert compare.dev_per_at(metrics, 1e9) == 0.25
    assert compare.dev_per_at(tmp_path / "missing.jsonl", 100.0) is None
    assert compare.time_to_target(metrics, 0.3) == (260.0, 600)
    args = argparse.Namespace(target_per=0.3, dev_at=[50.0, 200.0])
    row = {"run": "vimco-seq", "label": "vimco-seq", "per": 0.2, "noise": {}, "time_to_target": 260.0, "steps": 600,
           "variance": None, "dev_at": {50.0: None, 200.0: 0.5}}
    table = compare.format_table([row], [], args)
    assert "| dev PER at 50 s | dev PER at 200 s |" in table
    assert "| vimco-seq | 20.0 | 260 | n/a | 50.0 | 600 |" in table
