"""Shared test settings: dtype/device from the environment, deterministic seeds, few threads.

``HARDALIGN_TEST_DEVICE`` (default ``cpu``; ``cuda`` where a GPU is present) and
``HARDALIGN_TEST_DTYPE`` (``float32`` or ``float64``) select where the device/dtype-generic
tests run.
"""

import os

import pytest
import torch


@pytest.fixture
def device() -> torch.device:
    return torch.device(os.environ.get("HARDALIGN_TEST_DEVICE", "cpu"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
