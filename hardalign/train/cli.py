"""``hardalign train`` and ``hardalign evaluate``.

Both take ``--config FILE`` and any config key as a ``--kebab-case`` override::

    hardalign train --config recipes/timit/conf/nat.yaml --estimator vimco --num-samples 16
    hardalign train --config exp.yaml --out-dir exp/run1 --resume auto
    torchrun --nproc-per-node 4 -m hardalign.cli train --config exp.yaml
    hardalign evaluate --checkpoint exp/run1/checkpoint.pt --split test

Overrides are not argparse options (the valid keys depend on the task named in the config), so
the parsers below pass every argument they do not know on to :func:`resolve_config`, which
rejects unknown keys by naming the nearest valid one.
"""

from __future__ import annotations

import argparse
import json
import sys


class _OverridesParser(argparse.ArgumentParser):
    """An ArgumentParser that collects unknown ``--key value`` arguments into ``args.overrides``."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        namespace.overrides = list(getattr(namespace, "overrides", None) or []) + list(extras)
        return namespace, []


def _train_command(args: argparse.Namespace) -> int:
    from hardalign.train.config import ConfigError, resolve_config
    from hardalign.train.loop import train

    try:
        config = resolve_config(args.config, args.overrides)
    except (ConfigError, ValueError, ImportError) as error:
        print(f"hardalign train: {error}", file=sys.stderr)
        return 2
    from hardalign.train.loop import NonFiniteLossError

    try:
        result = train(config)
    except (FileExistsError, FileNotFoundError) as error:
        print(f"hardalign train: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"hardalign train: {error}", file=sys.stderr)
        return 1
    if result.eval_metrics:
        print(json.dumps({"step": result.step, "stopped_by": result.stopped_by, config.train.eval_split: result.eval_metrics}))
    return 0


def _evaluate_command(args: argparse.Namespace) -> int:
    from hardalign.train.config import ConfigError
    from hardalign.train.evaluate import evaluate_checkpoint, results_markdown

    if args.config is None and args.checkpoint is None:
        print("hardalign evaluate: give --config FILE or --checkpoint PATH", file=sys.stderr)
        return 2
    try:
        result = evaluate_checkpoint(args.config, checkpoint=args.checkpoint, split=args.split, overrides=args.overrides)
    except (ConfigError, ValueError, FileNotFoundError, ImportError) as error:
        print(f"hardalign evaluate: {error}", file=sys.stderr)
        return 2
    print(results_markdown(result), end="")
    return 0


def register(commands) -> None:
    """Add ``train`` and ``evaluate`` to the ``hardalign`` command."""
    train = commands.add(
        "train",
        _train_command,
        help="train a model: --config FILE plus --key value overrides of any config key",
        description="Train the task named in the config with the configured estimator. Any config key can be "
        "overridden as --kebab-case-key VALUE (e.g. --estimator vimco --num-samples 16); see docs/training.md.",
        allow_abbrev=False,
    )
    train.__class__ = _OverridesParser  # unknown --key value pairs become config overrides
    train.add_argument("--config", metavar="FILE", help="flat YAML config (default: all defaults, task sbn)")

    evaluate = commands.add(
        "evaluate",
        _evaluate_command,
        help="score a checkpoint on dev or test; writes eval-SPLIT.json and .md in out_dir",
        description="Evaluate a trained model with its task's metric. With --checkpoint the config stored in "
        "the checkpoint is used; --key value overrides apply on top (e.g. --eval-num-samples 1000).",
        allow_abbrev=False,
    )
    evaluate.__class__ = _OverridesParser
    evaluate.add_argument("--config", metavar="FILE", help="the run's YAML config (checkpoint: OUT_DIR/checkpoint.pt)")
    evaluate.add_argument("--checkpoint", metavar="PATH", help="a checkpoint file (its stored config is used)")
    evaluate.add_argument("--split", choices=("dev", "test"), default="test", help="split to score (default: test)")
