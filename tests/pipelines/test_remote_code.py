"""The saved format: the shipped single file (made by the build step, kept current here) and model_index.json."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler

from scratch_diffusion import (
    ScratchDDIMScheduler,
    ScratchDDPMScheduler,
    ScratchDiffusionPipeline,
    ScratchDPMSolverScheduler,
    ScratchFlowMapScheduler,
    ScratchFlowMatchScheduler,
)
from scratch_diffusion.pipelines import build_shipped, remote_code

from .helpers import tiny_unet


def test_the_committed_shipped_file_is_current():
    """The file save_pretrained copies is what the build step makes from the package source now."""
    committed = remote_code.shipped_file().read_text(encoding="utf-8")
    generated = build_shipped.build_bundle()
    current = committed == generated  # a bool, so a failure prints the short diff below, not pytest's 200 kB one
    assert current, f"{remote_code.shipped_file()} is stale: run `{build_shipped.BUILD_COMMAND}`\n" + (
        build_shipped.stale_diff(committed, generated)
    )


def test_the_build_check_names_the_command(tmp_path, capsys):
    output = tmp_path / "scratch_diffusion.py"
    output.write_text("# an old build\n")
    assert build_shipped.main(["--check", "--output", str(output)]) == 1
    assert build_shipped.BUILD_COMMAND in capsys.readouterr().err
    assert build_shipped.main(["--output", str(output)]) == 0
    assert build_shipped.main(["--check", "--output", str(output)]) == 0
    assert output.read_text() == build_shipped.build_bundle()


def test_bundle_is_self_contained_for_diffusers():
    """No import diffusers would try to copy (relative) or could not satisfy (our packages); no bundler code."""
    bundle = remote_code.shipped_file().read_text(encoding="utf-8")
    compile(bundle, "scratch_diffusion.py", "exec")
    # the two patterns diffusers' check_imports / get_relative_imports scan for
    imported = re.findall(r"^\s*import\s+(\S+)\s*$", bundle, flags=re.MULTILINE)
    imported += re.findall(r"^\s*from\s+(\S+)\s+import", bundle, flags=re.MULTILINE)
    assert not [m for m in imported if m.startswith(".") or m.split(".")[0] in remote_code.BUNDLED_PACKAGES]
    assert {m.split(".")[0] for m in imported} <= {*sys.stdlib_module_names, "torch", "numpy", "diffusers"}
    build_tree = ast.parse(Path(build_shipped.__file__).read_text(encoding="utf-8"))
    build_functions = {node.name for node in build_tree.body if isinstance(node, ast.FunctionDef)}
    shipped_functions = {node.name for node in ast.parse(bundle).body if isinstance(node, ast.FunctionDef)}
    assert build_functions and not build_functions & shipped_functions


def test_bundle_module_behaves_like_the_installed_package(tmp_path):
    path = tmp_path / "scratch_diffusion.py"
    path.write_text(remote_code.shipped_file().read_text(encoding="utf-8"))
    spec = importlib.util.spec_from_file_location("bundle_under_test", path)
    bundle = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bundle
    try:
        spec.loader.exec_module(bundle)
        assert bundle.running_from_bundle() and bundle.shipped_file() == path
        for cls in (ScratchDDPMScheduler, ScratchDDIMScheduler, ScratchFlowMatchScheduler, ScratchDPMSolverScheduler,
                    ScratchFlowMapScheduler):
            ours, shipped = cls(), getattr(bundle, cls.__name__)()
            ours.set_timesteps(5)
            shipped.set_timesteps(5)
            torch.testing.assert_close(shipped.timesteps, ours.timesteps, rtol=0, atol=0)
            x, out = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
            t = ours.timesteps[1]
            expected = ours.step(out, t, x, generator=torch.manual_seed(0)).prev_sample  # DDPM adds seeded noise
            got = shipped.step(out, t, x, generator=torch.manual_seed(0)).prev_sample
            assert not torch.equal(expected, x)
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
    finally:
        del sys.modules[spec.name]


FAKE = ("fakepkg",)


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """Write modules of a package ``fakepkg``, bundled with ``packages=FAKE``."""
    (tmp_path / "fakepkg").mkdir()
    (tmp_path / "fakepkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield lambda name, code: (tmp_path / "fakepkg" / f"{name}.py").write_text(textwrap.dedent(code))
    for name in [m for m in sys.modules if m.startswith("fakepkg")]:
        del sys.modules[name]


def test_bundler_flattens_chains_and_aliases(fake_package):
    fake_package("base", "import math\n\ndef helper():\n    return math.pi\n")
    fake_package("middle", "from .base import helper as _h\n\ndef twice():\n    return 2 * _h()\n")
    fake_package(
        "top",
        "from __future__ import annotations\n\nfrom .middle import twice\n\n__all__ = ['VALUE']\nVALUE = twice()\n",
    )
    bundle = build_shipped.build_bundle("fakepkg.top", FAKE)
    assert bundle.index("# fakepkg.base") < bundle.index("# fakepkg.middle") < bundle.index("# fakepkg.top")
    assert "_h = helper" in bundle and "__all__" not in bundle.split('"""', 2)[2]
    namespace = {}
    exec(compile(bundle, "bundle", "exec"), namespace)
    assert namespace["VALUE"] == pytest.approx(2 * 3.141592653589793)


def test_bundler_refuses_a_name_bound_twice(fake_package):
    fake_package("one", "def helper():\n    return 1\n")
    fake_package("two", "def helper():\n    return 2\n")
    fake_package("top", "from .one import helper\nfrom .two import helper as other\n")
    with pytest.raises(ValueError, match=r"'helper' is bound differently in fakepkg\.one and fakepkg\.two"):
        build_shipped.build_bundle("fakepkg.top", FAKE)


def test_bundler_refuses_module_imports(fake_package):
    fake_package("one", "X = 1\n")
    fake_package("top", "from . import one\n")
    with pytest.raises(ValueError, match=r"'from \. import <module>' cannot be bundled"):
        build_shipped.build_bundle("fakepkg.top", FAKE)


def test_saved_folder_layout_and_index(tmp_path):
    pipe = ScratchDiffusionPipeline(unet=tiny_unet(), scheduler=ScratchDDIMScheduler())
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["scratch_diffusion", "ScratchDiffusionPipeline"]
    assert index["scheduler"] == ["scratch_diffusion", "ScratchDDIMScheduler"]
    assert index["unet"] == ["diffusers", "UNet2DModel"]
    assert (index["prediction_type"], index["noise_path"]) == ("epsilon", "vp")
    assert "_name_or_path" not in index
    bundle = remote_code.shipped_file().read_text(encoding="utf-8")
    assert (tmp_path / "scratch_diffusion.py").read_text() == bundle
    assert (tmp_path / "scheduler" / "scratch_diffusion.py").read_text() == bundle

    # swapping in a diffusers scheduler and re-saving drops the custom component
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert not (tmp_path / "scheduler" / "scratch_diffusion.py").exists()
    loaded = ScratchDiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded.scheduler) is DDIMScheduler


def test_installed_view_of_the_index():
    saved = {"_class_name": ["scratch_diffusion", "ScratchDiffusionPipeline"], "unet": ["diffusers", "UNet2DModel"]}
    assert remote_code.installed_model_index(saved)["_class_name"] == "ScratchDiffusionPipeline"
    other = {"_class_name": ["someone_else", "TheirPipeline"]}
    assert remote_code.installed_model_index(other) == other


def test_saving_a_class_the_bundle_lacks_fails_loudly(tmp_path):
    class ScratchFutureScheduler(ScratchDDIMScheduler):
        pass

    ScratchFutureScheduler.__module__ = "scratch_schedulers.scheduling_future"  # ours, but not bundled
    pipe = ScratchDiffusionPipeline(unet=tiny_unet(), scheduler=ScratchFutureScheduler())
    with pytest.raises(ValueError, match=r"\['ScratchFutureScheduler'\] are scratch-diffusion classes"):
        pipe.save_pretrained(tmp_path)


def test_a_missing_shipped_file_names_the_build_command(tmp_path, monkeypatch):
    monkeypatch.setattr(remote_code, "shipped_file", lambda: tmp_path / "not-built" / "scratch_diffusion.py")
    pipe = ScratchDiffusionPipeline(unet=tiny_unet(), scheduler=ScratchDDIMScheduler())
    with pytest.raises(FileNotFoundError, match=re.escape(build_shipped.BUILD_COMMAND)):
        pipe.save_pretrained(tmp_path / "saved")
