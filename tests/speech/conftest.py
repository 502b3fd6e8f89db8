"""Speech tests run single-threaded: their tensors are small, and on a shared machine two intra-op
threads made them several times slower (threads spinning against other processes)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
