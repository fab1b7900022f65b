"""Error of exact-denoiser samples versus model evaluations (NFE), for diffusers' and our schedulers.

Each scheduler samples ``GaussianMixture.example()`` driven by the closed-form denoiser of
:mod:`scratch_schedulers.exact_denoiser`; the table gives, per step count, the sliced
Wasserstein-1 distance and the component errors of :func:`~scratch_schedulers.exact_denoiser.mixture_error`,
after a first row with the same statistics of exact samples (the noise floor). Prints markdown.

    python benchmarks/bench_exact_denoiser.py [--steps 5 20 100] [--n-samples 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

from scratch_schedulers import ScratchDDIMScheduler, ScratchDDPMScheduler, ScratchFlowMatchScheduler
from scratch_schedulers.exact_denoiser import error_table

# (row key, column title) of the printed table, left to right.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("scheduler", "scheduler"),
    ("steps", "steps"),
    ("nfe", "NFE"),
    ("sliced_wasserstein", "sliced W1"),
    ("weight_error", "weight err"),
    ("std_error", "std err (rel)"),
    ("mean_error", "mean err (/std)"),
)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of ``error_table`` rows (floats with four significant digits)."""

    def cell(value: Any) -> str:
        if value is None:
            return "—"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" if key == "scheduler" else "---:" for key, _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cell(row.get(key)) for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def default_factories() -> dict[str, Callable[[], Any]]:
    """diffusers' DDPM, DDIM and flow Euler schedulers and this project's (with Heun), by table row name."""
    return {
        "diffusers DDPMScheduler": lambda: DDPMScheduler(clip_sample=False),
        "diffusers DDIMScheduler": lambda: DDIMScheduler(clip_sample=False, timestep_spacing="trailing"),
        "diffusers FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler,
        "ScratchDDPMScheduler": lambda: ScratchDDPMScheduler(clip_sample=False),
        "ScratchDDIMScheduler": lambda: ScratchDDIMScheduler(clip_sample=False, timestep_spacing="trailing"),
        "ScratchFlowMatchScheduler": ScratchFlowMatchScheduler,
        "ScratchFlowMatchScheduler (heun)": lambda: ScratchFlowMatchScheduler(solver="heun"),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Prints the error-versus-NFE table for the default schedulers."""
    parser = argparse.ArgumentParser(description="Error of exact-denoiser samples versus model evaluations.")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    parser.add_argument("--n-samples", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the tensors are tiny: more threads only add synchronisation overhead
    rows = error_table(default_factories(), args.steps, n_samples=args.n_samples, seed=args.seed)
    print(f"Exact denoiser on GaussianMixture.example(), {args.n_samples} samples, seed {args.seed}\n")
    print(format_table(rows))


if __name__ == "__main__":
    main()
