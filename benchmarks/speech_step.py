"""Milliseconds per training step of the speech models, side by side on one batch.

A random TIMIT-sized batch (B utterances of T steps of stacked filterbanks, U phones each), the
default model sizes of ``recipes/timit/conf``, one forward + backward + optimiser step per
measurement, the median of ``--repeats`` after ``--warmup``. Rows: the hard-alignment recogniser
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


def time_step(model, estimator, batch: dict, num_samples: int, repeats: int, warmup: int, device: torch.device, clock=time.perf_counter) -> float:
    from hardalign.objective import training_terms

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = clock()
        terms = training_terms(model(batch, num_samples=num_samples, step=i), estimator)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(clock() - started)
    return 1000 * statistics.median(times)


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
    rows = []
    torch.manual_seed(0)
    ctc = CTCRecognizer(dim, args.phones).to(device)
    ctc_ms = time_step(ctc, build_estimator("reinforce"), batch, 1, args.repeats, args.warmup, device, clock)
    rows.append(("ctc", "-", "-", 1, ctc_ms))
    variants = [("lattice" if kind == "lattice" else kind, {"posterior_kind": kind}) for kind in args.posteriors.split(",") if kind]
    for spec in args.model:
        options = dict(item.split("=", 1) for item in spec.split(","))
        options = {key: (int(value) if value.isdigit() else value) for key, value in options.items()}
        variants.append((spec, {"posterior_kind": "lattice", **options}))
    # one-time costs (allocator growth, lazy initialisation) would otherwise land on the first row
    time_step(HardAlignmentRecognizer(dim, args.phones).to(device), build_estimator("vimco"), batch, 4, 1, args.warmup, device, clock)
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
                estimator = build_estimator(name, **options).to(device)
                ms = time_step(model, estimator, batch, k, args.repeats, args.warmup, device, clock)
                rows.append(("hard-alignment", kind, spec, k, ms))
                print(f"{kind:20s} {spec:10s} K={k:2d} {ms:8.1f} ms  ({ms / ctc_ms:.2f}x CTC)", flush=True)
    where = f"{args.device}" + (f", {args.threads} thread(s)" if device.type == "cpu" else f" ({torch.cuda.get_device_name(device)})")
    lines = [
        f"Training step (forward + backward + Adam), B={args.batch}, T={args.steps} steps, U={args.labels} phones, "
        f"{args.phones} phones + EOS, default sizes; {where}; torch {torch.__version__}; median of {args.repeats} ({args.clock} clock).",
        "",
        "| model | posterior (options) | estimator | K | ms / step | x CTC |",
        "|---|---|---|---|---|---|",
    ]
    for model_name, kind, name, k, ms in rows:
        lines.append(f"| {model_name} | {kind} | {name} | {k} | {ms:.1f} | {ms / ctc_ms:.2f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out) if args.out else RESULTS / ("speech_step.md" if device.type == "cpu" else f"speech_step_{device.type}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)


if __name__ == "__main__":
    main()
