"""``hardalign estimators``: list the registered estimators and their options."""

from __future__ import annotations

import argparse


def _list(args: argparse.Namespace) -> int:
    from hardalign.estimators._registry import ESTIMATORS, describe, estimator_options

    width = max(len(name) for name in ESTIMATORS)
    for name in ESTIMATORS:
        options = ", ".join(f"{key}={value!r}" for key, value in estimator_options(name).items())
        line = f"{name:<{width}}  {describe(name)}"
        print(line + (f"  [options: {options}]" if args.verbose and options else ""))
    return 0


def register(commands) -> None:
    sub = commands.add("estimators", _list, help="list the registered gradient estimators")
    sub.add_argument("-v", "--verbose", action="store_true", help="also show each estimator's options and defaults")
