"""Latent diffusion with train.py: ``--vae_name_or_path`` trains the UNet on a frozen VAE's cached latents.

A tiny ``AutoencoderKL`` (≈ 42 k parameters, 2× downsampling, 2 latent channels) is built from a config
and saved to the test's folder; the digits at 16×16 become 2×8×8 latents. Runs are in-process and offline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from scratch_diffusion.training import ConfigError, run_training
from scratch_diffusion.training import latent_data as latent_data_module
from scratch_diffusion.training.latent_data import Encoding, encode_dataset, latent_input, measured_scale
from scratch_diffusion.training.train import main

from .conftest import FAKE_TOKEN, launch_command, run
from .test_cli import _fails, no_accelerator  # noqa: F401 (a fixture)
from .test_outputs import FakeHub

TINY_VAE = {
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "latent_channels": 2,
    "layers_per_block": 1,
    "norm_num_groups": 4,
}


def save_vae(folder: Path, seed: int = 0, scaling_factor: float | None = None, **config) -> Path:
    """A randomly initialised AutoencoderKL in ``folder``; its config.json states a scaling_factor only if given."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = AutoencoderKL(**{**TINY_VAE, **config})
    vae.save_pretrained(folder)
    raw = json.loads((folder / "config.json").read_text())
    raw.pop("scaling_factor")  # diffusers writes its default 0.18215; a VAE trained elsewhere has its own
    if scaling_factor is not None:
        raw["scaling_factor"] = scaling_factor
    (folder / "config.json").write_text(json.dumps(raw))
    return folder


@pytest.fixture
def vae_dir(tmp_path) -> Path:
    return save_vae(tmp_path / "vae")


@pytest.fixture
def encodes(monkeypatch) -> list[int]:
    """How many images each call of ``encode_dataset`` encoded, in this test."""
    calls: list[int] = []

    def counting(vae, dataset, *args, **kwargs):
        calls.append(len(dataset))
        return encode_dataset(vae, dataset, *args, **kwargs)

    monkeypatch.setattr(latent_data_module, "encode_dataset", counting)
    return calls


def _argv(out: Path, unet_json: Path, vae: Path, cache: Path, *extra: str, steps: int = 2) -> list[str]:
    return [
        "--output_dir", str(out), "--model_config_name_or_path", str(unet_json), "--vae_name_or_path", str(vae),
        "--latent_cache_dir", str(cache), "--train_batch_size", "4", "--max_train_steps", str(steps),
        "--checkpointing_steps", "100", "--lr_warmup_steps", "1", "--eval_batch_size", "2",
        "--ddpm_num_inference_steps", "2", "--logger", "none", *extra,
    ]  # fmt: skip


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "unet" / "diffusion_pytorch_model.safetensors")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_latent_run_saves_a_decoding_pipeline_and_reuses_its_cache(
    tmp_path, tiny_unet_json, vae_dir, encodes, hf_home, classifier_cache, monkeypatch, caplog
):
    """Encode once, train on 2×8×8 latents, evaluate decoded samples, save and push the pipeline with its VAE."""
    hub = FakeHub(monkeypatch)
    cache = tmp_path / "cache"
    extra = ("--class_conditional", "--random_flip", "--eval_steps", "2", "--eval_num_samples", "8",
             "--eval_num_inference_steps", "2")  # fmt: skip
    first = tmp_path / "first"
    argv = _argv(first, tiny_unet_json, vae_dir, cache, *extra)
    with caplog.at_level("INFO", logger="scratch_diffusion"):
        assert main([*argv, "--push_to_hub", "--hub_model_id", "me/latent", "--hub_token", FAKE_TOKEN]) == 0
    assert encodes == [1797]
    assert "as 2×8×8 latents (2× downsampling) of vae" in caplog.text
    assert "Step 2: FD " in caplog.text  # decoded samples scored against real images
    [cached] = cache.iterdir()
    tensors = load_file(cached)
    assert set(tensors) == {"mean", "mean_flipped"} and tensors["mean"].shape == (1797, 2, 8, 8)

    # auto, and the config states no scale: measured, and recorded in the saved vae/config.json
    saved_config = json.loads((first / "vae" / "config.json").read_text())
    expected = 1 / tensors["mean"].double().std().item()
    assert saved_config["scaling_factor"] == pytest.approx(expected, rel=1e-12)  # float64 through JSON: exact
    assert saved_config["_name_or_path"] == "vae"  # no local path in the pushed folder
    assert f"Latent scale {expected:.6g}: measured as 1/std" in caplog.text

    from scratch_diffusion.pipelines import ScratchDiffusionPipeline

    pipeline = ScratchDiffusionPipeline.from_pretrained(str(first))
    assert pipeline.vae is not None and pipeline.unet.config.in_channels == 2 and pipeline.unet.config.sample_size == 8
    assert pipeline.vae.dtype == torch.float32
    images = pipeline(batch_size=2, num_inference_steps=2, class_labels=[1, 2], output_type="np").images
    assert images.shape == (2, 16, 16, 1)
    card = ModelCard.load(first / "README.md")
    assert "latent-diffusion" in card.data.tags
    assert "`vae`; license: unknown; source: a local folder" in card.content
    assert "measured as 1/std of this dataset's latents (the VAE's config.json states none)" in card.content
    uploaded = hub.calls[-1][1]["files"]
    assert {"vae/config.json", "vae/diffusion_pytorch_model.safetensors"} <= set(uploaded)

    # A second run with the same VAE, data and resolution reads the cache, and trains the same weights.
    caplog.clear()
    with caplog.at_level("INFO", logger="scratch_diffusion"):
        run_training(_argv(tmp_path / "second", tiny_unet_json, vae_dir, cache, *extra))
    assert encodes == [1797] and f"Read the latents of 1797 images from {cached}" in caplog.text
    assert _same(_weights(first), _weights(tmp_path / "second"))


def test_another_vae_resolution_or_encoding_re_encodes(tmp_path, tiny_unet_json, vae_dir, encodes, hf_home):
    cache = tmp_path / "cache"
    run_training(_argv(tmp_path / "a", tiny_unet_json, vae_dir, cache, steps=1))
    other_weights = save_vae(tmp_path / "other", seed=1)
    run_training(_argv(tmp_path / "b", tiny_unet_json, other_weights, cache, steps=1))
    run_training(_argv(tmp_path / "c", tiny_unet_json, vae_dir, cache, "--resolution", "8", steps=1))
    run_training(_argv(tmp_path / "d", tiny_unet_json, vae_dir, cache, "--vae_sample_posterior", steps=1))
    assert encodes == [1797] * 4 and len(list(cache.iterdir())) == 4
    # The scale is applied after the cache: a stated scale needs no new encoding, and is the one saved.
    # The cache is keyed by the weights, not the path: the VAE saved in a's pipeline (--vae_subfolder) is the same.
    run_training(_argv(tmp_path / "g", tiny_unet_json, tmp_path / "a", cache, "--vae_subfolder", "vae", steps=1))
    stated = shutil.copytree(vae_dir, tmp_path / "stated")
    config = json.loads((stated / "config.json").read_text())
    (stated / "config.json").write_text(json.dumps({**config, "scaling_factor": 0.5}))
    (stated / "README.md").write_text("---\nlicense: mit\ndatasets:\n- mnist\n---\n# A VAE\n")
    run_training(_argv(tmp_path / "e", tiny_unet_json, stated, cache, steps=1))
    run_training(_argv(tmp_path / "f", tiny_unet_json, vae_dir, cache, "--latent_scaling_factor", "2.5", steps=1))
    assert encodes == [1797] * 4

    def saved_scale(run: str) -> float:
        return json.loads((tmp_path / run / "vae" / "config.json").read_text())["scaling_factor"]

    assert saved_scale("g") == saved_scale("a") and saved_scale("e") == 0.5 and saved_scale("f") == 2.5
    card = (tmp_path / "e" / "README.md").read_text()
    assert "`stated`; license: mit; source: a local folder (trained on mnist)" in card
    assert "the scaling_factor of the VAE's config.json" in card


def test_resumed_latent_run_is_bit_identical(tmp_path, imagefolder, tiny_unet_json, encodes, hf_home):
    """Interrupted at checkpoint-4, resumed: the same weights, optimizer and EMA as the uninterrupted run.

    RGB 20×16 images (centre-cropped to 16×16 for encoding), epochs crossed, gradient accumulation, mirrored
    latents and one posterior draw per example per epoch, label dropout.
    """
    vae = save_vae(tmp_path / "vae_rgb", in_channels=3, out_channels=3)
    cache = tmp_path / "cache"
    args = ["--train_data_dir", str(imagefolder), "--class_conditional", "--random_flip", "--vae_sample_posterior",
            "--train_batch_size", "2", "--gradient_accumulation_steps", "2", "--checkpointing_steps", "2",
            "--resolution", "16"]  # fmt: skip
    straight = tmp_path / "straight"
    run_training(_argv(straight, tiny_unet_json, vae, cache, *args, steps=7))
    # What a run stopped after step 4 leaves: checkpoint-4 (the run is deterministic up to there).
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    shutil.copytree(straight / "checkpoint-4", stopped / "checkpoint-4")
    run_training(_argv(stopped, tiny_unet_json, vae, cache, *args, "--resume_from_checkpoint", "latest", steps=7))
    assert encodes == [10]  # the resumed run read the cache
    for name in ("model.safetensors", "optimizer.bin", "custom_checkpoint_2.pkl"):  # raw weights, Adam, EMA
        a, b = straight / "checkpoint-6" / name, stopped / "checkpoint-6" / name
        assert a.read_bytes() == b.read_bytes(), name
    assert _same(_weights(straight), _weights(stopped))


def test_latent_input_flips_and_draws_per_example():
    mean, mirrored = torch.zeros(64, 2, 4, 4), torch.ones(64, 2, 4, 4)
    generator = torch.Generator().manual_seed(0)
    x = latent_input({"mean": mean, "mean_flipped": mirrored}, True, generator)
    picked = x.flatten(1)
    assert ((picked == 0).all(1) | (picked == 1).all(1)).all() and 10 < picked[:, 0].sum() < 54
    std = torch.full_like(mean, 2.0)
    drawn = latent_input({"mean": mean, "std": std}, False, torch.Generator().manual_seed(1))
    again = latent_input({"mean": mean, "std": std}, False, torch.Generator().manual_seed(1))
    assert torch.equal(drawn, again) and 1.8 < drawn.std() < 2.2


def test_encoding_mirrors_and_measured_scale(vae_dir):
    from diffusers import AutoencoderKL

    from scratch_diffusion.training.data import TensorImageDataset

    vae = AutoencoderKL.from_pretrained(vae_dir)
    images = torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8)
    tensors = encode_dataset(vae, TensorImageDataset(images), 16, Encoding(True, True, torch.float32), batch_size=2)
    mirror = encode_dataset(
        vae, TensorImageDataset(images.flip(-1)), 16, Encoding(True, False, torch.float32), batch_size=3
    )
    # the same encoder on mirrored images in another batch size: bit-identical per image (measured 0; latents ≤ 1.6),
    # 1e-6 ≈ 8 float32 ulps there: exact up to a reassociated final sum
    assert torch.allclose(tensors["mean_flipped"], mirror["mean"], atol=1e-6)
    assert torch.allclose(tensors["std_flipped"], mirror["std"], atol=1e-6)
    expected = (tensors["mean"].double().var() + (tensors["std"].double() ** 2).mean()).rsqrt()
    assert measured_scale(tensors) == pytest.approx(float(expected))


def test_encoding_precision_and_hub_vae_source(hf_home):
    from types import SimpleNamespace

    from scratch_diffusion.training.latent_data import encoding_dtype
    from scratch_diffusion.training.vae_loading import vae_source

    upcast, fp16_safe = SimpleNamespace(config={"force_upcast": True}), SimpleNamespace(config={"force_upcast": False})
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert (
        encoding_dtype("bf16", fp16_safe, cuda) == torch.bfloat16
        and encoding_dtype("fp16", fp16_safe, cuda) == torch.float16
    )
    assert encoding_dtype("bf16", upcast, cuda) == torch.float32  # the VAE config asks for float32
    assert (
        encoding_dtype("bf16", fp16_safe, cpu) == torch.float32
        and encoding_dtype("no", fp16_safe, cuda) == torch.float32
    )
    # A Hub VAE whose card is not in the (empty, offline) cache: the card says so instead of guessing.
    source = vae_source("someone/some-vae", "vae")
    assert (
        source.markdown()
        == "`someone/some-vae` (subfolder `vae`); license: unknown; source: https://huggingface.co/someone/some-vae"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--vae_name_or_path", "{tmp}/missing"], "no such folder"),
        (["--vae_name_or_path", "{tmp}/empty"], "could not be loaded"),
        (["--vae_name_or_path", "{vae}", "--vae_subfolder", "vae"], "the folder has no subfolder 'vae'"),
        (["--vae_name_or_path", "{tmp}", "--vae_subfolder", "empty"], "could not be loaded"),
        (["--vae_name_or_path", "{tmp}/unet_folder"], "describes a UNet2DModel; allowed: an AutoencoderKL"),
        (["--vae_name_or_path", "{vae4}", "--resolution", "18"], "does not divide by the VAE's downsampling factor 4"),
        (["--vae_name_or_path", "{vae4}", "--resolution", "4"], "the latent side 1 (--resolution 4 / the VAE's"),
        (["--vae_name_or_path", "{vae}", "--model_config_name_or_path", "{tmp}/unet3.json"], "states in_channels 3"),
        (["--vae_name_or_path", "{vae}", "--latent_scaling_factor", "-1"], "--latent_scaling_factor '-1' is not"),
        (["--vae_name_or_path", "{vae}", "--latent_scaling_factor", "big"], "pass 'auto', 'measure' or a positive"),
        (["--vae_name_or_path", "{vae}", "--vae_batch_size", "0"], "--vae_batch_size must be ≥ 1"),
        (["--vae_sample_posterior"], "--vae_sample_posterior needs --vae_name_or_path"),
        (["--latent_scaling_factor", "measure"], "--latent_scaling_factor needs --vae_name_or_path"),
    ],
)
def test_bad_vae_input_stops_before_training(
    extra,
    message,
    tmp_path,
    tiny_unet_json,
    vae_dir,
    hf_home,
    no_accelerator,  # noqa: F811 (the fixture imported above)
    capsys,
):
    (tmp_path / "empty").mkdir()
    (tmp_path / "unet_folder").mkdir()
    (tmp_path / "unet_folder" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    unet3 = json.loads(tiny_unet_json.read_text())
    (tmp_path / "unet3.json").write_text(json.dumps({**unet3, "in_channels": 3}))
    vae4 = tmp_path / "vae4"
    vae4.mkdir()
    config = {**TINY_VAE, "_class_name": "AutoencoderKL", "block_out_channels": [4, 4, 4], "norm_num_groups": 2}
    (vae4 / "config.json").write_text(json.dumps(config))
    names = {"{tmp}": str(tmp_path), "{vae4}": str(vae4), "{vae}": str(vae_dir)}
    argv = ["--output_dir", str(tmp_path / "out"), "--model_config_name_or_path", str(tiny_unet_json)]
    for arg in extra:
        for name, value in names.items():
            arg = arg.replace(name, value)
        argv.append(arg)
    _fails(argv, message, capsys)
    assert not (tmp_path / "out").exists()


def test_vae_that_does_not_fit_the_data_stops_before_training(tmp_path, tiny_unet_json, hf_home):
    cache = tmp_path / "cache"
    rgb = save_vae(tmp_path / "rgb", in_channels=3, out_channels=3)
    with pytest.raises(ConfigError, match=r"encodes 3-channel images, but scikit-learn digits .* has 1 channel"):
        run_training(_argv(tmp_path / "out", tiny_unet_json, rgb, cache))
    broken = save_vae(tmp_path / "broken")
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match=r"could not be loaded \(weights are read from safetensors only"):
        run_training(_argv(tmp_path / "out", tiny_unet_json, broken, cache))
    assert not (tmp_path / "out" / "checkpoint-1").exists() and not cache.exists()


@pytest.mark.slow
def test_two_processes_encode_once(tmp_path, tiny_unet_json, vae_dir, hf_home):
    """accelerate launch, 2 CPU processes: the main process encodes and writes the cache, the other reads it."""
    cache = tmp_path / "cache"
    argv = _argv(tmp_path / "two", tiny_unet_json, vae_dir, cache, "--random_flip")
    result = run(launch_command(2, *argv), hf_home)
    log = result.stdout + result.stderr
    assert log.count("Encoded 1797 images and their mirrors") == 1 and "encoding here too" not in log
    assert "2 process(es) × batch 4" in log and log.count("Saved the pipeline") == 1
    assert len(list(cache.iterdir())) == 1 and (tmp_path / "two" / "vae" / "config.json").is_file()


def test_push_command_wants_the_vae_of_a_latent_output(tmp_path):
    from scratch_diffusion.training.hub import LATENT_OUTPUTS, REQUIRED_OUTPUTS, missing_outputs

    (tmp_path / "model_index.json").write_text(json.dumps({"vae": ["diffusers", "AutoencoderKL"]}))
    assert missing_outputs(str(tmp_path)) == [*REQUIRED_OUTPUTS[1:], *LATENT_OUTPUTS]  # model_index.json is there
    (tmp_path / "model_index.json").write_text(json.dumps({"vae": [None, None]}))  # a pixel pipeline
    assert "vae/config.json" not in missing_outputs(str(tmp_path))
