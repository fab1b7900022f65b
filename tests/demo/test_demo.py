"""`python -m scratch_diffusion.demo --quick` end to end: every output exists, parses and is consistent.

The full demo (≈ 5 min of training) is not part of the suite; ``--quick`` trains a toy UNet for a
few steps and scores a few dozen samples per setting. The numbers are checked for consistency
(ratios, sample counts, the verdict against ``QUALITY_BAR``), not for reaching the bar: the toy
model misses it, and the verdict must say so.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from scratch_diffusion import demo

from ..metrics.helpers import empty_classifier_cache


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory):
    with empty_classifier_cache(tmp_path_factory) as directory:
        yield directory


def _quick_demo(tmp_path_factory, *flags: str) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "demo"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch, _capture() as printed:
        patch.setenv("HF_HUB_OFFLINE", "1")
        code = demo.main(["--quick", "--output_dir", str(out), "--num_threads", "1", *flags])
    torch.set_num_threads(threads)
    assert code == 0
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, classifier_cache):
    """One quick demo run as ``make demo`` runs it (latent space; one torch thread, as the rest of the suite)."""
    return _quick_demo(tmp_path_factory)


@pytest.fixture(scope="module")
def quick_pixel_run(tmp_path_factory, classifier_cache):
    """One quick demo run with ``--space pixel`` (the UNet on the pixels: no VAE, a likelihood phase)."""
    return _quick_demo(tmp_path_factory, "--space", "pixel")


class _capture:
    """Capture stdout (pytest's capsys is function-scoped)."""

    def __enter__(self):
        import contextlib
        import io

        self.buffer = io.StringIO()
        self._redirect = contextlib.redirect_stdout(self.buffer)
        self._redirect.__enter__()
        return self.buffer

    def __exit__(self, *exc):
        return self._redirect.__exit__(*exc)


def test_pipeline_folder_loads_and_samples(quick_run):
    from scratch_diffusion.pipelines import ScratchDiffusionPipeline

    out, _ = quick_run
    pipe = ScratchDiffusionPipeline.from_pretrained(str(out / "pipeline"))
    assert pipe.num_classes == 10
    assert pipe.trained_parametrization.path == "flow"
    assert pipe.vae is not None and pipe.latent_shape == (1, 8, 8)  # the demo VAE's 1×8×8 latents
    images = pipe(batch_size=2, num_inference_steps=2, class_labels=[3, 7], guidance_scale=2.0, output_type="np")
    assert images.images.shape == (2, 16, 16, 1)


def test_latent_demo_trains_its_vae_first_and_records_it(quick_run):
    from safetensors.torch import load_file

    out, printed = quick_run
    training = json.loads((out / "training.json").read_text())
    vae = training["vae"]
    assert training["space"] == "latent" and vae["steps"] == demo.QUICK["vae_steps"] and vae["seconds"] > 0
    assert vae["latent_shape"] == [1, 8, 8] and vae["downsampling_factor"] == 2 and vae["psnr"] > 0
    assert "--vae_name_or_path" in training["argv"] and vae["command"].startswith("python training/train_vae.py ")
    argv = training["argv"]
    assert argv[argv.index("--logit_mean") + 1] == str(demo.DEFAULTS["logit_mean"]) == str(training["logit_mean"])
    # the pipeline's vae is the one trained into vae/ (with the scale the trainer measured)
    saved = load_file(str(out / "pipeline" / "vae" / "diffusion_pytorch_model.safetensors"))
    trained = load_file(str(out / "vae" / "diffusion_pytorch_model.safetensors"))
    assert saved.keys() == trained.keys() and all(torch.equal(saved[k], trained[k]) for k in saved)
    assert json.loads((out / "pipeline" / "vae" / "config.json").read_text())["scaling_factor"] == pytest.approx(
        vae["scaling_factor"]
    )
    assert f"VAE: {vae['steps']} steps in" in printed and "1×8×8 latents, held-out PSNR" in printed
    assert "[4/6] Likelihood skipped: a latent model's ODE likelihood is of the VAE's latents" in printed
    report = json.loads((out / "metrics.json").read_text())
    assert report["likelihood"] is None and report["settings"]["space"] == "latent"


def test_pixel_demo_has_no_vae_and_measures_bits_per_dim(quick_pixel_run):
    from scratch_diffusion.pipelines import ScratchDiffusionPipeline

    out, printed = quick_pixel_run
    assert ScratchDiffusionPipeline.from_pretrained(str(out / "pipeline")).vae is None
    assert not (out / "vae").exists() and "VAE:" not in printed
    training = json.loads((out / "training.json").read_text())
    assert training["space"] == "pixel" and "vae" not in training and "--vae_name_or_path" not in training["argv"]
    table = (out / "metrics.md").read_text()
    assert "Bits/dim: ODE (Heun" in table and "bits/dim (n=4 held-out digits" in table
    report = json.loads((out / "metrics.json").read_text())
    _, _, _, _, likelihood = demo.readme_table(report).split("\n\n")
    ode, bound = report["likelihood"]["ode"], report["likelihood"]["bound"]
    assert likelihood.startswith("Bits/dim: ODE (Heun ")
    assert f"{ode['bits_per_dim']:.3f} ± {ode['stderr']:.3f}" in likelihood
    assert f"{bound['bits_per_dim']:.3f} ± {bound['stderr']:.3f}" in likelihood
    steps, minutes = training["steps"], training["seconds"] / 60
    assert demo.readme_table(report).startswith(f"Measured here ({steps} training steps in {minutes:.1f} min; ")


def test_model_card_and_tensorboard_logs(quick_run):
    from huggingface_hub import ModelCard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = quick_run
    card = ModelCard.load(out / "pipeline" / "README.md")
    assert "class-conditional" in card.data.tags
    assert "flow-matching" in card.data.tags
    events = list((out / "pipeline" / "logs").rglob("events.out.tfevents.*"))
    assert events, "no tensorboard event file"
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    losses = accumulator.Scalars("loss")
    assert len(losses) >= 2 and all(torch.isfinite(torch.tensor(e.value)) for e in losses)
    assert accumulator.Tags()["images"], "no sample grid logged"


def test_metrics_json_table_and_figure(quick_run):
    out, _ = quick_run
    report = json.loads((out / "metrics.json").read_text())
    training = json.loads((out / "training.json").read_text())
    assert training["steps"] == demo.QUICK["max_train_steps"] and training["seconds"] > 0
    assert report["training"] == training and report["reused_pipeline"] is False
    samplers = {row["sampler"] for row in report["results"]}
    assert samplers == set(demo.SAMPLERS["flow"])
    sweep = [row for row in report["results"] if row["stage"] == "sweep"]
    assert {(row["sampler"], row["steps"]) for row in sweep} == {
        (s, n) for s in samplers for n in demo.QUICK["step_counts"]
    }
    heun = {row["steps"]: row["nfe"] for row in sweep if row["sampler"] == "flow Heun"}
    assert all(nfe == 2 * steps - 1 for steps, nfe in heun.items())
    sizes = {"sweep": "num_sweep_samples", "guidance": "num_sweep_samples", "final": "num_eval_samples",
             "guidance rules": "num_rule_samples"}  # fmt: skip
    for row in report["results"]:
        assert row["n"] == demo.QUICK[sizes[row["stage"]]]
        for key in ("fd", "fd_real_baseline", "fd_real_baseline_std", "fd_noise_ceiling", "fd_ratio", "class_match"):
            assert isinstance(row[key], float), key
        assert row["n_baseline"] == row["n"] and row["baseline_draws"] == 10
        assert type(row["n"]) is int and type(row["n_baseline"]) is int  # counts are not averaged over draws
        assert row["draws"] == (demo.QUICK["eval_draws"] if row["stage"] == "final" else 1)
        assert len(row["fd_draws"]) == len(row["fd_ratio_draws"]) == row["draws"]
        assert row["fd"] == pytest.approx(sum(row["fd_draws"]) / row["draws"])
        assert row["fd_ratio"] == pytest.approx(row["fd"] / row["fd_real_baseline"])
        assert 0 < row["fd_real_baseline_std"] < row["fd_real_baseline"] < row["fd_noise_ceiling"]
        assert 0 <= row["class_match"] <= 1 and 0 <= row["confident_fraction"] <= 1
        assert row["nfe"] == sum(row["evaluations"].values())  # the UNet's and the guide's, as the pipeline counted
        steps = _sampler_steps(row)
        if row["rule"] == "CFG":  # both halves of a guided step count, though they share a batch
            assert row["evaluations"] == {"unet": steps * (2 if row["guidance_scale"] != 1 else 1)}
        elif row["rule"] == "autoguidance":
            assert row["evaluations"] == {"unet": steps, "guide_unet": steps}
        else:  # interval CFG: the unconditional half only inside the interval
            assert row["rule"] == "interval CFG" and row["evaluations"].keys() == {"unet"}
            assert steps <= row["nfe"] <= 2 * steps
        assert row["seconds"] > 0
    assert report["sampling_seconds"] == pytest.approx(sum(row["seconds"] for row in report["results"]))
    final = [row for row in report["results"] if row["stage"] == "final"]
    assert {row["guidance_scale"] for row in final} == {demo.DEFAULTS["guidance_scale"]}
    guided = [row for row in report["results"] if row["stage"] == "guidance"]
    assert {row["guidance_scale"] for row in guided} == set(demo.QUICK["guidance_sweep"])
    assert report["best"] == min(final, key=lambda row: row["fd_ratio"])
    assert report["phase_seconds"].keys() == {
        "train", "load", "sweep", "guidance", "final", "guide", "guidance rules", "editing", "control training",
        "control", "few-step training", "few-step", "likelihood"
    }  # fmt: skip
    assert all(seconds > 0 for seconds in report["phase_seconds"].values())
    assert sum(report["phase_seconds"].values()) <= report["seconds_total"]
    assert training["images_per_second"] > 0 and report["settings"]["max_train_steps"] == training["steps"]

    verdict, best = report["quality_bar"], report["best"]
    assert {k: verdict[k] for k in demo.QUALITY_BAR} == demo.QUALITY_BAR
    assert verdict["fd_ratio"] == best["fd_ratio"] and verdict["class_match"] == best["class_match"]
    assert verdict["guided_scales"] == list(demo.QUICK["guidance_sweep"])
    assert verdict["guided_class_match_min"] == min(row["class_match"] for row in guided)
    fd_ok = best["fd_ratio"] <= demo.QUALITY_BAR["fd_ratio_max"]
    match_ok = best["class_match"] >= demo.QUALITY_BAR["class_match_min"]
    guided_ok = verdict["guided_class_match_min"] >= demo.QUALITY_BAR["guided_match_min"]
    assert (verdict["fd_ok"], verdict["class_match_ok"], verdict["guided_ok"]) == (fd_ok, match_ok, guided_ok)
    assert verdict["met"] is (fd_ok and match_ok and guided_ok)
    assert verdict["met"] is False  # 20 steps of a toy UNet are far from the bar

    table = (out / "metrics.md").read_text()
    rows = [
        line for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| stage", "| metric"))
    ]
    # + the best setting's two-column summary table: samples, feature space, FD, KID, confident, class match
    assert len(rows) == len(report["results"]) + 6
    header = next(line for line in table.splitlines() if line.startswith("| stage"))
    assert all(row.count("|") == header.count("|") for row in rows[: len(report["results"])])
    assert f"Quality bar ({demo.bar_text()}): **not met**." in table

    with Image.open(out / "demo.png") as image:
        image.verify()
    with Image.open(out / "demo.png") as image:
        assert image.format == "PNG" and min(image.size) > 200


def _sampler_steps(row: dict) -> int:
    """The sampler's timesteps at the row's steps: one UNet evaluation each when unguided (Heun: 2n − 1)."""
    return 2 * row["steps"] - 1 if row["sampler"] in ("flow Heun", "flow Heun (flow path)") else row["steps"]


def test_guidance_stage_compares_the_rules_at_equal_evaluations(quick_run):
    """The guide is trained and attached; every rule runs the final best's sampler within CFG's budget, each with
    the most steps that fit (nothing computed: the counts are the pipeline's)."""
    from scratch_diffusion.guidance import AutoGuidance
    from scratch_diffusion.pipelines import ScratchDiffusionPipeline

    out, printed = quick_run
    report = json.loads((out / "metrics.json").read_text())
    rules = [row for row in report["results"] if row["stage"] == "guidance rules"]
    best, summary = report["best"], report["guidance_rules"]
    assert summary["budget"] == 2 * best["nfe"] and summary["sampler"] == best["sampler"]
    assert {row["sampler"] for row in rules} == {best["sampler"]}
    assert [(row["rule"], row["guidance_scale"]) for row in rules] == [
        ("CFG", 1.0),
        *(("CFG", w) for w in demo.QUICK["cfg_scales"]),
        *(("interval CFG", w) for w in demo.QUICK["cfg_scales"]),
        *(("autoguidance", w) for w in demo.QUICK["autoguidance_scales"]),
    ]
    interval = list(demo.DEFAULTS["guidance_interval"])
    assert [row["interval"] for row in rules] == [interval if row["rule"] == "interval CFG" else None for row in rules]
    assert all(row["nfe"] <= summary["budget"] for row in rules)
    full_cfg = [row for row in rules if row["rule"] in ("CFG", "autoguidance") and row["guidance_scale"] != 1]
    assert all(row["steps"] == best["steps"] and row["nfe"] == summary["budget"] for row in full_cfg)
    unguided = rules[0]
    one_more = dict(unguided, steps=unguided["steps"] + 1)
    assert _sampler_steps(unguided) <= summary["budget"] < _sampler_steps(one_more)  # the most steps that fit
    for rule in ("CFG", "interval CFG", "autoguidance"):
        assert summary["best"][rule]["fd_ratio"] == min(
            row["fd_ratio"] for row in rules if row["rule"] == rule and row["guidance_scale"] != 1
        )

    guide = json.loads((out / "guide.json").read_text())
    assert guide["steps"] == demo.QUICK["guide_steps"] and "--guide_for" in guide["argv"]
    assert summary["guide"]["cost"]["guide_to_unet_time"] > 0 and summary["guide"]["steps"] == guide["steps"]
    pipe = ScratchDiffusionPipeline.from_pretrained(str(out / "pipeline"))
    assert pipe.guide_unet is not None  # saved into the pipeline by the trainer's --guide_for
    pipe(batch_size=2, num_inference_steps=2, class_labels=[1, 2], guidance=AutoGuidance(2.0), output_type="latent")
    assert pipe.evaluations == {"unet": pipe.num_timesteps, "guide_unet": pipe.num_timesteps}
    assert f"guidance:  at {summary['budget']:g} model evaluations per image ({best['sampler']}): unguided" in printed
    assert demo.rules_text(summary) in (out / "metrics.md").read_text()


def test_control_and_editing_stage(quick_run):
    """Inpainting, image-to-image and a ControlNet on the demo's model: the counts are the pipeline's, the known
    region is kept exactly, the control network is attached, and the numbers are the ones printed and written."""
    from scratch_diffusion.demo import editing_stage
    from scratch_diffusion.pipelines import ScratchDiffusionPipeline

    out, printed = quick_run
    report = json.loads((out / "metrics.json").read_text())
    summary, recipe = report["control_and_editing"], editing_stage.QUICK_EDITING
    rows, steps = summary["rows"], recipe["steps"]
    assert summary["recipe"] == recipe and {row["n"] for row in rows.values()} == {recipe["n"]}
    assert rows["inpainting"]["evaluations"] == {"unet": steps} and rows["fill"]["evaluations"] == {}
    assert rows["inpainting"]["known_region_max_abs_error"] == 0  # pasted in image space: exact on a latent model
    assert rows["img2img"]["evaluations"] == {"unet": round(recipe["strength"] * steps)}
    assert rows["control"]["evaluations"] == {"unet": steps, "controlnet": steps}
    assert rows["unconditional"]["evaluations"] == {"unet": steps}
    assert summary["control_consistency_gain"] == rows["unconditional"]["consistency"] / rows["control"]["consistency"]
    fill, real, completion = (rows[role]["class_match"] for role in ("fill", "real", "inpainting"))
    if real != fill:
        assert summary["inpainting_gap_closed"] == pytest.approx((completion - fill) / (real - fill))
    control = json.loads((out / "control.json").read_text())
    assert summary["controlnet"]["steps"] == control["steps"] == recipe["control_steps"]
    assert "--attach" in control["command"] and summary["controlnet"]["parameters"] > 0
    pipe = ScratchDiffusionPipeline.from_pretrained(str(out / "pipeline"))
    assert pipe.controlnet is not None  # saved into the pipeline by train_controlnet.py --attach
    assert f"editing:   {editing_stage.editing_text(summary)}" in printed
    assert editing_stage.editing_text(summary) in (out / "metrics.md").read_text()


def test_few_step_stage(quick_run):
    """The demo's pipeline consistency-tuned (train.py --init_from it) and scored at 1, 2 and 4 evaluations beside the
    teacher's DPM-Solver++ at the same counts, n and draws; the counts are the pipeline's, the numbers the ones
    printed and written."""
    from scratch_diffusion.demo import few_step_stage
    from scratch_diffusion.pipelines import ScratchDiffusionPipeline
    from scratch_schedulers import ScratchFlowMapScheduler

    out, printed = quick_run
    report = json.loads((out / "metrics.json").read_text())
    few = report["few_step"]
    training = json.loads((out / few_step_stage.FEW_STEP_RECORD).read_text())
    assert few["training"] == training and training["steps"] == few_step_stage.QUICK_TUNING_STEPS
    argv = training["argv"]
    assert argv[argv.index("--init_from") + 1] == str(out / "pipeline") and argv[argv.index("--objective") + 1] == (
        "consistency"
    )
    assert few["n"] == demo.QUICK["num_eval_samples"] and few["draws"] == demo.QUICK["eval_draws"]
    for role, sampler in (("tuned", few_step_stage.SAMPLER), ("teacher", few_step_stage.TEACHER_SAMPLER)):
        rows = few[role]
        assert [(row["sampler"], row["steps"]) for row in rows] == [(sampler, k) for k in few_step_stage.STEP_COUNTS]
        assert all(row["evaluations"] == {"unet": row["steps"]} == {"unet": row["nfe"]} for row in rows)
        assert all(row["n"] == few["n"] and row["draws"] == few["draws"] and 0 <= row["class_match"] <= 1
                   for row in rows)  # fmt: skip
    pipe = ScratchDiffusionPipeline.from_pretrained(str(out / few_step_stage.FEW_STEP_SUBDIR))
    assert isinstance(pipe.scheduler, ScratchFlowMapScheduler) and pipe.num_classes == 10
    assert f"few-step:  {few_step_stage.few_step_text(few)}" in printed
    assert few_step_stage.few_step_text(few) in (out / "metrics.md").read_text()


def test_edit_mosaic_rows_and_columns():
    from scratch_diffusion.demo.figure import edit_mosaic

    rows = [torch.full((3, 1, 4, 4), value) for value in (-1.0, 0.0, 1.0)]
    mosaic = edit_mosaic(rows)
    assert mosaic.shape == (3 * 5 + 1, 3 * 5 + 1)  # 3 rows × 3 images of 4×4, 1-pixel white gaps
    assert mosaic[1:5, 1:5].max() == 0 and (mosaic[6:10, 6:10] == 0.5).all() and mosaic[11:15, 11:15].min() == 1
    assert mosaic[0].min() == 1 and mosaic[:, 5].min() == 1  # the gaps


def test_summary_names_outputs_best_and_load_command(quick_run):
    out, printed = quick_run
    assert f"outputs:   {out}" in printed
    assert re.search(r"best: .*FD [\d.]+ vs real-data baseline [\d.]+ ± [\d.]+", printed)
    load = next(line for line in printed.splitlines() if "load it:" in line)
    assert "ScratchDiffusionPipeline" in load and str(out / "pipeline") in load
    # the module's cache starts empty: the VAE's evaluation trains the metric's classifier, the demo then loads it
    assert "digits classifier loaded from cache" in printed
    assert f"quality bar ({demo.bar_text()}): NOT met" in printed


def test_the_printed_bar_is_the_checked_constant():
    assert demo.bar_text() == "FD ≤ 1.25× baseline, class match ≥ 95 % (guided ≥ 99 %)"
    bar = {"fd_ratio_max": 2.0, "class_match_min": 0.75, "guided_match_min": 0.8}
    assert demo.bar_text(bar) == "FD ≤ 2× baseline, class match ≥ 75 % (guided ≥ 80 %)"


def test_combine_draws_averages_and_keeps_the_spread():
    draws = [
        {"fd": 5.0, "fd_real_baseline": 4.0, "fd_ratio": 1.25, "class_match": 0.9, "features": "digits", "n": 10},
        {"fd": 7.0, "fd_real_baseline": 4.0, "fd_ratio": 1.75, "class_match": 1.0, "features": "digits", "n": 10},
    ]
    combined = demo.combine_draws(draws)
    assert combined["fd"] == 6.0 and combined["fd_ratio"] == 1.5 and combined["class_match"] == pytest.approx(0.95)
    assert combined["draws"] == 2 and combined["fd_ratio_draws"] == [1.25, 1.75] and combined["features"] == "digits"
    assert type(combined["n"]) is int and combined["n"] == 10
    assert combined["fd_ratio_std_over_draws"] == pytest.approx(0.5**0.5 * 0.5)
    one = demo.combine_draws(draws[:1])
    assert one["fd_ratio"] == 1.25 and one["draws"] == 1 and one["fd_ratio_std_over_draws"] is None


RESULTS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def test_readme_table_command_prints_the_table_of_metrics_json(quick_run, tmp_path, capsys):
    out, _ = quick_run
    report = json.loads((out / "metrics.json").read_text())
    command = [sys.executable, "-m", "scratch_diffusion.demo.readme_table", str(out / "metrics.json")]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    assert done.stdout == demo.readme_table(report) + "\n"
    caption, table, verdict, rules = done.stdout.strip().split("\n\n")  # a latent run: no bits/dim line
    assert rules.startswith("Guidance at equal cost") and demo.rules_text(report["guidance_rules"]) in rules
    vae, steps, minutes = report["training"]["vae"], report["training"]["steps"], report["training"]["seconds"] / 60
    assert caption.startswith(f"Measured here (a tiny VAE ({vae['steps']} steps in {vae['seconds'] / 60:.1f} min; ")
    assert f"then {steps} training steps in {minutes:.1f} min on its 1×8×8 latents; whole demo " in caption
    lines = table.splitlines()
    assert "\n".join(lines[:2]) in RESULTS_PAGE.read_text()  # the results page shows this very table layout
    assert len(lines) == 2 + len(report["results"])
    for line, row in zip(lines[2:], report["results"]):
        cells = [cell.strip().strip("*") for cell in line.strip("|").split("|")]
        assert cells[:3] == [row["stage"], row["sampler"], str(row["steps"])]
        assert cells[6:9] == [f"{row['fd']:.2f}", f"{row['fd_real_baseline']:.2f} ± {row['fd_real_baseline_std']:.2f}",
                              f"{row['fd_ratio']:.2f}×" + (f" ± {row['fd_ratio_std_over_draws']:.2f}"
                                                           if row["draws"] > 1 else "")]  # fmt: skip
        assert line.startswith("| **final** |") == (row == report["best"])
    assert verdict.startswith(f"Quality bar ({demo.bar_text()}): not met — ")

    # the refusal in this process (the command above already ran the module as `python -m`, whose exit status is
    # sys.exit(main())): a second interpreter would only pay the imports again
    from scratch_diffusion.demo.readme_table import main as readme_table_main

    (tmp_path / "bad.json").write_text("{}")
    capsys.readouterr()
    assert readme_table_main([str(tmp_path / "bad.json")]) == 2
    assert "is not a demo metrics.json" in capsys.readouterr().err


def test_rerun_with_reuse_says_so_and_without_replaces(quick_run):
    out, _ = quick_run
    weights = out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    tuned_weights = out / "few-step" / "unet" / "diffusion_pytorch_model.safetensors"
    tuned_before = tuned_weights.stat().st_mtime_ns
    common = ["--quick", "--output_dir", str(out), "--num_threads", "1", "--step_counts", "2"]
    with _capture() as printed:
        assert demo.main([*common, "--reuse"]) == 0
    assert f"Reusing the trained pipeline at {out / 'pipeline'}" in printed.getvalue()
    assert "digits classifier loaded from cache" in printed.getvalue()  # trained by the first run
    assert "guide: reusing the pipeline's guide_unet" in printed.getvalue()
    assert "control: reusing the pipeline's controlnet" in printed.getvalue()
    assert "few-step: reusing the consistency-tuned pipeline" in printed.getvalue()
    assert weights.stat().st_mtime_ns == before and tuned_weights.stat().st_mtime_ns == tuned_before
    report = json.loads((out / "metrics.json").read_text())
    assert report["reused_pipeline"] is True and report["training"]["steps"] == demo.QUICK["max_train_steps"]

    vae_weights = out / "vae" / "diffusion_pytorch_model.safetensors"
    vae_before = vae_weights.stat().st_mtime_ns
    guide_weights = out / "guide" / "unet" / "diffusion_pytorch_model.safetensors"
    guide_before = guide_weights.stat().st_mtime_ns
    with _capture() as printed:
        assert demo.main(common) == 0
    assert f"Replacing the earlier run in {out}" in printed.getvalue()
    assert json.loads((out / "metrics.json").read_text())["reused_pipeline"] is False
    assert vae_weights.stat().st_mtime_ns != vae_before  # the VAE is trained again too
    assert guide_weights.stat().st_mtime_ns != guide_before  # and the guide
    assert tuned_weights.stat().st_mtime_ns != tuned_before  # and the consistency tuning, from the new pipeline
    assert len(list((out / "latent-cache").iterdir())) == 1  # the earlier run's latents were removed


def test_bad_input_exits_2(tmp_path, capsys):
    assert demo.main(["--quick", "--output_dir", str(tmp_path / "none"), "--reuse"]) == 2
    assert "no trained pipeline" in capsys.readouterr().err
    (tmp_path / "mine" / "vae").mkdir(parents=True)
    (tmp_path / "mine" / "vae" / "notes.txt").write_text("not the demo's")
    assert demo.main(["--quick", "--output_dir", str(tmp_path / "mine")]) == 2
    assert "is not a VAE written by the demo (no vae_metrics.json)" in capsys.readouterr().err
    assert (tmp_path / "mine" / "vae" / "notes.txt").is_file()
    assert demo.main(["--quick", "--vae_steps", "0"]) == 2
    assert "--vae_steps must be ≥ 1, got 0" in capsys.readouterr().err
    assert demo.main(["--objective", "ddpm", "--logit_mean", "-0.5"]) == 2
    assert "--logit_mean -0.5 applies to --objective flow" in capsys.readouterr().err
    assert demo.main(["--objective", "flow", "--prediction_type", "epsilon"]) == 2
    with pytest.raises(SystemExit):
        demo.main(["--max_train_steps", "5", "--train_minutes", "1"])
