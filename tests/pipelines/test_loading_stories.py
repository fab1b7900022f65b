"""Loading stories A–E in fresh interpreters, running the documentation's own snippets.

The page ``docs/pipeline.md`` holds one ```python block per story, tagged by its first line
(``# Save``, ``# Story A``, …). Each test runs a block unchanged in a subprocess and appends
checks of what it produced. Story B runs with scratch-diffusion not importable (see
``helpers.run_python``); story E serves the saved folder from a loopback Hub (``hub_server.py``),
so diffusers' real repo-id download and validation code runs without the network. The offline
stories on the saved folder share one interpreter per environment (``helpers.run_stories``: A, D, C
with the package installed, A first as it must see no remote code; B and its edits with diffusers
only), each story still passing or failing on its own.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline

from scratch_diffusion import ScratchDDIMScheduler, ScratchDDPMScheduler, ScratchDiffusionPipeline

from .helpers import run_python, run_stories, subprocess_env, tiny_unet
from .hub_server import LoopbackHub

PAGE = Path(__file__).resolve().parents[2] / "docs" / "pipeline.md"
REPO_ID = "your-name/my-pipeline"


def readme_snippets() -> dict[str, str]:
    """The ```python blocks of docs/pipeline.md that tell a story, keyed by their first-line comment."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.DOTALL)
    blocks = [block for block in blocks if re.match(r"# (Save|Story|Stories)\b", block)]
    return {block.splitlines()[0].lstrip("# ").strip(): block for block in blocks}


SNIPPETS = readme_snippets()

LOADED_INSTALLED = """
import sys
assert type(pipe).__module__ == "scratch_diffusion.pipelines.pipeline_scratch_diffusion", type(pipe)
assert type(pipe.scheduler).__module__.startswith("scratch_schedulers."), type(pipe.scheduler)
assert not [m for m in sys.modules if m.startswith("diffusers_modules")], "story A ran remote code"
"""
LOADED_REMOTE = """
import importlib.util
assert type(pipe).__module__ == "diffusers_modules.local.scratch_diffusion", type(pipe)
assert type(pipe.scheduler).__name__ == "ScratchDDIMScheduler", type(pipe.scheduler)
assert type(pipe.scheduler).__module__ == type(pipe).__module__
"""
NOT_INSTALLED = """
import importlib.util
for name in ("scratch_diffusion", "scratch_schedulers"):
    assert importlib.util.find_spec(name) is None, f"{name} is importable in the diffusers-only story"
"""


def images_are(count: int) -> str:
    return f"\nassert len(images) == {count} and all(im.size == (16, 16) for im in images), images\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder holding ``my-pipeline/`` written by the page's Save snippet (run in-process)."""
    path = tmp_path_factory.mktemp("stories")
    cwd = os.getcwd()
    os.chdir(path)
    try:
        exec(compile(SNIPPETS["Save"], "docs/pipeline.md[Save]", "exec"), {"__name__": "__main__"})
    finally:
        os.chdir(cwd)
    return path


def test_page_has_every_story():
    assert set(SNIPPETS) == {
        "Save",
        "Story A",
        "Stories B and C",
        "Story D",
        "Story E, scratch-diffusion installed",
        "Story E, only diffusers installed",
        "Story E offline, only diffusers installed",
    }


EDITS = """
x = pipe(batch_size=2, num_inference_steps=4, generator=torch.manual_seed(0), output_type="pt").images
edited = pipe.img2img(x, strength=0.5, num_inference_steps=4, output_type="pt").images
assert edited.shape == x.shape and pipe.evaluations == {"unet": 2.0}, pipe.evaluations  # round(0.5 · 4) steps
mask = torch.zeros(2, 1, 16, 16)
mask[..., 8:] = 1
filled = pipe.inpaint(x, mask, num_inference_steps=4, jump_length=1, jump_n_sample=2, output_type="pt").images
assert torch.equal(filled[..., :8], x[..., :8])  # the known half, exactly
assert pipe.evaluations == {"unet": float(pipe.inpaint_evaluations(4, 1.0, 1, 2))} == {"unet": 7.0}  # 4 + 1·1·3
"""
NO_REMOTE_CODE_COPIED = """
import os
from pathlib import Path
assert not list(Path(os.environ["HF_HOME"]).rglob("scratch_diffusion.py")), "story A copied remote code"
"""
D_CHECKS = """
assert type(pipe.scheduler).__name__ == 'FlowMatchEulerDiscreteScheduler'
assert len(pipe(num_inference_steps=2).images) == 1  # the VP UNet on the flow path, converted
"""


@pytest.fixture(scope="module")
def installed_stories(workdir, tmp_path_factory) -> dict[str, str | None]:
    """Stories A, D and C in one interpreter with the package installed (A first: it must load no remote code)."""
    return run_stories(
        {
            "A": SNIPPETS["Story A"] + LOADED_INSTALLED + images_are(4) + NO_REMOTE_CODE_COPIED,
            "D": SNIPPETS["Story D"] + D_CHECKS,
            "C": SNIPPETS["Stories B and C"] + LOADED_REMOTE + "import scratch_diffusion\n" + images_are(4),
        },
        workdir,
        package_installed=True,
        env=subprocess_env(tmp_path_factory.mktemp("hf-installed")),
    )


@pytest.fixture(scope="module")
def diffusers_only_stories(workdir, tmp_path_factory) -> dict[str, str | None]:
    """Story B, then B's pipeline editing images, in one interpreter where scratch-diffusion is not importable."""
    return run_stories(
        {
            "B": SNIPPETS["Stories B and C"] + LOADED_REMOTE + NOT_INSTALLED + images_are(4),
            "B edits": SNIPPETS["Stories B and C"] + LOADED_REMOTE + NOT_INSTALLED + EDITS,
        },
        workdir,
        package_installed=False,
        env=subprocess_env(tmp_path_factory.mktemp("hf-diffusers-only")),
    )


def test_story_a_installed_package_needs_no_remote_code(installed_stories):
    assert installed_stories["A"] is None, installed_stories["A"]


@pytest.mark.parametrize("package_installed", [False, True], ids=["B-diffusers-only", "C-package-installed"])
def test_stories_b_and_c_diffusion_pipeline_with_trust_remote_code(request, package_installed):
    results = request.getfixturevalue("installed_stories" if package_installed else "diffusers_only_stories")
    story = "C" if package_installed else "B"
    assert results[story] is None, results[story]


def test_story_b_shipped_code_edits_images(diffusers_only_stories):
    """img2img and inpaint are methods of the one pipeline class, so the shipped code has them (diffusers only)."""
    assert diffusers_only_stories["B edits"] is None, diffusers_only_stories["B edits"]


@pytest.mark.slow
def test_story_d_scheduler_swaps(installed_stories):
    assert installed_stories["D"] is None, installed_stories["D"]


STOCK_IS_REJECTED = """
from diffusers import DDPMPipeline
try:
    DDPMPipeline.from_pretrained("your-name/stock-ddpm")
except ValueError as error:
    assert "is not a module in 'diffusers/pipelines'" in str(error), error
else:
    raise AssertionError("diffusers accepted a module-path entry from a Hub repo")
"""
B_BY_REPO_ID_FAILS_OFFLINE = f"""
try:
    DiffusionPipeline.from_pretrained({REPO_ID!r}, trust_remote_code=True)
except Exception as error:
    assert "offline mode is enabled" in str(error), error
else:
    raise AssertionError("diffusers now loads remote code offline by repo id: update docs/pipeline.md")
"""


@pytest.mark.slow
def test_story_e_repo_id_with_the_package_installed(workdir, tmp_path):
    """Story A by repo id: diffusers' download validates the folder; the shipped code is not fetched."""
    stock = tmp_path / "stock-ddpm"  # the stock pipeline names our scheduler by module path
    DDPMPipeline(unet=tiny_unet(), scheduler=ScratchDDPMScheduler()).save_pretrained(stock)
    env = subprocess_env(tmp_path / "hf", HF_HUB_OFFLINE="0")
    with LoopbackHub({REPO_ID: workdir / "my-pipeline", "your-name/stock-ddpm": stock}) as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        checks = f"""
assert pipe.name_or_path == {REPO_ID!r}
assert ScratchDiffusionPipeline.from_pretrained({REPO_ID!r}, torch_dtype=torch.float64).unet.dtype == torch.float64
"""
        run_python(
            "import torch\n"
            + SNIPPETS["Story E, scratch-diffusion installed"]
            + LOADED_INSTALLED
            + images_are(1)
            + checks
            + STOCK_IS_REJECTED,
            tmp_path,
            package_installed=True,
            env=env,
        )
        fetched = {request.split(f"/{REPO_ID}/resolve/")[-1].split("/", 1)[-1] for request in hub.requests}
        assert "model_index.json" in fetched and "scratch_diffusion.py" not in fetched, fetched
    # the Hub is gone: the same call, offline, from the cache it filled
    run_python(
        SNIPPETS["Story E, scratch-diffusion installed"] + LOADED_INSTALLED + images_are(1),
        tmp_path,
        package_installed=True,
        env={**env, "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.slow
def test_story_e_repo_id_with_diffusers_only(workdir, tmp_path):
    """Story B by repo id, then offline: by repo id it fails (diffusers), from the snapshot it loads."""
    env = subprocess_env(tmp_path / "hf", HF_HUB_OFFLINE="0")
    with LoopbackHub({REPO_ID: workdir / "my-pipeline"}) as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        run_python(
            SNIPPETS["Story E, only diffusers installed"] + LOADED_REMOTE + NOT_INSTALLED + images_are(1),
            tmp_path,
            package_installed=False,
            env=env,
        )
    run_python(
        SNIPPETS["Story E offline, only diffusers installed"]
        + LOADED_REMOTE
        + NOT_INSTALLED
        + images_are(1)
        + B_BY_REPO_ID_FAILS_OFFLINE,
        tmp_path,
        package_installed=False,
        env={**env, "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.slow
def test_save_load_save_load_cycle(tmp_path):
    """installed save → B load + save → A load + save → C load + save: same files, same samples."""
    pipe = ScratchDiffusionPipeline(unet=tiny_unet(), scheduler=ScratchDDIMScheduler(prediction_type="v_prediction"))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "gen0")
    expected = pipe(batch_size=2, num_inference_steps=3, generator=torch.manual_seed(0), output_type="np").images
    np.save(tmp_path / "expected.npy", expected)
    sample = """
import numpy as np, torch
images = pipe(batch_size=2, num_inference_steps=3, generator=torch.manual_seed(0), output_type="np").images
np.testing.assert_allclose(images, np.load("expected.npy"), atol=1e-6)
"""
    env = subprocess_env(tmp_path / "hf")
    run_python(
        "from diffusers import DiffusionPipeline\n"
        "pipe = DiffusionPipeline.from_pretrained('gen0', trust_remote_code=True)\n"
        + LOADED_REMOTE
        + NOT_INSTALLED
        + sample
        + "pipe.save_pretrained('gen1')\n",
        tmp_path,
        package_installed=False,
        env=env,
    )
    run_python(
        "from scratch_diffusion import ScratchDiffusionPipeline\n"
        "pipe = ScratchDiffusionPipeline.from_pretrained('gen1')\n"
        + LOADED_INSTALLED
        + sample
        + "pipe.save_pretrained('gen2')\n"
        "from diffusers import DiffusionPipeline\n"
        "pipe = DiffusionPipeline.from_pretrained('gen2', trust_remote_code=True)\n"
        + LOADED_REMOTE
        + sample
        + "pipe.save_pretrained('gen3')\n",
        tmp_path,
        package_installed=True,
        env=env,
    )
    first = json.loads((tmp_path / "gen0" / "model_index.json").read_text())
    assert first["prediction_type"] == "v_prediction"
    for generation in ("gen1", "gen2", "gen3"):
        assert json.loads((tmp_path / generation / "model_index.json").read_text()) == first, generation
    # a pipeline loaded from the shipped file re-saves that very file; the installed package regenerates it
    for copy, original in (("gen1", "gen0"), ("gen3", "gen2")):
        for shipped in ("scratch_diffusion.py", "scheduler/scratch_diffusion.py"):
            assert (tmp_path / copy / shipped).read_bytes() == (tmp_path / original / shipped).read_bytes()
