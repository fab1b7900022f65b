"""The metric's real data (the trainer's digits, the fixed split) and the classifier with its cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scratch_diffusion import metrics

# ---- data ----------------------------------------------------------------------------------------


def test_digits_images_are_the_trainers_data_in_minus_one_one():
    from sklearn.datasets import load_digits

    images, labels = metrics.digits_images()
    assert images.shape == (1797, 1, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.long and labels.tolist() == load_digits().target.tolist()
    assert images.min() == -1 and images.max() == 1
    raw = torch.from_numpy(load_digits().images).float()[:, None]
    expected = F.interpolate(raw / 16 * 2 - 1, size=(16, 16), mode="bilinear", align_corners=False)
    # stored as uint8 by the trainer: rounding to the 8-bit grid moves a pixel by ≤ ½ step (1/255) on [−1, 1], plus
    # float32 resizing (≤ 1e-6): one step, 1/127.5, holds that and fails a wrong resize (≥ several steps)
    assert torch.allclose(images, expected, atol=1 / 127.5)


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
    # stratified: per class the holdout/train ratio is 0.3/0.7 up to rounding of ≈ 180 images to an integer split,
    # ≤ 1/(0.7·180) ≈ 0.008 — 0.03 also holds any class of ≥ 50 images; a random split strays by ≈ 0.07
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
    assert isinstance(classifier.training_seconds, float) and classifier.training_seconds > 0  # timed when trained


def test_cached_classifier_is_reused_not_retrained(classifier, monkeypatch):
    mtime = classifier.path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier was retrained")

    monkeypatch.setattr("scratch_diffusion.metrics.cache.train_digits_classifier", no_training)
    again = metrics.load_digits_classifier()
    assert not again.trained_now and again.path == classifier.path and again.training_seconds is None
    assert classifier.path.stat().st_mtime_ns == mtime
    for (name, a), b in zip(classifier.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert again.holdout_accuracy == classifier.holdout_accuracy


def test_the_cache_trains_once_per_folder_and_again_only_on_retrain(tmp_path, monkeypatch):
    calls = []

    def counting_training(split, *args, **kwargs):  # an untrained CNN: the cache logic, not the training
        calls.append(len(split.train_images))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(len(calls))
            return metrics.DigitsCNN().eval()

    monkeypatch.setattr("scratch_diffusion.metrics.cache.train_digits_classifier", counting_training)
    first = metrics.load_digits_classifier(tmp_path)
    assert first.trained_now and first.path == metrics.classifier_path(tmp_path) and first.path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temporary file left behind
    second = metrics.load_digits_classifier(tmp_path)
    assert len(calls) == 1 and not second.trained_now
    assert torch.equal(first.model.fc.weight, second.model.fc.weight)
    third = metrics.load_digits_classifier(tmp_path, retrain=True)
    assert len(calls) == 2 and third.trained_now
    assert not torch.equal(third.model.fc.weight, first.model.fc.weight)  # the new weights replaced the file
    assert torch.equal(metrics.load_digits_classifier(tmp_path).model.fc.weight, third.model.fc.weight)


def test_cache_dir_argument_overrides_the_environment(tmp_path, cache_dir):
    assert metrics.classifier_path().parent == cache_dir
    assert metrics.classifier_path(tmp_path).parent == tmp_path


def test_training_is_deterministic(split):
    recipe = {**metrics.CLASSIFIER_RECIPE, "epochs": 1}
    state = torch.random.get_rng_state()
    a, b = metrics.train_digits_classifier(split, recipe), metrics.train_digits_classifier(split, recipe)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
