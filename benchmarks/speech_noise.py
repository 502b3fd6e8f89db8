"""Noise and multi-speaker robustness: the table of issue 11 for ``recipes/timit/README.md``.

One command trains six models on one prepared corpus and scores each on the core test set under
every condition, hard alignment (vimco-seq) and the CTC baseline side by side:

* trained **clean**: ``recipes/timit/conf/vimco-seq.yaml`` and ``conf/ctc.yaml``;
* trained **noisy**: ``conf/noisy.yaml`` (multi-condition: its ``noise``, ``snr``,
  ``clean_fraction`` and any ``cmvn`` / ``specaug_*`` / ``consistency_weight`` keys) and ``conf/ctc.yaml`` with the same
  keys read from ``noisy.yaml``;
* trained **multi-speaker**: ``conf/multispeaker.yaml`` and ``conf/ctc.yaml`` with its keys, once per
  mix level of ``--mixes`` (default 0.1, 0.25 and 0.5, MultiTIMIT's levels: ``--mix-speaker L``).

Test conditions: clean, white / pink / babble noise at 10 and 0 dB (frozen per utterance,
``eval_noise``), and the two-speaker mix at each level of ``--mixes`` (``mix_speaker L``; the
target is the first speaker's transcript). Targets (offline corpus): the noise-trained hard-alignment model's PER at
white 10 dB <= 1.6x its clean PER, at white 0 dB <= 3x, and its clean PER <= 1.2x the
clean-trained hard-alignment model's.

Each run is ``hardalign train --config CONF --data-dir DIR --out-dir OUT --max-minutes M
--max-steps 100000 --eval-every 0 --num-threads 1 --seed S`` plus the run's keys, then the
evaluations of the test split (``--mix-speaker 0 --eval-noise <the six>`` and, per mix level L,
``--mix-speaker L --eval-noise ""``), all in one subprocess per run (commands head its
``train.log``), ``--jobs`` runs at a time with one intra-op thread each. A finished run leaves
``OUT/result.json`` and is skipped when the command is re-run (``--force`` retrains); one that
lacks a column of this command (a mix level added since) is only scored on it; an unfinished one
restarts.

    python benchmarks/speech_noise.py --minutes 10 --jobs 2                    # synthesises exp/noise/data
    python benchmarks/speech_noise.py --minutes 10 --jobs 2 --data-dir exp/timit/data

Writes a Markdown table (default ``recipes/timit/results/noise.md``) and JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
RECIPE_CONF = REPO / "recipes" / "timit" / "conf"
MODELS = ("hard", "ctc")
LABELS = {"hard": "hard alignment (vimco-seq)", "ctc": "CTC baseline"}
CONFIGS = {"clean": "vimco-seq.yaml", "noisy": "noisy.yaml", "multi": "multispeaker.yaml"}  # the hard-alignment runs' configs
#: keys of the noisy / multi-speaker configs that the CTC run of the same training copies
NOISE_KEYS = ("noise", "snr", "clean_fraction", "mix_speaker", "cmvn", "specaug_freq", "specaug_time", "specaug_masks", "consistency_weight", "noise_copies")
EVAL_NOISE = ("white:10", "white:0", "pink:10", "pink:0", "babble:10", "babble:0")
MIXES = (0.1, 0.25, 0.5)  # MultiTIMIT's levels


def trainings(mixes) -> tuple[str, ...]:
    """The training conditions: clean, noisy, and the mix at each level (``multi0.25``)."""
    return ("clean", "noisy", *(f"multi{m:g}" for m in mixes))


def mix_level(training: str) -> str:
    """The mix level of a multi-speaker training (``multi0.25`` -> ``"0.25"``), else ``""``."""
    return training[len("multi"):] if training.startswith("multi") else ""


def training_label(training: str) -> str:
    if training.startswith("multi"):
        return f"multi-speaker {mix_level(training)}"
    return {"clean": "clean", "noisy": "noisy (multi-condition)"}[training]


def columns(mixes) -> tuple[str, ...]:
    return ("clean", *EVAL_NOISE, *(f"mix{m:g}" for m in mixes))


def log(message: str) -> None:
    print(f"[speech_noise] {message}", flush=True)


def child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir) if args.data_dir else Path(args.work_dir) / "data"


def run_config(training: str, model: str, args: argparse.Namespace) -> tuple[Path, list[str]]:
    """The config file of a run and the keys it adds (the CTC runs copy the noise keys; a
    ``multiL`` run sets the mix level L)."""
    conf = Path(args.conf_dir)
    kind = "multi" if training.startswith("multi") else training
    mix = mix_level(training)
    level = ["--mix-speaker", mix] if mix else []  # bare "multi": the config's keys alone
    if model == "hard":
        return conf / CONFIGS[kind], level
    keys: list[str] = []
    if kind != "clean":
        source = yaml.safe_load((conf / CONFIGS[kind]).read_text()) or {}
        for key in NOISE_KEYS:
            if key in source and not (kind == "multi" and key == "mix_speaker"):  # the level is the run's own
                keys += [f"--{key.replace('_', '-')}", str(source[key])]
    return conf / "ctc.yaml", keys + level


def budget_keys(args: argparse.Namespace) -> list[str]:
    if args.steps:  # testing: a step budget instead of wall clock
        return ["--max-steps", str(args.steps), "--max-minutes", "null"]
    return ["--max-minutes", str(args.minutes), "--max-steps", "100000"]


def prepare(args: argparse.Namespace) -> None:
    """Synthesise the corpus when it is missing, then cache the features of every test condition."""
    out = data_dir(args)
    if not (out / "train.jsonl").is_file():
        if args.data_dir:
            raise SystemExit(f"speech_noise: --data-dir {str(out)!r} has no train.jsonl (run recipes/timit/run.sh --stop-stage 1)")
        command = [sys.executable, "-m", "hardalign.cli", "prepare", "synth", "--out", str(out), *shlex.split(args.synth_args), "--no-features", "--quiet"]
        log("corpus: " + shlex.join(command[2:]))
        if subprocess.run(command, env=child_env()).returncode:
            raise SystemExit(f"speech_noise: preparing the corpus failed: {shlex.join(command)}")
    marker = out / ".speech_noise-features.done"
    options = json.dumps({"eval_noise": ",".join(EVAL_NOISE), "mix": list(args.mixes)})
    if marker.is_file() and marker.read_text() == options:
        return
    import torch

    from hardalign.speech.prepare_features import precompute_features

    torch.set_num_threads(1)
    started = time.perf_counter()
    counts = precompute_features(str(out), eval_noise=",".join(EVAL_NOISE))
    for level in args.mixes:
        counts.update(precompute_features(str(out), mix_speaker=level, splits=("test",)))
    log(f"features cached in {out}: {sum(counts.values())} utterances ({time.perf_counter() - started:.0f} s)")
    marker.write_text(options)


_CHAIN = """
import json, sys
from hardalign.cli import main
from hardalign.train.evaluate import evaluate_checkpoint
a = json.loads(sys.argv[1])
code = main(a["train"]) if a["train"] else 0
if code:
    sys.exit(code)
scores = {name: evaluate_checkpoint(None, checkpoint=a["checkpoint"], split="test", overrides=o, write=False) for name, o in a["evals"].items()}
open(a["scores"], "w").write(json.dumps(scores, indent=2) + "\\n")
"""


def run_dir(training: str, model: str, args: argparse.Namespace) -> Path:
    return Path(args.work_dir) / "runs" / training / model


def evaluations(args: argparse.Namespace) -> dict[str, dict]:
    """The test-split evaluations of a run by name: ``noise`` (clean and the six noise columns)
    and ``mixL`` per mix level (each scores its own column)."""
    evals = {"noise": {"mix_speaker": 0.0, "eval_noise": ",".join(EVAL_NOISE), "eval_limit": 0}}
    evals.update({f"mix{m:g}": {"mix_speaker": m, "eval_noise": "", "eval_limit": 0} for m in args.mixes})
    return evals


def missing_evaluations(result: dict, args: argparse.Namespace) -> list[str]:
    """The evaluations a finished run still needs for this command's columns."""
    have = result.get("per", {})
    needed = [name for name in evaluations(args) if name.startswith("mix") and name not in have]
    return (["noise"] if any(c not in have for c in ("clean", *EVAL_NOISE)) else []) + needed


def train_and_score(training: str, model: str, args: argparse.Namespace, existing: dict | None = None) -> dict:
    """Train one model from scratch, score the test split under every condition, write
    ``result.json``; with ``existing`` (a finished run's result), only score the columns it lacks."""
    out = run_dir(training, model, args)
    config, keys = run_config(training, model, args)
    train = [
        "train", "--config", str(config), "--data-dir", str(data_dir(args)), "--out-dir", str(out), *budget_keys(args),
        "--eval-every", "0", "--num-threads", "1", "--seed", str(args.seed), "--progress", "false", *keys, *shlex.split(args.model_overrides),
    ]
    evals = evaluations(args)
    if existing is None:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        log(f"{training}/{model}: training -> {out}")
    else:
        evals = {name: evals[name] for name in missing_evaluations(existing, args)}
        train = []
        log(f"{training}/{model}: scoring {', '.join(evals)} of {out / 'checkpoint.pt'}")
    started = time.monotonic()
    with open(out / ("train.log" if existing is None else "score.log"), "w") as stream:
        evaluate = ["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--split", "test"]
        lines = [train] * bool(train) + [evaluate + [f"--{k.replace('_', '-')}={v if v != '' else chr(34) * 2}" for k, v in o.items()] for o in evals.values()]
        stream.write("".join(f"$ hardalign {shlex.join(line)}\n" for line in lines))
        stream.flush()
        payload = {"train": train, "checkpoint": str(out / "checkpoint.pt"), "evals": evals, "scores": str(out / "scores.json")}
        done = subprocess.run([sys.executable, "-c", _CHAIN, json.dumps(payload)], stdout=stream, stderr=subprocess.STDOUT, env=child_env())
    if done.returncode or not (out / "scores.json").is_file():
        log(f"{training}/{model}: FAILED (exit {done.returncode}); see {stream.name}")
        return {"training": training, "model": model, "failed": f"exit {done.returncode}, see {stream.name}"}
    scores = json.loads((out / "scores.json").read_text())
    per = dict(existing["per"]) if existing else {}
    for name, score in scores.items():
        metrics = score["metrics"]
        if name == "noise":
            per["clean"] = metrics["per"]
            for condition in EVAL_NOISE:
                kind, snr = condition.split(":")
                per[condition] = metrics.get(f"per_{kind}{float(snr):g}db")
        else:
            per[name] = metrics["per"]
    if existing is not None:
        result = {**existing, "per": per, "rescored": sorted({*existing.get("rescored", []), *scores})}
        (out / "scores.json").unlink()
    else:
        noise = scores["noise"]["metrics"]
        result = {
            "training": training, "model": model, "config": str(config), "keys": keys, "data_dir": str(data_dir(args)),
            "model_overrides": args.model_overrides, "budget": budget_keys(args), "seed": args.seed, "steps": scores["noise"]["step"],
            "train_s": noise.get("train_wall_s"), "wall_s": time.monotonic() - started, "per": per,
        }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    log(f"{training}/{model}: test PER clean {100 * per['clean']:.1f}% after {result['steps']} steps")
    return result


def run_all(args: argparse.Namespace) -> dict[tuple[str, str], dict]:
    """Every (training, model), ``args.jobs`` at a time; finished runs are read back, not redone
    (only scored on the columns they lack)."""
    results: dict[tuple[str, str], dict] = {}
    pending: list[tuple[str, str, dict | None]] = []
    for training in trainings(args.mixes):
        for model in MODELS:
            done = run_dir(training, model, args) / "result.json"
            if done.is_file() and not args.force:
                result = results[training, model] = json.loads(done.read_text())
                if missing_evaluations(result, args):
                    pending.append((training, model, result))
                else:
                    log(f"{training}/{model}: reusing {done}")
            else:
                pending.append((training, model, None))
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {(t, m): pool.submit(train_and_score, t, m, args, existing) for t, m, existing in pending}
        for key, future in futures.items():
            try:
                results[key] = future.result()
            except (OSError, ValueError, KeyError) as error:  # a failed row, not a lost table
                log(f"{key[0]}/{key[1]}: FAILED ({error})")
                results[key] = {"training": key[0], "model": key[1], "failed": f"{type(error).__name__}: {error}"}
    now = {"budget": budget_keys(args), "data_dir": str(data_dir(args)), "model_overrides": args.model_overrides, "seed": args.seed}
    for result in results.values():
        if not result.get("failed"):
            result["reused_with_other"] = [f"{k} {result.get(k)!r}" for k, v in now.items() if result.get(k) != v]
    return results


def pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def targets(results: dict[tuple[str, str], dict]) -> list[dict]:
    """The issue's three targets for the noise-trained hard-alignment model (None where a run failed)."""
    noisy, clean = results.get(("noisy", "hard"), {}).get("per"), results.get(("clean", "hard"), {}).get("per")

    def ratio(a, b):
        if a is None or b is None:
            return None
        return a / b if b > 0 else (1.0 if a == 0 else math.inf)

    rows = [("white 10 dB / clean PER (noise-trained)", ratio(noisy and noisy["white:10"], noisy and noisy["clean"]), 1.6),
            ("white 0 dB / clean PER (noise-trained)", ratio(noisy and noisy["white:0"], noisy and noisy["clean"]), 3.0),
            ("clean PER, noise-trained / clean-trained", ratio(noisy and noisy["clean"], clean and clean["clean"]), 1.2)]
    return [{"target": name, "ratio": value, "limit": limit, "met": None if value is None else value <= limit} for name, value, limit in rows]


def format_table(results: dict[tuple[str, str], dict], mixes=MIXES) -> str:
    head = ["trained", "model", *(c.replace(":", " ") + (" dB" if ":" in c else "") for c in columns(mixes)), "steps", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for training in trainings(mixes):
        for model in MODELS:
            result = results.get((training, model), {"failed": "not run"})
            if result.get("failed"):
                cells = [training_label(training), LABELS[model], f"failed ({result['failed']})"] + [""] * (len(head) - 3)
            else:
                seconds = "n/a" if result.get("train_s") is None else f"{result['train_s']:.0f}"
                cells = [training_label(training), LABELS[model], *(pct(result["per"].get(c)) for c in columns(mixes)), str(result["steps"]), seconds]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| target (noise-trained hard alignment) | ratio | limit | met |", "|---|---|---|---|"]
    for row in targets(results):
        value = "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}"
        met = "n/a" if row["met"] is None else ("yes" if row["met"] else "no")
        lines.append(f"| {row['target']} | {value} | <= {row['limit']:g} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget of every run (default 10)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time, one thread each")
    parser.add_argument("--data-dir", default="", help="a prepared corpus (e.g. exp/timit/data); default WORK_DIR/data, synthesised when missing")
    parser.add_argument("--work-dir", default="exp/noise", help="runs (runs/TRAINED/MODEL) and the default corpus (default exp/noise)")
    parser.add_argument("--out", default="recipes/timit/results/noise.md", help="Markdown table (JSON beside it)")
    parser.add_argument("--force", action="store_true", help="retrain runs that already have a result.json")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every run (default 0)")
    parser.add_argument("--conf-dir", default=str(RECIPE_CONF), help="recipe configs (default recipes/timit/conf)")
    parser.add_argument("--mixes", default=",".join(f"{m:g}" for m in MIXES),
                        help="two-speaker mix levels: a multi-speaker training and a test column per level (default 0.1,0.25,0.5)")
    tuning = parser.add_argument_group("testing and tuning")
    tuning.add_argument("--steps", type=int, default=0, help="a budget of N optimiser steps instead of --minutes")
    tuning.add_argument("--model-overrides", default="", help="config overrides for every run, one string (e.g. \"--hidden-size 16\")")
    tuning.add_argument("--synth-args", default="", help="prepare synth arguments when the corpus is synthesised (default: its defaults)")
    args = parser.parse_args(argv)
    try:
        args.mixes = tuple(sorted({float(m) for m in args.mixes.split(",") if m.strip()}))
    except ValueError:
        parser.error(f"--mixes: expected comma-separated mix levels (e.g. 0.1,0.25,0.5), got {args.mixes!r}")
    if any(not 0 < m <= 1 for m in args.mixes):
        parser.error(f"--mixes: every level must be in (0, 1], got {args.mixes}")
    for name in [*CONFIGS.values(), "ctc.yaml"]:
        if not (Path(args.conf_dir) / name).is_file():
            parser.error(f"--conf-dir: no config {str(Path(args.conf_dir) / name)!r}")
    started = time.monotonic()
    prepare(args)
    results = run_all(args)
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} min"
    header = (f"Test PER (%, 39 phones) by training condition and test condition. Equal budget: {budget} of training per run "
              f"({args.jobs} run(s) at a time, one intra-op thread each, {os.cpu_count()} CPU cores visible), seed {args.seed}, "
              f"corpus `{data_dir(args)}`. Noise at the stated SNR is frozen per test utterance; `mixL` adds a fixed "
              f"opposite-gender partner scaled by L. Noisy training: the keys of `noisy.yaml` "
              f"(`{' '.join(run_config('noisy', 'ctc', args)[1])}`), also given to CTC; multi-speaker L: the keys of "
              f"`multispeaker.yaml` (`{' '.join(run_config('multi', 'ctc', args)[1])}`) with `--mix-speaker L`"
              + (f"; overrides `{args.model_overrides}`" if args.model_overrides else "") + ".\n\n")
    stale = [f"* {training_label(t)} / {LABELS[m]}: reused from an earlier command with another {', '.join(results[t, m]['reused_with_other'])} (`--force` retrains).\n"
             for t in trainings(args.mixes) for m in MODELS if results.get((t, m), {}).get("reused_with_other")]
    text = header + format_table(results, args.mixes) + ("\nNot made by this command's options:\n\n" + "".join(stale) if stale else "")
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    summary = {"args": vars(args), "columns": list(columns(args.mixes)), "runs": [results[t, m] for t in trainings(args.mixes) for m in MODELS],
               "targets": targets(results), "seconds": time.monotonic() - started}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"wrote {out} and {out.with_suffix('.json')} ({time.monotonic() - started:.0f} s)")
    return 1 if any(r.get("failed") for r in summary["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
