"""Per-step overhead of our schedulers against their diffusers counterparts, in one process.

For each scheduler and shape, full ``for t in timesteps: step(...)`` loops (model output
precomputed, so only the scheduler is timed) of ours and diffusers' alternate; the table gives
the median µs/step of each and the median of the per-pair ratios (robust to load drift).
Targets (issue 2): DDPM and DDIM ≤ 0.5× at (1,3,32,32) and ≤ 0.8× at
(16,3,64,64); flow Euler ≤ 1.0×; DPM-Solver++ (2M, issue 10) ≤ 1.0×. Prints a markdown table.

    python benchmarks/bench_schedulers.py [--repeats 7] [--steps 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from scratch_schedulers import (
    ScratchDDIMScheduler,
    ScratchDDPMScheduler,
    ScratchDPMSolverScheduler,
    ScratchFlowMatchScheduler,
)

PAIRS = {
    "DDPM": (ScratchDDPMScheduler, DDPMScheduler, {}),
    "DDIM": (ScratchDDIMScheduler, DDIMScheduler, {"eta": 0.0}),
    "flow Euler": (ScratchFlowMatchScheduler, FlowMatchEulerDiscreteScheduler, {}),
    "DPM-Solver++ 2M": (ScratchDPMSolverScheduler, DPMSolverMultistepScheduler, {}),
}
SHAPES = [(1, 3, 32, 32), (16, 3, 64, 64)]


def loop_time(scheduler, sample: torch.Tensor, steps: int, step_kwargs: dict) -> float:
    """Seconds per step of one full sampling loop (the model output is a fixed tensor)."""
    model_output = 0.1 * sample
    generator = torch.Generator().manual_seed(1)
    scheduler.set_timesteps(steps)
    x = sample
    start = time.perf_counter()
    for t in scheduler.timesteps:
        x = scheduler.step(model_output, t, x, generator=generator, **step_kwargs).prev_sample
    return (time.perf_counter() - start) / steps


def compare(ours, theirs, shape, steps: int, repeats: int, step_kwargs: dict) -> tuple[float, float, float]:
    """Median µs/step of each and the median of per-pair ratios; loops alternate so drift cancels."""
    sample = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    loop_time(ours, sample, steps, step_kwargs), loop_time(theirs, sample, steps, step_kwargs)  # warm-up
    pairs = [(loop_time(ours, sample, steps, step_kwargs), loop_time(theirs, sample, steps, step_kwargs))
             for _ in range(repeats)]
    return (statistics.median(o for o, _ in pairs), statistics.median(t for _, t in pairs),
            statistics.median(o / t for o, t in pairs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps × {args.repeats} loops\n")
    print("| scheduler | shape | ours µs/step | diffusers µs/step | ratio (ours/diffusers) |")
    print("|---|---|---|---|---|")
    for name, (ours_cls, theirs_cls, kwargs) in PAIRS.items():
        for shape in SHAPES:
            ours, theirs, ratio = compare(ours_cls(), theirs_cls(), shape, args.steps, args.repeats, kwargs)
            print(f"| {name} | {tuple(shape)} | {ours * 1e6:.1f} | {theirs * 1e6:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
