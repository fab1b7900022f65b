"""The exact noise-aware classifier of a labelled Gaussian mixture: classifier guidance checked without training.

Give each component k of a :class:`~.mixture.GaussianMixture` a class label c(k). On the path x = a·x0 + b·ε the
classifier a network p_φ(y | x_t) should learn is known in closed form — the posterior over components of the
noised mixture, summed by label:

    log p(y | x) = log Σ_{k: c(k) = y} r_k(x),   r_k(x) ∝ w_k N(x; a μ_k, (a² s_k² + b²) I)

and the class-conditional data distribution is the mixture of the components labelled y, reweighted
(:func:`class_mixture`). With the exact denoiser and this classifier at guidance scale 1, a fine-step
probability-flow sampler draws from :func:`class_mixture` exactly (∇log p(x | y) = ∇log p(x) + ∇log p(y | x)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .denoiser import path_coefficients
from .mixture import GaussianMixture, component_log_densities


class ExactClassifier:
    """``classifier(x, timestep) -> logits`` with logits log p(y | x) of the labelled mixture (float64, (B, classes)).

    Args:
        mixture: The unconditional data distribution.
        component_labels: The class of each component, integers in [0, num_classes).
        scheduler: Describes the path: ``timestep`` is read as its point (a, b), as :class:`~.denoiser.ExactDenoiser`.
    """

    def __init__(self, mixture: GaussianMixture, component_labels: Sequence[int], scheduler: Any) -> None:
        labels = torch.as_tensor(component_labels, dtype=torch.long)
        if labels.shape != mixture.weights.shape or bool((labels < 0).any()):
            raise ValueError(
                f"component_labels={list(component_labels)} is not allowed; pass one class index ≥ 0 per component "
                f"({len(mixture.weights)})."
            )
        self.mixture, self.scheduler, self.component_labels = mixture, scheduler, labels
        self.num_classes = int(labels.max()) + 1
        self.evaluations = 0

    def log_posteriors(self, x: torch.Tensor, a: float, b: float) -> torch.Tensor:
        """log p(y | x) for every class y at the path point (a, b), shape (B, num_classes), differentiable in x."""
        log_r = torch.log_softmax(component_log_densities(self.mixture, x, a, b), dim=-1)  # (B, K)
        classes = [log_r[:, self.component_labels == y] for y in range(self.num_classes)]
        return torch.stack([torch.logsumexp(member, dim=-1) for member in classes], dim=-1)

    def __call__(self, x: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        a, b = path_coefficients(self.scheduler, timestep)
        self.evaluations += 1
        return self.log_posteriors(x, a, b)


def class_mixture(mixture: GaussianMixture, component_labels: Sequence[int], label: int) -> GaussianMixture:
    """p(x0 | y = ``label``): the components labelled ``label``, their weights renormalised."""
    members = torch.as_tensor(component_labels) == label
    if not bool(members.any()):
        raise ValueError(f"label={label} names no component; the labels are {sorted(set(component_labels))}.")
    weights = mixture.weights[members]
    return GaussianMixture(weights / weights.sum(), mixture.means[members], mixture.stds[members])
