"""A finished run's output folder: pipeline with EMA weights, sample grid, model card, Hub push.

These runs are in-process (a few steps of a tiny UNet); the Hub is replaced at the
``huggingface_hub.HfApi`` boundary by a recorder, so nothing leaves the machine.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, RepoUrl
from huggingface_hub.errors import HfHubHTTPError
from PIL import Image

from scratch_diffusion.training.train import main

from .conftest import FAKE_TOKEN


def _argv(out: Path, unet_json: Path, *extra: str) -> list[str]:
    return [
        "--output_dir", str(out), "--model_config_name_or_path", str(unet_json),
        "--train_batch_size", "4", "--max_train_steps", "3", "--checkpointing_steps", "3",
        "--lr_warmup_steps", "1", "--eval_batch_size", "4", "--ddpm_num_inference_steps", "2",
        "--save_images_steps", "2", *extra,
    ]  # fmt: skip


def _snippet(card_text: str) -> str:
    return re.search(r"```python\n(.*?)```", card_text, re.S).group(1)


def test_output_folder_pipeline_card_and_snippet(tmp_path, tiny_unet_json, hf_home, monkeypatch):
    out = tmp_path / "digits-cond"
    assert main(_argv(out, tiny_unet_json, "--class_conditional", "--prediction_type", "v_prediction")) == 0
    names = {p.name for p in out.iterdir()}
    assert {"model_index.json", "unet", "scheduler", "samples.png", "README.md", "logs", "checkpoint-3"} <= names
    with Image.open(out / "samples.png") as grid:
        assert grid.mode == "L" and grid.size == (2 + 2 * 66, 2 + 2 * 66)  # 2×2 cells of 64 px, padded

    # The saved UNet holds the EMA weights of the last checkpoint, not the raw weights.
    from safetensors.torch import load_file

    from scratch_diffusion.pipelines import ScratchDiffusionPipeline

    pipeline = ScratchDiffusionPipeline.from_pretrained(str(out))
    ema = torch.load(out / "checkpoint-3" / "custom_checkpoint_2.pkl", weights_only=False)["shadow_params"]
    raw = load_file(out / "checkpoint-3" / "model.safetensors")
    saved = list(pipeline.unet.parameters())
    assert len(saved) == len(ema) and all(torch.equal(s, e) for s, e in zip(saved, ema))
    assert not all(torch.equal(s, r) for s, r in zip(saved, raw.values()))
    assert pipeline.num_classes == 10 and pipeline.config.prediction_type == "v_prediction"
    images = pipeline(batch_size=2, num_inference_steps=2, class_labels=[3, 4], output_type="np").images
    assert images.shape == (2, 16, 16, 1)

    from diffusers import DiffusionPipeline

    plain = DiffusionPipeline.from_pretrained(str(out), trust_remote_code=True)
    assert plain(batch_size=1, num_inference_steps=1, output_type="np").images.shape == (1, 16, 16, 1)

    # The card: metadata, no local paths, and a usage snippet that runs as written.
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "diffusers"
    assert card.data.pipeline_tag == "unconditional-image-generation"
    assert card.data.license == "apache-2.0"
    assert {"diffusers", "ddpm", "class-conditional", "scratch-diffusion"} <= set(card.data.tags)
    assert card.data.datasets is None  # the built-in digits are no Hub dataset
    assert str(tmp_path) not in card.content and "/tmp" not in card.content
    assert "![4 samples from the EMA weights](samples.png)" in card.content
    assert "| `prediction_type` | `v_prediction` |" in card.content
    monkeypatch.chdir(tmp_path)  # a user next to the folder: the snippet names it relatively
    exec(compile(_snippet(card.content), "README.md", "exec"), {})
    with Image.open(tmp_path / "sample.png") as sample:
        assert sample.size == (16, 16)


def test_flow_output_and_hub_dataset_metadata(tmp_path, tiny_unet_json, hf_home, monkeypatch):
    import datasets

    def load_dataset(name, config=None, **kwargs):  # a Hub dataset, served from memory
        assert name == "someone/tiny-shapes" and kwargs["split"] == "train"
        images = [Image.new("RGB", (16, 16), (30 * i, 0, 255 - 30 * i)) for i in range(8)]
        return datasets.Dataset.from_dict({"img": images}).cast_column("img", datasets.Image())

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    out = tmp_path / "flow"
    argv = _argv(out, tiny_unet_json, "--objective", "flow", "--weighting_scheme", "logit_normal", "--flow_shift", "2")
    argv += ["--dataset_name", "someone/tiny-shapes", "--image_column", "img", "--resolution", "16"]
    assert main([*argv, "--logger", "none", "--no-use_ema"]) == 0
    card = ModelCard.load(out / "README.md")
    assert card.data.datasets == ["someone/tiny-shapes"]
    assert "trained from scratch on someone/tiny-shapes (8 images)" in card.content
    assert "flow-matching" in card.data.tags and "ddpm" not in card.data.tags
    assert "| `flow_shift` | `2.0` |" in card.content and "prediction_type" not in card.content
    assert "EMA was off" in card.content
    assert not (out / "logs").exists()
    from scratch_diffusion.pipelines import ScratchDiffusionPipeline

    pipeline = ScratchDiffusionPipeline.from_pretrained(str(out))
    assert pipeline.config.noise_path == "flow" and pipeline.scheduler.config.shift == 2.0
    assert pipeline.unet.config.in_channels == 3


def _http_error(status: int, message: str) -> HfHubHTTPError:
    import httpx2  # huggingface_hub's HTTP client

    response = httpx2.Response(status, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
    return HfHubHTTPError(message, response=response)


class FakeHub:
    """Records what train.py asks of the Hub; optionally fails one call."""

    def __init__(self, monkeypatch, fail: str | None = None):
        self.calls: list[tuple[str, dict]] = []
        hub = self

        def create_repo(api, repo_id, **kwargs):
            hub.calls.append(("create_repo", {"repo_id": repo_id, "token": api.token, **kwargs}))
            if fail == "create_repo":
                raise _http_error(401, f"401 Client Error: Unauthorized (token {api.token} is invalid)")
            full_id = repo_id if "/" in repo_id else f"fake-user/{repo_id}"  # the Hub adds the namespace
            return RepoUrl(f"https://huggingface.co/{full_id}")

        def upload_folder(api, **kwargs):
            files = sorted(
                p.relative_to(kwargs["folder_path"]).as_posix() for p in Path(kwargs["folder_path"]).rglob("*")
            )
            hub.calls.append(("upload_folder", {"token": api.token, "files": files, **kwargs}))
            if fail == "upload_folder":
                raise _http_error(500, f"500 Server Error for token={api.token}: the Hub is down")
            return "https://huggingface.co/fake/commit/1"

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def _assert_token_nowhere(root: Path, *texts: str) -> None:
    for text in texts:
        assert FAKE_TOKEN not in text
    for path in root.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), f"the token leaked into {path}"


def test_push_to_hub(tmp_path, tiny_unet_json, hf_home, monkeypatch, capfd, caplog):
    hub = FakeHub(monkeypatch)
    out = tmp_path / "pushed"
    argv = _argv(out, tiny_unet_json, "--push_to_hub", "--hub_model_id", "me/digits", "--hub_private_repo")
    assert main([*argv, "--hub_token", FAKE_TOKEN]) == 0
    (create, created), (upload, uploaded) = hub.calls
    assert create == "create_repo" and upload == "upload_folder"
    assert created == {
        "repo_id": "me/digits",
        "token": FAKE_TOKEN,
        "private": True,
        "exist_ok": True,
        "repo_type": "model",
    }
    assert (
        uploaded["repo_id"] == "me/digits" and uploaded["folder_path"] == str(out) and uploaded["token"] == FAKE_TOKEN
    )
    assert {"model_index.json", "README.md", "samples.png", "unet/diffusion_pytorch_model.safetensors"} <= set(
        uploaded["files"]
    )  # the local output was complete before the upload
    assert "checkpoint-*" in uploaded["ignore_patterns"]
    card = ModelCard.load(out / "README.md")
    assert 'ScratchDiffusionPipeline.from_pretrained("me/digits")' in card.content
    captured = capfd.readouterr()
    _assert_token_nowhere(tmp_path, captured.out, captured.err, caplog.text, card.content)


def test_push_uses_the_environment_token(tmp_path, tiny_unet_json, hf_home, monkeypatch):
    hub = FakeHub(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    out = tmp_path / "env"
    assert main(_argv(out, tiny_unet_json, "--push_to_hub", "--hub_model_id", "digits", "--max_train_steps", "1")) == 0
    assert [name for name, _ in hub.calls] == ["create_repo", "upload_folder"]
    assert hub.calls[0][1]["private"] is False and hub.calls[0][1]["token"] is None  # huggingface_hub resolves it
    assert hub.calls[1][1]["repo_id"] == "fake-user/digits"  # the id the Hub answered with
    _assert_token_nowhere(tmp_path)


def test_failed_upload_keeps_the_output_and_exits_1(tmp_path, tiny_unet_json, hf_home, monkeypatch, capfd, caplog):
    FakeHub(monkeypatch, fail="upload_folder")
    out = tmp_path / "kept"
    argv = _argv(out, tiny_unet_json, "--push_to_hub", "--hub_model_id", "me/kept", "--hub_token", FAKE_TOKEN)
    assert main(argv) == 1
    err = capfd.readouterr().err
    message = [line for line in err.splitlines() if line.startswith("train.py: error: ")]
    assert len(message) == 1 and "uploading" in message[0] and "'me/kept' failed: HfHubHTTPError" in message[0]
    assert "The local output is complete" in message[0] and "<token>" in message[0]
    for name in ("model_index.json", "README.md", "samples.png", "unet/diffusion_pytorch_model.safetensors"):
        assert (out / name).is_file()
    _assert_token_nowhere(tmp_path, err, caplog.text)


@pytest.mark.parametrize("fail", ["create_repo"])
def test_unreachable_repo_fails_before_training(tmp_path, tiny_unet_json, hf_home, monkeypatch, capfd, fail):
    hub = FakeHub(monkeypatch, fail=fail)
    out = tmp_path / "early"
    argv = _argv(out, tiny_unet_json, "--push_to_hub", "--hub_model_id", "me/early", "--hub_token", FAKE_TOKEN)
    assert main(argv) == 1
    err = capfd.readouterr().err
    assert "could not create or access the Hub repo 'me/early': HfHubHTTPError: 401" in err and FAKE_TOKEN not in err
    assert [name for name, _ in hub.calls] == ["create_repo"]
    assert not any(out.glob("checkpoint-*")) and not (out / "model_index.json").exists()


def test_a_latent_ddpm_run_samples_without_clipping_and_a_pixel_run_keeps_diffusers_default():
    """DDIM's x̂0 clipping to ±1 suits images, not a VAE's scaled latents (unit variance): off for a latent run."""
    from scratch_diffusion.training.objectives import DDPMObjective, FlowMatchingObjective
    from scratch_schedulers import ScratchDDPMScheduler, ScratchFlowMatchScheduler

    ddpm = DDPMObjective(ScratchDDPMScheduler())
    assert ddpm.sampling_scheduler().config.clip_sample is True
    latent = ddpm.sampling_scheduler(latent=True)
    assert latent.config.clip_sample is False and latent.config.timestep_spacing == "trailing"
    flow = FlowMatchingObjective(ScratchFlowMatchScheduler(shift=0.5)).sampling_scheduler(latent=True)
    assert type(flow) is ScratchFlowMatchScheduler and flow.config.shift == 0.5
