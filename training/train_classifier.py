#!/usr/bin/env python
"""Train a noise-aware classifier p(y | x_t) for classifier guidance of a diffusion model.

    accelerate launch training/train_classifier.py --pipeline ddpm-digits --output_dir classifier-digits
    python -m scratch_diffusion.training.train_classifier --objective flow --logit_mean -0.7 ...
    scratch-diffusion-train-classifier --help

With ``--pipeline`` (a saved pipeline folder) the classifier trains on that pipeline's noise path, schedule, time
distribution and sample space (a latent pipeline's VAE latents), at its resolution, mirroring its UNet's encoder;
without it, on the path and times the objective arguments describe. With no data argument it trains on the built-in
scikit-learn digits and their labels (offline). The output folder loads with ``NoisyClassifier.from_pretrained``
and holds ``classifier_metrics.json`` (held-out accuracy by noise level), ``accuracy_by_noise.png`` and the model
card. This file is the command line only: the loop is :func:`scratch_diffusion.training.classifier.train_classifier`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

if __name__ == "__main__" and not __package__:  # run as a file: python training/train_classifier.py, accelerate …
    # PEP 366, as train.py: the relative imports resolve in the installed package, and this folder
    # leaves sys.path so that its modules cannot shadow other top-level imports.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _here]
    __package__ = "scratch_diffusion.training"

from .classifier.cli import parse_args, validate_args
from .classifier.trainer import train_classifier
from .entry import run_command


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status, as ``train.py`` (``entry.py`` lists them)."""
    advice = "Lower --learning_rate, or pass --skip_nonfinite_loss."
    return run_command(
        "train_classifier.py", argv, parse_args, validate_args, train_classifier, nonfinite_advice=advice
    )


if __name__ == "__main__":
    sys.exit(main())
