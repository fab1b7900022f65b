"""Suite-wide settings: offline, deterministic, quiet."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest
import torch
from threadpoolctl import threadpool_limits

# Tests run two at a time (pytest -n 2) on small tensors: one intra-op thread each is faster
# than oversubscribing the cores.
torch.set_num_threads(1)
# numpy's OpenBLAS starts a thread per core for the Fréchet/KID linear algebra: with two test workers on two
# cores that oversubscription made a 64×64 eigh up to 100× slower. One BLAS thread per worker too (numpy may
# already be imported by a pytest plugin, so an environment variable set here would come too late).
threadpool_limits(limits=1, user_api="blas")


@pytest.fixture(autouse=True)
def _keep_one_torch_thread():
    """Undo a thread count a test leaves behind: the demo's and benchmarks' ``main`` set torch's thread count (the
    demo's default is 2) and keep it, even when they return 2 on bad input. A worker left at 2 threads beside the
    other busy worker ran every later test several times slower (the docs' training snippet: 144 s instead of 39 s)."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
