"""Milliseconds per training step of the speech models, side by side on one batch.

A random TIMIT-sized batch (B utterances of T steps of stacked filterbanks, U phones each), the
default model sizes of ``recipes/timit/conf``, one forward + backward + optimiser step per
measurement. Rows: the hard-alignment recogniser with each estimator at K = 1, 4, 16 (VIMCO
variants need K >= 2), with the time-parallel lattice posterior (the default) and the
step-by-step recurrent one, and the unidirectional CTC baseline with the same encoder.

Each row is timed as training runs it, in a process of its own (``--isolation process``, the
default): a fresh interpreter builds the row, takes ``--warmup`` steps, then times ``--repeats``.
The rows go round-robin for ``--rounds`` rounds (every row once per round), so that a slower or
faster spell of a shared machine falls on all of them alike; a row's time is the median over its
rounds of its per-process median, and its ratio to CTC the median over rounds of the ratio within
the round. (In one process the rows' memory would be shared: the C allocator's heap, grown by
every model, changes how often large buffers are freshly mapped, and with it the time of each
row; ``--isolation none`` measures that way.) Prints a markdown table and writes it to
``benchmarks/results/speech_step[_DEVICE].md``::

    python benchmarks/speech_step.py                 # one CPU thread
    python benchmarks/speech_step.py --device cuda   # where a GPU is present
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
DIM = 369  # 40 log-mel + energy, deltas, 3 frames stacked


def random_batch(batch: int, steps: int, phones: int, labels: int, dim: int, device: torch.device, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "features": torch.randn(batch, steps, dim, generator=generator).to(device),
        "feature_lengths": torch.full((batch,), steps, dtype=torch.long).to(device),
        "targets": torch.randint(1, phones + 1, (batch, labels), generator=generator).to(device),
        "target_lengths": torch.full((batch,), labels, dtype=torch.long).to(device),
    }


def row_specs(args) -> list[dict]:
    """The table's rows, each a JSON-able description a child process can build: CTC first."""
    specs = [{"model": "ctc", "kind": "-", "estimator": "-", "k": 1}]
    variants = [(kind, {"posterior_kind": kind}) for kind in args.posteriors.split(",") if kind]
    for spec in args.model:
        options = dict(item.split("=", 1) for item in spec.split(","))
        options = {key: (int(value) if value.isdigit() else value) for key, value in options.items()}
        variants.append((spec, {"posterior_kind": "lattice", **options}))
    for kind, model_options in variants:
        for spec in args.estimators.split(","):
            name = spec.partition(":")[0]
            for k in (int(v) for v in args.samples.split(",")):
                if name.startswith("vimco") and k < 2:
                    continue
                specs.append({"model": "hard-alignment", "kind": kind, "options": model_options, "estimator": spec, "k": k})
    return specs


class Row:
    """One row of the table, built: model, estimator, optimiser."""

    def __init__(self, spec: dict, args, device: torch.device):
        from hardalign.estimators import build_estimator
        from hardalign.speech.ctc import CTCRecognizer
        from hardalign.speech.model import HardAlignmentRecognizer
        from hardalign.train.config import _parse_options

        torch.manual_seed(0)
        self.spec, self.num_samples = spec, spec["k"]
        if spec["model"] == "ctc":
            self.model, self.estimator = CTCRecognizer(DIM, args.phones).to(device), build_estimator("reinforce")
        else:
            name, _, option_text = spec["estimator"].partition(":")
            options = {"baseline": "learned"} if name == "reinforce" else {}
            # the command line's estimator-options syntax, with ";" between items (the list is comma-separated)
            options.update(_parse_options(option_text.replace(";", ",")))
            self.model = HardAlignmentRecognizer(DIM, args.phones, **spec["options"]).to(device)
            self.estimator = build_estimator(name, **options).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)

    def step(self, batch: dict, i: int, device: torch.device, clock) -> float:
        """One forward + backward + Adam step; its duration in seconds."""
        from hardalign.objective import training_terms

        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = clock()
        terms = training_terms(self.model(batch, num_samples=self.num_samples, step=i), self.estimator)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return clock() - started


def setup(args) -> tuple[torch.device, dict, object]:
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    batch = random_batch(args.batch, args.steps, args.phones, args.labels, DIM, device)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    return device, batch, clock


def time_in_process(rows: list[Row], batch: dict, rounds: int, repeats: int, warmup: int, device: torch.device, clock) -> list[list[float]]:
    """Round-robin in this process: per row, a list (one entry per round) of median step seconds."""
    for i in range(warmup):  # also takes the one-time costs (allocator growth, lazy initialisation)
        for row in rows:
            row.step(batch, i, device, clock)
    per_round = [[] for _ in rows]
    for r in range(rounds):
        for index, row in enumerate(rows):
            times = [row.step(batch, warmup + r * repeats + i, device, clock) for i in range(repeats)]
            per_round[index].append(statistics.median(times))
    return per_round


def time_in_processes(specs: list[dict], argv: list[str], rounds: int) -> list[list[float]]:
    """Round-robin over child processes, one per (row, round): per row, its per-round medians."""
    per_round = [[] for _ in specs]
    for _ in range(rounds):
        for index, spec in enumerate(specs):
            done = subprocess.run([sys.executable, __file__, *argv, "--child", json.dumps(spec)], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"speech_step child for {spec} failed:\n{done.stderr[-3000:]}")
            per_round[index].append(statistics.median(json.loads(done.stdout.strip().splitlines()[-1])))
    return per_round


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (default 1)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100, help="T, model steps (30 ms each) per utterance")
    parser.add_argument("--labels", type=int, default=34, help="U, phones per utterance")
    parser.add_argument("--phones", type=int, default=40)
    parser.add_argument("--samples", default="1,4,16", help="the K values")
    parser.add_argument("--estimators", default="vimco-seq,vimco,nvil,reinforce",
                        help="names, each optionally with estimator options: vimco-seq:lookahead=false;weight_control=true")
    parser.add_argument("--posteriors", default="lattice,recurrent")
    parser.add_argument("--model", action="append", default=[], metavar="KEY=VALUE,...",
                        help="model option sets to compare besides the defaults (e.g. posterior_encoder=shared)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per row and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (per process)")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds over the rows")
    parser.add_argument("--isolation", choices=("process", "none"), default="process",
                        help="process (default): each row and round in a fresh process, as training runs; none: all rows in this one")
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="wall-clock (default) or this process's CPU time (steadier on a shared machine, CPU only)")
    parser.add_argument("--out", default=None, help="markdown output (default benchmarks/results/speech_step[_DEVICE].md)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # a row's JSON spec: time it here, print JSON times
    args = parser.parse_args(argv)

    if args.child is not None:
        device, batch, clock = setup(args)
        row = Row(json.loads(args.child), args, device)
        times = [row.step(batch, i, device, clock) for i in range(args.warmup + args.repeats)][args.warmup:]
        print(json.dumps(times))
        return
    specs = row_specs(args)
    if args.isolation == "process":
        per_round = time_in_processes(specs, argv, args.rounds)
    else:
        device, batch, clock = setup(args)
        per_round = time_in_process([Row(spec, args, device) for spec in specs], batch, args.rounds, args.repeats, args.warmup, device, clock)
    device = torch.device(args.device)
    where = f"{args.device}" + (f", {args.threads} thread(s)" if device.type == "cpu" else f" ({torch.cuda.get_device_name(device)})")
    isolation = "each row and round in a process of its own" if args.isolation == "process" else "all rows in one process"
    lines = [
        f"Training step (forward + backward + Adam), B={args.batch}, T={args.steps} steps, U={args.labels} phones, "
        f"{args.phones} phones + EOS, default sizes; {where}; torch {torch.__version__}; {args.clock} clock; {isolation}, "
        f"{args.rounds} round(s) round-robin of {args.repeats} timed steps after {args.warmup}: ms / step is the median over "
        "rounds of each round's median, x CTC the median over rounds of the ratio within the round.",
        "",
        "| model | posterior (options) | estimator | K | ms / step | x CTC | x CTC, rounds' range |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec, times in zip(specs, per_round):
        ms = 1000 * statistics.median(times)
        ratios = [t / c for t, c in zip(times, per_round[0])]
        lines.append(f"| {spec['model']} | {spec['kind']} | {spec['estimator']} | {spec['k']} | {ms:.1f} | {statistics.median(ratios):.2f} | {min(ratios):.2f}-{max(ratios):.2f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out) if args.out else RESULTS / ("speech_step.md" if device.type == "cpu" else f"speech_step_{device.type}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)


if __name__ == "__main__":
    main()
