"""Guidance: how one denoiser evaluation combines several model outputs (the one place it is implemented).

:class:`ClassifierFreeGuidance` (Ho & Salimans, 2022) evaluates the conditional and the unconditional
model in one batched forward pass and extrapolates, ŷ = ŷ_∅ + w·(ŷ_c − ŷ_∅), with the null class
∅ = ``num_class_embeds − 1`` of a class-conditional UNet. A guidance object expands the model's inputs
(:meth:`~ClassifierFreeGuidance.expand_input`, :meth:`~ClassifierFreeGuidance.expand_conditions`),
combines the outputs (:meth:`~ClassifierFreeGuidance.combine`) and states what it costs
(``memory_factor``, ``evaluations``) and whether it needs class labels (``needs_labels``);
:class:`~.denoiser.Denoiser` takes one, so sampling, inversion and anything else built on the denoiser
guide alike. Another rule (autoguidance, a classifier) is another class with the same members.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass(frozen=True)
class ClassifierFreeGuidance:
    """ŷ = ŷ_∅ + w·(ŷ_c − ŷ_∅): the conditional half of the batch first, then the null class.

    Attributes:
        scale: the guidance weight w (w = 1 is no guidance: :func:`guidance_from_scale` gives None).
        null_class: the class index of ∅ (a class-conditional UNet's last one); None for an
            unconditional UNet, which :func:`~.inputs.check_conditioning` then refuses.
    """

    scale: float
    null_class: int | None

    needs_labels: ClassVar[bool] = True  # it guides towards given class labels
    memory_factor: ClassVar[int] = 2  # the model's batch is twice the sample batch
    evaluations: ClassVar[int] = 2  # model evaluations per sample and step (in one forward pass)

    @property
    def argument(self) -> str:
        """The call argument that asked for this guidance, as error messages name it."""
        return f"guidance_scale={self.scale!r}"

    def expand_input(self, x: torch.Tensor) -> torch.Tensor:
        """The model input of both halves: the sample twice."""
        return torch.cat([x, x])

    def expand_conditions(self, conditions: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-sample model inputs of both halves: the labels, then the null class; any other input twice."""
        expanded = {name: torch.cat([value, value]) for name, value in conditions.items()}
        labels = conditions.get("class_labels")
        if labels is not None:
            expanded["class_labels"] = torch.cat([labels, torch.full_like(labels, self.null_class)])
        return expanded

    def combine(self, output: torch.Tensor) -> torch.Tensor:
        """ŷ_∅ + w·(ŷ_c − ŷ_∅) from the output of the expanded batch."""
        conditional, unconditional = output.chunk(2)
        return unconditional + self.scale * (conditional - unconditional)


def guidance_from_scale(guidance_scale: float, num_classes: int | None) -> ClassifierFreeGuidance | None:
    """Classifier-free guidance of weight ``guidance_scale`` (checked to be a finite number), or None for w = 1."""
    return None if guidance_scale == 1 else ClassifierFreeGuidance(guidance_scale, num_classes)
