"""The few-step objectives through train.py: from a flow pipeline (the teacher), exact resume, what is saved.

"From the teacher, exactly": with ``--lr_warmup_steps 1`` the first update has learning rate 0, an exact AdamW no-op
(see test_init_from.py), so ``checkpoint-1`` holds the weights the run started from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from scratch_diffusion import FlowMapUNet2DModel, ScratchDiffusionPipeline, ScratchFlowMapScheduler
from scratch_diffusion.training import run_training

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def _argv(out: Path, *extra: str, steps: int = 2) -> list[str]:
    return [
        "--output_dir", str(out), "--max_train_steps", str(steps), "--train_batch_size", "4",
        "--checkpointing_steps", "1", "--lr_warmup_steps", "1", "--learning_rate", "1e-3", "--logger", "none",
        "--eval_batch_size", "2", "--save_images_steps", "1000", "--class_conditional", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A finished 2-step class-conditional flow run of the tiny UNet on the digits (16×16, one channel)."""
    from .conftest import TINY_UNET

    folder = tmp_path_factory.mktemp("teacher")
    unet_json = folder / "tiny_unet.json"
    unet_json.write_text(json.dumps(TINY_UNET))
    run_training(
        _argv(folder / "run", "--model_config_name_or_path", str(unet_json), "--ddpm_num_inference_steps", "2")
    )
    return folder / "run"


def test_meanflow_starts_from_the_teacher_and_saves_a_flow_map(tmp_path, hf_home, teacher):
    out = tmp_path / "meanflow"
    run_training(_argv(out, "--objective", "meanflow", "--init_from", str(teacher), "--no-use_ema",
                       "--meanflow_guidance_scale", "1.5", "--eval_steps", "2", "--eval_num_samples", "8"))  # fmt: skip
    saved = load_file(teacher / UNET_WEIGHTS)
    start = load_file(out / "checkpoint-1" / "model.safetensors")
    assert all(torch.equal(start[key], saved[key]) for key in saved)  # the teacher's weights, bit for bit
    interval = {key: value for key, value in start.items() if key.startswith("interval_embedding.")}
    assert interval and all(not value.any() for key, value in interval.items() if "linear_2" in key)  # zero: = teacher

    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["scratch_diffusion", "FlowMapUNet2DModel"]
    assert index["scheduler"] == ["scratch_diffusion", "ScratchFlowMapScheduler"]
    pipe = ScratchDiffusionPipeline.from_pretrained(out)
    assert type(pipe.unet) is FlowMapUNet2DModel and type(pipe.scheduler) is ScratchFlowMapScheduler
    assert not pipe.scheduler.config.stochastic_sampling
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=1, class_labels=[0, 1], output_type="pt").images
    assert images.shape == (2, 1, 16, 16) and pipe.evaluations == {"unet": 1.0}

    card = ModelCard.load(out / "README.md")
    assert "MeanFlow (Geng et al., 2025" in card.text and "ω = 1.5 folded into the target" in card.text
    assert f"from the teacher `{teacher.name}`" in card.text and "`FlowMapUNet2DModel`" in card.text
    assert "for sampling in 2 step(s)" in card.text and "num_inference_steps=2" in card.text
    rows = [line for line in card.text.splitlines() if line.startswith("| final (step 2) | FD |")]
    assert [row.split("|")[6].strip() for row in rows] == ["1", "2", "4"]  # scored at 1, 2 and 4 evaluations


@pytest.mark.parametrize("objective", ["consistency", "meanflow"])
def test_a_resumed_run_is_bit_identical(tmp_path, hf_home, teacher, objective):
    """4 steps straight vs the same run resumed from its step-2 checkpoint in a fresh folder (the consistency gap
    changes at steps 1, 2 and 3; MeanFlow's JVP examples are drawn per batch)."""
    extra = ["--objective", objective, "--init_from", str(teacher), "--checkpointing_steps", "2"]
    if objective == "consistency":
        extra += ["--consistency_stages", "4"]
    run_training(_argv(tmp_path / "straight", *extra, steps=4))
    checkpoint = str(tmp_path / "straight" / "checkpoint-2")
    run_training(_argv(tmp_path / "resumed", *extra, "--resume_from_checkpoint", checkpoint, steps=4))
    straight, resumed = (load_file(tmp_path / run / UNET_WEIGHTS) for run in ("straight", "resumed"))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    start = load_file(teacher / UNET_WEIGHTS)
    assert any(not torch.equal(straight[k], start[k]) for k in start)  # it trained


def test_consistency_tuning_keeps_the_unet_and_saves_a_re_noising_sampler(tmp_path, hf_home, teacher):
    out = tmp_path / "consistency"
    run_training(_argv(out, "--objective", "consistency", "--init_from", str(teacher), "--mixed_precision", "bf16"))
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["_class_name"] == "UNet2DModel"
    pipe = ScratchDiffusionPipeline.from_pretrained(out)
    assert type(pipe.scheduler) is ScratchFlowMapScheduler and pipe.scheduler.config.stochastic_sampling
    card = ModelCard.load(out / "README.md")
    assert "consistency tuning (ECT, Geng et al., 2024" in card.text and "a `UNet2DModel`" in card.text


def test_meanflow_trains_in_bf16_and_from_scratch(tmp_path, hf_home):
    from .conftest import TINY_UNET

    unet_json = tmp_path / "tiny_unet.json"
    unet_json.write_text(json.dumps(TINY_UNET))
    out = tmp_path / "scratch"
    summary = run_training(_argv(out, "--objective", "meanflow", "--model_config_name_or_path", str(unet_json),
                                 "--mixed_precision", "bf16", "--meanflow_interval_fraction", "1"))  # fmt: skip
    assert summary.global_step == 2
    weights = load_file(out / UNET_WEIGHTS)
    assert all(torch.isfinite(value).all() for value in weights.values())
    assert any(value.any() for key, value in weights.items() if key.startswith("interval_embedding.embedding.linear_2"))


def test_meanflow_runs_on_two_processes(tmp_path, hf_home, teacher):
    """accelerate launch, 2 CPU processes: the JVP goes through the DDP-wrapped UNet's plain module."""
    from .conftest import launch_command, run

    out = tmp_path / "two"
    result = run(launch_command(2, *_argv(out, "--objective", "meanflow", "--init_from", str(teacher),
                                          "--meanflow_interval_fraction", "1")), hf_home)  # fmt: skip
    log = result.stdout + result.stderr
    assert "2 process(es) × batch 4" in log and log.count("Saved the pipeline") == 1, log[-3000:]
    assert json.loads((out / "unet" / "config.json").read_text())["_class_name"] == "FlowMapUNet2DModel"
