"""The ``--eval_*`` / ``--save_best`` arguments of ``train.py`` and their checks (``evaluation.py`` runs them)."""

from __future__ import annotations

import argparse
import os

from scratch_diffusion.pipelines.loading import looks_like_local_path

from .errors import ConfigError
from .errors import check as _check
from .hub import repo_id_problem

EVAL_SAMPLERS = ("saved", "dpmsolver")  # --eval_sampler; evaluation.evaluation_scheduler builds them
MAX_EVAL_SAMPLES = 100_000  # samples per evaluation; beyond it a typo

__all__ = ["EVAL_SAMPLERS", "MAX_EVAL_SAMPLES", "ConfigError", "add_evaluation_arguments", "feature_space_allowed",
           "feature_space_problem", "validate_evaluation_args"]  # fmt: skip


def add_evaluation_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--eval_*`` / ``--save_best`` group (``evaluation.py`` does the work)."""
    ev = p.add_argument_group(
        "evaluation during training",
        "FD and KID (with the real-vs-real baseline) of samples from the EMA weights (raw weights with "
        "--no-use_ema) against a fixed seeded subset of the training images; class-conditional models are "
        "sampled unguided with labels cycling through the classes 0, 1, …, K−1. The main process evaluates while "
        "the others wait at a barrier (keep one evaluation well under the process group's timeout: torch's default "
        "is 10 minutes with NCCL, 30 with gloo). "
        "Evaluation uses private random generators, so training (and exact resume) is unchanged by it; its time "
        "is reported apart from the training throughput.",
    )
    ev.add_argument(
        "--eval_steps", type=int, help="evaluate every N optimizer steps and at the last step (unset or 0: off)"
    )
    ev.add_argument(
        "--eval_num_samples",
        type=int,
        default=256,
        help="samples per evaluation (at least 2); twice as many training images, drawn once, are the real side: 30 %% "
        "the FD/KID reference, the rest the pool of the real baseline",
    )
    ev.add_argument(
        "--eval_sampler",
        choices=EVAL_SAMPLERS,
        default="saved",
        help="'saved': the saved pipeline's scheduler (DDIM trailing, or flow Euler); 'dpmsolver': "
        "ScratchDPMSolverScheduler(**FEW_STEP_CONFIG), the few-step solver, on the model's path",
    )
    ev.add_argument(
        "--eval_num_inference_steps",
        type=int,
        nargs="+",
        help="sampling steps of each evaluation, one or more counts (the first decides --save_best); unset: "
        "--ddpm_num_inference_steps, or 2 1 4 for a few-step objective (meanflow, consistency)",
    )
    ev.add_argument(
        "--eval_features",
        default="digits",
        help="feature space of FD/KID: 'digits' (the offline digits CNN), 'dinov2', a transformers model folder or "
        "Hub id, or 'module:callable' (see scratch_diffusion.metrics.feature_spaces)",
    )
    ev.add_argument(
        "--save_best",
        action="store_true",
        help="keep the pipeline of the lowest-FD evaluation so far in OUTPUT_DIR/best/ (with evaluation.json: its "
        "step and metrics); needs --eval_steps",
    )


def validate_evaluation_args(args: argparse.Namespace) -> None:
    """The ``--eval_*`` / ``--save_best`` checks (no feature network is loaded here; ``train`` loads it first)."""
    _check(
        args.eval_steps is None or args.eval_steps >= 0,
        f"--eval_steps must be ≥ 1 (or 0 / unset: no evaluation), got {args.eval_steps}.",
    )
    _check(
        args.eval_num_samples >= 2,
        f"--eval_num_samples must be ≥ 2 (FD and KID need two samples or more), got {args.eval_num_samples}.",
    )
    _check(
        args.eval_num_samples <= MAX_EVAL_SAMPLES,
        f"--eval_num_samples {args.eval_num_samples} is not allowed; pass at most {MAX_EVAL_SAMPLES}.",
    )
    for steps in args.eval_num_inference_steps or ():
        _check(
            1 <= steps <= args.ddpm_num_steps,
            f"--eval_num_inference_steps must be in [1, --ddpm_num_steps ({args.ddpm_num_steps})], got {steps}.",
        )
    _check(
        not args.save_best or bool(args.eval_steps),
        "--save_best needs --eval_steps N (N ≥ 1): it keeps the pipeline of the best evaluation.",
    )
    problem = feature_space_problem(args.eval_features)
    _check(problem is None, f"--eval_features: {problem}")


def feature_space_allowed() -> str:
    """The ``--eval_features`` names, for error messages."""
    from scratch_diffusion.metrics.feature_spaces import ALIASES, DIGITS

    names = ", ".join(repr(name) for name in (DIGITS, *ALIASES))
    return f"allowed: {names}, a transformers model folder, a Hub id 'owner/name', or 'package.module:callable'"


def feature_space_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a feature space, seen without loading anything; None if it may load.

    Hub ids must have an owner (``facebook/dinov2-small``), so a bare misspelt name (``inception``,
    ``dino``) is refused here, before any data is loaded; whether a folder or Hub id really holds an
    image backbone is known when ``train`` loads it (still before the first step).
    """
    from scratch_diffusion.metrics.feature_spaces import ALIASES, DIGITS, is_plugin_name

    name = name.strip()
    if name in (DIGITS, *ALIASES) or is_plugin_name(name) or os.path.isdir(name):
        return None
    if looks_like_local_path(name):
        return f"{name!r}: no such folder; {feature_space_allowed()}."
    if name.count("/") != 1 or repo_id_problem(name) is not None:
        return f"{name!r} is not a known feature space; {feature_space_allowed()}."
    return None
