"""A trained tiny UNet through the adapter and the CLI: Euler and Heun agree at fine steps; the JSON report."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scratch_diffusion.demo.config import QUICK_UNET
from scratch_diffusion.likelihood import dequantize, dequantized_bits_per_dim, ode_log_likelihood, pipeline_model
from scratch_diffusion.likelihood.cli import main
from scratch_diffusion.likelihood.pipeline_model import trained_scheduler
from scratch_diffusion.metrics.data import digits_split
from scratch_diffusion.pipelines.loading import load_pipeline
from scratch_diffusion.training import run_training
from scratch_schedulers import ScratchDDPMScheduler
from scratch_schedulers.noise_path import signal_noise_at, split_prediction


@pytest.fixture(scope="module")
def flow_pipeline_path(tmp_path_factory):
    """A class-conditional flow-matching UNet (the demo's --quick UNet) trained for 40 steps on the digits."""
    root = tmp_path_factory.mktemp("likelihood")
    unet_json = root / "tiny_unet.json"
    unet_json.write_text(json.dumps(QUICK_UNET))
    out = root / "pipeline"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HOME", str(root / "hf_home"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        run_training([
            "--output_dir", str(out), "--model_config_name_or_path", str(unet_json), "--objective", "flow",
            "--class_conditional", "--class_dropout_prob", "0.2", "--train_batch_size", "16",
            "--max_train_steps", "40", "--learning_rate", "2e-3", "--lr_warmup_steps", "2", "--seed", "0",
            "--checkpointing_steps", "1000", "--save_images_steps", "1000", "--eval_batch_size", "2",
            "--ddpm_num_inference_steps", "2", "--logger", "none",
        ])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def flow_pipeline(flow_pipeline_path):
    pipe = load_pipeline(flow_pipeline_path)
    pipe.unet.eval().requires_grad_(False)
    return pipe


def test_euler_and_heun_agree_at_fine_steps(flow_pipeline):
    """Same dequantisation and probes: Euler (400 steps) and Heun (100 steps) within 0.03 bits/dim + 3 SE.

    The paired difference isolates the discretisation error (the Hutchinson and dequantisation noise are shared).
    Measured on 6 images: Euler 50/100/200/400 steps 6.324/6.433/6.485/6.511, Heun 25/50/100/200 steps
    6.476/6.519/6.533/6.536, adaptive RK45 (464 evaluations) 6.537 bits/dim: Euler's error halves with its step.
    """
    scheduler = trained_scheduler(flow_pipeline)
    images = dequantize(digits_split().holdout_images[:4], torch.Generator().manual_seed(0))
    results = {}
    for solver, steps in (("euler", 400), ("heun", 100)):
        result = ode_log_likelihood(
            pipeline_model(flow_pipeline, scheduler), images, scheduler, solver=solver, num_steps=steps,
            divergence="hutchinson", generator=torch.Generator().manual_seed(1),
        )  # fmt: skip
        results[solver] = dequantized_bits_per_dim(result.log_likelihood, result.num_dims)
        assert bool(torch.isfinite(results[solver]).all())
    difference = results["euler"] - results["heun"]
    stderr = float(difference.std()) / math.sqrt(len(difference))
    # Euler is first order: its error halves with the step (0.21, 0.10, 0.05, 0.026 bits/dim at 50–400 steps above),
    # so ≈ 0.026 at 400 steps; Heun's at 100 steps is ≈ 0.004: the paired difference ≤ 0.03, plus 3 standard errors
    assert abs(float(difference.mean())) < 0.03 + 3 * stderr, (results, stderr)


def test_flow_unet_through_a_ddpm_scheduler_keeps_its_denoiser(flow_pipeline):
    """The adapter's path change: x̂0 read from the VP-ε output equals the flow model's x̂0 at the equal-SNR point."""
    ddpm = ScratchDDPMScheduler()
    flow = trained_scheduler(flow_pipeline)
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    t = 600
    a, b = (float(v) for v in signal_noise_at(ddpm, t))
    with torch.no_grad():
        eps = pipeline_model(flow_pipeline, ddpm)(x, t)
        sigma = b / (a + b)
        velocity = pipeline_model(flow_pipeline, flow)(x / (a + b), sigma * 1000)
    x0_vp, _ = split_prediction(eps, x, torch.tensor(a), torch.tensor(b), "epsilon")
    x0_flow, _ = split_prediction(velocity, x / (a + b), torch.tensor(1 - sigma), torch.tensor(sigma), "flow_velocity")
    # float32: the two x̂0s are one UNet output converted two ways, (x − b·ε̂)/a with ε̂ from the velocity (≤ γ_4·(|x| +
    # b·|ε̂|)/a ≈ 4u·9/0.32 ≈ 7e-6 at t = 600) and x/(a + b) − σ·û (≤ 1e-6), and UNet inputs x/(a + b) formed alike:
    # ≤ 1e-5; 1e-4 leaves 10× for a UNet input one ulp apart (Lipschitz ≲ 10). A wrong path change is off by O(0.1).
    torch.testing.assert_close(x0_vp, x0_flow, rtol=1e-4, atol=1e-4)


def test_cli_reports_both_methods(flow_pipeline_path, tmp_path, capsys):
    output = tmp_path / "likelihood.json"
    argv = [str(flow_pipeline_path), "--num_images", "4", "--num_steps", "8", "--bound_terms", "10",
            "--labels", "given", "--device", "cpu", "--output", str(output)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "ode: " in printed and "bound (DDPM chain through the path change): " in printed
    report = json.loads(output.read_text())
    assert report["num_dims"] == 256 and report["labels"] == "given"
    assert report["ode"]["num_images"] == 4 and report["ode"]["nfe"] == 16 and report["ode"]["path"] == "flow"
    bound = report["bound"]
    assert bound["via_path_change"] and bound["variance_type"] == "fixed_large" and bound["num_terms"] == 10
    # three float64 terms (JSON round-trips floats exactly): their sum within isclose's rel 1e-9 ≫ 3·2⁻⁵³
    assert math.isclose(sum(bound["terms"][k] for k in ("prior", "diffusion", "decoder")), bound["bits_per_dim"])
    assert all(math.isfinite(report[m][k]) for m in ("ode", "bound") for k in ("bits_per_dim", "stderr", "seconds"))


def test_cli_reports_bad_input_with_status_2(flow_pipeline_path, tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--method", "ode"]) == 2
    assert main([str(flow_pipeline_path), "--data", str(tmp_path), "--method", "ode"]) == 2
    assert "no images" in capsys.readouterr().err
