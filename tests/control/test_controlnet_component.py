"""The ``controlnet`` pipeline component: its table row, its fit check, and every loading story with it."""

from __future__ import annotations

import json
import sysconfig
import warnings

import numpy as np
import pytest
import torch

from scratch_diffusion import ControlNet2DModel, ScratchDDIMScheduler, ScratchDiffusionPipeline
from scratch_diffusion.pipelines import check_saved_folder, load_pipeline
from scratch_diffusion.pipelines.components import COMPONENTS

from ..pipelines.helpers import run_python, subprocess_env, tiny_unet
from ..pipelines.hub_server import LoopbackHub
from .helpers import randomised, same_weights

REPO_ID = "your-name/my-controlled-pipeline"
FILES = ("config.json", "diffusion_pytorch_model.safetensors", "scratch_diffusion.py")


def test_the_table_row_is_optional_ours_and_checked():
    row = COMPONENTS["controlnet"]
    assert row.optional and row.model and row.pixel_space and row.ours == {"ControlNet2DModel": ControlNet2DModel}
    assert ScratchDiffusionPipeline._optional_components[-1] == "controlnet"
    unet = tiny_unet()
    assert ScratchDiffusionPipeline(unet=unet, scheduler=ScratchDDIMScheduler()).controlnet is None
    row.fits(ControlNet2DModel.from_unet(unet, conditioning_channels=1, conditioning_downscale_factor=4), unet.config)
    for other, message in (
        (tiny_unet(block_out_channels=(8, 8)), r"block_out_channels=\[8, 8\], but this UNet has block_out_channels="),
        (tiny_unet(num_class_embeds=3), "made from a UNet with num_class_embeds=3, but this UNet has num_class_embe"),
        (tiny_unet(sample_size=16), "made from a UNet with sample_size=16, but this UNet has sample_size=8"),
    ):
        with pytest.raises(ValueError, match=message):
            ScratchDiffusionPipeline(
                unet=unet, scheduler=ScratchDDIMScheduler(), controlnet=ControlNet2DModel.from_unet(other)
            )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``controlled/``: a pipeline with a (trained-like) control network; its weights and residuals as .npz."""
    root = tmp_path_factory.mktemp("controlled")
    unet = tiny_unet()
    controlnet = randomised(ControlNet2DModel.from_unet(unet, conditioning_channels=1, conditioning_downscale_factor=2))
    ScratchDiffusionPipeline(unet=unet, scheduler=ScratchDDIMScheduler(), controlnet=controlnet).save_pretrained(
        root / "controlled"
    )
    generator = torch.Generator().manual_seed(0)
    sample, control = torch.randn(2, 3, 8, 8, generator=generator), torch.rand(2, 1, 16, 16, generator=generator)
    with torch.no_grad():
        down, mid = controlnet(sample, 10, control, return_dict=False)
    np.savez(root / "inputs.npz", sample=sample.numpy(), control=control.numpy())
    np.savez(root / "residuals.npz", mid=mid.numpy(), **{f"down{k}": r.numpy() for k, r in enumerate(down)})
    np.savez(root / "weights.npz", **{k: v.numpy() for k, v in controlnet.state_dict().items()})
    return root, controlnet


def test_the_saved_folder_names_and_holds_the_control_network(saved):
    root, controlnet = saved
    folder = root / "controlled"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["controlnet"] == ["scratch_diffusion", "ControlNet2DModel"]
    assert all((folder / "controlnet" / name).is_file() for name in FILES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no key of the index or of controlnet/config.json is unknown
        check_saved_folder(folder, ScratchDiffusionPipeline)
    for loaded in (ScratchDiffusionPipeline.from_pretrained(folder), load_pipeline(folder)):
        assert type(loaded.controlnet) is ControlNet2DModel and same_weights(loaded.controlnet, controlnet)
    plain = root / "plain"
    ScratchDiffusionPipeline(unet=tiny_unet(), scheduler=ScratchDDIMScheduler()).save_pretrained(plain)
    assert "controlnet" not in json.loads((plain / "model_index.json").read_text())
    assert ScratchDiffusionPipeline.from_pretrained(plain).controlnet is None


CHECK = f"""
import site
import numpy as np, torch
from diffusers import DiffusionPipeline

SITE_PACKAGES = {sysconfig.get_paths()["purelib"]!r}
INPUTS, RESIDUALS, WEIGHTS = (np.load(name) for name in ("inputs.npz", "residuals.npz", "weights.npz"))


def check(pipe, story, module):
    controlnet = pipe.controlnet
    assert type(controlnet).__name__ == "ControlNet2DModel", (story, type(controlnet))
    assert type(controlnet).__module__.startswith(module), (story, type(controlnet).__module__)
    state = controlnet.state_dict()
    assert sorted(state) == sorted(WEIGHTS.files), story
    for name, value in state.items():
        np.testing.assert_array_equal(value.numpy(), WEIGHTS[name], err_msg=f"{{story}}: {{name}}")
    # the same weights, inputs and kernels (one thread) as the saving process: the same bits
    sample, control = (torch.from_numpy(INPUTS[name]) for name in ("sample", "control"))
    with torch.no_grad():
        down, mid = controlnet(sample, 10, control, return_dict=False)
    np.testing.assert_array_equal(mid.numpy(), RESIDUALS["mid"], err_msg=story)
    for k, residual in enumerate(down):
        np.testing.assert_array_equal(residual.numpy(), RESIDUALS[f"down{{k}}"], err_msg=story)
    # and the loaded class samples with a control image (the pipeline keyword, in the shipped code too)
    factor, height = controlnet.config.conditioning_downscale_factor, pipe.unet.config.sample_size
    control_image = torch.full((1, controlnet.config.conditioning_channels, factor * height, factor * height), 0.5)
    images = pipe(num_inference_steps=2, control_image=control_image, output_type="pt").images
    assert images.shape == (1, *pipe.image_shape) and pipe.evaluations["controlnet"] == 2, (story, pipe.evaluations)
"""
STORIES = f"""
import importlib.util

assert importlib.util.find_spec("scratch_diffusion") is None, "the story started with the package importable"
check(DiffusionPipeline.from_pretrained("controlled", trust_remote_code=True), "B", "diffusers_modules.")
check(DiffusionPipeline.from_pretrained({REPO_ID!r}, trust_remote_code=True), "E, diffusers only", "diffusers_modules.")

site.addsitedir(SITE_PACKAGES)  # the editable install's finder: the package is importable from here on
from scratch_diffusion import ScratchDiffusionPipeline
from scratch_diffusion.pipelines import load_pipeline

check(ScratchDiffusionPipeline.from_pretrained("controlled"), "A", "scratch_diffusion.control.")
check(load_pipeline("controlled"), "load_pipeline", "scratch_diffusion.control.")
check(DiffusionPipeline.from_pretrained("controlled", trust_remote_code=True), "C", "diffusers_modules.")
check(ScratchDiffusionPipeline.from_pretrained({REPO_ID!r}), "E, package installed", "scratch_diffusion.control.")
"""


def test_every_loading_story_loads_the_control_network(saved, tmp_path):
    """B and E-by-repo-id with only diffusers (the shipped class), then A, load_pipeline, C and E with the package
    (the installed class), in one fresh interpreter against a loopback Hub: equal weights, equal residuals."""
    root, _ = saved
    env = subprocess_env(tmp_path / "hf", HF_HUB_OFFLINE="0")
    with LoopbackHub({REPO_ID: root / "controlled"}) as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        run_python(CHECK + STORIES, root, package_installed=False, env=env)
        downloads = {
            request.split("/resolve/")[-1].split("/", 1)[-1] for request in hub.requests if "/resolve/" in request
        }
    assert {f"controlnet/{name}" for name in FILES[:2]} <= downloads, downloads
