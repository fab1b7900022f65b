"""``python -m scratch_diffusion.metrics`` on image folders and on saved pipelines (ours and stock diffusers')."""

from __future__ import annotations

import json
import math

import pytest

from scratch_diffusion import metrics

from ..pipelines.helpers import tiny_unet
from .helpers import gaussian_blur, real_sample, write_pngs


def test_cli_on_an_image_folder_writes_valid_json(classifier, split, tmp_path, capsys):
    real, labels = real_sample(split, n=60)
    write_pngs(tmp_path / "by_class", real, labels)
    output = tmp_path / "out" / "metrics.json"
    assert metrics.main([str(tmp_path / "by_class"), "--output", str(output), "--format", "json"]) == 0
    written = json.loads(output.read_text())
    assert written == json.loads(capsys.readouterr().out)
    assert written["n"] == 60 and written["source"] == {"image_folder": str(tmp_path / "by_class")}
    assert written["class_match"] >= 0.9 and written["classifier_accuracy"] >= 0.95
    assert written["fd"] < 0.1 * written["fd_noise_ceiling"]  # real digits: a sampling-noise FD, ≪ noise's

    write_pngs(tmp_path / "flat", real[:10])  # no class subfolders: no class_match; markdown printed
    assert metrics.main([str(tmp_path / "flat")]) == 0
    out = capsys.readouterr().out
    assert "| Fréchet distance" in out and "n/a" in out

    (tmp_path / "empty").mkdir()
    assert metrics.main([str(tmp_path / "empty")]) == 2
    assert "no images" in capsys.readouterr().err


def test_cli_on_a_saved_class_conditional_pipeline(classifier, split, tmp_path, capsys):
    from scratch_diffusion import ScratchDDIMScheduler, ScratchDiffusionPipeline

    unet = tiny_unet(sample_size=16, in_channels=1, out_channels=1, num_class_embeds=11)  # 10 digits + the null class
    ScratchDiffusionPipeline(unet=unet, scheduler=ScratchDDIMScheduler()).save_pretrained(tmp_path / "pipe")
    output = tmp_path / "metrics.json"
    argv = [str(tmp_path / "pipe"), "--num_samples", "20", "--num_inference_steps", "2", "--batch_size", "8"]
    assert metrics.main([*argv, "--guidance_scale", "2", "--device", "cpu", "--output", str(output)]) == 0
    written = json.loads(output.read_text())
    assert written["n"] == 20 and written["n_baseline"] == 20
    assert written["source"]["num_inference_steps"] == 2 and written["source"]["guidance_scale"] == 2
    assert "| Fréchet distance" in capsys.readouterr().out

    # class_match is the share of the very images the CLI sampled (labels 0, 1, …, 9, 0, …) that the
    # classifier assigns to the requested class.
    images, labels = metrics.sample_pipeline(
        tmp_path / "pipe", 20, 2, seed=0, batch_size=8, guidance_scale=2.0, device="cpu"
    )
    assert labels.tolist() == [i % 10 for i in range(20)]
    predicted = classifier.probabilities(images).argmax(dim=-1)
    assert written["class_match"] == pytest.approx((predicted == labels).float().mean().item())

    # An untrained UNet samples noise: it scores like the noise ceiling (±25 %; measured 972 vs 946),
    # far above the real baseline at n = 20 (≈ 6×) and above real digits blurred beyond recognition (≈ 4×).
    assert 0.75 < written["fd"] / written["fd_noise_ceiling"] < 1.25
    assert written["fd"] > 4 * written["fd_real_baseline"]
    blurred = metrics.evaluate_samples(gaussian_blur(real_sample(split, n=20)[0]), classifier=classifier)
    assert blurred["fd_real_baseline"] == written["fd_real_baseline"]  # the same scale: same n, same seed
    assert written["fd"] > 2 * blurred["fd"]


def test_cli_on_a_saved_stock_diffusers_pipeline(classifier, tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler

    unet = tiny_unet(sample_size=16, in_channels=1, out_channels=1)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    output = tmp_path / "metrics.json"
    argv = [str(tmp_path / "ddpm"), "--num_samples", "12", "--num_inference_steps", "2", "--device", "cpu"]
    assert metrics.main([*argv, "--output", str(output), "--format", "json"]) == 0
    written = json.loads(output.read_text())
    assert written["n"] == 12 and written["class_match"] is None and "guidance_scale" not in written["source"]
    assert math.isfinite(written["fd"])
