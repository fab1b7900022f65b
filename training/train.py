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

from . import checkpoints, hub
from .cli import ConfigError, parse_args, validate_args
from .data import DataError
from .monitoring import NonFiniteLossError
from .trainer import OutputWriteError, train

# Exit statuses of main(); the README ("Reliability") lists them.
EXIT_OK, EXIT_HUB, EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_WRITE = 0, 1, 2, 3, 4


def _last_good_checkpoint(output_dir: str) -> str:
    intact = [p for _, p in checkpoints.list_checkpoints(output_dir) if checkpoints.checkpoint_problem(p) is None]
    if not intact:
        return "There is no checkpoint to resume from."
    return f"The last good checkpoint is {intact[-1]}; continue from it with --resume_from_checkpoint latest."


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status.

    0 done; 1 the Hub push failed (the local output is complete); 2 bad input, before any training
    step; 3 a non-finite loss stopped training (nothing after the last good checkpoint was saved);
    4 a checkpoint or the final output could not be written (earlier checkpoints are intact).
    """
    args = parse_args(None if argv is None else list(argv))
    try:
        validate_args(args)
        train(args)
    except (ConfigError, DataError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except hub.HubError as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return EXIT_HUB
    except NonFiniteLossError as err:
        print(
            f"train.py: error: {err}: training stopped, and no state from that step on was saved. "
            f"{_last_good_checkpoint(args.output_dir)} Lower --learning_rate, or pass --skip_nonfinite_loss to skip "
            "such updates.",
            file=sys.stderr,
        )
        return EXIT_NONFINITE
    except checkpoints.CheckpointError as err:  # the message lists the intact checkpoints
        print(f"train.py: error: {err}", file=sys.stderr)
        return EXIT_WRITE
    except OutputWriteError as err:
        print(f"train.py: error: {err}. {_last_good_checkpoint(args.output_dir)}", file=sys.stderr)
        return EXIT_WRITE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
