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
* :func:`heun_step` is the second-order trapezoidal correction (Karras et al., 2022, Alg. 1).

Coefficients are 0-d or broadcastable tensors (or Python numbers), so the functions work
unchanged on any device and never read a value back to the host.
``tests/scratch_schedulers/test_samplers.py`` checks each identity above in float64.
"""

from __future__ import annotations

import torch


def nonneg_sqrt(x) -> torch.Tensor:
    """√max(x, 0) as a tensor op, in ``x``'s dtype (a Python number becomes a float32 CPU tensor).

    Uses torch's ``** 0.5`` on purpose: for 0-d tensors it differs from a correctly rounded
    square root in the last bit, and diffusers' schedulers use it.
    """
    return torch.as_tensor(x).clamp(min=0) ** 0.5


def reverse_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    a_next,
    var_next,
    noise_std=0.0,
    noise: torch.Tensor | None = None,
    direction=None,
) -> torch.Tensor:
    """x_next = a_next·x̂0 + √(b_next² − s²)·ε̂ + s·z  (DDIM Eq. 12, written for any path).

    Args:
        x0: predicted clean sample x̂0, shape (B, ...).
        eps: predicted noise ε̂, same shape.
        a_next: signal scale of the target path point.
        var_next: its noise variance b_next² (1 − ᾱ_next on the VP path, σ_next² on the flow path).
        noise_std: s, the standard deviation of fresh noise injected at this step (0 = deterministic).
        noise: z ~ N(0, I) of the sample's shape; required when ``noise_std`` is not 0.
        direction: √(b_next² − s²) when the caller has it precomputed (e.g. b_next at s = 0).
    """
    if direction is None:
        direction = nonneg_sqrt(var_next - noise_std**2)
    x_next = a_next * x0 + direction * eps
    if noise is not None:
        x_next = x_next + noise_std * noise
    return x_next


def posterior_mean(x0: torch.Tensor, x_t: torch.Tensor, coef_x0, coef_xt) -> torch.Tensor:
    """μ̃_t = (√ᾱ_next·β_t / (1 − ᾱ_t))·x̂0 + (√α_t·(1 − ᾱ_next) / (1 − ᾱ_t))·x_t  (DDPM Eq. 7).

    Algebraically this is :func:`reverse_step` at η = 1 with ε̂ re-derived from x̂0
    (``tests/scratch_schedulers/test_samplers.py`` checks the identity); written in this form
    because it avoids the cancellation in ε̂ = (x_t − a_t·x̂0)/b_t as t → 0. With
    α_t = ᾱ_t/ᾱ_next and β_t = 1 − α_t the step may span several training timesteps.
    """
    return coef_x0 * x0 + coef_xt * x_t


def ddpm_posterior_coefficients(alpha_bar_t, alpha_bar_next):
    """(coef_x0, coef_xt, β̃_t) of :func:`posterior_mean` and the posterior variance (DDPM Eqs. 6–7)."""
    alpha = alpha_bar_t / alpha_bar_next
    beta = 1 - alpha
    coef_x0 = (alpha_bar_next**0.5 * beta) / (1 - alpha_bar_t)
    coef_xt = alpha**0.5 * (1 - alpha_bar_next) / (1 - alpha_bar_t)
    return coef_x0, coef_xt, (1 - alpha_bar_next) / (1 - alpha_bar_t) * beta


def ddim_noise_std(alpha_bar_t: torch.Tensor, alpha_bar_next: torch.Tensor, eta: float) -> torch.Tensor:
    """σ_t(η) = η·√((1 − ᾱ_next)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_next)  (DDIM Eq. 16).

    At η = 1 this is √β̃_t, the std of DDPM's posterior q(x_{t−1} | x_t, x0) (DDPM Eq. 7).
    """
    return eta * ((1 - alpha_bar_next) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_next)) ** 0.5


def euler_step(x: torch.Tensor, derivative: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """x_next = x + (σ_next − σ)·dx/dσ: one Euler step of the probability-flow ODE."""
    return x + (sigma_next - sigma) * derivative


def heun_step(
    x: torch.Tensor, derivative: torch.Tensor, derivative_next: torch.Tensor, sigma, sigma_next
) -> torch.Tensor:
    """x_next = x + (σ_next − σ)·(d + d′)/2, the trapezoidal corrector of Karras et al. (2022), Alg. 1.

    ``derivative`` is dx/dσ at (x, σ); ``derivative_next`` at the Euler predictor's (x̃, σ_next).
    """
    return x + (derivative + derivative_next) / 2 * (sigma_next - sigma)


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al., 2022, §2.3) of a predicted x̂0.

    s = clamp(quantile_ratio(|x̂0|), 1, max_value) per sample; x̂0 ← clamp(x̂0, −s, s) / s.
    """
    flat = x0.reshape(x0.shape[0], -1)
    flat = flat.float() if flat.dtype not in (torch.float32, torch.float64) else flat
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.maximum(torch.minimum(flat, s), -s) / s).reshape(x0.shape).to(x0.dtype)


# --------------------------------------------------------------------------------------------
# DPM-Solver++ in data-prediction form (Lu et al., 2022, "DPM-Solver++: Fast Solver for Guided
# Sampling of Diffusion Probabilistic Models", arXiv:2211.01095), multistep orders 1–3.
#
# On any Gaussian path x = a·x0 + b·ε with log-SNR λ = log(a/b) the probability-flow ODE has the
# exact solution (DPM-Solver++ §3, data-prediction form)
#     x_next = (b_next/b)·x + b_next·∫_λ^λ_next e^ℓ·D(ℓ) dℓ,        D = x̂0,  h = λ_next − λ.
# Expanding D in ℓ − λ and integrating each power exactly (b_next·e^λ_next = a_next):
#     ∫ e^ℓ·1                → a_next·φ1,   φ1 = 1 − e^{−h}
#     ∫ e^ℓ·(ℓ − λ)          → a_next·h·φ2, φ2 = 1 − φ1/h          (= (e^{−h} − 1)/h + 1)
#     ∫ e^ℓ·(ℓ − λ)²/2       → a_next·h²·φ3, φ3 = 1/2 − (h − φ1)/h²
# and the multistep methods replace the λ-derivatives of D by divided differences of the stored
# x̂0 of the previous steps. The functions are written once for both paths: VP (a = √ᾱ,
# b = √(1 − ᾱ)) and flow (a = 1 − σ, b = σ) differ only in the (a, b) they are given.
#
# The ends of the path, exactly (IEEE ±∞ arithmetic, no clamping):
# * b_next = 0 (σ = 0, the last step): λ_next = +∞, e^{−h} = 0, φ1 = 1, so the first-order step is
#   x_next = 0·x + a_next·x̂0 — the model's x̂0 exactly. Higher orders have infinite weights there
#   (a polynomial in λ extrapolated over an infinite λ-interval), so the scheduler always takes a
#   step to b_next = 0 with order 1 (as diffusers does for ``final_sigmas_type="zero"``).
# * a = 0 (σ = 1 on the flow path, the zero-terminal-SNR timestep on the VP path): λ = −∞,
#   e^{−h} = e^{λ − λ_next} = 0, so the step is x_next = (b_next/b)·x + a_next·x̂0, finite.
# * A previous point with λ_prev = −∞ enters only through h/h_prev = 0 (finite/∞), so its
#   divided difference vanishes and the method reduces, exactly, to the next lower order.
# Every coefficient is a product of finite factors; nothing is written as ∞·0.
# --------------------------------------------------------------------------------------------


def log_snr(a, b) -> torch.Tensor:
    """λ = log a − log b, the log signal-to-noise ratio; −∞ at a = 0 and +∞ at b = 0 (exactly)."""
    return torch.log(torch.as_tensor(a)) - torch.log(torch.as_tensor(b))


def dpmpp_first_order_step(x: torch.Tensor, x0: torch.Tensor, lam, lam_next, a_next, b_ratio) -> torch.Tensor:
    """x_next = (b_next/b)·x + a_next·(1 − e^{−h})·D0, h = λ_next − λ  (DPM-Solver++ first order = DDIM).

    Args:
        x: sample at λ, shape (B, ...).
        x0: data prediction D0 = x̂0(x, λ), same shape.
        lam, lam_next: λ of this and the next path point (0-d tensors; ±∞ allowed, see above).
        a_next: signal scale of the next point.
        b_ratio: b_next / b (0 at the last step).
    """
    phi1 = -torch.expm1(torch.as_tensor(lam) - lam_next)  # 1 − e^{−h}, exact 1 at λ_next = +∞ or λ = −∞
    return b_ratio * x + (a_next * phi1) * x0


def dpmpp_second_order_step(
    x: torch.Tensor,
    x0: torch.Tensor,
    x0_prev: torch.Tensor,
    lam_prev,
    lam,
    lam_next,
    a_next,
    b_ratio,
    solver_type: str = "midpoint",
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al., 2022, Algorithm 2): x_next = first order + w·D1, D1 = (h/h_prev)·(D0 − D_prev).

    D1 ≈ h·dD/dλ from the previous step's x̂0 at λ_prev (h_prev = λ − λ_prev). The ``midpoint``
    variant weighs it with w = a_next·φ1/2 (Algorithm 2), ``heun`` with the exact Taylor weight
    w = a_next·φ2 (the "taylor" variant of the DPM-Solver code). λ_next must be finite.
    """
    lam, h = torch.as_tensor(lam), torch.as_tensor(lam_next) - lam
    phi1 = -torch.expm1(-h)
    weight = a_next * (phi1 / 2 if solver_type == "midpoint" else 1 - phi1 / h)
    d1_scale = h / (lam - lam_prev)  # 1/r0; 0 when λ_prev = −∞
    return b_ratio * x + (a_next * phi1) * x0 + (weight * d1_scale) * (x0 - x0_prev)


def dpmpp_third_order_step(
    x: torch.Tensor,
    x0: torch.Tensor,
    x0_prev: torch.Tensor,
    x0_prev2: torch.Tensor,
    lam_prev2,
    lam_prev,
    lam,
    lam_next,
    a_next,
    b_ratio,
    halve_d2: bool = False,
) -> torch.Tensor:
    """DPM-Solver++(3M): x_next = (b_next/b)·x + a_next·(φ1·D0 + φ2·D1 + φ3·D2)  (Taylor terms above).

    With r0 = h_prev/h, r1 = h_prev2/h and the divided differences Δ0 = (D0 − D_prev)/r0 and
    Δ1 = (D_prev − D_prev2)/r1: D1 = Δ0 + r0/(r0 + r1)·(Δ0 − Δ1) ≈ h·D′ and
    D2 = (Δ0 − Δ1)/(r0 + r1) ≈ h²·D″ (third-order multistep of Lu et al., 2022a, App. B, in
    data-prediction form). λ_next must be finite; λ_prev2 = −∞ reduces it exactly to heun 2M.

    Since D2 ≈ h²·D″/2 while the Taylor term is a_next·h²·φ3·D″, the weight of D2 is 2·a_next·φ3
    (local error O(h⁴)). ``halve_d2=True`` uses a_next·φ3, as the DPM-Solver reference code and
    diffusers do: local error O(h³), i.e. no more accurate than 2M (test_dpmsolver.py measures both).
    """
    lam, lam_prev = torch.as_tensor(lam), torch.as_tensor(lam_prev)
    h, h_prev, h_prev2 = torch.as_tensor(lam_next) - lam, lam - lam_prev, lam_prev - lam_prev2
    phi1 = -torch.expm1(-h)
    phi2 = 1 - phi1 / h
    phi3 = 0.5 - (h - phi1) / h**2
    d2_weight = a_next * (phi3 if halve_d2 else 2 * phi3)
    delta0 = (h / h_prev) * (x0 - x0_prev)
    delta1 = (h / h_prev2) * (x0_prev - x0_prev2)  # 0 when λ_prev2 = −∞
    share = h_prev / (h_prev + h_prev2)  # r0/(r0 + r1)
    d1 = delta0 + share * (delta0 - delta1)
    d2 = (h / (h_prev + h_prev2)) * (delta0 - delta1)  # (Δ0 − Δ1)/(r0 + r1)
    return b_ratio * x + (a_next * phi1) * x0 + (a_next * phi2) * d1 + d2_weight * d2
