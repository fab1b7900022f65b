"""Steps 1-2 of the demo: train the model in this process through ``scratch_diffusion.training.run_training``.

In latent space (the default) a tiny VAE is trained first (``training/train_vae.py``'s
``run_vae_training``), then the UNet on its cached latents (``train.py --vae_name_or_path``).
``--train_minutes`` first times a short probe through the same trainer (same UNet, batch, objective
and EMA; the cheapest outputs the trainer offers) and turns the budget into a step count; the VAE's
time is not part of that budget.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import time
from pathlib import Path

import torch

from scratch_diffusion.demo.config import DemoConfig
from scratch_diffusion.training import run_training

# The share of --train_minutes given to the step loop: the rest covers what the probe does not
# time (start-up, the tensorboard sample grids, saving the pipeline and its model card).
TRAIN_MINUTES_USED = 0.95
PROBE_STEPS = 12


# The demo's VAE (train_vae.py): the tiny preset (f = 2) with one latent channel, L1 + the preset's KL weight, EMA.
VAE_RECIPE = {"model": "tiny", "latent_channels": 1, "train_batch_size": 16, "learning_rate": 1e-3}


def vae_argv(
    output_dir: Path, steps: int, seed: int, digits_split: str = "train", **changes: int | float | str
) -> list[str]:
    """``train_vae.py``'s command line of the demo's VAE (:data:`VAE_RECIPE` with ``changes``), no tensorboard."""
    recipe = {**VAE_RECIPE, **changes}
    return [
        "--output_dir", str(output_dir),
        "--model_config_name_or_path", str(recipe["model"]),
        "--latent_channels", str(recipe["latent_channels"]),
        "--digits_split", digits_split,  # as the UNet: the metric's reference digits stay unseen, by the VAE too
        "--max_train_steps", str(steps),
        "--train_batch_size", str(recipe["train_batch_size"]),
        "--learning_rate", str(recipe["learning_rate"]),
        "--lr_warmup_steps", str(min(100, steps // 10)),
        "--seed", str(seed),
        "--logger", "none",
        "--checkpointing_steps", str(steps + 1),  # no training-state checkpoints
    ]  # fmt: skip


def train_vae_model(argv: list[str]) -> dict:
    """Train a VAE in this process; its ``vae_metrics.json`` scores (PSNR, reconstruction FD) and timing."""
    from scratch_diffusion.training.vae import METRICS_FILE, run_vae_training

    start = time.perf_counter()
    summary = run_vae_training(argv)
    seconds = time.perf_counter() - start
    output_dir = Path(argv[argv.index("--output_dir") + 1])
    scores = json.loads((output_dir / METRICS_FILE).read_text())
    keep = ("psnr", "fd", "fd_real_baseline", "fd_ratio", "kid", "kid_real_baseline", "n_images", "evaluated_on",
            "latent_shape", "downsampling_factor", "num_parameters")  # fmt: skip
    return {
        **{k: scores.get(k) for k in keep},
        "scaling_factor": scores["latent_scale"]["scaling_factor"],
        "command": "python training/train_vae.py " + shlex.join(argv),
        "steps": summary.global_step,
        "images_per_second": summary.images_per_second,
        "seconds_per_step": summary.seconds_per_step,
        "training_seconds": summary.training_seconds,
        "seconds": seconds,
    }


def latent_flags(config: DemoConfig) -> list[str]:
    """``train.py``'s flags that put the UNet on the demo VAE's latents (none in pixel space)."""
    if config.space != "latent":
        return []
    return ["--vae_name_or_path", str(config.vae_dir), "--latent_cache_dir", str(config.latent_cache_dir)]


def training_argv(
    config: DemoConfig, max_train_steps: int, output_dir: Path | None = None, class_conditional: bool = True
) -> list[str]:
    """The ``training/train.py`` command line of the demo model (into ``output_dir``, default the pipeline folder).

    ``class_conditional=False``: the same recipe without classes (no ``--class_conditional``, no null-class dropout).
    """
    conditioning = ["--class_conditional", "--class_dropout_prob", str(config.class_dropout_prob)]
    argv = [
        "--output_dir", str(output_dir if output_dir is not None else config.pipeline_dir),
        *(conditioning if class_conditional else []),
        "--digits_split", config.digits_split,
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
    argv += latent_flags(config)
    if config.prediction_type is not None:
        argv += ["--prediction_type", config.prediction_type]
    if config.weighting_scheme is not None:
        argv += ["--weighting_scheme", config.weighting_scheme]
    if config.logit_mean is not None:
        argv += ["--logit_mean", str(config.logit_mean)]
    return argv


def probe_argv(config: DemoConfig, output_dir: Path, probe_steps: int = PROBE_STEPS) -> list[str]:
    """The demo model's command line for a ``probe_steps``-update timing run with the cheapest outputs.

    No tensorboard (``--logger none``: no sample grids either), a one-image, one-step final sample,
    and the loss read back every 10 steps as in the real run.
    """
    cheap = ["--logger", "none", "--eval_batch_size", "1", "--ddpm_num_inference_steps", "1", "--logging_steps", "10"]
    return [*training_argv(config, probe_steps, output_dir), *cheap]  # argparse: the last occurrence wins


def calibrate_steps(config: DemoConfig, minutes: float, probe_steps: int = PROBE_STEPS) -> tuple[int, float]:
    """Steps that fit in ``minutes`` here; returns (steps, measured seconds per step).

    The seconds per step are the probe summary's ``seconds_per_step`` (the trainer excludes the first,
    warm-up update). :data:`TRAIN_MINUTES_USED` of the budget goes to the steps.
    """
    if probe_steps < 2:
        raise ValueError(f"probe_steps={probe_steps!r}; allowed: at least 2 (the first step is not timed).")
    with tempfile.TemporaryDirectory(prefix="demo-calibration-") as scratch:
        summary = run_training(probe_argv(config, Path(scratch) / "probe", probe_steps))
    per_step = summary.seconds_per_step
    return max(1, int(TRAIN_MINUTES_USED * minutes * 60 / per_step)), per_step


def timed_training(argv: list[str]) -> dict:
    """Run ``train.py``'s ``argv`` in this process; its argv, steps, wall and CPU seconds per update, wall time."""
    start = time.perf_counter()
    summary = run_training(argv)
    return {
        "argv": argv,
        "steps": summary.global_step,
        "seconds_per_step": summary.seconds_per_step,
        "cpu_seconds_per_step": summary.cpu_seconds_per_step,
        "train_seconds": time.perf_counter() - start,
        "num_threads": torch.get_num_threads(),
    }


def train_model(config: DemoConfig) -> dict:
    """Train into ``config.pipeline_dir`` (in this process); returns what ``training.json`` records."""
    record: dict = {"space": config.space}
    if config.space == "latent":
        record["vae"] = train_vae_model(vae_argv(config.vae_dir, config.vae_steps, config.seed, config.digits_split))
        v, latents = record["vae"], "×".join(map(str, record["vae"]["latent_shape"]))
        print(f"      VAE: {v['steps']} steps in {v['seconds']:.0f} s; {latents} latents, held-out PSNR "
              f"{v['psnr']:.1f} dB, reconstruction FD {v['fd']:.2f} vs real {v['fd_real_baseline']:.2f} "
              f"(n = {v['n_images']})")  # fmt: skip
    steps = config.max_train_steps
    if config.train_minutes is not None:
        steps, per_step = calibrate_steps(config, config.train_minutes)
        record["calibration"] = {"train_minutes": config.train_minutes, "seconds_per_step": per_step, "steps": steps}
        print(f"  --train_minutes {config.train_minutes:g}: {per_step * 1e3:.0f} ms per step here → {steps} steps")
    argv = training_argv(config, steps)
    start = time.perf_counter()
    summary = run_training(argv)
    seconds = time.perf_counter() - start  # the whole call: the step loop, saving, sample grid and model card
    record.update(
        command="python training/train.py " + shlex.join(argv),
        argv=argv,
        objective=config.objective,
        prediction_type=config.prediction_type,
        weighting_scheme=config.weighting_scheme,
        logit_mean=config.logit_mean,
        model=config.model,
        steps=summary.global_step,
        train_batch_size=config.train_batch_size,
        seconds=seconds,
        images_per_second=summary.images_per_second,
        num_threads=torch.get_num_threads(),
        device=config.device,
    )
    return record
