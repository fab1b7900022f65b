"""The demo's settings: the defaults ``make demo`` trains with, the ``--quick`` overrides, and their checks."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

PIPELINE_SUBDIR = "pipeline"
VAE_SUBDIR = "vae"
GUIDE_SUBDIR = "guide"
SPACES = ("latent", "pixel")
# The sweep's samplers by the trained model's path: its own, DPM-Solver++ (2M) on that path, and one sampler of the
# other path reached through the exact change of variables (scratch_diffusion.pipelines, "Any model, any sampler").
SAMPLERS = {
    "flow": ("flow Euler", "flow Heun", "DPM-Solver++", "DDIM (VP path)"),
    "vp": ("DDIM", "DDPM", "DPM-Solver++", "flow Heun (flow path)"),
}

# The recipe `make demo` trains with, sized for about 3 minutes of training on 2 CPU cores (VAE + UNet). What was
# tried and what it scored: benchmarks/bench_latent_recipes.py (the latent UNet's levers on one VAE; results in
# benchmarks/results/latent_recipes.json), benchmarks/bench_recipes.py (the pixel UNet's and the objectives; results
# in benchmarks/results/recipes*.json), benchmarks/bench_latent.py (latent vs pixel at equal time) — the
# "What was tried" tables of docs/benchmarks.md. The seed-to-seed spread is about ±0.05 in FD ratio and one draw
# of 1000 scatters by ±0.1, so no single run settles a lever (benchmarks/bench_demo_seeds.py runs the whole demo
# per seed).
DEFAULTS = {
    # Diffuse in a VAE's latent space: a tiny AutoencoderKL (f = 2, one channel: a 16×16 digit is a 1×8×8 latent)
    # is trained first, then the UNet on its latents — fewer numbers per image, so more updates per CPU-minute
    # (benchmarks/bench_latent.py; docs/benchmarks.md, "Latent vs pixel"). "pixel": the UNet on the 16×16 images.
    "space": "latent",
    "vae_steps": 1200,
    "objective": "flow",
    "prediction_type": None,  # ddpm only: epsilon (default) or v_prediction
    "weighting_scheme": "logit_normal",  # flow only: σ sampling in training (Esser et al., 2024, §3.1)
    # flow only: the mean of logit(σ), below 0 = more training at low noise (≡ a training time shift s = e^m; the
    # sampling grid is left at shift 1). Measured in benchmarks/bench_latent_recipes.py (docs/benchmarks.md).
    "logit_mean": -0.7,
    "model": "compact",  # tiny's widths at three levels, attention only at 4×4: better and ~15 % faster per step
    "max_train_steps": 1600,
    "train_batch_size": 64,
    "learning_rate": 1e-3,
    "lr_warmup_steps": 100,
    "class_dropout_prob": 0.1,
    # Train on the metric's 70 % training split only: the FD reference (the other 30 %) stays unseen, so the real
    # baseline (training split vs reference) is what a perfect generalising model scores, not one that copies.
    "digits_split": "train",
    "step_counts": (5, 10),  # the quality target is at ≤ 10 UNet evaluations; 25 and 50 only cost sweep time
    "guidance_scale": 1.0,
    "guidance_sweep": (1.5, 3.0),
    "num_sweep_samples": 200,
    "num_eval_samples": 1000,
    "num_final": 2,
    # Independent draws of num_eval_samples per final setting, averaged: one draw of 1000 scatters by about ±0.2 in
    # FD ratio (the same model scored 1.30-1.84× over four draws), so one draw cannot carry a 1.25× bar.
    "eval_draws": 3,
    "likelihood_images": 64,  # held-out digits whose bits/dim are measured (0: skip)
    # The guidance stage (issue 21): an autoguidance guide — a smaller UNet of the same path, trained with --guide_for
    # the demo's pipeline — then the final stage's best sampler with each rule at the same number of model evaluations
    # per image (both CFG halves and every guide evaluation counted). Guide and interval: the best of
    # benchmarks/bench_guidance.py --search (benchmarks/results/guidance_search.json, seed 0, n = 1000 × 2, flow Heun
    # at 5 steps): guides trained for fewer steps (micro at 200-800 steps, compact at 200-800, tiny at 400-800) or
    # longer (micro at 3200) all raised the FD ratio at every w ≥ 1.1, micro at the main model's 1600 steps left it
    # unchanged (1.21-1.24× at w = 1.1-2 against 1.22× unguided); the interval (0.28, 2] (Heun's σ = 1 and 0.34
    # points) reached 99.5 % class match at 1.46× against full CFG's 1.96× (w = 1.25) and (0.28, 5.42]'s 1.69×.
    "guide_model": "micro",  # the trainer's micro preset: 0.16 M parameters, one evaluation ≈ 0.37× the compact UNet's
    "guide_steps": 1600,
    "guidance_interval": (0.28, 2.0),  # σ = b/a
    "cfg_scales": (1.25, 1.5, 2.0),  # full-range and interval CFG
    "autoguidance_scales": (1.25, 1.5, 2.0),
    "num_rule_samples": 1000,  # images per guidance-stage setting (0: no guidance stage)
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
    "vae_steps": 8,
    "max_train_steps": 20,
    "train_batch_size": 16,
    "lr_warmup_steps": 2,
    "step_counts": (2, 4),
    "guidance_sweep": (2.0,),
    "num_sweep_samples": 40,
    "num_eval_samples": 60,
    "num_final": 1,
    "eval_draws": 2,
    "likelihood_images": 4,
    "guide_model": None,  # the main model's (toy) architecture
    "guide_steps": 6,
    "cfg_scales": (2.0,),
    "autoguidance_scales": (2.0,),
    "num_rule_samples": 30,
}


class DemoError(RuntimeError):
    """A bad command line or output folder, found before any work (exit status 2)."""


@dataclass
class DemoConfig:
    """The resolved settings of one run (command line over ``QUICK`` over ``DEFAULTS``)."""

    output_dir: Path
    reuse: bool
    quick: bool
    seed: int
    num_threads: int
    device: str
    space: str
    vae_steps: int
    objective: str
    prediction_type: str | None
    weighting_scheme: str | None
    logit_mean: float | None
    model: str
    max_train_steps: int | None
    train_minutes: float | None
    train_batch_size: int
    learning_rate: float
    lr_warmup_steps: int
    class_dropout_prob: float
    digits_split: str
    use_ema: bool
    step_counts: list[int]
    guidance_scale: float
    guidance_sweep: list[float]
    num_sweep_samples: int
    num_eval_samples: int
    num_final: int
    eval_draws: int
    likelihood_images: int
    sample_batch_size: int
    guide_model: str | None  # None: the main model's architecture
    guide_steps: int
    guidance_interval: tuple[float, float]
    cfg_scales: list[float]
    autoguidance_scales: list[float]
    num_rule_samples: int

    @property
    def pipeline_dir(self) -> Path:
        return self.output_dir / PIPELINE_SUBDIR

    @property
    def vae_dir(self) -> Path:
        """Where the latent demo's VAE is trained (the pipeline keeps its own copy in ``pipeline/vae``)."""
        return self.output_dir / VAE_SUBDIR

    @property
    def latent_cache_dir(self) -> Path:
        return self.output_dir / "latent-cache"

    @property
    def guide_dir(self) -> Path:
        """Where the autoguidance guide is trained (the pipeline keeps it as ``pipeline/guide_unet``)."""
        return self.output_dir / GUIDE_SUBDIR


def resolve_config(args: argparse.Namespace) -> DemoConfig:
    """Fill unset options from ``QUICK`` (with ``--quick``) then ``DEFAULTS``; raise DemoError on bad values."""
    base = {**DEFAULTS, **(QUICK if args.quick else {})}

    def pick(name):
        value = getattr(args, name)
        return base[name] if value is None else value

    objective = pick("objective")
    if objective == "flow" and args.prediction_type is not None:
        raise DemoError("--prediction_type applies to --objective ddpm; flow matching predicts the velocity.")
    if objective == "ddpm" and args.logit_mean is not None:
        raise DemoError(f"--logit_mean {args.logit_mean:g} applies to --objective flow (logit-normal σ sampling) only.")
    max_train_steps = pick("max_train_steps") if args.train_minutes is None else None
    config = DemoConfig(
        output_dir=Path(args.output_dir),
        reuse=args.reuse,
        quick=args.quick,
        seed=args.seed,
        num_threads=args.num_threads,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        space=pick("space"),
        vae_steps=pick("vae_steps"),
        objective=objective,
        prediction_type=(args.prediction_type or "epsilon") if objective == "ddpm" else None,
        weighting_scheme=base["weighting_scheme"] if objective == "flow" else None,
        logit_mean=pick("logit_mean") if objective == "flow" else None,
        model=pick("model"),
        max_train_steps=max_train_steps,
        train_minutes=args.train_minutes,
        train_batch_size=pick("train_batch_size"),
        learning_rate=pick("learning_rate"),
        lr_warmup_steps=pick("lr_warmup_steps"),
        class_dropout_prob=pick("class_dropout_prob"),
        digits_split=pick("digits_split"),
        use_ema=args.use_ema,
        step_counts=sorted(set(pick("step_counts"))),
        guidance_scale=pick("guidance_scale"),
        guidance_sweep=list(pick("guidance_sweep")),
        num_sweep_samples=pick("num_sweep_samples"),
        num_eval_samples=pick("num_eval_samples"),
        num_final=pick("num_final"),
        eval_draws=pick("eval_draws"),
        likelihood_images=pick("likelihood_images"),
        sample_batch_size=args.sample_batch_size,
        guide_model=pick("guide_model"),
        guide_steps=pick("guide_steps"),
        guidance_interval=tuple(pick("guidance_interval")),
        cfg_scales=list(pick("cfg_scales")),
        autoguidance_scales=list(pick("autoguidance_scales")),
        num_rule_samples=pick("num_rule_samples"),
    )
    low, high = config.guidance_interval
    checks = [
        (config.space in SPACES, f"--space must be one of {', '.join(SPACES)}, got {config.space!r}"),
        (config.vae_steps >= 1, f"--vae_steps must be ≥ 1, got {config.vae_steps}"),
        (config.max_train_steps is None or config.max_train_steps >= 1, "--max_train_steps must be ≥ 1"),
        (config.train_minutes is None or config.train_minutes > 0, "--train_minutes must be > 0"),
        (all(n >= 1 for n in config.step_counts), "--step_counts must be ≥ 1"),
        (config.num_sweep_samples >= 10, "--num_sweep_samples must be ≥ 10 (one per class at least)"),
        (config.num_eval_samples >= 10, "--num_eval_samples must be ≥ 10"),
        (config.num_final >= 1, "--num_final must be ≥ 1"),
        (config.eval_draws >= 1, "--eval_draws must be ≥ 1"),
        (config.likelihood_images >= 0, "--likelihood_images must be ≥ 0 (0: no likelihood)"),
        (config.sample_batch_size >= 1, "--sample_batch_size must be ≥ 1"),
        (config.num_threads >= 0, "--num_threads must be ≥ 0"),
        (0 <= config.class_dropout_prob < 1, "--class_dropout_prob must be in [0, 1)"),
        (config.class_dropout_prob > 0 or config.reuse, "--class_dropout_prob 0 trains no null class: no guidance"),
        (config.guidance_scale >= 0 and all(g >= 0 for g in config.guidance_sweep), "guidance scales must be ≥ 0"),
        (config.guide_steps >= 1, f"--guide_steps must be ≥ 1, got {config.guide_steps}"),
        (0 <= low < high, f"--guidance_interval must be two noise levels 0 ≤ σ_lo < σ_hi, got {low:g} {high:g}"),
        (all(w > 0 for w in config.cfg_scales + config.autoguidance_scales), "guidance-stage scales must be > 0"),
        (config.num_rule_samples not in range(1, 10), "--num_rule_samples must be 0 (no guidance stage) or ≥ 10"),
    ]
    for ok, message in checks:
        if not ok:
            raise DemoError(message + ".")
    return config


def use_quick_unet(config: DemoConfig) -> None:
    """With ``--quick`` and no ``--model``: write :data:`QUICK_UNET` into the output folder and train that."""
    config.output_dir.mkdir(parents=True, exist_ok=True)
    quick_unet = config.output_dir / "quick_unet.json"
    quick_unet.write_text(json.dumps(QUICK_UNET))
    config.model = str(quick_unet)
