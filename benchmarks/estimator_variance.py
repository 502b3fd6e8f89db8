"""Gradient variance and speed of every estimator on the same problems, side by side.

Variance: total variance (summed over the T proposal parameters) of the proposal-gradient
estimates of a Markov Bernoulli chain (z_t depends on z_{t-1}, per-step reward, a constant
per-step log-likelihood offset of -2 nats), over R independent replicas, at T = 3 and T = 50.
Speed: the fastest of 20 forward + backward calls, in milliseconds, at a speech-like size (K=16, B=32, T=300).

    python benchmarks/estimator_variance.py [--replicas 4000] [--out benchmarks/results/estimator_variance.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hardalign.estimators import build_estimator  # noqa: E402
from tests.estimators.problems import MarkovBernoulli  # noqa: E402

ROWS = [
    ("reinforce", {}, 1, "no baseline"),
    ("reinforce", {"baseline": "ema"}, 1, "moving average (warmed up)"),
    ("nvil", {"normalize_variance": False}, 1, "centring (warmed up), no baseline net"),
    ("nvil", {}, 1, "centring + variance normalisation: gradient rescaled, variance not comparable"),
    ("reinforce", {}, 8, "no baseline, K=8"),
    ("reinforce", {"baseline": "loo"}, 8, "leave-one-out (RLOO)"),
    ("vimco", {}, 8, "geometric stand-in"),
    ("vimco", {"loo": "arithmetic"}, 8, "arithmetic stand-in"),
    ("vimco-seq", {}, 8, "per-step stand-in"),
]


def gradient_variance(problem, name, options, num_samples, replicas, seed=0):
    estimator = build_estimator(name, **options).double()
    generator = torch.Generator().manual_seed(seed)
    if name in ("nvil",) or options.get("baseline") == "ema":  # warm the running statistics up
        for _ in range(20):
            phi, theta = problem.leaves(256)
            estimator(*problem.draw(phi, theta, num_samples, generator))
    phi, theta = problem.leaves(replicas)
    log_weights, log_probs = problem.draw(phi, theta, num_samples, generator)
    out = estimator(log_weights, log_probs)
    out.loss.backward()
    grads = replicas * phi.grad  # one estimate per replica
    return grads.var(0).sum().item(), out.objective.mean().item()


def call_time(name, options, device, repeats=20):
    K, B, T = 16, 32, 300
    g = torch.Generator(device=device).manual_seed(0)
    log_weights = torch.randn(K, B, T, device=device, generator=g).requires_grad_(True)
    log_probs = (-torch.rand(K, B, T, device=device, generator=g)).requires_grad_(True)
    mask = torch.rand(K, B, T, device=device, generator=g) < 0.9
    estimator = build_estimator(name, **options).to(device)
    baseline = torch.zeros(K, B, T, device=device, requires_grad=True) if name == "nvil" else None
    for _ in range(3):
        estimator(log_weights, log_probs, mask, baseline=baseline).loss.backward()
    times = []
    for _ in range(repeats):  # the fastest call: other processes on a shared machine only add time
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        estimator(log_weights, log_probs, mask, baseline=baseline).loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=4000)
    parser.add_argument("--out", default="benchmarks/results/estimator_variance.md")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1: stable timings on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    short, long = MarkovBernoulli(3, offset=-2.0), MarkovBernoulli(50, offset=-2.0)
    lines = [
        f"Proposal-gradient variance (sum over parameters, {args.replicas} replicas, float64) and time per "
        f"forward+backward call (K=16, B=32, T=300, float32, {device.type}, {torch.get_num_threads()} threads).",
        "",
        "| estimator | options | K | variance T=3 | variance T=50 | objective T=50 | ms / call (min of 20) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, options, k, label in ROWS:
        var_short, _ = gradient_variance(short, name, options, k, args.replicas)
        var_long, objective = gradient_variance(long, name, options, k, args.replicas)
        ms = call_time(name, options, device)
        lines.append(f"| {name} | {label} | {k} | {var_short:.3f} | {var_long:.1f} | {objective:.2f} | {ms:.2f} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
