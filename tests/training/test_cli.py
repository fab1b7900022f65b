"""Bad input fails fast — before any training step — with exit status 2 and a clear message."""

from __future__ import annotations

import pytest
from accelerate import Accelerator

from scratch_diffusion.training import ConfigError, DataError, run_training
from scratch_diffusion.training.cli import parse_args, validate_args
from scratch_diffusion.training.train import main

from .conftest import REPO, subprocess_env, train_command


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


@pytest.fixture
def no_accelerator(monkeypatch):
    """Fail the test if an Accelerator is built: static checks must stop the run before accelerate, data or model."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("an Accelerator was built for an input that static checks should refuse")

    monkeypatch.setattr(Accelerator, "__init__", refuse)


def _fails(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("train.py: error: ")]
    assert len(errors) == 1 and message in errors[0], err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train_data_dir", "{tmp}/missing"], "is not a folder"),
        (["--train_data_dir", "{tmp}/empty"], "holds no images"),
        (["--dataset_name", "./no/such/dataset"], "no such local path"),
        (["--dataset_name", "a", "--train_data_dir", "{tmp}/empty"], "not both"),
        (["--model_config_name_or_path", "huge"], "neither a preset (micro, tiny, compact, small, base)"),
        (["--train_data_dir", "{tmp}", "--digits_split", "train"], "--digits_split 'train' applies to the built-in"),
        (["--model_config_name_or_path", "{tmp}/not_json.txt"], "not a readable JSON file"),
        (["--model_config_name_or_path", "small", "--resolution", "18"], "cannot be downsampled by the UNet"),
        (["--model_config_name_or_path", "tiny", "--resolution", "1"], "use a multiple of 2"),
        (["--resume_from_checkpoint", "{tmp}/checkpoint-7"], "no such checkpoint folder"),
        (["--resume_from_checkpoint", "{tmp}/empty"], "is not a checkpoint-<step> folder"),
        (["--push_to_hub"], "--push_to_hub needs --hub_model_id"),
        (["--push_to_hub", "--hub_model_id", "me/model"], "--push_to_hub needs a token"),
        (["--objective", "flow", "--prediction_type", "epsilon"], "flow matching predicts the velocity"),
        (["--objective", "flow", "--snr_gamma", "5"], "--snr_gamma applies to --objective ddpm"),
        (["--objective", "ddpm", "--weighting_scheme", "logit_normal"], "applies to --objective flow"),
        (["--prediction_type", "epsilon", "--weighting_scheme", "uniform"], "applies to --objective flow"),
        (["--objective", "flow", "--ddpm_beta_schedule", "linear"], "--ddpm_beta_schedule applies to --objective ddpm"),
        (["--snr_gamma", "0"], "--snr_gamma must be > 0"),
        (["--train_batch_size", "0"], "--train_batch_size must be ≥ 1"),
        (["--checkpoints_total_limit", "0"], "--checkpoints_total_limit must be ≥ 1"),
        (["--class_dropout_prob", "1"], "--class_dropout_prob must be in [0, 1)"),
    ],
)
def test_static_bad_input(extra, message, tmp_path, out, hf_home, no_accelerator, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "not_json.txt").write_text("block_out_channels: [1, 2]")
    argv = ["--output_dir", str(out), *(a.replace("{tmp}", str(tmp_path)) for a in extra)]
    _fails(argv, message, capsys)
    assert not out.exists(), "nothing may be written before the input is valid"


def test_run_training_raises_what_the_cli_reports(tmp_path, out, hf_home, no_accelerator):
    """The Python entry point: the same checks, as exceptions, before any Accelerator is built."""
    with pytest.raises(ConfigError, match="--train_batch_size must be ≥ 1, got 0"):
        run_training(["--output_dir", str(out), "--train_batch_size", "0"])
    with pytest.raises(ConfigError, match="is not a folder"):
        run_training(["--output_dir", str(out), "--train_data_dir", str(tmp_path / "missing")])
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--objective", "ddim"], "invalid choice: 'ddim'"),
        (["--prediction_type", "x0"], "invalid choice: 'x0'"),
        (["--mixed_precision", "fp8"], "invalid choice: 'fp8'"),
    ],
)
def test_unknown_choices_are_argparse_errors(extra, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(extra)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_data_errors_stop_before_training(imagefolder, tmp_path, out, hf_home, capsys):
    base = ["--output_dir", str(out), "--train_data_dir", str(imagefolder), "--model_config_name_or_path", "tiny"]
    _fails([*base, "--image_column", "picture"], "--image_column 'picture' is not a column", capsys)
    with pytest.raises(DataError, match="--image_column 'picture' is not a column"):
        run_training([*base, "--image_column", "picture"])
    flat = tmp_path / "flat"
    flat.mkdir()
    (imagefolder / "circle" / "circle_0.png").rename(flat / "one.png")
    _fails(
        ["--output_dir", str(out), "--train_data_dir", str(flat), "--class_conditional"],
        "--label_column 'label' is not a column",
        capsys,
    )
    _fails(
        ["--output_dir", str(out), "--dataset_name", "someone/missing-dataset"],
        "could not load --dataset_name 'someone/missing-dataset'",
        capsys,
    )
    assert not out.exists()


def test_defaults_follow_the_data_and_objective():
    args = parse_args([])  # the best measured short-run recipe: flow matching with logit-normal σ
    assert (args.objective, args.weighting_scheme, args.prediction_type, args.ddpm_beta_schedule) == (
        "flow", "logit_normal", None, None
    )  # fmt: skip
    assert (args.resolution, args.label_column) == (16, None)
    for ddpm_only in (["--prediction_type", "v_prediction"], ["--ddpm_beta_schedule", "squaredcos_cap_v2"],
                      ["--rescale_betas_zero_snr"], ["--snr_gamma", "5"]):  # fmt: skip
        args = parse_args(ddpm_only)  # a diffusers train_unconditional.py command line stays DDPM
        assert (args.objective, args.weighting_scheme) == ("ddpm", None), ddpm_only
        assert args.prediction_type in ("epsilon", "v_prediction") and args.ddpm_beta_schedule is not None
    args = parse_args(["--objective", "ddpm"])
    assert (args.prediction_type, args.ddpm_beta_schedule, args.weighting_scheme) == ("epsilon", "linear", None)
    args = parse_args(["--train_data_dir", "x", "--objective", "flow", "--class_conditional"])
    assert (args.resolution, args.prediction_type, args.label_column) == (64, None, "label")
    validate_args(parse_args(["--model_config_name_or_path", "base", "--resolution", "32"]))


def test_real_cli_fails_before_training(tmp_path, hf_home):
    """The script itself, as a user runs it: exit status 2 and one clear line, before anything is built.

    No progress bar, no log line (the trainer logs once the data is loaded), no output folder.
    """
    import subprocess

    result = subprocess.run(
        train_command("--output_dir", tmp_path / "out", "--train_data_dir", tmp_path / "nowhere"),
        cwd=REPO, env=subprocess_env(hf_home), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    message = f"train.py: error: --train_data_dir '{tmp_path / 'nowhere'}' is not a folder."
    assert result.stderr.splitlines() == [message]
    assert result.stdout == ""
    assert not (tmp_path / "out").exists()


def test_processes_that_did_not_join_are_refused(tmp_path, hf_home, monkeypatch, capsys):
    """torchrun without ACCELERATE_USE_CPU on a CPU machine: each process would think it is alone."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    _fails(["--output_dir", str(tmp_path / "out")], "2 processes were launched but accelerate joined 1", capsys)
    assert not (tmp_path / "out").exists()
