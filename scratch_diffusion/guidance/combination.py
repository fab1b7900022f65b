"""Guidance that combines two model outputs: classifier-free guidance and autoguidance, with an optional interval.

Both extrapolate from a weaker prediction towards the model's own, in its parametrisation (the combination is
linear, so it is the same rule on x̂0, ε̂, v or the velocity):

* **classifier-free guidance** (Ho & Salimans, 2022): ŷ = ŷ_∅ + w·(ŷ_c − ŷ_∅), the unconditional half with the
  null class ∅ of a class-conditional model, both halves in one batched forward pass;
* **autoguidance** (Karras et al., 2024): D_w = D_guide + w·(D_main − D_guide), the guide a *bad version of the
  model itself* — a smaller and/or shorter-trained UNet of the same path — given the same input and labels; it
  works for unconditional models too. One main and one guide evaluation per step.

**Guidance interval** (Kynkäänniemi et al., 2024): guide only at noise levels σ = b/a in (σ_lo, σ_hi]; outside,
the model's own prediction is used and the second evaluation (the unconditional half, the guide) is not made at
all, so the run costs fewer evaluations (:class:`~.setup.EvaluationCounter` counts the ones made).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from .models import guide_function
from .setup import EvaluationPoint, GuidanceSetup, ModelFunction, noise_level


@dataclass(frozen=True)
class GuidanceInterval:
    """Noise levels σ = b/a in (low, high] (EDM's σ = e^{−λ}: the same on every path)."""

    low: float = 0.0
    high: float = math.inf

    def __post_init__(self) -> None:
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (self.low, self.high))
        if not numbers or not (
            0 <= self.low < self.high
        ):
            raise ValueError(
                f"interval=({self.low!r}, {self.high!r}) is not allowed; pass noise levels σ = b/a with "
                "0 ≤ low < high (high may be math.inf)."
            )

    @classmethod
    def of(cls, interval: GuidanceInterval | tuple[float, float] | None) -> GuidanceInterval | None:
        """``interval`` as given, from a (low, high) pair, or None."""
        if interval is None or isinstance(interval, GuidanceInterval):
            return interval
        low, high = interval
        return cls(float(low), float(high))

    def contains(self, point: EvaluationPoint) -> bool:
        """Whether the point's σ = b/a lies in (low, high] (a host comparison: nothing is read from a device)."""
        return self.low < noise_level(point) <= self.high

    def check(self, setup: GuidanceSetup) -> None:
        """The interval must meet the noise levels the model was trained on (else it would never guide)."""
        lam_low, lam_high = setup.log_snr_range
        sigma_min = math.exp(-lam_high) if math.isfinite(lam_high) else 0.0
        sigma_max = math.exp(-lam_low) if math.isfinite(lam_low) else math.inf
        if self.high < sigma_min or self.low >= sigma_max:
            raise ValueError(
                f"interval=({self.low:g}, {self.high:g}) lies outside the model's schedule, whose noise levels "
                f"σ = b/a span [{sigma_min:.4g}, {sigma_max:.4g}]; pass an interval that meets that range."
            )


def _expand_timestep(timestep: torch.Tensor, copies: int) -> torch.Tensor:
    """A per-example timestep repeated for each copy of the batch (a scalar one stays as it is)."""
    return timestep.repeat(copies) if timestep.ndim == 1 else timestep


@dataclass(frozen=True)
class ClassifierFreeGuidance:
    """ŷ = ŷ_∅ + w·(ŷ_c − ŷ_∅) (Ho & Salimans, 2022), optionally only for σ in ``interval``.

    Attributes:
        scale: the weight w (1: the conditional model alone).
        interval: (σ_lo, σ_hi) where it guides (Kynkäänniemi et al., 2024), or None for every step.
    """

    scale: float
    interval: GuidanceInterval | tuple[float, float] | None = None

    combines: ClassVar[bool] = True  # it combines model outputs (at most one such rule per run)
    needs_labels: ClassVar[bool] = True  # it guides towards given class labels
    memory_factor: ClassVar[int] = 2  # the model's batch is twice the sample batch

    def __post_init__(self) -> None:
        check_scale(self.scale, "ClassifierFreeGuidance")
        object.__setattr__(self, "interval", GuidanceInterval.of(self.interval))

    @property
    def argument(self) -> str:
        """How error messages name it."""
        return f"ClassifierFreeGuidance(scale={self.scale!r})"

    def bind(self, setup: GuidanceSetup) -> BoundClassifierFree:
        if setup.null_class is None or "class_labels" not in setup.model_conditions:
            raise ValueError(
                f"{self.argument} needs a class-conditional model (with a null class) and class labels; "
                "this model is unconditional — use AutoGuidance or ClassifierGuidance."
            )
        if self.interval is not None:
            self.interval.check(setup)
        return BoundClassifierFree(self, setup.model_conditions, setup.null_class)


class BoundClassifierFree:
    """Classifier-free guidance for one run: both halves' conditions expanded once."""

    def __init__(self, rule: ClassifierFreeGuidance, conditions: Mapping[str, torch.Tensor], null_class: int):
        self.rule, self.conditions = rule, dict(conditions)
        self.expanded = {name: torch.cat([value, value]) for name, value in conditions.items()}
        labels = conditions["class_labels"]
        self.expanded["class_labels"] = torch.cat([labels, torch.full_like(labels, null_class)])

    def __call__(
        self, model: ModelFunction, x: torch.Tensor, timestep: torch.Tensor, point: EvaluationPoint
    ) -> torch.Tensor:
        interval = self.rule.interval
        if interval is not None and not interval.contains(point):
            return model(x, timestep, self.conditions)
        output = model(torch.cat([x, x]), _expand_timestep(timestep, 2), self.expanded)
        conditional, unconditional = output.chunk(2)
        return unconditional + self.rule.scale * (conditional - unconditional)


@dataclass(frozen=True)
class AutoGuidance:
    """D_w = D_guide + w·(D_main − D_guide) (Karras et al., 2024), optionally only for σ in ``interval``.

    Attributes:
        scale: the weight w (1: the main model alone).
        guide: the bad version of the model: a ``UNet2DModel`` of the same path, sample size and latent space, a
            pipeline of ours (its path and schedule are checked), or a callable ``(x, t, **conditions)``; None:
            the pipeline's ``guide_unet`` component.
        interval: (σ_lo, σ_hi) where it guides, or None for every step.
    """

    scale: float
    guide: object | None = None
    interval: GuidanceInterval | tuple[float, float] | None = None

    combines: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = False  # unconditional models are guided too
    memory_factor: ClassVar[int] = 1  # two forward passes of the sample batch, one per network

    def __post_init__(self) -> None:
        check_scale(self.scale, "AutoGuidance")
        object.__setattr__(self, "interval", GuidanceInterval.of(self.interval))

    @property
    def argument(self) -> str:
        return f"AutoGuidance(scale={self.scale!r})"

    def bind(self, setup: GuidanceSetup) -> BoundAutoGuidance:
        guide = self.guide if self.guide is not None else setup.components.get("guide_unet")
        if guide is None:
            raise ValueError(
                f"{self.argument} has no guide: pass AutoGuidance(scale, guide=...) or load a pipeline with a "
                "guide_unet component."
            )
        if self.interval is not None:
            self.interval.check(setup)
        function, takes_labels = guide_function(guide, setup)
        # the guide is a plain UNet: it takes the class labels at most, never the main model's other inputs
        # (a control image goes to the main model's control network only)
        labels = setup.model_conditions.get("class_labels")
        conditions = {"class_labels": labels} if takes_labels and labels is not None else {}
        return BoundAutoGuidance(self, setup.counter.counted("guide_unet", function), conditions, setup)


class BoundAutoGuidance:
    """Autoguidance for one run: the guide as a counted model function."""

    def __init__(self, rule: AutoGuidance, guide: ModelFunction, guide_conditions: Mapping, setup: GuidanceSetup):
        self.rule, self.guide, self.guide_conditions = rule, guide, guide_conditions
        self.conditions = setup.model_conditions

    def __call__(
        self, model: ModelFunction, x: torch.Tensor, timestep: torch.Tensor, point: EvaluationPoint
    ) -> torch.Tensor:
        main = model(x, timestep, self.conditions)
        interval = self.rule.interval
        if interval is not None and not interval.contains(point):
            return main
        guide = self.guide(x, timestep, self.guide_conditions).to(main.dtype)
        return guide + self.rule.scale * (main - guide)


def check_scale(scale: object, name: str) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{name}(scale={scale!r}) is not allowed; pass a finite number.")
