"""The offline quality metric: digits classifier, Fréchet distance, scales, cache and command line.

The classifier is trained once per session into a temporary cache (``SCRATCH_DIFFUSION_CACHE``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from scratch_diffusion import metrics

from .pipelines.helpers import tiny_unet

N = 300  # sample size of the ranking tests


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread: these models gain nothing from more on a shared 2-core runner."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("classifier-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(metrics.CACHE_ENV_VAR, str(directory))
        yield directory


@pytest.fixture(scope="session")
def classifier(cache_dir):
    """Trained here, in the session's cache (env var, no argument)."""
    return metrics.load_digits_classifier()


@pytest.fixture(scope="session")
def split():
    return metrics.digits_split()


def real_sample(split, n=N, seed=123):
    order = torch.randperm(len(split.train_images), generator=torch.Generator().manual_seed(seed))[:n]
    return split.train_images[order], split.train_labels[order]


def gaussian_blur(images, sigma=1.0):
    radius = 3
    k = torch.exp(-(torch.arange(-radius, radius + 1.0) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.pad(images, (radius,) * 4, value=-1.0)
    return F.conv2d(F.conv2d(x, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))


# ---- data ----------------------------------------------------------------------------------------


def test_digits_images_are_the_trainers_data_in_minus_one_one():
    from sklearn.datasets import load_digits

    images, labels = metrics.digits_images()
    assert images.shape == (1797, 1, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.long and labels.tolist() == load_digits().target.tolist()
    assert images.min() == -1 and images.max() == 1
    raw = torch.from_numpy(load_digits().images).float()[:, None]
    expected = F.interpolate(raw / 16 * 2 - 1, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(images, expected, atol=1 / 127.5)  # stored as uint8 by the trainer


def test_digits_split_is_deterministic_disjoint_and_stratified(split):
    again = metrics.digits_split()
    assert all(torch.equal(a, b) for a, b in zip(split, again))
    assert len(split.train_images) + len(split.holdout_images) == 1797
    assert abs(len(split.holdout_images) - 0.3 * 1797) < 10
    train, holdout = set(split.train_indices.tolist()), set(split.holdout_indices.tolist())
    assert not train & holdout and train | holdout == set(range(1797))
    images, labels = metrics.digits_images()
    assert torch.equal(images[split.holdout_indices], split.holdout_images)
    assert torch.equal(labels[split.train_indices], split.train_labels)
    counts = torch.bincount(split.holdout_labels, minlength=10).float() / torch.bincount(split.train_labels)
    assert torch.allclose(counts, torch.full((10,), 0.3 / 0.7), atol=0.03)
    other = metrics.digits_split(seed=1)
    assert not torch.equal(other.holdout_indices, split.holdout_indices)


# ---- the classifier and its cache --------------------------------------------------------------------


def test_classifier_reaches_95_percent_on_the_held_out_split(classifier, split, cache_dir):
    assert classifier.trained_now
    assert classifier.path.parent == cache_dir and metrics.recipe_hash() in classifier.path.name
    predicted = classifier.probabilities(split.holdout_images).argmax(dim=-1)
    accuracy = (predicted == split.holdout_labels).float().mean().item()
    assert accuracy == pytest.approx(classifier.holdout_accuracy)
    assert accuracy >= 0.95
    assert classifier.training_seconds < 60


def test_cached_classifier_is_reused_not_retrained(classifier):
    mtime = classifier.path.stat().st_mtime_ns
    again = metrics.load_digits_classifier()
    assert not again.trained_now and again.path == classifier.path
    assert classifier.path.stat().st_mtime_ns == mtime
    for (name, a), b in zip(classifier.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert again.holdout_accuracy == classifier.holdout_accuracy


def test_cache_dir_argument_overrides_the_environment(tmp_path, cache_dir):
    assert metrics.classifier_path().parent == cache_dir
    assert metrics.classifier_path(tmp_path).parent == tmp_path


def test_training_is_deterministic(split):
    recipe = {**metrics.CLASSIFIER_RECIPE, "epochs": 1}
    state = torch.random.get_rng_state()
    a, b = metrics.train_digits_classifier(split, recipe), metrics.train_digits_classifier(split, recipe)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---- Fréchet distance --------------------------------------------------------------------------------


def test_frechet_distance_matches_closed_forms_and_scipy():
    from scipy import linalg

    # Commuting (diagonal) covariances: |μ1 − μ2|² + Σ (√a − √b)².
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    expected = 5.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = metrics.frechet_distance_from_statistics(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)

    # General covariances: the textbook formula with scipy's sqrtm.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = x @ x.T + 0.1 * np.eye(5), y @ y.T + 0.1 * np.eye(5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    reference = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
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
    assert fd["real"] < 2 * baseline
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
        return metrics.evaluate_samples(real, requested, classifier=classifier, baseline_draws=1)["class_match"]

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
    assert direct < 0.1 * metrics.frechet_distance(real_a, noise, feature_extractor=pooled_pixels)
    assert metrics.frechet_distance(real_a, real_a, feature_extractor=pooled_pixels) == pytest.approx(0, abs=1e-8)

    calls.clear()
    custom = metrics.evaluate_samples(real_a, feature_extractor=pooled_pixels, classifier=classifier)
    default = metrics.evaluate_samples(real_a, classifier=classifier)
    assert len(calls) == 3 + custom["baseline_draws"]  # reference, samples, noise, each real baseline draw
    assert custom["feature_space"] == "pooled_pixels" and default["feature_space"] == "digits-classifier"
    assert custom["fd"] != pytest.approx(default["fd"])
    assert custom["fd"] < custom["fd_noise_ceiling"] and custom["confident_fraction"] == default["confident_fraction"]


def test_other_image_layouts_are_accepted(classifier, split):
    real, labels = real_sample(split, n=100)
    rgb32 = F.interpolate(real, size=(32, 32), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    results = metrics.evaluate_samples(rgb32, labels, classifier=classifier)
    assert results["class_match"] >= 0.9 and results["fd"] < 0.1 * results["fd_noise_ceiling"]
    as_numpy = ((rgb32.permute(0, 2, 3, 1) + 1) / 2).numpy()  # a pipeline's output_type="np"
    assert torch.allclose(metrics.images_from_numpy(as_numpy), rgb32, atol=1e-6)


# ---- command line ----------------------------------------------------------------------------------


def write_pngs(folder, images, labels=None):
    for i, image in enumerate(images):
        pixels = ((image[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        target = folder / str(int(labels[i])) if labels is not None else folder
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(target / f"{i:04d}.png")


def test_cli_on_an_image_folder_writes_valid_json(classifier, split, tmp_path, capsys):
    real, labels = real_sample(split, n=60)
    write_pngs(tmp_path / "by_class", real, labels)
    output = tmp_path / "out" / "metrics.json"
    assert metrics.main([str(tmp_path / "by_class"), "--output", str(output), "--format", "json"]) == 0
    written = json.loads(output.read_text())
    assert written == json.loads(capsys.readouterr().out)
    assert written["n"] == 60 and written["source"] == {"image_folder": str(tmp_path / "by_class")}
    assert written["class_match"] >= 0.9 and written["classifier_accuracy"] >= 0.95
    assert written["fd"] < 0.1 * written["fd_noise_ceiling"]

    write_pngs(tmp_path / "flat", real[:10])  # no class subfolders: no class_match; markdown printed
    assert metrics.main([str(tmp_path / "flat")]) == 0
    out = capsys.readouterr().out
    assert "| Fréchet distance" in out and "n/a" in out

    (tmp_path / "empty").mkdir()
    assert metrics.main([str(tmp_path / "empty")]) == 2
    assert "no images" in capsys.readouterr().err


def test_cli_on_a_saved_class_conditional_pipeline(classifier, tmp_path, capsys):
    from scratch_diffusion import ScratchDDIMScheduler, ScratchDiffusionPipeline

    unet = tiny_unet(sample_size=16, in_channels=1, out_channels=1, num_class_embeds=11)  # 10 digits + the null class
    ScratchDiffusionPipeline(unet=unet, scheduler=ScratchDDIMScheduler()).save_pretrained(tmp_path / "pipe")
    output = tmp_path / "metrics.json"
    argv = [str(tmp_path / "pipe"), "--num_samples", "20", "--num_inference_steps", "2", "--batch_size", "8"]
    assert metrics.main([*argv, "--guidance_scale", "2", "--device", "cpu", "--output", str(output)]) == 0
    written = json.loads(output.read_text())
    assert written["n"] == 20 and written["n_baseline"] == 20
    assert written["source"]["num_inference_steps"] == 2 and written["source"]["guidance_scale"] == 2
    assert written["class_match"] is not None  # labels 0, 1, …, 9, 0, … were requested
    assert written["fd"] > written["fd_real_baseline"]  # an untrained UNet is far from real digits
    assert "| Fréchet distance" in capsys.readouterr().out


def test_cli_on_a_saved_stock_diffusers_pipeline(classifier, tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler

    unet = tiny_unet(sample_size=16, in_channels=1, out_channels=1)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    output = tmp_path / "metrics.json"
    argv = [str(tmp_path / "ddpm"), "--num_samples", "12", "--num_inference_steps", "2", "--device", "cpu"]
    assert metrics.main([*argv, "--output", str(output), "--format", "json"]) == 0
    written = json.loads(output.read_text())
    assert written["n"] == 12 and written["class_match"] is None and "guidance_scale" not in written["source"]
    assert math.isfinite(written["fd"])
