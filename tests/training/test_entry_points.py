"""The ways to start training: ``-m scratch_diffusion.training.train`` and ``run_training`` from Python.

``run_training`` is called several times in one process (the demo, these tests and the benchmark
do): each call must train exactly as a fresh process would, whatever accelerate settings ran before.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scratch_diffusion.training import TrainingSummary, run_training

from .conftest import REPO, run, subprocess_env


def _argv(out: Path, unet_json: Path, *extra: str, steps: int = 3) -> list[str]:
    return [
        "--output_dir", str(out), "--model_config_name_or_path", str(unet_json),
        "--train_batch_size", "4", "--max_train_steps", str(steps), "--checkpointing_steps", "100",
        "--lr_warmup_steps", "1", "--eval_batch_size", "2", "--ddpm_num_inference_steps", "2",
        "--save_images_steps", "1000", "--logger", "none", *extra,
    ]  # fmt: skip


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "unet" / "diffusion_pytorch_model.safetensors")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_accelerate_launch_module(tmp_path, tiny_unet_json, hf_home):
    """``accelerate launch -m scratch_diffusion.training.train``: the installed module trains and saves."""
    out = tmp_path / "as-module"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "scratch_diffusion.training.train", *_argv(out, tiny_unet_json, steps=2),
    ]  # fmt: skip
    result = run(command, hf_home)
    assert "Saved the pipeline, samples.png and README.md" in result.stderr
    assert {"model_index.json", "unet", "scheduler", "samples.png", "README.md"} <= {p.name for p in out.iterdir()}


def test_python_m_reports_bad_input_with_status_2(tmp_path, hf_home):
    result = subprocess.run(
        [sys.executable, "-m", "scratch_diffusion.training.train", "--output_dir", tmp_path / "out",
         "--train_batch_size", "0"],
        cwd=REPO, env=subprocess_env(hf_home), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.splitlines() == [
        "train.py: error: --train_batch_size must be ≥ 1, got 0."
    ], result.stderr


def test_run_training_repeats_in_one_process(tmp_path, tiny_unet_json, hf_home):
    """Same arguments twice → bit-identical weights; other accumulation and mixed precision in between."""
    first = run_training(_argv(tmp_path / "first", tiny_unet_json))
    assert isinstance(first, TrainingSummary)
    assert first.global_step == 3 and first.output_dir == str(tmp_path / "first")
    # 1 process, no accumulation: 4 images per update; 2 timed updates (the first is excluded)
    assert first.images_per_second == pytest.approx(4 / first.seconds_per_step)
    assert 0 < 2 * first.seconds_per_step <= first.training_seconds * (1 + 1e-9)
    assert first.cpu_seconds_per_step > 0

    accumulated = run_training(_argv(tmp_path / "accumulated", tiny_unet_json, "--gradient_accumulation_steps", "2"))
    assert accumulated.global_step == 3
    bf16 = run_training(_argv(tmp_path / "bf16", tiny_unet_json, "--mixed_precision", "bf16"))  # CPU autocast
    assert bf16.global_step == 3
    again = run_training(_argv(tmp_path / "again", tiny_unet_json))

    assert _same(_weights(tmp_path / "first"), _weights(tmp_path / "again"))
    assert not _same(_weights(tmp_path / "first"), _weights(tmp_path / "accumulated"))  # 8 images per update
    assert not _same(_weights(tmp_path / "first"), _weights(tmp_path / "bf16"))
    assert again.global_step == 3


def test_run_training_resumed_at_the_end_times_nothing(tmp_path, tiny_unet_json, hf_home):
    """A run resumed from its final checkpoint does no update: the summary says so instead of inventing a rate."""
    argv = _argv(tmp_path / "done", tiny_unet_json, "--checkpointing_steps", "2", steps=2)
    assert run_training(argv).global_step == 2
    resumed = run_training([*argv, "--resume_from_checkpoint", "latest"])
    assert resumed.global_step == 2
    assert math.isnan(resumed.images_per_second) and math.isnan(resumed.seconds_per_step)
