"""``python -m scratch_diffusion.metrics``: evaluate a saved pipeline or an image folder, print and save the numbers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from scratch_diffusion.metrics.cache import CACHE_ENV_VAR
from scratch_diffusion.metrics.evaluation import DEFAULT_CONFIDENCE_THRESHOLD, evaluate_samples
from scratch_diffusion.metrics.feature_spaces import ALIASES, DIGITS, feature_extractor
from scratch_diffusion.metrics.sources import load_image_folder, sample_pipeline
from scratch_diffusion.metrics.summary import markdown_summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scratch_diffusion.metrics",
        description="Offline sample quality of a saved pipeline or an image folder: Fréchet distance and KID "
        "against held-out real digits in a chosen feature space, each beside the real-vs-real baseline and the "
        "noise ceiling.",
    )
    parser.add_argument("path", help="a saved pipeline folder (with model_index.json) or a folder of images")
    parser.add_argument("--num_samples", type=int, default=500, help="images to generate from a pipeline")
    parser.add_argument("--num_inference_steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="sampling and baseline seed")
    parser.add_argument("--batch_size", type=int, default=256, help="images per pipeline call")
    parser.add_argument("--guidance_scale", type=float, default=1.0, help="for class-conditional pipelines")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="run code shipped in the pipeline folder when its pipeline class is not installed",
    )
    parser.add_argument(
        "--features",
        default=DIGITS,
        help=f"feature space: {DIGITS!r} (default, the digits CNN), "
        + ", ".join(f"{k!r} ({v})" for k, v in ALIASES.items())
        + ", a transformers backbone folder or Hub id, or 'package.module:callable' returning a FeatureExtractor",
    )
    parser.add_argument("--features_batch_size", type=int, default=64, help="images per backbone forward pass")
    parser.add_argument("--features_dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--kid_subsets", type=int, default=20, help="KID subsets (std over subsets)")
    parser.add_argument("--baseline_draws", type=int, default=10, help="real-vs-real draws of the baseline")
    parser.add_argument("--confidence_threshold", type=float, default=DEFAULT_CONFIDENCE_THRESHOLD)
    parser.add_argument("--cache_dir", default=None, help=f"classifier cache (default: ${CACHE_ENV_VAR} or ~/.cache)")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown", help="what to print")
    parser.add_argument("--output", default=None, help="also write the results as JSON to this file")
    return parser


def check_args(args: argparse.Namespace) -> str | None:
    """The first problem with the command line (naming the value and what is allowed), or None."""
    path = Path(args.path)
    if not path.is_dir():
        return f"{str(path)!r} is not a folder (a saved pipeline or a folder of images)."
    if args.num_samples < 2:
        return f"--num_samples must be at least 2, got {args.num_samples}."
    for name in ("batch_size", "num_inference_steps", "features_batch_size", "kid_subsets", "baseline_draws"):
        if getattr(args, name) < 1:
            return f"--{name} must be at least 1, got {getattr(args, name)}."
    if not np.isfinite(args.guidance_scale):
        return f"--guidance_scale {args.guidance_scale} is not allowed; pass a finite number."
    if not 0 < args.confidence_threshold < 1:
        return f"--confidence_threshold {args.confidence_threshold} is not allowed; pass a number in (0, 1)."
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            return f"--device {args.device!r} is not a device; pass cpu, cuda or cuda:<index>."
        available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
        if not available.get(device.type, False) or (
            device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count()
        ):
            usable = [name for name, ok in available.items() if ok]
            return f"--device {args.device!r} is not available here; available: {usable}."
    return None


def main(argv: list[str] | None = None) -> int:
    """Command line; exit status 0, or 2 with a one-line ``error:`` on stderr for bad input or a bad folder."""
    args = build_parser().parse_args(argv)
    path = Path(args.path)
    problem = check_args(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if (path / "model_index.json").is_file():
        try:
            images, labels = sample_pipeline(
                path,
                num_samples=args.num_samples,
                num_inference_steps=args.num_inference_steps,
                seed=args.seed,
                batch_size=args.batch_size,
                guidance_scale=args.guidance_scale,
                device=args.device,
                trust_remote_code=args.trust_remote_code,
            )
        except (OSError, ValueError) as error:  # a corrupt folder, or a value the pipeline refuses
            print(f"error: {error}", file=sys.stderr)
            return 2
        source = {"pipeline": str(path), "num_inference_steps": args.num_inference_steps, "seed": args.seed}
        if labels is not None:
            source["guidance_scale"] = args.guidance_scale
    else:
        try:
            images, labels = load_image_folder(path)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        source = {"image_folder": str(path)}
    extractor = None
    if args.features.strip() != DIGITS:
        try:
            extractor = feature_extractor(
                args.features, device=args.device, batch_size=args.features_batch_size, dtype=args.features_dtype
            )
        except (OSError, ValueError, TypeError) as error:  # not found / offline, a bad plug-in
            print(f"error: --features {args.features!r}: {error}", file=sys.stderr)
            return 2
    results = evaluate_samples(
        images,
        labels,
        feature_extractor=extractor,
        cache_dir=args.cache_dir,
        confidence_threshold=args.confidence_threshold,
        seed=args.seed,
        baseline_draws=args.baseline_draws,
        kid_subsets=args.kid_subsets,
    )
    results = {**results, "source": source}
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    if args.format == "json":
        print(json.dumps(results, indent=2))
    else:
        print(markdown_summary(results, title=str(path)))
    return 0
