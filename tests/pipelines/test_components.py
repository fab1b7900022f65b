"""The component table: a new optional component is one row (here a throwaway second UNet)."""

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

SECOND_FILES = ["second_unet/config.json", "second_unet/diffusion_pytorch_model.safetensors"]


@pytest.fixture
def second_row():
    """The whole registration of the guide UNet: one row, removed again after the test."""
    row = register_component(Component("second_unet", UNet2DModel))
    yield row
    unregister_component("second_unet")


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_registered_component_saves_checks_and_loads_back(tmp_path, second_row):
    guide = tiny_unet(seed=1)
    pipe = build_pipeline(tiny_unet(), ScratchDDIMScheduler(), second_unet=guide)
    assert "second_unet" in ScratchDiffusionPipeline._optional_components and pipe.second_unet is guide
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["second_unet"] == ["diffusers", "UNet2DModel"]
    assert all((tmp_path / name).is_file() for name in SECOND_FILES)
    (tmp_path / "README.md").write_text("card")  # the rest of a finished training output
    assert missing_outputs(str(tmp_path)) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no key of the index or of second_unet/config.json is unknown
        check_saved_folder(tmp_path, ScratchDiffusionPipeline)
    for loaded in (ScratchDiffusionPipeline.from_pretrained(tmp_path), load_pipeline(tmp_path)):
        assert isinstance(loaded.second_unet, UNet2DModel) and same_weights(loaded.second_unet, guide)
        assert same_weights(loaded.unet, pipe.unet)
    weights = tmp_path / SECOND_FILES[1]
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(SavedPipelineError, match=r"second_unet.*truncated"):
        ScratchDiffusionPipeline.from_pretrained(tmp_path)
    weights.unlink()
    assert missing_outputs(str(tmp_path)) == SECOND_FILES[1:]


def test_a_registered_component_is_optional_and_unregistering_removes_it(tmp_path, second_row):
    pipe = ScratchDiffusionPipeline(unet=tiny_unet(), scheduler=ScratchDDIMScheduler())
    assert pipe.second_unet is None
    pipe.save_pretrained(tmp_path)
    assert ScratchDiffusionPipeline.from_pretrained(tmp_path).second_unet is None
    unregister_component("second_unet")
    try:
        assert "second_unet" not in ScratchDiffusionPipeline._optional_components
        with pytest.raises(TypeError, match=r"unknown pipeline components \['second_unet'\]"):
            ScratchDiffusionPipeline(unet=tiny_unet(), scheduler=ScratchDDIMScheduler(), second_unet=tiny_unet())
    finally:
        register_component(second_row)


def test_the_table_holds_the_pipeline_components():
    assert list(COMPONENTS)[:3] == ["unet", "scheduler", "vae"]
    assert ScratchDiffusionPipeline._optional_components == ["vae", "guide_unet", "classifier", "controlnet"]
    with pytest.raises(ValueError, match="registered already"):
        register_component(Component("vae", UNet2DModel))
    with pytest.raises(ValueError, match="required component"):
        unregister_component("unet")
