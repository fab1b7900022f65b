"""Evaluation during training (``--eval_steps``): metrics logged, ``best/`` kept, results in the card, no RNG used.

In-process runs of a tiny UNet on the built-in digits with tiny evaluations (16 samples, 2 sampling
steps), in the digits-CNN feature space (trained once per session into a temporary cache).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from scratch_diffusion.training import ConfigError, run_training
from scratch_diffusion.training.evaluation import (
    EvaluationRecord,
    evaluation_scheduler,
    read_best,
    reference_images,
    sample_images,
    save_best,
)
from scratch_diffusion.training.train import main

from ..metrics.helpers import save_tiny_dinov2
from .test_cli import _fails, no_accelerator  # noqa: F401 (a fixture)

EVAL = ["--eval_num_samples", "16", "--eval_num_inference_steps", "2"]


def _argv(out: Path, unet_json: Path, *extra: str, steps: int = 4) -> list[str]:
    return [
        "--output_dir", str(out), "--model_config_name_or_path", str(unet_json),
        "--train_batch_size", "4", "--max_train_steps", str(steps), "--checkpointing_steps", "2",
        "--lr_warmup_steps", "1", "--eval_batch_size", "2", "--ddpm_num_inference_steps", "2",
        "--save_images_steps", "100", *extra,
    ]  # fmt: skip


def _scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (folder,) = {e.parent for e in (out / "logs").rglob("events.out.tfevents.*") if e.parent.name == "train"}
    accumulator = EventAccumulator(str(folder)).Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--eval_steps", "-1"], "--eval_steps must be ≥ 1 (or 0 / unset: no evaluation), got -1"),
        (["--eval_steps", "2", "--eval_num_samples", "1"], "--eval_num_samples must be ≥ 2"),
        (["--save_best"], "--save_best needs --eval_steps"),
        (["--eval_steps", "0", "--save_best"], "--save_best needs --eval_steps"),
        (["--eval_num_inference_steps", "0"], "--eval_num_inference_steps must be in [1, --ddpm_num_steps (1000)]"),
        (["--eval_features", "inception"], "'inception' is not a known feature space; allowed: 'digits', 'dinov2'"),
        (["--eval_features", "./no/such/model"], "'./no/such/model': no such folder; allowed: 'digits'"),
    ],
)
def test_bad_evaluation_arguments(extra, message, tmp_path, hf_home, no_accelerator, capsys):  # noqa: F811
    out = tmp_path / "out"
    _fails(["--output_dir", str(out), *extra], message, capsys)
    assert not out.exists()


def test_unloadable_feature_space_stops_before_training(tmp_path, tiny_unet_json, hf_home):
    """A Hub id that is not in the (empty, offline) cache: a ConfigError naming it, before the first step."""
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"--eval_features 'someone/no-such-backbone' could not be loaded: .*allowed"):
        run_training(_argv(out, tiny_unet_json, "--eval_steps", "2", "--eval_features", "someone/no-such-backbone"))
    assert not list(out.glob("checkpoint-*")) and not (out / "model_index.json").exists()


def test_reference_images_are_a_fixed_centre_cropped_subset():
    from scratch_diffusion.training.data import TensorImageDataset

    # image i, 4×6: pixel (row, column) = 10·i + column
    images = (10 * torch.arange(20)[:, None, None, None] + torch.arange(6)).expand(20, 1, 4, 6).to(torch.uint8)
    dataset = TensorImageDataset(images)
    first, again = reference_images(dataset, 3, 4, seed=0), reference_images(dataset, 3, 4, seed=0)
    assert first.shape == (3, 1, 4, 4) and torch.equal(first, again)
    pixels = ((first + 1) * 127.5).round().long()
    assert (pixels % 10 == torch.arange(1, 5)).all()  # the 4 middle columns
    assert len(set((pixels[:, 0, 0, 0] // 10).tolist())) == 3  # 3 different images
    assert not torch.equal(first, reference_images(dataset, 3, 4, seed=1))
    assert len(reference_images(dataset, 100, 4, seed=0)) == 20  # at most the whole dataset


def test_evaluation_logs_keeps_the_best_and_fills_the_card(tmp_path, tiny_unet_json, hf_home, classifier_cache):
    out = tmp_path / "digits-eval"
    summary = run_training(
        _argv(
            out,
            tiny_unet_json,
            "--objective",
            "ddpm",
            "--class_conditional",
            "--eval_steps",
            "3",
            "--save_best",
            *EVAL,
            steps=4,
        )
    )
    assert summary.global_step == 4 and summary.evaluation_seconds > 0
    assert summary.images_per_second == pytest.approx(4 / summary.seconds_per_step)  # evaluation excluded
    scalars = _scalars(out)
    fds = dict(scalars["eval/fd"])
    assert sorted(fds) == [3, 4]  # every 3 steps and at the last step
    assert [s for s, _ in scalars["eval/kid"]] == [3, 4] and [s for s, _ in scalars["eval/fd_ratio"]] == [3, 4]

    best = json.loads((out / "best" / "evaluation.json").read_text())
    best_step = min(fds, key=fds.get)
    assert best["step"] == best_step and best["metrics"]["fd"] == pytest.approx(fds[best_step], rel=1e-6)
    assert best["metrics"]["n"] == 16 and best["num_inference_steps"] == 2
    assert best["sampler"] == "ScratchDDIMScheduler"
    from scratch_diffusion.pipelines import ScratchDiffusionPipeline

    kept = ScratchDiffusionPipeline.from_pretrained(str(out / "best"))
    assert kept.num_classes == 10 and type(kept.scheduler).__name__ == "ScratchDDIMScheduler"
    if best_step == 4:  # the best is the final pipeline
        final = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
        assert all(torch.equal(final[k], v) for k, v in kept.unet.state_dict().items())

    card = ModelCard.load(out / "README.md")
    assert card.content.split("\n---\n", 1)[1].lstrip().startswith("# digits-eval\n")
    assert "A class-conditional diffusion model (10 classes" in card.content
    results = card.data.eval_results
    assert [(r.metric_type, r.metric_name.split(", ")[-1]) for r in results] == [
        ("fd", "final (step 4)"), ("kid", "final (step 4)"), ("fd", f"best (step {best_step})"),
        ("kid", f"best (step {best_step})"),
    ]  # fmt: skip
    assert results[0].metric_value == pytest.approx(fds[4], rel=1e-6)
    assert {r.task_type for r in results} == {"unconditional-image-generation"}
    assert {r.dataset_type for r in results} == {"sklearn-digits"}
    assert results[0].metric_args["n"] == 16 and results[0].metric_args["num_inference_steps"] == 2
    assert card.data.model_name == "digits-eval"
    assert "| weights | metric | value | real baseline | sampler | steps | n |" in card.content
    assert f"| final (step 4) | FD | {fds[4]:.4g}" in card.content
    assert "labels cycling through the 10 classes" in card.content
    assert "| `eval_num_samples` | `16` |" in card.content and "| `save_best` | `True` |" in card.content


def test_unconditional_card_without_evaluation(tmp_path, tiny_unet_json, hf_home):
    out = tmp_path / "plain"
    assert main(_argv(out, tiny_unet_json, "--logger", "none", "--hub_model_id", "me/ddpm-tiny", steps=2)) == 0
    card = ModelCard.load(out / "README.md")
    assert card.content.split("\n---\n", 1)[1].lstrip().startswith("# ddpm-tiny\n")  # the repo's name part
    assert "An unconditional diffusion model: a `UNet2DModel`" in card.content
    assert card.data.eval_results is None and "## Evaluation" not in card.content
    assert "eval_num_samples" not in card.content  # the evaluation's settings did not apply
    assert not (out / "best").exists()


def test_flow_raw_weights_in_a_transformers_space(tmp_path, tiny_unet_json, hf_home):
    """--no-use_ema evaluates the raw weights, here in a tiny random DINOv2's features (a local folder, named
    by its last component in the card); without --save_best the card has the final results only."""
    backbone = save_tiny_dinov2(tmp_path / "tiny-dinov2")
    out = tmp_path / "flow-raw"
    argv = _argv(out, tiny_unet_json, "--objective", "flow", "--no-use_ema", "--logger", "none", steps=2)
    summary = run_training(
        [*argv, "--eval_steps", "5", "--eval_sampler", "dpmsolver", "--eval_features", str(backbone), *EVAL]
    )
    assert summary.evaluation_seconds > 0  # evaluated once, at the last step (2 < 5)
    card = ModelCard.load(out / "README.md")
    assert [r.metric_name for r in card.data.eval_results] == [
        "FD (tiny-dinov2 features), final (step 2)", "KID (tiny-dinov2 features), final (step 2)",
    ]  # fmt: skip
    assert str(tmp_path) not in card.content
    assert card.data.eval_results[0].metric_args["sampler"] == "ScratchDPMSolverScheduler (FEW_STEP_CONFIG)"
    text = " ".join(card.content.split())
    assert "n images sampled from the raw weights, against a reference of" in text
    assert "labels cycling" not in text and "best/" not in text
    assert not (out / "best").exists()


def _final_state(out: Path) -> dict[str, torch.Tensor]:
    state = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    state.update({f"raw.{k}": v for k, v in load_file(out / "checkpoint-4" / "model.safetensors").items()})
    ema = torch.load(out / "checkpoint-4" / "custom_checkpoint_2.pkl", weights_only=False)["shadow_params"]
    state.update({f"ema.{i}": p for i, p in enumerate(ema)})
    return state


def _random_states(path: Path) -> dict:
    return torch.load(path, weights_only=False)


def test_evaluation_consumes_no_training_randomness(tmp_path, tiny_unet_json, hf_home, classifier_cache):
    """Eval every step (A), A's checkpoint-2 resumed with eval (B), eval off (C): bit-identical weights.

    Label dropout and random flips draw from the training generators at every step; A evaluates
    before its checkpoint-2 is written, so that checkpoint's global random states (torch, numpy,
    Python) must also equal C's.
    """
    common = ["--class_conditional", "--random_flip", "--class_dropout_prob", "0.3"]
    on, resumed, off = tmp_path / "on", tmp_path / "resumed", tmp_path / "off"
    run_training(_argv(on, tiny_unet_json, *common, "--eval_steps", "1", "--eval_sampler", "dpmsolver", *EVAL))
    shutil.copytree(on / "checkpoint-2", tmp_path / "copy" / "checkpoint-2")
    resume = ["--resume_from_checkpoint", str(tmp_path / "copy" / "checkpoint-2")]
    run_training(_argv(resumed, tiny_unet_json, *common, "--eval_steps", "1", *EVAL, *resume))
    run_training(_argv(off, tiny_unet_json, *common, "--logger", "none"))

    a, b, c = _final_state(on), _final_state(resumed), _final_state(off)
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key]), key
    states_on = _random_states(on / "checkpoint-2" / "random_states_0.pkl")
    states_off = _random_states(off / "checkpoint-2" / "random_states_0.pkl")
    assert torch.equal(states_on["torch_manual_seed"], states_off["torch_manual_seed"])
    assert str(states_on["numpy_random_seed"]) == str(states_off["numpy_random_seed"])
    assert states_on["random_state"] == states_off["random_state"]
    assert [s for s, _ in _scalars(on)["eval/fd"]] == [1, 2, 3, 4]
    assert [s for s, _ in _scalars(resumed)["eval/fd"]] == [3, 4]


def _objective(name: str):
    """The objective of a run with ``--objective name`` (flow: shift 2)."""
    from scratch_diffusion.training.cli import parse_args
    from scratch_diffusion.training.objectives import make_objective

    return make_objective(parse_args(["--objective", name, *(["--flow_shift", "2"] if name == "flow" else [])]))


def _tiny_pipeline(objective: str, unet_json: Path):
    """A random tiny UNet with the sampling scheduler a run of ``objective`` saves (flow: shift 2)."""
    from scratch_diffusion.training import export
    from scratch_diffusion.training.models import build_unet

    scheduler = _objective(objective).sampling_scheduler()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return export.build_pipeline(build_unet(str(unet_json), 16, 1, None), scheduler)


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_evaluation_samplers_on_both_paths(objective, tiny_unet_json):
    """``saved`` and ``dpmsolver`` (few-step) sample the model's own path, from a private generator."""
    pipeline = _tiny_pipeline(objective, tiny_unet_json)
    saved = pipeline.scheduler
    few_step = evaluation_scheduler("dpmsolver", _objective(objective), saved)
    assert evaluation_scheduler("saved", _objective(objective), saved) is saved
    assert type(few_step).__name__ == "ScratchDPMSolverScheduler"
    assert few_step.config.solver_order == 3 and few_step.config.use_flow_sigmas == (objective == "flow")
    state = torch.get_rng_state()
    pipeline.scheduler = few_step
    first = sample_images(pipeline, 3, 2, seed=0)
    assert first.shape == (3, 1, 16, 16) and torch.isfinite(first).all() and first.abs().max() <= 1
    assert torch.equal(first, sample_images(pipeline, 3, 2, seed=0))
    assert not torch.equal(first, sample_images(pipeline, 3, 2, seed=1))
    assert torch.equal(torch.get_rng_state(), state)


def test_best_folder_is_replaced_whole(tmp_path, tiny_unet_json):
    pipeline = _tiny_pipeline("ddpm", tiny_unet_json)
    tiny_unet_json.unlink()  # tmp_path holds nothing but what save_best writes
    record = EvaluationRecord(step=2, sampler="S", num_inference_steps=2, seconds=0.1, metrics={"fd": 3.0, "n": 2})
    assert read_best(str(tmp_path)) is None
    save_best(pipeline, record, str(tmp_path))
    better = EvaluationRecord(**{**record.as_dict(), "step": 4, "metrics": {"fd": 2.0, "n": 2}})
    save_best(pipeline, better, str(tmp_path))
    assert read_best(str(tmp_path)) == better
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no partial or old folder left
    assert {"model_index.json", "unet", "scheduler", "evaluation.json"} <= {
        p.name for p in (tmp_path / "best").iterdir()
    }
