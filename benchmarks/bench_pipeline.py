"""Sampling overhead: ScratchDiffusionPipeline vs a bare ``for t: unet → scheduler.step`` loop.

All loops run in one process on the same UNet2DModel, batch, steps and initial noise:

* **bare** — ``randn_tensor``, ``set_timesteps``, then ``unet(x, t)`` → ``scheduler.step`` per
  timestep, and the final ``(x / 2 + 0.5).clamp(0, 1)``. Nothing else.
* **pipeline** — ``pipe(batch_size, num_inference_steps, generator, output_type="pt")`` with the
  progress bar disabled: input checks, the parametrisation check, ``init_noise_sigma``,
  ``scale_model_input``, the step-kwargs lookup, the callback plumbing and postprocessing.
* **scheduler only** — the bare loop with the UNet replaced by a fixed tensor: what the
  scheduler costs, reported as a share of the bare loop.

The loops alternate ``--repeats`` times (in alternating order); the ratios printed are medians of
the ratios of back-to-back runs, so slow drifts of a shared machine cancel. On a CPU the clock is the
process's CPU time with one torch thread (``--clock cpu``): it measures the work each loop does
and stays meaningful on a machine shared with other jobs; ``--clock wall`` measures wall time
(the default on a GPU, where the loop is also synchronised once at the end). Targets: ratio
pipeline / bare ≤ 1.05 and scheduler share < 1 %.

    python benchmarks/bench_pipeline.py                     # 32×32, batch 4, 20 steps, 3 schedulers
    python benchmarks/bench_pipeline.py --steps 50 --clock wall --results /tmp/pipeline-wall.json
    python benchmarks/bench_pipeline.py --table             # the recorded table, measuring nothing

Every run records its rows, settings and machine in ``--results`` (default ``benchmarks/results/pipeline.json``,
replaced); run it alone, since a job beside it measures contention.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel
from diffusers.utils.torch_utils import randn_tensor
from provenance import print_recorded
from results_io import environment, write_results

from scratch_diffusion import (
    ScratchDDIMScheduler,
    ScratchDDPMScheduler,
    ScratchDiffusionPipeline,
    ScratchFlowMatchScheduler,
)

SCHEDULERS = {
    "ScratchDDIMScheduler": ScratchDDIMScheduler,
    "ScratchDDPMScheduler": ScratchDDPMScheduler,
    "ScratchFlowMatchScheduler": ScratchFlowMatchScheduler,
}
TARGET_RATIO, TARGET_SHARE = 1.05, 0.01
RESULTS = Path(__file__).resolve().parent / "results" / "pipeline.json"


def build_unet(resolution: int, device: torch.device) -> UNet2DModel:
    """A small DDPM-style UNet (≈1.2 M parameters): the scale of the project's demo models."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=resolution,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    )
    return unet.to(device).eval()


@torch.no_grad()
def bare_loop(unet, scheduler, batch: int, steps: int, seed: int) -> torch.Tensor:
    shape = (batch, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    x = randn_tensor(shape, generator=torch.manual_seed(seed), device=unet.device, dtype=unet.dtype)
    scheduler.set_timesteps(steps, device=unet.device)
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def scheduler_only(model_output: torch.Tensor, scheduler, steps: int, seed: int) -> torch.Tensor:
    x = randn_tensor(model_output.shape, generator=torch.manual_seed(seed), device=model_output.device)
    scheduler.set_timesteps(steps, device=model_output.device)
    for t in scheduler.timesteps:
        x = scheduler.step(model_output, t, x).prev_sample
    return x


def measure(fn, clock, sync) -> float:
    start = clock()
    fn()
    sync()
    return clock() - start


def time_scheduler(name: str, unet, args: argparse.Namespace, device, clock, sync) -> dict[str, Any]:
    """Alternating rounds of the bare loop, the pipeline and the scheduler alone; medians and paired ratios."""
    pipe = ScratchDiffusionPipeline(unet=unet, scheduler=SCHEDULERS[name]())
    pipe.set_progress_bar_config(disable=True)
    bare_scheduler = SCHEDULERS[name]()
    shape = (args.batch, 3, args.resolution, args.resolution)
    fixed_output = torch.randn(shape, generator=torch.manual_seed(1)).to(device) * 0.1

    def run_pipeline():
        return pipe(
            batch_size=args.batch, num_inference_steps=args.steps, generator=torch.manual_seed(0), output_type="pt"
        ).images

    def run_bare():
        return bare_loop(unet, bare_scheduler, args.batch, args.steps, seed=0)

    def run_scheduler():
        return scheduler_only(fixed_output, bare_scheduler, args.steps, seed=0)

    if device.type == "cpu":  # same computation, so the comparison is of overhead only
        torch.testing.assert_close(run_pipeline(), run_bare())
    times: dict[str, list[float]] = {"bare": [], "pipeline": [], "scheduler": []}
    loops = [("bare", run_bare), ("pipeline", run_pipeline), ("scheduler", run_scheduler)]
    for round_index in range(args.repeats + 1):  # round 0 is warm-up; the order alternates
        for label, fn in loops if round_index % 2 else loops[::-1]:
            times[label].append(measure(fn, clock, sync))
    # ratios of the runs made back to back, so slow drifts of a shared machine cancel
    return {
        "scheduler": name,
        **{f"{key}_seconds": statistics.median(values[1:]) for key, values in times.items()},
        "ratio": statistics.median(p / b for p, b in zip(times["pipeline"][1:], times["bare"][1:])),
        "share": statistics.median(s / b for s, b in zip(times["scheduler"][1:], times["bare"][1:])),
        "seconds": {key: values[1:] for key, values in times.items()},
    }


def table(record: dict[str, Any]) -> str:
    """The documentation's table of a recorded run."""
    s = record["settings"]
    clock = {"cpu": "process CPU time", "wall": "wall time"}[s["clock"]]
    lines = [
        f"UNet {s['unet_parameters_millions']:.2f} M parameters, {s['resolution']}×{s['resolution']}, batch "
        f"{s['batch']}, {s['steps']} steps; {clock} on {s['device']}, medians of {s['repeats']} alternating rounds:",
        "",
        f"| scheduler | bare loop s | pipeline s | pipeline / bare loop (target ≤ {TARGET_RATIO}) | "
        f"scheduler share of sampling (target < {TARGET_SHARE:.0%}) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in record["rows"]:
        lines.append(
            f"| `{row['scheduler']}` | {row['bare_seconds']:.3f} | {row['pipeline_seconds']:.3f} | "
            f"**{row['ratio']:.2f}** | {row['share']:.2%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS), choices=list(SCHEDULERS))
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None, help="default: cpu on CPU, wall on GPU")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON file the run is recorded in")
    parser.add_argument("--table", action="store_true", help="print the table recorded in --results; measure nothing")
    args = parser.parse_args(argv)
    if args.table:
        print_recorded(args.results, table, "`python benchmarks/bench_pipeline.py` (run it alone)")
        return

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clock_name = args.clock or ("wall" if device.type == "cuda" else "cpu")
    clock = time.perf_counter if clock_name == "wall" else time.process_time
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cpu":
        torch.set_num_threads(1)
    unet = build_unet(args.resolution, device)
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(
        f"device={device.type}  clock={clock_name}  UNet {params:.2f} M params  "
        f"batch={args.batch}  {args.resolution}×{args.resolution}  steps={args.steps}  repeats={args.repeats}"
    )
    print(f"{'scheduler':<28}{'bare s':>9}{'pipeline s':>12}{'ratio':>8}{'scheduler s':>13}{'share':>8}")
    rows = []
    for name in args.schedulers:
        row = time_scheduler(name, unet, args, device, clock, sync)
        rows.append(row)
        print(
            f"{name:<28}{row['bare_seconds']:>9.3f}{row['pipeline_seconds']:>12.3f}{row['ratio']:>8.3f}"
            f"{row['scheduler_seconds']:>13.4f}{row['share']:>8.2%}"
        )
    worst_ratio, worst_share = max(r["ratio"] for r in rows), max(r["share"] for r in rows)
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    print(
        f"pipeline / bare ≤ {TARGET_RATIO}: worst {worst_ratio:.3f} ({verdict(worst_ratio <= TARGET_RATIO)});  "
        f"scheduler share < {TARGET_SHARE:.0%}: worst {worst_share:.2%} ({verdict(worst_share < TARGET_SHARE)})"
    )
    device_text = f"the CPU ({torch.get_num_threads()} torch thread)" if device.type == "cpu" else device.type
    settings = {
        "device": device_text,
        "clock": clock_name,
        "unet_parameters_millions": params,
        "resolution": args.resolution,
        "batch": args.batch,
        "steps": args.steps,
        "repeats": args.repeats,
    }
    write_results(args.results, {"environment": environment(), "settings": settings, "rows": rows})
    print(f"recorded in {args.results}")


if __name__ == "__main__":
    main()
