"""Few-step accuracy, side by side: ODE endpoint error of ours and diffusers' samplers at 5, 10, 20 NFE.

Every deterministic scheduler samples a Gaussian mixture driven by its exact denoiser, in float32,
from the same initial noise; :func:`~scratch_schedulers.exact_denoiser.ode_endpoint_error` compares
each endpoint with the exact probability-flow ODE solution (float64 RK4 reference) and counts the
model evaluations. Beside it: the distribution error of the same samples (sliced W1, component
weights and spreads; :func:`~scratch_schedulers.exact_denoiser.mixture_error`). Two tables, the VP
path (ε-prediction, linear β) and the flow path (velocity, no shift), then the ratio of our best to
the best diffusers scheduler at each NFE (issue 10 goal: ≤ 0.5).

NFE is matched exactly: a multistep scheduler makes one evaluation per step; Heun makes 2n − 1 for
n steps, so it gets the largest n with 2n − 1 ≤ the target (3, 5, 10 steps: 5, 9, 19 evaluations).

    python benchmarks/bench_few_step.py [--nfe 5 10 20] [--n-samples 2000] [--mixture example ...]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from scratch_schedulers import ScratchDDIMScheduler, ScratchDPMSolverScheduler, ScratchFlowMatchScheduler
from scratch_schedulers.exact_denoiser import GaussianMixture, mixture_error, ode_endpoint_error, sampling_noise
from scratch_schedulers.scheduling_dpmsolver import FEW_STEP_CONFIG

FLOW_DPM = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
OURS_BEST = "ours: 3M + UniC, flow_uniform (FEW_STEP_CONFIG)"  # the documented few-step configuration: the goal's row
UNIPC_LIKE = {"solver_type": "bh2", "corrector": "unic_bh2", "time_grid": "flow_uniform"}
Factory = Callable[[], Any]


def vp_schedulers() -> dict[str, tuple[Factory, bool]]:
    """Name → (factory, is ours) on the VP path: ε-prediction, linear β, 1000 training steps."""
    return {
        OURS_BEST: (lambda: ScratchDPMSolverScheduler(**FEW_STEP_CONFIG), True),
        "ours: UniPC (UniP-2 + UniC bh2), flow_uniform": (lambda: ScratchDPMSolverScheduler(**UNIPC_LIKE), True),
        "ours: DPM-Solver++ 3M, flow_uniform": (
            lambda: ScratchDPMSolverScheduler(solver_order=3, time_grid="flow_uniform"), True),
        "ours: DPM-Solver++ 2M, flow_uniform": (lambda: ScratchDPMSolverScheduler(time_grid="flow_uniform"), True),
        "ours: DDIM trailing": (lambda: ScratchDDIMScheduler(clip_sample=False, timestep_spacing="trailing"), True),
        "DDIMScheduler trailing": (lambda: DDIMScheduler(clip_sample=False, timestep_spacing="trailing"), False),
        "DPMSolverMultistepScheduler": (DPMSolverMultistepScheduler, False),
        "DPMSolverMultistepScheduler Karras": (lambda: DPMSolverMultistepScheduler(use_karras_sigmas=True), False),
        "UniPCMultistepScheduler": (UniPCMultistepScheduler, False),
    }


def flow_schedulers() -> dict[str, tuple[Factory, bool]]:
    """Name → (factory, is ours) on the flow path x = (1 − σ)·x0 + σ·ε (velocity, shift 1)."""
    return {
        OURS_BEST: (lambda: ScratchDPMSolverScheduler(**FEW_STEP_CONFIG, **FLOW_DPM), True),
        "ours: UniPC (UniP-2 + UniC bh2), flow_uniform": (lambda: ScratchDPMSolverScheduler(**UNIPC_LIKE, **FLOW_DPM),
                                                          True),
        "ours: DPM-Solver++ 3M, flow_uniform": (
            lambda: ScratchDPMSolverScheduler(solver_order=3, time_grid="flow_uniform", **FLOW_DPM), True),
        "ours: DPM-Solver++ 2M, flow_uniform": (
            lambda: ScratchDPMSolverScheduler(time_grid="flow_uniform", **FLOW_DPM), True),
        "ours: flow Euler": (ScratchFlowMatchScheduler, True),
        "ours: flow Heun": (lambda: ScratchFlowMatchScheduler(solver="heun"), True),
        "FlowMatchEulerDiscreteScheduler": (FlowMatchEulerDiscreteScheduler, False),
        "FlowMatchHeunDiscreteScheduler": (FlowMatchHeunDiscreteScheduler, False),
        "DPMSolverMultistepScheduler flow": (lambda: DPMSolverMultistepScheduler(**FLOW_DPM), False),
        "UniPCMultistepScheduler flow": (lambda: UniPCMultistepScheduler(**FLOW_DPM), False),
    }


def mixtures() -> dict[str, GaussianMixture]:
    """The example mixture and two others (the few-step grid must not be tuned to one)."""
    angles = torch.arange(5, dtype=torch.float64) * (2 * math.pi / 5)
    radii = torch.tensor([[1.0], [1.5], [2.5], [1.2], [3.0]], dtype=torch.float64)
    ring = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1) * radii
    g = torch.Generator().manual_seed(0)
    return {
        "example": GaussianMixture.example(),
        "narrow-2d": GaussianMixture(weights=torch.tensor([0.35, 0.25, 0.2, 0.12, 0.08]), means=ring,
                                     stds=torch.tensor([0.08, 0.15, 0.25, 0.1, 0.4])),
        "wide-8d": GaussianMixture(weights=torch.tensor([0.6, 0.4]), means=torch.randn(2, 8, generator=g) * 0.7,
                                   stds=torch.tensor([0.9, 0.3])),
    }


def steps_for_nfe(factory: Factory, target: int) -> int:
    """The largest ``num_inference_steps`` whose schedule makes at most ``target`` model evaluations."""
    for steps in range(target, 0, -1):
        scheduler = factory()
        scheduler.set_timesteps(steps)
        if len(scheduler.timesteps) <= target:
            return steps
    raise ValueError(f"no step count gives at most {target} evaluations")


def few_step_rows(schedulers: dict[str, tuple[Factory, bool]], mixture: GaussianMixture, nfe_targets: Sequence[int],
                  n_samples: int, seed: int) -> list[dict[str, Any]]:
    """One row per (scheduler, NFE target): endpoint error, NFE and the distribution statistics."""
    rows = []
    for name, (factory, ours) in schedulers.items():
        for target in nfe_targets:
            steps = steps_for_nfe(factory, target)
            result = ode_endpoint_error(factory(), mixture, steps, n_samples=n_samples, seed=seed)
            rows.append({"scheduler": name, "ours": ours, "target": target, "steps": steps, "nfe": result.nfe,
                         "rms": result.rms_error, "max": result.max_error,
                         **mixture_error(result.samples, mixture)})
    return rows


def best_ratios(rows: Sequence[dict[str, Any]], nfe_targets: Sequence[int], ours_name: str | None = OURS_BEST
                ) -> dict[int, tuple[float, str]]:
    """Per NFE target: (RMS endpoint error of row ``ours_name`` / the best diffusers row's, that row's name).

    ``ours_name=None`` takes the best of our rows at each target instead of the documented configuration.
    """
    ratios = {}
    for target in nfe_targets:
        ours = min(r["rms"] for r in rows
                   if r["ours"] and r["target"] == target and ours_name in (None, r["scheduler"]))
        theirs = min((r for r in rows if not r["ours"] and r["target"] == target), key=lambda r: r["rms"])
        ratios[target] = (ours / theirs["rms"], theirs["scheduler"])
    return ratios


def format_rows(rows: Sequence[dict[str, Any]], floor: dict[str, float]) -> str:
    """Markdown: one line per scheduler, per NFE target the endpoint RMS / max and the sliced W1."""
    targets = sorted({r["target"] for r in rows})
    head = "| scheduler | " + " | ".join(f"NFE {t}: steps, RMS / max endpoint err, W1, weight/std err" for t in targets)
    lines = [head + " |", "|---" + "|---" * len(targets) + "|"]
    for name in dict.fromkeys(r["scheduler"] for r in rows):
        cells = []
        for t in targets:
            r = next(r for r in rows if r["scheduler"] == name and r["target"] == t)
            cells.append(f"{r['steps']} ({r['nfe']}): **{r['rms']:.2e}** / {r['max']:.2e}, "
                         f"{r['sliced_wasserstein']:.3f}, {r['weight_error']:.3f}/{r['std_error']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| exact samples (noise floor) | " + " | ".join(
        f"—: W1 {floor['sliced_wasserstein']:.3f}, {floor['weight_error']:.3f}/{floor['std_error']:.3f}"
        for _ in targets) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--n-samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixture", nargs="+", default=["example"], choices=sorted(mixtures()))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    for mixture_name in args.mixture:
        mixture = mixtures()[mixture_name]
        floor = sampling_noise(mixture, args.n_samples)
        for path, schedulers in (("VP (ε, linear β)", vp_schedulers()), ("flow (velocity)", flow_schedulers())):
            rows = few_step_rows(schedulers, mixture, args.nfe, args.n_samples, args.seed)
            print(f"\n### {path}, mixture {mixture_name!r}, {args.n_samples} samples, seed {args.seed}\n")
            print(format_rows(rows, floor))
            for label, ours_name in ((OURS_BEST, OURS_BEST), ("best of our rows", None)):
                print(f"\n{label} / best diffusers (RMS endpoint error; goal ≤ 0.5): " + ", ".join(
                    f"NFE {t}: {ratio:.2f} (vs {name})"
                    for t, (ratio, name) in best_ratios(rows, args.nfe, ours_name).items()))


if __name__ == "__main__":
    main()
