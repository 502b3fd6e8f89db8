"""The ``hardalign`` command line.

Each area of the toolkit registers its own subcommands from the module that owns them, so that
this file stays a table of contents. A registering module defines
``register(commands: Commands) -> None`` and adds parsers with :meth:`Commands.add` (a top-level
command such as ``train``) or :meth:`Commands.add_to_group` (a subcommand of a shared group such
as ``prepare timit`` or ``plot glimpses``). The parser's ``func`` default is called with the
parsed arguments and returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

#: Modules that register subcommands, in the order they appear in ``hardalign --help``.
COMMAND_MODULES = (
    "hardalign.estimators._cli",
    "hardalign.train.cli",
    "hardalign.data.cli",
    "hardalign.commands.speech",
    "hardalign.commands.vision",
)

#: Shared groups of subcommands and their one-line help.
GROUPS = {
    "prepare": "prepare a corpus: TIMIT manifests or the offline synthetic corpus",
    "plot": "draw pictures: alignments of speech models, glimpse paths of image models",
}


class Commands:
    """Collects subcommands from several modules into one argparse tree."""

    def __init__(self, parser: argparse.ArgumentParser):
        self._subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
        self._groups: dict[str, argparse._SubParsersAction] = {}

    def add(self, name: str, func: Callable[[argparse.Namespace], int], **kwargs) -> argparse.ArgumentParser:
        """Add a top-level command; ``kwargs`` go to ``add_parser`` (``help=`` is expected)."""
        sub = self._subparsers.add_parser(name, **kwargs)
        sub.set_defaults(func=func)
        return sub

    def add_to_group(self, group: str, name: str, func: Callable[[argparse.Namespace], int], **kwargs):
        """Add ``hardalign GROUP NAME``; ``group`` must be one of :data:`GROUPS`."""
        if group not in self._groups:
            if group not in GROUPS:
                raise ValueError(f"unknown command group {group!r}; known groups: {sorted(GROUPS)}")
            parent = self._subparsers.add_parser(group, help=GROUPS[group])
            self._groups[group] = parent.add_subparsers(dest=f"{group}_command", metavar="WHAT", required=True)
        sub = self._groups[group].add_parser(name, **kwargs)
        sub.set_defaults(func=func)
        return sub


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hardalign",
        description="Train and evaluate hard alignment / hard attention models with "
        "REINFORCE, NVIL, VIMCO and sequential VIMCO.",
    )
    commands = Commands(parser)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
