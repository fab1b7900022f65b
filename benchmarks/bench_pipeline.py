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
    python benchmarks/bench_pipeline.py --steps 50 --clock wall
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS), choices=list(SCHEDULERS))
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None, help="default: cpu on CPU, wall on GPU")
    args = parser.parse_args(argv)

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
    worst_ratio, worst_share = 0.0, 0.0
    for name in args.schedulers:
        pipe = ScratchDiffusionPipeline(unet=unet, scheduler=SCHEDULERS[name]())
        pipe.set_progress_bar_config(disable=True)
        bare_scheduler = SCHEDULERS[name]()
        shape = (args.batch, 3, args.resolution, args.resolution)
        fixed_output = torch.randn(shape, generator=torch.manual_seed(1)).to(device) * 0.1

        def run_pipeline(pipe=pipe):
            return pipe(
                batch_size=args.batch, num_inference_steps=args.steps, generator=torch.manual_seed(0), output_type="pt"
            ).images

        def run_bare(scheduler=bare_scheduler):
            return bare_loop(unet, scheduler, args.batch, args.steps, seed=0)

        def run_scheduler(scheduler=bare_scheduler, output=fixed_output):
            return scheduler_only(output, scheduler, args.steps, seed=0)

        if device.type == "cpu":  # same computation, so the comparison is of overhead only
            torch.testing.assert_close(run_pipeline(), run_bare())
        times = {"bare": [], "pipeline": [], "scheduler": []}
        loops = [("bare", run_bare), ("pipeline", run_pipeline), ("scheduler", run_scheduler)]
        for round_index in range(args.repeats + 1):  # round 0 is warm-up; the order alternates
            for label, fn in loops if round_index % 2 else loops[::-1]:
                times[label].append(measure(fn, clock, sync))
        bare, piped, sched = (statistics.median(times[k][1:]) for k in ("bare", "pipeline", "scheduler"))
        # ratios of the runs made back to back, so slow drifts of a shared machine cancel
        ratio = statistics.median(p / b for p, b in zip(times["pipeline"][1:], times["bare"][1:]))
        share = statistics.median(s / b for s, b in zip(times["scheduler"][1:], times["bare"][1:]))
        worst_ratio, worst_share = max(worst_ratio, ratio), max(worst_share, share)
        print(f"{name:<28}{bare:>9.3f}{piped:>12.3f}{ratio:>8.3f}{sched:>13.4f}{share:>8.2%}")
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    print(
        f"pipeline / bare ≤ {TARGET_RATIO}: worst {worst_ratio:.3f} ({verdict(worst_ratio <= TARGET_RATIO)});  "
        f"scheduler share < {TARGET_SHARE:.0%}: worst {worst_share:.2%} ({verdict(worst_share < TARGET_SHARE)})"
    )


if __name__ == "__main__":
    main()
