"""Suite-wide settings: offline, deterministic, quiet."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch

# Tests run two at a time (pytest -n 2) on small tensors: one intra-op thread each is faster
# than oversubscribing the cores.
torch.set_num_threads(1)
