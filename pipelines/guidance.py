"""The pipeline's guidance: the rules of one call, checked against its components and bound before sampling.

``guidance_scale`` keeps its meaning (plain classifier-free guidance, :class:`ClassifierFreeGuidance`); the
``guidance`` argument takes any rule of :mod:`scratch_diffusion.guidance` or a list of them. Both together are
one combining rule (classifier-free or autoguidance) and any gradient rules; the rules are bound to a
:class:`~scratch_diffusion.guidance.GuidanceSetup` made from the pipeline — its parametrisation and training
schedule, the ``guide_unet`` and ``classifier`` components, the VAE's decoder for loss guidance — so every
check runs before the first model evaluation. No rule reaches into the sampling loop: the denoiser
(:mod:`.denoiser`) calls the bound rules at each of its points.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from scratch_diffusion.guidance.combination import ClassifierFreeGuidance
from scratch_diffusion.guidance.compose import Guidance, GuidanceRule, GuidedEvaluation, as_rules
from scratch_diffusion.guidance.setup import EvaluationCounter, GuidanceSetup

from .cross_path import ModelPath
from .inputs import sample_shape
from .latents import decode_differentiably, decoded_shape


class ScaleGuidance(ClassifierFreeGuidance):
    """Classifier-free guidance asked for by ``guidance_scale`` (named so in error messages)."""

    @property
    def argument(self) -> str:
        return f"guidance_scale={self.scale!r}"


def call_rules(guidance_scale: float, guidance: Guidance | None) -> tuple[GuidanceRule, ...]:
    """The rules of a call: classifier-free guidance for ``guidance_scale`` ≠ 1, then those of ``guidance``."""
    rules = as_rules(guidance)
    if guidance_scale == 1:
        return rules
    if rules and rules[0].combines:
        raise ValueError(
            f"guidance_scale={guidance_scale!r} asks for classifier-free guidance and guidance= holds "
            f"{rules[0].argument}: pass one combining rule (guidance_scale=1.0, or no combining rule in guidance=)."
        )
    return (ScaleGuidance(guidance_scale), *rules)


def label_classes(rules: Sequence[GuidanceRule], num_classes: int | None, components: dict) -> int | None:
    """How many classes ``class_labels`` may name: the UNet's, else a guiding classifier's; None: no labels.

    A classifier without a ``config`` (a bare callable) states no count: any index ≥ 0 is passed on to it.
    """
    if num_classes is not None:
        return num_classes
    for rule in rules:
        if hasattr(rule, "resolve_classifier"):  # classifier guidance (ours, or the shipped copy's)
            config = getattr(rule.resolve_classifier(components), "config", None)
            classes = None if config is None else config.get("num_classes")
            return torch.iinfo(torch.long).max if classes is None else int(classes)
    return None


def training_log_snr_range(pipe) -> tuple[float, float]:
    """The λ the pipeline's UNet was trained on (the flow path covers every λ)."""
    model_path = ModelPath.of_schedule(pipe.trained_parametrization, pipe.config.noise_schedule)
    table = model_path.log_snr_table
    return (-math.inf, math.inf) if table is None else (float(np.min(table)), float(np.max(table)))


def bind_call_guidance(
    pipe,
    rules: Sequence[GuidanceRule],
    labels: torch.Tensor | None,
    conditions: Mapping[str, torch.Tensor],
    batch_size: int,
) -> tuple[GuidedEvaluation | None, EvaluationCounter]:
    """The call's rules bound to the pipeline (every check, no model evaluation) and the run's evaluation counter."""
    counter = EvaluationCounter(batch_size)
    if not rules:
        return None, counter
    vae = pipe.vae
    setup = GuidanceSetup(
        parametrization=pipe.trained_parametrization,
        sample_shape=sample_shape(pipe.unet, 1)[1:],
        labels=labels,
        model_conditions=dict(conditions),
        null_class=pipe.num_classes,
        noise_schedule=pipe.config.noise_schedule,
        log_snr_range=training_log_snr_range(pipe),
        components={name: getattr(pipe, name, None) for name in ("guide_unet", "classifier")},
        decode=None if vae is None else functools.partial(decode_differentiably, vae),
        decoded_shape=None if vae is None else decoded_shape(vae, sample_shape(pipe.unet, 1)[1:]),
        counter=counter,
    )
    return GuidedEvaluation(rules, setup), counter
