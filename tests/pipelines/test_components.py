"""The component table: a new optional component is one row (here a throwaway second UNet, as autoguidance's guide)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from diffusers import UNet2DModel

from scratch_diffusion.pipelines import SavedPipelineError, ScratchDiffusionPipeline, check_saved_folder, load_pipeline
from scratch_diffusion.pipelines.components import COMPONENTS, Component, register_component, unregister_component
from scratch_diffusion.training.export import build_pipeline
from scratch_diffusion.training.hub import missing_outputs
from scratch_schedulers import ScratchDDIMScheduler

from .helpers import tiny_unet

GUIDE_FILES = ["guide_unet/config.json", "guide_unet/diffusion_pytorch_model.safetensors"]


@pytest.fixture
def guide_row():
    """The whole registration of the guide UNet: one row, removed again after the test."""
    row = register_component(Component("guide_unet", UNet2DModel))
    yield row
    unregister_component("guide_unet")


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_registered_component_saves_checks_and_loads_back(tmp_path, guide_row):
    guide = tiny_unet(seed=1)
    pipe = build_pipeline(tiny_unet(), ScratchDDIMScheduler(), guide_unet=guide)
    assert "guide_unet" in ScratchDiffusionPipeline._optional_components and pipe.guide_unet is guide
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["guide_unet"] == ["diffusers", "UNet2DModel"]
    assert all((tmp_path / name).is_file() for name in GUIDE_FILES)
    (tmp_path / "README.md").write_text("card")  # the rest of a finished training output
    assert missing_outputs(str(tmp_path)) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no key of the index or of guide_unet/config.json is unknown
        check_saved_folder(tmp_path, ScratchDiffusionPipeline)
    for loaded in (ScratchDiffusionPipeline.from_pretrained(tmp_path), load_pipeline(tmp_path)):
        assert isinstance(loaded.guide_unet, UNet2DModel) and same_weights(loaded.guide_unet, guide)
        assert same_weights(loaded.unet, pipe.unet)
    weights = tmp_path / GUIDE_FILES[1]
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(SavedPipelineError, match=r"guide_unet.*truncated"):
        ScratchDiffusionPipeline.from_pretrained(tmp_path)
    weights.unlink()
    assert missing_outputs(str(tmp_path)) == GUIDE_FILES[1:]


def test_a_registered_component_is_optional_and_unregistering_removes_it(tmp_path, guide_row):
    pipe = ScratchDiffusionPipeline(unet=tiny_unet(), scheduler=ScratchDDIMScheduler())
    assert pipe.guide_unet is None
    pipe.save_pretrained(tmp_path)
    assert ScratchDiffusionPipeline.from_pretrained(tmp_path).guide_unet is None
    unregister_component("guide_unet")
    try:
        assert "guide_unet" not in ScratchDiffusionPipeline._optional_components
        with pytest.raises(TypeError, match=r"unknown pipeline components \['guide_unet'\]"):
            ScratchDiffusionPipeline(unet=tiny_unet(), scheduler=ScratchDDIMScheduler(), guide_unet=tiny_unet())
    finally:
        register_component(guide_row)


def test_the_table_holds_the_pipeline_components():
    assert list(COMPONENTS)[:3] == ["unet", "scheduler", "vae"]
    assert ScratchDiffusionPipeline._optional_components == ["vae"]
    with pytest.raises(ValueError, match="registered already"):
        register_component(Component("vae", UNet2DModel))
    with pytest.raises(ValueError, match="required component"):
        unregister_component("unet")
