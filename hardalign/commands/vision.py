"""Glimpse-model commands: ``hardalign plot glimpses``.

Example::

    hardalign plot glimpses --checkpoint exp/glimpse/ram_cluttered60/checkpoint.pt \\
        --out exp/glimpse/ram_cluttered60/glimpses.png --num-images 8
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def _plot_glimpses_command(args: argparse.Namespace) -> int:
    from hardalign.train.run import load_run
    from hardalign.vision.plot import plot_glimpses

    try:
        run = load_run(args.checkpoint, device=args.device, expect_task="glimpse")
        images, labels = run.task.split_data(args.split)
        if args.num_images < 1:
            raise ValueError(f"--num-images must be >= 1, got {args.num_images}")
        images, labels = images[: args.num_images].to(args.device), labels[: args.num_images]
        path = plot_glimpses(
            run.model,
            images,
            labels,
            args.out,
            num_steps=args.num_glimpses,
            greedy=args.greedy,
            columns=args.columns,
            seed=args.seed,
            title=args.title,
        )
    except (OSError, ValueError) as error:
        print(f"hardalign plot glimpses: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


def register(commands) -> None:
    """Add ``hardalign plot glimpses``."""
    parser = commands.add_to_group(
        "plot",
        "glimpses",
        _plot_glimpses_command,
        help="draw glimpse paths and boxes of a trained glimpse model on test images (PNG grid)",
        description="Draw the glimpse boxes and paths of a trained RAM / Saccader checkpoint on the first "
        "test (or dev) canvases, one sampled rollout per image unless --greedy.",
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="a glimpse run's checkpoint.pt")
    parser.add_argument("--out", required=True, metavar="PNG", help="output picture")
    parser.add_argument("--split", choices=("dev", "test"), default="test", help="canvases to draw (default: test)")
    parser.add_argument("--num-images", type=int, default=8, help="images in the grid (default: 8)")
    parser.add_argument("--columns", type=int, default=4, help="images per row (default: 4)")
    parser.add_argument("--num-glimpses", type=int, default=None, help="glimpses per image (default: the model's)")
    parser.add_argument("--greedy", action="store_true", help="the policy's mode instead of a sampled rollout")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled rollout")
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
