"""Features from a transformers backbone: a tiny random DINOv2 saved to a folder, offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scratch_diffusion import metrics

from .helpers import save_tiny_dinov2


def random_images(n, channels=1, size=16, seed=0):
    return torch.rand((n, channels, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def backbone(tiny_dinov2):
    return metrics.TransformersBackbone(tiny_dinov2, device="cpu", batch_size=64)


def test_preprocessing_is_what_the_image_processor_does(backbone, tiny_dinov2):
    from transformers import AutoImageProcessor

    spec = backbone.preprocessing
    assert spec.source == "image processor" and spec.shortest_edge == 36 and spec.crop_to == (32, 32)
    assert spec.mode == "bicubic" and spec.mean == pytest.approx((0.485, 0.456, 0.406))
    pixels = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)  # worst case: noise
    processor = AutoImageProcessor.from_pretrained(tiny_dinov2, backend="pil")
    expected = processor(images=list(pixels), return_tensors="pt")["pixel_values"]
    ours = spec(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert ours.shape == expected.shape == (3, 3, 32, 32)
    # The processor works on 8-bit images (rounding after each resize pass), we in float: ≤ 1.5/255 apart.
    assert (ours - expected).abs().max() * 0.225 < 1.5 / 255
    gray = torch.from_numpy(pixels[..., :1]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(spec(gray)[:, 0], spec(gray.expand(-1, 3, -1, -1))[:, 0])  # grayscale → 3 channels
    wide = spec(torch.zeros(1, 1, 16, 48))  # short side to 36, aspect kept (36 × 108), then the centre crop
    assert wide.shape == (1, 3, 32, 32)


def test_without_a_processor_config_the_fallback_is_documented(tmp_path):
    folder = save_tiny_dinov2(tmp_path / "bare", with_processor=False)
    bare = metrics.TransformersBackbone(folder, device="cpu")
    spec = bare.preprocessing
    assert spec.source == "fallback" and spec.resize_to == (32, 32) and spec.crop_to is None  # config.image_size
    assert spec.mean == metrics.backbones.IMAGENET_MEAN and spec.std == metrics.backbones.IMAGENET_STD
    assert bare(random_images(5)).shape == (5, 32)


def test_features_are_the_dinov2_cls_token_deterministic_and_batch_independent(backbone):
    images = random_images(50)
    features = backbone(images)
    assert features.shape == (50, 32) and features.dtype == torch.float32 and features.device.type == "cpu"
    assert torch.equal(features, backbone(images))  # deterministic (eval mode)
    with torch.no_grad():
        hidden = backbone.model(pixel_values=backbone.preprocessing(images)).last_hidden_state
    torch.testing.assert_close(features, hidden[:, 0])  # the CLS token of the layer-normed last hidden state
    small = metrics.TransformersBackbone(backbone.name, device="cpu", batch_size=7)
    # another batch size re-blocks the float32 GEMMs (K ≤ 64 terms, 2 layers + layer norm): ≤ 2·γ_64 ≈ 8e-6 of the
    # sums of |terms| ≈ |features|; measured 0 here
    torch.testing.assert_close(small(images), features, rtol=1e-5, atol=1e-6)
    assert small(images[:0]).shape == (0,)


def test_the_same_fd_and_kid_from_two_batch_sizes(backbone):
    samples, reference = random_images(40, seed=1), random_images(60, seed=2)
    small = metrics.TransformersBackbone(backbone.name, device="cpu", batch_size=3)
    a, b = (
        metrics.evaluate_samples(samples, reference_images=reference, feature_extractor=e) for e in (backbone, small)
    )
    for key in ("fd", "fd_real_baseline", "fd_noise_ceiling", "kid", "kid_real_baseline", "kid_noise_ceiling"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-9), key  # features ≤ 1e-5 apart (previous test)
    assert a["feature_space"] == str(backbone.name)


def test_dtype_applies_to_weights_and_inputs_features_stay_float32(backbone):
    half = metrics.TransformersBackbone(backbone.name, device="cpu", dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    images = random_images(8)
    try:
        features = half(images)
    except RuntimeError as error:  # torch's bf16 attention packs for AVX-512 by the CPU's flags, not the kernels used
        capability = torch.backends.cpu.get_cpu_capability()
        if "pack_vnni2" in str(error) and capability != "AVX512":
            pytest.skip(f"torch's bfloat16 attention under ATEN_CPU_CAPABILITY={capability}: {error}")
        raise
    assert features.dtype == torch.float32
    # bfloat16 keeps 8 significant bits (u = 2⁻⁸ ≈ 4e-3 per rounding); through ~10 layers of sums of O(1) terms the
    # features move by ~10·u·|f| ≈ 0.04 relative: rtol = atol = 0.1 holds that and fails a wrong dtype path (O(1))
    torch.testing.assert_close(features, backbone(images), rtol=0.1, atol=0.1)
    with pytest.raises(ValueError, match="allowed"):
        metrics.TransformersBackbone(backbone.name, device="cpu", dtype="float8")


def test_an_uncached_hub_id_offline_names_the_model_and_how_to_get_it(offline_hub, tmp_path):
    name = "scratch-diffusion-tests/no-such-backbone"
    with pytest.raises(metrics.BackboneUnavailableError) as caught:
        metrics.feature_extractor(name, device="cpu")
    message = str(caught.value)
    assert repr(name) in message and f"hf download {name}" in message and "local folder" in message
    with pytest.raises(ValueError, match="not a transformers model folder"):
        metrics.TransformersBackbone(tmp_path, device="cpu")
