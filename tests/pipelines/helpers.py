"""Tiny models and fresh-interpreter runners shared by the pipeline tests."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import torch
from diffusers import UNet2DModel

TINY_UNET = dict(
    sample_size=8,
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    block_out_channels=(8, 16),
    norm_num_groups=4,
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
)


def tiny_unet(seed: int = 0, **overrides) -> UNet2DModel:
    """A UNet2DModel with ~20k parameters (8×8 RGB); ``num_class_embeds=...`` makes it conditional."""
    torch.manual_seed(seed)
    return UNet2DModel(**{**TINY_UNET, **overrides}).eval()


class CallCounter:
    """Forward pre-hook that records the batch size and timestep of every UNet evaluation."""

    def __init__(self, unet: torch.nn.Module):
        self.calls: list[tuple[int, torch.Tensor]] = []
        self.inputs: list[torch.Tensor] = []
        self.class_labels: list[torch.Tensor | None] = []
        self._handle = unet.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        sample, timestep = args[0], args[1] if len(args) > 1 else kwargs["timestep"]
        self.calls.append((sample.shape[0], torch.as_tensor(timestep).clone()))
        self.inputs.append(sample.clone())
        self.class_labels.append(kwargs.get("class_labels"))

    def remove(self) -> None:
        self._handle.remove()


def subprocess_env(hf_home: Path, **extra: str) -> dict[str, str]:
    """Environment for a fresh interpreter: offline, its own HF cache and remote-code folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON"))}
    env.update(
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        DIFFUSERS_VERBOSITY="error",
        OMP_NUM_THREADS="1",  # see conftest.py: one torch thread per process on a shared runner
    )
    env.update(extra)
    return env


def run_python(
    code: str, cwd: Path, *, package_installed: bool, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in ``cwd`` and fail the test with its output on error.

    With ``package_installed=False`` the interpreter runs isolated (``-I -S``: no site hooks, no
    ``.pth`` files, no current directory on ``sys.path``) and sees only this environment's
    site-packages directories added by hand — diffusers and its dependencies import, while the
    editable install of scratch-diffusion (a ``.pth`` finder) and the source tree do not.
    """
    script = Path(cwd) / "_story.py"
    script.write_text(textwrap.dedent(code), encoding="utf-8")
    if package_installed:
        command = [sys.executable, str(script)]
    else:
        site_dirs = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
        bootstrap = (
            f"import sys, runpy; sys.path.extend({site_dirs!r}); runpy.run_path({str(script)!r}, run_name='__main__')"
        )
        command = [sys.executable, "-I", "-S", "-c", bootstrap]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"story failed (rc={result.returncode})\n--- code ---\n{code}\n--- stderr ---\n{result.stderr[-6000:]}"
    )
    return result
