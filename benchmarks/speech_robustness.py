"""Hard alignment vs CTC at equal wall-clock on the corpus conditions a user would have.

One command trains the recipe's hard-alignment config (``recipes/timit/conf/vimco-seq.yaml``)
and the unidirectional CTC baseline (``recipes/timit/conf/ctc.yaml``) for the same wall-clock
budget (``--minutes`` each) on every condition below, scores the core test with
``hardalign evaluate`` and writes one Markdown table (JSON beside it) with, per condition and
model: test PER, dev PER, steps done, training seconds, and the ratio of the hard-alignment
model's test PER to CTC's (the issue-14 target: at most 1.5, and below 20% wherever CTC is
below 10%).

Conditions (corpora are prepared once under ``--work-dir`` and reused when their options match):

* ``default``: the recipe's offline corpus, ``hardalign prepare synth`` with its default sizes,
  which are run.sh's (20 training speakers x 80 utterances when this was written; dev and test
  as ``prepare synth --help`` says), or the prepared directory given by ``--default-data`` (e.g. ``exp/timit/data`` after ``run.sh --stop-stage 1``;
  its feature cache and frozen noise conditions are then filled in place).
* ``small``: ``prepare synth --speakers 5 --utterances 80`` (400 training utterances), dev and
  test of the default size.
* ``noisy``: the ``default`` corpus with multi-condition training (white noise only; the recipe's
  ``conf/noisy.yaml`` draws white, pink or babble): white noise added to the training audio at an SNR drawn from U[0, 15] dB
  per utterance and epoch, 20% of the utterances left clean (``noise``/``snr``/``clean_fraction``);
  test scored clean and with frozen white noise at 10 dB (``eval_noise``); the hard / CTC target
  must hold on both.
* ``voices``: other voices, ``prepare synth --voices alternate`` at the ``default``
  size: every speaker (train, dev and test) is an espeak-ng voice variant that the default corpus
  never uses (``hardalign.data.synth.ALTERNATE_VOICES``), over the same eight English accents
  (all the English accents espeak-ng ships), with the default corpus's sentences, speaker names,
  pitches, rates and levels (same seed), so only the voices differ. ``--voices-args`` changes
  the ``prepare synth`` arguments of this corpus (e.g. ``"--voices alternate --seed 1"``); the
  arguments used are in the table's condition notes and the JSON.
* ``mix``: the ``default`` corpus with the MultiTIMIT-style two-speaker mix: each utterance gets
  a fixed opposite-gender partner scaled by 0.25 (the task's ``mix_scale``, or ``mix_speaker``),
  in training and in test; the target is the first speaker's transcript. Its "test PER" is on the
  mixed test set.

Each run is ``hardalign train --config CONF --data-dir DIR --out-dir OUT --max-minutes M
--max-steps 100000 --eval-every 0 --num-threads 1`` plus the condition's keys (its final dev
evaluation gives the dev PER and the training seconds), then ``hardalign evaluate --checkpoint
OUT/checkpoint.pt --split test``, the two commands run through ``hardalign.cli.main`` in one
subprocess per run (one torch import fewer; two subprocesses with ``--nproc`` > 1, training then
under torchrun), one intra-op thread each, ``--jobs`` runs at a time, the two models of a
condition started together so that they share the machine's load. The exact commands head each
run's ``train.log``.
With ``--seeds 0,1`` every run is repeated per training seed (``runs/seedS/COND/MODEL``) and the
table gives the means over the seeds, each seed's value and ratio beside them, and judges the
target on the means (single runs on the mix scatter by several points).
A finished run leaves ``OUT/result.json`` and is skipped when the command is re-run (``--force``
retrains); an unfinished one is restarted from scratch.

    python benchmarks/speech_robustness.py --minutes 5 --jobs 2
    python benchmarks/speech_robustness.py --conditions default,small --default-data exp/timit/data

On a shared machine the same budget buys different numbers of steps in different runs; the table
reports the steps done.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
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

REPO = Path(__file__).resolve().parent.parent
RECIPE_CONF = REPO / "recipes" / "timit" / "conf"
CONDITIONS = ("default", "small", "noisy", "voices", "mix")
MODELS = ("hard", "ctc")
LABELS = {"hard": "hard alignment (vimco-seq)", "ctc": "CTC baseline"}
DESCRIPTIONS = {
    "default": "the recipe's offline corpus ({train} training utterances)",
    "small": "a small corpus ({small} training utterances)",
    "noisy": "default corpus, multi-condition training (white noise at U[0, 15] dB, 20% of utterances left clean); test clean and at white 10 dB",
    "voices": "other espeak-ng voices over the same 8 accents (`prepare synth {voices_args}`, {voices} training utterances)",
    "mix": "default corpus, two-speaker mix (partner scaled by 0.25) in training and test",
}
TRAIN_NOISE = ("white", "0:15")
CLEAN_FRACTION = 0.2  # as the recipe's conf/noisy.yaml: a model that never hears clean speech fails on it
EVAL_NOISE = "white:10"
MIX = 0.25


def log(message: str) -> None:
    print(f"[speech_robustness] {message}", flush=True)


def task_fields() -> set[str]:
    """The speech task's config keys as they are now (keys are being renamed in other work)."""
    from hardalign.speech.task import SpeechTaskConfig

    return {f.name for f in dataclasses.fields(SpeechTaskConfig)}


def condition_keys(condition: str, fields: set[str]) -> list[str]:
    """Training overrides of a condition, spelled as the task spells them today."""
    if condition == "noisy":
        kind, snr = TRAIN_NOISE
        if "train_noise" in fields:
            keys = ["--train-noise", f"{kind}:{snr}"]
        elif {"noise", "snr"} <= fields:
            keys = ["--noise", kind, "--snr", snr]
        else:
            raise SystemExit("speech_robustness: the speech task has neither train_noise nor noise/snr keys")
        if "clean_fraction" in fields:
            keys += ["--clean-fraction", str(CLEAN_FRACTION)]
        return keys + ["--eval-noise", EVAL_NOISE]
    if condition == "mix":
        for key in ("mix_scale", "mix_speaker"):
            if key in fields:
                return [f"--{key.replace('_', '-')}", str(MIX)]
        raise SystemExit("speech_robustness: the speech task has neither a mix_scale nor a mix_speaker key")
    return []


def corpus_of(condition: str) -> str:
    return {"small": "small", "voices": "voices"}.get(condition, "default")


def synth_args(corpus: str, args: argparse.Namespace) -> list[str]:
    """``prepare synth`` sizes of a corpus; unset sizes are the library's defaults (run.sh's), spelled
    out so that the preparation marker notices when those defaults change."""
    from hardalign.data.synth import build_synth_corpus

    defaults = {name: p.default for name, p in inspect.signature(build_synth_corpus).parameters.items()}
    speakers, utterances = (args.small_speakers, args.small_utterances) if corpus == "small" else (args.synth_speakers, args.synth_utterances)
    sizes = {"speakers": speakers, "utterances": utterances, "eval_speakers": args.synth_eval_speakers, "eval_utterances": args.synth_eval_utterances}
    base = [x for name, value in sizes.items() for x in (f"--{name.replace('_', '-')}", str(defaults[name] if value is None else value))]
    return base + shlex.split(args.voices_args) if corpus == "voices" else base


def data_dir(corpus: str, args: argparse.Namespace) -> Path:
    if corpus == "default" and args.default_data:
        return Path(args.default_data)
    return Path(args.work_dir) / "data" / corpus


def corpus_options(corpus: str, args: argparse.Namespace) -> str:
    """What a corpus was made with (recorded in each result; a change calls for ``--force``)."""
    if corpus == "default" and args.default_data:
        return f"given {Path(args.default_data).resolve()}"
    return " ".join(["synth", *synth_args(corpus, args)])


def train_utterances(corpus: str, conditions: list[str], args: argparse.Namespace) -> int | None:
    """Training utterances in a prepared corpus (None when this run did not use it)."""
    manifest = data_dir(corpus, args) / "train.jsonl"
    if not any(corpus_of(c) == corpus for c in conditions) or not manifest.is_file():
        return None
    return sum(1 for line in manifest.read_text().splitlines() if line.strip())


def is_done(marker: Path, options: str) -> bool:
    return marker.is_file() and marker.read_text() == options


def prepare(conditions: list[str], args: argparse.Namespace) -> None:
    """Synthesise each corpus once, then fill its feature cache for every condition that uses it
    (frozen noisy test copies, the mixed utterances), so no run spends its budget on features."""
    markers = Path(args.work_dir) / "prepared"
    markers.mkdir(parents=True, exist_ok=True)
    for corpus in dict.fromkeys(corpus_of(c) for c in conditions):
        out = data_dir(corpus, args)
        if corpus == "default" and args.default_data:
            if not (out / "train.jsonl").is_file():
                raise SystemExit(f"speech_robustness: --default-data {str(out)!r} has no train.jsonl (run recipes/timit/run.sh --stop-stage 1)")
            continue
        options = corpus_options(corpus, args)
        if is_done(markers / f"{corpus}.done", options):
            log(f"corpus {corpus}: already prepared ({options})")
            continue
        log(f"corpus {corpus}: hardalign prepare synth --out {out} {options[6:]}")
        if out.exists():  # other options than last time: no stale CMVN statistics, caches or frozen conditions
            shutil.rmtree(out)
        for marker in markers.glob("features-*.done"):
            if marker.read_text().startswith(f"{out.resolve()} "):
                marker.unlink()
        command = [sys.executable, "-m", "hardalign.cli", "prepare", "synth", "--out", str(out), *synth_args(corpus, args), "--no-features", "--quiet"]
        if subprocess.run(command, env=child_env()).returncode:
            raise SystemExit(f"speech_robustness: preparing the {corpus} corpus failed: {shlex.join(command)}")
        (markers / f"{corpus}.done").write_text(options)

    import torch

    from hardalign.speech.prepare_features import precompute_features

    torch.set_num_threads(1)
    accepted = inspect.signature(precompute_features).parameters
    for condition in conditions:
        out = data_dir(corpus_of(condition), args)
        options: dict = {"eval_noise": EVAL_NOISE if condition == "noisy" else ""}
        if condition == "mix":
            key = next((k for k in ("mix_scale", "mix_speaker") if k in accepted), None)
            if key is not None:
                options[key] = MIX
        text = f"{out.resolve()} {json.dumps(options, sort_keys=True)}"
        if is_done(markers / f"features-{condition}.done", text):
            continue
        started = time.perf_counter()
        counts = precompute_features(str(out), **options)
        log(f"features for {condition} in {out}: {sum(counts.values())} utterances ({time.perf_counter() - started:.0f} s)")
        (markers / f"features-{condition}.done").write_text(text)


def child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def budget_keys(args: argparse.Namespace) -> list[str]:
    if args.steps:  # testing / tuning: a step budget instead of wall clock
        return ["--max-steps", str(args.steps), "--max-minutes", "null"]
    return ["--max-minutes", str(args.minutes), "--max-steps", "100000"]


def run_dir(seed: int, condition: str, model: str, args: argparse.Namespace) -> Path:
    return Path(args.work_dir) / "runs" / f"seed{seed}" / condition / model


def train_and_score(seed: int, condition: str, model: str, args: argparse.Namespace, fields: set[str]) -> dict:
    """Train one (seed, condition, model) from scratch, score the test split, write ``result.json``."""
    out = run_dir(seed, condition, model, args)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config = args.hard_config if model == "hard" else args.ctc_config
    hardalign = [sys.executable, "-m", "hardalign.cli"]
    if args.nproc > 1:
        hardalign = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc), "-m", "hardalign.cli"]
    keys = condition_keys(condition, fields)
    train = [
        *hardalign, "train", "--config", str(config), "--data-dir", str(data_dir(corpus_of(condition), args)),
        "--out-dir", str(out), *budget_keys(args), "--eval-every", "0", "--num-threads", "1", "--seed", str(seed),
        "--progress", "false", *keys, *shlex.split(args.model_overrides),
    ]
    score = ["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--split", "test"]
    started = time.monotonic()
    log(f"seed {seed} {condition}/{model}: training -> {out}")
    with open(out / "train.log", "w") as stream:
        stream.write("$ " + shlex.join(train) + "\n$ hardalign " + shlex.join(score) + "\n")
        stream.flush()
        if args.nproc > 1:
            done = subprocess.run(train, stdout=stream, stderr=subprocess.STDOUT, env=child_env())
            if done.returncode == 0:
                done = subprocess.run([sys.executable, "-m", "hardalign.cli", *score], stdout=stream, stderr=subprocess.STDOUT, env=child_env())
        else:  # both commands in one process: one interpreter start (torch import) fewer per run
            chain = "import json, sys; from hardalign.cli import main; a = json.loads(sys.argv[1]); sys.exit(main(a[0]) or main(a[1]))"
            done = subprocess.run([sys.executable, "-c", chain, json.dumps([train[3:], score])], stdout=stream, stderr=subprocess.STDOUT, env=child_env())
    if done.returncode:
        log(f"seed {seed} {condition}/{model}: FAILED (exit {done.returncode}); see {out / 'train.log'}")
        return {"condition": condition, "model": model, "seed": seed, "failed": f"exit {done.returncode}, see {out / 'train.log'}"}
    test = json.loads((out / "eval-test.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    dev = next((r for r in reversed(records) if r.get("split") == "dev"), {})
    result = {
        "condition": condition, "model": model, "config": str(config), "data_dir": str(data_dir(corpus_of(condition), args)),
        "corpus": corpus_options(corpus_of(condition), args), "keys": keys, "model_overrides": args.model_overrides, "budget": budget_keys(args), "seed": seed,
        "steps": test["step"], "train_s": dev.get("train_wall_s"), "wall_s": time.monotonic() - started,
        "test": test["metrics"], "dev": {k: v for k, v in dev.items() if k not in ("step", "split")},
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    log(f"seed {seed} {condition}/{model}: test PER {100 * result['test']['per']:.1f}% after {result['steps']} steps")
    return result


def run_all(conditions: list[str], args: argparse.Namespace) -> dict[tuple[int, str, str], dict]:
    """Every (seed, condition, model), ``args.jobs`` at a time; finished runs are read back, not redone."""
    fields = task_fields()
    results: dict[tuple[int, str, str], dict] = {}
    pending = []
    for seed in args.seeds:
        for condition in conditions:  # both models of a condition next to each other: they run together
            for model in MODELS:
                done = run_dir(seed, condition, model, args) / "result.json"
                if done.is_file() and not args.force:
                    result = results[seed, condition, model] = json.loads(done.read_text())
                    now = {"budget": budget_keys(args), "corpus": corpus_options(corpus_of(condition), args), "model_overrides": args.model_overrides}
                    differs = [f"{k} {result.get(k)!r}" for k, v in now.items() if result.get(k) != v]
                    result["reused_with_other"] = differs
                    log(f"seed {seed} {condition}/{model}: reusing {done}" + (f" (made with another {', '.join(differs)}; --force retrains)" if differs else ""))
                else:
                    pending.append((seed, condition, model))
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {key: pool.submit(train_and_score, *key, args, fields) for key in pending}
        for key, future in futures.items():
            try:
                results[key] = future.result()
            except (OSError, ValueError, KeyError) as error:  # e.g. a run that wrote no eval-test.json: a failed row, not a lost table
                log(f"seed {key[0]} {key[1]}/{key[2]}: FAILED ({error})")
                results[key] = {"seed": key[0], "condition": key[1], "model": key[2], "failed": f"{type(error).__name__}: {error}"}
    return results


def pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def make_rows(conditions: list[str], seeds: list[int], results: dict[tuple[int, str, str], dict]) -> list[dict]:
    """One row per (condition, model): means over the seeds (each seed's value kept), and on the
    hard-alignment row the ratio of the means, each seed's ratio, and whether the target is met
    (on the means, on every test condition the runs were scored on: clean, and the noisy copy)."""
    kind, snr = EVAL_NOISE.split(":")
    noise_key = f"per_{kind}{float(snr):g}db"  # the task's metric name for the frozen noisy test
    rows = []
    for condition in conditions:
        runs = {model: [results.get((seed, condition, model), {}) for seed in seeds] for model in MODELS}
        for model in MODELS:
            row = {"condition": condition, "model": model, "label": LABELS[model],
                   "failed": next((f"seed {r.get('seed')}: {r['failed']}" for r in runs[model] if r.get("failed")), None) or (None if all(runs[model]) else "missing")}
            if not row["failed"]:
                values = lambda get: [get(r) for r in runs[model]]  # noqa: E731  (one value per seed)
                row["seeds"] = {"test_per": values(lambda r: r["test"]["per"]), "test_per_noise": values(lambda r: r["test"].get(noise_key)),
                                "dev_per": values(lambda r: r["dev"].get("per")), "steps": values(lambda r: r["steps"]), "train_s": values(lambda r: r["train_s"])}
                row.update({key: _mean(vals) for key, vals in row["seeds"].items()})
            rows.append(row)
        hard, ctc = rows[-2], rows[-1]
        if hard["failed"] or ctc["failed"]:
            continue
        keys = ["test_per"] + (["test_per_noise"] if hard["test_per_noise"] is not None and ctc["test_per_noise"] is not None else [])
        ratio = lambda h, c: h / c if c > 0 else (1.0 if h == 0 else math.inf)  # noqa: E731
        hard["ratio"] = ratio(hard["test_per"], ctc["test_per"])
        hard["seed_ratios"] = [ratio(h, c) for h, c in zip(hard["seeds"]["test_per"], ctc["seeds"]["test_per"])]
        if len(keys) > 1:
            hard["ratio_noise"] = ratio(hard["test_per_noise"], ctc["test_per_noise"])
            hard["seed_ratios_noise"] = [ratio(h, c) for h, c in zip(hard["seeds"]["test_per_noise"], ctc["seeds"]["test_per_noise"])]
        hard["target_met"] = all(ratio(hard[k], ctc[k]) <= 1.5 and (ctc[k] >= 0.10 or hard[k] < 0.20) for k in keys)
    return rows


def _mean(values: list) -> float | None:
    return None if any(v is None for v in values) else sum(values) / len(values)


def format_table(rows: list[dict], seeds: list[int]) -> str:
    kind, snr = EVAL_NOISE.split(":")
    several = len(seeds) > 1
    head = ["condition", "model", "test PER" + (" (mean; per seed)" if several else ""), f"test PER {kind} {snr} dB", "dev PER", "steps", "train s",
            "test PER hard / CTC" + (" (of the means; per seed)" if several else ""), "target met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def per(row: dict, key: str) -> str:
        if row[key] is None:
            return "-"
        return pct(row[key]) + (" (" + " / ".join(pct(v) for v in row["seeds"][key]) + ")" if several else "")

    for row in rows:
        if row["failed"]:
            cells = [row["condition"], row["label"], f"failed ({row['failed']})"] + [""] * (len(head) - 3)
        else:
            seconds = "n/a" if row["train_s"] is None else f"{row['train_s']:.0f}"
            ratio = ""
            if "ratio" in row:
                ratio = f"{row['ratio']:.2f}" + (" (" + " / ".join(f"{r:.2f}" for r in row["seed_ratios"]) + ")" if several else "")
            if "ratio_noise" in row:
                ratio += f"; at {kind} {snr} dB {row['ratio_noise']:.2f}" + (" (" + " / ".join(f"{r:.2f}" for r in row["seed_ratios_noise"]) + ")" if several else "")
            met = ("yes" if row["target_met"] else "no") if "target_met" in row else ""
            cells = [row["condition"], row["label"], per(row, "test_per"), per(row, "test_per_noise"), pct(row["dev_per"]), f"{row['steps']:.0f}", seconds, ratio, met]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__[__doc__.index("Conditions ("):__doc__.index("Each run is")])
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help=f"comma-separated subset of {','.join(CONDITIONS)}")
    parser.add_argument("--minutes", type=float, default=5.0, help="wall-clock training budget of every run (default 5)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time, one thread each (2 on 2 cores halves the wall time)")
    parser.add_argument("--nproc", type=int, default=1, help="data-parallel processes per run (torchrun; default 1)")
    parser.add_argument("--work-dir", default="exp/robustness", help="corpora (data/) and runs (runs/seedS/COND/MODEL)")
    parser.add_argument("--default-data", default="", help="an already prepared default corpus (e.g. exp/timit/data) instead of synthesising one")
    parser.add_argument("--voices-args", default="--voices alternate",
                        help="prepare synth arguments of the voices corpus (default --voices alternate: other voice variants)")
    parser.add_argument("--out", default="recipes/timit/results/robustness.md", help="Markdown table (JSON beside it)")
    parser.add_argument("--force", action="store_true", help="retrain runs that already have a result.json")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds: every run is repeated per seed and the table gives the means (default 0)")
    parser.add_argument("--hard-config", default=str(RECIPE_CONF / "vimco-seq.yaml"), help="hard-alignment config (default recipes/timit/conf/vimco-seq.yaml)")
    parser.add_argument("--ctc-config", default=str(RECIPE_CONF / "ctc.yaml"), help="CTC config (default recipes/timit/conf/ctc.yaml)")
    tuning = parser.add_argument_group("testing and tuning")
    tuning.add_argument("--steps", type=int, default=0, help="a budget of N optimiser steps instead of --minutes")
    tuning.add_argument("--model-overrides", default="", help="config overrides for every run, one string (e.g. \"--hidden-size 16\")")
    tuning.add_argument("--synth-speakers", type=int, help="training speakers of default/voices (default: prepare synth's)")
    tuning.add_argument("--synth-utterances", type=int, help="utterances per training speaker of default/voices (default: prepare synth's)")
    tuning.add_argument("--synth-eval-speakers", type=int, help="dev and test speakers of every corpus (default: prepare synth's)")
    tuning.add_argument("--synth-eval-utterances", type=int, help="utterances per dev/test speaker of every corpus (default: prepare synth's)")
    tuning.add_argument("--small-speakers", type=int, default=5, help="training speakers of small (default 5)")
    tuning.add_argument("--small-utterances", type=int, default=80, help="utterances per training speaker of small (default 80)")
    args = parser.parse_args(argv)
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    try:
        args.seeds = sorted({int(seed) for seed in args.seeds.split(",") if seed.strip()})
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if not args.seeds:
        parser.error("--seeds: at least one seed")
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown or not conditions:
        parser.error(f"--conditions: unknown {unknown}; choose from {list(CONDITIONS)}")
    for name in ("hard_config", "ctc_config"):
        if not Path(getattr(args, name)).is_file():
            parser.error(f"--{name.replace('_', '-')}: no such file {getattr(args, name)!r}")
    started = time.monotonic()
    prepare(conditions, args)
    results = run_all(conditions, args)
    rows = make_rows(conditions, args.seeds, results)
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} min"
    sizes = {corpus: train_utterances(corpus, conditions, args) for corpus in ("default", "small", "voices")}
    sizes["train"], sizes["voices_args"] = sizes["default"], args.voices_args
    header = (f"Equal budget: {budget} of training per run ({args.jobs} run(s) at a time"
              + (f", {args.nproc} data-parallel processes per run" if args.nproc > 1 else "") + ", one intra-op thread each, "
              f"{os.cpu_count()} CPU cores visible), seed(s) {', '.join(map(str, args.seeds))}. PER in %, 39 phones, core test; dev PER from the "
              f"final evaluation of training. Configs `{Path(args.hard_config).name}` and `{Path(args.ctc_config).name}`"
              + (f", overrides `{args.model_overrides}`" if args.model_overrides else "") + ". Target met: hard / CTC <= 1.5 and "
              "hard < 20% wherever CTC < 10%" + (", on the means over the seeds" if len(args.seeds) > 1 else "") + ".\n\n")
    notes = "\nConditions:\n\n" + "".join(f"* `{c}`: {DESCRIPTIONS[c].format(**sizes)}, data `{data_dir(corpus_of(c), args)}`.\n" for c in conditions)
    stale = [f"* seed {s} `{c}` / {LABELS[m]}: reused from an earlier command with another {', '.join(results[s, c, m]['reused_with_other'])} (`--force` retrains).\n"
             for s in args.seeds for c in conditions for m in MODELS if results[s, c, m].get("reused_with_other")]
    if stale:
        notes += "\nNot made by this command's options:\n\n" + "".join(stale)
    table = format_table(rows, args.seeds)
    print(header + table + notes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + table + notes)
    summary = {"args": vars(args), "conditions": {c: DESCRIPTIONS[c].format(**sizes) for c in conditions}, "rows": rows,
               "runs": [results[s, c, m] for s in args.seeds for c in conditions for m in MODELS], "seconds": time.monotonic() - started}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"wrote {out} and {out.with_suffix('.json')} ({time.monotonic() - started:.0f} s)")
    return 1 if any(row["failed"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
