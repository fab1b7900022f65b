"""Reconstruction error of DDIM inversion versus steps, for a saved pipeline and real digits.

For ``n`` of the built-in digits (``scratch_diffusion.metrics.digits_images``), invert them with
``pipe.invert`` (conditioned on their labels) and sample them back from the inverted latents with the
same deterministic sampler and step count, then print the per-dimension MSE of the reconstruction
(images in [0, 1], the convention of DDIM's Table 2: 0.014 at 10 steps to 0.0001 at 1000 on CIFAR-10).

The samplers are the model's own deterministic one (``native``: DDIM, trailing, for a VP model; flow Euler for a
flow model) and DPM-Solver++ (2M) on the model's path (``dpm``).

    python benchmarks/bench_inversion.py [outputs/demo/pipeline] [--num_images 64] [--steps 5 10 20 50 100]
    python benchmarks/bench_inversion.py --table          # the recorded table, measuring nothing

Every run records its rows, the pipeline and the machine in ``--results`` (default
``benchmarks/results/inversion.json``, replaced).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from provenance import print_recorded
from results_io import environment, write_results

from scratch_diffusion import metrics
from scratch_diffusion.pipelines import ScratchDiffusionPipeline
from scratch_schedulers import ScratchDDIMScheduler, ScratchDPMSolverScheduler, ScratchFlowMatchScheduler

RESULTS = Path(__file__).resolve().parent / "results" / "inversion.json"
SAMPLER_NAMES = {
    "ScratchDDIMScheduler": "DDIM (trailing)",
    "ScratchFlowMatchScheduler": "flow Euler",
    "ScratchDPMSolverScheduler": "DPM-Solver++ 2M",
}


def deterministic_scheduler(pipe: ScratchDiffusionPipeline, sampler: str):
    """The scheduler the round trip runs with, built from the saved one (``from_config``)."""
    config, flow = pipe.scheduler.config, pipe.trained_parametrization.path == "flow"
    if sampler == "dpm":
        if flow:
            return ScratchDPMSolverScheduler.from_config(
                config, use_flow_sigmas=True, prediction_type="flow_prediction"
            )
        return ScratchDPMSolverScheduler.from_config(config)
    if flow:
        return ScratchFlowMatchScheduler.from_config(config, solver="euler")
    return ScratchDDIMScheduler.from_config(config, timestep_spacing="trailing", clip_sample=False)


def round_trips(pipe: ScratchDiffusionPipeline, images, labels, steps: list[int], device: str) -> list[dict[str, Any]]:
    """Invert ``images`` and sample them back at each step count with ``pipe.scheduler``; one row per count."""
    conditional = {"class_labels": labels} if pipe.num_classes is not None else {}
    rows = []
    for count in steps:
        start = time.perf_counter()
        latents = pipe.invert(images, num_inference_steps=count, **conditional)  # one evaluation per step
        reconstruction = pipe(
            batch_size=len(images), latents=latents, num_inference_steps=count, output_type="pt", **conditional
        ).images
        rows.append({
            "scheduler": type(pipe.scheduler).__name__,
            "steps": count,
            "nfe": [count, pipe.num_timesteps],
            "mse": float((reconstruction.cpu() - images).square().mean()),
            "seconds": time.perf_counter() - start,
        })  # fmt: skip
        row = rows[-1]
        nfe = f"{row['nfe'][0]} + {row['nfe'][1]}"
        print(f"| {count:>5} | {nfe:>21} | {row['mse']:>11.2e} | {row['seconds']:>7.1f} |", flush=True)
    return rows


def table(record: dict[str, Any]) -> str:
    """Reconstruction MSE per step count (rows) and sampler (columns), from a recorded run."""
    rows, s = record["rows"], record["settings"]
    samplers = list(dict.fromkeys(row["scheduler"] for row in rows))
    steps = list(dict.fromkeys(row["steps"] for row in rows))
    lines = [
        f"Per-dimension MSE of invert → sample on [0, 1] images, {s['num_images']} built-in digits, pipeline "
        f"`{s['pipeline']}` ({'latent, ' if s['latent'] else ''}{s['path']} path, {s['prediction_type']}), "
        f"on {s['device']}:",
        "",
        "| steps | " + " | ".join(SAMPLER_NAMES.get(name, name) for name in samplers) + " |",
        "|---:|" + "---:|" * len(samplers),
    ]
    for count in steps:
        cells = [next(r for r in rows if r["scheduler"] == name and r["steps"] == count)["mse"] for name in samplers]
        lines.append(f"| {count} | " + " | ".join(f"{mse:.2e}" for mse in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", nargs="?", default="outputs/demo/pipeline", help="a saved pipeline folder")
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    parser.add_argument("--samplers", "--sampler", nargs="+", choices=("native", "dpm"), default=["native", "dpm"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON file the run is recorded in")
    parser.add_argument("--table", action="store_true", help="print the table recorded in --results; measure nothing")
    args = parser.parse_args(argv)
    if args.table:
        print_recorded(
            args.results, table, "`make demo`, then `python benchmarks/bench_inversion.py outputs/demo/pipeline`"
        )
        return

    pipe = ScratchDiffusionPipeline.from_pretrained(args.pipeline).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    images, labels = metrics.digits_images(pipe.image_shape[-1])  # with a VAE: the decoded size
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[: args.num_images]
    images, labels = (images[pick] + 1) / 2, labels[pick].tolist()
    parametrization = pipe.trained_parametrization
    rows = []
    for sampler in args.samplers:
        pipe.scheduler = deterministic_scheduler(pipe, sampler)
        print(f"{args.pipeline}: {parametrization.path} path, {parametrization.prediction_type}; "
              f"sampler {type(pipe.scheduler).__name__}; {len(images)} digits on {args.device}")  # fmt: skip
        print(f"| {'steps':>5} | {'NFE (invert + sample)':>21} | {'MSE per dim':>11} | {'seconds':>7} |")
        print(f"|{'-' * 7}|{'-' * 23}|{'-' * 13}|{'-' * 9}|")
        rows += round_trips(pipe, images, labels, args.steps, args.device)
    settings = {
        "pipeline": str(args.pipeline),
        "path": parametrization.path,
        "prediction_type": parametrization.prediction_type,
        "latent": pipe.vae is not None,
        "num_images": len(images),
        "device": args.device,
    }
    write_results(args.results, {"environment": environment(), "settings": settings, "rows": rows})
    print(f"recorded in {args.results}")


if __name__ == "__main__":
    main()
