"""The command line of a trainer around its loop: errors become one-line messages and exit statuses.

``train.py`` and ``train_vae.py`` are thin entry points over :func:`run_command`; the statuses are
the README's ("Reliability"):

0 done; 1 the Hub push failed (the local output is complete); 2 bad input, before any training step;
3 a non-finite loss stopped training (nothing after the last good checkpoint was saved); 4 a checkpoint
or the final output could not be written (earlier checkpoints are intact).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import checkpoints, hub
from .data import DataError
from .errors import ConfigError
from .monitoring import NonFiniteLossError
from .trainer import OutputWriteError

EXIT_OK, EXIT_HUB, EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_WRITE = 0, 1, 2, 3, 4

__all__ = ["EXIT_BAD_INPUT", "EXIT_HUB", "EXIT_NONFINITE", "EXIT_OK", "EXIT_WRITE", "last_good_checkpoint",
           "run_command"]  # fmt: skip


def last_good_checkpoint(output_dir: str) -> str:
    """A sentence naming the newest intact checkpoint in ``output_dir`` and how to continue from it."""
    intact = [p for _, p in checkpoints.list_checkpoints(output_dir) if checkpoints.checkpoint_problem(p) is None]
    if not intact:
        return "There is no checkpoint to resume from."
    return f"The last good checkpoint is {intact[-1]}; continue from it with --resume_from_checkpoint latest."


def run_command(
    prog: str,
    argv: Sequence[str] | None,
    parse: Callable[[list[str] | None], argparse.Namespace],
    validate: Callable[[argparse.Namespace], None],
    train: Callable[[argparse.Namespace], object],
    nonfinite_advice: str,
) -> int:
    """Parse ``argv``, validate and train; returns the exit status, printing ``prog: error: …`` on failure.

    ``nonfinite_advice`` ends the message of a non-finite loss (what to change, e.g. a lower learning rate).
    argparse itself exits with status 2 on an unknown or malformed argument.
    """
    args = parse(None if argv is None else list(argv))
    try:
        validate(args)
        train(args)
    except (ConfigError, DataError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except hub.HubError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_HUB
    except NonFiniteLossError as err:
        print(
            f"{prog}: error: {err}: training stopped, and no state from that step on was saved. "
            f"{last_good_checkpoint(args.output_dir)} {nonfinite_advice}",
            file=sys.stderr,
        )
        return EXIT_NONFINITE
    except checkpoints.CheckpointError as err:  # the message lists the intact checkpoints
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_WRITE
    except OutputWriteError as err:
        print(f"{prog}: error: {err}. {last_good_checkpoint(args.output_dir)}", file=sys.stderr)
        return EXIT_WRITE
    return EXIT_OK
