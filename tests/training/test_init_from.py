"""``--init_from``: a run starts from a saved pipeline's UNet (or a saved VAE) exactly as saved, and misfits exit 2.

"Exactly": the first update of a run with ``--lr_warmup_steps 1`` has learning rate 0 (the warm-up's first
factor is 0/1), and AdamW with lr = 0 is an exact no-op in floating point (p·(1 − 0·λ) − 0·m̂/(√v̂ + ε) = p), so
``checkpoint-1`` holds the weights the run started from, bit for bit; the second update then trains them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from scratch_diffusion.training import run_training
from scratch_diffusion.training.init_from import load_vae_for_training, read_saved_vae_config
from scratch_diffusion.training.train import main
from scratch_diffusion.training.train_vae import main as vae_main
from scratch_diffusion.training.vae import run_vae_training

from .test_cli import no_accelerator  # noqa: F401 (a fixture)

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"


def _argv(out: Path, *extra: str, steps: int = 2) -> list[str]:
    return [
        "--output_dir", str(out), "--max_train_steps", str(steps), "--train_batch_size", "4",
        "--checkpointing_steps", "1", "--lr_warmup_steps", "1", "--learning_rate", "1e-3", "--logger", "none",
        "--eval_batch_size", "2", "--ddpm_num_inference_steps", "2", "--save_images_steps", "1000", *extra,
    ]  # fmt: skip


def _vae_argv(out: Path, *extra: str, steps: int = 2) -> list[str]:
    return [
        "--output_dir", str(out), "--max_train_steps", str(steps), "--train_batch_size", "8",
        "--checkpointing_steps", "1", "--lr_warmup_steps", "1", "--learning_rate", "1e-3", "--logger", "none",
        "--save_images_steps", "1000", "--eval_num_images", "16", "--latent_scale_num_images", "16", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 2-step flow run of the tiny UNet on the digits (16×16, one channel, unconditional)."""
    from .conftest import TINY_UNET

    folder = tmp_path_factory.mktemp("finished")
    unet_json = folder / "tiny_unet.json"
    unet_json.write_text(json.dumps(TINY_UNET))
    run_training(_argv(folder / "run", "--model_config_name_or_path", str(unet_json)))
    return folder / "run"


def test_a_run_starts_from_the_saved_unet_bit_for_bit_and_trains(tmp_path, hf_home, finished_run):
    saved = load_file(finished_run / UNET_WEIGHTS)
    out = tmp_path / "tuned"
    summary = run_training(_argv(out, "--init_from", str(finished_run), "--no-use_ema"))
    assert summary.global_step == 2

    start = load_file(out / "checkpoint-1" / "model.safetensors")  # after the lr = 0 update: the start weights
    assert start.keys() == saved.keys()
    assert all(torch.equal(start[key], saved[key]) for key in saved)
    trained = load_file(out / UNET_WEIGHTS)
    assert all(torch.isfinite(t).all() for t in trained.values())
    assert any(not torch.equal(trained[key], saved[key]) for key in saved)  # the second update trained it
    config, saved_config = (json.loads((run / "unet" / "config.json").read_text()) for run in (out, finished_run))
    assert {k: v for k, v in config.items() if k[0] != "_"} == {k: v for k, v in saved_config.items() if k[0] != "_"}
    card = ModelCard.load(out / "README.md")
    assert f"trained starting from the UNet of `{finished_run.name}`" in card.text
    assert "init_from" in card.text and str(finished_run.parent) not in card.text  # no local paths in a card


def _fails(argv: list[str], message: str, capsys, prog: str = "train.py", entry=main) -> None:
    assert entry(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1 and message in errors[0], err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--init_from", "{tmp}/missing"], "--init_from '{tmp}/missing': no such folder"),
        (["--init_from", "{tmp}"], "holds no model_index.json"),
        (["--init_from", "{run}", "--model_config_name_or_path", "tiny"], "not both"),
        (
            ["--init_from", "{run}", "--objective", "ddpm"],
            "its UNet predicts 'flow_velocity' on the 'flow' path, but --objective ddpm trains 'epsilon' on the 'vp' "
            "path; allowed: a pipeline whose UNet predicts 'epsilon'",
        ),
        (["--init_from", "{run}", "--resolution", "32"], "built for sample_size 16, but this run trains at side 32"),
    ],
)
@pytest.mark.usefixtures("no_accelerator")
def test_misfits_known_from_configs_exit_2_before_accelerate(tmp_path, hf_home, finished_run, capsys, extra, message):
    fill = {"tmp": str(tmp_path), "run": str(finished_run)}
    argv = _argv(tmp_path / "out", *[a.format(**fill) for a in extra])
    _fails(argv, message.format(**fill), capsys)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--class_conditional"], "num_class_embeds None, but this run is conditioned on 10 classes; allowed: "),
        (["--train_data_dir", "{images}"], "in_channels 1, but the training data have 3 channel(s); allowed: "),
    ],
)
def test_misfits_known_from_the_data_exit_2_before_training(
    tmp_path, hf_home, finished_run, imagefolder, capsys, extra, message
):
    out = tmp_path / "out"
    extra = [a.format(images=imagefolder) for a in extra]
    _fails(_argv(out, "--init_from", str(finished_run), "--resolution", "16", *extra), message, capsys)
    assert not any(out.glob("checkpoint-*"))


@pytest.fixture(scope="module")
def finished_vae(tmp_path_factory, classifier_cache) -> Path:
    folder = tmp_path_factory.mktemp("vae") / "vae"
    run_vae_training(_vae_argv(folder))
    return folder


def test_a_vae_run_starts_from_the_saved_vae_bit_for_bit_and_trains(tmp_path, hf_home, finished_vae):
    saved = load_file(finished_vae / VAE_WEIGHTS)
    out = tmp_path / "tuned"
    run_vae_training(_vae_argv(out, "--init_from", str(finished_vae), "--no-use_ema"))
    start = load_file(out / "checkpoint-1" / "model.safetensors")  # AutoencoderForTraining: keys under "vae."
    assert start.keys() == {f"vae.{key}" for key in saved}
    assert all(torch.equal(start[f"vae.{key}"], saved[key]) for key in saved)
    trained = load_file(out / VAE_WEIGHTS)
    assert any(not torch.equal(trained[key], saved[key]) for key in saved)
    assert f"trained starting from `{finished_vae.name}`" in (out / "README.md").read_text()


def test_a_pipeline_folder_gives_its_vae(tmp_path, finished_vae):
    """A folder with model_index.json is read as a pipeline: its VAE is in vae/."""
    pipeline = tmp_path / "pipe"
    shutil.copytree(finished_vae, pipeline / "vae")
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "ScratchDiffusionPipeline"}))
    assert read_saved_vae_config(str(pipeline))["latent_channels"] == 4
    vae = load_vae_for_training(str(pipeline))
    saved = load_file(finished_vae / VAE_WEIGHTS)
    assert vae.training and all(torch.equal(vae.state_dict()[key], saved[key]) for key in saved)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--init_from", "{tmp}/missing"], "no such folder; pass a VAE folder"),
        (["--init_from", "{vae}", "--model_config_name_or_path", "tiny"], "not both"),
        (["--init_from", "{vae}", "--latent_channels", "3"], "whose VAE has latent_channels 4; allowed: 4"),
        (["--init_from", "{vae}", "--resolution", "15"], "is not divisible by the VAE's downsampling factor 2"),
        (
            ["--init_from", "{vae}", "--train_data_dir", "{images}", "--num_validation_images", "0"],
            "in_channels 1, but the training data have 3",
        ),
    ],
)
def test_vae_misfits_exit_2(tmp_path, hf_home, finished_vae, imagefolder, capsys, extra, message):
    fill = {"tmp": str(tmp_path), "vae": str(finished_vae), "images": str(imagefolder)}
    out = tmp_path / "out"
    _fails(_vae_argv(out, *[a.format(**fill) for a in extra]), message, capsys, "train_vae.py", vae_main)
    assert not any(out.glob("checkpoint-*"))
