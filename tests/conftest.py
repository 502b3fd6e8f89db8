"""Shared test settings: dtype/device from the environment, deterministic seeds, one thread.

``HARDALIGN_TEST_DEVICE`` (default ``cpu``; ``cuda`` where a GPU is present) and
``HARDALIGN_TEST_DTYPE`` (``float32`` or ``float64``) select where the device/dtype-generic
tests run.
"""

import importlib.util
import os
from pathlib import Path

import pytest
import torch


@pytest.fixture
def device() -> torch.device:
    return torch.device(os.environ.get("HARDALIGN_TEST_DEVICE", "cpu"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _one_thread():
    # the models under test are tiny and the machines running the suite are shared: oversubscribed
    # intra-op threads made them several times slower (threads spinning against other processes)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


REPO = Path(__file__).resolve().parents[1]


def load_script(relative_path: str):
    """Import a script of the repository (``benchmarks/X.py``, ``examples/X.py``) as a module."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
