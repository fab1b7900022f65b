"""Choosing a feature space by name, and the metrics CLI in a chosen space."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from scratch_diffusion import metrics

from .helpers import real_sample, write_pngs

PLUGIN = "tests.metrics.test_feature_spaces:pooled_pixels_space"
received = {}


def pooled_pixels_space(device=None, batch_size=64):
    """A plug-in factory: 4×4 average-pooled pixels (it records the options it was offered)."""
    received.update(device=device, batch_size=batch_size)

    def pooled_pixels(images):
        return F.avg_pool2d(torch.as_tensor(images), 4).flatten(1)

    return pooled_pixels


def test_names_choose_the_digits_cnn_a_plugin_or_a_backbone(classifier, tiny_dinov2, monkeypatch):
    digits = metrics.feature_extractor("digits")
    assert digits.name == "digits-classifier" and isinstance(digits, metrics.FeatureExtractor)
    images = real_sample(metrics.digits_split(), n=5)[0]
    assert torch.equal(digits(images), classifier.features(images))

    plugin = metrics.feature_extractor(PLUGIN, device="cpu", batch_size=5)
    assert received == {"device": "cpu", "batch_size": 5} and plugin.name == "pooled_pixels"
    assert plugin(images).shape == (5, 16)

    backbone = metrics.feature_extractor(str(tiny_dinov2), device="cpu", batch_size=3)
    assert isinstance(backbone, metrics.TransformersBackbone) and backbone.batch_size == 3
    assert backbone.name == str(tiny_dinov2)

    loaded = []
    monkeypatch.setattr(
        metrics.backbones.TransformersBackbone, "__init__", lambda self, name, **kw: loaded.append(name)
    )
    metrics.feature_extractor("dinov2")
    assert loaded == ["facebook/dinov2-small"]  # the alias, loaded like any Hub id


def test_bad_names_are_refused_with_the_allowed_ones():
    assert metrics.is_plugin_name("package.module:factory") and not metrics.is_plugin_name("facebook/dinov2-small")
    with pytest.raises(ValueError, match="allowed"):
        metrics.feature_extractor("  ")
    with pytest.raises(ValueError, match="cannot import 'nothing'"):
        metrics.feature_extractor("tests.metrics.test_feature_spaces:nothing")
    with pytest.raises(TypeError, match="PLUGIN is a str, not a callable"):
        metrics.feature_extractor("tests.metrics.test_feature_spaces:PLUGIN")


def test_cli_prints_fd_kid_baseline_and_ceiling_in_the_chosen_space(
    classifier, split, tiny_dinov2, tmp_path, capsys, offline_hub
):
    real, labels = real_sample(split, n=40)
    write_pngs(tmp_path / "pngs", real, labels)
    output = tmp_path / "metrics.json"
    argv = [str(tmp_path / "pngs"), "--kid_subsets", "4", "--baseline_draws", "3", "--output", str(output)]
    assert metrics.main([*argv, "--features", str(tiny_dinov2), "--features_batch_size", "16"]) == 0
    printed = capsys.readouterr().out
    assert "| Fréchet distance" in printed and "| KID" in printed and str(tiny_dinov2) in printed
    written = json.loads(output.read_text())
    assert written["feature_space"] == str(tiny_dinov2) and written["kid_subsets"] == 4
    for key in (
        "fd",
        "fd_real_baseline",
        "fd_noise_ceiling",
        "kid",
        "kid_std",
        "kid_real_baseline",
        "kid_noise_ceiling",
    ):
        assert isinstance(written[key], float), key
    assert written["kid_std"] >= 0
    assert written["fd"] < written["fd_noise_ceiling"] and written["kid"] < written["kid_noise_ceiling"]
    assert written["class_match"] >= 0.9  # the reference is the digits, so the classifier's numbers stay

    assert metrics.main([*argv, "--features", PLUGIN, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["feature_space"] == "pooled_pixels"

    assert metrics.main([*argv, "--features", "scratch-diffusion-tests/no-such-backbone"]) == 2
    assert "hf download scratch-diffusion-tests/no-such-backbone" in capsys.readouterr().err
    assert metrics.main([*argv, "--kid_subsets", "0"]) == 2
    assert "--kid_subsets must be at least 1" in capsys.readouterr().err
