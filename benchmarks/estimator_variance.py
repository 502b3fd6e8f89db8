"""Gradient variance and speed of every estimator on the same problems, side by side.

Variance: total variance (summed over the T proposal parameters) of the proposal-gradient
estimates over R independent replicas, on

* a Markov Bernoulli chain (z_t depends on z_{t-1}, per-step reward, a constant per-step
  log-likelihood offset of -2 nats) at T = 3 and T = 50 (no progress index: steps match by time);
  every problem's decisions are binary, so each draw also carries the other branch of every step
  (``Alternative``), which ``vimco-seq``'s lookahead rows read;
* label-structured toy alignments (``tests/estimators/problems.py::LabelCounter``: T = 50 emit/skip
  decisions, U = 12 labels, label c scores best near its own time, missing labels cost nats, the
  progress index is the number of labels emitted): "labels" with a learned p(z) and a per-frame
  cost; "policy" speech-like, q = p so log w is the labels' log-likelihood only, with the
  proposal keeping pace with the labels (pace 0.8) or not (pace 0, particles drift apart in
  labels emitted at the same frame).

Speed: the fastest of 20 forward + backward calls, in milliseconds, at a speech-like size (K=16, B=32, T=300),
with the other branch of every decision passed (so the lookahead rows pay for their lookahead).

    python benchmarks/estimator_variance.py [--replicas 4000] [--out benchmarks/results/estimator_variance.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hardalign.estimators import Alternative, build_estimator  # noqa: E402
from tests.estimators.problems import LabelCounter, MarkovBernoulli  # noqa: E402

ROWS = [
    ("reinforce", {}, 1, "no baseline"),
    ("reinforce", {"baseline": "ema"}, 1, "moving average (warmed up)"),
    ("nvil", {"normalize_variance": False}, 1, "centring (warmed up), no baseline net"),
    ("nvil", {}, 1, "centring + variance normalisation: gradient rescaled, variance not comparable"),
    ("reinforce", {}, 8, "no baseline, K=8"),
    ("reinforce", {"baseline": "loo"}, 8, "leave-one-out (RLOO)"),
    ("vimco", {}, 8, "geometric stand-in"),
    ("vimco", {"loo": "arithmetic"}, 8, "arithmetic stand-in"),
    ("vimco-seq", {"align": "time", "lookahead": False}, 8, "per-step stand-in, steps matched by time"),
    ("vimco-seq", {"align": "progress", "lookahead": False}, 8, "per-step stand-in, matched by progress (labels emitted)"),
    ("vimco-seq", {"align": "progress-time", "lookahead": False}, 8, "matched by (labels emitted, frames left)"),
    ("vimco-seq", {"align": "time", "mix": "running", "lookahead": False}, 8, "time-matched, running convex mix with VIMCO's stand-in"),
    ("vimco-seq", {"align": "progress", "mix": "running", "lookahead": False}, 8, "progress-matched, running convex mix with VIMCO's stand-in"),
    ("vimco-seq", {"align": "fitted", "lookahead": False}, 8, "fitted blend of time- and progress-matched stand-ins"),
    ("vimco-seq", {"align": "fitted", "mix": "running", "lookahead": False}, 8, "fitted blend of time-, progress-matched and VIMCO's stand-ins"),
    ("vimco-seq", {"align": "progress"}, 8, "progress-matched, lookahead over both branches of each decision"),
    ("vimco-seq", {"align": "fitted"}, 8, "fitted blend with the lookahead (the default)"),
    ("vimco-seq", {"align": "fitted", "future_control": True}, 8, "the default + the future control variate (future_control)"),
]


def gradient_variance(problem, name, options, num_samples, replicas, seed=0):
    estimator = build_estimator(name, **options).double()
    # warm-up draws come from their own generator, so every row sees the same final sample
    # (paired comparison: differences between rows are not sampling noise)
    warm_up = torch.Generator().manual_seed(10_000 + seed)
    generator = torch.Generator().manual_seed(seed)
    stateful = options.get("baseline") == "ema" or options.get("mix") == "running" or options.get("align") == "fitted" or options.get("future_control")
    if name == "nvil" or stateful:  # warm the running statistics up
        for _ in range(20):
            phi, theta = problem.leaves(256)
            log_weights, log_probs, progress, alternative = problem.sample(phi, theta, num_samples, warm_up)
            estimator(log_weights, log_probs, progress=progress, alternative=alternative)
    phi, theta = problem.leaves(replicas)
    log_weights, log_probs, progress, alternative = problem.sample(phi, theta, num_samples, generator)
    out = estimator(log_weights, log_probs, progress=progress, alternative=alternative)
    out.loss.backward()
    grads = replicas * phi.grad  # one estimate per replica
    return grads.var(0).sum().item(), out.objective.mean().item()


def call_time(name, options, device, repeats=20):
    K, B, T = 16, 32, 300
    g = torch.Generator(device=device).manual_seed(0)
    log_weights = torch.randn(K, B, T, device=device, generator=g).requires_grad_(True)
    log_probs = (-torch.rand(K, B, T, device=device, generator=g)).requires_grad_(True)
    mask = torch.rand(K, B, T, device=device, generator=g) < 0.9
    emit = torch.rand(K, B, T, device=device, generator=g) < 0.2
    progress = torch.cat([torch.zeros_like(emit[..., :1], dtype=torch.long), emit.long().cumsum(-1)[..., :-1]], dim=-1)
    # the other branch of every decision: read by vimco-seq's lookahead (and future control), ignored by the others
    alternative = Alternative(emit, torch.randn(K, B, T, device=device, generator=g))
    estimator = build_estimator(name, **options).to(device)
    baseline = torch.zeros(K, B, T, device=device, requires_grad=True) if estimator.takes_baseline else None
    for _ in range(3):
        estimator(log_weights, log_probs, mask, baseline=baseline, progress=progress, alternative=alternative).loss.backward()
    times = []
    for _ in range(repeats):  # the fastest call: other processes on a shared machine only add time
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        estimator(log_weights, log_probs, mask, baseline=baseline, progress=progress, alternative=alternative).loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def format_variance(values: list[float]) -> str:
    mean = sum(values) / len(values)
    digits = 3 if mean < 10 else 1
    text = f"{mean:.{digits}f}"
    if len(values) > 1:
        text += f" ({min(values):.{digits}f}-{max(values):.{digits}f})"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=4000)
    parser.add_argument("--out", default="benchmarks/results/estimator_variance.md")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1: stable timings on a shared machine)")
    parser.add_argument("--seeds", type=int, default=1, help="repeat the variance runs with this many seeds; report mean (min-max)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problems = [
        ("Markov T=3", MarkovBernoulli(3, offset=-2.0)),
        ("Markov T=50", MarkovBernoulli(50, offset=-2.0)),
        ("labels T=50", LabelCounter(50, labels=12)),
        ("policy T=50, pace 0.8", LabelCounter(50, labels=12, policy=True)),
        ("policy T=50, pace 0", LabelCounter(50, labels=12, policy=True, pace=0.0)),
    ]
    lines = [
        f"Proposal-gradient variance (sum over parameters, {args.replicas} replicas, float64"
        + (f", mean (min-max) over {args.seeds} seeds" if args.seeds > 1 else "")
        + f") and time per forward+backward call (K=16, B=32, T=300, float32, {device.type}, "
        f"{torch.get_num_threads()} threads). Objective: the mean over replicas (ELBO for K=1 and "
        "REINFORCE/NVIL, the K-sample bound for the VIMCO variants).",
        "",
        "| estimator | options | K | " + " | ".join(f"variance {label}" for label, _ in problems)
        + " | objective policy pace 0 | ms / call (min of 20) |",
        "|---|---|---|" + "---|" * len(problems) + "---|---|",
    ]
    for name, options, k, label in ROWS:
        cells, objective = [], 0.0
        for _, problem in problems:
            runs = [gradient_variance(problem, name, options, k, args.replicas, seed=seed) for seed in range(args.seeds)]
            values = [v for v, _ in runs]
            objective = sum(o for _, o in runs) / len(runs)
            cells.append(format_variance(values))
        ms = call_time(name, options, device)
        lines.append(f"| {name} | {label} | {k} | " + " | ".join(cells) + f" | {objective:.2f} | {ms:.2f} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
