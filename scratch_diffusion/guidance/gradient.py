"""Gradient guidance: classifier guidance and loss guidance, each a shift of the model's x̂0 by a score.

Both compute g = s·∇_x log p(y | x) at the model's point x = a·x0 + b·ε and apply it with the one formula
of :func:`~.setup.shift_output`: x̂0′ = x̂0 + (b²/a)·g, ε̂′ = ε̂ − b·g. Gradients are taken only here, under
``torch.enable_grad`` and with respect to the sample alone (``torch.autograd.grad``: no parameter gets a
``.grad``); every other evaluation stays under the caller's ``no_grad``.

At a = 0 (the flow path's σ = 1) x holds nothing about y and no gradient is taken: that first step is unguided.
The exact conditional denoiser there is E[x0 | y], the limit of the shift as a → 0, which no gradient at a = 0
supplies, so a flow grid that starts at σ = 1 carries an O(1/N) bias in N steps (measured 0.76/N for flow Euler on
the example mixture, ``tests/guidance/test_exact_guidance.py``); VP grids (a > 0 everywhere) have none.

* **Classifier guidance** (Dhariwal & Nichol, 2021): log p(y | x) from a noise-aware classifier p_φ(y | x_t)
  (:class:`~.noisy_classifier.NoisyClassifier`, or any ``fn(x, t) -> logits``). With the exact classifier and
  s = 1 the shifted denoiser is the exact conditional denoiser E[x0 | x, y] (Bayes' rule on the scores).
* **Loss guidance** (universal guidance, Bansal et al., 2023; DPS, Chung et al., 2023): log p(y | x) := −L(x̂0(x))
  for any differentiable per-example loss L — of x̂0, or of the decoded image x̂ = D(x̂0) on a latent pipeline.
  Scale convention: s multiplies the gradient of L itself, so g = −s·∇_x L and x̂0 moves by −s·(b²/a)·∇_x L; with
  ``through_model=True`` (DPS) ∇_x L is back-propagated through the model's x̂0(x); with ``through_model=False``
  the model's Jacobian is replaced by Tweedie's leading term I/a, so ∇_x L ≈ ∇_{x̂0} L / a (no backward pass
  through the UNet: cheaper, cruder).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from scratch_schedulers.noise_path import split_prediction

from .combination import check_scale
from .models import classifier_function
from .setup import EvaluationPoint, GuidanceSetup, shift_output

# ``evaluate(x, t) -> output``: the (possibly already guided) model evaluation a gradient rule wraps.
Evaluation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ClassifierGuidance:
    """x̂0′ = x̂0 + (b²/a)·s·∇_x log p_φ(y | x) (Dhariwal & Nichol, 2021).

    Attributes:
        scale: s (0: no guidance, bit for bit).
        classifier: a :class:`~.noisy_classifier.NoisyClassifier` (its path, schedule, space and classes are
            checked), or any ``fn(x, t) -> logits``; None: the pipeline's ``classifier`` component.
    """

    scale: float
    classifier: object | None = None

    combines: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = True
    memory_factor: ClassVar[int] = 1

    def __post_init__(self) -> None:
        check_scale(self.scale, "ClassifierGuidance")

    @property
    def argument(self) -> str:
        return f"ClassifierGuidance(scale={self.scale!r})"

    def resolve_classifier(self, components: Mapping[str, object]) -> object:
        """Its own classifier, else the ``classifier`` of ``components``; ``ValueError`` if there is none."""
        classifier = self.classifier if self.classifier is not None else components.get("classifier")
        if classifier is None:
            raise ValueError(
                f"{self.argument} has no classifier: pass ClassifierGuidance(scale, classifier=...) or load a "
                "pipeline with a classifier component (training/train_classifier.py trains one)."
            )
        return classifier

    def bind(self, setup: GuidanceSetup) -> BoundClassifierGuidance:
        classifier = self.resolve_classifier(setup.components)
        if setup.labels is None:
            raise ValueError(f"{self.argument} needs class labels to guide towards; pass class_labels.")
        function = setup.counter.counted("classifier", classifier_function(classifier, setup))
        return BoundClassifierGuidance(self.scale, function, setup)


class BoundClassifierGuidance:
    """Classifier guidance for one run."""

    def __init__(self, scale: float, classifier: Callable, setup: GuidanceSetup):
        self.scale, self.classifier, self.parametrization = scale, classifier, setup.parametrization
        self.labels = setup.labels[:, None]

    def log_likelihood_gradient(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """∇_x log p_φ(y | x) per example (the sum over the batch separates: each term sees its own x)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            logits = self.classifier(x, timestep)  # half precision upcast to float32; float64 kept
            log_probs = F.log_softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
            (gradient,) = torch.autograd.grad(log_probs.gather(1, self.labels.to(x.device)).sum(), x)
        return gradient

    def __call__(
        self, evaluate: Evaluation, x: torch.Tensor, timestep: torch.Tensor, point: EvaluationPoint
    ) -> torch.Tensor:
        output = evaluate(x, timestep)
        if self.scale == 0 or point.a == 0:
            return output
        return shift_output(output, self.scale * self.log_likelihood_gradient(x, timestep), point, self.parametrization)


@dataclass(frozen=True)
class LossGuidance:
    """x̂0′ = x̂0 − s·(b²/a)·∇_x L(x̂0(x)) for a differentiable per-example loss L (module docstring).

    Attributes:
        loss: ``loss(images) -> (B,)`` tensor; images are x̂0 in the model's space, or on a latent pipeline the
            decoded x̂0 in [−1, 1] (``space="decoded"``).
        scale: s, multiplying ∇L (0: no guidance).
        through_model: back-propagate through the model's x̂0(x) (DPS) rather than use ∂x̂0/∂x ≈ I/a.
        space: ``"decoded"`` (images; the default, the model's own samples on a pixel pipeline) or ``"model"``
            (the latents themselves on a latent pipeline).
    """

    loss: Callable[[torch.Tensor], torch.Tensor]
    scale: float = 1.0
    through_model: bool = True
    space: str = "decoded"

    combines: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    memory_factor: ClassVar[int] = 1

    SPACES: ClassVar[tuple[str, ...]] = ("decoded", "model")

    def __post_init__(self) -> None:
        check_scale(self.scale, "LossGuidance")
        if not callable(self.loss):
            raise TypeError(f"LossGuidance(loss={self.loss!r}) is not allowed; pass a callable images -> (B,) losses.")
        if self.space not in self.SPACES:
            raise ValueError(f"LossGuidance(space={self.space!r}) is not allowed; choose one of {list(self.SPACES)}.")

    @property
    def argument(self) -> str:
        return f"LossGuidance(scale={self.scale!r})"

    def bind(self, setup: GuidanceSetup) -> BoundLossGuidance:
        decode = setup.decode if self.space == "decoded" else None
        shape = setup.decoded_shape if decode is not None else setup.sample_shape
        batch = setup.counter.batch_size
        probe = torch.zeros(batch, *shape)  # a shape check on zeros of the run's batch: no model evaluation
        with torch.enable_grad():
            value = self.loss(probe)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != (batch,):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"{self.argument}: the loss must return one scalar per example, shape (B,); for a batch of {batch} "
                f"images of shape {tuple(shape)} it returned {got}."
            )
        return BoundLossGuidance(self, decode, setup)


class BoundLossGuidance:
    """Loss guidance for one run."""

    def __init__(self, rule: LossGuidance, decode: Callable | None, setup: GuidanceSetup):
        self.rule, self.decode, self.parametrization = rule, decode, setup.parametrization
        self.counter = setup.counter  # a backward pass through the model is counted as one more evaluation

    def loss_of_x0(self, x0: torch.Tensor) -> torch.Tensor:
        images = x0 if self.decode is None else self.decode(x0)
        return self.rule.loss(images).sum()

    def __call__(
        self, evaluate: Evaluation, x: torch.Tensor, timestep: torch.Tensor, point: EvaluationPoint
    ) -> torch.Tensor:
        rule, a, b = self.rule, point.a, point.b
        if rule.scale == 0 or a == 0:
            return evaluate(x, timestep)
        prediction_type = self.parametrization.prediction_type
        with torch.enable_grad():
            if rule.through_model:
                x_grad = x.detach().requires_grad_(True)
                output = evaluate(x_grad, timestep)
                x0 = split_prediction(output, x_grad, a, b, prediction_type)[0]
                (gradient,) = torch.autograd.grad(self.loss_of_x0(x0), x_grad)
                self.counter.rows["unet_backward"] += x.shape[0]
                output = output.detach()
            else:
                output = evaluate(x, timestep)
                x0 = split_prediction(output, x, a, b, prediction_type)[0].detach().requires_grad_(True)
                (gradient,) = torch.autograd.grad(self.loss_of_x0(x0), x0)
                gradient = gradient / a
        return shift_output(output, -rule.scale * gradient, point, self.parametrization)
