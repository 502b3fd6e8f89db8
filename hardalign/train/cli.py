"""``hardalign train``, ``hardalign evaluate`` and ``hardalign checkpoint convert``.

Train and evaluate take ``--config FILE`` and any config key as a ``--kebab-case`` override::

    hardalign train --config recipes/timit/conf/vimco-seq.yaml --estimator vimco --num-samples 16
    hardalign train --config exp.yaml --out-dir exp/run1 --resume auto
    torchrun --nproc-per-node 4 -m hardalign.cli train --config exp.yaml
    hardalign evaluate --checkpoint exp/run1/checkpoint.pt --split test
    hardalign checkpoint convert old.pt new.pt      # a format-1 checkpoint -> format 2

Overrides are not argparse options (the valid keys depend on the task named in the config), so
the parsers below pass every argument they do not know on to :func:`resolve_config`, which
rejects unknown keys by naming the nearest valid one.

Errors are one line on stderr (``hardalign train: <message>``) with exit status 2 for a
problem found before any work starts (config, paths, device, checkpoints) and 1 for one met
while working; ``--debug`` shows the traceback instead. Everything that can be checked is
checked before ``out_dir`` is created (:func:`hardalign.train.config.check_run`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

__all__ = ["OverridesParser", "register"]


class OverridesParser(argparse.ArgumentParser):
    """An ArgumentParser that collects unknown ``--key value`` arguments into ``args.overrides``.

    The one parser of config overrides on the command line: commands that rebuild a run (train,
    evaluate, decode, plot) use it, and :func:`hardalign.train.config.parse_overrides` reads the
    collected strings.
    """

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        namespace.overrides = list(getattr(namespace, "overrides", None) or []) + list(extras)
        return namespace, []


_OverridesParser = OverridesParser  # the name other command modules import


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _guarded(name: str, work: Callable[[], int], debug: bool) -> int:
    """Run ``work``; turn any error into one line on stderr (the traceback only with ``--debug``)."""
    from hardalign.train.checkpoint import CheckpointError
    from hardalign.train.config import ConfigError

    try:
        return work()
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"hardalign {name}: interrupted (the last checkpoint is kept; continue with --resume auto)", file=sys.stderr)
        return 130
    except (ConfigError, CheckpointError, FileExistsError, FileNotFoundError, ImportError) as error:
        if debug:
            raise
        print(f"hardalign {name}: {_one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - the command line reports, --debug shows the traceback
        if debug:
            raise
        from hardalign.train.loop import NonFiniteLossError

        known = isinstance(error, (NonFiniteLossError, ValueError))
        prefix = "" if known else f"{type(error).__name__}: "
        print(f"hardalign {name}: {prefix}{_one_line(error)}" + ("" if known else " (run with --debug for the traceback)"), file=sys.stderr)
        return 1


def _train_command(args: argparse.Namespace) -> int:
    def work() -> int:
        from hardalign.train.config import ConfigError, check_run, resolve_config

        try:
            config = resolve_config(args.config, args.overrides)
        except (ValueError, TypeError) as error:  # every problem with the config is a config error
            raise ConfigError(str(error)) from None
        check_run(config)  # before out_dir is created or any data is read
        from hardalign.train.loop import train

        result = train(config)
        if result.eval_metrics:
            print(json.dumps({"step": result.step, "stopped_by": result.stopped_by, config.train.eval_split: result.eval_metrics}))
        return 0

    return _guarded("train", work, args.debug)


def _evaluate_command(args: argparse.Namespace) -> int:
    def work() -> int:
        from hardalign.train.config import ConfigError
        from hardalign.train.evaluate import evaluate_checkpoint, results_markdown

        if args.config is None and args.checkpoint is None:
            raise ConfigError("give --config FILE or --checkpoint PATH")
        try:
            result = evaluate_checkpoint(args.config, checkpoint=args.checkpoint, split=args.split, overrides=args.overrides)
        except ValueError as error:
            if type(error) is ValueError:  # the config or the checkpoint's stored config: a start-up problem
                raise ConfigError(str(error)) from None
            raise
        print(results_markdown(result), end="")
        return 0

    return _guarded("evaluate", work, args.debug)


def _convert_command(args: argparse.Namespace) -> int:
    def work() -> int:
        from hardalign.train.checkpoint import CHECKPOINT_FORMAT, convert_checkpoint

        state = convert_checkpoint(args.old, args.new, trust=args.trust_checkpoint)
        print(f"wrote {args.new} (format {CHECKPOINT_FORMAT}, step {state.get('step', '?')}): it loads with weights_only=True")
        return 0

    return _guarded("checkpoint convert", work, args.debug)


def register(commands) -> None:
    """Add ``train``, ``evaluate`` and ``checkpoint convert`` to the ``hardalign`` command."""
    train = commands.add(
        "train",
        _train_command,
        help="train a model: --config FILE plus --key value overrides of any config key",
        description="Train the task named in the config with the configured estimator. Any config key can be "
        "overridden as --kebab-case-key VALUE (e.g. --estimator vimco --num-samples 16); see docs/training.md.",
        allow_abbrev=False,
    )
    train.__class__ = OverridesParser  # unknown --key value pairs become config overrides
    train.add_argument("--config", metavar="FILE", help="flat YAML config (default: all defaults, task sbn)")
    train.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")

    evaluate = commands.add(
        "evaluate",
        _evaluate_command,
        help="score a checkpoint on dev or test; writes eval-SPLIT.json and .md beside the checkpoint",
        description="Evaluate a trained model with its task's metric. With --checkpoint the config stored in "
        "the checkpoint is used; --key value overrides apply on top (e.g. --eval-num-samples 1000).",
        allow_abbrev=False,
    )
    evaluate.__class__ = OverridesParser
    evaluate.add_argument("--config", metavar="FILE", help="the run's YAML config (checkpoint: OUT_DIR/checkpoint.pt)")
    evaluate.add_argument("--checkpoint", metavar="PATH", help="a checkpoint file (its stored config is used)")
    evaluate.add_argument("--split", choices=("dev", "test"), default="test", help="split to score (default: test)")
    evaluate.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")

    checkpoint = commands.add(
        "checkpoint",
        lambda args: (checkpoint.print_help(), 2)[1],
        help="checkpoint tools: convert a format-1 checkpoint to format 2",
        allow_abbrev=False,
    )
    tools = checkpoint.add_subparsers(dest="checkpoint_command", metavar="WHAT")
    convert = tools.add_parser(
        "convert",
        help="rewrite an older checkpoint (format 1) so that it loads with weights_only=True",
        description="Read OLD (a format-1 hardalign checkpoint, with numpy's RNG state; only numpy's array types "
        "are allowed, so no code runs) and write NEW in format 2 (RNG states as tensors). OLD and NEW may be "
        "the same file: it is replaced atomically.",
        allow_abbrev=False,
    )
    convert.set_defaults(func=_convert_command)
    convert.add_argument("old", metavar="OLD", help="the checkpoint to convert")
    convert.add_argument("new", metavar="NEW", help="where to write the converted checkpoint (may be OLD)")
    convert.add_argument(
        "--trust-checkpoint", action="store_true", help="unpickle OLD fully (can run code): only for a file you made yourself"
    )
    convert.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
