"""The exact answers of a Gaussian mixture: denoiser, density, sample statistics and probability-flow ODE.

A Gaussian mixture is the one data distribution whose denoiser, density and probability-flow ODE
are known in closed form, so it verifies any scheduler (ours or diffusers') and the likelihood code
without a trained model. The modules depend one way on each other and on the core
(:mod:`scratch_schedulers.noise_path`); nothing in the core imports them:

* ``mixture``: :class:`GaussianMixture` (samples, responsibilities, exact denoiser, model outputs)
  and :func:`mixture_log_density`, the density along a noise path;
* ``statistics`` (← ``mixture``): :func:`mixture_error` and :func:`sampling_noise`, how far samples
  are from the mixture and the floor exact samples reach;
* ``denoiser`` (← ``mixture``, ``statistics``): :class:`ExactDenoiser`, the mixture as the model a
  scheduler expects, :func:`sample_with` and :func:`error_table`;
* ``classifier`` (← ``mixture``, ``denoiser``): :class:`ExactClassifier`, the noise-aware classifier of a labelled
  mixture, and :func:`class_mixture`, its class-conditional distribution (exact classifier guidance);
* ``ode_reference`` (← ``mixture``, ``denoiser``): :func:`probability_flow_endpoint`, the exact ODE
  solution, and :func:`ode_endpoint_error`, a deterministic sampler's discretisation error.
"""

from .classifier import ExactClassifier, class_mixture
from .denoiser import ExactDenoiser, error_table, sample_with
from .mixture import GaussianMixture, mixture_log_density
from .ode_reference import (
    REFERENCE_STEPS,
    EndpointAccuracy,
    ode_endpoint_error,
    probability_flow_endpoint,
    samples_on_flow_path,
)
from .statistics import mixture_error, sampling_noise

__all__ = [
    "REFERENCE_STEPS",
    "EndpointAccuracy",
    "ExactClassifier",
    "ExactDenoiser",
    "GaussianMixture",
    "class_mixture",
    "error_table",
    "mixture_error",
    "mixture_log_density",
    "ode_endpoint_error",
    "probability_flow_endpoint",
    "sample_with",
    "samples_on_flow_path",
    "sampling_noise",
]
