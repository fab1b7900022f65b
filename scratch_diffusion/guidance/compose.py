"""Guidance rules bound together: one guided model evaluation, for the pipeline and for a bare model callable.

A run's rules are at most one *combining* rule (classifier-free guidance or autoguidance), first, and any number
of *gradient* rules (classifier and loss guidance) after it, each wrapping the evaluation before it:

    ŷ = G_k(… G_1(C(model)))    e.g. [ClassifierFreeGuidance(2.0), ClassifierGuidance(0.5)]

:func:`bind_guidance` checks and binds them to a :class:`~.setup.GuidanceSetup` before any evaluation; the
:class:`GuidedEvaluation` it returns is what the pipeline's denoiser calls at each point.

:func:`guided_model` is the same for a bare model callable ``model(sample, timestep) -> model_output`` (the shape
``ExactDenoiser`` and the likelihood API use) with the scheduler that describes its path: it returns the guided
model, so guidance can be checked against exact answers without a trained network.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from scratch_schedulers.noise_path import parametrization_of, signal_noise_at
from scratch_schedulers.path_change import point_log_snr, vp_log_snr_table

from .combination import AutoGuidance, ClassifierFreeGuidance
from .gradient import ClassifierGuidance, LossGuidance
from .setup import EvaluationCounter, EvaluationPoint, GuidanceSetup, ModelFunction

GuidanceRule = ClassifierFreeGuidance | AutoGuidance | ClassifierGuidance | LossGuidance
RULES = (ClassifierFreeGuidance, AutoGuidance, ClassifierGuidance, LossGuidance)
Guidance = GuidanceRule | Sequence[GuidanceRule]


# What makes an object a guidance rule (duck-typed: a rule of your own, or ours from another copy of the package,
# such as the code a saved pipeline ships, works alike).
RULE_MEMBERS = ("bind", "combines", "needs_labels", "memory_factor", "argument")


def is_rule(value: object) -> bool:
    """Whether ``value`` has the members of a guidance rule (:data:`RULE_MEMBERS`)."""
    return all(hasattr(value, member) for member in RULE_MEMBERS)


def as_rules(guidance: Guidance | None) -> tuple[GuidanceRule, ...]:
    """``guidance`` as a tuple of rules, checked: at most one combining rule, and it comes first."""
    if guidance is None:
        return ()
    rules = (guidance,) if is_rule(guidance) else tuple(guidance) if isinstance(guidance, Sequence) else None
    if rules is None or isinstance(guidance, str) or not all(is_rule(rule) for rule in rules):
        raise TypeError(
            f"guidance={guidance!r} is not allowed; pass one rule or a list of rules such as "
            f"{[cls.__name__ for cls in RULES]} (an object with {list(RULE_MEMBERS)})."
        )
    combining = [i for i, rule in enumerate(rules) if rule.combines]
    if len(combining) > 1 or combining[:1] not in ([], [0]):
        raise ValueError(
            f"guidance={list(rules)!r} is not allowed; pass at most one of ClassifierFreeGuidance/AutoGuidance, "
            "first, then any ClassifierGuidance/LossGuidance."
        )
    return rules


class GuidedEvaluation:
    """The bound rules of one run: ``guided(model, x, t, point) -> output`` (module docstring)."""

    def __init__(self, rules: Sequence[GuidanceRule], setup: GuidanceSetup):
        self.rules = tuple(rules)
        bound = [rule.bind(setup) for rule in self.rules]  # every check, before any evaluation
        self.combination = bound[0] if self.rules and self.rules[0].combines else None
        self.gradients = bound[1:] if self.combination is not None else bound
        self.conditions = setup.model_conditions

    @property
    def memory_factor(self) -> int:
        """The model's batch per sample (2 under classifier-free guidance)."""
        return max((rule.memory_factor for rule in self.rules), default=1)

    def __call__(
        self, model: ModelFunction, x: torch.Tensor, timestep: torch.Tensor, point: EvaluationPoint
    ) -> torch.Tensor:
        if self.combination is not None:
            evaluate = functools.partial(self.combination, model, point=point)
        else:
            evaluate = functools.partial(_plain, model, conditions=self.conditions)
        for rule in self.gradients:
            evaluate = functools.partial(rule, evaluate, point=point)
        return evaluate(x, timestep)


def _plain(model: ModelFunction, x: torch.Tensor, timestep: torch.Tensor, conditions: Mapping) -> torch.Tensor:
    return model(x, timestep, conditions)


def bind_guidance(guidance: Guidance | None, setup: GuidanceSetup) -> GuidedEvaluation | None:
    """The rules of ``guidance`` bound to ``setup`` (None for no rule); raises before any model evaluation."""
    rules = as_rules(guidance)
    return GuidedEvaluation(rules, setup) if rules else None


def schedule_log_snr_range(scheduler: object) -> tuple[float, float]:
    """(λ_min, λ_max) a model of ``scheduler``'s path was trained on (the flow path covers every λ)."""
    if parametrization_of(scheduler).path == "flow":
        return (-math.inf, math.inf)
    table = vp_log_snr_table(scheduler.alphas_cumprod)
    return (float(np.min(table)), float(np.max(table)))


class GuidedModel:
    """A bare model callable with guidance: ``guided(sample, timestep) -> model_output`` (see :func:`guided_model`)."""

    def __init__(self, model: Callable, scheduler: object, guidance: Guidance, labels, conditional: bool, components):
        self.model, self.scheduler, self.rules = model, scheduler, as_rules(guidance)
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        self.conditional, self.components = conditional, dict(components or {})
        self.guided: GuidedEvaluation | None = None
        self.counter: EvaluationCounter | None = None

    def bind(self, sample: torch.Tensor) -> GuidedEvaluation:
        """Bind the rules for batches like ``sample`` (done at the first call, before the model is evaluated)."""
        labels = self.labels
        if labels is not None and labels.ndim == 0:
            labels = labels.expand(len(sample))
        conditions = {"class_labels": labels} if self.conditional and labels is not None else {}
        self.counter = EvaluationCounter(len(sample))
        setup = GuidanceSetup(
            parametrization=parametrization_of(self.scheduler),
            sample_shape=tuple(sample.shape[1:]),
            labels=labels,
            model_conditions=conditions,
            null_class=self.components.get("null_class"),
            log_snr_range=schedule_log_snr_range(self.scheduler),
            components=self.components,
            counter=self.counter,
        )
        return GuidedEvaluation(self.rules, setup)

    def __call__(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        if self.guided is None:
            self.guided = self.bind(sample)
        a, b = (float(v) for v in signal_noise_at(self.scheduler, torch.as_tensor(timestep).detach().cpu()))
        point = EvaluationPoint(a, b, point_log_snr(a, b))
        model = self.counter.counted("model", lambda x, t, conditions: self.model(x, t, **conditions))
        return self.guided(model, sample, torch.as_tensor(timestep), point)

    @property
    def evaluations(self) -> dict[str, float]:
        """Evaluations per sample of each model so far (``model``, ``guide_unet``, ``classifier``, …)."""
        return {} if self.counter is None else self.counter.per_image()


def guided_model(
    model: Callable,
    scheduler: object,
    guidance: Guidance,
    class_labels: int | Sequence[int] | torch.Tensor | None = None,
    *,
    conditional: bool = False,
    null_class: int | None = None,
    guide_unet: object | None = None,
    classifier: object | None = None,
) -> GuidedModel:
    """``model(sample, timestep) -> output`` with ``guidance`` applied, on the path ``scheduler`` describes.

    Args:
        model: a model callable in ``scheduler``'s parametrisation (e.g. ``ExactDenoiser(mixture, scheduler)``);
            called as ``model(x, t, class_labels=...)`` when ``conditional``.
        scheduler: describes the path and parametrisation (``noise_path.signal_noise_at`` gives each point).
        guidance: one rule or a list (:func:`as_rules`).
        class_labels: the classes to guide towards (one for all, or one per sample).
        conditional: the model takes ``class_labels`` (classifier-free guidance needs it, with ``null_class``).
        guide_unet, classifier: the defaults of rules given without their own.
    """
    components = {"guide_unet": guide_unet, "classifier": classifier, "null_class": null_class}
    return GuidedModel(model, scheduler, guidance, class_labels, conditional, components)
