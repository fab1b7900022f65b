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
    second_difference = delta0 - delta1
    d1 = delta0 + share * second_difference
    d2 = (h / (h_prev + h_prev2)) * second_difference  # (Δ0 − Δ1)/(r0 + r1)
    return b_ratio * x + (a_next * phi1) * x0 + (a_next * phi2) * d1 + d2_weight * d2


# --------------------------------------------------------------------------------------------
# UniP / UniC (Zhao et al., 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling
# of Diffusion Models", arXiv:2302.04867, data-prediction form, Algorithms 2–3 with B(h)).
#
# The same exact solution as above, with D(ℓ) = D0 + Σ_k (ℓ − λ)^k/k!·D^{(k)} integrated term by term:
#     x_next = (b_next/b)·x + a_next·φ1·D0 + a_next·Σ_{k≥1} G_k·h^k·D^{(k)}/k!,
#     G_0 = φ1 = 1 − e^{−h},   G_k = 1 − k·G_{k−1}/h   (= h·k!·∫_0^1 e^{−h(1−u)} u^k/k! du).
# UniPC replaces the unknown derivatives by differences at p other points λ_m = λ + r_m·h,
# D_m − D0 = Σ_k (r_m·h)^k/k!·D^{(k)}, weighted B(h)·a_m/r_m: matching the terms k = 1..p gives
# the Vandermonde system Σ_m a_m·r_m^{k−1} = G_k/B(h) (the paper's R_p(h)·a_p = g_p(h)/B(h)).
# The product w_m = B(h)·a_m solves Σ_m w_m·r_m^{k−1} = G_k, so for p ≥ 2 the step does not
# depend on B(h) at all; UniPC's rule for p = 1, a_1 = 1/2, is where it does: w_1 = B(h)/2 with
# B(h) = h ("bh1") or B(h) = 1 − e^{−h} ("bh2"; the paper's e^h − 1 with h → −h in this form).
# * UniP-p (predictor): the points are the p − 1 previous steps' x̂0 (r_m < 0). UniP-2 "bh2" is
#   DPM-Solver++(2M) midpoint; UniP-3 solves the same two conditions as the Taylor 3M above.
# * UniC-p (corrector): once the model has been evaluated at x_next, the same update from the same
#   x and D0 is recomputed with the new x̂0 as one more point (r = 1), so p points match p terms
#   (order p + 1), without another model evaluation.
# Ends: a point with λ_m = ±∞ has |r_m| = ∞ and, in the limit, weight 0 (the solution of the system
# tends to that of the other points), so it is dropped; at λ = −∞ (a = 0) h = ∞, every G_k = 1, and
# the only point is the corrector's (r = 1 exactly): w_1 = 1/2 with bh2, infinite with bh1 (the
# scheduler skips that correction). λ_next = +∞ is only reached by first-order steps (no points).
# --------------------------------------------------------------------------------------------


def unipc_update(
    x: torch.Tensor,
    x0: torch.Tensor,
    lam,
    points,
    lam_next,
    a_next,
    b_ratio,
    variant: str = "bh2",
) -> torch.Tensor:
    """x_next = (b_next/b)·x + a_next·φ1·D0 + a_next·Σ_m (w_m/r_m)·(D_m − D0)  (UniP-p / UniC-p above).

    Args:
        x: sample at λ, shape (B, ...).
        x0: its data prediction D0.
        lam, lam_next: λ of the start and of the target point (host 0-d tensors; λ = −∞ allowed).
        points: (λ_m, D_m) of the other points: previous steps (UniP) and, for UniC, (λ_next, x̂0 at
            the predicted x_next) last. Host λ_m; the weights come from a p × p solve in float64.
        a_next: signal scale of the target point.
        b_ratio: b_next / b.
        variant: ``bh1`` (B(h) = h) or ``bh2`` (B(h) = 1 − e^{−h}); matters only for one point.
    """
    lam, lam_next = torch.as_tensor(lam, dtype=torch.float64), torch.as_tensor(lam_next, dtype=torch.float64)
    h = lam_next - lam
    phi1 = -torch.expm1(-h)
    x_next = b_ratio * x + (a_next * phi1) * x0
    one_point = len(points) == 1
    points = [(torch.as_tensor(lam_m, dtype=torch.float64), d) for lam_m, d in points]
    points = [(lam_m, d) for lam_m, d in points if bool(torch.isfinite(lam_m))]  # weight 0 in the limit
    if not points:
        return x_next
    ratios = torch.stack([torch.where(lam_m == lam_next, 1.0, (lam_m - lam) / h) for lam_m, _ in points])
    if one_point:
        weights = (h if variant == "bh1" else phi1).reshape(1) / 2  # UniPC's a_1 = 1/2
    else:
        g, rhs = phi1, []
        for k in range(1, len(points) + 1):
            g = 1 - k * g / h
            rhs.append(g)
        vandermonde = torch.stack([ratios ** (k - 1) for k in range(1, len(points) + 1)])
        weights = torch.linalg.solve(vandermonde, torch.stack(rhs))
    for (_, d), w in zip(points, weights / ratios, strict=True):
        x_next = x_next + (a_next * w) * (d - x0)
    return x_next


def corrected_prediction_shift(rule: str, a, b):
    """J in x̂0(x_c) ≈ x̂0(x̃) + J·(x_c − x̃): the data prediction at a corrected sample x_c, from the model's
    output at the predicted sample x̃ (the corrector makes no new evaluation; J ≈ ∂x̂0/∂x, Tweedie:
    a·Cov[x0 | x]/b²).

    * ``x0``: J = 0, x̂0 itself is reused (UniPC).
    * ``epsilon``: J = 1/a, ε̂ is reused (x̂0 = (x_c − b·ε̂)/a): exact as b → 0, too large at high noise.
    * ``gaussian``: J = a/(a² + b²), the exact J for data N(μ, I) (unit variance, as normalised data and
      latents are): 1/a as b → 0 and → 0 as a → 0, like the J of any data with that variance.
    """
    if rule == "x0":
        return 0.0
    return 1 / a if rule == "epsilon" else a / (a**2 + b**2)


def clean_endpoint_step(x0: torch.Tensor, x0_prev: torch.Tensor, lam, lam_prev) -> torch.Tensor:
    """The last step to σ = 0 (λ = +∞) from two x̂0s: x_end = D + w·(D − D_prev), w = s²/(s_prev² − s²).

    In the flow time s = b/(a + b) = sigmoid(−λ) (any path: x̂0 and the ODE do not depend on it), along an
    ODE solution x(s) with velocity u = dx/ds, D = x − s·u = x(0) − s²·x''(0)/2 + O(s³): x̂0 tends to the
    endpoint quadratically in s, with no linear term. A first-order step returns D (error O(s²)); eliminating
    the s² term between the last two points leaves O(s³). A polynomial in λ cannot do this (its weights are
    infinite at λ = +∞); in s the end is an ordinary point. ``lam``, ``lam_prev``: host 0-d tensors, finite.
    """
    s2, s2_prev = torch.sigmoid(-torch.as_tensor(lam)) ** 2, torch.sigmoid(-torch.as_tensor(lam_prev)) ** 2
    return x0 + (s2 / (s2_prev - s2)) * (x0 - x0_prev)
