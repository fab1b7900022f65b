"""The demo behind ``make demo``: train on the built-in digits, sample with every sampler, measure.

    python -m scratch_diffusion.demo                      # ≈ 5 min training + a few minutes of sampling
    python -m scratch_diffusion.demo --reuse              # keep the trained model, re-sample and re-measure
    python -m scratch_diffusion.demo --quick              # seconds: a toy UNet, for tests

Five steps, each with a progress bar:

1. **train** a small class-conditional ``UNet2DModel`` on scikit-learn's digits (16×16) with
   ``training/train.py``'s ``train`` in this process (two torch threads by default);
2. the trainer **saves** the pipeline, its model card and tensorboard logs in ``<output_dir>/pipeline``;
3. **sample** with each sampler that reads the trained parametrisation (flow Euler and flow Heun
   for a flow model; DDPM and DDIM for a DDPM-family one) at several step counts, one requested
   class per image (drawn like the data's labels), and with classifier-free guidance at several scales;
4. **evaluate** every sample set with :mod:`scratch_diffusion.metrics` (Fréchet distance in a digits
   classifier's feature space, beside the real-vs-real baseline at the same sample size) and write
   ``metrics.json``, ``metrics.md`` and the figure ``demo.png`` (grids: one row per class; quality
   against steps);
5. **print** where everything is, the best sampler beside the baseline, and how to load the pipeline.

Sampling cost is kept in check in three stages:

* ``sweep``: every sampler × step count at guidance ``--guidance_scale`` (default 1: the
  conditional model alone, one UNet evaluation per step), on ``--num_sweep_samples`` images;
* ``guidance``: the sweep's best sampler/steps at each scale of ``--guidance_sweep`` (w > 1 runs
  the conditional and null-class halves in one batch: twice the cost), same number of images;
* ``final``: the ``--num_final`` best sweep settings again, on ``--num_eval_samples`` images (1000
  by default: the Fréchet distance is noisy below that). The reported "best" comes from this stage.

Every Fréchet distance is printed beside the real-vs-real baseline at the same sample size.

Nothing is reused silently: without ``--reuse`` an earlier run's outputs in ``--output_dir`` are
replaced (the run says so); with ``--reuse`` the trained pipeline is kept and the run says which.
The digits classifier of the metric is cached across runs (``$SCRATCH_DIFFUSION_CACHE``); the run
says whether it was loaded or trained.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from scratch_diffusion import metrics

QUALITY_BAR = {"fd_ratio_max": 1.5, "class_match_min": 0.9}
PIPELINE_SUBDIR = "pipeline"
OUTPUT_FILES = ("metrics.json", "metrics.md", "demo.png", "training.json")
SAMPLERS = {"flow": ("flow Euler", "flow Heun"), "vp": ("DDIM", "DDPM")}

# The recipe `make demo` trains with: the best quality found for ≈ 5 minutes on 2 CPU cores
# (README, section "The demo", lists what was tried).
DEFAULTS = {
    "objective": "flow",
    "prediction_type": None,  # ddpm only: epsilon (default) or v_prediction
    "model": "tiny",
    "max_train_steps": 800,
    "train_batch_size": 64,
    "learning_rate": 1e-3,
    "lr_warmup_steps": 100,
    "class_dropout_prob": 0.1,
    "step_counts": (5, 10, 25, 50),
    "guidance_scale": 1.0,
    "guidance_sweep": (1.5, 3.0),
    "num_sweep_samples": 200,
    "num_eval_samples": 1000,
    "num_final": 2,
}
# --quick: a toy UNet (two levels, no attention) and a handful of steps and samples, for tests.
QUICK_UNET = {
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 4,
    "add_attention": False,
}
QUICK = {
    "max_train_steps": 20,
    "train_batch_size": 16,
    "lr_warmup_steps": 2,
    "step_counts": (2, 4),
    "guidance_sweep": (2.0,),
    "num_sweep_samples": 40,
    "num_eval_samples": 60,
    "num_final": 1,
}
GRID_COLUMNS = 8  # samples per class in each grid of the figure


class DemoError(RuntimeError):
    """A bad command line or output folder, found before any work (exit status 2)."""


# ---- command line --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scratch_diffusion.demo",
        description="Train a class-conditional diffusion model on the built-in digits, sample it with every "
        "sampler at several step counts, and measure quality offline (metrics.json, metrics.md, demo.png).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--output_dir", default="outputs/demo", help="where everything is written")
    p.add_argument("--reuse", action="store_true", help="keep the pipeline trained by an earlier run: skip training")
    p.add_argument("--quick", action="store_true", help="a seconds-long run with a toy UNet (for tests)")
    p.add_argument("--seed", type=int, default=0, help="training, sampling and baseline seed")
    p.add_argument("--num_threads", type=int, default=2, help="torch CPU threads (0: leave torch's default)")
    p.add_argument("--device", default=None, help="sampling device; default cuda if available, else cpu")

    train = p.add_argument_group("training (ignored with --reuse)")
    train.add_argument("--objective", choices=("flow", "ddpm"), default=None, help=f"default {DEFAULTS['objective']}")
    train.add_argument(
        "--prediction_type", choices=("epsilon", "v_prediction"), default=None, help="ddpm only; default epsilon"
    )
    train.add_argument(
        "--model", default=None, help=f"UNet preset (tiny, small, base) or JSON config; default {DEFAULTS['model']}"
    )
    length = train.add_mutually_exclusive_group()
    length.add_argument(
        "--max_train_steps", type=int, default=None, help=f"training steps; default {DEFAULTS['max_train_steps']}"
    )
    length.add_argument(
        "--train_minutes",
        type=float,
        default=None,
        help="train for about this many minutes instead: the step count is calibrated on this machine first",
    )
    train.add_argument("--train_batch_size", type=int, default=None, help=f"default {DEFAULTS['train_batch_size']}")
    train.add_argument("--learning_rate", type=float, default=None, help=f"default {DEFAULTS['learning_rate']}")
    train.add_argument("--lr_warmup_steps", type=int, default=None, help=f"default {DEFAULTS['lr_warmup_steps']}")
    train.add_argument(
        "--class_dropout_prob", type=float, default=None, help=f"default {DEFAULTS['class_dropout_prob']}"
    )
    train.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True, help="EMA weights")

    sample = p.add_argument_group("sampling and evaluation")
    sample.add_argument(
        "--step_counts",
        type=int,
        nargs="+",
        default=None,
        help=f"default {' '.join(map(str, DEFAULTS['step_counts']))}",
    )
    sample.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help=f"classifier-free guidance; default {DEFAULTS['guidance_scale']}",
    )
    sample.add_argument(
        "--guidance_sweep",
        type=float,
        nargs="*",
        default=None,
        help="guidance scales scored at the sweep's best sampler/steps; default "
        + " ".join(map(str, DEFAULTS["guidance_sweep"])),
    )
    sample.add_argument(
        "--num_sweep_samples",
        type=int,
        default=None,
        help=f"images per sampler × steps in the sweep; default {DEFAULTS['num_sweep_samples']}",
    )
    sample.add_argument(
        "--num_eval_samples",
        type=int,
        default=None,
        help=f"images per setting in the final stage (reported numbers); default {DEFAULTS['num_eval_samples']}",
    )
    sample.add_argument(
        "--num_final", type=int, default=None, help=f"best sweep settings re-scored; default {DEFAULTS['num_final']}"
    )
    sample.add_argument("--sample_batch_size", type=int, default=250, help="images per pipeline call")
    return p


@dataclass
class DemoConfig:
    """The resolved settings of one run (command line over ``QUICK`` over ``DEFAULTS``)."""

    output_dir: Path
    reuse: bool
    quick: bool
    seed: int
    num_threads: int
    device: str
    objective: str
    prediction_type: str | None
    model: str
    max_train_steps: int | None
    train_minutes: float | None
    train_batch_size: int
    learning_rate: float
    lr_warmup_steps: int
    class_dropout_prob: float
    use_ema: bool
    step_counts: list[int]
    guidance_scale: float
    guidance_sweep: list[float]
    num_sweep_samples: int
    num_eval_samples: int
    num_final: int
    sample_batch_size: int

    @property
    def pipeline_dir(self) -> Path:
        return self.output_dir / PIPELINE_SUBDIR


def resolve_config(args: argparse.Namespace) -> DemoConfig:
    """Fill unset options from ``QUICK`` (with ``--quick``) then ``DEFAULTS``; raise DemoError on bad values."""
    base = {**DEFAULTS, **(QUICK if args.quick else {})}

    def pick(name):
        value = getattr(args, name)
        return base[name] if value is None else value

    objective = pick("objective")
    if objective == "flow" and args.prediction_type is not None:
        raise DemoError("--prediction_type applies to --objective ddpm; flow matching predicts the velocity.")
    max_train_steps = pick("max_train_steps") if args.train_minutes is None else None
    config = DemoConfig(
        output_dir=Path(args.output_dir),
        reuse=args.reuse,
        quick=args.quick,
        seed=args.seed,
        num_threads=args.num_threads,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        objective=objective,
        prediction_type=(args.prediction_type or "epsilon") if objective == "ddpm" else None,
        model=pick("model"),
        max_train_steps=max_train_steps,
        train_minutes=args.train_minutes,
        train_batch_size=pick("train_batch_size"),
        learning_rate=pick("learning_rate"),
        lr_warmup_steps=pick("lr_warmup_steps"),
        class_dropout_prob=pick("class_dropout_prob"),
        use_ema=args.use_ema,
        step_counts=sorted(set(pick("step_counts"))),
        guidance_scale=pick("guidance_scale"),
        guidance_sweep=list(pick("guidance_sweep")),
        num_sweep_samples=pick("num_sweep_samples"),
        num_eval_samples=pick("num_eval_samples"),
        num_final=pick("num_final"),
        sample_batch_size=args.sample_batch_size,
    )
    checks = [
        (config.max_train_steps is None or config.max_train_steps >= 1, "--max_train_steps must be ≥ 1"),
        (config.train_minutes is None or config.train_minutes > 0, "--train_minutes must be > 0"),
        (all(n >= 1 for n in config.step_counts), "--step_counts must be ≥ 1"),
        (config.num_sweep_samples >= 10, "--num_sweep_samples must be ≥ 10 (one per class at least)"),
        (config.num_eval_samples >= 10, "--num_eval_samples must be ≥ 10"),
        (config.num_final >= 1, "--num_final must be ≥ 1"),
        (config.sample_batch_size >= 1, "--sample_batch_size must be ≥ 1"),
        (config.num_threads >= 0, "--num_threads must be ≥ 0"),
        (0 <= config.class_dropout_prob < 1, "--class_dropout_prob must be in [0, 1)"),
        (config.class_dropout_prob > 0 or config.reuse, "--class_dropout_prob 0 trains no null class: no guidance"),
        (config.guidance_scale >= 0 and all(g >= 0 for g in config.guidance_sweep), "guidance scales must be ≥ 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise DemoError(message + ".")
    return config


# ---- 1-2. training -----------------------------------------------------------------------------------


def training_argv(config: DemoConfig, max_train_steps: int) -> list[str]:
    """The ``training/train.py`` command line of the demo model."""
    argv = [
        "--output_dir", str(config.pipeline_dir),
        "--class_conditional",
        "--class_dropout_prob", str(config.class_dropout_prob),
        "--objective", config.objective,
        "--model_config_name_or_path", config.model,
        "--train_batch_size", str(config.train_batch_size),
        "--max_train_steps", str(max_train_steps),
        "--learning_rate", str(config.learning_rate),
        "--lr_scheduler", "cosine",
        "--lr_warmup_steps", str(config.lr_warmup_steps),
        "--seed", str(config.seed),
        "--use_ema" if config.use_ema else "--no-use_ema",
        "--logging_steps", str(max(1, min(10, max_train_steps // 10))),
        "--save_images_steps", str(max(1, max_train_steps // 5)),  # 5 sample grids in tensorboard
        "--eval_batch_size", "20",  # two per class
        "--ddpm_num_inference_steps", "25",
        "--checkpointing_steps", str(max_train_steps + 1),  # no training-state checkpoints
    ]  # fmt: skip
    if config.prediction_type is not None:
        argv += ["--prediction_type", config.prediction_type]
    return argv


def reset_accelerate_state() -> None:
    """Each in-process training run builds its own Accelerator."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def calibrate_steps(config: DemoConfig, minutes: float, probe_steps: int = 12) -> tuple[int, float]:
    """Steps that fit in ``minutes`` here: times ``probe_steps`` updates of the same UNet, batch and objective.

    Returns (steps, measured seconds per step). The probe's first update is excluded (warm-up); the
    trainer's own overhead (EMA, logging, sample grids) is a few per cent, so 95 % of the budget is used.
    """
    from scratch_diffusion.training.cli import parse_args
    from scratch_diffusion.training.losses import make_objective
    from scratch_diffusion.training.models import build_unet
    from scratch_diffusion.training.train import make_optimizer

    args = parse_args(training_argv(config, 1))
    device = torch.device(config.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = build_unet(args.model_config_name_or_path, args.resolution, 1, 10).to(device)
        optimizer = make_optimizer(list(unet.parameters()), args)
        objective = make_objective(args)
        x0 = torch.rand(args.train_batch_size, 1, args.resolution, args.resolution, device=device) * 2 - 1
        labels = torch.randint(0, 11, (args.train_batch_size,), device=device)
        generator = torch.Generator(device=device).manual_seed(0)
        start = 0.0
        for step in tqdm(range(probe_steps + 1), desc="calibrating", leave=False):
            if step == 1:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            loss = objective.loss(lambda x, t: unet(x, t, class_labels=labels).sample, x0, generator)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
    per_step = (time.perf_counter() - start) / probe_steps
    return max(1, int(0.95 * minutes * 60 / per_step)), per_step


def train_model(config: DemoConfig) -> dict:
    """Train into ``config.pipeline_dir`` (in this process); returns what ``training.json`` records."""
    from scratch_diffusion.training.cli import parse_args, validate_args
    from scratch_diffusion.training.train import train

    record: dict = {}
    steps = config.max_train_steps
    if config.train_minutes is not None:
        steps, per_step = calibrate_steps(config, config.train_minutes)
        record["calibration"] = {"train_minutes": config.train_minutes, "seconds_per_step": per_step, "steps": steps}
        print(f"  --train_minutes {config.train_minutes:g}: {per_step * 1e3:.0f} ms per step here → {steps} steps")
    argv = training_argv(config, steps)
    args = parse_args(argv)
    validate_args(args)
    reset_accelerate_state()
    start = time.perf_counter()
    try:
        summary = train(args)
    finally:
        reset_accelerate_state()
    seconds = time.perf_counter() - start
    record.update(
        command="python training/train.py " + shlex.join(argv),
        argv=argv,
        objective=config.objective,
        prediction_type=config.prediction_type,
        model=config.model,
        steps=summary.global_step,
        train_batch_size=config.train_batch_size,
        seconds=seconds,
        images_per_second=summary.images_per_second,
        num_threads=torch.get_num_threads(),
        device=config.device,
    )
    return record


def prepare_output_dir(config: DemoConfig) -> dict | None:
    """Clear an earlier run's outputs (saying so), or check what ``--reuse`` keeps.

    Returns the earlier ``training.json`` record with ``--reuse`` (None when there is none).
    Only files this demo writes are removed; anything else in the folder is left alone.
    """
    out, pipeline = config.output_dir, config.pipeline_dir
    if config.reuse:
        if not (pipeline / "model_index.json").is_file():
            raise DemoError(f"--reuse: no trained pipeline at {pipeline} (no model_index.json); run without --reuse.")
        record_path = out / "training.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else None
        how = (
            f"{record['objective']}, {record['steps']} steps, {record['seconds'] / 60:.1f} min"
            if record
            else "no training.json beside it"
        )
        print(f"Reusing the trained pipeline at {pipeline} ({how}); training skipped (--reuse).")
        for name in ("metrics.json", "metrics.md", "demo.png"):
            if (out / name).is_file():
                print(f"  {out / name} will be replaced.")
        return record
    if pipeline.exists():
        if any(pipeline.iterdir()) and not (pipeline / "model_index.json").is_file():
            raise DemoError(
                f"{pipeline} exists and is not a pipeline written by the demo; move it or pick --output_dir."
            )
        print(f"Replacing the earlier run in {out}: removing {pipeline} (pass --reuse to keep a trained model).")
        shutil.rmtree(pipeline)
    for name in OUTPUT_FILES:
        if (out / name).is_file():
            (out / name).unlink()
    return None


# ---- 3. sampling ---------------------------------------------------------------------------------------


@dataclass
class SampleSet:
    """One sampler × steps × guidance setting, its images and its scores."""

    sampler: str
    steps: int
    guidance_scale: float
    n: int
    stage: str  # "sweep", "guidance" or "final"
    nfe: int = 0  # UNet evaluations per image (a guided evaluation runs both halves in one batch)
    seconds: float = 0.0
    images: torch.Tensor | None = field(default=None, repr=False)  # (n, 1, 16, 16) in [-1, 1]
    labels: torch.Tensor | None = field(default=None, repr=False)
    results: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.sampler}, {self.steps} steps, w={self.guidance_scale:g}"

    def row(self) -> dict:
        keep = {k: v for k, v in asdict(self).items() if k not in ("images", "labels", "results")}
        return {**keep, **self.results}


def make_scheduler(sampler: str, saved_config):
    """The scheduler of ``sampler`` built from the saved pipeline's scheduler config (``from_config`` swap)."""
    from scratch_schedulers import ScratchDDIMScheduler, ScratchDDPMScheduler, ScratchFlowMatchScheduler

    if sampler == "flow Euler":
        return ScratchFlowMatchScheduler.from_config(saved_config, solver="euler")
    if sampler == "flow Heun":
        return ScratchFlowMatchScheduler.from_config(saved_config, solver="heun")
    if sampler == "DDIM":
        return ScratchDDIMScheduler.from_config(saved_config, timestep_spacing="trailing")
    if sampler == "DDPM":
        return ScratchDDPMScheduler.from_config(saved_config, timestep_spacing="trailing")
    raise ValueError(f"unknown sampler {sampler!r}")


def evaluations_per_image(scheduler, steps: int) -> int:
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


@torch.no_grad()
def requested_labels(n: int, seed: int) -> torch.Tensor:
    """``n`` class labels drawn i.i.d. from the digits' class frequencies (seeded).

    Not 0, 1, …, 9, 0, …: the metric's real-data baseline draws real digits at random, so their
    class counts vary; exactly balanced samples would score lower by that alone (at n = 200 a
    balanced real draw scores about 9 against 14 for a random one). Labels drawn like the data's
    keep the comparison like for like.
    """
    _, data_labels = metrics.digits_images()
    frequencies = torch.bincount(data_labels, minlength=metrics.NUM_CLASSES).to(torch.float64)
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(frequencies, n, replacement=True, generator=generator)


def sample_set(pipe, sample: SampleSet, seed: int, batch_size: int, bar: tqdm) -> None:
    """Fill ``sample.images`` and ``sample.labels``; the same seed gives every setting the same labels and noise."""
    pipe.scheduler = make_scheduler(sample.sampler, pipe.scheduler.config)
    sample.nfe = evaluations_per_image(pipe.scheduler, sample.steps)
    labels = requested_labels(sample.n, seed)
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    chunks = []
    start = time.perf_counter()
    for begin in range(0, sample.n, batch_size):
        size = min(batch_size, sample.n - begin)

        def advance(_pipe, _i, _t, _tensors, size=size):
            bar.update(size)
            return {}

        output = pipe(
            batch_size=size,
            num_inference_steps=sample.steps,
            generator=generator,
            class_labels=labels[begin : begin + size].tolist(),
            guidance_scale=sample.guidance_scale,
            output_type="np",
            callback_on_step_end=advance,
        )
        chunks.append(metrics.images_from_numpy(output.images))
    sample.seconds = time.perf_counter() - start
    sample.images, sample.labels = torch.cat(chunks), labels


def run_stage(pipe, samples: list[SampleSet], config: DemoConfig, classifier, desc: str) -> None:
    """Sample and score ``samples``; one progress bar counting image × UNet evaluations."""
    total = sum(s.n * evaluations_per_image(make_scheduler(s.sampler, pipe.scheduler.config), s.steps) for s in samples)
    with tqdm(total=total, desc=desc, unit="img·step", unit_scale=True, dynamic_ncols=True) as bar:
        for sample in samples:
            bar.set_postfix_str(sample.name)
            sample_set(pipe, sample, config.seed, config.sample_batch_size, bar)
            sample.results = metrics.evaluate_samples(
                sample.images, sample.labels, classifier=classifier, seed=config.seed
            )
            r = sample.results
            bar.write(
                f"      {sample.name} (n={sample.n}): FD {r['fd']:.2f} vs real {r['fd_real_baseline']:.2f} "
                f"(×{r['fd_ratio']:.2f}), class match {100 * r['class_match']:.1f} %, {sample.seconds:.0f} s"
            )


# ---- 4. reports ---------------------------------------------------------------------------------------


def pick_best(samples: list[SampleSet]) -> SampleSet:
    """Lowest FD ratio (FD over the real baseline at the same n) among ``samples``."""
    return min(samples, key=lambda s: s.results["fd_ratio"])


def quality_verdict(best: SampleSet, guided: list[SampleSet]) -> dict:
    """The issue's bar: best FD ≤ 1.5× the real baseline; requested class ≥ 90 % (best and every guided set)."""
    r = best.results
    guided_match = min((s.results["class_match"] for s in guided), default=None)
    fd_ok = r["fd_ratio"] is not None and r["fd_ratio"] <= QUALITY_BAR["fd_ratio_max"]
    matches = [m for m in (r["class_match"], guided_match) if m is not None]
    match_ok = bool(matches) and min(matches) >= QUALITY_BAR["class_match_min"]
    return {
        **QUALITY_BAR,
        "fd_ratio": r["fd_ratio"],
        "class_match": r["class_match"],
        "guided_class_match_min": guided_match,
        "guided_scales": sorted({s.guidance_scale for s in guided}),
        "met": bool(fd_ok and match_ok),
    }


def guided_text(verdict: dict) -> str:
    """``" (with guidance w = 1.5, 3: 99.5 % at the lowest)"`` (empty without guided sets)."""
    if verdict["guided_class_match_min"] is None:
        return ""
    scales = ", ".join(f"{g:g}" for g in verdict["guided_scales"])
    return f" (with guidance w = {scales}: {100 * verdict['guided_class_match_min']:.1f} % at the lowest)"


def markdown_table(samples: list[SampleSet], best: SampleSet) -> str:
    """One row per sample set: FD beside the real-vs-real baseline at the same n, class match."""
    lines = [
        "| stage | sampler | steps | UNet evals | guidance | n | FD ↓ | real baseline (same n) | FD / baseline "
        "| class match | confident | sampling s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in samples:
        r = s.results
        bold = "**" if s is best else ""
        lines.append(
            f"| {s.stage} | {s.sampler} | {s.steps} | {s.nfe} | {s.guidance_scale:g} | {s.n} "
            f"| {bold}{r['fd']:.2f}{bold} | {r['fd_real_baseline']:.2f} ± {r['fd_real_baseline_std']:.2f} "
            f"| {bold}{r['fd_ratio']:.2f}×{bold} | {100 * r['class_match']:.1f} % "
            f"| {100 * r['confident_fraction']:.1f} % | {s.seconds:.1f} |"
        )
    return "\n".join(lines)


def class_grid(sample: SampleSet, num_classes: int, columns: int = GRID_COLUMNS, pad: int = 1) -> np.ndarray:
    """A (rows = classes) × ``columns`` mosaic in [0, 1] of the first images of each class (white gaps)."""
    images = (sample.images[:, 0].clamp(-1, 1).numpy() + 1) / 2
    h, w = images.shape[1:]
    grid = np.ones((num_classes * (h + pad) + pad, columns * (w + pad) + pad), np.float32)
    for c in range(num_classes):
        members = np.flatnonzero(sample.labels.numpy() == c)[:columns]
        for j, index in enumerate(members):
            top, left = pad + c * (h + pad), pad + j * (w + pad)
            grid[top : top + h, left : left + w] = images[index]
    return grid


def save_figure(
    sweep: list[SampleSet], guidance: list[SampleSet], final: list[SampleSet], path: Path, num_classes: int
) -> None:
    """The demo's figure (matplotlib, Agg).

    Rows of sample grids (one row of digits per class): one per sampler across the step counts, and
    one across guidance scales at the sweep's best sampler/steps. Below, FD / baseline and class
    match against UNet evaluations per image, and both against the guidance scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    samplers = list(dict.fromkeys(s.sampler for s in sweep))
    steps = sorted({s.steps for s in sweep})
    by_key = {(s.sampler, s.steps): s for s in sweep}
    top = pick_best(sweep)
    scales = sorted([top, *guidance], key=lambda s: s.guidance_scale)
    cols = max(len(steps), len(scales), 4)
    panel_rows = len(samplers) + (1 if guidance else 0)
    fig = plt.figure(figsize=(2.3 * cols, 2.95 * panel_rows + 3.4), dpi=100)
    grid = fig.add_gridspec(panel_rows + 1, cols, height_ratios=[2.95] * panel_rows + [3.4])

    def panel(row: int, col: int, sample: SampleSet, title: str) -> None:
        ax = fig.add_subplot(grid[row, col])
        ax.imshow(class_grid(sample, num_classes), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        r = sample.results
        ax.set_title(f"{title}\nFD ×{r['fd_ratio']:.2f}, match {100 * r['class_match']:.0f} %", fontsize=7.5)
        if col == 0:
            ax.set_ylabel("class 0 → 9", fontsize=7.5)

    for i, sampler in enumerate(samplers):
        for j, n_steps in enumerate(steps):
            if (sampler, n_steps) in by_key:
                panel(i, j, by_key[(sampler, n_steps)], f"{sampler}, {n_steps} steps")
    if guidance:
        for j, sample in enumerate(scales):
            panel(len(samplers), j, sample, f"{sample.sampler}, {sample.steps} st., w={sample.guidance_scale:g}")

    ax_fd = fig.add_subplot(grid[-1, : cols // 2])
    ax_match = fig.add_subplot(grid[-1, cols // 2 : 3 * cols // 4])
    ax_w = fig.add_subplot(grid[-1, 3 * cols // 4 :])
    w = sweep[0].guidance_scale
    for k, sampler in enumerate(samplers):
        rows = sorted((s for s in sweep if s.sampler == sampler), key=lambda s: s.nfe)
        color = f"C{k}"
        x = [s.nfe for s in rows]
        ax_fd.plot(x, [s.results["fd_ratio"] for s in rows], "o-", color=color, label=f"{sampler}, n={rows[0].n}")
        ax_match.plot(x, [100 * s.results["class_match"] for s in rows], "o-", color=color, label=sampler)
        for s in rows:
            ax_fd.annotate(str(s.steps), (s.nfe, s.results["fd_ratio"]), fontsize=6, xytext=(2, 3),
                           textcoords="offset points")  # fmt: skip
        finals = [s for s in final if s.sampler == sampler]
        if finals:
            ax_fd.plot([s.nfe for s in finals], [s.results["fd_ratio"] for s in finals], "*", ms=10, color=color,
                       label=f"{sampler}, n={finals[0].n}")  # fmt: skip
            ax_match.plot([s.nfe for s in finals], [100 * s.results["class_match"] for s in finals], "*", ms=10,
                          color=color)  # fmt: skip
    ax_fd.axhline(1.0, color="k", lw=0.8, label="real vs real")
    ax_fd.axhline(QUALITY_BAR["fd_ratio_max"], color="k", lw=0.8, ls="--", label="bar (1.5×)")
    for ax in (ax_fd, ax_match):
        ax.set_xscale("log")
        ax.set_xlabel("UNet evaluations per image", fontsize=8)
    ax_fd.set_yscale("log")
    for axis in (ax_fd.xaxis, ax_fd.yaxis, ax_match.xaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(NullFormatter())
    ax_fd.set_ylabel("FD / real baseline (same n)", fontsize=8)
    ax_fd.set_title(f"quality vs cost (w={w:g}; point labels: steps)", fontsize=8.5)
    ax_fd.legend(fontsize=6, loc="upper right")
    ax_match.axhline(100 * QUALITY_BAR["class_match_min"], color="k", lw=0.8, ls="--", label="bar (90 %)")
    ax_match.set_ylabel("classified as requested (%)", fontsize=8)
    ax_match.set_title("class match", fontsize=8.5)
    ax_match.legend(fontsize=6)
    if guidance:
        ws = [s.guidance_scale for s in scales]
        ax_w.plot(ws, [s.results["fd_ratio"] for s in scales], "o-", color="C3")
        ax_w.set_ylabel("FD / real baseline", color="C3", fontsize=8)
        ax_w2 = ax_w.twinx()
        ax_w2.plot(ws, [100 * s.results["class_match"] for s in scales], "s--", color="C2")
        ax_w2.set_ylabel("class match (%)", color="C2", fontsize=8)
        ax_w.set_xlabel("guidance scale w", fontsize=8)
        ax_w.set_title(f"guidance ({top.sampler}, {top.steps} st.)", fontsize=8.5)
    else:
        ax_w.axis("off")
    for ax in fig.axes:
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ---- 5. the run ----------------------------------------------------------------------------------------


def load_command(pipeline_dir: Path, steps: int, guidance_scale: float) -> str:
    """A one-line shell command that loads the pipeline and saves one sample per class."""
    code = (
        "from scratch_diffusion import ScratchDiffusionPipeline as P; "
        f"p = P.from_pretrained({json.dumps(str(pipeline_dir))}); "
        f'[im.save(f"digit_{{i}}.png") for i, im in enumerate(p(batch_size=10, class_labels=list(range(10)), '
        f"guidance_scale={guidance_scale:g}, num_inference_steps={steps}).images)]"
    )
    return f"python -c {shlex.quote(code)}"


def run(config: DemoConfig) -> dict:
    """Steps 1-5; returns the content of ``metrics.json``."""
    from scratch_diffusion.pipelines import ScratchDiffusionPipeline

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # 1-2. train (or reuse), saving the pipeline, model card and tensorboard logs
    record = prepare_output_dir(config)
    if not config.reuse:
        print(f"[1/5] Training: {config.objective} objective, {config.model} UNet, class-conditional, built-in digits")
        record = train_model(config)
        (config.output_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"[2/5] Saved pipeline, model card and tensorboard logs to {config.pipeline_dir} "
              f"({record['steps']} steps in {record['seconds'] / 60:.1f} min)")  # fmt: skip
    else:
        print("[1/5] Training skipped (--reuse)")
        print(f"[2/5] Pipeline, model card and tensorboard logs: {config.pipeline_dir}")
    pipe = ScratchDiffusionPipeline.from_pretrained(str(config.pipeline_dir)).to(config.device)
    pipe.set_progress_bar_config(disable=True)  # the demo's bars count every UNet evaluation instead
    if pipe.num_classes is None:
        raise DemoError(f"{config.pipeline_dir} holds an unconditional UNet; the demo needs a class-conditional one.")
    path = pipe.trained_parametrization.path
    samplers = SAMPLERS[path]

    classifier = metrics.load_digits_classifier()
    how = f"trained now in {classifier.training_seconds:.1f} s" if classifier.trained_now else "loaded from cache"
    print(f"      metric: digits classifier {how} ({classifier.path}); held-out accuracy "
          f"{100 * classifier.holdout_accuracy:.1f} %")  # fmt: skip

    # 3-4. sweep every sampler × steps; guidance scales at the best; re-score the best few at full size
    w = config.guidance_scale
    sweep = [SampleSet(s, n, w, config.num_sweep_samples, "sweep") for s in samplers for n in config.step_counts]
    print(f"[3/5] Sampling (sweep): {', '.join(samplers)} × {config.step_counts} steps, guidance w={w:g}, "
          f"{config.num_sweep_samples} images each")  # fmt: skip
    run_stage(pipe, sweep, config, classifier, "sweep")
    top = pick_best(sweep)
    scales = [g for g in dict.fromkeys(config.guidance_sweep) if g != w]
    guidance = [SampleSet(top.sampler, top.steps, g, config.num_sweep_samples, "guidance") for g in scales]
    if guidance:
        print(f"      guidance: {top.sampler}, {top.steps} steps (best of the sweep) at w = "
              f"{', '.join(f'{g:g}' for g in scales)}, {config.num_sweep_samples} images each")  # fmt: skip
        run_stage(pipe, guidance, config, classifier, "guidance")
    ranked = sorted(sweep, key=lambda s: s.results["fd_ratio"])[: config.num_final]
    final = [SampleSet(s.sampler, s.steps, w, config.num_eval_samples, "final") for s in ranked]
    print(f"      final: the best {len(final)} of the sweep, {config.num_eval_samples} images each")
    run_stage(pipe, final, config, classifier, "final")
    best = pick_best(final)

    print("[4/5] Writing metrics.json, metrics.md and demo.png")
    everything = sweep + guidance + final
    guided = [s for s in everything if s.guidance_scale > 1]
    verdict = quality_verdict(best, guided)
    sampling_seconds = sum(s.seconds for s in everything)
    report = {
        "output_dir": str(config.output_dir),
        "pipeline": str(config.pipeline_dir),
        "trained_parametrization": {
            "noise_path": path,
            "prediction_type": pipe.trained_parametrization.prediction_type,
        },
        "training": record,
        "reused_pipeline": config.reuse,
        "classifier": {
            "path": str(classifier.path),
            "trained_now": classifier.trained_now,
            "holdout_accuracy": classifier.holdout_accuracy,
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "results": [s.row() for s in everything],
        "best": best.row(),
        "sampling_seconds": sampling_seconds,
        "quality_bar": verdict,
        "seconds_total": time.perf_counter() - started,
    }
    (config.output_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown_table(everything, best)
    md = [
        "# Demo results",
        "",
        f"Model: {config.pipeline_dir} ({path} path, {report['trained_parametrization']['prediction_type']}); "
        + (f"{record['steps']} training steps in {record['seconds'] / 60:.1f} min." if record else "reused."),
        "",
        table,
        "",
        f"Best (final stage): **{best.name}** — FD {best.results['fd']:.2f} vs real-data baseline "
        f"{best.results['fd_real_baseline']:.2f} ± {best.results['fd_real_baseline_std']:.2f} at n={best.n} "
        f"(×{best.results['fd_ratio']:.2f}); class match {100 * best.results['class_match']:.1f} %"
        + guided_text(verdict)
        + f". Quality bar (FD ≤ {QUALITY_BAR['fd_ratio_max']}× baseline, class match ≥ "
        f"{100 * QUALITY_BAR['class_match_min']:.0f} %): " + ("met." if verdict["met"] else "**not met**."),
        "",
        metrics.markdown_summary(best.results, title=f"Best: {best.name}"),
        "",
    ]
    (config.output_dir / "metrics.md").write_text("\n".join(md))
    save_figure(sweep, guidance, final, config.output_dir / "demo.png", pipe.num_classes)

    # 5. summary
    r = best.results
    print("[5/5] Summary")
    print(f"  outputs:   {config.output_dir}/  (pipeline/ with README.md model card and logs/, "
          f"metrics.json, metrics.md, demo.png)")  # fmt: skip
    print(f"  best:      {best.name} ({best.nfe} UNet evaluations per image): FD {r['fd']:.2f} vs real-data "
          f"baseline {r['fd_real_baseline']:.2f} ± {r['fd_real_baseline_std']:.2f} (×{r['fd_ratio']:.2f}, n={best.n}); "
          f"noise {r['fd_noise_ceiling']:.0f}")  # fmt: skip
    print(f"             classified as the requested class: {100 * r['class_match']:.1f} %{guided_text(verdict)} "
          f"(classifier accuracy on real digits {100 * r['classifier_accuracy']:.1f} %)")  # fmt: skip
    print(f"  quality bar (FD ≤ 1.5× baseline, class match ≥ 90 %): {'met' if verdict['met'] else 'NOT met'}")
    print(f"  tensorboard --logdir {config.pipeline_dir / 'logs'}")
    print(f"  load it:   {load_command(config.pipeline_dir, best.steps, best.guidance_scale)}")
    print(f"  total time {report['seconds_total'] / 60:.1f} min")
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        config = resolve_config(args)
        if config.quick and args.model is None:
            config.output_dir.mkdir(parents=True, exist_ok=True)
            quick_unet = config.output_dir / "quick_unet.json"
            quick_unet.write_text(json.dumps(QUICK_UNET))
            config.model = str(quick_unet)
        run(config)
    except DemoError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
