"""The exact denoiser of a Gaussian mixture as a model: verify any diffusion scheduler without training one.

Plugging the Bayes-optimal denoiser of a :class:`~scratch_schedulers.oracle.mixture.GaussianMixture`
in place of a trained network isolates the *sampler*: whatever error remains in the samples comes
from the scheduler's discretisation (or from a bug), not from a model. This module reads a
scheduler's path point ``(a_t, b_t)`` and parametrisation (:class:`ExactDenoiser`), drives any
diffusers-style scheduler with it (:func:`sample_with`) and tabulates the error statistics of
:mod:`scratch_schedulers.oracle.statistics` against the number of model evaluations (:func:`error_table`).

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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from ..noise_path import PredictionType, signal_noise_at
from .mixture import GaussianMixture
from .statistics import mixture_error, sampling_noise

# --- scheduler conventions -------------------------------------------------------------------
# The path point (a_t, b_t) is the core's one look-up, ``noise_path.signal_noise_at`` (a fractional VP timestep
# interpolates the level s = b/a, as Euler/Heun-style schedulers do); tests/scratch_schedulers/test_exact_denoiser.py
# checks it against an independent formula, so the harness still verifies the schedulers with numbers of its own.


def path_coefficients(scheduler: Any, timestep: float | torch.Tensor) -> tuple[float, float]:
    """``(a_t, b_t)`` of ``x_t = a_t x0 + b_t ε`` that the model sees at ``timestep`` (a scalar), as floats."""
    a, b = signal_noise_at(scheduler, torch.as_tensor(timestep).detach().cpu())
    return float(a), float(b)


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
        a, b = path_coefficients(self.scheduler, timestep)
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
    model: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """Samples ``mixture`` with ``scheduler`` driven by the exact denoiser (or by ``model``).

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
        model: A model callable ``(sample, timestep) -> model_output`` in the scheduler's
            parametrisation to use instead of ``ExactDenoiser(mixture, scheduler)`` (e.g. a guided
            exact denoiser); ``mixture`` then only gives the dimension.

    Returns:
        ``(samples, nfe)``: the final samples, shape ``(n_samples, d)``, and the number of model
        evaluations (calls of the model in this loop).
    """
    scheduler.set_timesteps(num_inference_steps)
    generator = torch.Generator().manual_seed(seed)
    init_noise_sigma = float(getattr(scheduler, "init_noise_sigma", 1.0))
    if noise is None:
        noise = torch.randn(n_samples, mixture.dim, generator=generator, dtype=dtype)
    elif noise.shape != (n_samples, mixture.dim):
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {(n_samples, mixture.dim)}")
    x = noise.to(dtype) * init_noise_sigma
    model = model if model is not None else ExactDenoiser(mixture, scheduler)
    step_kwargs = {"generator": generator} if _accepts(scheduler.step, "generator") else {}
    scale = getattr(scheduler, "scale_model_input", None)
    nfe = 0
    for t in scheduler.timesteps:
        model_input = scale(x, t) if scale is not None else x
        x = scheduler.step(model(model_input, t), t, x, **step_kwargs).prev_sample
        nfe += 1
    return x, nfe


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
