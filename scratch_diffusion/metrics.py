"""Offline sample quality: a Fréchet distance in a small digits classifier's feature space.

No Inception weights can be downloaded here, so the project brings its own feature network: a
tiny CNN trained deterministically on a fixed training split of scikit-learn's digits (the data
the built-in demo trains on, see :func:`digits_images`) and cached as safetensors. Every number
comes with a scale:

==========================  ======================================================================
``fd``                      Fréchet distance, samples vs. the real held-out split (lower is better)
``fd_real_baseline``        the same distance for real training-split digits (same sample size,
                            mean of 10 draws, ``fd_real_baseline_std`` beside it): what a perfect
                            generator scores
``fd_noise_ceiling``        the same distance for Gaussian noise clipped to [-1, 1] (same size):
                            what an untrained generator scores
``fd_ratio``                ``fd / fd_real_baseline`` (1 ≈ indistinguishable from real data)
``confident_fraction``      share of samples whose max softmax ≥ ``confidence_threshold`` (0.9),
                            beside ``confident_fraction_real_baseline`` / ``…_noise``
``class_match``             for class-conditional samples, share classified as the requested
                            class (None without labels); beside ``classifier_accuracy``
``classifier_accuracy``     the classifier's accuracy on the held-out split (≥ 95 % required)
==========================  ======================================================================

Any feature extractor works through the same functions: a callable mapping images
``(N, C, H, W)`` in [-1, 1] to features ``(N, D)`` (see :class:`FeatureExtractor`). A user with
Inception weights on disk wraps them (resize to 299, repeat the channel, take the 2048-d pool
features) and gets a standard FID from :func:`frechet_distance`.

Command line::

    python -m scratch_diffusion.metrics outputs/demo/pipeline --num_samples 500 --output metrics.json
    python -m scratch_diffusion.metrics path/to/pngs            # an image folder (subfolders 0-9 = labels)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

RESOLUTION = 16  # the classifier's input size; other sizes are resized (bilinear, antialiased)
NUM_CLASSES = 10
DEFAULT_CONFIDENCE_THRESHOLD = 0.9
CACHE_ENV_VAR = "SCRATCH_DIFFUSION_CACHE"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

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


# ---- data ----------------------------------------------------------------------------------------


def digits_images(resolution: int = RESOLUTION) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 digits as the trainer sees them: ``(N, 1, R, R)`` float in [-1, 1], labels.

    Reuses the trainer's loader (``training.data.load_digits``: x/16, bilinear upsampling with
    ``align_corners=False``, stored as uint8) and its scaling ``u8 / 127.5 − 1``, so the metric's real
    data is exactly the demo's training data.
    """
    images, labels = _digits_uint8(resolution)
    return images.to(torch.float32) / 127.5 - 1, labels.clone()


@functools.lru_cache(maxsize=4)
def _digits_uint8(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    from scratch_diffusion.training.data import load_digits

    data = load_digits(resolution, with_labels=True)
    return data.dataset.images, data.dataset.labels


class DigitsSplit(NamedTuple):
    """A stratified train / held-out split of :func:`digits_images`."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    holdout_images: torch.Tensor
    holdout_labels: torch.Tensor
    train_indices: torch.Tensor  # into digits_images()
    holdout_indices: torch.Tensor


def digits_split(seed: int = 0, holdout_fraction: float = 0.3, resolution: int = RESOLUTION) -> DigitsSplit:
    """Deterministic stratified split: ``round(holdout_fraction · n_c)`` images of each class held out."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction={holdout_fraction!r}; allowed: 0 < holdout_fraction < 1.")
    images, labels = digits_images(resolution)
    generator = torch.Generator().manual_seed(seed)
    train, holdout = [], []
    for c in range(NUM_CLASSES):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        k = round(holdout_fraction * len(members))
        holdout.append(members[:k])
        train.append(members[k:])
    train_idx, holdout_idx = torch.cat(train).sort().values, torch.cat(holdout).sort().values
    return DigitsSplit(
        images[train_idx], labels[train_idx], images[holdout_idx], labels[holdout_idx], train_idx, holdout_idx
    )


def to_classifier_input(images: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` in [-1, 1] → ``(N, 1, 16, 16)`` float32: channel mean, antialiased resize."""
    images = torch.as_tensor(images)
    if images.ndim != 4:
        raise ValueError(f"images of shape {tuple(images.shape)}; expected (N, C, H, W) in [-1, 1].")
    x = images.detach().to(torch.float32)
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (RESOLUTION, RESOLUTION):
        x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False, antialias=True)
    return x


def images_from_numpy(images: np.ndarray) -> torch.Tensor:
    """A pipeline's ``output_type="np"`` images ``(N, H, W, C)`` in [0, 1] → ``(N, C, H, W)`` in [-1, 1]."""
    array = np.asarray(images, dtype=np.float32)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise ValueError(f"images of shape {array.shape}; expected (N, H, W, C) in [0, 1].")
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous() * 2 - 1


# ---- the classifier --------------------------------------------------------------------------------


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


def recipe_hash(recipe: dict = CLASSIFIER_RECIPE) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    """``$SCRATCH_DIFFUSION_CACHE`` if set, else ``~/.cache/scratch-diffusion``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "scratch-diffusion"


def classifier_path(cache_dir: str | os.PathLike | None = None) -> Path:
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return directory / f"digits-classifier-{recipe_hash()}.safetensors"


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


def load_digits_classifier(
    cache_dir: str | os.PathLike | None = None, retrain: bool = False, split: DigitsSplit | None = None
) -> DigitsClassifier:
    """The cached classifier, trained (and cached atomically) on first use or with ``retrain=True``.

    ``cache_dir`` overrides ``$SCRATCH_DIFFUSION_CACHE`` (default ``~/.cache/scratch-diffusion``).
    """
    from safetensors.torch import load_file, save_file

    path = classifier_path(cache_dir)
    if split is None:
        split = digits_split(CLASSIFIER_RECIPE["split_seed"], CLASSIFIER_RECIPE["holdout_fraction"])
    model, trained_now, seconds = DigitsCNN(), False, None
    if path.is_file() and not retrain:
        model.load_state_dict(load_file(path))
    else:
        start = time.perf_counter()
        model = train_digits_classifier(split)
        seconds = time.perf_counter() - start
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        metadata = {"recipe": json.dumps(CLASSIFIER_RECIPE, sort_keys=True)}
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
        trained_now = True
    model.eval()
    classifier = DigitsClassifier(model, path, trained_now, 0.0, seconds)
    predicted = classifier.probabilities(split.holdout_images).argmax(dim=-1)
    classifier.holdout_accuracy = float((predicted == split.holdout_labels).float().mean())
    return classifier


# ---- Fréchet distance ------------------------------------------------------------------------------


@runtime_checkable
class FeatureExtractor(Protocol):
    """Anything mapping images ``(N, C, H, W)`` in [-1, 1] to features ``(N, D)`` (tensor or array)."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor | np.ndarray: ...


def gaussian_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``(N, D)`` features, in float64."""
    f = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    f = f.astype(np.float64).reshape(len(f), -1)
    if len(f) < 2:
        raise ValueError(f"{len(f)} feature vector(s); the Fréchet distance needs at least 2 per set.")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance_from_statistics(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|μ1 − μ2|² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2})`` between two Gaussians.

    Computed stably without a non-symmetric matrix square root: Σ1Σ2 is similar to the symmetric
    PSD matrix ``S = Σ1^{1/2} Σ2 Σ1^{1/2}``, so ``Tr (Σ1Σ2)^{1/2} = Σ_i sqrt(λ_i(S))`` with ``S``'s
    eigenvalues from ``eigh`` (clipped at 0 against round-off). This holds for singular covariances
    too (fewer samples than dimensions, dead ReLU units), where ``scipy.linalg.sqrtm`` can return
    complex values or warn. The result is clipped at 0.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape} vs {mu2.shape}.")
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt, 0.0))


def frechet_distance_from_features(
    features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray
) -> float:
    """Fréchet distance between the Gaussians fitted to two ``(N, D)`` feature sets."""
    return frechet_distance_from_statistics(*gaussian_statistics(features_a), *gaussian_statistics(features_b))


def frechet_distance(
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    feature_extractor: FeatureExtractor | Callable[[torch.Tensor], torch.Tensor | np.ndarray] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> float:
    """Fréchet distance between two image sets ``(N, C, H, W)`` in [-1, 1].

    ``feature_extractor=None`` uses the digits classifier's penultimate features (loaded from the
    cache, trained on first use); pass any callable images → ``(N, D)`` features for another space,
    e.g. Inception pool features for a standard FID.
    """
    extractor = feature_extractor if feature_extractor is not None else load_digits_classifier(cache_dir)
    return frechet_distance_from_features(extractor(images_a), extractor(images_b))


# ---- the evaluation --------------------------------------------------------------------------------


def noise_images(n: int, shape: Sequence[int] = (1, RESOLUTION, RESOLUTION), seed: int = 0) -> torch.Tensor:
    """``n`` images of standard Gaussian noise clipped to [-1, 1]: an untrained generator's output."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=generator).clamp(-1, 1)


def _name(extractor: object) -> str:
    return getattr(extractor, "__name__", type(extractor).__name__)


def _confident(probabilities: torch.Tensor, threshold: float) -> float:
    return float((probabilities.max(dim=-1).values >= threshold).float().mean())


def evaluate_samples(
    images: torch.Tensor,
    requested_labels: Sequence[int] | torch.Tensor | None = None,
    *,
    feature_extractor: FeatureExtractor | Callable[[torch.Tensor], torch.Tensor | np.ndarray] | None = None,
    classifier: DigitsClassifier | None = None,
    cache_dir: str | os.PathLike | None = None,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    seed: int = 0,
    baseline_draws: int = 10,
) -> dict:
    """Every quality number for ``images`` ``(N, C, H, W)`` in [-1, 1], each beside its scale.

    The reference is the real held-out split. The baseline is the mean distance of
    ``baseline_draws`` random sets of ``min(N, n_train)`` real training-split images (disjoint from
    the reference; seeded by ``seed``), with its standard deviation beside it: at N = 500 a single
    real draw scatters by about ±25 %, so compare ``fd_ratio`` against ``1 ± fd_real_baseline_std /
    fd_real_baseline``, or use larger N. The ceiling is ``N`` noise images of the samples' shape.
    ``feature_extractor`` replaces the classifier's features for the distances only; the
    classification numbers always use the digits classifier.
    ``requested_labels`` (one class per image) gives ``class_match``; otherwise it is None.
    """
    images = torch.as_tensor(images).detach().cpu().to(torch.float32)
    if images.ndim != 4:
        raise ValueError(f"images of shape {tuple(images.shape)}; expected (N, C, H, W) in [-1, 1].")
    n = len(images)
    if baseline_draws < 1:
        raise ValueError(f"baseline_draws={baseline_draws!r}; allowed: at least 1.")
    classifier = classifier if classifier is not None else load_digits_classifier(cache_dir)
    extractor = feature_extractor if feature_extractor is not None else classifier.features
    split = digits_split(CLASSIFIER_RECIPE["split_seed"], CLASSIFIER_RECIPE["holdout_fraction"])

    generator = torch.Generator().manual_seed(seed)
    n_baseline = min(n, len(split.train_images))
    draws = [torch.randperm(len(split.train_images), generator=generator)[:n_baseline] for _ in range(baseline_draws)]
    reals = [split.train_images[d] for d in draws]
    noise = noise_images(n, tuple(images.shape[1:]), seed=seed + 1)
    # Feed the references in the samples' layout, so a custom extractor sees one image format.
    reference = split.holdout_images
    if images.shape[1:] != reference.shape[1:]:
        c, h, w = images.shape[1:]
        resize = lambda x: F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).expand(-1, c, -1, -1)  # noqa: E731
        reference, reals = resize(reference), [resize(real) for real in reals]

    reference_stats = gaussian_statistics(extractor(reference))

    def distance(x: torch.Tensor) -> float:
        return frechet_distance_from_statistics(*gaussian_statistics(extractor(x)), *reference_stats)

    fd, fd_noise = distance(images), distance(noise)
    fd_reals = np.array([distance(real) for real in reals])
    fd_real = float(fd_reals.mean())
    probabilities = classifier.probabilities(images)
    class_match = None
    if requested_labels is not None:
        requested = torch.as_tensor(requested_labels, dtype=torch.long).flatten()
        if len(requested) != n:
            raise ValueError(f"{len(requested)} requested labels for {n} images; pass one per image.")
        class_match = float((probabilities.argmax(dim=-1) == requested).float().mean())
    return {
        "n": n,
        "fd": fd,
        "fd_real_baseline": fd_real,
        "fd_real_baseline_std": float(fd_reals.std(ddof=1)) if baseline_draws > 1 else None,
        "fd_noise_ceiling": fd_noise,
        "fd_ratio": fd / fd_real if fd_real > 0 else None,
        "confident_fraction": _confident(probabilities, confidence_threshold),
        "confident_fraction_real_baseline": _confident(classifier.probabilities(reals[0]), confidence_threshold),
        "confident_fraction_noise": _confident(classifier.probabilities(noise), confidence_threshold),
        "class_match": class_match,
        "classifier_accuracy": classifier.holdout_accuracy,
        "confidence_threshold": confidence_threshold,
        "n_reference": len(reference),
        "n_baseline": n_baseline,
        "baseline_draws": baseline_draws,
        "feature_space": "digits-classifier" if feature_extractor is None else _name(feature_extractor),
    }


def markdown_summary(results: dict, title: str | None = None) -> str:
    """A two-column markdown table of :func:`evaluate_samples`' results, each number beside its scale."""

    def num(v: float | None, percent: bool = False) -> str:
        if v is None:
            return "n/a"
        return f"{100 * v:.1f} %" if percent else f"{v:.3g}"

    std = results.get("fd_real_baseline_std")
    spread = f" ± {num(std)}" if std is not None else ""
    rows = [
        ("samples", f"{results['n']} (reference: {results['n_reference']} held-out real digits)"),
        (
            "Fréchet distance (lower is better)",
            f"**{num(results['fd'])}** (×{num(results['fd_ratio'])} of the baseline) — real baseline "
            f"{num(results['fd_real_baseline'])}{spread}, noise ceiling {num(results['fd_noise_ceiling'])}",
        ),
        (
            f"confident (max softmax ≥ {results['confidence_threshold']})",
            f"**{num(results['confident_fraction'], True)}** — real "
            f"{num(results['confident_fraction_real_baseline'], True)}, "
            f"noise {num(results['confident_fraction_noise'], True)}",
        ),
        (
            "classified as requested class",
            f"**{num(results['class_match'], True)}** — classifier accuracy on real "
            f"{num(results['classifier_accuracy'], True)}",
        ),
    ]
    lines = [f"### {title}", ""] if title else []
    lines += ["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    return "\n".join(lines)


# ---- command line ----------------------------------------------------------------------------------


def load_image_folder(folder: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every image under ``folder`` (recursively, sorted) → grayscale 16×16 in [-1, 1].

    If every image sits in a subfolder named ``0`` … ``9``, that name is its requested class.
    """
    from PIL import Image

    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {str(root)!r}.")
    arrays = []
    for path in files:
        with Image.open(path) as image:
            gray = image.convert("L")
            if gray.size != (RESOLUTION, RESOLUTION):
                gray = gray.resize((RESOLUTION, RESOLUTION), Image.Resampling.BILINEAR)
            arrays.append(np.asarray(gray, dtype=np.float32))
    images = torch.from_numpy(np.stack(arrays))[:, None] / 127.5 - 1
    parents = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) == 2 else None for p in files]
    labels = None
    if all(name is not None and name.isdigit() and int(name) < NUM_CLASSES for name in parents):
        labels = torch.tensor([int(name) for name in parents])
    return images, labels


def load_pipeline(path: str | os.PathLike, trust_remote_code: bool = False):
    """A saved pipeline folder, loaded with installed code where its ``model_index.json`` allows.

    A custom pipeline names its class as ``[module, class]`` (ours: ``["scratch_diffusion",
    "ScratchDiffusionPipeline"]``); if that module is installed, its class loads the folder and no
    shipped code runs. Otherwise ``DiffusionPipeline.from_pretrained`` loads it (stock diffusers
    pipelines; shipped custom code only with ``trust_remote_code=True``).
    """
    from diffusers import DiffusionPipeline

    import scratch_diffusion  # noqa: F401  (diffusers resolves plugin components from imported modules)
    from scratch_diffusion.pipelines.pipeline_scratch_diffusion import check_saved_folder, read_json_object

    check_saved_folder(path)  # a corrupt or truncated file is named, whichever class loads the folder
    class_name = read_json_object(Path(path) / "model_index.json").get("_class_name")
    if isinstance(class_name, list) and len(class_name) == 2:
        try:
            pipeline_class = getattr(importlib.import_module(class_name[0]), class_name[1])
        except (ImportError, AttributeError):
            pipeline_class = None
        if isinstance(pipeline_class, type) and issubclass(pipeline_class, DiffusionPipeline):
            return pipeline_class.from_pretrained(str(path))
        return DiffusionPipeline.from_pretrained(str(path), trust_remote_code=trust_remote_code, use_safetensors=True)
    return DiffusionPipeline.from_pretrained(str(path), use_safetensors=True)


@torch.no_grad()
def sample_pipeline(
    path: str | os.PathLike,
    num_samples: int,
    num_inference_steps: int,
    seed: int = 0,
    batch_size: int = 256,
    guidance_scale: float = 1.0,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``num_samples`` images from a saved pipeline, in [-1, 1]; class-conditional ones cycle 0, 1, …, K−1."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(path, trust_remote_code).to(device)
    pipe.set_progress_bar_config(disable=True)
    num_classes = getattr(pipe, "num_classes", None)
    generator = torch.Generator(device=device).manual_seed(seed)
    labels = torch.arange(num_samples) % num_classes if num_classes else None
    chunks = []
    for start in range(0, num_samples, batch_size):
        size = min(batch_size, num_samples - start)
        kwargs = {}
        if labels is not None:
            kwargs = {"class_labels": labels[start : start + size].tolist(), "guidance_scale": guidance_scale}
        output = pipe(
            batch_size=size, num_inference_steps=num_inference_steps, generator=generator, output_type="np", **kwargs
        )
        chunks.append(images_from_numpy(output.images))
    return torch.cat(chunks), labels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scratch_diffusion.metrics",
        description="Offline sample quality of a saved pipeline or an image folder (digits-classifier "
        "Fréchet distance, with the real-data baseline and the noise ceiling).",
    )
    parser.add_argument("path", help="a saved pipeline folder (with model_index.json) or a folder of images")
    parser.add_argument("--num_samples", type=int, default=500, help="images to generate from a pipeline")
    parser.add_argument("--num_inference_steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="sampling and baseline seed")
    parser.add_argument("--batch_size", type=int, default=256, help="images per pipeline call")
    parser.add_argument("--guidance_scale", type=float, default=1.0, help="for class-conditional pipelines")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="run code shipped in the pipeline folder when its pipeline class is not installed",
    )
    parser.add_argument("--confidence_threshold", type=float, default=DEFAULT_CONFIDENCE_THRESHOLD)
    parser.add_argument("--cache_dir", default=None, help=f"classifier cache (default: ${CACHE_ENV_VAR} or ~/.cache)")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown", help="what to print")
    parser.add_argument("--output", default=None, help="also write the results as JSON to this file")
    return parser


def check_args(args: argparse.Namespace) -> str | None:
    """The first problem with the command line (naming the value and what is allowed), or None."""
    path = Path(args.path)
    if not path.is_dir():
        return f"{str(path)!r} is not a folder (a saved pipeline or a folder of images)."
    if args.num_samples < 2:
        return f"--num_samples must be at least 2, got {args.num_samples}."
    for name in ("batch_size", "num_inference_steps"):
        if getattr(args, name) < 1:
            return f"--{name} must be at least 1, got {getattr(args, name)}."
    if not np.isfinite(args.guidance_scale):
        return f"--guidance_scale {args.guidance_scale} is not allowed; pass a finite number."
    if not 0 < args.confidence_threshold < 1:
        return f"--confidence_threshold {args.confidence_threshold} is not allowed; pass a number in (0, 1)."
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            return f"--device {args.device!r} is not a device; pass cpu, cuda or cuda:<index>."
        available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
        if not available.get(device.type, False) or (
            device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count()
        ):
            usable = [name for name, ok in available.items() if ok]
            return f"--device {args.device!r} is not available here; available: {usable}."
    return None


def main(argv: list[str] | None = None) -> int:
    """Command line; exit status 0, or 2 with a one-line ``error:`` on stderr for bad input or a bad folder."""
    args = build_parser().parse_args(argv)
    path = Path(args.path)
    problem = check_args(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if (path / "model_index.json").is_file():
        try:
            images, labels = sample_pipeline(
                path,
                num_samples=args.num_samples,
                num_inference_steps=args.num_inference_steps,
                seed=args.seed,
                batch_size=args.batch_size,
                guidance_scale=args.guidance_scale,
                device=args.device,
                trust_remote_code=args.trust_remote_code,
            )
        except (OSError, ValueError) as error:  # a corrupt folder, or a value the pipeline refuses
            print(f"error: {error}", file=sys.stderr)
            return 2
        source = {"pipeline": str(path), "num_inference_steps": args.num_inference_steps, "seed": args.seed}
        if labels is not None:
            source["guidance_scale"] = args.guidance_scale
    else:
        try:
            images, labels = load_image_folder(path)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        source = {"image_folder": str(path)}
    results = evaluate_samples(
        images, labels, cache_dir=args.cache_dir, confidence_threshold=args.confidence_threshold, seed=args.seed
    )
    results = {**results, "source": source}
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    if args.format == "json":
        print(json.dumps(results, indent=2))
    else:
        print(markdown_summary(results, title=str(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
