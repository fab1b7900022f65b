"""A flow map in the pipeline: the ``unet`` row names it, every loading story loads it, sampling passes r.

The pipeline calls a flow-map UNet with ``r_timestep`` = the next level of a flow-map scheduler's grid
(``pipelines/flow_map.py``), so one step from σ = 1 is z − u(z, r = 0, t = T) exactly; any other scheduler samples it
as a flow model (r = t). The stories run in one fresh interpreter against a loopback Hub (as the ControlNet's do).
"""

from __future__ import annotations

import json
import sysconfig

import numpy as np
import pytest
import torch
from diffusers import FlowMapEulerDiscreteScheduler

from scratch_diffusion import (
    FlowMapUNet2DModel,
    ScratchDiffusionPipeline,
    ScratchFlowMapScheduler,
    ScratchFlowMatchScheduler,
)
from scratch_diffusion.pipelines.components import COMPONENTS

from ..pipelines.helpers import run_python, subprocess_env, tiny_unet
from ..pipelines.hub_server import LoopbackHub

REPO_ID = "your-name/my-flow-map"


def flow_map_unet(seed: int = 0, **overrides) -> FlowMapUNet2DModel:
    """A tiny flow map whose interval embedding is not zero (so r changes the output)."""
    flow_map = FlowMapUNet2DModel.from_unet(tiny_unet(seed, **overrides))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in flow_map.interval_embedding.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return flow_map.eval()


def _noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_the_unet_row_knows_the_flow_map():
    assert COMPONENTS["unet"].ours == {"FlowMapUNet2DModel": FlowMapUNet2DModel}


@pytest.mark.parametrize("scheduler_class", [ScratchFlowMapScheduler, FlowMapEulerDiscreteScheduler])
def test_one_step_is_the_flow_map_from_one_to_zero(scheduler_class):
    unet = flow_map_unet()
    pipe = ScratchDiffusionPipeline(unet=unet, scheduler=scheduler_class(), prediction_type="flow_velocity",
                                    noise_path="flow")  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=2, num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="latent")
    z = _noise()
    with torch.no_grad():
        u = unet(z, torch.full((2,), 1000.0), r_timestep=torch.zeros(2)).sample
        u_instant = unet(z, torch.full((2,), 1000.0)).sample
    # the same float32 arithmetic (the step is z − (1 − 0)·u, exact), so the same bits; r = t would differ:
    torch.testing.assert_close(out.images, z - u, rtol=0, atol=0)
    assert not torch.allclose(z - u, z - u_instant)


def test_two_steps_pass_each_steps_interval_end():
    unet = flow_map_unet()
    seen = []
    unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs.get("r_timestep")), with_kwargs=True)
    pipe = ScratchDiffusionPipeline(unet=unet, scheduler=ScratchFlowMapScheduler())
    pipe.set_progress_bar_config(disable=True)
    pipe(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="latent")
    assert [float(r) for r in seen] == [500.0, 0.0]
    seen.clear()
    pipe.scheduler = ScratchFlowMatchScheduler()  # any other sampler: a flow model, r = t (no r passed)
    pipe(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="latent")
    assert seen == [None, None]


def test_guidance_evaluates_both_halves_with_the_same_interval():
    unet = flow_map_unet(num_class_embeds=4)
    seen = []
    unet.register_forward_pre_hook(lambda m, a, kwargs: seen.append((a[0].shape[0], kwargs["r_timestep"])),
                                   with_kwargs=True)  # fmt: skip
    pipe = ScratchDiffusionPipeline(unet=unet, scheduler=ScratchFlowMapScheduler())
    pipe.set_progress_bar_config(disable=True)
    pipe(batch_size=2, num_inference_steps=1, class_labels=[0, 1], guidance_scale=2.0, output_type="latent")
    assert [(batch, float(r)) for batch, r in seen] == [(4, 0.0)] and pipe.evaluations == {"unet": 2.0}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``flow-map/``: a pipeline with a flow-map UNet and its scheduler; its weights and 1-step images as .npz."""
    root = tmp_path_factory.mktemp("flow_map")
    unet = flow_map_unet()
    pipe = ScratchDiffusionPipeline(unet=unet, scheduler=ScratchFlowMapScheduler())
    pipe.save_pretrained(root / "flow-map")
    pipe.set_progress_bar_config(disable=True)
    torch.set_num_threads(1)  # the stories' interpreter runs on one thread too: the same bits
    images = pipe(batch_size=2, num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="np")
    np.savez(root / "expected.npz", images=images.images)
    np.savez(root / "weights.npz", **{k: v.numpy() for k, v in unet.state_dict().items()})
    return root


def test_the_saved_folder_names_the_flow_map(saved):
    folder = saved / "flow-map"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["unet"] == ["scratch_diffusion", "FlowMapUNet2DModel"]
    assert index["scheduler"] == ["scratch_diffusion", "ScratchFlowMapScheduler"]
    assert json.loads((folder / "unet" / "config.json").read_text())["_class_name"] == "FlowMapUNet2DModel"


CHECK = f"""
import site
import numpy as np, torch
from diffusers import DiffusionPipeline

torch.set_num_threads(1)
SITE_PACKAGES = {sysconfig.get_paths()["purelib"]!r}
EXPECTED, WEIGHTS = np.load("expected.npz")["images"], np.load("weights.npz")


def check(pipe, story, module):
    unet = pipe.unet
    assert type(unet).__name__ == "FlowMapUNet2DModel", (story, type(unet))
    assert type(unet).__module__.startswith(module), (story, type(unet).__module__)
    state = unet.state_dict()
    assert sorted(state) == sorted(WEIGHTS.files), story
    for name, value in state.items():
        np.testing.assert_array_equal(value.numpy(), WEIGHTS[name], err_msg=f"{{story}}: {{name}}")
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="np")
    np.testing.assert_array_equal(images.images, EXPECTED, err_msg=story)
"""
STORIES = f"""
import importlib.util

assert importlib.util.find_spec("scratch_diffusion") is None, "the story started with the package importable"
check(DiffusionPipeline.from_pretrained("flow-map", trust_remote_code=True), "B", "diffusers_modules.")
check(DiffusionPipeline.from_pretrained({REPO_ID!r}, trust_remote_code=True), "E, diffusers only", "diffusers_modules.")

site.addsitedir(SITE_PACKAGES)  # the editable install's finder: the package is importable from here on
from scratch_diffusion import ScratchDiffusionPipeline
from scratch_diffusion.pipelines import load_pipeline

check(ScratchDiffusionPipeline.from_pretrained("flow-map"), "A", "scratch_diffusion.few_step.")
check(load_pipeline("flow-map"), "load_pipeline", "scratch_diffusion.few_step.")
check(DiffusionPipeline.from_pretrained("flow-map", trust_remote_code=True), "C", "diffusers_modules.")
check(ScratchDiffusionPipeline.from_pretrained({REPO_ID!r}), "E, package installed", "scratch_diffusion.few_step.")
"""


def test_every_loading_story_loads_and_samples_the_flow_map(saved, tmp_path):
    """B and E with only diffusers (the shipped class), then A, load_pipeline, C and E with the package: equal
    weights and the same 1-step images, bit for bit."""
    env = subprocess_env(tmp_path / "hf", HF_HUB_OFFLINE="0")
    with LoopbackHub({REPO_ID: saved / "flow-map"}) as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        run_python(CHECK + STORIES, saved, package_installed=False, env=env)
