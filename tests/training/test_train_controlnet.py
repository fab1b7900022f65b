"""training/train_controlnet.py: a control network for a saved pipeline's frozen UNet (and VAE), trained on the
pipeline's own objective; the frozen weights untouched bit for bit, exact resume, ``--attach``, the batch with its
control and label dropout, paired folder data, a latent pipeline, and bad input refused before any step.

In-process runs (``run_controlnet_training`` / ``main``) on CPU with one thread, on toy pipelines (the toy UNet of
the other training tests, random weights) saved in the test's folder; one subprocess checks the file entry point.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from PIL import Image
from safetensors.torch import load_file

from scratch_diffusion.control import ControlledUNet, ControlNet2DModel
from scratch_diffusion.control.transforms import edge_map, low_resolution
from scratch_diffusion.pipelines import ScratchDiffusionPipeline
from scratch_diffusion.training.controlnet import (
    METRICS_FILE,
    ControlRecipe,
    controlled_batch,
    run_controlnet_training,
)
from scratch_diffusion.training.controlnet import trainer as trainer_module
from scratch_diffusion.training.controlnet.data import ControlPairs
from scratch_diffusion.training.controlnet.evaluation import HeldOut, held_out_losses
from scratch_diffusion.training.data import augment, centre_crop, load_digits
from scratch_diffusion.training.randomness import derive_seed
from scratch_diffusion.training.train_controlnet import main
from scratch_diffusion.training.vae import build_vae
from scratch_diffusion.training.vae.metrics import split_validation
from scratch_schedulers import ScratchDDPMScheduler, ScratchFlowMatchScheduler

from .conftest import REPO, TINY_UNET, subprocess_env, write_imagefolder

TRAIN_CONTROLNET_PY = REPO / "training" / "train_controlnet.py"
WEIGHTS = "diffusion_pytorch_model.safetensors"


def save_pipeline(folder: Path, path: str = "flow", latent: bool = False, classes: int | None = None,
                  channels: int = 1) -> Path:  # fmt: skip
    """A toy ScratchDiffusionPipeline (random weights): 16×16 pixels, or 1×8×8 latents of a tiny VAE (f = 2)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = build_vae("tiny", 16, channels, latent_channels=1) if latent else None
        unet = UNet2DModel(**{**TINY_UNET, "sample_size": 8 if latent else 16, "in_channels": 1 if latent else channels,
                              "out_channels": 1 if latent else channels,
                              "num_class_embeds": None if classes is None else classes + 1})  # fmt: skip
    scheduler = (
        ScratchFlowMatchScheduler()
        if path == "flow"
        else ScratchDDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    )
    ScratchDiffusionPipeline(unet=unet, scheduler=scheduler, **({"vae": vae} if latent else {})).save_pretrained(folder)
    return folder


def _argv(pipeline: Path, out: Path, *extra: str, steps: int) -> list[str]:
    return [
        "--pipeline", str(pipeline), "--output_dir", str(out), "--max_train_steps", str(steps),
        "--train_batch_size", "8", "--learning_rate", "3e-3", "--lr_warmup_steps", "1", "--checkpointing_steps",
        "1000", "--logger", "none", "--num_validation_images", "40", "--eval_num_images", "24",
        "--eval_num_samples", "4", "--eval_num_inference_steps", "2", *extra,
    ]  # fmt: skip


def _tensors(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every safetensors file under ``folder`` by relative path."""
    return {str(p.relative_to(folder)): load_file(p) for p in sorted(folder.rglob("*.safetensors"))}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def spy(monkeypatch) -> dict:
    """The frozen UNet and VAE objects the trainer uses, captured as it loads them."""
    seen: dict = {}
    load_unet, prepare_latents = trainer_module.load_unet_from_pipeline, trainer_module.prepare_latent_training

    def capture_unet(*args, **kwargs):
        seen["unet"] = load_unet(*args, **kwargs)
        return seen["unet"]

    def capture_latents(*args, **kwargs):
        latents = prepare_latents(*args, **kwargs)
        seen["vae"] = latents.vae
        return latents

    monkeypatch.setattr(trainer_module, "load_unet_from_pipeline", capture_unet)
    monkeypatch.setattr(trainer_module, "prepare_latent_training", capture_latents)
    return seen


def test_only_the_control_network_learns_and_attach_adds_it(tmp_path, hf_home, spy, monkeypatch):
    """Flow pipeline, low-resolution control, --attach: the UNet in memory and on disk is bit-identical after
    training, every zero convolution has moved, the folder loads, its metrics are the evaluation's, the card's
    snippet runs, and the pipeline lists (and loads) its controlnet."""
    pipeline = save_pipeline(tmp_path / "pipeline")
    before = _tensors(pipeline)
    out = tmp_path / "controlnet"
    summary = run_controlnet_training(_argv(pipeline, out, "--attach", "--eval_steps", "3", steps=6))
    assert summary.global_step == 6

    unet = spy["unet"]  # the trainer's frozen UNet, after training
    assert not unet.training and not any(p.requires_grad for p in unet.parameters())
    assert _same({k: v.cpu() for k, v in unet.state_dict().items()}, before[f"unet/{WEIGHTS}"])
    after = _tensors(pipeline)
    assert after.keys() == {f"unet/{WEIGHTS}", f"controlnet/{WEIGHTS}"}
    assert _same(after[f"unet/{WEIGHTS}"], before[f"unet/{WEIGHTS}"])

    controlnet = ControlNet2DModel.from_pretrained(out).eval()
    assert (controlnet.config.conditioning_channels, controlnet.config.conditioning_downscale_factor) == (1, 1)
    fresh = ControlNet2DModel.from_unet(unet).state_dict()
    zero_at_start = [name for name, value in fresh.items() if not value.any()]
    assert any("zero_conv" in name for name in zero_at_start)
    trained = controlnet.state_dict()
    assert all(trained[name].any() for name in zero_at_start), [n for n in zero_at_start if not trained[n].any()]
    assert _same(after[f"controlnet/{WEIGHTS}"], load_file(out / WEIGHTS))

    index = json.loads((pipeline / "model_index.json").read_text())
    assert index["controlnet"] == ["scratch_diffusion", "ControlNet2DModel"]
    loaded = ScratchDiffusionPipeline.from_pretrained(pipeline)
    assert isinstance(loaded.controlnet, ControlNet2DModel)

    # The record is the evaluation of the saved (EMA) network, recomputed here bit for bit.
    record = json.loads((out / METRICS_FILE).read_text())
    assert [h["step"] for h in record["history"]] == [3, 6] and record["evaluated_on"] == "held-out"
    assert record["control"] == "low_resolution" and record["num_parameters"] == sum(
        p.numel() for p in controlnet.parameters()
    )
    _, held_out = split_validation(ControlPairs(load_digits(16, False).dataset), 40, seed=0)
    subset = torch.randperm(40, generator=torch.Generator().manual_seed(derive_seed(0, "eval-subset")))[:24]
    images = centre_crop(held_out.__getitems__(subset.sort().values.tolist())["images"], 16)
    control = low_resolution((images + 1) / 2)
    evaluation = HeldOut(images, control, None, (images + 1) / 2, "held-out")
    objective = trainer_module.pipeline_objective(*_resolved(pipeline))
    with torch.no_grad():
        losses = held_out_losses(objective, ControlledUNet(unet, controlnet), unet, evaluation,
                                 derive_seed(0, "controlnet-evaluation"))  # fmt: skip
    assert losses == (record["loss_with_control"], record["loss_without_control"])
    # The consistency: the attached pipeline with the evaluation's sampler samples the first 4 held-out controls
    # with the control and without it, from the evaluation's noise; the same computation, so the same bits.
    sampler = objective.sampling_scheduler()
    pipe = ScratchDiffusionPipeline(unet=loaded.unet, scheduler=sampler, controlnet=loaded.controlnet)
    pipe.set_progress_bar_config(disable=True)
    consistencies = []
    for control_image, evaluated in ((control[:4], {"unet": 2.0, "controlnet": 2.0}), (None, {"unet": 2.0})):
        generator = torch.Generator().manual_seed(derive_seed(0, "controlnet-samples"))
        samples = pipe(batch_size=4, num_inference_steps=2, generator=generator, output_type="pt",
                       control_image=control_image).images  # fmt: skip
        assert pipe.evaluations == evaluated
        consistencies.append(float((low_resolution(samples) - control[:4]).square().mean(dim=(1, 2, 3)).mean()))
    assert consistencies == [record["consistency_with_control"], record["consistency_without_control"]]
    assert consistencies[0] != consistencies[1] and (out / "control_samples.png").is_file()

    card = (out / "README.md").read_text()
    assert "ControlNet2DModel.from_pretrained" in card and "| 6 |" in card
    _run_card_snippet(card, tmp_path, monkeypatch, (4, 1, 16, 16))


def _run_card_snippet(card: str, folder: Path, monkeypatch, shape: tuple[int, ...]) -> None:
    """Run the card's usage snippet in ``folder`` (it names the pipeline and the network by their folder names):
    it samples with the control network, one evaluation of it per UNet evaluation."""
    snippet = card.split("```python\n")[1].split("```")[0]
    assert "control_image=control" in snippet
    monkeypatch.chdir(folder)
    namespace: dict = {}
    exec(compile(snippet, "card-snippet", "exec"), namespace)
    images = namespace["images"]
    assert images.shape == shape and images.min() >= 0 and images.max() <= 1
    assert namespace["pipe"].evaluations == {"unet": 2.0, "controlnet": 2.0}  # the evaluation's 2 steps


def _resolved(pipeline: Path):
    """The validated arguments of a run on ``pipeline`` and its saved record, as the trainer has them."""
    from scratch_diffusion.training.classifier.source import read_pipeline
    from scratch_diffusion.training.controlnet.cli import parse_args, validate_args

    args = parse_args(["--pipeline", str(pipeline)])
    validate_args(args)
    return args, read_pipeline(str(pipeline))


def test_resume_is_bit_identical(tmp_path, hf_home):
    """A class-conditional VP (v-prediction) pipeline, edge control, both dropouts, flips, EMA: resuming from
    checkpoint-2 of a 4-step run ends with the very same control network and evaluation."""
    pipeline = save_pipeline(tmp_path / "pipeline", path="vp", classes=10)
    extra = ("--control", "edges", "--control_dropout_prob", "0.3", "--class_dropout_prob", "0.3", "--random_flip",
             "--checkpointing_steps", "2")  # fmt: skip
    full = tmp_path / "full"
    run_controlnet_training(_argv(pipeline, full, *extra, steps=4))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    summary = run_controlnet_training(_argv(pipeline, resumed, *extra, "--resume_from_checkpoint", "latest", steps=4))
    assert summary.global_step == 4
    for name in (WEIGHTS, "checkpoint-4/model.safetensors"):
        assert _same(load_file(full / name), load_file(resumed / name)), name
    records = [json.loads((d / METRICS_FILE).read_text()) for d in (full, resumed)]
    keys = ("loss_with_control", "loss_without_control", "consistency_with_control", "consistency_without_control")
    assert [records[0][k] for k in keys] == [records[1][k] for k in keys]
    assert records[0]["objective"].startswith("the DDPM objective (v_prediction prediction, squaredcos_cap_v2")
    config = ControlNet2DModel.from_pretrained(full).config
    assert config.num_class_embeds == 11 and config.conditioning_channels == 1


def test_a_latent_pipeline_trains_with_pixel_controls_and_its_vae_stays_frozen(tmp_path, hf_home, spy, monkeypatch):
    """1×8×8 latents of a tiny VAE, 1×16×16 controls, flips, bf16 autocast (CPU): the VAE and UNet unchanged; the
    card's snippet passes the network to the pipeline folder it was not attached to."""
    pipeline = save_pipeline(tmp_path / "pipeline", latent=True)
    before = _tensors(pipeline)
    out = tmp_path / "controlnet"
    argv = _argv(pipeline, out, "--random_flip", "--latent_cache_dir", str(tmp_path / "cache"), "--mixed_precision",
                 "bf16", steps=3)  # fmt: skip
    run_controlnet_training(argv)
    config = ControlNet2DModel.from_pretrained(out).config
    # the control images are 1×16×16 pixels, the latents 1×8×8: the encoder halves once
    assert (config.conditioning_channels, config.conditioning_downscale_factor, config.sample_size) == (1, 2, 8)
    vae, unet = spy["vae"], spy["unet"]
    for model, name in ((vae, "vae"), (unet, "unet")):
        assert not model.training and not any(p.requires_grad for p in model.parameters()), name
        state = {k: v.cpu() for k, v in model.state_dict().items()}
        assert _same(state, before[f"{name}/{WEIGHTS}"]), name
    assert _tensors(pipeline).keys() == before.keys()  # nothing attached without --attach
    record = json.loads((out / METRICS_FILE).read_text())
    assert record["space"] == "latents of pipeline" and record["control_shape"] == [1, 16, 16]
    assert record["sample_shape"] == [1, 8, 8]
    assert all(v.dtype == torch.float32 for v in load_file(out / WEIGHTS).values())
    assert record["consistency_with_control"] > 0 and record["consistency_without_control"] > 0
    _run_card_snippet((out / "README.md").read_text(), tmp_path, monkeypatch, (4, 1, 16, 16))


def _digit_batch(size: int) -> dict:
    data = load_digits(16, True)
    return data.dataset.__getitems__(list(range(size)))


@pytest.mark.parametrize("probability", [0.0, 0.5])
def test_control_and_label_dropout_follow_the_steps_draws(probability):
    """Each control is the transform of its example, or all zeros exactly where the step's draw says so; the labels
    are dropped to the null class by the next draws (train.py's ``drop_labels``)."""
    batch = _digit_batch(64)
    recipe = ControlRecipe(edge_map, 16, True, False, probability, probability, null_class=10)
    step = controlled_batch(batch, recipe, torch.Generator().manual_seed(3))

    replay = torch.Generator().manual_seed(3)  # the same draws in the documented order
    x0 = augment(batch["images"], 16, True, replay)
    drop_control = torch.rand(64, generator=replay) < probability if probability else torch.zeros(64, dtype=bool)
    drop_label = torch.rand(64, generator=replay) < probability if probability else torch.zeros(64, dtype=bool)
    assert torch.equal(step.x0, x0)
    expected = torch.where(drop_control[:, None, None, None], 0.0, edge_map((x0 + 1) / 2))
    assert torch.equal(step.control, expected)
    assert torch.equal(step.labels, torch.where(drop_label, 10, batch["labels"]))
    dropped = (step.control.flatten(1) == 0).all(dim=1)
    assert torch.equal(dropped, drop_control)  # no digit has an all-zero edge map: zeros are the dropped ones
    if probability:
        assert 10 < int(drop_control.sum()) < 54  # Binomial(64, ½): 10 is more than 5 sd below its mean 32


def test_a_latent_batch_mirrors_the_control_with_its_latent():
    """With --random_flip a latent example is the image's latents or its mirror's; its control is mirrored alike."""
    images = torch.zeros(32, 1, 4, 4, dtype=torch.uint8)
    images[:, :, :, 0] = 255  # a bright left column: its mirror has it on the right
    sign = torch.arange(32, dtype=torch.float32)[:, None, None, None] + 1
    batch = {"images": images, "mean": sign.expand(32, 1, 2, 2), "mean_flipped": -sign.expand(32, 1, 2, 2)}
    recipe = ControlRecipe(lambda c: c, 4, True, True)
    step = controlled_batch(batch, recipe, torch.Generator().manual_seed(0))
    mirrored = step.x0[:, 0, 0, 0] < 0
    assert 0 < int(mirrored.sum()) < 32
    assert torch.equal(step.control[:, 0, 0, 3] == 1, mirrored)
    assert torch.equal(step.control[:, 0, 0, 0] == 1, ~mirrored)


@pytest.fixture
def paired_folders(tmp_path) -> tuple[Path, Path]:
    """The conftest's image folder (mixed modes, 20×16) and controls of the same names: the images inverted."""
    images = write_imagefolder(tmp_path / "images")
    controls = tmp_path / "controls"
    for path in images.rglob("*.png"):
        target = controls / path.relative_to(images)
        target.parent.mkdir(parents=True, exist_ok=True)
        gray = np.asarray(Image.open(path).convert("RGBA").convert("RGB"))
        Image.fromarray(255 - gray).save(target)
    return images, controls


def test_paired_folder_controls_are_cropped_and_flipped_with_their_images(tmp_path, hf_home, paired_folders):
    """Each control is its own image inverted, pixel for pixel, after the random crop and flip; and a run trains."""
    from scratch_diffusion.training.controlnet.cli import parse_args, validate_args
    from scratch_diffusion.training.controlnet.data import load_paired_controls
    from scratch_diffusion.training.data import load_training_data

    images, controls = paired_folders
    pipeline = save_pipeline(tmp_path / "pipeline", channels=3)
    args = parse_args(["--pipeline", str(pipeline), "--train_data_dir", str(images), "--control_dir", str(controls),
                       "--resolution", "16", "--random_flip"])  # fmt: skip
    validate_args(args)
    data = load_training_data(args)
    pairs = ControlPairs(data.dataset, controls=load_paired_controls(args, data))
    batch = pairs.__getitems__(list(range(len(pairs))))
    assert batch["images"].shape == batch["controls"].shape == (10, 3, 16, 20)
    step = controlled_batch(batch, ControlRecipe(None, 16, True, False), torch.Generator().manual_seed(1))
    assert step.x0.shape == step.control.shape == (10, 3, 16, 16)
    # Back to 8-bit values: x0 = u/127.5 − 1 and control = v/255 with v = 255 − u; the float errors (a few ulp)
    # are far below the 0.5 of rounding, so the integers are exact.
    pixels = ((step.x0 + 1) * 127.5).round()
    control = (step.control * 255).round()
    assert torch.equal(control, 255 - pixels)

    out = tmp_path / "controlnet"
    extra = ("--train_data_dir", str(images), "--control_dir", str(controls), "--resolution", "16",
             "--num_validation_images", "4", "--eval_num_samples", "2")  # fmt: skip
    run_controlnet_training(_argv(pipeline, out, *extra, steps=2))  # the later value of an argument wins
    record = json.loads((out / METRICS_FILE).read_text())
    assert record["control"] == "paired" and "consistency_with_control" not in record
    assert ControlNet2DModel.from_pretrained(out).config.conditioning_channels == 3


def test_a_control_column_pairs_row_by_row(tmp_path, hf_home, capsys):
    """--dataset_name with a column of control images: row i's control is row i's (here: the image inverted)."""
    import datasets

    from scratch_diffusion.training.controlnet.cli import parse_args, validate_args
    from scratch_diffusion.training.controlnet.data import load_paired_controls
    from scratch_diffusion.training.data import load_training_data

    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (16, 16), dtype=np.uint8) for _ in range(6)]
    table = {"image": [Image.fromarray(p) for p in pixels], "hint": [Image.fromarray(255 - p) for p in pixels]}
    folder = tmp_path / "dataset"
    datasets.Dataset.from_dict(table).cast_column("image", datasets.Image()).cast_column(
        "hint", datasets.Image()).save_to_disk(folder)  # fmt: skip
    pipeline = save_pipeline(tmp_path / "pipeline")
    argv = ["--pipeline", str(pipeline), "--dataset_name", str(folder), "--resolution", "16", "--output_dir",
            str(tmp_path / "out")]  # fmt: skip
    args = parse_args([*argv, "--control_column", "hint"])
    validate_args(args)
    data = load_training_data(args)
    controls = load_paired_controls(args, data)
    assert torch.equal(controls.images, 255 - data.dataset.images)
    assert main([*argv, "--control_column", "sketch"]) == 2
    assert "--control_column 'sketch' is not a column of --dataset_name" in capsys.readouterr().err


@pytest.fixture
def pipelines(tmp_path) -> dict[str, Path]:
    folders = {"unconditional": save_pipeline(tmp_path / "unconditional")}
    not_a_pipeline = tmp_path / "not-a-pipeline"
    not_a_pipeline.mkdir()
    (not_a_pipeline / "config.json").write_text("{}")
    return {**folders, "not_a_pipeline": not_a_pipeline, "missing": tmp_path / "missing"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--pipeline is required"),
        (["--pipeline", "{missing}"], "--pipeline '{missing}': no such folder"),
        (["--pipeline", "{not_a_pipeline}"], "is not a pipeline folder (no model_index.json)"),
        (["--pipeline", "{unconditional}", "--control", "canny"], "--control 'canny' is not allowed; pass one of "
         "low_resolution, edges"),
        (["--pipeline", "{unconditional}", "--control_dir", "{missing}"], "--control_dir pairs with --train_data_dir"),
        (["--pipeline", "{unconditional}", "--control_column", "hint"], "--control_column is a column of "
         "--dataset_name"),
        (["--pipeline", "{unconditional}", "--control", "edges", "--control_column", "hint", "--dataset_name", "x"],
         "pass --control edges or --control_column, not both"),
        (["--pipeline", "{unconditional}", "--class_dropout_prob", "0.1"], "--class_dropout_prob is not allowed: "
         "--pipeline '{unconditional}''s UNet is unconditional"),
        (["--pipeline", "{unconditional}", "--control_dropout_prob", "1"], "--control_dropout_prob must be in [0, 1)"),
        (["--pipeline", "{unconditional}", "--low_resolution_factor", "3"], "--low_resolution_factor 3 is not "
         "allowed at --resolution 16"),
        (["--pipeline", "{unconditional}", "--control", "edges", "--low_resolution_factor", "2"],
         "--low_resolution_factor applies to --control low_resolution only"),
        (["--pipeline", "{unconditional}", "--resolution", "32"], "--resolution 32 is not allowed with --pipeline"),
        (["--pipeline", "{unconditional}", "--eval_num_inference_steps", "0"], "--eval_num_inference_steps must be "
         "in [1, 1000]"),
        (["--pipeline", "{unconditional}", "--conditioning_embedding_channels", "0"],
         "--conditioning_embedding_channels [0] is not allowed"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_status_2(tmp_path, hf_home, capsys, pipelines, extra, message):
    where = {name: str(path) for name, path in pipelines.items()}
    argv = ["--output_dir", str(tmp_path / "out"), *(arg.format(**where) for arg in extra)]
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    lines = [line for line in lines if "records no time distribution" not in line]  # the card-less toy's warning
    assert len(lines) == 1 and lines[0].startswith("train_controlnet.py: error: "), lines
    assert message.format(**where) in lines[0], lines
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_paired_data_that_does_not_pair_is_refused_before_any_step(tmp_path, hf_home, capsys, paired_folders):
    images, controls = paired_folders
    pipeline = save_pipeline(tmp_path / "pipeline", channels=3)
    base = ["--pipeline", str(pipeline), "--output_dir", str(tmp_path / "out"), "--train_data_dir", str(images),
            "--control_dir", str(controls), "--resolution", "16", "--logger", "none"]  # fmt: skip
    first = sorted(controls.rglob("*.png"))[0]
    Image.open(first).resize((16, 16)).save(first)  # a square control for a 20×16 image
    assert main(base) == 2
    error = capsys.readouterr().err
    assert f"the control image {os.path.join(str(controls), first.relative_to(controls))} is 16×16" in error, error
    first.unlink()
    assert main(base) == 2
    error = capsys.readouterr().err
    name = first.relative_to(controls).as_posix()
    assert f"lacks the control of 1 image(s) of --train_data_dir, e.g. {name}" in error, error
    assert not any((tmp_path / "out").glob("checkpoint-*")) and not (tmp_path / "out" / WEIGHTS).exists()


def test_data_of_other_classes_is_refused_before_any_step(tmp_path, hf_home, capsys, imagefolder):
    pipeline = save_pipeline(tmp_path / "pipeline", classes=10, channels=3)
    out = tmp_path / "out"
    assert main(["--pipeline", str(pipeline), "--output_dir", str(out), "--train_data_dir", str(imagefolder),
                 "--resolution", "16", "--logger", "none"]) == 2  # fmt: skip
    error = capsys.readouterr().err
    assert f"--pipeline {str(pipeline)!r} is conditioned on 10 classes, but a local image dataset" in error, error
    assert "has 2; allowed: the data the pipeline was trained on" in error
    assert not (out / WEIGHTS).exists() and not any(out.glob("checkpoint-*"))


def test_what_the_pipeline_fixes_is_refused(tmp_path, hf_home, capsys):
    pipeline = save_pipeline(tmp_path / "pipeline", path="vp")
    base = ["--output_dir", str(tmp_path / "out"), "--pipeline", str(pipeline)]
    assert main([*base, "--logit_mean", "1"]) == 2
    assert "--logit_mean applies to --objective flow only." in capsys.readouterr().err
    for fixed in (["--prediction_type", "epsilon"], ["--objective", "flow"], ["--vae_name_or_path", "vae"]):
        with pytest.raises(SystemExit) as exit_:  # not arguments of this command line: argparse's status 2
            main([*base, *fixed])
        assert exit_.value.code == 2 and f"unrecognized arguments: {' '.join(fixed)}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_file_entry_point_reports_bad_input(tmp_path, hf_home):
    result = subprocess.run(
        [sys.executable, str(TRAIN_CONTROLNET_PY), "--output_dir", str(tmp_path / "out"), "--pipeline",
         str(tmp_path / "nowhere")],
        cwd=REPO, env=subprocess_env(hf_home), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "train_controlnet.py: error: --pipeline" in result.stderr, result.stderr
