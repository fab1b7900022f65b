"""The demo's autoguidance guide (Karras et al., 2024): a bad version of the model itself, and what it costs.

The guide is the demo model's recipe (``training_argv``: same data, path, time distribution, VAE latents and
seed) with a smaller UNet (``--guide_model``, default the trainer's ``micro`` preset)
trained for fewer steps (``--guide_steps``), in this process through ``run_training`` with ``--guide_for`` the
demo's pipeline: the trainer saves its EMA weights into that pipeline as ``guide_unet`` (``attach_component``), so
``AutoGuidance(w)`` finds it and every loading story loads it. Its own pipeline folder (``<output_dir>/guide``) is
kept beside the model's, without tensorboard logs. Which recipe guides best was measured by
``benchmarks/bench_guidance.py --search``.

:func:`guide_cost` times one evaluation of the guide against one of the main UNet (same batch, interleaved, so a
busy machine slows both alike): the price of autoguidance's second evaluation, which the evaluation counts do not
show.
"""

from __future__ import annotations

import dataclasses
import shlex
import statistics
import time
from pathlib import Path

import torch

from scratch_diffusion.demo.config import DemoConfig
from scratch_diffusion.demo.training import training_argv
from scratch_diffusion.training import run_training

GUIDE_RECORD = "guide.json"  # beside the pipeline: what --reuse reads back


def guide_model_argument(config: DemoConfig) -> str:
    """``--model_config_name_or_path`` of the guide: ``--guide_model`` (a trainer preset or a JSON config), else the
    model's own."""
    return config.model if config.guide_model is None else config.guide_model


def guide_name(config: DemoConfig) -> str:
    """The guide's UNet as printed: its preset name, or its JSON file's stem."""
    model = config.guide_model or config.model
    return Path(model).stem if model.endswith(".json") else model


def guide_argv(
    config: DemoConfig, pipeline_dir: Path | None, output_dir: Path, class_conditional: bool = True
) -> list[str]:
    """``train.py``'s command line of the guide of ``pipeline_dir``: the demo recipe, the guide's UNet and steps,
    the cheapest outputs (no tensorboard, a one-image final sample) and ``--guide_for pipeline_dir`` (None: the
    guide stays in its own pipeline folder only)."""
    model = guide_model_argument(config)
    argv = training_argv(dataclasses.replace(config, model=model), config.guide_steps, output_dir, class_conditional)
    cheap = ["--logger", "none", "--eval_batch_size", "1", "--ddpm_num_inference_steps", "1"]
    return [*argv, *cheap, *(["--guide_for", str(pipeline_dir)] if pipeline_dir is not None else [])]


def train_guide(
    config: DemoConfig,
    pipeline_dir: Path | None = None,
    output_dir: Path | None = None,
    class_conditional: bool = True,
    attach: bool = True,
) -> dict:
    """Train the guide of ``pipeline_dir`` (default the demo's) into ``output_dir`` (default ``<output_dir>/guide``)
    and (``attach``) save it into the pipeline as ``guide_unet``; returns its record (command, steps, seconds)."""
    pipeline_dir = config.pipeline_dir if pipeline_dir is None else pipeline_dir
    output_dir = config.guide_dir if output_dir is None else output_dir
    argv = guide_argv(config, pipeline_dir if attach else None, output_dir, class_conditional)
    start = time.perf_counter()
    summary = run_training(argv)
    return {
        "model": guide_name(config),
        "steps": summary.global_step,
        "seconds": time.perf_counter() - start,
        "seconds_per_step": summary.seconds_per_step,
        "command": "python training/train.py " + shlex.join(argv),
        "argv": argv,
        "num_threads": torch.get_num_threads(),
    }


def num_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def guide_cost(pipe, batch_size: int = 250, repeats: int = 5, seed: int = 0) -> dict:
    """Milliseconds per forward pass of ``pipe.unet`` and ``pipe.guide_unet`` on one batch, and their ratio.

    The two are timed alternately on the same inputs (after one warm-up pass each), medians of ``repeats``: a
    guide evaluation's cost relative to a UNet evaluation, whatever else the machine runs.
    """
    unet, guide = pipe.unet, pipe.guide_unet
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, unet.config.in_channels, *([unet.config.sample_size] * 2))
    x = torch.randn(shape, generator=generator).to(unet.device, unet.dtype)
    t = torch.full((batch_size,), 500, device=unet.device)
    labels = None if pipe.num_classes is None else torch.zeros(batch_size, dtype=torch.long, device=unet.device)
    guide_labels = labels if guide.config.num_class_embeds is not None else None
    calls = {"unet": lambda: unet(x, t, class_labels=labels), "guide": lambda: guide(x, t, class_labels=guide_labels)}
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if unet.device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - start)
    unet_s, guide_s = statistics.median(seconds["unet"]), statistics.median(seconds["guide"])
    return {
        "batch_size": batch_size,
        "unet_ms": 1e3 * unet_s,
        "guide_ms": 1e3 * guide_s,
        "guide_to_unet_time": guide_s / unet_s,
        "unet_parameters": num_parameters(unet),
        "guide_parameters": num_parameters(guide),
    }
