"""Training throughput: train.py's step loop vs a bare PyTorch loop, in one process.

Both loops train the same UNet2DModel preset with the same AdamW, batch and resolution:

* **bare** — synthetic tensors already in memory: ``randint`` timesteps, ``randn`` noise,
  ``add_noise``, forward, MSE, backward, ``optimizer.step``, ``zero_grad``. Nothing else.
* **train.py** — ``scratch_diffusion.training.run_training`` on the built-in digits (decoded once
  into tensors): Accelerate's ``accumulate``, the epoch-seeded DataLoader, the counter-based
  generator, augmentation, gradient clipping, the LR schedule, EMA, tensorboard logging and
  tqdm. Checkpoints and sample grids are switched off (they are periodic, not per step), and
  the first update of each loop is excluded from the timing as warm-up (the trainer's own
  ``TrainingSummary`` timing).

The loops alternate ``--repeats`` times and the medians are compared. On a GPU the clock is wall
time. On a CPU it is the process's CPU time with one torch thread (``--clock cpu``:
``TrainingSummary.cpu_seconds_per_step`` for train.py), which measures the work each loop does
and stays meaningful on a machine shared with other jobs; ``--clock wall`` measures wall time
instead. Prints one table and the ratio (target ≥ 0.85).

    python benchmarks/bench_training.py                      # small UNet, 16×16, batch 64
    python benchmarks/bench_training.py --preset tiny --steps 20 --results /tmp/training-tiny.json
    python benchmarks/bench_training.py --table              # the recorded table, measuring nothing

Every run records its images/s per repeat, settings and machine in ``--results`` (default
``benchmarks/results/training.json``, replaced); run it alone, since a job beside it measures contention.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from provenance import print_recorded
from results_io import environment, write_results

from scratch_diffusion.training import run_training
from scratch_diffusion.training.cli import parse_args as parse_train_args
from scratch_diffusion.training.models import build_unet
from scratch_diffusion.training.objectives import make_objective
from scratch_diffusion.training.optimization import make_optimizer

RESULTS = Path(__file__).resolve().parent / "results" / "training.json"
TARGET = 0.85  # train.py's images/s ≥ 0.85 × the bare loop's


def bare_loop(preset: str, batch: int, resolution: int, steps: int, clock) -> float:
    """Images/s of a minimal DDPM loop on synthetic tensors (first step excluded)."""
    args = parse_train_args(["--model_config_name_or_path", preset, "--resolution", str(resolution)])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as accelerate picks
    torch.manual_seed(0)
    unet = build_unet(preset, resolution, 1).to(device)
    unet.train()
    optimizer = make_optimizer(list(unet.parameters()), args)
    scheduler = make_objective(args).scheduler
    x0 = torch.rand(batch, 1, resolution, resolution, device=device) * 2 - 1
    start = None
    for step in range(steps + 1):
        if step == 1:
            start = clock()
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)
        noise = torch.randn_like(x0)
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (clock() - start)


def train_py_loop(preset: str, batch: int, resolution: int, steps: int, clock_name: str) -> float:
    """Images/s of train.py's loop, as timed by the trainer itself (first update excluded) on ``clock_name``."""
    with tempfile.TemporaryDirectory() as output_dir:
        argv = [
            "--output_dir", os.path.join(output_dir, "bench"),
            "--model_config_name_or_path", preset,
            "--resolution", str(resolution),
            "--train_batch_size", str(batch),
            "--max_train_steps", str(steps + 1),
            "--lr_warmup_steps", "0",
            "--checkpointing_steps", str(10**9),
            "--save_images_steps", str(10**9),
            "--eval_batch_size", "1",
            "--ddpm_num_inference_steps", "1",
        ]  # fmt: skip
        summary = run_training(argv)
    if clock_name == "wall":
        return summary.images_per_second
    return batch / summary.cpu_seconds_per_step  # one process, no accumulation: `batch` images per update


def table(record: dict[str, Any]) -> str:
    """The documentation's table of a recorded run: medians, every repeat, the ratio."""
    s = record["settings"]
    clock = {"cpu": "process CPU time", "wall": "wall time"}[s["clock"]]
    bare, ours = record["images_per_second"]["bare loop"], record["images_per_second"]["train.py loop"]
    ratio = statistics.median(ours) / statistics.median(bare)
    setting = f"`{s['preset']}` UNet, {s['resolution']}×{s['resolution']}, batch {s['batch_size']}, {s['device']}"
    return "\n".join([
        f"Images/s, median of {s['repeats']} alternating repeats of {s['steps']} timed updates ({clock}; every repeat "
        "in brackets):",
        "",
        f"| setting | bare loop | train.py loop | train.py / bare (target ≥ {TARGET}) |",
        "|---|---:|---:|---:|",
        f"| {setting} | {statistics.median(bare):.1f} ({', '.join(f'{v:.1f}' for v in bare)}) | "
        f"{statistics.median(ours):.1f} ({', '.join(f'{v:.1f}' for v in ours)}) | **{ratio:.2f}** |",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--resolution", type=int, default=16)
    p.add_argument("--steps", type=int, default=8, help="timed steps per loop (one more runs as warm-up)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clock", choices=("cpu", "wall"), help="default: wall on a GPU, cpu otherwise")
    p.add_argument("--results", type=Path, default=RESULTS, help="JSON file the run is recorded in")
    p.add_argument("--table", action="store_true", help="print the table recorded in --results; measure nothing")
    a = p.parse_args(argv)
    if a.table:
        print_recorded(a.results, table, "`python benchmarks/bench_training.py` (run it alone)")
        return
    a.clock = a.clock or ("wall" if torch.cuda.is_available() else "cpu")
    if a.clock == "cpu":
        torch.set_num_threads(1)
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    steps_per_epoch = 1797 // a.batch_size
    if a.steps + 1 > steps_per_epoch:
        p.error(f"--steps must stay within one digits epoch (≤ {steps_per_epoch - 1}) so every batch is full")

    results: dict[str, list[float]] = {"bare loop": [], "train.py loop": []}
    for repeat in range(a.repeats):
        results["bare loop"].append(bare_loop(a.preset, a.batch_size, a.resolution, a.steps, clock))
        results["train.py loop"].append(train_py_loop(a.preset, a.batch_size, a.resolution, a.steps, a.clock))
        print(
            f"repeat {repeat + 1}/{a.repeats}: bare {results['bare loop'][-1]:.1f} img/s, "
            f"train.py {results['train.py loop'][-1]:.1f} img/s",
            flush=True,
        )
    device = "cuda" if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} torch thread)"
    settings = {"preset": a.preset, "resolution": a.resolution, "batch_size": a.batch_size, "device": device,
                "clock": a.clock, "steps": a.steps, "repeats": a.repeats}  # fmt: skip
    record = {"environment": environment(), "settings": settings, "images_per_second": results}
    print()
    print(table(record))
    write_results(a.results, record)
    print(f"\nrecorded in {a.results}")


if __name__ == "__main__":
    main()
