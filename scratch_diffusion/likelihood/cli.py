"""``python -m scratch_diffusion.likelihood PATH``: bits/dim of a saved pipeline by the ODE and by the bound.

Evaluates the pipeline's UNet on the built-in digits (the held-out split of ``metrics.data.digits_split``,
the data the demo model did not train on) or on an image folder (``metrics.sources.load_image_folder``),
and prints bits/dim with the standard error over images and the time taken; ``--output`` writes JSON.

* ``--method ode``: the probability-flow ODE on uniformly dequantised data (``units``), any model.
* ``--method bound``: the variational bound with the discretised decoder. A VP model is bounded on its
  own chain; a flow model through the path change on the DDPM chain ``ScratchDDPMScheduler()``
  (linear β, T = 1000, ``--variance_type``): a rigorous bound on −log P of the model the DDPM sampler
  runs with this UNet, which is not the same generative model as the flow ODE.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from scratch_diffusion.metrics.data import digits_split
from scratch_diffusion.metrics.sources import load_image_folder
from scratch_diffusion.pipelines.loading import load_pipeline
from scratch_schedulers import ScratchDDPMScheduler
from scratch_schedulers.noise_path import parametrization_of
from scratch_schedulers.scheduling_ddpm import VARIANCE_TYPES

from .ode_likelihood import DIVERGENCES, SOLVERS, ode_log_likelihood
from .pipeline_model import pipeline_model, trained_scheduler
from .units import bits_per_dim, check_on_8bit_grid, dequantize, dequantized_bits_per_dim
from .variational_bound import TERM_SAMPLINGS, variational_bound


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scratch_diffusion.likelihood", description=__doc__.split("\n")[0])
    parser.add_argument("path", help="saved pipeline folder (or Hub id)")
    parser.add_argument("--data", default="digits", help="'digits' (held-out split) or an image folder")
    parser.add_argument("--method", choices=("ode", "bound", "both"), default="both")
    parser.add_argument("--num_images", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--solver", choices=SOLVERS, default="heun")
    parser.add_argument("--num_steps", type=int, default=100, help="ODE steps of euler/heun")
    parser.add_argument("--rtol", type=float, default=1e-5, help="adaptive solver tolerances")
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--divergence", choices=DIVERGENCES, default="hutchinson")
    parser.add_argument("--num_probes", type=int, default=1, help="Rademacher probes of the Hutchinson divergence")
    parser.add_argument("--bound_terms", type=int, default=None, help="evaluate K of the T−1 KL terms (default all)")
    parser.add_argument("--term_sampling", choices=TERM_SAMPLINGS, default="stratified")
    parser.add_argument(
        "--variance_type",
        choices=VARIANCE_TYPES,
        default=None,
        help="bound: default the VP scheduler's own, fixed_large for a flow model",
    )
    parser.add_argument(
        "--labels",
        choices=("null", "given"),
        default="null",
        help="class-conditional UNet: null class (unconditional p(x)) or the data's labels (p(x|y))",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--trust_remote_code", action="store_true")
    return parser


def load_data(data: str, resolution: int, num_images: int) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """(images on the 8-bit grid, labels or None, description) of ``--data``."""
    if num_images < 1:
        raise ValueError(f"--num_images={num_images}; it must be ≥ 1.")
    if data == "digits":
        split = digits_split(resolution=resolution)
        images, labels, name = split.holdout_images, split.holdout_labels, "digits (held-out split)"
    else:
        images, labels = load_image_folder(data)
        name = f"image folder {data}"
        if images.shape[-1] != resolution:
            raise ValueError(f"{data}: images are {images.shape[-1]} px (grayscale); the UNet takes {resolution} px.")
    count = min(num_images, len(images))
    return check_on_8bit_grid(images[:count]), None if labels is None else labels[:count], name


def _summary(values: torch.Tensor, seconds: float, **settings) -> dict:
    n = len(values)
    stderr = float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return {"bits_per_dim": float(values.mean()), "stderr": stderr, "seconds": seconds, "num_images": n, **settings}


def _batches(images: torch.Tensor, labels: torch.Tensor | None, batch_size: int):
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size], None if labels is None else labels[start : start + batch_size]


def evaluate_ode(pipe, images, labels, args) -> dict:
    scheduler = trained_scheduler(pipe)
    generator = torch.Generator().manual_seed(args.seed)
    values, nfe, start = [], 0, time.perf_counter()
    for batch, batch_labels in _batches(images, labels, args.batch_size):
        model = pipeline_model(pipe, scheduler, batch_labels)
        result = ode_log_likelihood(
            model, dequantize(batch, generator).to(pipe.unet.device), scheduler, solver=args.solver,
            num_steps=args.num_steps, divergence=args.divergence, num_probes=args.num_probes, generator=generator,
            rtol=args.rtol, atol=args.atol,
        )  # fmt: skip
        values.append(dequantized_bits_per_dim(result.log_likelihood.cpu(), result.num_dims))
        nfe = max(nfe, result.nfe)
    path = parametrization_of(scheduler).path
    settings = {"solver": args.solver, "divergence": args.divergence, "nfe": nfe, "path": path}
    if args.solver == "adaptive":
        settings.update(rtol=args.rtol, atol=args.atol)
    else:
        settings["num_steps"] = args.num_steps
    if args.divergence == "hutchinson":
        settings["num_probes"] = args.num_probes
    return _summary(torch.cat(values), time.perf_counter() - start, **settings)


def evaluate_bound(pipe, images, labels, args) -> dict:
    scheduler = trained_scheduler(pipe)
    via_path_change = parametrization_of(scheduler).path != "vp"
    if via_path_change:
        scheduler = ScratchDDPMScheduler(variance_type=args.variance_type or "fixed_large")
    generator = torch.Generator().manual_seed(args.seed)
    totals, parts, start = [], [], time.perf_counter()
    for batch, batch_labels in _batches(images, labels, args.batch_size):
        terms = variational_bound(
            pipeline_model(pipe, scheduler, batch_labels),
            batch.to(pipe.unet.device),
            scheduler,
            variance_type=args.variance_type,
            num_terms=args.bound_terms,
            term_sampling=args.term_sampling,
            generator=generator,
        )
        totals.append(bits_per_dim(terms.total.cpu(), terms.num_dims))
        parts.append((len(batch), terms.terms_bits_per_dim()))
    n = sum(count for count, _ in parts)
    mean_parts = {key: sum(count * p[key] for count, p in parts) / n for key in parts[0][1]}
    return _summary(
        torch.cat(totals),
        time.perf_counter() - start,
        terms=mean_parts,
        via_path_change=via_path_change,
        scheduler=type(scheduler).__name__,
        variance_type=args.variance_type or scheduler.config.get("variance_type", "fixed_small"),
        num_terms=args.bound_terms or scheduler.config.num_train_timesteps - 1,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        pipe = load_pipeline(args.path, args.trust_remote_code).to(device)
        pipe.unet.eval().requires_grad_(False)
        images, labels, data_name = load_data(args.data, int(pipe.unet.config.sample_size), args.num_images)
    except (OSError, ValueError) as error:
        print(f"likelihood: error: {error}", file=sys.stderr)
        return 2
    if args.labels == "null" or pipe.num_classes is None:
        labels = None
    elif labels is None:
        print(f"likelihood: error: --labels given, but {data_name} has no labels.", file=sys.stderr)
        return 2
    results = {
        "model": str(args.path),
        "data": data_name,
        "labels": args.labels if pipe.num_classes else None,
        "num_dims": images[0].numel(),
        "seed": args.seed,
    }
    methods = ("ode", "bound") if args.method == "both" else (args.method,)
    for method in methods:
        evaluate = evaluate_ode if method == "ode" else evaluate_bound
        results[method] = result = evaluate(pipe, images, labels, args)
        note = " (DDPM chain through the path change)" if result.get("via_path_change") else ""
        print(
            f"{method}{note}: {result['bits_per_dim']:.4f} ± {result['stderr']:.4f} bits/dim over "
            f"{result['num_images']} images ({data_name}) in {result['seconds']:.1f} s"
        )
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0
