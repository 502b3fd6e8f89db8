"""Milliseconds per training step of the speech models, side by side on one batch.

A random TIMIT-sized batch (B utterances of T steps of stacked filterbanks, U phones each), the
default model sizes of ``recipes/timit/conf``, one forward + backward + optimiser step per
measurement, the median of ``--repeats`` after ``--warmup``, the rows timed round-robin (each
round one step of every row, so that drift on a shared machine falls on all rows alike; the ratio
to CTC is taken within each round). Rows: the hard-alignment recogniser
with each estimator at K = 1, 4, 16 (VIMCO variants need K >= 2), with the time-parallel lattice
posterior (the default) and the step-by-step recurrent one, and the unidirectional CTC baseline
with the same encoder. Prints a markdown table and writes it to
``benchmarks/results/speech_step[_DEVICE].md``::

    python benchmarks/speech_step.py                 # one CPU thread
    python benchmarks/speech_step.py --device cuda   # where a GPU is present
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def random_batch(batch: int, steps: int, phones: int, labels: int, dim: int, device: torch.device, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "features": torch.randn(batch, steps, dim, generator=generator).to(device),
        "feature_lengths": torch.full((batch,), steps, dtype=torch.long).to(device),
        "targets": torch.randint(1, phones + 1, (batch, labels), generator=generator).to(device),
        "target_lengths": torch.full((batch,), labels, dtype=torch.long).to(device),
    }


class Row:
    """One model / estimator / K of the table, with its own optimiser and step times."""

    def __init__(self, label: tuple, model, estimator, num_samples: int):
        self.label, self.model, self.estimator, self.num_samples = label, model, estimator, num_samples
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        self.times: list[float] = []

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


def time_rows(rows: list[Row], batch: dict, repeats: int, warmup: int, device: torch.device, clock) -> None:
    """Round-robin: each round times one step of every row, so that a slower or faster spell of a
    shared machine lands on every row alike instead of on whichever rows ran then."""
    for i in range(warmup + repeats):
        for row in rows:
            elapsed = row.step(batch, i, device, clock)
            if i >= warmup:
                row.times.append(elapsed)


def main(argv=None) -> None:
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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="wall-clock (default) or this process's CPU time (steadier on a shared machine, CPU only)")
    parser.add_argument("--out", default=None, help="markdown output (default benchmarks/results/speech_step[_DEVICE].md)")
    args = parser.parse_args(argv)

    from hardalign.estimators import build_estimator
    from hardalign.speech.ctc import CTCRecognizer
    from hardalign.speech.model import HardAlignmentRecognizer
    from hardalign.train.config import _parse_options

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    dim = 369
    batch = random_batch(args.batch, args.steps, args.phones, args.labels, dim, device)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    torch.manual_seed(0)
    rows = [Row(("ctc", "-", "-", 1), CTCRecognizer(dim, args.phones).to(device), build_estimator("reinforce"), 1)]
    variants = [("lattice" if kind == "lattice" else kind, {"posterior_kind": kind}) for kind in args.posteriors.split(",") if kind]
    for spec in args.model:
        options = dict(item.split("=", 1) for item in spec.split(","))
        options = {key: (int(value) if value.isdigit() else value) for key, value in options.items()}
        variants.append((spec, {"posterior_kind": "lattice", **options}))
    for kind, model_options in variants:
        for spec in args.estimators.split(","):
            name, _, option_text = spec.partition(":")
            options = {"baseline": "learned"} if name == "reinforce" else {}
            # the command line's estimator-options syntax, with ";" between items (the list is comma-separated)
            options.update(_parse_options(option_text.replace(";", ",")))
            for k in (int(v) for v in args.samples.split(",")):
                if name.startswith("vimco") and k < 2:
                    continue
                torch.manual_seed(0)
                model = HardAlignmentRecognizer(dim, args.phones, **model_options).to(device)
                rows.append(Row(("hard-alignment", kind, spec, k), model, build_estimator(name, **options).to(device), k))
    # the warm-up rounds also take the one-time costs (allocator growth, lazy initialisation)
    time_rows(rows, batch, args.repeats, args.warmup, device, clock)
    ctc_times = rows[0].times
    table_rows = []
    for row in rows:
        ms = 1000 * statistics.median(row.times)
        ratio = statistics.median(t / c for t, c in zip(row.times, ctc_times))  # within each round
        table_rows.append((*row.label, ms, ratio))
        if row is not rows[0]:
            print(f"{row.label[1]:20s} {row.label[2]:10s} K={row.num_samples:2d} {ms:8.1f} ms  ({ratio:.2f}x CTC)", flush=True)
    where = f"{args.device}" + (f", {args.threads} thread(s)" if device.type == "cpu" else f" ({torch.cuda.get_device_name(device)})")
    lines = [
        f"Training step (forward + backward + Adam), B={args.batch}, T={args.steps} steps, U={args.labels} phones, "
        f"{args.phones} phones + EOS, default sizes; {where}; torch {torch.__version__}; median of {args.repeats} ({args.clock} clock), "
        "the rows timed round-robin (one step of each per round); x CTC: the median over rounds of the row's step / CTC's step in that round.",
        "",
        "| model | posterior (options) | estimator | K | ms / step | x CTC |",
        "|---|---|---|---|---|---|",
    ]
    for model_name, kind, name, k, ms, ratio in table_rows:
        lines.append(f"| {model_name} | {kind} | {name} | {k} | {ms:.1f} | {ratio:.2f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out) if args.out else RESULTS / ("speech_step.md" if device.type == "cpu" else f"speech_step_{device.type}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)


if __name__ == "__main__":
    main()
