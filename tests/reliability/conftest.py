"""Shared pieces of the reliability tests: the training tests' fixtures, a tiny saved pipeline, fault seams.

Faults are injected at documented seams, never through hooks in the package:

* a non-finite loss — :class:`PoisonedObjective` wraps the objective that ``trainer.make_objective``
  returns (monkeypatched in an in-process ``train.main`` run) and multiplies chosen losses by NaN;
* a full disk or read-only folder at save time — ``accelerate.Accelerator.save_state`` or
  ``export.save_pipeline`` is wrapped to fail (``OSError(ENOSPC)``) after writing part of a file;
* SIGKILL — a real ``train.py`` subprocess, killed when the output folder shows the chosen moment.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from ..pipelines.helpers import tiny_unet
from ..training.conftest import (  # noqa: F401  (fixtures, re-exported for these tests)
    FAKE_TOKEN,
    fresh_accelerate_state,
    hf_home,
    tiny_unet_json,
)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def train_argv(out: Path, unet_json: Path, *extra: str, steps: int = 4, every: int = 2) -> list[str]:
    """A few steps of the tiny UNet on the built-in digits, in process (about a second)."""
    return [
        "--output_dir", str(out), "--model_config_name_or_path", str(unet_json),
        "--train_batch_size", "4", "--max_train_steps", str(steps), "--checkpointing_steps", str(every),
        "--lr_warmup_steps", "1", "--eval_batch_size", "2", "--ddpm_num_inference_steps", "2",
        "--save_images_steps", "1000", "--learning_rate", "1e-3", *extra,
    ]  # fmt: skip


def run_main(argv: list[str]) -> int:
    """``train.main`` in this process (each run builds its own Accelerator: several runs per test)."""
    from scratch_diffusion.training.train import main

    return main(argv)


def error_lines(err: str, prog: str = "train.py") -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"{prog}: error: ")]


class PoisonedObjective:
    """The real objective, except that the losses of the given calls (1-based) are multiplied by NaN."""

    def __init__(self, inner, bad_calls: set[int]):
        self.inner, self.bad_calls, self.calls = inner, bad_calls, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def loss(self, *args, **kwargs):
        self.calls += 1
        loss = self.inner.loss(*args, **kwargs)
        return loss * float("nan") if self.calls in self.bad_calls else loss


def poison(monkeypatch, bad_calls: set[int]) -> None:
    """From now on, the objective's calls listed in ``bad_calls`` (1-based, per run) return a NaN loss."""
    from scratch_diffusion.training import trainer as train_module

    real = getattr(train_module.make_objective, "unpoisoned", train_module.make_objective)

    def make_objective(args):
        return PoisonedObjective(real(args), bad_calls)

    make_objective.unpoisoned = real
    monkeypatch.setattr(train_module, "make_objective", make_objective)


def no_space(path: str | os.PathLike) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.fixture(scope="session")
def saved_pipeline(tmp_path_factory) -> Path:
    """A saved ScratchDiffusionPipeline (tiny RGB UNet, DDIM); copy it before changing it."""
    from scratch_diffusion import ScratchDDIMScheduler, ScratchDiffusionPipeline

    folder = tmp_path_factory.mktemp("saved") / "pipe"
    ScratchDiffusionPipeline(unet=tiny_unet(), scheduler=ScratchDDIMScheduler()).save_pretrained(folder)
    return folder
