"""Fixtures of the trainer tests: the toy task registered under the name ``toy``."""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def register_toy_task() -> None:
    """Make ``toy`` a registered task (also called inside spawned worker processes)."""
    from hardalign.train import TASKS

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    TASKS["toy"] = "toytask:ToyTask"


@pytest.fixture
def toy_task():
    register_toy_task()
    yield "toy"
    from hardalign.train import TASKS

    TASKS.pop("toy", None)


