"""Training data: any image dataset → uint8 tensors, an epoch-seeded sampler, and batch augmentation.

Images are converted once to 1 (grayscale) or 3 (colour) channels, resized so their shorter side
is ``--resolution`` and, with ``--center_crop``, cropped. A dataset that fits in
``DECODE_ONCE_MAX_BYTES`` is decoded once into one uint8 tensor; the hot loop then only indexes
it (``__getitems__``, one slice per batch). The random crop, flip and the scaling to [-1, 1]
happen per batch on the training device in :func:`augment`, with the step's generator.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from .randomness import derive_seed

DECODE_ONCE_MAX_BYTES = 2 * 1024**3
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


class DataError(ValueError):
    """The data does not fit the command line (missing column, no labels, unreadable dataset)."""


@dataclass
class TrainingData:
    """What the rest of training needs to know about the data."""

    dataset: Dataset
    num_channels: int
    num_classes: int | None
    class_names: list[str] | None
    description: str  # for the model card, e.g. "scikit-learn digits (1,797 images)"
    hub_dataset_id: str | None  # a Hub dataset name for the card metadata; None for local data


# ---- datasets ------------------------------------------------------------------------------------


class TensorImageDataset(Dataset):
    """uint8 images decoded once: one (N, C, H, W) tensor, or a list of (C, H, W) if sizes differ."""

    def __init__(self, images: torch.Tensor | list[torch.Tensor], labels: torch.Tensor | None = None):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> dict:
        """One batch as ``{"images": uint8 tensor or list, "labels": int64 tensor}``."""
        if isinstance(self.images, torch.Tensor):
            images = self.images[torch.as_tensor(indices)]
        else:
            images = [self.images[i] for i in indices]
        batch = {"images": images}
        if self.labels is not None:
            batch["labels"] = self.labels[torch.as_tensor(indices)]
        return batch


class LazyImageDataset(Dataset):
    """A large ``datasets.Dataset`` decoded per batch (in DataLoader workers)."""

    def __init__(self, hf_dataset, image_column, labels, num_channels, resolution, center_crop):
        self.hf_dataset, self.image_column, self.labels = hf_dataset, image_column, labels
        self.num_channels, self.resolution, self.center_crop = num_channels, resolution, center_crop

    def __len__(self) -> int:
        return len(self.hf_dataset)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> dict:
        rows = self.hf_dataset[list(indices)][self.image_column]
        images = [decode_image(img, self.num_channels, self.resolution, self.center_crop) for img in rows]
        batch = {"images": _stack_if_same_size(images)}
        if self.labels is not None:
            batch["labels"] = self.labels[torch.as_tensor(indices)]
        return batch


def collate_batch(batch: dict) -> dict:
    """Identity: ``__getitems__`` already returns a whole batch."""
    return batch


class EpochSampler(Sampler[int]):
    """A permutation of ``range(n)`` seeded by (seed, epoch): identical on every process.

    accelerate shards its batches across processes; ``set_epoch`` is called with the real epoch
    (also by a resumed run), so the data order never depends on how a run got there.
    """

    def __init__(self, num_examples: int, seed: int):
        self.num_examples, self.seed, self.epoch = num_examples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "data-order", self.epoch))
        return iter(torch.randperm(self.num_examples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_examples


def make_dataloader(dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0) -> DataLoader:
    """Shuffled batches in the epoch-seeded order of :class:`EpochSampler`."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), seed),
        collate_fn=collate_batch,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


# ---- augmentation (per batch, on the training device) ----------------------------------------------


def augment(
    images: torch.Tensor | list[torch.Tensor], resolution: int, random_flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """uint8 images → float (B, C, resolution, resolution) in [-1, 1]: random crop, optional flip.

    Square images already at ``resolution`` (decoded-once data, ``--center_crop``) skip the crop.
    """
    device = generator.device
    if isinstance(images, list) or images.shape[-2:] != (resolution, resolution):
        # One draw and one host copy for the whole batch: offset = ⌊u·(size − resolution + 1)⌋.
        room = torch.tensor([[img.shape[-2] - resolution + 1, img.shape[-1] - resolution + 1] for img in images])
        u = torch.rand(room.shape, generator=generator, device=device, dtype=torch.float64).cpu()
        offsets = (u * room).floor().long().tolist()
        images = torch.stack(
            [img[:, top : top + resolution, left : left + resolution] for img, (top, left) in zip(images, offsets)]
        )
    x = images.to(device=device, dtype=torch.float32) / 127.5 - 1
    if random_flip:
        flip = torch.rand(x.shape[0], generator=generator, device=device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def centre_crop(images: torch.Tensor | list[torch.Tensor], resolution: int) -> torch.Tensor:
    """uint8 images → float (N, C, resolution, resolution) in [-1, 1], each cut at its centre (no randomness)."""
    cropped = []
    for image in images:
        top, left = (image.shape[-2] - resolution) // 2, (image.shape[-1] - resolution) // 2
        cropped.append(image[:, top : top + resolution, left : left + resolution])
    return torch.stack(cropped).to(torch.float32) / 127.5 - 1


def drop_labels(
    labels: torch.Tensor | None, drop_prob: float, null_class: int | None, generator: torch.Generator
) -> torch.Tensor | None:
    """Replace each label by the null class with probability ``drop_prob`` (classifier-free guidance).

    Ho & Salimans (2022), Algorithm 1; the null class is the extra last embedding of the UNet.
    """
    if labels is None or null_class is None:
        return None
    labels = labels.to(generator.device)
    if drop_prob == 0:
        return labels
    drop = torch.rand(labels.shape, generator=generator, device=generator.device) < drop_prob
    return torch.where(drop, torch.full_like(labels, null_class), labels)


# ---- loading -----------------------------------------------------------------------------------------


def load_training_data(args) -> TrainingData:
    """The dataset named by the command line, or the built-in digits; raises :class:`DataError`."""
    if args.dataset_name is None and args.train_data_dir is None:
        return load_digits(args.resolution, args.class_conditional, getattr(args, "digits_split", "all"))
    hf_dataset, name = load_hf_dataset(args)
    columns = hf_dataset.column_names
    if args.image_column not in columns:
        raise DataError(f"--image_column {args.image_column!r} is not a column of {name}; columns: {columns}.")
    if len(hf_dataset) == 0:
        raise DataError(f"{name} has no training examples.")
    labels, class_names = None, None
    if args.class_conditional:
        if args.label_column not in columns:
            raise DataError(
                f"--label_column {args.label_column!r} is not a column of {name}; columns: {columns}. "
                "--class_conditional needs labels (imagefolder: one subfolder per class)."
            )
        labels, class_names = _labels(hf_dataset, args.label_column)
    elif args.label_column is not None and args.label_column not in columns:
        raise DataError(f"--label_column {args.label_column!r} is not a column of {name}; columns: {columns}.")

    images_only = hf_dataset.select_columns([args.image_column])
    estimate = len(hf_dataset) * 3 * args.resolution**2
    if estimate <= DECODE_ONCE_MAX_BYTES:
        decoded = [_as_mode(row[args.image_column]) for row in images_only]
        num_channels = 3 if any(img.mode == "RGB" for img in decoded) else 1
        tensors = [decode_image(img, num_channels, args.resolution, args.center_crop) for img in decoded]
        dataset = TensorImageDataset(_stack_if_same_size(tensors), labels)
    else:
        probe = images_only.select(range(min(len(hf_dataset), 64)))[args.image_column]
        num_channels = 3 if any(_as_mode(img).mode == "RGB" for img in probe) else 1
        dataset = LazyImageDataset(
            hf_dataset, args.image_column, labels, num_channels, args.resolution, args.center_crop
        )
    hub_id = args.dataset_name if args.dataset_name and not os.path.exists(args.dataset_name) else None
    description = f"{hub_id or 'a local image dataset'} ({len(hf_dataset):,} images)"
    return TrainingData(
        dataset, num_channels, len(class_names) if class_names else None, class_names, description, hub_id
    )


DIGITS_SPLITS = ("all", "train")


def load_digits(resolution: int, with_labels: bool, split: str = "all") -> TrainingData:
    """scikit-learn's 1,797 8×8 handwritten digits (shipped with scikit-learn, no download), upsampled.

    ``split="train"``: only the metric's stratified 70 % training split (``scratch_diffusion.metrics.digits_split``
    with the classifier's seed, 1,257 images), so the metric's held-out reference digits stay unseen by the model.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    if split not in DIGITS_SPLITS:
        raise DataError(f"digits split {split!r}; allowed: {', '.join(DIGITS_SPLITS)}.")
    digits = sklearn_digits()
    x = torch.from_numpy(digits.images).to(torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8), ink ∈ [0, 16]
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    images = (x * 255).round().clamp(0, 255).to(torch.uint8)
    targets = torch.from_numpy(digits.target).to(torch.long)
    which = "images"
    if split == "train":
        from scratch_diffusion.metrics.classifier import CLASSIFIER_RECIPE
        from scratch_diffusion.metrics.data import digits_split

        keep = digits_split(CLASSIFIER_RECIPE["split_seed"], CLASSIFIER_RECIPE["holdout_fraction"]).train_indices
        images, targets = images[keep], targets[keep]
        which = "images: the metric's training split"
    labels = targets if with_labels else None
    names = [str(i) for i in range(10)] if with_labels else None
    description = f"scikit-learn digits (8×8 → {resolution}×{resolution}, {len(images):,} {which})"
    return TrainingData(TensorImageDataset(images, labels), 1, 10 if with_labels else None, names, description, None)


def load_hf_dataset(args):
    """(the ``datasets.Dataset`` of ``--train_data_dir`` or ``--dataset_name``, its name for messages): the
    train split of an image folder, a folder saved with ``save_to_disk`` or a Hub dataset; raises :class:`DataError`."""
    import datasets

    try:
        if args.train_data_dir is not None:
            name = f"--train_data_dir {args.train_data_dir!r}"
            return datasets.load_dataset(
                "imagefolder", data_dir=args.train_data_dir, cache_dir=args.cache_dir, split="train"
            ), name
        name = f"--dataset_name {args.dataset_name!r}"
        if os.path.isdir(args.dataset_name) and any(
            os.path.exists(os.path.join(args.dataset_name, f)) for f in ("state.json", "dataset_dict.json")
        ):
            loaded = datasets.load_from_disk(args.dataset_name)
            return (loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded), name
        return datasets.load_dataset(
            args.dataset_name, args.dataset_config_name, cache_dir=args.cache_dir, split="train"
        ), name
    except DataError:
        raise
    except Exception as err:  # datasets raises many types; all mean "cannot read this data"
        raise DataError(f"could not load {name}: {type(err).__name__}: {err}") from None


def _labels(hf_dataset, column: str) -> tuple[torch.Tensor, list[str]]:
    """Integer labels 0..K−1 and class names; ClassLabel names are kept, other values sorted."""
    import datasets

    feature = hf_dataset.features[column]
    values = hf_dataset[column]
    if isinstance(feature, datasets.ClassLabel):
        return torch.as_tensor(values, dtype=torch.long), list(feature.names)
    if any(v is None for v in values):
        raise DataError(f"--label_column {column!r} has missing values.")
    classes = sorted(set(values))
    index = {value: i for i, value in enumerate(classes)}
    return torch.as_tensor([index[v] for v in values], dtype=torch.long), [str(c) for c in classes]


def _as_mode(image):
    """A PIL image in mode ``L`` or ``RGB``; transparency is composited on white, 16-bit scaled to 8."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise DataError(f"expected images in the image column, got {type(image).__name__}.")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(array / peak * 255 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("L" if image.mode in ("LA", "La") else "RGB")
    if image.mode in GRAYSCALE_MODES:
        return image.convert("L")
    return image.convert("RGB")


def decode_image(image, num_channels: int, resolution: int, center_crop: bool) -> torch.Tensor:
    """PIL image → uint8 (C, H, W) with the shorter side = ``resolution`` (square if ``center_crop``)."""
    from PIL import Image

    image = _as_mode(image).convert("L" if num_channels == 1 else "RGB")
    w, h = image.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    if size != (w, h):
        image = image.resize(size, Image.BILINEAR)
    if center_crop:
        left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy())


def _stack_if_same_size(images: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    return torch.stack(images) if len({tuple(t.shape) for t in images}) == 1 else images


def updates_per_epoch(num_batches: int, gradient_accumulation_steps: int) -> int:
    """Optimizer steps in one epoch: accelerate syncs at the end of the data even mid-accumulation."""
    return math.ceil(num_batches / gradient_accumulation_steps)
