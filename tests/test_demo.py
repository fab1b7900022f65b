"""`python -m scratch_diffusion.demo --quick` end to end: every output exists and parses; re-runs say what they reuse.

The full demo (≈ 5 min of training) is not part of the suite; ``--quick`` trains a toy UNet for a
few steps and scores a few dozen samples per setting, so only the plumbing is checked here, not
the quality bar.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image

from scratch_diffusion import demo, metrics


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("classifier-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(metrics.CACHE_ENV_VAR, str(directory))
        yield directory


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, classifier_cache):
    """One quick demo run (one torch thread, as the rest of the suite) and what it printed."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch, _capture() as printed:
        patch.setenv("HF_HUB_OFFLINE", "1")
        code = demo.main(["--quick", "--output_dir", str(out), "--num_threads", "1"])
    torch.set_num_threads(threads)
    assert code == 0
    return out, printed.getvalue()


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
    images = pipe(batch_size=2, num_inference_steps=2, class_labels=[3, 7], guidance_scale=2.0, output_type="np")
    assert images.images.shape == (2, 16, 16, 1)


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
    assert samplers == {"flow Euler", "flow Heun"}
    sweep = [row for row in report["results"] if row["stage"] == "sweep"]
    assert {(row["sampler"], row["steps"]) for row in sweep} == {
        (s, n) for s in samplers for n in demo.QUICK["step_counts"]
    }
    heun = {row["steps"]: row["nfe"] for row in sweep if row["sampler"] == "flow Heun"}
    assert all(nfe == 2 * steps - 1 for steps, nfe in heun.items())
    for row in report["results"]:
        assert row["n"] == (
            demo.QUICK["num_sweep_samples"] if row["stage"] in ("sweep", "guidance") else demo.QUICK["num_eval_samples"]
        )
        for key in ("fd", "fd_real_baseline", "fd_real_baseline_std", "fd_noise_ceiling", "fd_ratio", "class_match"):
            assert isinstance(row[key], float), key
    final = [row for row in report["results"] if row["stage"] == "final"]
    assert {row["guidance_scale"] for row in final} == {demo.DEFAULTS["guidance_scale"]}
    guided = [row for row in report["results"] if row["stage"] == "guidance"]
    assert {row["guidance_scale"] for row in guided} == set(demo.QUICK["guidance_sweep"])
    assert report["best"] in final
    assert set(report["quality_bar"]) >= {"fd_ratio_max", "class_match_min", "met"}

    table = (out / "metrics.md").read_text()
    rows = [
        line for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| stage", "| metric"))
    ]
    assert len(rows) == len(report["results"]) + 4  # + the best setting's two-column summary table
    header = next(line for line in table.splitlines() if line.startswith("| stage"))
    assert all(row.count("|") == header.count("|") for row in rows[: len(report["results"])])

    with Image.open(out / "demo.png") as image:
        image.verify()
    with Image.open(out / "demo.png") as image:
        assert image.format == "PNG" and min(image.size) > 200


def test_summary_names_outputs_best_and_load_command(quick_run):
    out, printed = quick_run
    assert f"outputs:   {out}" in printed
    assert re.search(r"best: .*FD [\d.]+ vs real-data baseline [\d.]+ ± [\d.]+", printed)
    load = next(line for line in printed.splitlines() if "load it:" in line)
    assert "ScratchDiffusionPipeline" in load and str(out / "pipeline") in load
    assert "digits classifier trained now" in printed or "digits classifier loaded from cache" in printed


def test_rerun_with_reuse_says_so_and_without_replaces(quick_run):
    out, _ = quick_run
    weights = out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    common = ["--quick", "--output_dir", str(out), "--num_threads", "1", "--step_counts", "2"]
    with _capture() as printed:
        assert demo.main([*common, "--reuse"]) == 0
    assert f"Reusing the trained pipeline at {out / 'pipeline'}" in printed.getvalue()
    assert weights.stat().st_mtime_ns == before
    report = json.loads((out / "metrics.json").read_text())
    assert report["reused_pipeline"] is True and report["training"]["steps"] == demo.QUICK["max_train_steps"]

    with _capture() as printed:
        assert demo.main(common) == 0
    assert f"Replacing the earlier run in {out}" in printed.getvalue()
    assert json.loads((out / "metrics.json").read_text())["reused_pipeline"] is False


def test_bad_input_exits_2(tmp_path, capsys):
    assert demo.main(["--quick", "--output_dir", str(tmp_path / "none"), "--reuse"]) == 2
    assert "no trained pipeline" in capsys.readouterr().err
    assert demo.main(["--objective", "flow", "--prediction_type", "epsilon"]) == 2
    with pytest.raises(SystemExit):
        demo.main(["--max_train_steps", "5", "--train_minutes", "1"])
