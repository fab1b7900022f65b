"""Reverse-sampler update rules on the Gaussian path x_t = a_t·x0 + b_t·ε — each one once.

Every sampler here moves a sample from path point (a_t, b_t) to (a_next, b_next) given the
model's estimates (x̂0, ε̂). In the view of "Step-by-Step Diffusion" (Nakkiran et al., 2024):

* :func:`reverse_step` is DDIM's generalised update (Song et al., 2021, Eq. 12). With
  s = η·σ_t (:func:`ddim_noise_std`, Eq. 16) it is DDIM; with η = 1 its mean is exactly DDPM's
  posterior mean μ̃_t (Ho et al., 2020, Eq. 7, :func:`posterior_mean`) — the ancestral
  sampler is DDIM at η = 1.
* On the flow path a = 1 − σ, b = σ, :func:`reverse_step` with s = 0 equals the Euler step
  x + (σ_next − σ)·u of the probability-flow ODE dx/dσ = u = ε − x0 (:func:`euler_step`);
  with s = b_next it is the stochastic re-noising sampler x_next = (1−σ_next)·x̂0 + σ_next·z.
* :func:`heun_step` is the second-order trapezoidal correction (Karras et al., 2022, Alg. 1);
  :func:`churn_gamma` and :func:`raise_noise` add Alg. 2's churn (the level raised by γ, fresh noise).
* :func:`dpmpp_first_order_step` and its 2M/3M siblings are DPM-Solver++ (Lu et al., 2022) in the
  log-SNR λ = log(a/b) (:func:`log_snr`), ODE or SDE (noise fraction η); the noise-form DPM-Solver is
  the same functions with (a, x0) and (b, ε) swapped, and :func:`dpm_noise_sde_step` its SDE.
* :func:`unipc_update` is UniPC's predictor/corrector (Zhao et al., 2023), with
  :func:`corrected_prediction_shift` and :func:`clean_endpoint_step` for the few-step scheduler.

One module per family, each rule next to its equation (this package re-exports them all):
``steps`` the one-step rules in (a, b) and σ (DDIM/DDPM, Euler/Heun, EDM churn, dynamic
thresholding, :func:`nonneg_sqrt`), ``dpm`` the DPM-Solver(++) steps with their derivation,
``unipc`` UniP/UniC. Coefficients are 0-d or broadcastable tensors (or Python numbers), so the
functions work unchanged on any device and never read a value back to the host.
``tests/scratch_schedulers/test_samplers.py`` checks each identity above in float64.
"""

from .dpm import (
    dpm_noise_sde_step,
    dpmpp_first_order_step,
    dpmpp_second_order_step,
    dpmpp_third_order_step,
    log_snr,
)
from .steps import (
    churn_gamma,
    ddim_noise_std,
    ddpm_posterior_coefficients,
    dynamic_threshold,
    euler_step,
    heun_step,
    nonneg_sqrt,
    posterior_mean,
    raise_noise,
    reverse_step,
)
from .unipc import clean_endpoint_step, corrected_prediction_shift, unipc_update

__all__ = [
    "churn_gamma",
    "clean_endpoint_step",
    "corrected_prediction_shift",
    "ddim_noise_std",
    "ddpm_posterior_coefficients",
    "dpm_noise_sde_step",
    "dpmpp_first_order_step",
    "dpmpp_second_order_step",
    "dpmpp_third_order_step",
    "dynamic_threshold",
    "euler_step",
    "heun_step",
    "log_snr",
    "nonneg_sqrt",
    "posterior_mean",
    "raise_noise",
    "reverse_step",
    "unipc_update",
]
