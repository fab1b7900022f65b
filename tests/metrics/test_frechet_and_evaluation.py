"""The Fréchet distance (closed forms, singular covariances) and the evaluation's numbers and scales."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scratch_diffusion import metrics

from .helpers import gaussian_blur, real_sample

# ---- Fréchet distance --------------------------------------------------------------------------------


def test_frechet_distance_matches_closed_forms_and_scipy():
    from scipy import linalg

    # Commuting (diagonal) covariances: |μ1 − μ2|² + Σ (√a − √b)².
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    expected = 5.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = metrics.frechet_distance_from_statistics(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)  # float64, ≤ 20 operations on values ≤ 10: ≤ 2e-14 relative

    # General covariances: the textbook formula with scipy's sqrtm.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = x @ x.T + 0.1 * np.eye(5), y @ y.T + 0.1 * np.eye(5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    reference = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    # float64 square roots of s1·s2, eigenvalues ≥ 0.01 and ≤ 1e2: a matrix square root loses ≤ κ·2⁻⁵³ with κ ≤ 1e4,
    # ≈ 1e-12 of traces ≤ 100 against an FD ≥ 1: ≤ 1e-10 relative < 1e-8; the FD of equal statistics cancels to the
    # same ≤ 1e-12·100 = 1e-10 absolute < 1e-9
    assert metrics.frechet_distance_from_statistics(m1, s1, m2, s2) == pytest.approx(reference, rel=1e-8)
    assert metrics.frechet_distance_from_statistics(m1, s1, m1, s1) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_is_finite_with_singular_covariances():
    rng = np.random.default_rng(0)
    features_a, features_b = rng.normal(size=(10, 64)), rng.normal(size=(12, 64)) + 1  # n < D
    distance = metrics.frechet_distance_from_features(features_a, features_b)
    assert math.isfinite(distance) and distance > 0
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance_from_features(features_a[:1], features_b)


def test_real_vs_real_is_small_beside_real_vs_noise(classifier, split):
    real_a, real_b = split.train_images[:400], split.holdout_images[:400]
    noise = metrics.noise_images(400)
    real_vs_real = metrics.frechet_distance(real_a, real_b)  # default extractor, cached classifier
    real_vs_noise = metrics.frechet_distance(real_a, noise, feature_extractor=classifier)
    # two real samples of 400 differ by the FD's finite-sample bias ~ tr(Σ)·2/n, noise by a distance between
    # distributions far larger in this feature space: 0.05 separates the two
    assert real_vs_real < 0.05 * real_vs_noise


def test_metric_ranks_real_below_degraded_real_below_noise(classifier, split):
    real, _ = real_sample(split)
    generator = torch.Generator().manual_seed(7)
    noised = (real + 0.5 * torch.randn(real.shape, generator=generator)).clamp(-1, 1)
    scores = {
        name: metrics.evaluate_samples(images, classifier=classifier)
        for name, images in [("real", real), ("blurred", gaussian_blur(real)), ("noised", noised)]
    }
    fd = {name: r["fd"] for name, r in scores.items()}
    ceiling = scores["real"]["fd_noise_ceiling"]
    baseline = scores["real"]["fd_real_baseline"]
    assert fd["real"] < 2 * baseline  # real data against the real baseline: equal up to sampling noise (< 2×)
    assert 2 * fd["real"] < fd["blurred"] < ceiling, fd
    assert 2 * fd["real"] < fd["noised"] < ceiling, fd
    assert ceiling > 20 * baseline
    # The scale is the same for every sample set of one size.
    assert {r["fd_real_baseline"] for r in scores.values()} == {baseline}
    assert scores["real"]["confident_fraction"] > scores["noised"]["confident_fraction"]
    assert scores["real"]["confident_fraction"] > scores["real"]["confident_fraction_noise"]


def test_evaluate_samples_reports_every_number_with_its_scale(classifier, split):
    real, labels = real_sample(split, n=200)
    results = metrics.evaluate_samples(real, labels, classifier=classifier)
    expected_keys = {"fd", "fd_real_baseline", "fd_noise_ceiling", "confident_fraction", "class_match"}
    assert expected_keys | {"classifier_accuracy", "n"} <= results.keys()
    assert results["n"] == results["n_baseline"] == 200
    assert results["n_reference"] == len(split.holdout_images)
    assert results["classifier_accuracy"] == classifier.holdout_accuracy
    assert results["fd_ratio"] == pytest.approx(results["fd"] / results["fd_real_baseline"])
    assert 0 < results["fd_real_baseline_std"] < results["fd_real_baseline"]
    single = metrics.evaluate_samples(real, labels, classifier=classifier, baseline_draws=1)
    assert single["fd_real_baseline_std"] is None and single["fd"] == results["fd"]
    assert results["confident_fraction"] >= 0.9
    assert json.loads(json.dumps(results)) == results
    assert "Fréchet" in metrics.markdown_summary(results)


def test_class_match_is_one_for_true_labels_and_chance_for_shuffled(classifier, split):
    real, labels = real_sample(split, n=500)
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))]

    def class_match(requested):
        kwargs = {"classifier": classifier, "baseline_draws": 1, "kid_subsets": 1}
        return metrics.evaluate_samples(real, requested, **kwargs)["class_match"]

    assert class_match(labels) >= 0.95
    assert 0.02 <= class_match(shuffled) <= 0.2
    assert class_match(None) is None
    with pytest.raises(ValueError, match="one per image"):
        class_match(labels[:-1])


def test_a_custom_feature_extractor_goes_through_the_same_functions(classifier, split):
    calls = []

    def pooled_pixels(images):  # a trivial 16-d feature space: 4×4 average-pooled pixels
        calls.append(len(images))
        return F.avg_pool2d(images, 4).flatten(1)

    assert isinstance(pooled_pixels, metrics.FeatureExtractor)
    real_a, real_b = split.train_images[:300], split.holdout_images[:300]
    noise = metrics.noise_images(300)
    direct = metrics.frechet_distance(real_a, real_b, feature_extractor=pooled_pixels)
    assert direct == pytest.approx(metrics.frechet_distance_from_features(pooled_pixels(real_a), pooled_pixels(real_b)))
    assert direct < 0.1 * metrics.frechet_distance(real_a, noise, feature_extractor=pooled_pixels)  # as above, 16-d
    # equal sets: the FD cancels to float64 rounding of 16×16 square roots (κ ≤ 1e4): ≤ 1e4·2⁻⁵³·tr ≈ 1e-11 < 1e-8
    assert metrics.frechet_distance(real_a, real_a, feature_extractor=pooled_pixels) == pytest.approx(0, abs=1e-8)

    calls.clear()
    custom = metrics.evaluate_samples(real_a, feature_extractor=pooled_pixels, classifier=classifier)
    default = metrics.evaluate_samples(real_a, classifier=classifier)
    # Each image through the extractor once: all the baseline draws' pool images, reference, samples, noise.
    assert len(calls) == 4 and calls[0] <= len(split.train_images)
    assert calls[1:] == [len(split.holdout_images), 300, 300]
    assert custom["feature_space"] == "pooled_pixels" and default["feature_space"] == "digits-classifier"
    assert custom["fd"] != pytest.approx(default["fd"])
    assert custom["fd"] < custom["fd_noise_ceiling"] and custom["confident_fraction"] == default["confident_fraction"]


def test_other_image_layouts_are_accepted(classifier, split):
    real, labels = real_sample(split, n=100)
    rgb32 = F.interpolate(real, size=(32, 32), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    results = metrics.evaluate_samples(rgb32, labels, classifier=classifier)
    assert results["class_match"] >= 0.9 and results["fd"] < 0.1 * results["fd_noise_ceiling"]
    as_numpy = ((rgb32.permute(0, 2, 3, 1) + 1) / 2).numpy()  # a pipeline's output_type="np"
    # (x + 1)/2 then ·2 − 1 in float32 on |x| ≤ 1: ≤ 4 roundings of values ≤ 2, 4·2·u ≈ 5e-7 < 1e-6
    assert torch.allclose(metrics.images_from_numpy(as_numpy), rgb32, atol=1e-6)
