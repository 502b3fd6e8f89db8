"""One change at a time: short RAM runs on cluttered 60x60 digits, each a set of config overrides.

Every variant is ``recipes/glimpse/conf/ram_cluttered60.yaml`` (or ``--config``) plus its own
overrides (the ``VARIANTS`` table below), trained through the project's trainer for the same
wall-clock budget (``--minutes``, the trainer's ``max_minutes``: the step loop only), then scored
on the 1,000 fixed test canvases with one sampled rollout (M = 1). Each finished run is appended
as one JSON line to ``--log`` (so runs made on different days accumulate), and the Markdown table
of every logged run is written to ``--out`` and printed. The table records what a reader needs to
judge a row: steps reached, CPU threads, the load average while it ran, the seed and the commit.

Usage::

    python benchmarks/glimpse_ablate.py --variants baseline,step_nll --minutes 4
    python benchmarks/glimpse_ablate.py --table-only              # re-print the table from the log

The dev error curve (``eval_every`` steps) is kept in the log, not in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hardalign.train.config import resolve_config  # noqa: E402
from hardalign.train.loop import train  # noqa: E402
from hardalign.train.run import load_run  # noqa: E402

CONF = ROOT / "recipes" / "glimpse" / "conf"
#: the code a glimpse run depends on: uncommitted changes there mark the commit "+dirty"
WATCHED = ("hardalign/vision", "hardalign/objective.py", "hardalign/attention.py", "hardalign/estimators", "hardalign/train", "recipes/glimpse/conf")

#: name -> overrides on top of the config (each measured against the row it changes one thing of)
#: the config before this work: one reward at the end (RAM's), no auxiliary loss
FINAL = {"step_rewards": "final", "step_loss_weight": 0.0}
VARIANTS: dict[str, dict] = {
    "baseline": {**FINAL},
    "lr3e-3": {**FINAL, "lr": 0.003},
    # per-step classification (hardalign/vision/model.py)
    "aux": {**FINAL, "step_loss_weight": 1.0},
    "increments": {"step_rewards": "increments", "step_loss_weight": 1.0},
    "increments-noaux": {"step_rewards": "increments", "step_loss_weight": 0.0},
    "sum": {"step_rewards": "sum", "step_loss_weight": 0.0},
    # glimpse network, data
    "conv": {**FINAL, "glimpse_net": "conv"},
    "augment": {**FINAL, "augment_rotation": 10.0, "augment_scale": 0.1},
}
INCREMENTS = VARIANTS["increments"]
VARIANTS.update(
    {
        # one change at a time on top of "increments" (the best of the reward variants)
        "inc+conv": {**INCREMENTS, "glimpse_net": "conv"},
        "inc+augment": {**INCREMENTS, "augment_rotation": 10.0, "augment_scale": 0.1},
        "inc+h128": {**INCREMENTS, "hidden_size": 128},
        "inc+std0.1": {**INCREMENTS, "location_std": 0.1},
        "inc+std0.22": {**INCREMENTS, "location_std": 0.22},
        "inc+aux0.3": {**INCREMENTS, "step_loss_weight": 0.3},
        "inc+h128+augment": {**INCREMENTS, "hidden_size": 128, "augment_rotation": 10.0, "augment_scale": 0.1},
        "inc+h128+b32": {**INCREMENTS, "hidden_size": 128, "batch_size": 32},
        "inc+lr2e-3": {**INCREMENTS, "lr": 0.002},
        "inc+aux3": {**INCREMENTS, "step_loss_weight": 3.0},
        "inc+noclip": {**INCREMENTS, "grad_clip": 0.0},
        # cosine decay to 0 at max_steps (run with --steps)
        "inc+cosine": {**INCREMENTS, "lr_schedule": "cosine"},
        "inc+h128+cosine": {**INCREMENTS, "hidden_size": 128, "lr_schedule": "cosine"},
    }
)


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *WATCHED], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _dev_curve(metrics: Path) -> list[list[float]]:
    curve = []
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            if record.get("split") == "dev" and "error" in record:
                curve.append([record["step"], record["error"]])
    return curve


def run_variant(args: argparse.Namespace, name: str, overrides: dict) -> dict:
    out_dir = Path(args.workdir) / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    common = {
        "out_dir": str(out_dir),
        "max_minutes": args.minutes,
        "max_steps": args.steps or 10**9,
        "seed": args.seed,
        "progress": False,
        "tensorboard": False,
        "log_every": 100,
        "eval_every": args.eval_every,
        "eval_split": "dev",
        "device": "cpu",
    }
    config = resolve_config(Path(args.config), {**common, **overrides})
    load_start = os.getloadavg()[0]
    started = time.monotonic()
    result = train(config)
    seconds = time.monotonic() - started
    load_end = os.getloadavg()[0]
    run = load_run(out_dir / "checkpoint.pt", device="cpu")
    with torch.no_grad():
        test = run.task.evaluate(run.model, "test")
    row = {
        "name": name,
        "overrides": overrides,
        "config": Path(args.config).name,
        "minutes": args.minutes,
        "max_steps": args.steps or None,
        "threads": torch.get_num_threads(),
        "seed": args.seed,
        "steps": result.step,
        "train_seconds": round(seconds, 1),
        "test_error": test["error"],
        "dev_error": result.eval_metrics.get("error"),
        "dev_curve": _dev_curve(out_dir / "metrics.jsonl"),
        "load_start": round(load_start, 2),
        "load_end": round(load_end, 2),
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(f"[{name}] steps {row['steps']} test error {100 * row['test_error']:.1f}% dev {row['dev_curve']}", flush=True)
    return row


def budget(row: dict) -> str:
    if row.get("max_steps"):
        return f"{row['max_steps']} steps"
    return f"{row['minutes']:g} min"


def table(rows: list[dict]) -> str:
    lines = [
        "<!-- written by benchmarks/glimpse_ablate.py from its JSON-lines log; do not edit by hand -->",
        "Each row: `recipes/glimpse/conf/<config>` plus the overrides shown, trained for the stated budget "
        "(a number of steps, or minutes: the trainer's `max_minutes`) on the stated number of CPU threads of the shared 2-core machine, one seed; "
        "test error of one sampled rollout (M = 1) on the 1,000 fixed test canvases. Load = 1-minute load "
        "average at the start / end of the run (the other core was busy with other work). Runs with a step "
        "budget that the time cap stopped early are left out (they stay in the log).",
        "",
        "| variant | overrides | config | budget | threads | steps | train min | test error (M=1) | dev error | load | seed | commit | date |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.get("max_steps") and row["steps"] < row["max_steps"]:
            continue  # stopped by the time cap before its step budget (kept in the log, not comparable)
        overrides = ", ".join(f"{key}={value}" for key, value in row["overrides"].items()) or "-"
        dev = f"{100 * row['dev_error']:.1f}%" if row.get("dev_error") is not None else "-"
        lines.append(
            f"| {row['name']} | {overrides} | {row['config']} | {budget(row)} | {row['threads']} | {row['steps']} | "
            f"{row['train_seconds'] / 60:.1f} | "
            f"{100 * row['test_error']:.1f}% | {dev} | {row['load_start']:.1f} / {row['load_end']:.1f} | {row['seed']} | "
            f"{row['commit']} | {row['date']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="baseline", help=f"comma-separated, from {sorted(VARIANTS)}")
    parser.add_argument("--config", default=str(CONF / "ram_cluttered60.yaml"))
    parser.add_argument("--minutes", type=float, default=4.0, help="wall-clock budget per run (with --steps: a cap)")
    parser.add_argument("--steps", type=int, default=0, help="train for this many steps (0: until --minutes)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=1000, help="dev evaluation interval (steps)")
    parser.add_argument("--workdir", default="exp/glimpse_ablate")
    parser.add_argument("--log", default="benchmarks/results/glimpse_ablation.jsonl")
    parser.add_argument("--out", default="benchmarks/results/glimpse_ablation.md")
    parser.add_argument("--table-only", action="store_true", help="only rewrite the table from the log")
    args = parser.parse_args(argv)
    log = Path(args.log)
    if not args.table_only:
        names = [name.strip() for name in args.variants.split(",") if name.strip()]
        unknown = sorted(set(names) - set(VARIANTS))
        if unknown:
            parser.error(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
        torch.set_num_threads(args.threads)
        log.parent.mkdir(parents=True, exist_ok=True)
        for name in names:
            row = run_variant(args, name, VARIANTS[name])
            with log.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    text = table(rows)
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
