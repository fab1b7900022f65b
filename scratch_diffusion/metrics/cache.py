"""The classifier's cache: one safetensors file per recipe hash, trained and written atomically on first use."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from scratch_diffusion.metrics.classifier import (
    CLASSIFIER_RECIPE,
    DigitsClassifier,
    DigitsCNN,
    train_digits_classifier,
)
from scratch_diffusion.metrics.data import DigitsSplit, digits_split

CACHE_ENV_VAR = "SCRATCH_DIFFUSION_CACHE"


def recipe_hash(recipe: dict = CLASSIFIER_RECIPE) -> str:
    """The first 12 hex digits of the SHA-256 of ``recipe`` as sorted JSON: the cache file's name."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    """``$SCRATCH_DIFFUSION_CACHE`` if set, else ``~/.cache/scratch-diffusion``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "scratch-diffusion"


def classifier_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the classifier of :data:`CLASSIFIER_RECIPE` is cached (``cache_dir`` over the default)."""
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return directory / f"digits-classifier-{recipe_hash()}.safetensors"


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
