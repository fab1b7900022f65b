"""The README is a front page whose recipes run as written and whose numbers are generated, never typed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from diffusers import DDPMPipeline, DDPMScheduler

from scratch_diffusion import (
    ControlNet2DModel,
    ScratchDiffusionPipeline,
    ScratchFlowMapScheduler,
    ScratchFlowMatchScheduler,
)

from .pipelines.helpers import run_python, subprocess_env, tiny_unet
from .pipelines.hub_server import LoopbackHub

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_LINES = 250  # the "read in five minutes" budget
GENERATED = re.compile(r"<!-- generated: (?P<command>[^\n]+?) -->\n(?P<body>.*?)<!-- /generated -->", re.S)
HUB_IDS = ("google/ddpm-cifar10-32",)  # Hub ids the recipes name; served by a loopback Hub in the test


def test_readme_is_a_short_front_page():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_LINES
    for heading in ("## The two commands", "## Recipes", "## Results", "## Tested versions"):
        assert heading in text
    assert "make demo" in text and "make test" in text


def test_readme_links_point_at_files_that_exist():
    targets = re.findall(r"\]\(((?!https?://)[^)#]+)(?:#[^)]*)?\)", README.read_text(encoding="utf-8"))
    assert targets
    assert [target for target in targets if not (REPO / target).exists()] == []


def save_stand_ins(folder: Path) -> dict[str, Path]:
    """What the recipes load: `make demo`'s pipeline (a toy class-conditional UNet stands in) and a stock Hub model."""
    demo = folder / "outputs" / "demo" / "pipeline"
    unet = tiny_unet(num_class_embeds=11, in_channels=1, out_channels=1)
    guide = tiny_unet(seed=1, num_class_embeds=11, in_channels=1, out_channels=1)  # the demo saves a guide_unet
    scheduler = ScratchFlowMatchScheduler(solver="heun")
    controlnet = ControlNet2DModel.from_unet(unet)  # the demo attaches a low-resolution control network
    ScratchDiffusionPipeline(unet=unet, scheduler=scheduler, guide_unet=guide, controlnet=controlnet).save_pretrained(
        demo
    )
    tuned = folder / "outputs" / "demo" / "few-step"  # the demo's consistency-tuned copy: the UNet, a few-step sampler
    few_step = ScratchFlowMapScheduler(stochastic_sampling=True)
    ScratchDiffusionPipeline(unet=tiny_unet(seed=2, num_class_embeds=11, in_channels=1, out_channels=1),
                             scheduler=few_step).save_pretrained(tuned)  # fmt: skip
    stock = folder / "hub" / "ddpm-cifar10-32"
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler()).save_pretrained(stock)
    return {HUB_IDS[0]: stock}


@pytest.mark.slow
def test_readme_recipes_run_as_written(tmp_path):
    """Every python block, in order, in one namespace and one fresh folder, in a fresh interpreter."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 3
    served = save_stand_ins(tmp_path)
    env = subprocess_env(tmp_path / "hf", HF_HUB_OFFLINE="0")
    with LoopbackHub(served) as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        run_python("\n".join(blocks), tmp_path, package_installed=True, env=env, timeout=600)
    assert any(request.startswith("GET /google/ddpm-cifar10-32/resolve/") for request in hub.requests)


@pytest.mark.parametrize("command", [m["command"] for m in GENERATED.finditer(README.read_text(encoding="utf-8"))])
def test_readme_generated_blocks_are_what_their_commands_print(command):
    """Results and versions come from results files and the lock file by the command the marker names."""
    text = README.read_text(encoding="utf-8")
    body = next(m["body"] for m in GENERATED.finditer(text) if m["command"] == command)
    argv = command.split()
    assert argv[0] == "python"
    printed = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert body.strip() == printed.strip(), f"stale block: regenerate it with `{command}`"


def test_readme_has_its_generated_blocks():
    commands = [m["command"] for m in GENERATED.finditer(README.read_text(encoding="utf-8"))]
    assert commands == ["python benchmarks/front_page.py", "python scripts/tested_versions.py"]
