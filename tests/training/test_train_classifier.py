"""training/train_classifier.py: a noise-aware classifier on the digits, from a saved pipeline, exact resume, its
accuracy by noise level on known cases, and bad input refused before any work.

In-process runs (``run_classifier_training`` / ``main``) on CPU with one thread and a toy UNet's encoder; one
subprocess checks the file entry point.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file

from scratch_diffusion.guidance.noisy_classifier import NoisyClassifier
from scratch_diffusion.pipelines import ScratchDiffusionPipeline
from scratch_diffusion.training.classifier import (
    METRICS_FILE,
    PLOT_FILE,
    accuracy_by_noise_level,
    run_classifier_training,
)
from scratch_diffusion.training.data import centre_crop, load_digits
from scratch_diffusion.training.randomness import derive_seed
from scratch_diffusion.training.train_classifier import main
from scratch_diffusion.training.vae import build_vae
from scratch_diffusion.training.vae.metrics import split_validation
from scratch_schedulers import Parametrization, ScratchDDPMScheduler, ScratchFlowMatchScheduler
from scratch_schedulers.model_path import ModelPath

from .conftest import REPO, TINY_UNET, subprocess_env

TRAIN_CLASSIFIER_PY = REPO / "training" / "train_classifier.py"
EDGES = ("0.01", "0.1", "10")  # two σ bins: nearly clean, and the rest


def _argv(out: Path, *extra: str, steps: int) -> list[str]:
    return [
        "--output_dir", str(out), "--max_train_steps", str(steps), "--train_batch_size", "8",
        "--learning_rate", "3e-3", "--lr_warmup_steps", "1", "--checkpointing_steps", "1000", "--logger", "none",
        "--num_validation_images", "50", "--eval_noise_draws", "2", "--noise_level_edges", *EDGES, *extra,
    ]  # fmt: skip


def _same(a: Path, b: Path) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_trains_on_digits_and_reports_accuracy_by_noise_level(tmp_path, hf_home):
    """100 steps on the digits (flow, logit-normal σ): it learns, the folder loads, its metrics are the function's."""
    out = tmp_path / "classifier"
    encoder = tmp_path / "encoder.json"  # the toy UNet at twice its widths: it learns the digits in 100 steps
    encoder.write_text(json.dumps({**TINY_UNET, "block_out_channels": [16, 32], "norm_num_groups": 8}))
    extra = ("--model_config_name_or_path", str(encoder), "--train_batch_size", "32", "--learning_rate", "1e-2",
             "--logit_mean", "-2", "--no-use_ema", "--eval_steps", "50", "--logger", "tensorboard")  # fmt: skip
    summary = run_classifier_training(_argv(out, *extra, steps=100))
    assert summary.global_step == 100

    classifier = NoisyClassifier.from_pretrained(out).eval()
    config = classifier.config
    assert (config.noise_path, config.noise_schedule, config.num_classes) == ("flow", {"num_train_timesteps": 1000}, 10)
    assert (config.sample_size, config.in_channels, list(config.block_out_channels)) == (16, 1, [16, 32])

    record = json.loads((out / METRICS_FILE).read_text())
    assert [h["step"] for h in record["history"]] == [50, 100] and record["evaluated_on"] == "held-out"
    assert record["time_distribution"] == "logit_normal σ, logit(σ) ~ N(-2, 1²)"
    rows = record["by_noise"]
    assert [(r["sigma_low"], r["sigma_high"], r["n"]) for r in rows] == [(0.01, 0.1, 100), (0.1, 10.0, 100)]
    # A learning classifier beats chance on nearly clean digits: under chance (p = 0.1) the count of 100 is
    # binomial with sd √(100·0.1·0.9) = 3, so ≥ 25 hits is 5 sd above it.
    assert rows[0]["accuracy"] >= 0.25, rows

    # The record is accuracy_by_noise_level on the held-out digits, recomputed here bit for bit.
    _, held_out = split_validation(load_digits(16, True).dataset, 50, seed=0)
    batch = held_out.__getitems__(list(range(50)))
    again = accuracy_by_noise_level(classifier, centre_crop(batch["images"], 16), batch["labels"],
                                    [float(e) for e in EDGES], 2, derive_seed(0, "classifier-evaluation"))  # fmt: skip
    assert again == rows

    card = (out / "README.md").read_text()
    assert "NoisyClassifier.from_pretrained" in card and "| [0.01, 0.1) |" in card and "license: apache-2.0" in card
    assert (out / PLOT_FILE).is_file() == (importlib.util.find_spec("matplotlib") is not None)
    assert any((out / "logs").rglob("events.out.tfevents.*"))


def test_resume_is_bit_identical_on_the_vp_path(tmp_path, tiny_unet_json, hf_home):
    """Resuming from checkpoint-2 of a 4-step DDPM-path run (EMA on) ends with the very same weights and metrics."""
    extra = ("--model_config_name_or_path", str(tiny_unet_json), "--objective", "ddpm", "--ddpm_beta_schedule",
             "squaredcos_cap_v2", "--checkpointing_steps", "2")  # fmt: skip
    full = tmp_path / "full"
    run_classifier_training(_argv(full, *extra, steps=4))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    summary = run_classifier_training(_argv(resumed, *extra, "--resume_from_checkpoint", "latest", steps=4))
    assert summary.global_step == 4
    for name in ("diffusion_pytorch_model.safetensors", "checkpoint-4/model.safetensors"):
        assert _same(full / name, resumed / name), name
    metrics = [json.loads((d / METRICS_FILE).read_text()) for d in (full, resumed)]
    assert metrics[0]["by_noise"] == metrics[1]["by_noise"]
    schedule = NoisyClassifier.from_pretrained(full).config.noise_schedule
    assert schedule["beta_schedule"] == "squaredcos_cap_v2" and schedule["num_train_timesteps"] == 1000
    assert metrics[0]["time_distribution"] == "t ~ U{0..999}"


def _save_pipeline(folder: Path, path: str, latent: bool, card_rows: dict[str, str]) -> dict:
    """A toy ScratchDiffusionPipeline (random weights) with a model card holding ``card_rows``; its index."""
    torch.manual_seed(0)
    vae = build_vae("tiny", 16, 1, latent_channels=1) if latent else None  # f = 2: 1×8×8 latents
    side = 8 if latent else 16
    unet = UNet2DModel(**{**TINY_UNET, "sample_size": side, "in_channels": 1, "out_channels": 1})
    scheduler = ScratchFlowMatchScheduler() if path == "flow" else ScratchDDPMScheduler(beta_schedule="sigmoid")
    components = {"vae": vae} if latent else {}
    ScratchDiffusionPipeline(unet=unet, scheduler=scheduler, **components).save_pretrained(folder)
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in card_rows.items())
    (folder / "README.md").write_text(f"# toy\n\n| hyperparameter | value |\n|---|---|\n{rows}\n", encoding="utf-8")
    return json.loads((folder / "model_index.json").read_text())


@pytest.mark.parametrize(
    ("path", "latent", "card_rows", "time_distribution"),
    [
        ("flow", False, {"weighting_scheme": "logit_normal", "logit_mean": "-0.5", "logit_std": "1.0"},
         "logit_normal σ, logit(σ) ~ N(-0.5, 1²)"),
        ("flow", False, {}, "logit_normal σ, logit(σ) ~ N(0, 1²)"),  # a card without them: the defaults
        ("vp", True, {}, "t ~ U{0..999}"),
    ],
)  # fmt: skip
def test_a_pipeline_fixes_path_schedule_space_and_times(tmp_path, hf_home, path, latent, card_rows, time_distribution):
    pipeline = tmp_path / "pipeline"
    index = _save_pipeline(pipeline, path, latent, card_rows)
    out = tmp_path / "classifier"
    cache = ["--latent_cache_dir", str(tmp_path / "cache")] if latent else []
    argv = _argv(out, "--pipeline", str(pipeline), *cache, steps=2)
    run_classifier_training(argv)
    config = NoisyClassifier.from_pretrained(out).config
    assert (config.noise_path, config.noise_schedule) == (index["noise_path"], index["noise_schedule"])
    unet = json.loads((pipeline / "unet" / "config.json").read_text())
    mirrored = ("sample_size", "in_channels", "block_out_channels", "down_block_types", "norm_num_groups")
    assert {k: config[k] for k in mirrored} == {k: unet[k] for k in mirrored}
    record = json.loads((out / METRICS_FILE).read_text())
    assert record["time_distribution"] == time_distribution
    assert record["input_shape"] == ([1, 8, 8] if latent else [1, 16, 16])
    assert record["space"] == ("latents of pipeline" if latent else "pixels")
    if card_rows:
        assert record["time_distribution_source"].startswith("the pipeline's model card (weighting_scheme, logit_mean")
    elif path == "flow":
        assert record["time_distribution_source"] == "the command line and defaults (the pipeline's card records none)"


def _sigma_threshold_classifier(path: ModelPath):
    """Class 1 exactly where σ = b/a ≥ 1 (λ ≤ 0), read from the timestep alone: t ≥ t(λ = 0) on either path."""
    threshold = path.point(0.0).timestep

    def classify(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        above = (t >= threshold).float()
        return torch.stack([1 - above, above], dim=-1)

    return classify


@pytest.mark.parametrize("path", ["flow", "vp"])
def test_accuracy_by_noise_level_uses_the_paths_clock(path):
    """A classifier that answers 1 iff its timestep is at σ ≥ 1 is always right above σ = 1 and never below."""
    flow = Parametrization("flow", "flow_velocity")
    model_path = (
        ModelPath.from_schedule(flow, {"num_train_timesteps": 1000})
        if path == "flow"
        else ModelPath.from_schedule(Parametrization("vp", "epsilon"), {"num_train_timesteps": 1000})
    )
    if path == "flow":  # independently of ModelPath: σ = b/a = 1 is σ_flow = 1/2, t = T/2
        assert model_path.point(0.0).timestep == 500.0
    else:  # b = a where ᾱ = 1/2: between the scheduler's last step with ᾱ ≥ 1/2 and the next
        last_above = int((ScratchDDPMScheduler().alphas_cumprod >= 0.5).sum()) - 1
        assert last_above <= model_path.point(0.0).timestep < last_above + 1
    x0, labels = torch.zeros(30, 1, 4, 4), torch.ones(30, dtype=torch.long)
    rows = accuracy_by_noise_level(
        _sigma_threshold_classifier(model_path), x0, labels, (0.05, 0.5, 1.0, 2.0, 20.0), 3, 0, model_path
    )
    assert [r["accuracy"] for r in rows] == [0.0, 0.0, 1.0, 1.0]
    assert all(r["n"] == 90 for r in rows)


def test_accuracy_by_noise_level_of_the_bayes_classifier():
    """x0 = ±m on d pixels, classified by the sign of Σx: accuracy Φ(m·√d/σ) at σ = b/a, averaged over log σ."""
    m, d, n_images, draws = 0.25, 16, 500, 4  # m·√d = 1
    signs = torch.arange(n_images) % 2
    x0 = (2 * signs - 1).float().view(-1, 1, 1, 1) * torch.full((n_images, 1, 4, 4), m)
    path = ModelPath.from_schedule(Parametrization("flow", "flow_velocity"), {"num_train_timesteps": 1000})

    def bayes(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        total = x.sum(dim=(1, 2, 3))
        return torch.stack([-total, total], dim=-1)

    edges = (0.1, 0.5, 1.0, 2.0, 8.0)
    rows = accuracy_by_noise_level(bayes, x0, signs, edges, draws, 3, path)
    phi = statistics.NormalDist().cdf
    for row in rows:
        low, high = math.log(row["sigma_low"]), math.log(row["sigma_high"])
        grid = [low + (i + 0.5) * (high - low) / 4000 for i in range(4000)]  # midpoint rule: error ≪ 1e-4
        expected = statistics.fmean(phi(m * math.sqrt(d) / math.exp(s)) for s in grid)
        # Each of the n = 2000 draws is an independent Bernoulli(p_i) with mean p_i over the bin; the sample mean's
        # sd is at most √(0.25/n) ≈ 0.011. 5 sd bounds it (false alarm < 1e-6); the float32 draws add ~1e-7.
        assert abs(row["accuracy"] - expected) <= 5 * math.sqrt(0.25 / row["n"]), (row, expected)


@pytest.fixture
def not_a_pipeline(tmp_path) -> Path:
    folder = tmp_path / "not-a-pipeline"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--pipeline", "{not_a_pipeline}"], "--pipeline '{not_a_pipeline}' is not a pipeline folder (no "
         "model_index.json)"),
        (["--pipeline", "{missing}"], "--pipeline '{missing}': no such folder"),
        (["--prediction_type", "epsilon"], "--prediction_type is not allowed: it changes the diffusion model's loss"),
        (["--snr_gamma", "5"], "--snr_gamma is not allowed"),
        (["--objective", "ddpm", "--logit_mean", "1"], "--logit_mean applies to --objective flow only."),
        (["--noise_level_edges", "1", "0.5"], "--noise_level_edges [1.0, 0.5] is not allowed"),
        (["--model_config_name_or_path", "huge"], "--model_config_name_or_path 'huge' is neither a preset"),
        (["--resolution", "13"], "--resolution 13 cannot be downsampled by the classifier"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_status_2(tmp_path, hf_home, capsys, not_a_pipeline, extra, message):
    where = {"not_a_pipeline": str(not_a_pipeline), "missing": str(tmp_path / "missing")}
    argv = ["--output_dir", str(tmp_path / "out"), *(arg.format(**where) for arg in extra)]
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_classifier.py: error: "), lines
    assert message.format(**where) in lines[0], lines
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_what_a_pipeline_fixes_is_refused_on_the_command_line(tmp_path, hf_home, capsys):
    pipeline = tmp_path / "pipeline"
    _save_pipeline(pipeline, "flow", False, {})
    for extra, message in (
        (["--objective", "flow"], "--objective is not allowed with --pipeline: the pipeline fixes it."),
        (["--resolution", "32"], "--resolution 32 is not allowed with --pipeline"),
        (["--vae_name_or_path", str(pipeline)], "--vae_name_or_path is not allowed with --pipeline"),
    ):
        assert main(["--output_dir", str(tmp_path / "out"), "--pipeline", str(pipeline), *extra]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_file_entry_point_reports_bad_input(tmp_path, hf_home):
    result = subprocess.run(
        [sys.executable, str(TRAIN_CLASSIFIER_PY), "--output_dir", str(tmp_path / "out"), "--pipeline",
         str(tmp_path / "nowhere")],
        cwd=REPO, env=subprocess_env(hf_home), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "train_classifier.py: error: --pipeline" in result.stderr, result.stderr
