"""Compare the estimators on the speech task with an equal wall-clock budget per run.

One script produces the recipe README's comparison table. For each run it trains with
``max_minutes`` = the budget (the trainer stops cleanly and checkpoints), evaluating dev every
``--eval-every`` steps, then scores the core test clean and under each frozen noise condition:

* ``reinforce``: prior proposal (p samples its own alignments), learned per-step baseline
  (Luo et al.); ``nvil``, ``vimco``, ``vimco-seq``: posterior proposal q(z | x, y);
* ``ctc``: the unidirectional CTC baseline with the same encoder.

Columns: test PER clean and per noise condition; training seconds to reach ``--target-per`` on
dev (first dev evaluation at or below it; evaluation time excluded); steps done; and the gradient
variance of the proposal's parameters at initialisation (trace of the covariance of
``--variance-draws`` gradient estimates on one fixed batch, same initial weights for every
estimator; the posterior's parameters for posterior proposals, p's emit head for the prior; the
trace divided by the squared norm of the mean gradient makes the two comparable).

    python benchmarks/speech_compare.py --data-dir exp/timit/data --minutes 6 \\
        --out recipes/timit/results/compare.md

Runs are independent processes (``--jobs`` at a time). On a shared machine the wall-clock budget
buys different numbers of steps in different runs; the table reports the steps done.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

RECIPE_CONF = Path(__file__).resolve().parent.parent / "recipes" / "timit" / "conf"
RUNS = ("reinforce", "nvil", "vimco", "vimco-seq", "ctc")
LABELS = {
    "reinforce": "reinforce (prior proposal, learned baseline)",
    "nvil": "nvil (posterior proposal)",
    "vimco": "vimco (posterior proposal)",
    "vimco-seq": "vimco-seq (posterior proposal)",
    "ctc": "CTC baseline (unidirectional, same encoder)",
}


def train_command(run: str, args: argparse.Namespace, out_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "hardalign.cli", "train", "--config", str(RECIPE_CONF / f"{run}.yaml"),
        "--data-dir", args.data_dir, "--out-dir", str(out_dir), "--max-minutes", str(args.minutes),
        "--eval-every", str(args.eval_every), "--progress", "false", "--resume", "auto",
        "--seed", str(args.seed), *args.overrides,
    ]


def run_all(args: argparse.Namespace, runs: list[str]) -> None:
    """Train every run (``args.jobs`` processes at a time); logs go to ``OUT_DIR/train.log``."""
    pending = list(runs)
    active: list[tuple[str, subprocess.Popen, object]] = []
    while pending or active:
        while pending and len(active) < args.jobs:
            run = pending.pop(0)
            out_dir = Path(args.exp) / run
            out_dir.mkdir(parents=True, exist_ok=True)
            log = open(out_dir / "train.log", "w")
            print(f"[speech_compare] training {run} for {args.minutes} min -> {out_dir}", flush=True)
            active.append((run, subprocess.Popen(train_command(run, args, out_dir), stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(2)
        for item in list(active):
            run, process, log = item
            if process.poll() is not None:
                log.close()
                active.remove(item)
                if process.returncode:
                    raise SystemExit(f"[speech_compare] {run} failed (exit {process.returncode}); see {Path(args.exp) / run / 'train.log'}")
                print(f"[speech_compare] {run} finished", flush=True)


def dev_evaluations(metrics_file: Path) -> list[dict]:
    """The dev evaluations logged in a run's ``metrics.jsonl``, in order (none if it is missing)."""
    if not metrics_file.is_file():
        return []
    records = (json.loads(line) for line in metrics_file.read_text().splitlines())
    return [r for r in records if r.get("split") == "dev" and "per" in r]


def time_to_target(metrics_file: Path, target: float) -> tuple[float | None, int | None]:
    """Training seconds and step of the first dev evaluation with PER <= target."""
    for record in dev_evaluations(metrics_file):
        if record["per"] <= target:
            return record.get("train_wall_s"), record.get("step")
    return None, None


def dev_per_at(metrics_file: Path, seconds: float) -> float | None:
    """Dev PER of the last evaluation at or before ``seconds`` of training (``train_wall_s``)."""
    per = None
    for record in dev_evaluations(metrics_file):
        if record.get("train_wall_s", math.inf) <= seconds:
            per = record["per"]
    return per


def last_train_step(metrics_file: Path) -> int | None:
    steps = [json.loads(line)["step"] for line in metrics_file.read_text().splitlines() if '"split": "train"' in line]
    return steps[-1] if steps else None


def gradient_variance(run: str, args: argparse.Namespace) -> tuple[float, float] | None:
    """Trace of the covariance of the proposal's gradient over repeated estimates at initialisation,
    and that trace divided by the squared norm of the mean gradient (comparable across parameter sets)."""
    if run == "ctc" or args.variance_draws < 2:  # benchmarks/speech_variance.py measures it in full
        return None
    from hardalign.data import collate_speech
    from hardalign.estimators import build_estimator
    from hardalign.objective import training_terms
    from hardalign.train.config import resolve_config
    from hardalign.train.tasks import build_task

    config = resolve_config(str(RECIPE_CONF / f"{run}.yaml"), ["--data-dir", args.data_dir, *args.overrides])
    task = build_task("timit", config.task, config.train, device=torch.device("cpu"))
    torch.manual_seed(args.seed)  # the same initial weights for every estimator
    model = task.build_model()
    model.budget_spent = 1.0  # past any ctc_warmup stage: the bound's gradient is what is measured
    dataset = task.train_set
    batch = collate_speech([dataset[i] for i in range(min(args.variance_batch, len(dataset)))])
    estimator = build_estimator(config.train.estimator, **config.train.estimator_options)
    params = list(model.posterior.parameters()) if model.proposal == "posterior" else list(model.emit_head.parameters())
    draws = []
    for _ in range(args.variance_draws):
        model.zero_grad(set_to_none=True)
        out = training_terms(model(batch, num_samples=config.train.num_samples, step=0), estimator)
        out["loss"].backward()
        draws.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]))
    stacked = torch.stack(draws)  # [draws, params]
    trace = float(stacked.var(dim=0).sum())
    return trace, trace / max(float(stacked.mean(0).square().sum()), 1e-30)


def format_table(rows: list[dict], noise: list[str], args: argparse.Namespace) -> str:
    head = ["run", "test PER clean"] + [f"test PER {n.rpartition(':')[0]} {n.rpartition(':')[2]} dB" for n in noise] + [f"s to dev PER <= {100 * args.target_per:g}%"] + [f"dev PER at {t:g} s" for t in args.dev_at] + ["steps", "grad. variance at init (trace)", "variance / mean^2"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pct(x):
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"

    for row in rows:
        cells = [row["label"], pct(row["per"])] + [pct(row["noise"].get(n)) for n in noise]
        cells.append("not reached" if row["time_to_target"] is None else f"{row['time_to_target']:.0f}")
        cells += [pct(row["dev_at"].get(t)) for t in args.dev_at]
        cells.append(str(row["steps"]))
        if row["variance"] is not None:
            cells += [f"{row['variance'][0]:.3g}", f"{row['variance'][1]:.3g}"]
        else:  # CTC has no latent decisions; with --variance-draws < 2 see benchmarks/speech_variance.py
            cells += ["n/a (no latent)" if row["run"] == "ctc" else "not measured here"] * 2
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="prepared manifests (recipes/timit/run.sh --stop-stage 1)")
    parser.add_argument("--exp", default="exp/speech_compare", help="where the runs go")
    parser.add_argument("--minutes", type=float, default=6.0, help="wall-clock training budget per run")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
    parser.add_argument("--eval-noise", default="white:10,white:0", help="test noise conditions TYPE:SNR,...")
    parser.add_argument("--target-per", type=float, default=0.3, help="dev PER target for the time-to-target column")
    parser.add_argument("--eval-every", type=int, default=50, help="steps between dev evaluations")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variance-draws", type=int, default=16)
    parser.add_argument("--variance-batch", type=int, default=16)
    parser.add_argument("--decoder", default=None, choices=("greedy", "median", "beam"), help="decoder for the test columns (default: each run's config); the dev columns are the runs' own evaluations")
    parser.add_argument("--dev-at", default="", help="comma-separated training seconds: a column of dev PER at each (the last evaluation by then)")
    parser.add_argument("--skip-training", action="store_true", help="only evaluate existing runs in --exp")
    parser.add_argument("--out", default="recipes/timit/results/compare.md", help="Markdown table (JSON beside it)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run, after --")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        parser.error(f"--runs: unknown {unknown}; choose from {list(RUNS)}")
    noise = [c.strip() for c in args.eval_noise.split(",") if c.strip()]
    try:
        args.dev_at = [float(t) for t in args.dev_at.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--dev-at: expected comma-separated seconds, got {args.dev_at!r}")
    if not args.skip_training:
        run_all(args, runs)
    from hardalign.train.evaluate import evaluate_checkpoint

    rows = []
    for run in runs:
        out_dir = Path(args.exp) / run
        result = evaluate_checkpoint(None, checkpoint=out_dir / "checkpoint.pt", split="test", overrides=["--eval-noise", args.eval_noise, "--data-dir", args.data_dir, *(["--decoder", args.decoder] if args.decoder else [])])
        metrics = result["metrics"]
        noisy = {}
        for condition in noise:
            kind, _, snr = condition.rpartition(":")
            noisy[condition] = metrics.get(f"per_{kind}{float(snr):g}db")
        seconds, _ = time_to_target(out_dir / "metrics.jsonl", args.target_per)
        rows.append({
            "run": run, "label": LABELS[run], "per": metrics["per"], "noise": noisy, "time_to_target": seconds,
            "steps": last_train_step(out_dir / "metrics.jsonl"), "variance": gradient_variance(run, args),
            "dev_at": {t: dev_per_at(out_dir / "metrics.jsonl", t) for t in args.dev_at},
        })
        print(f"[speech_compare] {run}: test PER {100 * metrics['per']:.1f}%", flush=True)
    table = format_table(rows, noise, args)
    header = (f"Equal wall-clock budget: {args.minutes:g} min of training per run ({args.jobs} at a time, "
              f"{os.cpu_count()} CPU cores visible, torch threads per run from the configs), data `{args.data_dir}`, "
              f"seed {args.seed}" + (f", overrides `{' '.join(args.overrides)}`" if args.overrides else "")
              + (f", test decoded with `{args.decoder}`" if args.decoder else "") + ". PER in %, 39 phones, core test.\n\n")
    print(header + table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + table)
    out.with_suffix(".json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
