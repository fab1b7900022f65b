"""training/train_vae.py: a tiny AutoencoderKL trained on the digits, its outputs, exact resume and bad input.

In-process runs (``run_vae_training`` / ``main``) on CPU with one thread; one subprocess checks the file entry point.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from scratch_diffusion.training.data import load_digits
from scratch_diffusion.training.evaluation import reference_images
from scratch_diffusion.training.train_vae import main
from scratch_diffusion.training.vae import VAE_PRESETS, downsampling_factor, load_vae_config, run_vae_training
from scratch_diffusion.training.vae.losses import PatchDiscriminator, kl_divergence, reconstruction_loss
from scratch_diffusion.training.vae.metrics import psnr, split_validation

from .conftest import REPO, subprocess_env

TRAIN_VAE_PY = REPO / "training" / "train_vae.py"


def _argv(out: Path, *extra: str, steps: int) -> list[str]:
    return [
        "--output_dir", str(out), "--max_train_steps", str(steps), "--train_batch_size", "16",
        "--learning_rate", "1e-3", "--lr_warmup_steps", "5", "--checkpointing_steps", "1000",
        "--save_images_steps", "1000", "--eval_num_images", "200",
        "--logger", "none", *extra,
    ]  # fmt: skip


def test_tiny_vae_trains_and_loads_with_its_measured_scale(tmp_path, hf_home, classifier_cache):
    """30 steps on the digits: PSNR rises and FD falls; the folder loads with the measured scaling_factor."""
    out = tmp_path / "vae"
    summary = run_vae_training(
        _argv(out, "--eval_steps", "10", "--logger", "tensorboard", "--save_images_steps", "30", steps=30)
    )
    assert summary.global_step == 30 and summary.images_per_second > 0

    record = json.loads((out / "vae_metrics.json").read_text())
    history = record["history"]
    assert [r["step"] for r in history] == [10, 20, 30]
    assert record["step"] == 30 and record["evaluated_on"] == "held-out" and record["n_images"] == 200
    assert history[-1]["psnr"] > history[0]["psnr"] + 2, history  # a VAE that does not learn fails here
    assert history[-1]["fd"] < history[0]["fd"], history
    assert record["fd_real_baseline"] > 0 and record["feature_space"] == "digits-classifier"
    assert record["latent_shape"] == [4, 8, 8] and record["downsampling_factor"] == 2
    assert record["n_reconstructed"] + record["n_reference"] == 200

    vae = AutoencoderKL.from_pretrained(out)
    scale = record["latent_scale"]["scaling_factor"]
    assert vae.config.shift_factor is None and record["latent_scale"]["shift_factor"] is None  # LDM: scale only
    assert vae.config.scaling_factor == pytest.approx(scale, rel=1e-12)  # one float64 value through JSON: exact
    assert (vae.config.in_channels, vae.config.sample_size) == (1, 16)
    # The scale is 1/std of the posterior means of the (seeded) training split: measured here independently.
    train_set, _ = split_validation(load_digits(16, False).dataset, 359, seed=0)
    images = reference_images(train_set, len(train_set), 16, seed=0)
    with torch.no_grad():
        means = vae.encode(images).latent_dist.mean
    # the same float32 posterior means, encoded here in another batching: ≤ γ_K·|terms| ≈ 1e-5 relative per mean
    # (K ≤ 300-term sums in the encoder), averaged into a std over 1438 images: ≤ 1e-5 ≪ 1e-4
    assert 1 / means.double().std(unbiased=False).item() == pytest.approx(scale, rel=1e-4)

    card = (out / "README.md").read_text()
    assert "AutoencoderKL.from_pretrained" in card and f"{scale:.5g}" in card and "license: apache-2.0" in card
    assert (out / "reconstructions.png").is_file() and any((out / "logs").rglob("events.out.tfevents.*"))


def test_resume_is_bit_identical_with_a_discriminator(tmp_path, hf_home, classifier_cache):
    """Resuming from checkpoint-4 of an 8-step run (adversarial from step 2) ends with the very same weights."""
    extra = ("--checkpointing_steps", "4", "--adversarial_weight", "0.1", "--adversarial_start_step", "2",
             "--num_validation_images", "0", "--eval_num_images", "40", "--measure_shift_factor")  # fmt: skip
    full = tmp_path / "full"
    run_vae_training(_argv(full, *extra, steps=8))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-4", resumed / "checkpoint-4")
    summary = run_vae_training(_argv(resumed, *extra, "--resume_from_checkpoint", "latest", steps=8))
    assert summary.global_step == 8
    for name in ("diffusion_pytorch_model.safetensors", "checkpoint-8/model.safetensors",
                 "checkpoint-8/model_1.safetensors"):  # fmt: skip
        a, b = load_file(full / name), load_file(resumed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    metrics = [json.loads((d / "vae_metrics.json").read_text()) for d in (full, resumed)]
    assert metrics[0]["evaluated_on"] == "training" and metrics[0]["psnr"] == metrics[1]["psnr"]
    shift = metrics[0]["latent_scale"]["shift_factor"]
    assert shift == metrics[0]["latent_scale"]["latent_mean"]
    assert AutoencoderKL.from_pretrained(full).config.shift_factor == pytest.approx(shift, rel=1e-12)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model_config_name_or_path", "huge"], "--model_config_name_or_path 'huge' is neither a VAE preset"),
        (["--reconstruction_loss", "l3"], "--reconstruction_loss 'l3' is not allowed; pass one of l1, l2."),
        (["--kl_weight=-1e-6"], "--kl_weight must be ≥ 0, got -1e-06."),
        (["--model_config_name_or_path", "small", "--resolution", "18"],
         "--resolution 18 is not divisible by the VAE's downsampling factor 4"),
        (["--adversarial_weight", "0.1", "--discriminator_layers", "4"], "too small for a 4-layer discriminator"),
        (["--eval_features", "inception"], "--eval_features: 'inception' is not a known feature space"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_status_2(tmp_path, hf_home, capsys, extra, message):
    assert main(["--output_dir", str(tmp_path / "out"), *extra]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_vae.py: error: ") and message in lines[0], lines
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_too_few_images_to_hold_out_is_status_2(tmp_path, hf_home, imagefolder, capsys):
    argv = ["--output_dir", str(tmp_path / "out"), "--train_data_dir", str(imagefolder), "--resolution", "16",
            "--num_validation_images", "10", "--logger", "none"]  # fmt: skip
    assert main(argv) == 2
    assert "--num_validation_images 10 does not fit 10 images" in capsys.readouterr().err


def test_file_entry_point_reports_bad_input(tmp_path, hf_home):
    """``python training/train_vae.py`` (PEP 366: the installed package's relative imports) → one line, status 2."""
    result = subprocess.run(
        [sys.executable, str(TRAIN_VAE_PY), "--output_dir", str(tmp_path / "out"), "--kl_weight", "nan"],
        cwd=REPO, env=subprocess_env(hf_home), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.splitlines() == [
        "train_vae.py: error: --kl_weight nan is not allowed; pass a finite number."
    ], result.stderr


def test_help_lists_every_argument(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert all(name in text for name in ("--kl_weight", "--adversarial_weight", "--num_validation_images", "l1, l2"))


def test_presets_and_json_configs(tmp_path):
    assert [downsampling_factor(load_vae_config(name)) for name in ("tiny", "small", "sd-like")] == [2, 4, 8]
    assert set(VAE_PRESETS) == {"tiny", "small", "sd-like"}
    path = tmp_path / "vae.json"
    path.write_text(json.dumps({"_class_name": "AutoencoderKL", **VAE_PRESETS["small"]}))
    assert load_vae_config(str(path)) == {k: list(v) if isinstance(v, tuple) else v
                                          for k, v in VAE_PRESETS["small"].items()}  # fmt: skip
    path.write_text(json.dumps({"_class_name": "UNet2DModel", "block_out_channels": [32]}))
    with pytest.raises(ValueError, match="describes a UNet2DModel, not an AutoencoderKL"):
        load_vae_config(str(path))


def test_loss_terms_match_closed_forms():
    generator = torch.Generator().manual_seed(0)
    x, x_hat = torch.rand(3, 2, 4, 4, generator=generator), torch.rand(3, 2, 4, 4, generator=generator)
    assert reconstruction_loss(x, x_hat, "l1") == pytest.approx((x - x_hat).abs().mean().item())
    assert reconstruction_loss(x, x_hat, "l2") == pytest.approx((x - x_hat).square().mean().item())
    mean, logvar = torch.randn(3, 4, 2, 2, generator=generator), torch.randn(3, 4, 2, 2, generator=generator)
    posterior = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    expected = torch.distributions.kl_divergence(posterior, torch.distributions.Normal(0.0, 1.0)).sum((1, 2, 3))
    # float32, ½(μ² + e^{lv} − 1 − lv) summed over 16 terms vs torch's KL: ≤ 16·8·u·Σ|terms|/KL ≈ 1e-5 at KL ≈ |terms|
    assert kl_divergence(mean, logvar, 32).item() == pytest.approx(expected.mean().item() / 32, rel=1e-5)
    assert PatchDiscriminator(1, 8, num_layers=2)(torch.zeros(2, 1, 16, 16)).shape == (2, 1, 2, 2)


def test_psnr():
    images = torch.zeros(2, 1, 4, 4)
    # a uniform error of 0.2 in [−1, 1] is 0.1 on the [0, 1] scale: MSE 0.01 → 20 dB
    assert psnr(images, images + 0.2).tolist() == pytest.approx([20.0, 20.0])


def test_hub_push_command_accepts_a_finished_vae_folder(tmp_path, hf_home, monkeypatch, capsys):
    """``python -m scratch_diffusion.training.hub push`` takes train_vae.py's folder (one model at the root)."""
    from huggingface_hub import HfApi, RepoUrl

    from scratch_diffusion.training import hub
    from scratch_diffusion.training.vae import build_vae

    out = tmp_path / "vae"
    build_vae("tiny", 16, 1).save_pretrained(out)  # what train_vae.py writes before its model card
    (out / "checkpoint-4").mkdir()
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "upload_folder", lambda api, **kw: calls.append(kw) or "https://hf.co/commit/1")
    push = ["push", "--output_dir", str(out), "--hub_model_id", "me/vae", "--hub_token", "hf_fake"]

    assert hub.missing_outputs(str(out)) == ["README.md"]
    assert hub.main(push) == 2 and not calls  # an unfinished run is refused, pointing at the right script
    err = capsys.readouterr().err
    assert "not a finished training output (missing README.md)" in err and "(train_vae.py ... --resume" in err

    (out / "README.md").write_text("card")
    assert hub.missing_outputs(str(out)) == []
    assert hub.main(push) == 0
    (upload,) = calls
    assert upload["folder_path"] == str(out) and upload["commit_message"] == "Upload the trained model"
    assert "checkpoint-*" in upload["ignore_patterns"]
    (out / "diffusion_pytorch_model.safetensors").unlink()
    assert hub.missing_outputs(str(out)) == ["diffusion_pytorch_model.safetensors"]
