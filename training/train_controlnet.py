#!/usr/bin/env python
"""Train a ControlNet for the frozen UNet of a saved pipeline, on pairs of images and control images.

    accelerate launch training/train_controlnet.py --pipeline ddpm-digits --output_dir controlnet-digits
    accelerate launch training/train_controlnet.py --pipeline ddpm-digits --control edges --attach ...
    python -m scratch_diffusion.training.train_controlnet --pipeline DIR --train_data_dir photos --control_dir sketches

The pipeline's UNet (and a latent pipeline's VAE) stay frozen; the control network, made from that UNet, trains
with the pipeline's own objective on the data — with no data argument the built-in scikit-learn digits (offline) —
and control images from a built-in transform of each image (``--control low_resolution`` or ``edges``) or the
user's pairs (``--control_dir``, ``--control_column``). The output folder loads with
``ControlNet2DModel.from_pretrained`` and holds ``controlnet_metrics.json``, ``control_samples.png`` and the model
card; ``--attach`` also adds the network to the pipeline folder as its ``controlnet``. This file is the command line
only: the loop is :func:`scratch_diffusion.training.controlnet.train_controlnet`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

if __name__ == "__main__" and not __package__:  # run as a file: python training/train_controlnet.py, accelerate …
    # PEP 366, as train.py: the relative imports resolve in the installed package, and this folder
    # leaves sys.path so that its modules cannot shadow other top-level imports.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _here]
    __package__ = "scratch_diffusion.training"

from .controlnet.cli import parse_args, validate_args
from .controlnet.trainer import train_controlnet
from .entry import run_command


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status, as ``train.py`` (``entry.py`` lists them)."""
    advice = "Lower --learning_rate, or pass --skip_nonfinite_loss."
    return run_command(
        "train_controlnet.py", argv, parse_args, validate_args, train_controlnet, nonfinite_advice=advice
    )


if __name__ == "__main__":
    sys.exit(main())
