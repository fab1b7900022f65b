"""The latent pipeline: ScratchDiffusionPipeline(unet, scheduler, vae=AutoencoderKL) samples, saves, loads, inverts.

The VAE and UNet are untrained tiny models built from configs (``helpers.tiny_vae``: 16×16 RGB ↔ 4×8×8).
The loop of a latent pipeline is the pixel pipeline's loop on latents, so its ``output_type="latent"``
must equal the pixel pipeline's on the same UNet, bit for bit, for every scheduler, with guidance and
callbacks — and its images must be exactly ``decode_latents`` of those latents. The loading stories run
in one fresh interpreter that starts without scratch-diffusion importable, then makes it importable
(``site.addsitedir``) and finally goes offline, loading from the cache it filled from a loopback Hub.
"""

from __future__ import annotations

import json
import shutil
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from scratch_diffusion import (
    ScratchDDIMScheduler,
    ScratchDDPMScheduler,
    ScratchDiffusionPipeline,
    ScratchFlowMatchScheduler,
)
from scratch_diffusion.likelihood import pipeline_model
from scratch_diffusion.pipelines import SavedPipelineError, load_pipeline
from scratch_diffusion.pipelines.latents import decode_latents, encode_to_latents

from .helpers import CallCounter, run_python, subprocess_env, tiny_unet, tiny_vae
from .hub_server import LoopbackHub

LATENT_UNET = dict(in_channels=4, out_channels=4)  # on tiny_vae's latents: 4 × 8 × 8
REPO_ID = "your-name/my-latent-pipeline"


def latent_pipeline(scheduler=None, vae: AutoencoderKL | None = None, **unet_overrides) -> ScratchDiffusionPipeline:
    unet = tiny_unet(**{**LATENT_UNET, **unet_overrides})
    scheduler = ScratchDDIMScheduler(clip_sample=False) if scheduler is None else scheduler
    pipe = ScratchDiffusionPipeline(unet=unet, scheduler=scheduler, vae=tiny_vae() if vae is None else vae)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def to_images(decoded: torch.Tensor) -> torch.Tensor:
    return (decoded / 2 + 0.5).clamp(0, 1)


# ---- sampling -------------------------------------------------------------------------------------


def test_sampling_runs_on_latents_and_decodes():
    pipe = latent_pipeline()
    assert (pipe.vae_scale_factor, pipe.latent_shape, pipe.image_shape) == (2, (4, 8, 8), (3, 16, 16))
    counter = CallCounter(pipe.unet)
    call = dict(batch_size=2, num_inference_steps=3)
    latents = pipe(**call, generator=torch.manual_seed(0), output_type="latent").images
    assert {tuple(x.shape) for x in counter.inputs} == {(2, 4, 8, 8)} and latents.shape == (2, 4, 8, 8)
    images = pipe(**call, generator=torch.manual_seed(0), output_type="pt").images
    assert images.shape == (2, 3, 16, 16) and images.std() > 0
    torch.testing.assert_close(images, to_images(decode_latents(pipe.vae, latents)), rtol=0, atol=0)
    array = pipe(**call, generator=torch.manual_seed(0), output_type="np").images
    np.testing.assert_array_equal(array, images.permute(0, 2, 3, 1).numpy())
    pil = pipe(**call, generator=torch.manual_seed(0)).images
    assert all(isinstance(im, PIL.Image.Image) and im.size == (16, 16) for im in pil)
    # without a VAE, "latent" is the last sample itself: the image in [−1, 1], not clamped
    pixel = ScratchDiffusionPipeline(unet=pipe.unet, scheduler=pipe.scheduler)
    pixel.set_progress_bar_config(disable=True)
    assert (pixel.vae_scale_factor, pixel.image_shape) == (1, (4, 8, 8))
    raw = pixel(**call, generator=torch.manual_seed(0), output_type="latent").images
    torch.testing.assert_close(raw, latents, rtol=0, atol=0)
    torch.testing.assert_close(
        pixel(**call, generator=torch.manual_seed(0), output_type="pt").images, to_images(raw), rtol=0, atol=0
    )


SCHEDULERS = {
    "scratch-ddim": lambda: ScratchDDIMScheduler(clip_sample=False),  # latents are not confined to ±1
    "scratch-ddpm": lambda: ScratchDDPMScheduler(clip_sample=False),
    "scratch-flow-heun": lambda: ScratchFlowMatchScheduler(solver="heun"),  # the VP UNet through the conversion
    "diffusers-ddim": lambda: DDIMScheduler(clip_sample=False),
    "diffusers-dpm": lambda: DPMSolverMultistepScheduler(),
    "diffusers-euler": lambda: EulerDiscreteScheduler(),  # init_noise_sigma ≠ 1, scale_model_input
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_guidance_callbacks_and_schedulers_are_the_pixel_loop_on_latents(name):
    """With classifier-free guidance and a callback, the latents equal the pixel pipeline's on the same UNet."""
    pipe = latent_pipeline(ScratchDDPMScheduler(clip_sample=False), num_class_embeds=4)
    pixel = ScratchDiffusionPipeline(unet=pipe.unet, scheduler=ScratchDDPMScheduler(clip_sample=False))
    pipe.scheduler, pixel.scheduler = SCHEDULERS[name](), SCHEDULERS[name]()
    pixel.set_progress_bar_config(disable=True)
    seen = []

    def callback(_pipe, i, _t, tensors):
        seen.append((i, tuple(tensors["latents"].shape)))
        return {"latents": tensors["latents"] * 0.99} if i == 0 else {}

    counter = CallCounter(pipe.unet)
    call = dict(batch_size=2, num_inference_steps=3, class_labels=[0, 2], guidance_scale=3.0)
    latents = pipe(**call, generator=torch.manual_seed(1), output_type="latent", callback_on_step_end=callback).images
    assert {batch for batch, _ in counter.calls} == {4}  # both guidance halves in one forward pass
    assert seen[0] == (0, (2, 4, 8, 8)) and len(seen) == pipe.num_timesteps
    expected = pixel(**call, generator=torch.manual_seed(1), output_type="latent", callback_on_step_end=callback)
    torch.testing.assert_close(latents, expected.images, rtol=0, atol=0)
    images = pipe(**call, generator=torch.manual_seed(1), output_type="pt", callback_on_step_end=callback).images
    torch.testing.assert_close(images, to_images(decode_latents(pipe.vae, latents)), rtol=0, atol=0)


def test_a_vae_that_does_not_fit_the_unet_is_refused_naming_both_numbers():
    with pytest.raises(ValueError, match=r"in_channels=3 but the VAE's latents have latent_channels=4"):
        latent_pipeline(in_channels=3, out_channels=3)
    with pytest.raises(ValueError, match=r"out_channels=5 for the VAE's latent_channels=4; allowed: 4, or 8"):
        latent_pipeline(out_channels=5)
    learned_variance = latent_pipeline(ScratchDDPMScheduler(variance_type="learned_range"), out_channels=8)
    assert learned_variance(num_inference_steps=2, output_type="pt").images.shape == (1, 3, 16, 16)
    unscaled = tiny_vae()
    unscaled.register_to_config(scaling_factor=0.0)
    with pytest.raises(ValueError, match=r"scaling_factor is 0\.0; allowed: a positive number"):
        latent_pipeline(vae=unscaled)


# ---- saving and loading in this process -------------------------------------------------------------


SAMPLE_CALL = dict(batch_size=2, num_inference_steps=3, output_type="np")


def test_a_scheduler_that_clips_x0_warns_on_latents_and_not_on_pixels():
    """clip_sample clamps x̂0 to ±1: right for images in [−1, 1], wrong for a VAE's scaled latents."""
    call = dict(batch_size=1, num_inference_steps=2, output_type="latent")
    pipe = latent_pipeline(DDIMScheduler())  # diffusers' default: clip_sample=True
    with pytest.warns(UserWarning, match=r"clip_sample=True.*not bounded by it; set clip_sample=False"):
        pipe(**call)
    pipe.scheduler = DDIMScheduler(clip_sample=False)
    pixel = ScratchDiffusionPipeline(unet=pipe.unet, scheduler=DDIMScheduler())
    pixel.set_progress_bar_config(disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe(**call)
        pixel(**call)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A folder holding ``latent-pipeline/`` (latent scale 0.5, shift 0.1) and ``expected.npy``, its samples."""
    root = tmp_path_factory.mktemp("latent")
    vae = tiny_vae()
    vae.register_to_config(scaling_factor=0.5, shift_factor=0.1)  # as train_vae.py records a measured scale
    pipe = latent_pipeline(ScratchDDIMScheduler(prediction_type="v_prediction", clip_sample=False), vae=vae)
    pipe.save_pretrained(root / "latent-pipeline")
    np.save(root / "expected.npy", pipe(**SAMPLE_CALL, generator=torch.manual_seed(0)).images)
    return root


def test_save_and_load_round_trip_bit_identical(saved, tmp_path):
    folder = saved / "latent-pipeline"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"] and index["unet"] == ["diffusers", "UNet2DModel"]
    assert json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"] == 0.5
    assert not (folder / "vae" / "scratch_diffusion.py").exists()  # a diffusers class: no custom component
    expected = np.load(saved / "expected.npy")
    for load in (ScratchDiffusionPipeline.from_pretrained, load_pipeline):
        pipe = load(folder)
        pipe.set_progress_bar_config(disable=True)
        assert type(pipe.vae) is AutoencoderKL and pipe.vae.config.shift_factor == 0.1
        np.testing.assert_array_equal(pipe(**SAMPLE_CALL, generator=torch.manual_seed(0)).images, expected)
    pipe.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "model_index.json").read_text()) == index
    again = ScratchDiffusionPipeline.from_pretrained(tmp_path / "again")
    again.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(again(**SAMPLE_CALL, generator=torch.manual_seed(0)).images, expected)
    # .to() and torch_dtype move the VAE with the UNet (float64 noise is another random stream: pass it)
    noise = torch.randn(2, 4, 8, 8, generator=torch.manual_seed(0))
    in_float32 = again(**SAMPLE_CALL, latents=noise).images
    again.to(torch.float64)
    assert again.vae.dtype == again.unet.dtype == torch.float64
    # float64 against float32: the float32 run's own rounding through the UNet, 3 steps and the VAE decoder on [0, 1]
    # images (measured 5e-7; no closed bound for a network: 1e-5 = 168·u at 1), and a dtype not applied is O(1e-2)
    np.testing.assert_allclose(again(**SAMPLE_CALL, latents=noise).images, in_float32, atol=1e-5)
    assert ScratchDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float64).vae.dtype == torch.float64


def test_a_pixel_pipeline_saves_no_vae_entry_and_loads_without_one(tmp_path):
    pipe = ScratchDiffusionPipeline(unet=tiny_unet(), scheduler=ScratchDDIMScheduler())
    pipe.save_pretrained(tmp_path)
    assert "vae" not in json.loads((tmp_path / "model_index.json").read_text())
    assert not (tmp_path / "vae").exists()
    assert ScratchDiffusionPipeline.from_pretrained(tmp_path).vae is None


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _pickle_only(folder: Path) -> None:
    from safetensors.torch import load_file

    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), folder / "vae" / "diffusion_pytorch_model.bin")
    weights.unlink()


BROKEN_VAE_FOLDERS = {
    "truncated weights": (
        lambda f: _truncate(f / "vae" / "diffusion_pytorch_model.safetensors"),
        r"vae/diffusion_pytorch_model\.safetensors is truncated",
    ),
    "corrupt config": (
        lambda f: (f / "vae" / "config.json").write_text('{"latent_channels": 4'),
        r"vae/config\.json is not valid JSON",
    ),
    "no config": (lambda f: (f / "vae" / "config.json").unlink(), r"vae has no config\.json"),
    "no folder": (
        lambda f: shutil.rmtree(f / "vae"),
        r"lists vae \['diffusers', 'AutoencoderKL'\] but the folder .*vae is missing",
    ),
    "pickle only": (_pickle_only, r"vae holds only pickle-based weights \['diffusion_pytorch_model\.bin'\]"),
}


@pytest.mark.parametrize("name", list(BROKEN_VAE_FOLDERS))
def test_a_broken_vae_folder_is_named(name, saved, tmp_path):
    folder = tmp_path / "latent-pipeline"
    shutil.copytree(saved / "latent-pipeline", folder)
    breakage, message = BROKEN_VAE_FOLDERS[name]
    breakage(folder)
    for load in (ScratchDiffusionPipeline.from_pretrained, load_pipeline):
        with pytest.raises(SavedPipelineError, match=message):
            load(folder)


def test_a_vae_config_from_a_newer_version_warns_and_a_swapped_vae_that_does_not_fit_is_refused(saved, tmp_path):
    folder = tmp_path / "latent-pipeline"
    shutil.copytree(saved / "latent-pipeline", folder)
    config = json.loads((folder / "vae" / "config.json").read_text())
    (folder / "vae" / "config.json").write_text(json.dumps({**config, "future_knob": 3}))
    with pytest.warns(UserWarning, match=r"vae/config\.json: keys \['future_knob'\] are not known"):
        ScratchDiffusionPipeline.from_pretrained(folder)
    shutil.rmtree(folder / "vae")
    tiny_vae(latent_channels=2).save_pretrained(folder / "vae")
    with pytest.raises(ValueError, match=r"in_channels=4 but the VAE's latents have latent_channels=2"):
        ScratchDiffusionPipeline.from_pretrained(folder)


# ---- inversion and likelihood -----------------------------------------------------------------------


def test_inversion_encodes_through_the_vae_and_sampling_decodes_back():
    """image → VAE latent → noise → latent → image reconstructs decode(encode(x)), with an error falling with steps.

    The untrained tiny VAE reconstructs x itself poorly (MSE ≈ 0.10); the inversion's own error is what is tested.
    """
    pipe = latent_pipeline(ScratchFlowMatchScheduler())
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    encoded = encode_to_latents(pipe.vae, x * 2 - 1)
    target = to_images(decode_latents(pipe.vae, encoded))
    vae_error = float((target - x).square().mean())
    errors = []
    for steps in (5, 20):  # measured: image MSE 1.8e-2 → 4.9e-3, latent MSE 4.3e-3 → 4.1e-4
        noise = pipe.invert(x, num_inference_steps=steps)
        assert noise.shape == (4, 4, 8, 8) and noise.dtype == torch.float32
        call = dict(batch_size=4, latents=noise, num_inference_steps=steps)
        latents = pipe(**call, output_type="latent").images
        images = pipe(**call, output_type="pt").images
        errors.append((float((images - target).square().mean()), float((latents - encoded).square().mean())))
    (image_5, latent_5), (image_20, latent_20) = errors
    assert image_20 < image_5 / 2 and latent_20 < latent_5 / 4 and image_20 < vae_error / 10, (errors, vae_error)
    with pytest.raises(ValueError, match=r"this pipeline's VAE needs \(4, 3, 16, 16\)"):
        pipe.invert(torch.rand(4, 4, 8, 8))  # latent-sized input is not an image


def test_likelihood_refuses_a_latent_pipeline():
    with pytest.raises(ValueError, match=r"has a vae \(AutoencoderKL\).*image likelihood through a VAE"):
        pipeline_model(latent_pipeline())


# ---- loading stories in fresh interpreters -----------------------------------------------------------

CHECK = f"""
import site
import numpy as np, torch

SITE_PACKAGES = {sysconfig.get_paths()["purelib"]!r}  # this environment's, as helpers.run_python adds it

EXPECTED = np.load("expected.npy")


def check(pipe, story):
    assert type(pipe.vae).__name__ == "AutoencoderKL" and pipe.vae_scale_factor == 2, (story, pipe.vae)
    pipe.set_progress_bar_config(disable=True)
    call = dict(batch_size=2, num_inference_steps=3, generator=torch.manual_seed(0))
    # the same weights and calls in a fresh interpreter: bit-identical (1e-6 ≈ 8 float32 ulps at 1)
    np.testing.assert_allclose(pipe(**call, output_type="np").images, EXPECTED, atol=1e-6, err_msg=story)
    assert pipe(**call, output_type="latent").images.shape == (2, 4, 8, 8), story
    return pipe


def make_package_importable():
    import importlib.util

    assert importlib.util.find_spec("scratch_diffusion") is None, "the story started with the package importable"
    site.addsitedir(SITE_PACKAGES)  # runs the .pth files there: the editable install's finder


from diffusers import DiffusionPipeline
"""
STORIES = f"""
# B: only diffusers, local folder; the shipped file re-saves itself
pipe = check(DiffusionPipeline.from_pretrained("latent-pipeline", trust_remote_code=True), "B")
assert type(pipe).__module__ == "diffusers_modules.local.scratch_diffusion", type(pipe)
pipe.save_pretrained("resaved-by-b")
# E, only diffusers: the Hub repo id
check(DiffusionPipeline.from_pretrained({REPO_ID!r}, trust_remote_code=True), "E, diffusers only")

make_package_importable()
from scratch_diffusion import ScratchDiffusionPipeline
from scratch_diffusion.pipelines import load_pipeline

pipe = check(ScratchDiffusionPipeline.from_pretrained("resaved-by-b"), "A, the folder B re-saved")
assert type(pipe).__module__.startswith("scratch_diffusion."), type(pipe)
check(load_pipeline("latent-pipeline"), "load_pipeline")
check(DiffusionPipeline.from_pretrained("latent-pipeline", trust_remote_code=True), "C")
pipe = check(ScratchDiffusionPipeline.from_pretrained({REPO_ID!r}), "E, package installed")
assert type(pipe).__module__.startswith("scratch_diffusion."), type(pipe)

# offline from here: what HF_HUB_OFFLINE=1 sets, read by huggingface_hub's request hook — any request now raises
import huggingface_hub.constants
from huggingface_hub import snapshot_download

huggingface_hub.constants.HF_HUB_OFFLINE = True
check(ScratchDiffusionPipeline.from_pretrained({REPO_ID!r}), "E offline, package installed")
folder = snapshot_download({REPO_ID!r}, local_files_only=True)
pipe = check(DiffusionPipeline.from_pretrained(folder, trust_remote_code=True), "E offline, the cached snapshot")
assert type(pipe).__module__ == "diffusers_modules.local.scratch_diffusion", type(pipe)
"""


def test_every_loading_story_with_a_vae(saved, tmp_path):
    """B and E-by-repo-id with only diffusers, then A, load_pipeline, C and E with the package, against a
    loopback Hub; then E offline from the cache that filled (one interpreter: each start costs seconds)."""
    workdir = tmp_path / "work"
    shutil.copytree(saved, workdir)
    env = subprocess_env(tmp_path / "hf", HF_HUB_OFFLINE="0")
    with LoopbackHub({REPO_ID: saved / "latent-pipeline"}) as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        run_python(CHECK + STORIES, workdir, package_installed=False, env=env)
        downloads = [request.split("/resolve/")[-1] for request in hub.requests if "/resolve/" in request]
    fetched = {download.split("/", 1)[-1] for download in downloads}  # without the revision
    assert {"vae/config.json", "vae/diffusion_pytorch_model.safetensors"} <= fetched, fetched
    resaved = json.loads((workdir / "resaved-by-b" / "model_index.json").read_text())
    assert resaved == json.loads((saved / "latent-pipeline" / "model_index.json").read_text())


def test_no_warning_from_loading_a_latent_pipeline(saved):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ScratchDiffusionPipeline.from_pretrained(saved / "latent-pipeline")
