"""The control network's training examples: each image (or a latent pipeline's latents) with its control image.

A control image is always in pixel space, at the image's resolution, in [0, 1] — also for a latent pipeline,
whose control network encodes it down to the latent grid. It is either a built-in transform of the training
image (``--control``, ``scratch_diffusion.control.transforms``), computed per batch from the very crop and flip
the model trains on, or the user's paired image (``--control_dir``: the same file names as ``--train_data_dir``;
``--control_column``: a dataset column), decoded once as the images are and cropped and flipped with them.

:func:`controlled_batch` turns one batch into what a step trains on, drawing from the step's seeded generator in
a fixed order — the crop/flip of ``augment`` (or a latent's mirror and posterior draw), the control dropout, the
label dropout — so a resumed run sees the very same batches.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import Dataset

from scratch_diffusion.control.transforms import control_transform, low_resolution

from ..data import (
    DataError,
    TensorImageDataset,
    TrainingData,
    augment,
    centre_crop,
    decode_image,
    drop_labels,
    load_hf_dataset,
)
from ..latent_data import latent_input

ControlTransform = Callable[[torch.Tensor], torch.Tensor]


def make_transform(args: argparse.Namespace) -> ControlTransform | None:
    """The built-in control of ``--control`` (with ``--low_resolution_factor``), or None for paired controls."""
    if args.control is None:
        return None
    if args.control == "low_resolution":
        return partial(low_resolution, factor=args.low_resolution_factor)
    return control_transform(args.control)


class ControlPairs(Dataset):
    """The training examples with what their controls are made from, one slice per batch (``__getitems__``).

    A batch is the ``examples``' (``images`` and ``labels``, or a latent pipeline's latents and labels), plus
    ``images`` from ``images`` (a latent pipeline's pixels) and ``controls`` from ``controls`` (paired data).
    """

    def __init__(self, examples: Dataset, images: Dataset | None = None, controls: Dataset | None = None):
        self.examples, self.images, self.controls = examples, images, controls

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> dict:
        batch = dict(self.examples.__getitems__(indices))
        if self.images is not None:
            batch["images"] = self.images.__getitems__(indices)["images"]
        if self.controls is not None:
            batch["controls"] = self.controls.__getitems__(indices)["images"]
        return batch


def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"could not read the control image {path!r}: {type(err).__name__}: {err}") from None


def load_paired_controls(args: argparse.Namespace, data: TrainingData) -> TensorImageDataset | None:
    """The user's control images (``--control_dir`` / ``--control_column``) in the data's row order, decoded as the
    images are (channels, resolution, crop); None for a built-in control. Raises :class:`DataError`."""
    if args.control_dir is None and args.control_column is None:
        return None
    if not isinstance(data.dataset, TensorImageDataset):
        raise DataError(
            f"{data.description} is too large to decode once; paired controls need data that is decoded once "
            "(pass a smaller dataset or a built-in --control)."
        )
    hf_dataset, name = load_hf_dataset(args)
    if args.control_column is not None:
        if args.control_column not in hf_dataset.column_names:
            raise DataError(
                f"--control_column {args.control_column!r} is not a column of {name}; columns: "
                f"{hf_dataset.column_names}."
            )
        rows = hf_dataset.select_columns([args.control_column])[args.control_column]
        where = [f"row {i} of --control_column {args.control_column!r}" for i in range(len(rows))]
    else:
        import datasets

        root = os.path.abspath(args.train_data_dir)
        files = hf_dataset.cast_column(args.image_column, datasets.Image(decode=False))[args.image_column]
        where = [os.path.join(args.control_dir, os.path.relpath(file["path"], root)) for file in files]
        rows = [_open_image(path) for path in where]
    controls = []
    images = data.dataset.images
    for index, (row, place) in enumerate(zip(rows, where, strict=True)):
        if row is None:
            raise DataError(f"{place} has no control image.")
        control = decode_image(row, data.num_channels, args.resolution, args.center_crop)
        if control.shape[-2:] != images[index].shape[-2:]:
            raise DataError(
                f"the control image {place} is {control.shape[-1]}×{control.shape[-2]} pixels after resizing to "
                f"--resolution {args.resolution}, its image {images[index].shape[-1]}×{images[index].shape[-2]}; "
                "allowed: a control image of its image's size (or aspect ratio)."
            )
        controls.append(control)
    stacked = torch.stack(controls) if isinstance(images, torch.Tensor) else controls
    return TensorImageDataset(stacked)


@dataclass(frozen=True)
class ControlRecipe:
    """How a batch becomes the control network's training input (:func:`controlled_batch`)."""

    transform: ControlTransform | None  # a built-in control; None: the batch's paired "controls"
    resolution: int  # the image side (a latent pipeline's control images have it too)
    random_flip: bool
    latent: bool  # the examples are a latent pipeline's latents; the pixels are centre crops
    control_dropout_prob: float = 0.0
    class_dropout_prob: float = 0.0
    null_class: int | None = None  # the UNet's null class (its number of classes); None: unconditional


@dataclass(frozen=True)
class ControlledBatch:
    """One step's input: the clean samples x0, their control images in [0, 1], the (dropped) labels."""

    x0: torch.Tensor  # (B, C, h, w): images in [−1, 1], or a latent pipeline's scaled latents
    control: torch.Tensor  # (B, C_image, H, W) in [0, 1]; zeros where the control was dropped
    labels: torch.Tensor | None


def _with_controls(images, controls):
    """Images and their controls as one stack along the channels, so one crop and flip applies to both."""
    if isinstance(images, torch.Tensor):
        return torch.cat([images, controls], dim=1)
    return [torch.cat([image, control]) for image, control in zip(images, controls, strict=True)]


def _twin(generator: torch.Generator) -> torch.Generator:
    """A generator in ``generator``'s state: its next draws are the ones ``generator`` will make."""
    twin = torch.Generator(device=generator.device)
    twin.set_state(generator.get_state())
    return twin


def drop_controls(control: torch.Tensor, drop_prob: float, generator: torch.Generator) -> torch.Tensor:
    """Each control image replaced by zeros (the empty control) with probability ``drop_prob``.

    As ControlNet's training replaces 50 % of the prompts by empty strings (Zhang et al., 2023, §3.3), here the
    control itself: the network also learns the prediction without one, for guidance with control. One draw per
    example (none at probability 0).
    """
    if drop_prob == 0:
        return control
    drop = torch.rand(control.shape[0], generator=generator, device=generator.device) < drop_prob
    return torch.where(drop[:, None, None, None], torch.zeros_like(control), control)


def controlled_batch(batch: dict, recipe: ControlRecipe, generator: torch.Generator) -> ControlledBatch:
    """x0, the control and the labels of one batch; every draw from ``generator``, in a fixed order.

    Pixels: ``augment`` crops and flips the images (with their paired controls stacked on, so both get the
    same crop and flip; its draws do not depend on the channels). Latents: ``latent_input`` picks the image or
    its mirror per example; the control's pixels (the centre crop the latents were encoded from) are mirrored
    alike, by a twin of the generator that makes the same first draw. Then the built-in transform, the control
    dropout and the label dropout (``drop_labels``, the null class of classifier-free guidance).
    """
    device = generator.device
    if recipe.latent:
        pixels = centre_crop(batch["images"] if recipe.transform is not None else batch["controls"], recipe.resolution)
        pixels = pixels.to(device)
        mirrored = {"mean": pixels, "mean_flipped": pixels.flip(-1)}
        pixels = latent_input(mirrored, recipe.random_flip, _twin(generator))  # latent_input draws the flips first
        x0 = latent_input(batch, recipe.random_flip, generator)
    elif recipe.transform is None:
        channels = batch["images"][0].shape[0]
        both = augment(_with_controls(batch["images"], batch["controls"]), recipe.resolution, recipe.random_flip,
                       generator)  # fmt: skip
        x0, pixels = both[:, :channels], both[:, channels:]
    else:
        x0 = augment(batch["images"], recipe.resolution, recipe.random_flip, generator)
        pixels = x0
    control = (pixels + 1) / 2
    if recipe.transform is not None:
        control = recipe.transform(control)
    control = drop_controls(control, recipe.control_dropout_prob, generator)
    labels = drop_labels(batch.get("labels"), recipe.class_dropout_prob, recipe.null_class, generator)
    return ControlledBatch(x0, control, labels)


def evaluation_batch(dataset: Dataset, recipe: ControlRecipe, limit: int, seed_generator: torch.Generator):
    """Clean examples of ``dataset`` — all, or a seeded subset of ``limit`` — as (x0, control, labels, images).

    Centre crops, no flip, no dropout; x0 is a latent pipeline's posterior mean; ``images`` the real images in
    [0, 1] (for the figure).
    """
    indices = list(range(len(dataset)))
    if len(dataset) > limit:
        indices = torch.randperm(len(dataset), generator=seed_generator)[:limit].sort().values.tolist()
    batch = dataset.__getitems__(indices)
    images = centre_crop(batch["images"], recipe.resolution)
    x0 = batch["mean"] if recipe.latent else images
    pixels = images if recipe.transform is not None else centre_crop(batch["controls"], recipe.resolution)
    control = (pixels + 1) / 2
    if recipe.transform is not None:
        control = recipe.transform(control)
    return x0, control, batch.get("labels"), (images + 1) / 2
