"""Data: decode once into uint8 tensors, channels from the data, the epoch-seeded order, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from scratch_diffusion.training import data as data_module
from scratch_diffusion.training.cli import parse_args
from scratch_diffusion.training.data import (
    EpochSampler,
    LazyImageDataset,
    TensorImageDataset,
    augment,
    decode_image,
    load_digits,
    load_training_data,
    make_dataloader,
)


def test_builtin_digits_are_offline_tensors():
    data = load_digits(16, with_labels=True)
    images = data.dataset.images
    assert images.shape == (1797, 1, 16, 16) and images.dtype == torch.uint8
    assert data.num_channels == 1 and data.num_classes == 10 and data.class_names[3] == "3"
    assert images.float().mean() < 100 < images.max()  # dark background, bright ink
    batch = data.dataset.__getitems__([0, 5, 9])
    assert batch["images"].shape == (3, 1, 16, 16) and batch["labels"].tolist() == [0, 5, 9]
    assert load_digits(32, with_labels=False).dataset.__getitems__([1])["images"].shape == (1, 1, 32, 32)


def test_digits_train_split_leaves_the_metric_reference_unseen():
    from scratch_diffusion import metrics

    train = load_digits(16, with_labels=True, split="train")
    split = metrics.digits_split(metrics.CLASSIFIER_RECIPE["split_seed"], metrics.CLASSIFIER_RECIPE["holdout_fraction"])
    assert torch.equal(train.dataset.images.float() / 127.5 - 1, split.train_images)
    assert torch.equal(train.dataset.labels, split.train_labels) and len(train.dataset) == 1258
    everything = load_digits(16, with_labels=True).dataset.images
    reference = {bytes(image.numpy()) for image in everything[split.holdout_indices]}
    assert not reference & {bytes(image.numpy()) for image in train.dataset.images}  # no held-out digit trained on
    args = parse_args(["--digits_split", "train", "--class_conditional"])
    assert len(load_training_data(args).dataset) == 1258
    with pytest.raises(data_module.DataError, match="digits split 'test'; allowed: all, train"):
        load_digits(16, with_labels=False, split="test")


def test_imagefolder_decoded_once(imagefolder, hf_home):
    args = parse_args(["--train_data_dir", str(imagefolder), "--resolution", "16", "--class_conditional"])
    data = load_training_data(args)
    assert isinstance(data.dataset, TensorImageDataset)
    assert data.num_channels == 3  # mixed RGB / L / P / RGBA → RGB
    assert data.num_classes == 2 and data.class_names == ["circle", "square"]
    assert data.dataset.images.shape == (10, 3, 16, 20)  # shorter side 16; cropped per batch
    assert data.hub_dataset_id is None and str(imagefolder) not in data.description
    cropped = load_training_data(parse_args(["--train_data_dir", str(imagefolder), "--center_crop"]))
    assert cropped.dataset.images.shape == (10, 3, 64, 64)


def test_grayscale_folder_has_one_channel(tmp_path, hf_home):
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8), "L").save(tmp_path / f"{i}.png")
    data = load_training_data(parse_args(["--train_data_dir", str(tmp_path), "--resolution", "8"]))
    assert data.num_channels == 1 and data.dataset.images.shape == (3, 1, 8, 8)
    assert data.num_classes is None


def test_lazy_dataset_matches_decoded_once(imagefolder, hf_home, monkeypatch):
    argv = ["--train_data_dir", str(imagefolder), "--resolution", "16", "--class_conditional"]
    eager = load_training_data(parse_args(argv)).dataset
    monkeypatch.setattr(data_module, "DECODE_ONCE_MAX_BYTES", 0)
    lazy = load_training_data(parse_args(argv)).dataset
    assert isinstance(lazy, LazyImageDataset)
    a, b = eager.__getitems__([3, 1, 7]), lazy.__getitems__([3, 1, 7])
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])


def test_image_modes():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red → white
    assert decode_image(rgba, 3, 4, False)[:, 0, 0].tolist() == [255, 255, 255]
    deep = Image.fromarray(np.full((4, 4), 65535, np.uint16))  # 16-bit white stays white
    assert decode_image(deep, 1, 4, False).max() == 255
    palette = Image.new("RGB", (6, 4), (10, 200, 30)).quantize(4)
    assert decode_image(palette, 3, 4, True).shape == (3, 4, 4)
    assert decode_image(Image.new("L", (12, 6)), 1, 3, False).shape == (1, 3, 6)


def test_epoch_sampler_order_depends_only_on_seed_and_epoch():
    a, b = EpochSampler(50, seed=7), EpochSampler(50, seed=7)
    a.set_epoch(3)
    b.set_epoch(0)
    b.set_epoch(3)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(4)
    assert list(a) != list(b)
    assert list(EpochSampler(50, seed=8)) != list(EpochSampler(50, seed=7))


def test_dataloader_batches_are_slices():
    dataset = TensorImageDataset(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).repeat(1, 1, 2, 2))
    batches = list(make_dataloader(dataset, batch_size=4, seed=0))
    assert [len(b["images"]) for b in batches] == [4, 4, 2]
    seen = torch.cat([b["images"][:, 0, 0, 0] for b in batches])
    assert seen.tolist() == list(EpochSampler(10, seed=0))  # consecutive slices of the epoch's permutation
    assert sorted(seen.tolist()) == list(range(10))


def test_augment():
    g = torch.Generator()
    square = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    x = augment(square, 8, False, g)
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x, square.float() / 127.5 - 1)
    wide = torch.randint(0, 256, (4, 3, 8, 12), dtype=torch.uint8)
    crops = augment(wide, 8, True, g.manual_seed(5))
    assert crops.shape == (4, 3, 8, 8)
    assert torch.equal(crops, augment(wide, 8, True, g.manual_seed(5)))
    for crop, image in zip(crops, wide.float() / 127.5 - 1):  # an 8-wide window of the image, maybe mirrored
        windows = [image[..., j : j + 8] for j in range(12 - 8 + 1)]
        assert any(torch.equal(crop, w) or torch.equal(crop, w.flip(-1)) for w in windows)
    mixed = [torch.zeros(1, 8, 9, dtype=torch.uint8), torch.zeros(1, 10, 8, dtype=torch.uint8)]
    assert augment(mixed, 8, False, g).shape == (2, 1, 8, 8)
    flips = augment(square[:1].expand(64, 3, 8, 8), 8, True, g.manual_seed(0))
    original = square.float()[0] / 127.5 - 1
    flipped = (flips != original).flatten(1).any(1)
    assert 0 < flipped.sum() < 64
    assert all(torch.equal(f, original.flip(-1)) for f in flips[flipped])  # a flip is the horizontal mirror


@pytest.mark.parametrize("bad", ["caption"])
def test_label_values_are_mapped(tmp_path, hf_home, bad):
    import datasets

    images = [Image.new("RGB", (4, 4), (i * 20, 0, 0)) for i in range(4)]
    ds = datasets.Dataset.from_dict({"image": images, "kind": ["b", "a", "b", "c"], bad: ["x"] * 4})
    ds = ds.cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "ds"))
    args = parse_args(["--dataset_name", str(tmp_path / "ds"), "--resolution", "4", "--class_conditional",
                       "--label_column", "kind"])  # fmt: skip
    data = load_training_data(args)
    assert data.class_names == ["a", "b", "c"] and data.dataset.labels.tolist() == [1, 0, 1, 2]
    assert data.hub_dataset_id is None
