#!/usr/bin/env python
"""Train an ``AutoencoderKL`` from scratch: the VAE whose latents a latent diffusion model is trained on.

    accelerate launch training/train_vae.py --output_dir vae-digits --max_train_steps 2000
    python -m scratch_diffusion.training.train_vae --model_config_name_or_path small --resolution 32 ...
    scratch-diffusion-train-vae --help

With no data argument it trains on the built-in scikit-learn digits (16×16, offline). The output folder
loads with ``AutoencoderKL.from_pretrained`` and carries the measured ``scaling_factor``; it also holds
``vae_metrics.json`` (PSNR, FD of reconstructions vs. the real baseline), ``reconstructions.png`` and the
model card. This file is the command line only: the loop is :func:`scratch_diffusion.training.vae.train_vae`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

if __name__ == "__main__" and not __package__:  # run as a file: python training/train_vae.py, accelerate launch …
    # PEP 366, as train.py: the relative imports resolve in the installed package, and this folder
    # leaves sys.path so that its modules cannot shadow other top-level imports.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _here]
    __package__ = "scratch_diffusion.training"

from .entry import run_command
from .vae.cli import parse_args, validate_args
from .vae.trainer import train_vae


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status, as ``train.py`` (``entry.py`` lists them)."""
    advice = "Lower --learning_rate or --adversarial_weight, or pass --skip_nonfinite_loss."
    return run_command("train_vae.py", argv, parse_args, validate_args, train_vae, nonfinite_advice=advice)


if __name__ == "__main__":
    sys.exit(main())
