"""Guidance: steer sampling towards a class, away from a worse model, or down any differentiable loss.

Each rule is a small object next to its equation, acting on one model evaluation in the model's own
parametrisation, so it works with every scheduler (ours and diffusers'), on the VP and flow paths and through
the change of variables between them:

==========================  ===================================================  ==============================
rule                        equation                                             extra evaluations per step
==========================  ===================================================  ==============================
:class:`ClassifierFreeGuidance`  ŷ = ŷ_∅ + w·(ŷ_c − ŷ_∅), optionally for σ in an interval   the unconditional half
:class:`AutoGuidance`       D_w = D_guide + w·(D_main − D_guide)                one guide evaluation
:class:`ClassifierGuidance` x̂0′ = x̂0 + (b²/a)·s·∇log p_φ(y | x_t)             classifier forward + backward
:class:`LossGuidance`       x̂0′ = x̂0 − (b²/a)·s·∇L(x̂0(x_t))                   a backward pass (DPS)
==========================  ===================================================  ==============================

``pipe(..., guidance=[...])`` applies them in a pipeline (``guidance_scale`` stays plain classifier-free
guidance); :func:`guided_model` applies the same objects to a bare model callable ``(sample, timestep)``.
"""

from .combination import AutoGuidance, ClassifierFreeGuidance, GuidanceInterval
from .compose import GuidedEvaluation, GuidedModel, as_rules, bind_guidance, guided_model
from .gradient import ClassifierGuidance, LossGuidance
from .noisy_classifier import NoisyClassifier
from .setup import EvaluationCounter, EvaluationPoint, GuidanceSetup, noise_level, shift_output

__all__ = [
    "AutoGuidance",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "EvaluationCounter",
    "EvaluationPoint",
    "GuidanceInterval",
    "GuidanceSetup",
    "GuidedEvaluation",
    "GuidedModel",
    "LossGuidance",
    "NoisyClassifier",
    "as_rules",
    "bind_guidance",
    "guided_model",
    "noise_level",
    "shift_output",
]
