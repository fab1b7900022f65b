"""Suite-wide settings: offline, deterministic, quiet."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch
from threadpoolctl import threadpool_limits

# Tests run two at a time (pytest -n 2) on small tensors: one intra-op thread each is faster
# than oversubscribing the cores.
torch.set_num_threads(1)
# numpy's OpenBLAS starts a thread per core for the Fréchet/KID linear algebra: with two test workers on two
# cores that oversubscription made a 64×64 eigh up to 100× slower. One BLAS thread per worker too (numpy may
# already be imported by a pytest plugin, so an environment variable set here would come too late).
threadpool_limits(limits=1, user_api="blas")
