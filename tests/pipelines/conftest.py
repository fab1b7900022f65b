"""Pipeline tests run torch on one thread: the tiny UNets gain nothing from more, and on a shared
2-core runner (pytest -n 2) two threads per worker oversubscribe the CPU (20× slower here)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
