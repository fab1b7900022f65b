"""The feature network: a tiny digits CNN, trained deterministically on the fixed training split."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scratch_diffusion.metrics.data import NUM_CLASSES, RESOLUTION, DigitsSplit, digits_split, to_classifier_input

# Everything that determines the classifier's weights; its hash names the cache file, so changing
# any of it (or bumping ``version`` after editing the architecture/training code) retrains.
CLASSIFIER_RECIPE = {
    "version": 1,
    "data": "sklearn-digits-uint8-bilinear",
    "resolution": RESOLUTION,
    "split_seed": 0,
    "holdout_fraction": 0.3,
    "architecture": "conv16-conv32-fc64",
    "optimizer": "adam",
    "learning_rate": 3e-3,
    "batch_size": 64,
    "epochs": 30,
    "max_shift_px": 1,
    "seed": 0,
}


class DigitsCNN(nn.Module):
    """Two 3×3 conv layers (16, 32 channels, each + ReLU + 2×2 max-pool) → 64-d ReLU features → 10 logits."""

    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * (RESOLUTION // 4) ** 2, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer: the feature space of the Fréchet distance."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class DigitsClassifier:
    """The trained classifier plus where it came from."""

    model: DigitsCNN
    path: Path
    trained_now: bool  # False when the weights were loaded from the cache
    holdout_accuracy: float  # measured on the held-out split at load time, not read from the file
    training_seconds: float | None = None  # set when trained_now
    recipe: dict = field(default_factory=lambda: dict(CLASSIFIER_RECIPE))

    @torch.no_grad()
    def _batched(self, fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        x = to_classifier_input(images)
        self.model.eval()
        outs = [fn(x[i : i + 1024]) for i in range(0, len(x), 1024)]
        return torch.cat(outs) if outs else torch.empty(0)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in [-1, 1] → ``(N, 64)`` penultimate features (a :class:`FeatureExtractor`)."""
        return self._batched(self.model.features, images)

    __call__ = features

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in [-1, 1] → ``(N, 10)`` softmax probabilities."""
        return self._batched(lambda x: self.model(x).softmax(dim=-1), images)


@contextlib.contextmanager
def _deterministic_cpu() -> Iterator[None]:
    """One CPU thread and deterministic kernels while training; the caller's settings are restored."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (background −1 fills in)."""
    if max_shift == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (n, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (n, 1, 1, w)
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def train_digits_classifier(split: DigitsSplit | None = None, recipe: dict = CLASSIFIER_RECIPE) -> DigitsCNN:
    """Train :class:`DigitsCNN` on the training split: Adam, fixed seed, one CPU thread (~5-10 s)."""
    if split is None:
        split = digits_split(recipe["split_seed"], recipe["holdout_fraction"], recipe["resolution"])
    with _deterministic_cpu(), torch.random.fork_rng(devices=[]):  # the caller's global RNG is untouched
        torch.manual_seed(recipe["seed"])  # parameter initialisation
        model = DigitsCNN()
        generator = torch.Generator().manual_seed(recipe["seed"])
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe["learning_rate"])
        x, y = split.train_images, split.train_labels
        model.train()
        for _ in range(recipe["epochs"]):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), recipe["batch_size"]):
                batch = order[start : start + recipe["batch_size"]]
                inputs = _random_shift(x[batch], recipe["max_shift_px"], generator)
                loss = F.cross_entropy(model(inputs), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return model.eval()
