"""What a training objective is: one class that owns its arguments, checks, loss, card text and samplers.

An objective subclasses :class:`Objective` in a module of its own (``ddpm.py``, ``flow.py``) and is registered
by name in ``__init__.py``; the command line, the trainer, the model card, the saved pipeline and the
evaluation during training ask it rather than testing ``--objective``:

=======================  ==============================================================================
``add_arguments``        its own command-line arguments (one argument group in ``train.py --help``)
``implied_by``           arguments that, given without ``--objective``, choose it
``fill_defaults``        its defaults that depend on other arguments
``validate``             its checks (:class:`ConfigError`); another objective's arguments are refused for it
``from_args``            the objective, with its training noise scheduler (``scheduler``)
``noised``               one draw (t, ε, x_t) of its training distribution (the loss's, a classifier's)
``loss``                 the scalar loss of one batch
``describe`` / ``tag``   the model card's text and tag; ``unused_arguments``: what did not apply to a run
``sampling_scheduler``   the scheduler the saved pipeline samples with
``few_step_path``        the keywords that put DPM-Solver++ on its path (``--eval_sampler dpmsolver``)
``few_step``             a model made for one to four steps: its default sampling and evaluation step counts
``prepare_unet``         the UNet it trains, from the built or ``--init_from`` one (a flow map adds a time input)
``begin_step``           told the optimizer step about to be computed (a schedule over the run: the ECT gap)
=======================  ==============================================================================
"""

from __future__ import annotations

import argparse
from typing import ClassVar

import torch
import torch.nn.functional as F

from scratch_schedulers import FEW_STEP_CONFIG, Parametrization, ScratchDPMSolverScheduler
from scratch_schedulers.model_fn import ModelFn
from scratch_schedulers.noise_path import parametrization_of

MANY_STEPS = 50  # the sample grids' steps for a model sampled by an ODE solver
FEW_STEP_COUNTS = (2, 1, 4)  # a few-step model's: its grids at 2 steps, its evaluations at 2, 1 and 4


def per_example_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per example, in float32: shape (B,)."""
    error = F.mse_loss(prediction.float(), target.float(), reduction="none")
    return error.mean(dim=tuple(range(1, error.ndim)))


class Objective:
    """A training objective on one noise path; instances hold the training noise ``scheduler``.

    A subclass implements what raises ``NotImplementedError`` here; the other hooks are optional.
    """

    name: ClassVar[str]  # the --objective value
    title: ClassVar[str]  # its argument group's title in --help
    tag: ClassVar[str]  # the model card's tag
    implied_by: ClassVar[tuple[str, ...]] = ()  # given without --objective, these arguments choose this objective
    float_arguments: ClassVar[tuple[str, ...]] = ()  # its float arguments: each must be finite
    foreign_hints: ClassVar[dict[str, str]] = {}  # why another objective's argument does not apply here
    few_step_path: ClassVar[dict] = {}  # ScratchDPMSolverScheduler keywords that sample this objective's path
    model_description: ClassVar[str] = "a `UNet2DModel`"  # what the model card calls the trained network
    few_step: ClassVar[bool] = False  # made for 1–4 steps (its defaults: FEW_STEP_COUNTS, not MANY_STEPS)

    scheduler: object  # the training noise scheduler: add_noise, get_velocity, config.num_train_timesteps

    @classmethod
    def default_step_counts(cls) -> tuple[int, ...]:
        """The sampling step counts of its sample grids (the first) and evaluations (all), unless given."""
        return FEW_STEP_COUNTS if cls.few_step else (MANY_STEPS,)

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        """Add this objective's own arguments to ``group`` (arguments several objectives share live in ``cli.py``)."""

    @classmethod
    def fill_defaults(cls, args: argparse.Namespace) -> None:
        """Fill this objective's unset arguments whose defaults depend on others (it was chosen)."""

    @classmethod
    def validate(cls, args: argparse.Namespace) -> None:
        """This objective's checks of its own arguments; raises :class:`ConfigError`."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Objective:
        """The objective and its training noise scheduler from the (validated) command line."""
        raise NotImplementedError

    def prepare_unet(self, unet: torch.nn.Module) -> torch.nn.Module:
        """The UNet this objective trains, made from the built (or ``--init_from``) one; the same one here."""
        return unet

    def begin_step(self, step: int, total_steps: int) -> None:
        """Called before each batch with the optimizer step it belongs to (0-based) and the run's total."""

    def noised(self, x0: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One draw of the training distribution for the batch ``x0``: ``(t, ε, x_t)``, x_t = a_t·x0 + b_t·ε.

        ``t`` (B,) is the model timestep (the UNet's convention); every draw comes from ``generator``. The loss
        draws here, and so does any model trained on the same path and times (a noise-aware classifier).
        """
        raise NotImplementedError

    def loss(self, model_fn: ModelFn, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scalar loss of one batch ``x0`` (B, C, H, W); every draw comes from ``generator``."""
        raise NotImplementedError

    @classmethod
    def describe(cls, args: argparse.Namespace) -> str:
        """The model card's "trained … with <this>" (a noun phrase)."""
        raise NotImplementedError

    @classmethod
    def unused_arguments(cls, args: argparse.Namespace) -> set[str]:
        """Own arguments that did not apply to this run (left out of the card's hyperparameters)."""
        return set()

    def sampling_scheduler(self, latent: bool = False):
        """The scheduler the saved pipeline samples with, built from the training scheduler's config.

        ``latent``: the model denoises a VAE's scaled latents, which are not confined to [−1, 1].
        """
        raise NotImplementedError

    @property
    def parametrization(self) -> Parametrization:
        """What the trained model predicts, on which path (a pipeline to start from must match it)."""
        return parametrization_of(self.scheduler)

    def few_step_scheduler(self, sampling_scheduler) -> ScratchDPMSolverScheduler:
        """DPM-Solver++ with ``FEW_STEP_CONFIG`` on this objective's path, from the saved scheduler's config.

        Its time grid (``flow_uniform`` on the flow path) replaces a flow model's sampling ``shift``.
        """
        config = {k: v for k, v in sampling_scheduler.config.items() if k != "shift"}
        return ScratchDPMSolverScheduler.from_config(config, **FEW_STEP_CONFIG, **self.few_step_path)
