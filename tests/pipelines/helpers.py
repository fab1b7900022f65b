"""Tiny models and fresh-interpreter runners shared by the pipeline tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DModel

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


TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(8, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=16,
)


def tiny_vae(seed: int = 0, **overrides) -> AutoencoderKL:
    """An untrained AutoencoderKL with ~44k parameters: 16×16 RGB images ↔ 4×8×8 latents (factor 2)."""
    torch.manual_seed(seed)
    return AutoencoderKL(**{**TINY_VAE, **overrides}).eval()


def tiny_pipeline(scheduler=None, vae: bool = False, **unet_overrides):
    """A pipeline of a tiny UNet (and, with ``vae``, a tiny VAE: 4×8×8 latents of 16×16 images), progress bar off;
    the scheduler defaults to DDIM without clipping (the UNet counts as trained on its path and parametrisation)."""
    from scratch_diffusion import ScratchDDIMScheduler, ScratchDiffusionPipeline

    if vae:
        unet_overrides = {"in_channels": 4, "out_channels": 4, **unet_overrides}
    pipe = ScratchDiffusionPipeline(
        unet=tiny_unet(**unet_overrides),
        scheduler=scheduler or ScratchDDIMScheduler(clip_sample=False),
        vae=tiny_vae() if vae else None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


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


STORY_RESULTS = "_story_results.json"


def run_stories(
    stories: dict[str, str], cwd: Path, *, package_installed: bool, env: dict[str, str]
) -> dict[str, str | None]:
    """Run several stories, in order, in one fresh interpreter (:func:`run_python`): each in a namespace of its own,
    a failing one not stopping the next. Returns each story's traceback, or None where it passed.

    One interpreter pays the import of torch and diffusers once (≈ 5 s) for stories that need the same
    environment; a story that must not see another's imports has to come first.
    """
    runner = f"""
import json, traceback

results = {{}}
for name, code in {list(stories.items())!r}:
    try:
        exec(compile(code, f"<story {{name}}>", "exec"), {{"__name__": "__main__"}})
    except Exception:
        results[name] = traceback.format_exc()
    else:
        results[name] = None
with open({STORY_RESULTS!r}, "w", encoding="utf-8") as file:
    json.dump(results, file)
"""
    run_python(runner, cwd, package_installed=package_installed, env=env)
    return json.loads((Path(cwd) / STORY_RESULTS).read_text(encoding="utf-8"))


class ExactUNet(torch.nn.Module):
    """A Gaussian mixture's exact denoiser dressed as a UNet of 2-D "images" (B, d, 1, 1).

    It answers as a model trained on the ``vp`` path (linear β, T = 1000; a fractional timestep
    means the log-SNR interpolated between integer ones, the clock of ``path_change``) or on the
    ``flow`` path (σ = t/T), with the given prediction type. ``calls`` counts evaluations.
    """

    def __init__(self, mixture, path: str, prediction_type: str, dtype: torch.dtype = torch.float32):
        super().__init__()
        from diffusers.configuration_utils import FrozenDict

        from scratch_schedulers import ScratchDDPMScheduler
        from scratch_schedulers.path_change import vp_log_snr_table

        self.mixture, self.path, self.prediction_type = mixture, path, prediction_type
        self.config = FrozenDict(sample_size=1, in_channels=mixture.dim, num_class_embeds=None)
        self.register_buffer("anchor", torch.zeros((), dtype=dtype))
        self.log_snr_table = vp_log_snr_table(ScratchDDPMScheduler().alphas_cumprod)
        self.calls = 0

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    def point(self, timestep) -> tuple[float, float]:
        import numpy as np

        from scratch_schedulers.path_change import vp_point_of_log_snr

        t = float(torch.as_tensor(timestep).reshape(-1)[0])
        if self.path == "flow":
            return 1 - t / 1000, t / 1000
        return vp_point_of_log_snr(float(np.interp(t, np.arange(1000), self.log_snr_table)))

    def forward(self, sample: torch.Tensor, timestep, class_labels=None):
        from types import SimpleNamespace

        self.calls += 1
        a, b = self.point(timestep)
        x = sample.reshape(len(sample), -1)
        output = self.mixture.model_output(x, a, b, self.prediction_type)
        return SimpleNamespace(sample=output.to(sample.dtype).reshape(sample.shape))


def final_latents(pipe, **kwargs) -> torch.Tensor:
    """The last sample of ``pipe(**kwargs)`` before it is clamped into an image, as float64 (B, d)."""
    captured = {}

    def keep(_pipe, _i, _t, tensors):
        captured["x"] = tensors["latents"]
        return {}

    pipe(output_type="pt", callback_on_step_end=keep, **kwargs)
    return captured["x"].reshape(len(captured["x"]), -1).double()


def template_patterns() -> torch.Tensor:
    """Two fixed 8×8 one-channel patterns in [−1, 1]: left half bright, or right half bright."""
    left = torch.full((1, 8, 8), -0.8)
    left[..., :4] = 0.8
    return torch.stack([left, -left])


def two_template_images(n: int, generator: torch.Generator) -> torch.Tensor:
    """Simple data for tiny trained UNets: one of the :func:`template_patterns` plus N(0, 0.05²) noise."""
    pick = torch.randint(0, 2, (n,), generator=generator)
    return template_patterns()[pick] + 0.05 * torch.randn(n, 1, 8, 8, generator=generator)


def template_distance(images: torch.Tensor) -> float:
    """RMS distance of samples in [−1, 1] to the nearer template pattern (0.05 for the data itself)."""
    squared = (images[:, None] - template_patterns()[None]).square().mean((2, 3, 4))
    return float(squared.min(1).values.mean().sqrt())


def train_tiny_unet(objective: str, steps: int = 200, seed: int = 0) -> UNet2DModel:
    """A 1-channel tiny UNet trained for ``steps`` Adam steps on :func:`two_template_images`.

    ``objective``: ``epsilon`` or ``v_prediction`` (VP path, linear β) or ``flow`` (velocity
    u = ε − x0, σ uniform). A few seconds on one CPU thread.
    """
    # One thread whatever a test before it left set: a tiny UNet's steps slow down by an order of magnitude when
    # several threads share the CPU with the other pytest worker (a 6 s fixture measured 211 s under xdist).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_tiny_unet(objective, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train_tiny_unet(objective: str, steps: int, seed: int) -> UNet2DModel:
    from scratch_schedulers import ScratchDDPMScheduler

    generator = torch.Generator().manual_seed(seed)
    unet = tiny_unet(seed, in_channels=1, out_channels=1).train()
    optimizer = torch.optim.Adam(unet.parameters(), lr=3e-3)
    vp = ScratchDDPMScheduler()
    for _ in range(steps):
        x0 = two_template_images(32, generator)
        noise = torch.randn(x0.shape, generator=generator)
        if objective == "flow":
            sigma = torch.rand(len(x0), generator=generator)
            x_t = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * noise
            t, target = sigma * 1000, noise - x0
        else:
            t = torch.randint(0, 1000, (len(x0),), generator=generator)
            x_t = vp.add_noise(x0, noise, t)
            target = noise if objective == "epsilon" else vp.get_velocity(x0, noise, t)
        loss = (unet(x_t, t).sample - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return unet.eval()
