"""KID beside every FD, and evaluation against any real image set (not only the built-in digits)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scratch_diffusion import metrics

from .helpers import gaussian_blur, real_sample


def pooled_pixels(images):
    return F.avg_pool2d(torch.as_tensor(images), 4).flatten(1)


def coloured_squares(n, seed=0, size=16):
    """A non-digits RGB data set: one random-coloured square per image on a dark background."""
    g = torch.Generator().manual_seed(seed)
    images = torch.full((n, 3, size, size), -0.8)
    colours, corners = torch.rand((n, 3), generator=g) * 2 - 1, torch.randint(0, size // 2, (n, 2), generator=g)
    for i, (top, left) in enumerate(corners.tolist()):
        images[i, :, top : top + size // 2, left : left + size // 2] = colours[i, :, None, None]
    return images


def test_kid_is_the_kernel_distance_beside_its_real_baseline_and_noise_ceiling(classifier, split):
    real, _ = real_sample(split, n=300)
    results = metrics.evaluate_samples(real, classifier=classifier)
    features = classifier.features(real)
    expected = metrics.kernel_distance_from_features(features, classifier.features(split.holdout_images), 20, 300)
    assert results["kid"] == expected.mean and results["kid_std"] == expected.std > 0
    assert results["kid_subsets"] == 20 and results["kid_subset_size"] == 300
    # Real data scores like the real baseline (≈ 0: unbiased), noise far above.
    # the unbiased KID of real data is 0 ± its subset spread, ≪ the noise ceiling: 0.02 of it
    assert abs(results["kid_real_baseline"]) < 0.02 * results["kid_noise_ceiling"]
    spread = results["kid_std"] + results["kid_real_baseline_std"]
    assert abs(results["kid"] - results["kid_real_baseline"]) < 3 * spread  # within 3 (summed) standard deviations
    blurred = metrics.evaluate_samples(gaussian_blur(real), classifier=classifier)
    assert results["kid"] + 10 * spread < blurred["kid"] < results["kid_noise_ceiling"]  # blurring: ≥ 10 sd worse
    assert blurred["kid_real_baseline"] == results["kid_real_baseline"]  # one scale per sample size and seed
    summary = metrics.markdown_summary(results)
    assert "| KID" in summary and "± std over 20 subsets of 300" in summary and "| confident" in summary
    single = metrics.evaluate_samples(real[:50], classifier=classifier, baseline_draws=1, kid_subsets=1)
    assert single["kid_real_baseline_std"] is None and single["kid_std"] == 0.0


def test_reference_split_is_fixed_disjoint_and_checked():
    images = coloured_squares(50)
    split = metrics.reference_split(images)
    assert len(split.reference) == 15 and len(split.pool) == 35 and split.description == "reference_images"
    rows = {tuple(x.flatten().tolist()) for x in images}
    assert {tuple(x.flatten().tolist()) for x in torch.cat([split.reference, split.pool])} == rows
    assert all(torch.equal(a, b) for a, b in zip(split[:2], metrics.reference_split(images)[:2]))
    assert len(metrics.reference_split(images[:4]).reference) == 2
    with pytest.raises(ValueError, match="at least 4"):
        metrics.reference_split(images[:3])
    with pytest.raises(ValueError, match="reference_fraction"):
        metrics.reference_split(images, reference_fraction=1.0)


def test_any_reference_set_without_the_digits_classifier(monkeypatch):
    def no_classifier(*args, **kwargs):
        raise AssertionError("the digits classifier was loaded for a non-digits reference")

    monkeypatch.setattr("scratch_diffusion.metrics.evaluation.load_digits_classifier", no_classifier)
    data, samples = coloured_squares(300), coloured_squares(60, seed=1)
    grey = samples.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)  # colour lost: visibly worse

    def evaluate(images, seed=0):
        return metrics.evaluate_samples(images, reference_images=data, feature_extractor=pooled_pixels, seed=seed)

    good, bad = evaluate(samples), evaluate(grey)
    assert good["reference"] == "reference_images" and good["n_reference"] == 90 and good["n_baseline"] == 60
    for key in ("confident_fraction", "confident_fraction_noise", "class_match", "classifier_accuracy"):
        assert good[key] is None, key
    # good samples score like the real baseline (< 2×: sampling noise), the grey ones clearly above it
    assert good["fd"] < 2 * good["fd_real_baseline"] < bad["fd"] < good["fd_noise_ceiling"]
    assert good["kid"] < bad["kid"] < good["kid_noise_ceiling"]
    assert evaluate(samples) == good  # deterministic for a seed
    other = evaluate(samples, seed=1)
    assert other["fd"] == good["fd"] and other["fd_real_baseline"] != good["fd_real_baseline"]  # fixed reference
    assert json.loads(json.dumps(good)) == good
    summary = metrics.markdown_summary(good)
    assert "90 held-out reference images" in summary and "confident" not in summary and "| KID" in summary


def test_evaluation_leaves_the_global_random_streams_alone(tiny_dinov2):
    backbone = metrics.TransformersBackbone(tiny_dinov2, device="cpu")
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()
    first = metrics.evaluate_samples(coloured_squares(30, seed=2), reference_images=coloured_squares(40),
                                     feature_extractor=backbone, seed=5)  # fmt: skip
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]
    again = metrics.evaluate_samples(coloured_squares(30, seed=2), reference_images=coloured_squares(40),
                                     feature_extractor=backbone, seed=5)  # fmt: skip
    assert again == first and first["feature_space"] == str(tiny_dinov2)
