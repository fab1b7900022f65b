"""An exact denoiser for a Gaussian mixture: verify any diffusion scheduler without training a model.

If the data are a Gaussian mixture, the Bayes-optimal denoiser is known in closed form. Plugging it
in place of a trained network isolates the *sampler*: whatever error remains in the samples comes
from the scheduler's discretisation (or from a bug), not from a model. This module provides that
denoiser and a sampling loop for any diffusers-style scheduler; the error statistics that compare
the samples with the mixture they should reproduce live in :mod:`.mixture_statistics` and are
re-exported here.

Math. Let the data be ``x0 ~ Σ_k w_k N(μ_k, s_k² I)`` in ``d`` dimensions and let a scheduler
corrupt them as ``x_t = a_t·x0 + b_t·ε`` with ``ε ~ N(0, I)``. Then, with ``v_k = a² s_k² + b²``,

* ``x_t | k ~ N(a μ_k, v_k I)``, so the posterior responsibilities are
  ``r_k(x_t) ∝ w_k N(x_t; a μ_k, v_k I)`` (computed in float64 with a log-sum-exp);
* ``E[x0 | x_t, k] = μ_k + (a s_k² / v_k)(x_t − a μ_k)`` (Gaussian conditioning), hence
  ``x̂0 = E[x0 | x_t] = Σ_k r_k (μ_k + (a s_k² / v_k)(x_t − a μ_k))``;
* ``ε̂ = E[ε | x_t] = (x_t − a x̂0) / b = Σ_k r_k (b / v_k)(x_t − a μ_k)``. The right-hand form is
  used: it is finite at ``b = 0`` (where ``ε̂ = 0`` and ``x̂0 = x_t / a``) and at ``a = 0`` (where
  ``r_k = w_k``, ``x̂0 = Σ_k w_k μ_k`` and ``ε̂ = x_t / b``), so no special cases are needed.

A network trained with the squared error on its output converges to the posterior mean of its
target, so the exact model outputs are ``epsilon → ε̂``, ``sample → x̂0``,
``v_prediction → a ε̂ − b x̂0`` and, for flow matching on the path ``x_t = (1 − σ) x0 + σ ε``,
``flow_velocity → ε̂ − x̂0``.

Example:
    >>> from diffusers import DDIMScheduler
    >>> mixture = GaussianMixture.example()
    >>> samples, nfe = sample_with(DDIMScheduler(clip_sample=False), mixture, 50, n_samples=1000)
    >>> stats = mixture_error(samples, mixture)  # compare with sampling_noise(mixture, 1000)

``python benchmarks/bench_exact_denoiser.py`` prints a table of error versus model evaluations.

Note:
    DDPM/DDIM schedulers (diffusers' and ours) clip ``x̂0`` to ``[-1, 1]`` by default
    (``clip_sample=True``); the example mixture spans about ``±3``, so construct them with
    ``clip_sample=False``. Any scheduler with ``alphas_cumprod`` (a VP path; Euler/Heun/DPM-Solver
    style ones included, through ``scale_model_input``) or with ``sigmas`` and a flow-matching path
    works.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .mixture_density import mixture_log_density
from .mixture_statistics import mixture_error, sampling_noise
from .noise_path import PREDICTION_TYPES, PredictionType
from .ode_reference import EndpointAccuracy, ode_endpoint_error, probability_flow_endpoint  # noqa: F401 (re-exported)

__all__ = [
    "PREDICTION_TYPES",
    "ExactDenoiser",
    "GaussianMixture",
    "error_table",
    "mixture_error",
    "sample_with",
    "sampling_noise",
]


@dataclass(frozen=True)
class GaussianMixture:
    """An isotropic Gaussian mixture ``Σ_k w_k N(μ_k, s_k² I)`` with its exact denoiser.

    Attributes:
        weights: Mixture weights ``w_k``, shape ``(K,)``, positive, summing to one (up to 1e-6;
            they are renormalised exactly).
        means: Component means ``μ_k``, shape ``(K, d)``.
        stds: Component standard deviations ``s_k``, shape ``(K,)``, positive.

    All three are stored as float64 tensors.
    """

    weights: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor

    def __post_init__(self) -> None:
        weights = torch.as_tensor(self.weights, dtype=torch.float64)
        means = torch.as_tensor(self.means, dtype=torch.float64)
        stds = torch.as_tensor(self.stds, dtype=torch.float64)
        if weights.ndim != 1 or means.ndim != 2 or stds.shape != weights.shape:
            raise ValueError("expected weights (K,), means (K, d) and stds (K,)")
        if means.shape[0] != weights.shape[0]:
            raise ValueError(f"{weights.shape[0]} weights but {means.shape[0]} means")
        if bool((weights <= 0).any()) or abs(float(weights.sum()) - 1.0) > 1e-6:
            raise ValueError("weights must be positive and sum to 1")
        if bool((stds <= 0).any()):
            raise ValueError("stds must be positive")
        object.__setattr__(self, "weights", weights / weights.sum())
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "stds", stds)

    @classmethod
    def example(cls) -> GaussianMixture:
        """The reference 2-D mixture: three well separated components of unequal weight and spread.

        Weights 0.5, 0.3, 0.2 and spreads 0.5, 0.4, 0.3 around means on a circle of radius 2
        (pairwise distance 2√3 ≈ 3.46), so every point of a common boundary is at least 3.8 standard
        deviations from both components and nearest-component assignment is essentially exact.
        The spreads are wide enough that the discretisation bias of the usual settings (DDPM 1000
        steps, DDIM / flow Euler 100 steps) stays below the sampling noise of 4000 samples;
        narrower components (s ≲ 0.2) expose the coarse low-noise end of the linear β schedule.
        """
        angles = torch.tensor([90.0, 210.0, 330.0], dtype=torch.float64) * math.pi / 180.0
        means = 2.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        return cls(
            weights=torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
            means=means,
            stds=torch.tensor([0.5, 0.4, 0.3], dtype=torch.float64),
        )

    @property
    def dim(self) -> int:
        """The data dimension ``d``."""
        return self.means.shape[1]

    @property
    def mean(self) -> torch.Tensor:
        """The mixture mean ``Σ_k w_k μ_k``, shape ``(d,)``."""
        return self.weights @ self.means

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws ``n`` exact samples (float64, shape ``(n, d)``)."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[component] + self.stds[component, None] * noise

    def responsibilities(self, x_t: torch.Tensor, a: float, b: float) -> torch.Tensor:
        """Posterior component probabilities ``r_k(x_t) ∝ w_k N(x_t; a μ_k, (a² s_k² + b²) I)``.

        Args:
            x_t: Noisy samples, shape ``(..., d)``.
            a: Signal coefficient ``a_t``.
            b: Noise coefficient ``b_t``.

        Returns:
            Float64 tensor of shape ``(..., K)`` whose last axis sums to one.
        """
        x_t = torch.as_tensor(x_t)
        return self._posterior(x_t, a, b)[1].T.reshape(*x_t.shape[:-1], len(self.weights))

    def log_density(self, x: torch.Tensor, a: float = 1.0, b: float = 0.0) -> torch.Tensor:
        """``log p(x)`` of ``x = a·x0 + b·ε`` in nats (:func:`.mixture_density.mixture_log_density`)."""
        return mixture_log_density(self, x, a, b)

    def denoise(self, x_t: torch.Tensor, a: float, b: float) -> torch.Tensor:
        """The exact denoiser ``x̂0 = E[x0 | x_t] = Σ_k r_k (μ_k + a s_k²/(a² s_k² + b²)(x_t − a μ_k))``.

        Args:
            x_t: Noisy samples ``a·x0 + b·ε``, shape ``(..., d)``.
            a: Signal coefficient ``a_t`` (``a = 0`` gives the mixture mean).
            b: Noise coefficient ``b_t`` (``b = 0`` gives ``x_t / a``).

        Returns:
            ``x̂0`` in float64, same shape as ``x_t``.
        """
        return self._posterior_means(x_t, a, b)[0]

    def model_output(self, x_t: torch.Tensor, a: float, b: float, prediction_type: PredictionType) -> torch.Tensor:
        """What a perfectly trained network of the given parametrisation returns at ``x_t``.

        Args:
            x_t: Noisy samples, shape ``(..., d)``.
            a: Signal coefficient ``a_t``.
            b: Noise coefficient ``b_t``.
            prediction_type: ``"epsilon"`` (ε̂), ``"sample"`` (x̂0), ``"v_prediction"``
                (``a ε̂ − b x̂0``) or ``"flow_velocity"`` (``ε̂ − x̂0``, the velocity
                ``d x_σ / dσ`` of the flow-matching path ``x_σ = (1 − σ) x0 + σ ε``).

        Returns:
            The model output in float64, same shape as ``x_t``.
        """
        x0_hat, eps_hat = self._posterior_means(x_t, a, b)
        if prediction_type == "epsilon":
            return eps_hat
        if prediction_type == "sample":
            return x0_hat
        if prediction_type == "v_prediction":
            return a * eps_hat - b * x0_hat
        if prediction_type == "flow_velocity":
            return eps_hat - x0_hat
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {list(PREDICTION_TYPES)}")

    def _posterior(self, x_t: torch.Tensor, a: float, b: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns the flattened samples ``(n, d)``, responsibilities ``(K, n)`` and variances ``(K,)``.

        ``|x − a μ_k|² = |x|² − 2a μ_k·x + a²|μ_k|²`` keeps every intermediate at ``(K, n)``; the
        component axis comes first because reductions over a short trailing axis are slow in torch.
        """
        a, b = float(a), float(b)
        var = a * a * self.stds**2 + b * b
        if bool((var <= 0).any()):
            raise ValueError("a and b cannot both be zero")
        x = torch.as_tensor(x_t).to(torch.float64)
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(f"expected samples with last dimension {self.dim}, got shape {tuple(x.shape)}")
        x = x.reshape(-1, self.dim)
        x_sq = x.T.square().sum(0)
        mu_sq = self.means.square().sum(1)
        sq_dist = (x_sq - 2 * a * (self.means @ x.T) + (a * a * mu_sq)[:, None]).clamp_min(0)
        log_norm = self.weights.log() - 0.5 * self.dim * torch.log(2.0 * math.pi * var)
        log_p = log_norm[:, None] - 0.5 * sq_dist / var[:, None]
        return x, torch.softmax(log_p, dim=0), var

    def _posterior_means(self, x_t: torch.Tensor, a: float, b: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(x̂0, ε̂)`` in the forms that stay finite at ``a = 0`` and at ``b = 0``.

        With ``c_k = a s_k² / v_k`` and ``e_k = b / v_k``:
        ``x̂0 = Σ_k r_k μ_k + (Σ_k r_k c_k) x_t − a Σ_k r_k c_k μ_k`` and
        ``ε̂ = (Σ_k r_k e_k) x_t − a Σ_k r_k e_k μ_k``.
        """
        x, r, var = self._posterior(x_t, a, b)
        a, b = float(a), float(b)
        rc = r * (a * self.stds**2 / var)[:, None]
        re = r * (b / var)[:, None]
        x0_hat = (r - a * rc).T @ self.means + rc.sum(0)[:, None] * x
        eps_hat = re.sum(0)[:, None] * x - a * (re.T @ self.means)
        shape = torch.as_tensor(x_t).shape
        return x0_hat.reshape(shape), eps_hat.reshape(shape)


# --- scheduler conventions -------------------------------------------------------------------
# Kept independent of the core's `noise_path.signal_noise_at` / `parametrization_of` so that the
# harness does not share the code it verifies; test_exact_denoiser.py checks that both agree.
# To use the core instead: return `tuple(map(float, signal_noise_at(scheduler, timestep)))` and
# `parametrization_of(scheduler).prediction_type` (the core truncates fractional VP timesteps).


def _path_coefficients(scheduler: Any, timestep: float | torch.Tensor) -> tuple[float, float]:
    """``(a_t, b_t)`` of ``x_t = a_t x0 + b_t ε`` that the model sees at ``timestep`` (a scalar).

    * VP / DDPM family (has ``alphas_cumprod``): ``a = sqrt(ᾱ[t])``, ``b = sqrt(1 − ᾱ[t])``. A
      fractional ``t`` (Euler/Heun discrete schedules) interpolates ``σ = sqrt((1 − ᾱ)/ᾱ)``
      linearly, as those schedulers do; their ``scale_model_input`` maps the sample to this path.
    * Flow matching (has ``sigmas``, no ``alphas_cumprod``): ``σ = t / num_train_timesteps``,
      ``a = 1 − σ``, ``b = σ``.
    """
    t = float(timestep)
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is not None:
        acp = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        lo = min(max(math.floor(t), 0), len(acp) - 1)
        hi = min(lo + 1, len(acp) - 1)
        sigma = ((1.0 - acp[[lo, hi]]) / acp[[lo, hi]]).sqrt()
        frac = t - lo
        sig = float(sigma[0]) if frac == 0 else float((1.0 - frac) * sigma[0] + frac * sigma[1])
        alpha_bar = 1.0 / (1.0 + sig * sig)
        return math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    if getattr(scheduler, "sigmas", None) is not None:
        sigma = t / scheduler.config.num_train_timesteps
        return 1.0 - sigma, sigma
    raise TypeError(f"{type(scheduler).__name__} has neither `alphas_cumprod` nor `sigmas`")


def _prediction_type(scheduler: Any) -> PredictionType:
    """The model output a scheduler expects: its ``config.prediction_type`` on VP paths, else velocity."""
    if getattr(scheduler, "alphas_cumprod", None) is not None:
        return scheduler.config.get("prediction_type", "epsilon")
    return "flow_velocity"


class ExactDenoiser:
    """The Bayes-optimal model for ``mixture`` in the parametrisation ``scheduler`` expects.

    Use it where a trained network would go::

        model = ExactDenoiser(mixture, scheduler)
        for t in scheduler.timesteps:
            x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample

    Multi-step and second-order schedulers (Heun repeats timesteps) work unchanged because the
    model is a function of ``(x, t)`` only. ``nfe`` counts the calls (model evaluations).

    Args:
        mixture: The data distribution.
        scheduler: A diffusers-style scheduler (VP/DDPM family or flow matching).
    """

    def __init__(self, mixture: GaussianMixture, scheduler: Any) -> None:
        self.mixture = mixture
        self.scheduler = scheduler
        self.prediction_type: PredictionType = _prediction_type(scheduler)
        self.nfe = 0

    def __call__(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """Returns the exact model output at ``(sample, timestep)`` in ``sample``'s dtype."""
        a, b = _path_coefficients(self.scheduler, timestep)
        self.nfe += 1
        return self.mixture.model_output(sample, a, b, self.prediction_type).to(sample.dtype)


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    parameters = inspect.signature(fn).parameters
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def sample_with(
    scheduler: Any,
    mixture: GaussianMixture,
    num_inference_steps: int,
    n_samples: int = 4000,
    seed: int = 0,
    *,
    noise: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, int]:
    """Samples ``mixture`` with ``scheduler`` driven by the exact denoiser.

    Runs ``set_timesteps(num_inference_steps)``, starts from ``init_noise_sigma · N(0, I)``
    (``1.0`` where the scheduler has no ``init_noise_sigma``, as in flow matching) and calls
    ``step`` once per entry of ``scheduler.timesteps``. The same ``seed`` gives the same initial
    noise for every scheduler, so deterministic samplers can be compared path by path.

    Args:
        scheduler: The scheduler under test; it is mutated by ``set_timesteps``/``step``.
        mixture: The data distribution.
        num_inference_steps: Passed to ``set_timesteps``.
        n_samples: Number of samples.
        seed: Seeds the initial noise and, where ``step`` accepts a ``generator``, its noise.
        noise: Initial standard normal noise of shape ``(n_samples, d)``, to use instead of
            drawing it from ``seed`` (it is still multiplied by ``init_noise_sigma``).
        dtype: Dtype of the sampling loop.

    Returns:
        ``(samples, nfe)``: the final samples, shape ``(n_samples, d)``, and the number of model
        evaluations.
    """
    scheduler.set_timesteps(num_inference_steps)
    generator = torch.Generator().manual_seed(seed)
    init_noise_sigma = float(getattr(scheduler, "init_noise_sigma", 1.0))
    if noise is None:
        noise = torch.randn(n_samples, mixture.dim, generator=generator, dtype=dtype)
    elif noise.shape != (n_samples, mixture.dim):
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {(n_samples, mixture.dim)}")
    x = noise.to(dtype) * init_noise_sigma
    model = ExactDenoiser(mixture, scheduler)
    step_kwargs = {"generator": generator} if _accepts(scheduler.step, "generator") else {}
    scale = getattr(scheduler, "scale_model_input", None)
    for t in scheduler.timesteps:
        model_input = scale(x, t) if scale is not None else x
        x = scheduler.step(model(model_input, t), t, x, **step_kwargs).prev_sample
    return x, model.nfe


def error_table(
    scheduler_factories: Mapping[str, Callable[[], Any]],
    step_counts: Iterable[int],
    mixture: GaussianMixture | None = None,
    n_samples: int = 4000,
    seed: int = 0,
    include_reference: bool = True,
) -> list[dict[str, Any]]:
    """Error versus number of model evaluations for several schedulers.

    Args:
        scheduler_factories: Name → zero-argument callable returning a fresh scheduler.
        step_counts: ``num_inference_steps`` values to try for every scheduler.
        mixture: Data distribution; defaults to ``GaussianMixture.example()``.
        n_samples: Samples per run.
        seed: Seed of every run (same initial noise for every scheduler).
        include_reference: Prepend a row with the error of exact samples of the same size.

    Returns:
        Rows with keys ``scheduler``, ``steps``, ``nfe`` and those of ``mixture_error``.
    """
    mixture = mixture if mixture is not None else GaussianMixture.example()
    step_counts = list(step_counts)
    rows: list[dict[str, Any]] = []
    if include_reference:
        floor = sampling_noise(mixture, n_samples)
        rows.append({"scheduler": "exact samples (noise floor)", "steps": None, "nfe": 0, **floor})
    for name, factory in scheduler_factories.items():
        for steps in step_counts:
            samples, nfe = sample_with(factory(), mixture, steps, n_samples=n_samples, seed=seed)
            rows.append({"scheduler": name, "steps": steps, "nfe": nfe, **mixture_error(samples, mixture)})
    return rows
