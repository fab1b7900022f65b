"""Counter-based seeds: every random draw of training is a pure function of (seed, where).

The data order of an epoch and the noise, timesteps, flips and label dropout of a micro-batch are
drawn from generators seeded by :func:`derive_seed` from ``--seed`` and the position in training
(epoch, batch index, process index). Nothing depends on a generator's history, so a run resumed
from a checkpoint draws exactly what the uninterrupted run drew, on any number of processes,
without saving or restoring any generator state.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *where: int | str) -> int:
    """A 63-bit seed for the draw at ``where`` (e.g. ``("batch", epoch, index, rank)``) of run ``seed``."""
    key = "/".join(str(part) for part in (seed, *where)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def seeded_generator(generator: torch.Generator, seed: int, *where: int | str) -> torch.Generator:
    """Re-seed ``generator`` in place for the draw at ``where`` and return it."""
    return generator.manual_seed(derive_seed(seed, *where))
