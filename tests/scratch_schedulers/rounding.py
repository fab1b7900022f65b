"""How far our schedulers and diffusers' may differ at one step, from a first-order rounding analysis in
float32 (Higham, *Accuracy and Stability of Numerical Algorithms*, 2002, §3.1–3.3). Used by the parity tests:
each step's difference must be explained by the differences of its inputs plus the step's own rounding, so
a tolerance never comes from one machine's worst value, and a wrong coefficient (≥ 1e-4 relative) fails.

A step is linear in its operands: x_next = Σ_k w_k·v_k, v = (the start sample, this step's x̂0 D_0, the
earlier x̂0s D_1, D_2, ...), with weights w_k that depend on the λ grid only. They are read off the update
function ours calls (the :mod:`scratch_schedulers.samplers` rules), by evaluating it on unit operands, so the
amplification follows the scheduler's own grid: a 3M step at h/h_prev ≈ 6 (diffusers' beta grid at 8 steps)
has Σ|w_k| ≈ 85, a step on a uniform λ grid ≈ 3. Elementwise, for operands that already differ by |Δv_k|,

    |Δx_next| ≤ Σ_k |w_k|·|Δv_k|                  the operands' own differences, carried by the update
              + 2·γ_n·Σ_k |w_k|·|v_k|             each implementation's rounding, n = 4·(number of operands):
                                                  a difference, two scalings and the sum, per operand
              + Σ_j |∂x_next/∂λ_j|·δλ_j           diffusers' λ = log a − log b in float32 (ours: float64)

with δλ = γ_3·(|log a| + |log b|) (two logarithms and their difference), plus, at the λ_next of the step,
γ_4·6/h² for diffusers' φ-functions formed by cancellation ((e^{−h} − 1 + h)/h² − ½ loses γ_4/h², which
is a change of h by 6·γ_4/h² since dφ3/dh → 1/6). ∂x_next/∂λ_j are central differences in float64 on
the actual operands (the D_k nearly cancel in the h/h_prev-weighted differences).

An x̂0 recovered from a model output m, x̂0 = α·x + β·m, differs between the two by at most
|Δx̂0| ≤ L·|Δx| + 2·γ_8·(|α|·|x| + |β|·|m| + 1): L = 1 bounds dx̂0/dx of the stand-in models
(0.9·sech² for the VP denoiser, 1 − 0.4·σ·sech² for the flow field; their x̂0 ≤ 0.92 never triggers
thresholding's rescale), and γ_8 counts four roundings where the stand-in model forms m in float32 and
three where the scheduler inverts it, each relative to at most that sum (the 1 bounds the stand-ins' own
terms, 0.9·tanh + 0.02·sin and 0.4·tanh + 0.05·sin, before their sum cancels). For ε the sum is
≈ 2·|x|/a: the 1/a conditioning of x̂0 = (x − b·ε̂)/a near the noisy end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from scratch_schedulers.samplers import (
    dpmpp_first_order_step,
    dpmpp_second_order_step,
    dpmpp_third_order_step,
    unipc_update,
)

from ..tolerances import gamma

F64 = torch.float64
Update = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], torch.Tensor]
CONVERSIONS = {"epsilon": lambda a, b: (1 / a, b / a), "v_prediction": lambda a, b: (a, b),
               "flow_prediction": lambda a, b: (1.0, b), "sample": lambda a, b: (0.0, 1.0)}


def x0_difference_bound(prediction_type: str, a: float, b: float, x_difference: torch.Tensor, x: torch.Tensor,
                        model_output: torch.Tensor) -> torch.Tensor:
    """Elementwise bound on |Δx̂0| of x̂0 = α·x + β·m between two float32 implementations (module docstring)."""
    alpha, beta = CONVERSIONS[prediction_type](a, b)
    condition = abs(alpha) * x.abs() + abs(beta) * model_output.abs() + 1
    return x_difference.abs() + 2 * gamma(8) * condition.to(F64)


def lam_error(a: float, b: float) -> float:
    """δλ of λ = log a − log b in float32: γ_3·(|log a| + |log b|); 0 where λ = ±∞ (a = 0 or b = 0: exact)."""
    return gamma(3) * (abs(math.log(a)) + abs(math.log(b))) if a > 0 and b > 0 else 0.0


def phi_error(lam: float, lam_next: float) -> float:
    """The change of h equivalent to diffusers' φ3 = (e^{−h} − 1 + h)/h² − ½ in float32: 6·γ_4/h²."""
    h = lam_next - lam
    return 6 * gamma(4) / h**2 if math.isfinite(h) and h > 0 else 0.0


def linear_update_bound(update: Update, operands: Sequence[torch.Tensor], operand_differences: Sequence[torch.Tensor],
                        lams: Sequence[torch.Tensor], lam_errors: Sequence[float]) -> torch.Tensor:
    """Elementwise bound on |Δ update(operands, λs)| between two float32 implementations (module docstring)."""
    operands = [v.to(F64) for v in operands]
    lams = [torch.as_tensor(lam, dtype=F64) for lam in lams]
    unit = torch.ones((), dtype=F64)
    weights = [abs(float(update([unit if j == k else 0 * unit for j in range(len(operands))], lams)))
               for k in range(len(operands))]
    bound = sum(w * (d.to(F64).abs() + 2 * gamma(4 * len(operands)) * v.abs())
                for w, d, v in zip(weights, operand_differences, operands, strict=True))
    for j, (lam, error) in enumerate(zip(lams, lam_errors, strict=True)):
        if error == 0 or not math.isfinite(float(lam)):
            continue  # λ = ±∞ (a = 0 or b = 0) is exact in both
        step = 1e-6 * max(1.0, abs(float(lam)))
        up, down = ([v + s * step if i == j else v for i, v in enumerate(lams)] for s in (1, -1))
        bound = bound + (update(operands, up) - update(operands, down)).abs() / (2 * step) * error
    return bound


def dpm_update(order: int, solver_type: str, halve_d2: bool, a_next, b_ratio) -> Update:
    """ScratchDPMSolverScheduler's DPM-Solver++ update of ``order``: f([x, D_0, D_1, ...], [..., λ, λ_next])."""
    def update(operands, lams):
        x, *ds = operands
        if order == 1:
            return dpmpp_first_order_step(x, ds[0], lams[-2], lams[-1], a_next, b_ratio)
        if order == 2:
            return dpmpp_second_order_step(x, ds[0], ds[1], *lams[-3:], a_next, b_ratio, solver_type)
        return dpmpp_third_order_step(x, *ds, *lams[-4:], a_next, b_ratio, halve_d2=halve_d2)
    return update


def unipc_step(order: int, corrector_order: int, variant: str, corrector_variant: str,
               a: float, b_ratio_corrector: float, a_next: float, b_ratio: float) -> Update:
    """UniC-corrected UniP step: f([x_start, D_0, D_1, ...], [..., λ_prev, λ, λ_next]).

    ``corrector_order`` 0: no corrector, x_start is this step's sample; else x_start is the previous step's
    (corrected) start, recomputed to λ with D_0 as one more point (UniC-p, p = ``corrector_order``).
    """
    def update(operands, lams):
        x, *ds = operands
        lam_next, lam = lams[-1], lams[-2]
        if corrector_order:
            if corrector_variant == "bh1" and not bool(torch.isfinite(lams[-3])):
                pass  # B(h) = h is infinite from λ = −∞: ours skips that correction
            else:
                points = [(lams[-3 - k], ds[1 + k]) for k in range(1, corrector_order)] + [(lam, ds[0])]
                x = unipc_update(x, ds[1], lams[-3], points, lam, a, b_ratio_corrector, corrector_variant)
        if order == 1:
            return dpmpp_first_order_step(x, ds[0], lam, lam_next, a_next, b_ratio)
        points = [(lams[-2 - k], ds[k]) for k in range(1, order)]
        return unipc_update(x, ds[0], lam, points, lam_next, a_next, b_ratio, variant)
    return update


def grid_lam_errors(a: Sequence[float], b: Sequence[float], lam: Sequence[torch.Tensor], indices: Sequence[int],
                    step_ends: Sequence[int]) -> list[float]:
    """δλ of the grid points ``indices`` (:func:`lam_error`), plus :func:`phi_error` at each end i of a step
    i − 1 → i the update takes (the step itself and, under UniC, the corrected one)."""
    return [lam_error(a[j], b[j]) + (phi_error(float(lam[j - 1]), float(lam[j])) if j in step_ends else 0.0)
            for j in indices]


def within_rounding(update: Update, ours: Sequence[torch.Tensor], theirs: Sequence[torch.Tensor],
                    lams: Sequence[torch.Tensor], lam_errors: Sequence[float], ours_next: torch.Tensor,
                    theirs_next: torch.Tensor) -> float:
    """max over the elements of |ours_next − theirs_next| / :func:`linear_update_bound` (≤ 1: within rounding)."""
    bound = linear_update_bound(update, ours, [o - t for o, t in zip(ours, theirs, strict=True)], lams, lam_errors)
    return float(((ours_next - theirs_next).to(F64).abs() / bound).max())


# ---- one-step samplers (DDPM, DDIM, flow Euler): x_next = c_x·x + c_m·m + noise --------------------------------
# The same bound with three operands: x, x̂0 (VP; its own check is x0_difference_bound) or the model output u (flow),
# and the noise term σ·z, whose two versions are compared directly.


def one_step_probe(make_twin: Callable[[], object], timestep, shape: tuple[int, ...], step_kwargs: dict,
                   generator_state: torch.Tensor | None, variance_block: torch.Tensor | None = None):
    """(c_x, c_m, noise) of a step x_next = c_x·x + c_m·m + noise (m: the model output; for VP twins configured
    with ``prediction_type="sample"`` and no clipping, m is x̂0), read off three calls of fresh twin schedulers
    with the same generator state; the noise term keeps the model's variance channels ``variance_block``."""
    def run(x_value: float, m_value: float) -> torch.Tensor:
        generator = None
        if generator_state is not None:
            generator = torch.Generator()
            generator.set_state(generator_state)
        m = torch.full(shape, m_value)
        m = m if variance_block is None else torch.cat([m, variance_block], dim=1)
        return make_twin().step(m, timestep, torch.full(shape, x_value), generator=generator,
                                **step_kwargs).prev_sample
    noise = run(0.0, 0.0)
    return float((run(1.0, 0.0) - noise).mean()), float((run(0.0, 1.0) - noise).mean()), noise


def one_step_bound(weights: Sequence[float], operands: Sequence[torch.Tensor],
                   differences: Sequence[torch.Tensor]) -> torch.Tensor:
    """Elementwise bound on |Δ Σ w_k·v_k| between two float32 implementations: Σ |w_k|·(|Δv_k| + 2·γ_6·|v_k|)
    (two products and two sums per term, each implementation rounding on its own)."""
    return sum(abs(w) * (d.to(F64).abs() + 2 * gamma(6) * v.to(F64).abs())
               for w, d, v in zip(weights, differences, operands, strict=True))


# ---- one step of a ScratchDPMSolverScheduler loop beside diffusers' ------------------------------------------------


def _grid(scheduler) -> tuple[list[float], list[float], list[torch.Tensor]]:
    return [float(v) for v in scheduler._a], [float(v) for v in scheduler._b], scheduler._lam


def dpm_step_ratio(scheduler, i: int, x0s: tuple[list, list], samples: tuple, nexts: tuple) -> float:
    """:func:`within_rounding` of DPM-Solver++ step i; ``x0s``: (ours, theirs) x̂0 per step so far."""
    a, b, lam = _grid(scheduler)
    order = scheduler._history[-1][3]
    points = range(i + 1 - order, i + 2)
    update = dpm_update(order, scheduler.config.solver_type, scheduler.config.third_order == "diffusers",
                        scheduler._a[i + 1], scheduler._b_ratio[i])
    operands = [[x, *d[: -order - 1 : -1]] for x, d in zip(samples, x0s, strict=True)]
    return within_rounding(update, *operands, [lam[j] for j in points], grid_lam_errors(a, b, lam, points, [i + 1]),
                           *nexts)


def unipc_step_ratio(scheduler, i: int, x0s: tuple[list, list], starts: tuple[list, list], orders: list[int],
                     samples: tuple, nexts: tuple) -> float:
    """:func:`within_rounding` of step i of a UniC-corrected UniP loop (corrector and predictor as one update of
    the previous step's start and the x̂0s); ``x0s``/``starts``: (ours, theirs) per step so far, ``orders`` ours."""
    a, b, lam = _grid(scheduler)
    variant = scheduler.config.solver_type
    corrector = orders[-2] if i else 0  # UniC-p of the previous step, p its order
    k = 1 + max(corrector, orders[-1] - 1)  # x̂0s the step reads
    points = range(i - max(corrector + 1, orders[-1] - 1), i + 2)
    update = unipc_step(orders[-1], corrector, variant, scheduler.config.corrector.removeprefix("unic_"), a[i],
                        b[i] / b[i - 1] if i else 1.0, scheduler._a[i + 1], scheduler._b_ratio[i])
    operands = [[s[-2] if corrector else x, *d[: -k - 1 : -1]] for s, d, x in zip(starts, x0s, samples, strict=True)]
    return within_rounding(update, *operands, [lam[j] for j in points],
                           grid_lam_errors(a, b, lam, points, [i, i + 1] if corrector else [i + 1]), *nexts)
