"""Faults survived, nothing lost: SIGKILL anywhere, half-written checkpoints, non-finite losses,
a full disk, corrupt saved files and a Hub push that fails midway.

Each test states the behaviour it pins down; the README's "Reliability" section lists them.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scratch_diffusion.training import checkpoints, hub
from scratch_diffusion.training.checkpoints import CHECKPOINT_RE, MANIFEST, checkpoint_problem, write_manifest

from ..training.conftest import REPO, run, subprocess_env, train_command
from ..training.test_outputs import FakeHub
from ..training.test_train_e2e import assert_same_training_state
from .conftest import FAKE_TOKEN, IS_ROOT, error_lines, no_space, poison, run_main, train_argv


def _unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _unet_weights(a), _unet_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ---- SIGKILL at any moment -------------------------------------------------------------------------

CHAIN_ARGS = [
    "--class_conditional", "--random_flip", "--train_batch_size", "4", "--max_train_steps", "12",
    "--checkpointing_steps", "1", "--checkpoints_total_limit", "2", "--lr_warmup_steps", "2",
    "--logging_steps", "3", "--save_images_steps", "5", "--eval_batch_size", "2",
    "--ddpm_num_inference_steps", "2", "--learning_rate", "1e-3",
]  # fmt: skip
RANDOM_KILL_SEEDS = (1234, 98765)


def _names(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


def _steps(names: set[str]) -> list[int]:
    return sorted(int(m.group(1)) for n in names if (m := CHECKPOINT_RE.match(n)))


def _kill_at(command: list[str], out: Path, hf_home: Path, condition, log: Path) -> set[str]:
    """Start ``command`` and SIGKILL it as soon as ``condition(names in out)`` holds (polled every ms).

    Returns the folder's entries right after the kill; fails if the run ended first.
    """
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            command, cwd=REPO, env=subprocess_env(hf_home), stdout=subprocess.DEVNULL, stderr=stderr
        )
        deadline = time.monotonic() + 240
        try:
            while time.monotonic() < deadline:
                if condition(_names(out)):
                    process.kill()
                    process.wait()
                    return _names(out)
                if process.poll() is not None:
                    raise AssertionError(f"the run ended before the kill point:\n{log.read_text()[-3000:]}")
                time.sleep(0.001)
            raise AssertionError("the run neither reached the kill point nor ended")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def _random_point(seed: int, start_step: int, latest_allowed: int):
    """Kill at a uniform moment within ~5 steps after the run's first new checkpoint (seeded), at the latest
    when checkpoint-<latest_allowed> exists, so the run never ends first."""
    rng, state = random.Random(seed), {}

    def condition(names: set[str]) -> bool:
        steps = _steps(names)
        if "deadline" not in state and steps and steps[-1] > start_step:
            state["deadline"] = time.monotonic() + rng.uniform(0.0, 0.5)
        return ("deadline" in state and time.monotonic() >= state["deadline"]) or latest_allowed in steps

    return condition


@pytest.mark.slow
def test_sigkill_anywhere_resumes_to_the_uninterrupted_result(tmp_path, tiny_unet_json, hf_home):
    """kill -9 mid-checkpoint-write, at two seeded random moments, and mid-final-save; after each kill
    ``--resume_from_checkpoint latest`` finds an intact checkpoint, and the finished run's weights,
    optimizer, LR schedule, EMA, final UNet and sample grid equal an uninterrupted run's bit for bit."""
    args = ["--model_config_name_or_path", str(tiny_unet_json), *CHAIN_ARGS]
    reference, out = tmp_path / "reference", tmp_path / "killed"
    run(train_command("--output_dir", reference, *args), hf_home)
    command = train_command("--output_dir", out, *args)
    resume = [*command, "--resume_from_checkpoint", "latest"]
    history = []

    # 1. while a checkpoint is being written (a checkpoint-N.tmp folder exists, N ≥ 3)
    left = _kill_at(
        command, out, hf_home,
        lambda names: 2 in _steps(names) and any(n.startswith("checkpoint-") and n.endswith(".tmp") for n in names),
        tmp_path / "run1.log",
    )  # fmt: skip
    history.append(("mid-write", sorted(left)))
    partial = [n for n in left if n.startswith("checkpoint-") and n.endswith(".tmp")]
    # 2, 3. at seeded random moments (anywhere: a step, a checkpoint write, a sample grid, the rotation)
    for run_index, (seed, latest_allowed) in enumerate(zip(RANDOM_KILL_SEEDS, (8, 11)), start=2):
        start = _steps(_names(out))[-1]
        log_file = tmp_path / f"run{run_index}.log"
        left = _kill_at(resume, out, hf_home, _random_point(seed, start, latest_allowed), log_file)
        history.append((f"random seed {seed}", sorted(left)))
        log = log_file.read_text()
        assert "Resuming from" in log, (history, log[-2000:])
        if run_index == 2 and partial:  # the half-written folder of kill 1 was dealt with, never loaded
            assert any(f"{name}: a checkpoint half-written" in log or f"{name} is complete" in log for name in partial)
    # 4. during the final save (the pipeline folder is being written)
    left = _kill_at(resume, out, hf_home, lambda names: "unet" in names or "model_index.json" in names,
                    tmp_path / "run4.log")  # fmt: skip
    history.append(("final save", sorted(left)))
    assert hub.missing_outputs(str(out)), history  # an interrupted output is never mistaken for a finished one
    assert hub.main(["push", "--output_dir", str(out), "--hub_model_id", "me/x", "--hub_token", FAKE_TOKEN]) == 2

    finished = run(resume, hf_home)
    assert "Resuming from" in finished.stderr, history
    assert_same_training_state(reference, out, step=12)
    assert (reference / "samples.png").read_bytes() == (out / "samples.png").read_bytes()
    assert sorted(n for n in _names(out) if n.startswith("checkpoint")) == ["checkpoint-11", "checkpoint-12"], history
    assert all(checkpoint_problem(str(out / f"checkpoint-{s}")) is None for s in (11, 12))
    assert hub.missing_outputs(str(out)) == []


# ---- half-written checkpoints ----------------------------------------------------------------------


def test_half_written_checkpoints_are_skipped_with_a_warning_never_loaded(
    tmp_path, tiny_unet_json, hf_home, fresh_accelerate_state, monkeypatch, capfd, caplog
):
    """Planted: a checkpoint without manifest, one with a truncated file, a .tmp folder. ``latest``
    warns about each and resumes from the newest intact checkpoint; only that one is loaded."""
    out = tmp_path / "run"
    assert run_main(train_argv(out, tiny_unet_json, steps=4, every=2)) == 0
    good = out / "checkpoint-4"
    shutil.copytree(good, out / "checkpoint-6")
    (out / "checkpoint-6" / MANIFEST).unlink()  # e.g. copied by hand, or written by another tool
    shutil.copytree(good, out / "checkpoint-8")
    weights = out / "checkpoint-8" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # truncated after the manifest was written
    shutil.copytree(good, out / "checkpoint-10.tmp")
    (out / "checkpoint-10.tmp" / MANIFEST).unlink()  # a save that never finished
    caplog.clear()

    from accelerate import Accelerator

    loaded = []
    real_load = Accelerator.load_state
    monkeypatch.setattr(Accelerator, "load_state", lambda self, d, **kw: (loaded.append(d), real_load(self, d, **kw)))
    assert run_main(train_argv(out, tiny_unet_json, "--resume_from_checkpoint", "latest", steps=5, every=5)) == 0
    err = caplog.text
    assert loaded == [str(good)]
    assert f"Skipping {out / 'checkpoint-8'}: model.safetensors has" in err and "(truncated or overwritten)" in err
    assert f"Skipping {out / 'checkpoint-6'}: it has no {MANIFEST} (half-written" in err
    assert f"Removing {out / 'checkpoint-10.tmp'}: a checkpoint half-written" in err
    assert not (out / "checkpoint-10.tmp").exists() and checkpoint_problem(str(out / "checkpoint-5")) is None

    # Named explicitly, a broken checkpoint is refused before anything is loaded (exit 2, file named).
    loaded.clear()
    capfd.readouterr()
    assert run_main(train_argv(out, tiny_unet_json, "--resume_from_checkpoint", str(out / "checkpoint-8"))) == 2
    (line,) = error_lines(capfd.readouterr().err)
    assert "checkpoint-8 is not a complete checkpoint: model.safetensors has" in line and loaded == []


def test_a_complete_checkpoint_that_missed_its_rename_is_kept(tmp_path):
    """Killed between the manifest and the rename: the .tmp folder is complete, so it is published."""
    complete = tmp_path / "checkpoint-3.tmp"
    complete.mkdir()
    (complete / "model.safetensors").write_bytes(b"x" * 10)
    write_manifest(str(complete))
    (tmp_path / "checkpoint-3.old.tmp").mkdir()  # the copy it was replacing: stale
    checkpoints.remove_partial_checkpoints(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3"]
    assert checkpoints.resolve_resume("latest", str(tmp_path)) == str(tmp_path / "checkpoint-3")


# ---- non-finite loss -------------------------------------------------------------------------------


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, tiny_unet_json, hf_home, fresh_accelerate_state, monkeypatch, capfd
):
    """A NaN loss at step 3 (logged every 10 steps): the check before checkpoint-4 stops the run with
    exit 3, naming step 3 and checkpoint-2; nothing poisoned reaches the disk. Resuming works."""
    poison(monkeypatch, {3})
    out = tmp_path / "nan"
    argv = train_argv(out, tiny_unet_json, "--logging_steps", "10", steps=6, every=2)
    assert run_main(argv) == 3
    (line,) = error_lines(capfd.readouterr().err)
    assert "the loss was nan at step 3: training stopped, and no state from that step on was saved" in line
    assert f"The last good checkpoint is {out / 'checkpoint-2'}" in line and "--skip_nonfinite_loss" in line
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2"]
    assert not (out / "model_index.json").exists()
    assert checkpoint_problem(str(out / "checkpoint-2")) is None
    assert all(t.isfinite().all() for t in load_file(out / "checkpoint-2" / "model.safetensors").values())

    poison(monkeypatch, set())  # the bad batch was a fluke: continue from the last good checkpoint
    assert run_main([*argv, "--resume_from_checkpoint", "latest"]) == 0
    assert all(t.isfinite().all() for t in _unet_weights(out).values())


def test_skip_nonfinite_loss_skips_the_update_and_counts_it(
    tmp_path, tiny_unet_json, hf_home, fresh_accelerate_state, monkeypatch, caplog
):
    """--skip_nonfinite_loss: the poisoned update is not applied (weights stay finite), it is logged,
    counted in the checkpoint, and the run finishes with exit 0."""
    poison(monkeypatch, {3})
    out = tmp_path / "skip"
    argv = train_argv(out, tiny_unet_json, "--skip_nonfinite_loss", "--logging_steps", "1", steps=5, every=5)
    assert run_main(argv) == 0
    err = caplog.text
    assert "Step 3: the loss is nan (non-finite on at least one process); update skipped (1 so far" in err
    assert "1 update(s) were skipped for a non-finite loss" in err
    progress = torch.load(out / "checkpoint-5" / "custom_checkpoint_1.pkl", weights_only=True)
    assert progress["global_step"] == 5 and progress["skipped_updates"] == 1
    assert all(t.isfinite().all() for t in _unet_weights(out).values())

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(out / "logs" / "train")).Reload()  # the scalars (hparams sit in a subfolder)
    assert [e.step for e in scalars.Scalars("loss")] == [1, 2, 4, 5]  # the skipped update logs no loss
    assert [(e.step, e.value) for e in scalars.Scalars("skipped_nonfinite_updates")] == [(3, 1.0)]


# ---- disk full / unwritable output -------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["disk-full", pytest.param("read-only", marks=pytest.mark.skipif(
    IS_ROOT, reason="chmod does not stop root from writing; the disk-full case covers the same path"))])  # fmt: skip
def test_checkpoint_write_failure_keeps_earlier_checkpoints(
    fault, tmp_path, tiny_unet_json, hf_home, fresh_accelerate_state, monkeypatch, capfd
):
    """The second checkpoint cannot be written (ENOSPC after a partial file, or a read-only folder):
    exit 4 with one line naming the step, the OS error and the intact checkpoint-2; the partial
    folder is gone. Once there is room, ``latest`` resumes and the result equals a straight run."""
    from accelerate import Accelerator

    straight, out = tmp_path / "straight", tmp_path / "full"
    assert run_main(train_argv(straight, tiny_unet_json, steps=6, every=2)) == 0
    real_save, calls = Accelerator.save_state, []

    def failing_save(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:
            if fault == "read-only":
                os.chmod(out, 0o555)
                return real_save(self, output_dir, **kwargs)
            os.makedirs(output_dir, exist_ok=True)
            Path(output_dir, "model.safetensors").write_bytes(b"half a file")
            raise no_space(Path(output_dir, "optimizer.bin"))
        return real_save(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", failing_save)
    capfd.readouterr()
    assert run_main(train_argv(out, tiny_unet_json, steps=6, every=2)) == 4
    os.chmod(out, 0o755)
    (line,) = error_lines(capfd.readouterr().err)
    reason = "No space left on device" if fault == "disk-full" else "Permission denied"
    assert f"could not write checkpoint-4 in {str(out)!r}: " in line and reason in line, line
    assert "The checkpoints already written are intact (checkpoint-2)" in line, line
    assert sorted(os.listdir(out)) == ["checkpoint-2", "logs"]
    assert checkpoint_problem(str(out / "checkpoint-2")) is None

    monkeypatch.setattr(Accelerator, "save_state", real_save)  # space freed
    assert run_main(train_argv(out, tiny_unet_json, "--resume_from_checkpoint", "latest", steps=6, every=2)) == 0
    _assert_same_weights(straight, out)


def test_final_save_failure_names_the_last_good_checkpoint(
    tmp_path, tiny_unet_json, hf_home, fresh_accelerate_state, monkeypatch, capfd
):
    """The disk fills while the pipeline is saved: exit 4 naming the folder, the error and checkpoint-4;
    the folder is not a finished output (the push command refuses it); resuming writes it."""
    from scratch_diffusion.training import export

    real = export.save_pipeline

    def full(pipeline, output_dir):
        os.makedirs(os.path.join(output_dir, "unet"), exist_ok=True)
        raise no_space(os.path.join(output_dir, "unet", "diffusion_pytorch_model.safetensors"))

    monkeypatch.setattr(export, "save_pipeline", full)
    out = tmp_path / "final"
    argv = train_argv(out, tiny_unet_json, steps=4, every=2)
    assert run_main(argv) == 4
    (line,) = error_lines(capfd.readouterr().err)
    assert f"could not save the pipeline to {str(out)!r}: OSError: [Errno {errno.ENOSPC}] No space left" in line
    assert f"The last good checkpoint is {out / 'checkpoint-4'}" in line
    assert hub.missing_outputs(str(out))

    monkeypatch.setattr(export, "save_pipeline", real)
    assert run_main([*argv, "--resume_from_checkpoint", "latest"]) == 0
    assert hub.missing_outputs(str(out)) == []


# ---- corrupt saved files -------------------------------------------------------------------------------


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


CORRUPTIONS = {
    "model_index.json": lambda d: (d / "model_index.json").write_text('{"_class_name": '),
    "scheduler/scheduler_config.json": lambda d: (d / "scheduler" / "scheduler_config.json").write_text("[1, 2]"),
    "unet/config.json": lambda d: (d / "unet" / "config.json").write_bytes(b"\xff\xfe not json"),
    "unet/diffusion_pytorch_model.safetensors": lambda d: _truncate(
        d / "unet" / "diffusion_pytorch_model.safetensors", -100
    ),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_corrupt_saved_file_is_named(name, saved_pipeline, tmp_path, capsys):
    """A corrupt JSON file or a truncated safetensors file: SavedPipelineError (an OSError) naming the
    file, raised before diffusers reads the folder; the metrics CLI exits 2 with the same message."""
    from scratch_diffusion import ScratchDiffusionPipeline, metrics
    from scratch_diffusion.pipelines.saved_format import SavedPipelineError

    folder = tmp_path / "pipe"
    shutil.copytree(saved_pipeline, folder)
    CORRUPTIONS[name](folder)
    with pytest.raises(SavedPipelineError) as info:
        ScratchDiffusionPipeline.from_pretrained(folder)
    message = str(info.value)
    assert str(folder / name) in message and ("truncated" in message or "JSON" in message), message
    assert metrics.main([str(folder), "--num_samples", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(folder / name) in err and "Traceback" not in err


def test_a_scheduler_loaded_alone_names_its_corrupt_config(saved_pipeline, tmp_path):
    """``ScratchDDIMScheduler.from_pretrained`` is diffusers' loader: its error names the file too."""
    from scratch_diffusion import ScratchDDIMScheduler

    folder = tmp_path / "scheduler"
    shutil.copytree(saved_pipeline / "scheduler", folder)
    (folder / "scheduler_config.json").write_text('{"num_train_timesteps": 10')
    with pytest.raises(OSError, match=re.escape(f"{folder / 'scheduler_config.json'}' is not a valid JSON file")):
        ScratchDDIMScheduler.from_pretrained(folder)


@pytest.mark.parametrize("where", ["model_index.json", "scheduler/scheduler_config.json", "unet/config.json"])
def test_a_config_from_a_newer_version_warns_naming_the_file(where, saved_pipeline, tmp_path):
    """Unknown keys (a folder written by a newer version): a UserWarning naming the file and keys; the
    pipeline still loads and samples."""
    from scratch_diffusion import ScratchDiffusionPipeline

    folder = tmp_path / "pipe"
    shutil.copytree(saved_pipeline, folder)
    config = json.loads((folder / where).read_text())
    config.update(future_knob=3, _diffusers_version="9.0.0")
    (folder / where).write_text(json.dumps(config))
    with pytest.warns(UserWarning, match=re.escape(f"{folder / where}: keys ['future_knob'] are not known")) as record:
        pipe = ScratchDiffusionPipeline.from_pretrained(folder)
    assert any("'9.0.0'" in str(w.message) for w in record)
    assert pipe(batch_size=1, num_inference_steps=2, output_type="np").images.shape == (1, 8, 8, 3)


# ---- Hub push fails midway -------------------------------------------------------------------------------


def test_failed_push_is_finished_by_the_documented_push_command(
    tmp_path, tiny_unet_json, hf_home, fresh_accelerate_state, monkeypatch, capfd
):
    """The upload fails after training: exit 1, the local output complete, and the error line gives
    the command that re-runs the push alone; that very command uploads the same folder."""
    FakeHub(monkeypatch, fail="upload_folder")
    out = tmp_path / "my output"  # a space: the printed command must quote it
    argv = train_argv(out, tiny_unet_json, "--push_to_hub", "--hub_model_id", "me/kept", "--hub_token", FAKE_TOKEN)
    assert run_main(argv) == 1
    (line,) = error_lines(capfd.readouterr().err)
    assert hub.missing_outputs(str(out)) == []
    command = shlex.split(line.split("push it again with `")[1].split("`")[0])
    assert command[:4] == ["python", "-m", "scratch_diffusion.training.hub", "push"]

    fake = FakeHub(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)  # the printed command leaves the token to the environment
    assert hub.main(command[3:]) == 0
    captured = capfd.readouterr()
    (_, created), (_, uploaded) = fake.calls
    assert created["repo_id"] == "me/kept" and uploaded["folder_path"] == str(out)
    assert {"model_index.json", "README.md", "unet/diffusion_pytorch_model.safetensors"} <= set(uploaded["files"])
    assert uploaded["ignore_patterns"] == hub.IGNORE_PATTERNS and "Pushed" in captured.out
    assert FAKE_TOKEN not in captured.out + captured.err + line


def test_push_command_runs_as_a_module_and_refuses_an_unfinished_output(tmp_path, hf_home):
    """``python -m scratch_diffusion.training.hub push`` on a folder without the final files: exit 2,
    one line naming what is missing; the Hub is not contacted (offline here)."""
    (tmp_path / "half" / "unet").mkdir(parents=True)
    (tmp_path / "half" / "model_index.json").write_text("{}")
    result = subprocess.run(
        [sys.executable, "-m", "scratch_diffusion.training.hub", "push", "--output_dir", str(tmp_path / "half"),
         "--hub_model_id", "me/half", "--hub_token", FAKE_TOKEN],
        cwd=REPO, env=subprocess_env(hf_home), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = error_lines(result.stderr, "scratch_diffusion.training.hub")
    assert "is not a finished training output (missing scheduler/scheduler_config.json" in line and "README.md" in line
