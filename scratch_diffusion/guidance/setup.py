"""What every guidance rule binds against, and the one formula that turns a score into a model output.

A rule (:mod:`.combination`, :mod:`.gradient`) acts on one evaluation of the model at one point of its
path, x = a·x0 + b·ε, in the model's own parametrisation (ε, x0, v or the flow velocity). Before any
evaluation the rules of a run are *bound* to a :class:`GuidanceSetup` — the model's parametrisation and
sample shape, the class labels of the batch, the optional guide UNet, classifier and VAE decoder — and
every check that can fail fails there, naming the value and what is allowed.

**The noise level of an interval** is σ = b/a = e^{−λ} (EDM's σ; Karras et al., 2022): the same number
for points of equal SNR on the VP path (σ = √((1 − ᾱ)/ᾱ)) and the flow path (σ = σ_flow/(1 − σ_flow)),
so one interval means the same thing whichever scheduler samples.

**Gradient guidance in one parametrisation.** Tweedie's formula x̂0 = (x + b²·∇log p(x))/a makes a
conditional score ∇log p(x | y) = ∇log p(x) + ∇log p(y | x) a shift of the denoiser:

    x̂0′ = x̂0 + (b²/a)·g,    ε̂′ = ε̂ − b·g,    with g = s·∇_x log p(y | x)

(x = a·x̂0 + b·ε̂ holds before and after). The ε form is Dhariwal & Nichol's (2021, Alg. 2) for DDIM;
an ancestral DDPM step's mean c₀·x̂0 + c_x·x moves by c₀·(b²/a)·g = (β_t/√α_t)·g, their Alg. 1's
Σ·g = β̃_t·g where β_t·SNR_{t−1} is small (the ratio is (1 + β_t·SNR_{t−1})/√(1 − β_t): ≈ 1.01 at most steps of
the linear schedule, ≈ 2 at t = 1, where x̂0 is nearly known and the Bayes-exact shift is the larger).
Every parametrisation is linear in (x̂0, ε̂) at fixed x
(``noise_path.target_for``), so :func:`shift_output` adds ``target_for(Δx̂0, Δε̂)`` to the output.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from scratch_schedulers import Parametrization
from scratch_schedulers.noise_path import target_for

# ``model(x, timestep, conditions) -> output``: one evaluation of a model at its own path point.
ModelFunction = Callable[[torch.Tensor, torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]


class EvaluationPoint(NamedTuple):
    """Where the model is evaluated: x = a·x0 + b·ε, with log-SNR λ = log(a/b) (host floats).

    Any object with these three attributes will do (the pipeline passes its plan's points).
    """

    a: float
    b: float
    lam: float


def noise_level(point: EvaluationPoint) -> float:
    """σ = b/a = e^{−λ} of a path point (+∞ at a = 0, 0 at b = 0)."""
    return math.exp(-point.lam) if math.isfinite(point.lam) else (math.inf if point.lam < 0 else 0.0)


def shift_output(
    output: torch.Tensor, score_step: torch.Tensor, point: EvaluationPoint, parametrization: Parametrization
) -> torch.Tensor:
    """The model output whose x̂0 is shifted by (b²/a)·g and whose ε̂ by −b·g, for g = ``score_step``.

    At a = 0 (pure noise: flow σ = 1, zero terminal SNR) nothing about y is left in x, so nothing shifts.
    """
    a, b = point.a, point.b
    if a == 0:
        return output
    g = score_step.to(output.dtype)
    return output + target_for(parametrization.prediction_type, (b * b / a) * g, -b * g, a, b)


class EvaluationCounter:
    """Rows each model evaluated in one run, by model name; per image = rows / batch (host integers, no sync)."""

    def __init__(self, batch_size: int):
        self.batch_size, self.rows = batch_size, Counter()

    def counted(self, name: str, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``fn`` (whose first argument is the batch) counting its rows as evaluations of ``name``."""

        def call(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            self.rows[name] += x.shape[0]
            return fn(x, *args, **kwargs)

        return call

    def per_image(self) -> dict[str, float]:
        """Evaluations per image of each model: a guided step that evaluates two halves counts two."""
        return {name: rows / self.batch_size for name, rows in self.rows.items()}


@dataclass
class GuidanceSetup:
    """What the guidance rules of one run bind against (built before any model evaluation).

    Attributes:
        parametrization: the model's path and prediction type (its output is in this parametrisation).
        sample_shape: (C, H, W) of the model's input.
        labels: the classes to guide towards, (B,) long, or None.
        model_conditions: what the main model takes per sample (``class_labels`` of a class-conditional UNet).
        null_class: a class-conditional model's null class ∅; None for an unconditional model.
        noise_schedule: the model's training schedule (a guide or classifier must have the same).
        log_snr_range: the λ the model was trained on (an interval must meet it).
        components: optional models the rules may use by default: ``guide_unet``, ``classifier``.
        decode: latents → images in [−1, 1] (a latent pipeline's VAE decoder), for loss guidance; None.
        decoded_shape: (C, H, W) of ``decode``'s images.
        counter: counts every model's evaluations.
    """

    parametrization: Parametrization
    sample_shape: tuple[int, ...]
    labels: torch.Tensor | None = None
    model_conditions: Mapping[str, torch.Tensor] = field(default_factory=dict)
    null_class: int | None = None
    noise_schedule: Mapping | None = None
    log_snr_range: tuple[float, float] = (-math.inf, math.inf)
    components: Mapping[str, object] = field(default_factory=dict)
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None
    decoded_shape: tuple[int, ...] | None = None
    counter: EvaluationCounter = field(default_factory=lambda: EvaluationCounter(1))
