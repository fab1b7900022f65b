"""Log-likelihood of diffusion and flow models, two ways: the variational bound and the probability-flow ODE.

* :func:`variational_bound` (Ho et al., 2020, Eq. 5): per-term bound for discrete VP models of any
  prediction and variance type, with the discretised decoder for 8-bit data (``variational_bound.py``);
* :func:`ode_log_likelihood` (Chen et al., 2018; Song et al., 2021, App. D): the exact log-density
  under the probability-flow ODE of a flow or VP model, exact or Hutchinson divergence, Euler/Heun/
  adaptive (``ode_likelihood.py``, ``probability_flow.py``);
* ``units.py``: uniform dequantisation and nats → bits/dim for 8-bit data in [−1, 1];
* :func:`pipeline_model`: a saved pipeline's UNet as the ``(sample, timestep) -> output`` callable.

Both functions take a model callable in the scheduler's parametrisation (as
``scratch_schedulers.oracle.ExactDenoiser``), the data and a scheduler describing the path,
and return per-example values in nats. ``python -m scratch_diffusion.likelihood PATH`` is the CLI.
"""

from .ode_likelihood import ODELikelihood, ode_log_likelihood, standard_normal_log_density
from .pipeline_model import pipeline_model, trained_scheduler
from .units import (
    BIN_WIDTH_8BIT,
    bits_per_dim,
    check_on_8bit_grid,
    dequantize,
    dequantized_bits_per_dim,
    dequantized_nll,
    nats_to_bits_per_dim,
)
from .variational_bound import BoundTerms, variational_bound

__all__ = [
    "BIN_WIDTH_8BIT",
    "BoundTerms",
    "ODELikelihood",
    "bits_per_dim",
    "check_on_8bit_grid",
    "dequantize",
    "dequantized_bits_per_dim",
    "dequantized_nll",
    "nats_to_bits_per_dim",
    "ode_log_likelihood",
    "pipeline_model",
    "standard_normal_log_density",
    "trained_scheduler",
    "variational_bound",
]
