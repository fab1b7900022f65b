"""The pieces both trainers' loops share: the run's length, the resumed batches, the throughput timer, EMA, configs."""

from __future__ import annotations

import argparse

import pytest
from diffusers import AutoencoderKL, UNet2DModel
from torch.utils.data import DataLoader

from scratch_diffusion.training import monitoring
from scratch_diffusion.training.data import EpochSampler
from scratch_diffusion.training.loop import RunLength, resumed_batches, run_length
from scratch_diffusion.training.models import load_unet_config
from scratch_diffusion.training.optimization import make_ema
from scratch_diffusion.training.vae import build_vae, load_vae_config


def _args(**overrides) -> argparse.Namespace:
    defaults = dict(gradient_accumulation_steps=2, max_train_steps=None, num_epochs=3, train_batch_size=3)
    return argparse.Namespace(**{**defaults, **overrides})


def test_run_length_counts_optimizer_updates():
    # 4 batches per process with accumulation 2: 2 updates an epoch; accelerate syncs at an epoch's end.
    assert run_length(_args(), batches_per_epoch=4, num_processes=2) == RunLength(2, 6, 3, 12)
    assert run_length(_args(), batches_per_epoch=5, num_processes=1) == RunLength(3, 9, 3, 6)
    assert run_length(_args(max_train_steps=7), batches_per_epoch=5, num_processes=1) == RunLength(3, 7, 3, 6)


def _epoch_batches(accelerator, length: RunLength, global_step: int) -> list[tuple[int, int, list[int]]]:
    dataloader = accelerator.prepare(DataLoader(list(range(10)), batch_size=3, sampler=EpochSampler(10, seed=7)))
    return [(epoch, index, batch.tolist()) for epoch, index, batch in
            resumed_batches(accelerator, dataloader, length, global_step)]  # fmt: skip


def test_resumed_batches_continue_the_uninterrupted_sequence(fresh_accelerate_state):
    """Resumed at update k (mid-epoch or on an epoch boundary), the batches are the tail of the full run's."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    length = run_length(_args(max_train_steps=5), batches_per_epoch=4, num_processes=1)  # 10 examples, batch 3
    full = _epoch_batches(accelerator, length, 0)
    assert [(epoch, index) for epoch, index, _ in full] == [(e, i) for e in range(3) for i in range(4)]
    assert full[0][2] != full[4][2] and sorted(i for _, _, b in full[:4] for i in b) == list(range(10))
    for step in (1, 2, 3):  # an update is 2 micro-batches
        assert _epoch_batches(accelerator, length, step) == full[2 * step :], step
    assert _epoch_batches(accelerator, length, 5) == []  # resumed from the final checkpoint, mid-epoch


def test_step_timer_leaves_out_the_first_update_and_the_evaluations(monkeypatch):
    clock = iter([10.0, 11.0, 20.0])  # loop start, end of the first update, summary
    cpu = iter([1.0, 4.0])  # first update, summary
    monkeypatch.setattr(monitoring.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(monitoring.time, "process_time", lambda: next(cpu))
    timer = monitoring.StepTimer(global_step=4, num_processes=2)
    for step, images in ((5, 100), (6, 8), (7, 8)):  # resumed at 4; the first update's 100 images are not timed
        timer.update(step, images)
    summary = timer.summary("out", evaluation_seconds=1.0, evaluation_cpu_seconds=1.0)
    assert timer.timed_steps == 2 and summary.global_step == 7 and summary.output_dir == "out"
    assert summary.images_per_second == pytest.approx(16 * 2 / 8.0)  # (20 − 11 − 1) s for 2 × 8 images × 2
    assert summary.seconds_per_step == pytest.approx(4.0) and summary.cpu_seconds_per_step == pytest.approx(1.0)
    assert summary.training_seconds == pytest.approx(9.0) and summary.evaluation_seconds == 1.0


def test_step_timer_without_a_timed_update_reports_nan(monkeypatch):
    timer = monitoring.StepTimer(global_step=9, num_processes=1)
    timer.update(10, 16)  # the only update is the warm-up
    summary = timer.summary("out", 0.0, 0.0)
    assert timer.timed_steps == 0 and summary.global_step == 10
    assert summary.seconds_per_step != summary.seconds_per_step  # nan


@pytest.mark.parametrize("model_class", [UNet2DModel, AutoencoderKL])
def test_ema_records_the_class_of_the_model_it_averages(model_class):
    if model_class is UNet2DModel:
        model = UNet2DModel.from_config({**load_unet_config("tiny"), "sample_size": 8})
    else:
        model = build_vae("tiny", 8, 1)
    ema = make_ema(model, argparse.Namespace(use_ema=True, ema_max_decay=0.999, ema_inv_gamma=1.0, ema_power=0.75))
    assert ema.model_cls is model_class and ema.model_config == model.config


def test_unet_and_vae_configs_share_one_loader(tmp_path):
    """One loader serves both (models.load_model_config): presets, JSON files, and each class's own refusals."""
    assert load_unet_config("tiny")["block_out_channels"] == (32, 64)
    assert load_vae_config("tiny")["latent_channels"] == 4
    unet_json, vae_json = tmp_path / "unet.json", tmp_path / "vae.json"
    unet_json.write_text('{"_class_name": "UNet2DModel", "layers_per_block": 1}')  # the default blocks
    vae_json.write_text('{"_class_name": "AutoencoderKL", "layers_per_block": 1}')
    assert load_unet_config(str(unet_json)) == {"layers_per_block": 1}
    with pytest.raises(ValueError, match=r"is not an AutoencoderKL config \(it needs a block_out_channels list\)"):
        load_vae_config(str(vae_json))
    with pytest.raises(ValueError, match="describes a AutoencoderKL, not a UNet2DModel"):
        load_unet_config(str(vae_json))
    with pytest.raises(ValueError, match=r"neither a VAE preset \(tiny, small, sd-like\)"):
        load_vae_config("huge")
