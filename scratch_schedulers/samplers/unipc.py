"""UniPC's UniP/UniC update, the corrected-sample x̂0 shift and the σ² final step (Zhao et al., 2023).

The derivation below is the one :func:`unipc_update` implements; :mod:`scratch_schedulers.samplers` gives the
overview of all update rules.
"""

from __future__ import annotations

import torch

# --------------------------------------------------------------------------------------------
# UniP / UniC (Zhao et al., 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling
# of Diffusion Models", arXiv:2302.04867, data-prediction form, Algorithms 2–3 with B(h)).
#
# The exact solution of dpm.py's comment, with D(ℓ) = D0 + Σ_k (ℓ − λ)^k/k!·D^{(k)} integrated term by term:
#     x_next = (b_next/b)·x + a_next·φ1·D0 + a_next·Σ_{k≥1} G_k·h^k·D^{(k)}/k!,
#     G_0 = φ1 = 1 − e^{−h},   G_k = 1 − k·G_{k−1}/h   (= h·k!·∫_0^1 e^{−h(1−u)} u^k/k! du).
# UniPC replaces the unknown derivatives by differences at p other points λ_m = λ + r_m·h,
# D_m − D0 = Σ_k (r_m·h)^k/k!·D^{(k)}, weighted B(h)·a_m/r_m: matching the terms k = 1..p gives
# the Vandermonde system Σ_m a_m·r_m^{k−1} = G_k/B(h) (the paper's R_p(h)·a_p = g_p(h)/B(h)).
# The product w_m = B(h)·a_m solves Σ_m w_m·r_m^{k−1} = G_k, so for p ≥ 2 the step does not
# depend on B(h) at all; UniPC's rule for p = 1, a_1 = 1/2, is where it does: w_1 = B(h)/2 with
# B(h) = h ("bh1") or B(h) = 1 − e^{−h} ("bh2"; the paper's e^h − 1 with h → −h in this form).
# * UniP-p (predictor): the points are the p − 1 previous steps' x̂0 (r_m < 0). UniP-2 "bh2" is
#   DPM-Solver++(2M) midpoint; UniP-3 solves the same two conditions as the Taylor 3M of dpm.py.
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
