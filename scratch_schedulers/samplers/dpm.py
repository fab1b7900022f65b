"""DPM-Solver++ (data form, orders 1–3, ODE and SDE) and the noise-form SDE-DPM-Solver, in the log-SNR λ.

The derivation below (exact solution, φ functions, path ends, the SDE and the noise form) is the one the
functions implement; :mod:`scratch_schedulers.samplers` gives the overview of all update rules.
"""

from __future__ import annotations

import torch

from .steps import nonneg_sqrt

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
#
# Stochastic DPM-Solver++ (SDE-DPM-Solver++ of Lu et al., 2022; Gonzalez et al., 2023, "SEEDS"), with
# a noise fraction η ≥ 0. With the forward SDE dx = f·x dt + g dw (f = d log a/dt, g² = −2·b²·dλ/dt) the
# reverse SDEs dx = [f·x − (1 + η)/2·g²·∇log p] dt + √η·g dw̄ all have the path's marginals (η = 0 is the
# probability-flow ODE, η = 1 the reverse SDE of Anderson, 1982). In y = x/a, ∇log p = (a·D − x)/b², this
# is dy = (1 + η)·(D − y) dλ + noise: linear, with the exact solution (ĥ = (1 + η)·h, u = (1 + η)·(ℓ − λ))
#     x_next = (b_next/b)·e^{−ηh}·x + a_next·∫_0^ĥ e^{−(ĥ−u)}·D(λ + u/(1+η)) du + b_next·√(1 − e^{−2ηh})·z.
# η = 0 is the ODE above; η = 1 is diffusers' "sde-dpmsolver++" and k-diffusion's dpmpp_2m_sde/3m_sde.
# With D(λ + v) = D0 + v·D′ + v²/2·D″ the integral is a_next·(φ1(ĥ)·D0 + h·φ2(ĥ)·D′ + h²·φ3(ĥ)·D″)
# (the (1 + η)^−k of (u/(1 + η))^k turns ĥ^k·φ_{k+1}(ĥ) into h^k·φ_{k+1}(ĥ)), so with the same divided
# differences D1 ≈ h·D′, D2 ≈ h²·D″/2 (true λ ratios) every order is the deterministic formula with φ1, φ2,
# φ3 at ĥ, the x coefficient times e^{−ηh}, plus the noise term. Ends: at b_next = 0 (λ_next = +∞) the step is a_next·x̂0
# and the noise term b_next·√(1 − 0)·z = 0 exactly; from a = 0 (h = +∞) the x term is (b_next/b)·0·x.
# Check (one step, D constant = c, x ~ N(a·c, b²)): the mean (b_next/b)·e^{−ηh}·a·c + a_next·(1 − e^{−ĥ})·c
# = a_next·c (since (b_next/b)·a = a_next·e^{−h}) and the variance b_next²·e^{−2ηh} + b_next²·(1 − e^{−2ηh})
# = b_next²: the step maps N(a·c, b²) onto N(a_next·c, b_next²) exactly, for every η.
#
# DPM-Solver in noise-prediction form ("dpmsolver", Lu et al., 2022a, §3) is the same integral with the
# roles of (a, x0) and (b, ε) swapped: x_next = (a_next/a)·x − a_next·∫_λ^λ_next e^{−ℓ}·ε̂ dℓ, i.e. these functions
# called with λ → −λ, a_next → b_next, b_next/b → a_next/a and D → ε̂ (first order (a_next/a)·x −
# b_next·(e^h − 1)·ε̂; algebraically the same as the data form, so the scheduler takes every first-order
# step in the data form, which is exact at λ_next = +∞ and λ = −∞). Its SDE ("sde-dpmsolver") has the
# score with weight g² instead of g²/2: the ε-terms of the exact solution are twice the ODE's, so
# x_sde = 2·x_ode − (a_next/a)·x + b_next·√(e^{2h} − 1)·z at any order (:func:`dpm_noise_sde_step`).
# --------------------------------------------------------------------------------------------


def log_snr(a, b) -> torch.Tensor:
    """λ = log a − log b, the log signal-to-noise ratio; −∞ at a = 0 and +∞ at b = 0 (exactly)."""
    return torch.log(torch.as_tensor(a)) - torch.log(torch.as_tensor(b))


def _sde_start(x: torch.Tensor, lam, lam_next, b_ratio, eta: float):
    """(λ, h, ĥ = (1 + η)·h, the x term (b_next/b)·e^{−ηh}·x) of a step λ → λ_next (SDE above; η = 0: the ODE's)."""
    lam = torch.as_tensor(lam)
    h = torch.as_tensor(lam_next) - lam
    x_term = b_ratio * x if eta == 0 else (b_ratio * torch.exp(-eta * h)) * x  # η = 0 avoids e^{−0·∞} at a = 0
    return lam, h, (1 + eta) * h, x_term


def _with_sde_noise(x_next: torch.Tensor, noise: torch.Tensor | None, h, lam_next, a_next, eta: float) -> torch.Tensor:
    """x_next + b_next·√(1 − e^{−2ηh})·z, b_next = a_next·e^{−λ_next} (0 at λ_next = +∞); x_next when η = 0."""
    if eta == 0:
        return x_next
    if noise is None:
        raise ValueError(f"eta={eta} needs noise: a tensor z ~ N(0, I) of the sample's shape.")
    std = a_next * torch.exp(-torch.as_tensor(lam_next)) * nonneg_sqrt(-torch.expm1(-2 * eta * h))
    return x_next + std * noise


def dpmpp_first_order_step(
    x: torch.Tensor, x0: torch.Tensor, lam, lam_next, a_next, b_ratio, eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """x_next = (b_next/b)·e^{−ηh}·x + a_next·(1 − e^{−ĥ})·D0 + b_next·√(1 − e^{−2ηh})·z, h = λ_next − λ,
    ĥ = (1 + η)·h  (DPM-Solver++ first order = DDIM at η = 0; SDE-DPM-Solver++1 at η = 1).

    Args:
        x: sample at λ, shape (B, ...).
        x0: data prediction D0 = x̂0(x, λ), same shape.
        lam, lam_next: λ of this and the next path point (0-d tensors; ±∞ allowed, see above).
        a_next: signal scale of the next point.
        b_ratio: b_next / b (0 at the last step).
        eta: noise fraction η ≥ 0 of the SDE above (0: the probability-flow ODE, bit-identical to it).
        noise: z ~ N(0, I) of the sample's shape; required when η > 0.
    """
    _, h, h_hat, x_term = _sde_start(x, lam, lam_next, b_ratio, eta)
    phi1 = -torch.expm1(-h_hat)  # 1 − e^{−ĥ}, exact 1 at λ_next = +∞ or λ = −∞
    return _with_sde_noise(x_term + (a_next * phi1) * x0, noise, h, lam_next, a_next, eta)


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
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al., 2022, Algorithm 2): x_next = first order + w·D1, D1 = (h/h_prev)·(D0 − D_prev).

    D1 ≈ h·dD/dλ from the previous step's x̂0 at λ_prev (h_prev = λ − λ_prev). The ``midpoint``
    variant weighs it with w = a_next·φ1/2 (Algorithm 2), ``heun`` with the exact Taylor weight
    w = a_next·φ2 (the "taylor" variant of the DPM-Solver code). λ_next must be finite.
    ``eta``, ``noise``: the SDE above (φ at ĥ = (1 + η)·h; η = 1 is diffusers' ``sde-dpmsolver++`` 2M:
    midpoint w = a_next·(1 − e^{−2h})/2, heun w = a_next·((1 − e^{−2h})/(−2h) + 1)).
    """
    lam, h, h_hat, x_term = _sde_start(x, lam, lam_next, b_ratio, eta)
    phi1 = -torch.expm1(-h_hat)
    weight = a_next * (phi1 / 2 if solver_type == "midpoint" else 1 - phi1 / h_hat)
    d1_scale = h / (lam - lam_prev)  # 1/r0; 0 when λ_prev = −∞
    x_next = x_term + (a_next * phi1) * x0 + (weight * d1_scale) * (x0 - x0_prev)
    return _with_sde_noise(x_next, noise, h, lam_next, a_next, eta)


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
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """DPM-Solver++(3M): x_next = (b_next/b)·x + a_next·(φ1·D0 + φ2·D1 + φ3·D2)  (Taylor terms above).

    With r0 = h_prev/h, r1 = h_prev2/h and the divided differences Δ0 = (D0 − D_prev)/r0 and
    Δ1 = (D_prev − D_prev2)/r1: D1 = Δ0 + r0/(r0 + r1)·(Δ0 − Δ1) ≈ h·D′ and
    D2 = (Δ0 − Δ1)/(r0 + r1) ≈ h²·D″/2 (third-order multistep of Lu et al., 2022a, App. B, in
    data-prediction form). λ_next must be finite; λ_prev2 = −∞ reduces it exactly to heun 2M.

    Since D2 ≈ h²·D″/2 while the Taylor term is a_next·h²·φ3·D″, the weight of D2 is 2·a_next·φ3
    (local error O(h⁴)). ``halve_d2=True`` uses a_next·φ3, as the DPM-Solver reference code and
    diffusers do: local error O(h³), i.e. no more accurate than 2M (test_dpmsolver.py measures both).

    ``eta``, ``noise``: the SDE above, φ1, φ2, φ3 at ĥ = (1 + η)·h. diffusers' ``sde-dpmsolver++`` 3M (η = 1)
    weighs D2 with a_next·((1 − e^{−2h} − 2h)/(2h)² − 1/2) = −a_next·(1/2 + (ĥ − φ1)/ĥ²) ≈ −a_next, where the
    halved Taylor weight is a_next·φ3(ĥ) = a_next·(1/2 − (ĥ − φ1)/ĥ²) ≈ a_next·ĥ/6: a sign error that leaves an
    O(h²) error per step (first order overall); ours is the Taylor weight (test_dpmsolver_sde.py measures both).
    """
    lam, h, h_hat, x_term = _sde_start(x, lam, lam_next, b_ratio, eta)
    lam_prev = torch.as_tensor(lam_prev)
    h_prev, h_prev2 = lam - lam_prev, lam_prev - lam_prev2
    phi1 = -torch.expm1(-h_hat)
    phi2 = 1 - phi1 / h_hat
    phi3 = 0.5 - (h_hat - phi1) / h_hat**2
    d2_weight = a_next * (phi3 if halve_d2 else 2 * phi3)
    delta0 = (h / h_prev) * (x0 - x0_prev)
    delta1 = (h / h_prev2) * (x0_prev - x0_prev2)  # 0 when λ_prev2 = −∞
    share = h_prev / (h_prev + h_prev2)  # r0/(r0 + r1)
    second_difference = delta0 - delta1
    d1 = delta0 + share * second_difference
    d2 = (h / (h_prev + h_prev2)) * second_difference  # (Δ0 − Δ1)/(r0 + r1)
    x_next = x_term + (a_next * phi1) * x0 + (a_next * phi2) * d1 + d2_weight * d2
    return _with_sde_noise(x_next, noise, h, lam_next, a_next, eta)


def dpm_noise_sde_step(x_ode: torch.Tensor, x: torch.Tensor, a_ratio, b_next, h, noise: torch.Tensor) -> torch.Tensor:
    """x_sde = 2·x_ode − (a_next/a)·x + b_next·√(e^{2h} − 1)·z  (SDE-DPM-Solver, noise form, any order).

    ``x_ode`` is the noise-form DPM-Solver step x_ode = (a_next/a)·x + (ε-terms) of the same order from x
    (section above): the reverse SDE weighs the score with g² where the ODE has g²/2, so its ε-terms are twice
    the ODE's, and the noise variance is b_next²·(e^{2h} − 1) (SDE-DPM-Solver of Lu et al., 2022; diffusers'
    ``sde-dpmsolver`` has orders 1–2). h = λ_next − λ; b_next > 0 (a step to b_next = 0
    would leave the noise ∞·0, and a start at a = 0 makes a_next/a infinite: the scheduler refuses both).
    """
    return 2 * x_ode - a_ratio * x + (b_next * nonneg_sqrt(torch.expm1(2 * torch.as_tensor(h)))) * noise
