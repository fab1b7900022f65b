"""Steps 1-2 of the demo: train the model in this process through ``scratch_diffusion.training.run_training``.

``--train_minutes`` first times a short probe through the same trainer (same UNet, batch, objective
and EMA; the cheapest outputs the trainer offers) and turns the budget into a step count.
"""

from __future__ import annotations

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


def training_argv(config: DemoConfig, max_train_steps: int, output_dir: Path | None = None) -> list[str]:
    """The ``training/train.py`` command line of the demo model (into ``output_dir``, default the pipeline folder)."""
    argv = [
        "--output_dir", str(output_dir if output_dir is not None else config.pipeline_dir),
        "--class_conditional",
        "--class_dropout_prob", str(config.class_dropout_prob),
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
    if config.prediction_type is not None:
        argv += ["--prediction_type", config.prediction_type]
    if config.weighting_scheme is not None:
        argv += ["--weighting_scheme", config.weighting_scheme]
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


def train_model(config: DemoConfig) -> dict:
    """Train into ``config.pipeline_dir`` (in this process); returns what ``training.json`` records."""
    record: dict = {}
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
        model=config.model,
        steps=summary.global_step,
        train_batch_size=config.train_batch_size,
        seconds=seconds,
        images_per_second=summary.images_per_second,
        num_threads=torch.get_num_threads(),
        device=config.device,
    )
    return record
