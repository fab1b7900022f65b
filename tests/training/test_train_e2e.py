"""End-to-end runs of training/train.py as a user runs it: multi-process, exact resume, SIGKILL.

Each run is a real subprocess on CPU with one thread per process. Runs that are compared bit for
bit use identical command lines; only the interruption differs.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scratch_diffusion.training.checkpoints import checkpoint_problem, list_checkpoints

from .conftest import REPO, launch_command, run, subprocess_env, train_command, write_imagefolder

pytestmark = pytest.mark.slow

KILL_SEED_ENV = "SCRATCH_DIFFUSION_KILL_SEED"  # set it to replay (or vary) the SIGKILL moment


def _load(path: Path):
    return load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=False)


def _assert_identical(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_training_state(run_a: Path, run_b: Path, step: int) -> None:
    """Weights, optimizer, LR schedule, progress and EMA of checkpoint-<step>, and the saved EMA UNet."""
    files = [
        f"checkpoint-{step}/model.safetensors",
        f"checkpoint-{step}/optimizer.bin",
        *(f"checkpoint-{step}/custom_checkpoint_{i}.pkl" for i in range(3)),  # LR, progress, EMA
        "unet/diffusion_pytorch_model.safetensors",
    ]
    for name in files:
        _assert_identical(_load(run_a / name), _load(run_b / name), name)


def _kill_when(process: subprocess.Popen, condition, timeout: float = 300) -> bool:
    """SIGKILL ``process`` as soon as ``condition()`` holds; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if condition():
            process.kill()
            process.wait()
            return True
        time.sleep(0.02)
    process.kill()
    raise AssertionError("the run neither reached the kill point nor ended")


def test_two_processes_shard_the_data(tmp_path, tiny_unet_json, hf_home, classifier_cache):
    """accelerate launch, 2 CPU processes: one output folder, half the steps, LR stepped once per update.

    With evaluation on: the main process evaluates at steps 3 and 6 while the other waits, and keeps ``best/``.
    """
    images = write_imagefolder(tmp_path / "images", per_class=6)  # 12 images
    out = tmp_path / "two"
    result = run(
        launch_command(
            2, "--output_dir", out, "--train_data_dir", images, "--model_config_name_or_path", tiny_unet_json,
            "--train_batch_size", "2", "--num_epochs", "2", "--learning_rate", "1e-3", "--lr_scheduler", "linear",
            "--lr_warmup_steps", "2", "--checkpointing_steps", "3", "--random_flip", "--eval_batch_size", "2",
            "--ddpm_num_inference_steps", "2", "--save_images_steps", "4", "--eval_steps", "3",
            "--eval_num_samples", "8", "--eval_num_inference_steps", "2", "--save_best",
        ),
        hf_home,
    )  # fmt: skip
    log = result.stdout + result.stderr
    # 12 images in batches of 2 over 2 processes: 3 batches per process per epoch → 6 steps, not 12.
    assert "3 batches per process per epoch; 2 process(es) × batch 2 × accumulation 1 = 4 images per step" in log
    assert log.count("Saved the pipeline") == 1
    assert log.count("Step 3: FD ") == 1 and log.count("Step 6: FD ") == 1  # the main process evaluates
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "best", "checkpoint-3", "checkpoint-6", "logs", "model_index.json", "samples.png",
        "scheduler", "scratch_diffusion.py", "unet",
    ]  # fmt: skip
    checkpoint = out / "checkpoint-6"
    assert (checkpoint / "random_states_0.pkl").exists() and (checkpoint / "random_states_1.pkl").exists()
    progress = torch.load(checkpoint / "custom_checkpoint_1.pkl", weights_only=False)
    assert progress == {"global_step": 6, "num_processes": 2, "total_batch_size": 4}
    lr_state = torch.load(checkpoint / "custom_checkpoint_0.pkl", weights_only=False)
    assert lr_state["last_epoch"] == 6 and lr_state["_last_lr"] == [0.0]  # once per update, ends at 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((out / "logs").rglob("events.out.tfevents.*"))
    scalar_files = [e for e in events if e.parent.name == "train"]
    assert len(scalar_files) == 1, "only the main process logs"
    accumulator = EventAccumulator(str(scalar_files[0].parent)).Reload()
    lrs = [(e.step, e.value) for e in accumulator.Scalars("lr")]
    # linear warm-up over 2 updates to 1e-3, then linear decay to 0 at update 6
    assert [s for s, _ in lrs] == [1, 2, 3, 4, 5, 6]
    used = {1: 0.0, 2: 5e-4, 3: 1e-3, 4: 7.5e-4, 5: 5e-4, 6: 2.5e-4}  # the LR each update used
    # the LR schedule in float64, logged as float32-or-better: ≤ 1 float32 rounding (6e-8) < 1e-6; 0 exactly at step 1
    assert all(math.isclose(v, used[s], rel_tol=1e-6, abs_tol=1e-12) for s, v in lrs), lrs
    assert "samples" in accumulator.Reload().Tags()["images"]
    assert [e.step for e in accumulator.Scalars("eval/fd")] == [3, 6]
    assert json.loads((out / "best" / "evaluation.json").read_text())["step"] in (3, 6)


def test_exact_resume_after_stopping_halfway(tmp_path, tiny_unet_json, hf_home):
    """N steps straight vs stop after N/2 → resume latest: bit-identical weights, optimizer and EMA.

    The run crosses epochs, accumulates gradients (with a partial accumulation at each epoch's
    end), crops and flips randomly, drops labels, and samples a grid mid-run.
    """
    images = write_imagefolder(tmp_path / "images", per_class=5)  # 10 images, 20×16: random crops
    args = [
        "--train_data_dir", images, "--model_config_name_or_path", tiny_unet_json, "--class_conditional",
        "--random_flip", "--train_batch_size", "2", "--gradient_accumulation_steps", "2",
        "--max_train_steps", "7", "--checkpointing_steps", "2", "--lr_warmup_steps", "2",
        "--prediction_type", "v_prediction", "--snr_gamma", "5", "--save_images_steps", "3",
        "--eval_batch_size", "2", "--ddpm_num_inference_steps", "2",
    ]  # fmt: skip
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run(train_command("--output_dir", straight, *args), hf_home)

    process = subprocess.Popen(
        train_command("--output_dir", stopped, *args), cwd=REPO, env=subprocess_env(hf_home),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert _kill_when(process, lambda: (stopped / "checkpoint-4").exists()), "the run ended before step 4"
    assert not (stopped / "model_index.json").exists()
    newest = [p for _, p in list_checkpoints(str(stopped)) if checkpoint_problem(p) is None][-1]  # what 'latest' picks
    resumed = run(train_command("--output_dir", stopped, *args, "--resume_from_checkpoint", "latest"), hf_home)
    assert f"Resuming from {newest}" in resumed.stderr, resumed.stderr[-3000:]
    assert_same_training_state(straight, stopped, step=6)
    _assert_identical(
        _load(straight / "checkpoint-6" / "model.safetensors"),
        _load(stopped / "checkpoint-6" / "model.safetensors"),
        "raw",
    )


def test_resume_after_sigkill_at_a_random_point(tmp_path, tiny_unet_json, hf_home):
    """Kill -9 anywhere after the first checkpoint (possibly mid-save), resume latest: same result.

    Flow matching with logit-normal σ and a shift, on the built-in digits. The kill delay is drawn
    from a seeded generator: a fresh seed each run (so runs cover different moments) unless
    ``SCRATCH_DIFFUSION_KILL_SEED`` gives one; it is printed, and pytest shows it on failure, so the
    same delay can be replayed (the delay is wall-clock, so it replays the draw, not the exact step).
    """
    args = [
        "--model_config_name_or_path", tiny_unet_json, "--objective", "flow", "--weighting_scheme", "logit_normal",
        "--flow_shift", "2", "--train_batch_size", "4", "--max_train_steps", "8", "--checkpointing_steps", "1",
        "--checkpoints_total_limit", "3", "--lr_warmup_steps", "2", "--eval_batch_size", "2",
        "--ddpm_num_inference_steps", "2", "--save_images_steps", "100",
    ]  # fmt: skip
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run(train_command("--output_dir", reference, *args), hf_home)

    seed = int(os.environ.get(KILL_SEED_ENV) or random.randrange(2**32))
    print(f"kill point seed {seed} (replay: {KILL_SEED_ENV}={seed})")  # pytest shows it when the test fails
    rng = random.Random(seed)
    process = subprocess.Popen(
        train_command("--output_dir", killed, *args), cwd=REPO, env=subprocess_env(hf_home),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    marks = {}

    def at_random_point() -> bool:
        for step in (1, 2):
            if step not in marks and (killed / f"checkpoint-{step}").exists():
                marks[step] = time.monotonic()
        if len(marks) < 2:
            return False
        if "deadline" not in marks:  # a uniform point within the next ~4 steps …
            marks["deadline"] = marks[2] + rng.uniform(0, 4 * (marks[2] - marks[1]))
        # … but never later than step 6, so the kill always lands before the run ends
        return time.monotonic() >= marks["deadline"] or (killed / "checkpoint-6").exists()

    assert _kill_when(process, at_random_point), f"the run ended before the kill point (seed {seed})"
    left = sorted(p.name for p in killed.iterdir())
    run(train_command("--output_dir", killed, *args, "--resume_from_checkpoint", "latest"), hf_home)
    assert_same_training_state(reference, killed, step=8)
    names = sorted(p.name for p in killed.iterdir() if p.name.startswith("checkpoint"))
    assert names == ["checkpoint-6", "checkpoint-7", "checkpoint-8"], (names, left, seed)

    # --resume_from_checkpoint <path>: a checkpoint copied elsewhere continues into a fresh folder.
    copied = tmp_path / "elsewhere" / "checkpoint-6"
    shutil.copytree(reference / "checkpoint-6", copied)
    run(train_command("--output_dir", tmp_path / "from_path", *args, "--resume_from_checkpoint", copied), hf_home)
    assert_same_training_state(reference, tmp_path / "from_path", step=8)
