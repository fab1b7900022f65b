#!/usr/bin/env python
"""Train a ``UNet2DModel`` from scratch with a DDPM-family or flow-matching objective.

    accelerate launch training/train.py --output_dir ddpm-digits --max_train_steps 3000
    accelerate launch -m scratch_diffusion.training.train --output_dir ddpm-digits
    python training/train.py --objective flow --weighting_scheme logit_normal --output_dir flow-digits
    scratch-diffusion-train --help

With no data argument it trains on the built-in scikit-learn digits (16×16, offline). This file is
the command line only: the loop is :func:`scratch_diffusion.training.trainer.train`, and
:func:`scratch_diffusion.training.run_training` runs it from Python.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

if __name__ == "__main__" and not __package__:  # run as a file: python training/train.py, accelerate launch …
    # PEP 366: the relative imports below resolve in the installed package, as with `-m`; and this
    # folder leaves sys.path, so that its modules (data, models, …) cannot shadow other top-level imports.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _here]
    __package__ = "scratch_diffusion.training"

from .cli import parse_args, validate_args
from .entry import run_command
from .trainer import train


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status.

    0 done; 1 the Hub push failed (the local output is complete); 2 bad input, before any training
    step; 3 a non-finite loss stopped training (nothing after the last good checkpoint was saved);
    4 a checkpoint or the final output could not be written (earlier checkpoints are intact).
    """
    advice = "Lower --learning_rate, or pass --skip_nonfinite_loss to skip such updates."
    return run_command("train.py", argv, parse_args, validate_args, train, nonfinite_advice=advice)


if __name__ == "__main__":
    sys.exit(main())
