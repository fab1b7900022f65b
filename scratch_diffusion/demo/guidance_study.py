"""The guidance study's models and sampling (``benchmarks/bench_guidance.py``), built from the demo's own pieces.

Per training seed, in one folder: the demo's class-conditional latent model (its VAE and UNet, ``train_model``),
the same recipe without classes on the same VAE's latents (``training_argv(..., class_conditional=False)``), the
demo's autoguidance guide for each (``train_guide``, attached as ``guide_unet``) and a noise-aware classifier for
the unconditional model (``training/train_classifier.py --pipeline``, attached as ``classifier``). A model whose
folder is complete is reused. :func:`sample_interleaved` samples several settings of one pipeline draw by draw,
each in turn, and times the pipeline calls alone, so the time ratios of settings measured in one process see
the same machine load.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

import torch

from scratch_diffusion import metrics
from scratch_diffusion.demo.cli import build_parser
from scratch_diffusion.demo.config import DemoConfig, resolve_config, use_quick_unet
from scratch_diffusion.demo.guide import GUIDE_RECORD, guide_cost, train_guide
from scratch_diffusion.demo.sampling import (
    DRAW_SEED_STRIDE,
    SampleSet,
    combine_draws,
    draw_images,
    record_evaluations,
    use_sampler,
)
from scratch_diffusion.demo.training import train_model, training_argv

# The noise-aware classifier (training/train_classifier.py --pipeline: the UNet's encoder, path and latents), on the
# metric's training split like the diffusion models, with σ drawn uniformly (flow t ~ U(0, 1)) rather than the UNet's
# logit-normal centred at low noise: the class is decided at high noise, where guidance needs the classifier. Tried
# on seed 0 (held-out accuracy by σ alike; guided at s = 4, n = 300): the UNet's distribution for 1500 steps 91 %
# class match at FD 1.77×, uniform for 3000 steps 96 % at 1.84× (s = 2: 78 % at 1.21× against 84 % at 0.97×).
CLASSIFIER_RECIPE = {"max_train_steps": 3000, "train_batch_size": 64, "learning_rate": 1e-3, "lr_warmup_steps": 100,
                     "weighting_scheme": "uniform"}  # fmt: skip
QUICK_CLASSIFIER_RECIPE = {"max_train_steps": 10, "train_batch_size": 16, "learning_rate": 1e-3, "lr_warmup_steps": 2}
TRAINING_RECORD = "training.json"
CLASSIFIER_METRICS = "classifier_metrics.json"


def study_config(seed: int, folder: Path, quick: bool, num_threads: int, *flags: str) -> DemoConfig:
    """The demo's settings for ``seed`` with its output folder ``folder`` (``--quick``: the toy UNet), as resolved
    from the demo's own command line (``flags`` are more of its options, e.g. ``--guide_model``)."""
    argv = ["--output_dir", str(folder), "--seed", str(seed), "--num_threads", str(num_threads), *flags]
    args = build_parser().parse_args([*argv, *(["--quick"] if quick else [])])
    config = resolve_config(args)
    if quick and args.model is None:
        use_quick_unet(config)
    return config


def complete(pipeline_dir: Path) -> bool:
    return (pipeline_dir / "model_index.json").is_file()


def prepare_conditional(config: DemoConfig, given: Path | None = None) -> dict:
    """The demo's class-conditional model in ``config.output_dir``: kept, copied from ``given``, or trained."""
    record_path = config.output_dir / TRAINING_RECORD
    if not complete(config.pipeline_dir):
        if given is not None:
            if not complete(given / "pipeline"):
                raise FileNotFoundError(f"{given} holds no demo pipeline (no pipeline/model_index.json).")
            shutil.copytree(given, config.output_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("logs"))
            if config.space == "latent" and not (config.vae_dir / "config.json").is_file():
                shutil.copytree(config.pipeline_dir / "vae", config.vae_dir, dirs_exist_ok=True)  # the guides' VAE
        else:
            record = train_model(config)
            record_path.write_text(json.dumps(record, indent=2) + "\n")
    return json.loads(record_path.read_text()) if record_path.is_file() else {"reused": str(given)}


def prepare_unconditional(config: DemoConfig, folder: Path) -> dict:
    """The demo's recipe without classes, on the conditional model's VAE and latents, in ``folder/pipeline``."""
    from scratch_diffusion.training import run_training

    record_path = folder / TRAINING_RECORD
    if not complete(folder / "pipeline"):
        argv = training_argv(config, config.max_train_steps, folder / "pipeline", class_conditional=False)
        argv += ["--logger", "none"]
        start = time.perf_counter()
        summary = run_training(argv)
        record = {"command": "python training/train.py " + shlex.join(argv), "steps": summary.global_step,
                  "seconds": time.perf_counter() - start, "num_threads": torch.get_num_threads()}  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps(record, indent=2) + "\n")
    return json.loads(record_path.read_text())


def prepare_guide(config: DemoConfig, pipeline_dir: Path, guide_dir: Path, class_conditional: bool) -> dict:
    """The demo's guide of ``pipeline_dir`` (kept if the pipeline has one and its record exists)."""
    record_path = pipeline_dir.parent / GUIDE_RECORD
    if not ((pipeline_dir / "guide_unet").is_dir() and record_path.is_file()):
        record = train_guide(config, pipeline_dir, guide_dir, class_conditional)
        record_path.write_text(json.dumps(record, indent=2) + "\n")
    return json.loads(record_path.read_text())


def classifier_argv(config: DemoConfig, pipeline_dir: Path, output_dir: Path, recipe: dict) -> list[str]:
    """``train_classifier.py``'s command line for the classifier of ``pipeline_dir``."""
    argv = ["--pipeline", str(pipeline_dir), "--output_dir", str(output_dir), "--digits_split", config.digits_split,
            "--seed", str(config.seed), "--logger", "none", "--checkpointing_steps", str(recipe["max_train_steps"] + 1),
            *(["--latent_cache_dir", str(config.latent_cache_dir)] if config.space == "latent" else [])]  # fmt: skip
    for name, value in recipe.items():
        argv += [f"--{name}", str(value)]
    return argv


def prepare_classifier(config: DemoConfig, pipeline_dir: Path, output_dir: Path, recipe: dict) -> dict:
    """The noise-aware classifier of ``pipeline_dir`` in ``output_dir``, attached to the pipeline as
    ``classifier``; returns its ``classifier_metrics.json`` (held-out accuracy by σ) with its command."""
    from scratch_diffusion.guidance.noisy_classifier import NoisyClassifier
    from scratch_diffusion.training.classifier import run_classifier_training
    from scratch_diffusion.training.export import attach_component

    if not (output_dir / CLASSIFIER_METRICS).is_file():
        argv = classifier_argv(config, pipeline_dir, output_dir, recipe)
        start = time.perf_counter()
        run_classifier_training(argv)
        record = json.loads((output_dir / CLASSIFIER_METRICS).read_text())
        record.update(command="python training/train_classifier.py " + shlex.join(argv),
                      seconds=time.perf_counter() - start)  # fmt: skip
        (output_dir / CLASSIFIER_METRICS).write_text(json.dumps(record, indent=1))
    attach_component(str(pipeline_dir), "classifier", NoisyClassifier.from_pretrained(str(output_dir)))  # this one
    return json.loads((output_dir / CLASSIFIER_METRICS).read_text())


def load_study_pipeline(pipeline_dir: Path, device: str):
    from scratch_diffusion.pipelines import ScratchDiffusionPipeline

    pipe = ScratchDiffusionPipeline.from_pretrained(str(pipeline_dir)).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def with_guide_cost(record: dict, pipe, batch_size: int) -> dict:
    """``record`` with the guide's cost per evaluation against the pipeline's UNet (:func:`guide_cost`)."""
    return {**record, "cost": guide_cost(pipe, batch_size)}


def use_guide_candidate(pipe, config: DemoConfig, folder: Path, model: str, steps: int, batch_size: int) -> dict:
    """Give ``pipe`` the guide ``model`` trained for ``steps`` (once, into ``folder/{model}-{steps}``, not attached
    to any saved pipeline); returns its record (training, when trained here) with its cost per evaluation."""
    import dataclasses

    from diffusers import UNet2DModel

    guide_dir, record_path = folder / f"{model}-{steps}", folder / f"{model}-{steps}.json"
    if not complete(guide_dir):
        guide_config = dataclasses.replace(config, guide_model=model, guide_steps=steps)
        record_path.write_text(json.dumps(train_guide(guide_config, None, guide_dir, attach=False), indent=2) + "\n")
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"model": model, "steps": steps}
    pipe.register_modules(guide_unet=UNet2DModel.from_pretrained(str(guide_dir / "unet")).to(pipe.device))
    return {**record, "cost": guide_cost(pipe, batch_size)}


def sample_interleaved(pipe, sets: list[SampleSet], seed: int, batch_size: int, metric) -> dict[int, float]:
    """Sample and score ``sets`` (each ``draws`` × ``n`` images), draw by draw with every set in turn.

    Sets ``evaluations``/``nfe`` (the pipeline's counts), ``images``/``labels`` (first draw) and ``results`` (the
    draws combined) of each set; returns each set's total seconds in the pipeline calls (by ``id``), the metric
    excluded. Draw k of every set uses the demo's seed ``seed + k·DRAW_SEED_STRIDE``: the same labels and noise.
    """
    seconds = {id(s): 0.0 for s in sets}
    scores: dict[int, list[dict]] = {id(s): [] for s in sets}
    for k in range(max(s.draws for s in sets)):
        draw_seed = seed + k * DRAW_SEED_STRIDE
        for s in (s for s in sets if k < s.draws):
            use_sampler(pipe, s.sampler)
            start = time.perf_counter()
            images, labels, evaluations = draw_images(pipe, s, draw_seed, batch_size)
            seconds[id(s)] += time.perf_counter() - start
            if k == 0:
                s.images, s.labels = images, labels
                record_evaluations(s, evaluations)
            scores[id(s)].append(metrics.evaluate_samples(images, labels, classifier=metric, seed=draw_seed))
    for s in sets:
        s.results = combine_draws(scores[id(s)])
        s.seconds = seconds[id(s)]
    return seconds
