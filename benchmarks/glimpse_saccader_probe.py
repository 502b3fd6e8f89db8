"""Saccader-style model: how good is the representation, and what does a policy make of it.

Two kinds of run, each appended as one JSON line to ``--log`` and tabulated into ``--out``:

* ``representation NAME STEPS [OVERRIDES]``: stage 1 only (``representation_steps = STEPS``) of
  ``recipes/glimpse/conf/saccader_cluttered60.yaml`` plus the JSON overrides, then on the 1,000
  fixed test canvases: the accuracy of the mean of *all* cells' logits, and of the mean of the
  1 / 3 / 6 cells ranked best by the logit of the image's predicted class (the cells the
  label-only pretraining teaches the policy to pick; no label is used to rank them).
* ``policy NAME FROM REP_STEPS EXTRA_STEPS [OVERRIDES]``: resume the representation run ``FROM``
  (its checkpoint) and train ``EXTRA_STEPS`` more steps (pretraining, then the estimator), then
  the test accuracy of one sampled rollout (M = 1), of the greedy rollout, and the attended
  fraction.

Usage::

    python benchmarks/glimpse_saccader_probe.py representation c64_d5_3000 3000 '{"saccader_channels": 64}'
    python benchmarks/glimpse_saccader_probe.py policy sp_final c64_d5_3000 3000 2000 '{"step_rewards": "final"}'
    python benchmarks/glimpse_saccader_probe.py table

One CPU thread (the machine is shared); the table gives each run's wall-clock seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hardalign.train.config import resolve_config  # noqa: E402
from hardalign.train.loop import train  # noqa: E402
from hardalign.train.run import load_run  # noqa: E402

CONFIG = ROOT / "recipes" / "glimpse" / "conf" / "saccader_cluttered60.yaml"
WORKDIR = Path("exp/glimpse_saccader_probe")
LOG = ROOT / "benchmarks" / "results" / "glimpse_saccader_probe.jsonl"
OUT = ROOT / "benchmarks" / "results" / "glimpse_saccader_probe.md"
COMMON = {"max_minutes": None, "progress": False, "tensorboard": False, "log_every": 200, "eval_every": 0, "device": "cpu", "num_threads": 1, "seed": 0}


def representation(name: str, steps: int, overrides: dict) -> dict:
    out = WORKDIR / name
    shutil.rmtree(out, ignore_errors=True)
    config = {**COMMON, "out_dir": str(out), "max_steps": steps, "representation_steps": steps, "pretrain_steps": 0, **overrides}
    started = time.monotonic()
    train(resolve_config(CONFIG, config))
    seconds = time.monotonic() - started
    run = load_run(out / "checkpoint.pt", device="cpu")
    images, labels = run.task.split_data("test")
    correct = {"all": 0, "top1": 0, "top3": 0, "top6": 0}
    with torch.no_grad():
        for start in range(0, len(labels), 500):
            memory = run.model.encode({"images": images[start : start + 500]})
            target = labels[start : start + 500]
            cell_logits = memory["cell_logits"]  # [B, cells, classes]
            correct["all"] += (cell_logits.mean(1).argmax(-1) == target).sum().item()
            ranked = run.model.ranked_cells(memory)  # [B, cells], by the predicted class's logit
            for k in (1, 3, 6):
                chosen = cell_logits.gather(1, ranked[:, :k, None].expand(-1, -1, cell_logits.shape[-1])).mean(1)
                correct[f"top{k}"] += (chosen.argmax(-1) == target).sum().item()
    return {"kind": "representation", "name": name, "steps": steps, "seconds": round(seconds), "overrides": overrides,
            **{key: value / len(labels) for key, value in correct.items()}}


def policy(name: str, source: str, rep_steps: int, extra_steps: int, overrides: dict) -> dict:
    out = WORKDIR / name
    shutil.rmtree(out, ignore_errors=True)
    source_row = next(row for row in _rows() if row["kind"] == "representation" and row["name"] == source)
    config = {**COMMON, **source_row["overrides"], "out_dir": str(out), "representation_steps": rep_steps,
              "max_steps": rep_steps + extra_steps, "resume": str(WORKDIR / source / "checkpoint.pt"), **overrides}
    started = time.monotonic()
    train(resolve_config(CONFIG, config))
    seconds = time.monotonic() - started
    sampled = load_run(out / "checkpoint.pt", device="cpu")
    greedy = load_run(out / "checkpoint.pt", device="cpu", overrides={"eval_greedy": True})
    with torch.no_grad():
        metrics = sampled.task.evaluate(sampled.model, "test")
        metrics_greedy = greedy.task.evaluate(greedy.model, "test")
    return {"kind": "policy", "name": name, "from": source, "extra_steps": extra_steps, "seconds": round(seconds),
            "overrides": overrides, "accuracy": metrics["accuracy"], "attended_fraction": metrics["attended_fraction"],
            "accuracy_greedy": metrics_greedy["accuracy"]}


def _rows() -> list[dict]:
    return [json.loads(line) for line in LOG.read_text().splitlines()] if LOG.exists() else []


def table(rows: list[dict]) -> str:
    def fmt(overrides: dict) -> str:
        return ", ".join(f"{key}={value}" for key, value in overrides.items()) or "-"

    lines = [
        "<!-- written by benchmarks/glimpse_saccader_probe.py from its JSON-lines log; do not edit by hand -->",
        "`recipes/glimpse/conf/saccader_cluttered60.yaml` plus the overrides shown (when the rows were run its "
        "`saccader_channels` was 32, `saccader_depth` 5: rows without those overrides are that), one CPU thread "
        "of the shared 2-core machine, seed 0; 1,000 fixed test canvases.",
        "",
        "Representation alone (stage 1): accuracy of the mean of all cells' logits and of the 1 / 3 / 6 cells ranked "
        "best by the predicted class's logit.",
        "",
        "| run | overrides | steps | seconds | all cells | best cell | best 3 | best 6 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["kind"] == "representation":
            lines.append(
                f"| {row['name']} | {fmt(row['overrides'])} | {row['steps']} | {row['seconds']} | {100 * row['all']:.1f}% | "
                f"{100 * row['top1']:.1f}% | {100 * row['top3']:.1f}% | {100 * row['top6']:.1f}% |"
            )
    lines += [
        "",
        "Then pretraining and the policy (stages 2 and 3) from a representation run: 6 glimpses, test accuracy of one "
        "sampled rollout (M = 1) and of the greedy one, fraction of the image attended.",
        "",
        "| run | from | overrides | extra steps | seconds | accuracy (M=1) | greedy | attended |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["kind"] == "policy":
            lines.append(
                f"| {row['name']} | {row['from']} | {fmt(row['overrides'])} | {row['extra_steps']} | {row['seconds']} | "
                f"{100 * row['accuracy']:.1f}% | {100 * row['accuracy_greedy']:.1f}% | {100 * row['attended_fraction']:.1f}% |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    if not argv or argv[0] not in ("representation", "policy", "table"):
        print(__doc__)
        return 2
    if argv[0] == "representation":
        row = representation(argv[1], int(argv[2]), json.loads(argv[3]) if len(argv) > 3 else {})
    elif argv[0] == "policy":
        row = policy(argv[1], argv[2], int(argv[3]), int(argv[4]), json.loads(argv[5]) if len(argv) > 5 else {})
    if argv[0] != "table":
        row["load"] = round(os.getloadavg()[0], 2)
        row["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        LOG.parent.mkdir(parents=True, exist_ok=True)
        with LOG.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row))
    text = table(_rows())
    OUT.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
