"""Per-step overhead of our schedulers against their diffusers counterparts, in one process.

For each scheduler and shape, full ``for t in timesteps: step(...)`` loops (model output
precomputed, so only the scheduler is timed) of ours and diffusers' alternate; the table gives
the median µs/step of each and the median of the per-pair ratios (robust to load drift).
Target: every scheduler ≤ 1.0× diffusers' at both shapes on one thread (DDPM and DDIM, issue 2:
≤ 0.5× at (1, 3, 32, 32) and ≤ 0.8× at (16, 3, 64, 64)). Results, with the machine they were
measured on, are recorded in ``benchmarks/results/schedulers.json``; ``--table`` prints the
markdown table from that file without measuring.

    python benchmarks/bench_schedulers.py [--repeats 15] [--steps 50] [--threads 1] [--results PATH]
    python benchmarks/bench_schedulers.py --table
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler
from provenance import provenance
from results_io import environment, read_results, write_results

from scratch_schedulers import (
    ScratchDDIMScheduler,
    ScratchDDPMScheduler,
    ScratchDPMSolverScheduler,
    ScratchFlowMatchScheduler,
)

RESULTS = Path(__file__).resolve().parent / "results" / "schedulers.json"
PAIRS = {
    "DDPM": (ScratchDDPMScheduler, DDPMScheduler, {}),
    "DDIM": (ScratchDDIMScheduler, DDIMScheduler, {"eta": 0.0}),
    "flow Euler": (ScratchFlowMatchScheduler, FlowMatchEulerDiscreteScheduler, {}),
    "DPM-Solver++ 2M": (ScratchDPMSolverScheduler, DPMSolverMultistepScheduler, {}),
}
SHAPES = [(1, 3, 32, 32), (16, 3, 64, 64)]
TARGET_RATIO = 1.0


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


def measure_pairs(ours, theirs, shape, steps: int, repeats: int, step_kwargs: dict) -> list[tuple[float, float]]:
    """``repeats`` (ours, diffusers) seconds per step, loops alternating so that load drift hits both alike."""
    sample = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    loop_time(ours, sample, steps, step_kwargs), loop_time(theirs, sample, steps, step_kwargs)  # warm-up
    return [
        (loop_time(ours, sample, steps, step_kwargs), loop_time(theirs, sample, steps, step_kwargs))
        for _ in range(repeats)
    ]


def summary_row(name: str, reference: str, shape: Sequence[int], pairs: list[tuple[float, float]]) -> dict[str, Any]:
    """One recorded row: medians in µs/step, the median of per-pair ratios, and the pairs themselves (µs/step)."""
    return {
        "scheduler": name,
        "reference": reference,
        "shape": list(shape),
        "ours_us": round(statistics.median(o for o, _ in pairs) * 1e6, 3),
        "diffusers_us": round(statistics.median(t for _, t in pairs) * 1e6, 3),
        "ratio": round(statistics.median(o / t for o, t in pairs), 4),
        "pairs": [[round(o * 1e6, 3), round(t * 1e6, 3)] for o, t in pairs],
    }


def format_table(payload: dict[str, Any]) -> str:
    """The markdown table of a recorded payload (one row per scheduler and shape)."""
    settings = payload["settings"]
    lines = [
        f"{settings['steps']}-step loops × {settings['repeats']} pairs, {settings['threads']} torch thread(s); "
        f"ratio = median of per-pair ours/diffusers, target ≤ {TARGET_RATIO:.1f}",
        "",
        "| scheduler | diffusers class | shape | ours µs/step | diffusers µs/step | ratio (ours/diffusers) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in payload["rows"]:
        lines.append(
            f"| {row['scheduler']} | `{row['reference']}` | {tuple(row['shape'])} | {row['ours_us']:.1f} | "
            f"{row['diffusers_us']:.1f} | **{row['ratio']:.2f}** |"
        )
    return "\n".join(lines)


def measure(steps: int, repeats: int, threads: int) -> dict[str, Any]:
    """Every pair at every shape on ``threads`` torch threads, as the payload :func:`format_table` reads."""
    torch.set_num_threads(threads)
    rows = []
    for name, (ours_cls, theirs_cls, kwargs) in PAIRS.items():
        for shape in SHAPES:
            pairs = measure_pairs(ours_cls(), theirs_cls(), shape, steps, repeats, kwargs)
            rows.append(summary_row(name, theirs_cls.__name__, shape, pairs))
    settings = {"steps": steps, "repeats": repeats, "threads": threads}
    return {"environment": environment(), "settings": settings, "rows": rows}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="alternating (ours, diffusers) loop pairs")
    parser.add_argument("--steps", type=int, default=50, help="steps per sampling loop")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the target is set on one)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON file the results are recorded in")
    parser.add_argument("--table", action="store_true", help="print the table recorded in --results; measure nothing")
    args = parser.parse_args(argv)
    if not args.table:
        counts = {"--repeats": args.repeats, "--steps": args.steps, "--threads": args.threads}
        if min(counts.values()) < 1:
            parser.error(f"{counts} must all be ≥ 1")
        write_results(args.results, measure(args.steps, args.repeats, args.threads))
    try:
        payload = read_results(args.results)
    except FileNotFoundError as error:
        parser.error(str(error))
    print(format_table(payload))
    print(f"\n{provenance(args.results)}")


if __name__ == "__main__":
    main()
