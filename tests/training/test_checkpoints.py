"""Checkpoints: atomic publication, rotation, 'latest', and the progress record."""

from __future__ import annotations

import logging

import pytest
import torch

from scratch_diffusion.training.checkpoints import (
    TrainingProgress,
    list_checkpoints,
    remove_partial_checkpoints,
    resolve_resume,
    save_checkpoint,
    write_manifest,
)


def test_latest_sees_only_complete_checkpoints(tmp_path):
    for name in ("checkpoint-2", "checkpoint-10", "checkpoint-12.tmp", "checkpoint-x", "logs"):
        (tmp_path / name).mkdir()
    for name in ("checkpoint-2", "checkpoint-10"):  # complete: a manifest (tests/reliability plants broken ones)
        write_manifest(str(tmp_path / name))
    (tmp_path / "checkpoint-30").write_text("a file, not a checkpoint")
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 10]
    assert resolve_resume("latest", str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert resolve_resume("latest", str(tmp_path / "missing")) is None
    assert resolve_resume(None, str(tmp_path)) is None
    remove_partial_checkpoints(str(tmp_path))
    assert not (tmp_path / "checkpoint-12.tmp").exists() and (tmp_path / "checkpoint-10").exists()


def test_progress_round_trip_warns_on_a_different_setup(caplog):
    saved = TrainingProgress(num_processes=2, total_batch_size=16)
    saved.global_step = 42
    same = TrainingProgress(num_processes=2, total_batch_size=16)
    same.load_state_dict(saved.state_dict())
    assert same.global_step == 42
    other = TrainingProgress(num_processes=1, total_batch_size=8)
    with caplog.at_level(logging.WARNING):
        other.load_state_dict(saved.state_dict())
    assert other.global_step == 42 and "not bit for bit" in caplog.text


def test_save_rotate_and_replace(tmp_path, fresh_accelerate_state):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    (tmp_path / "checkpoint-4.tmp").mkdir()  # left by a run killed while saving step 4
    for step in (2, 4, 6):
        progress.global_step = step
        with torch.no_grad():
            model.weight.fill_(step)
        save_checkpoint(accelerator, str(tmp_path), step, total_limit=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    files = {p.name for p in (tmp_path / "checkpoint-6").iterdir()}
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"} <= files

    with torch.no_grad():
        model.weight.fill_(-1)
    save_checkpoint(accelerator, str(tmp_path), 6, total_limit=None)  # same step again: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    accelerator.load_state(str(tmp_path / "checkpoint-4"))
    assert progress.global_step == 4 and model.weight.eq(4).all()
    accelerator.load_state(str(tmp_path / "checkpoint-6"))
    assert progress.global_step == 6 and model.weight.eq(-1).all()


@pytest.mark.parametrize("limit", [1])
def test_rotation_keeps_the_newest(tmp_path, fresh_accelerate_state, limit):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(1, 1))
    for step in (1, 2, 3):
        save_checkpoint(accelerator, str(tmp_path), step, total_limit=limit)
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [3]
