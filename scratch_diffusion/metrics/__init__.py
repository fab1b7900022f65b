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

Modules (everything below is re-exported here):

=================  ==========================================================================
``data``           the digits as the trainer sees them, the fixed split, image layouts
``classifier``     the feature CNN and its deterministic training (``CLASSIFIER_RECIPE``)
``cache``          the classifier's safetensors cache (``$SCRATCH_DIFFUSION_CACHE``)
``frechet``        Gaussian statistics and the Fréchet distance
``evaluation``     ``evaluate_samples``: every number beside its baseline and ceiling
``summary``        the markdown table of one evaluation
``sources``        images from a folder or sampled from a saved pipeline
``cli``            the command line (also the ``scratch-diffusion-metrics`` script)
=================  ==========================================================================

Command line::

    python -m scratch_diffusion.metrics outputs/demo/pipeline --num_samples 500 --output metrics.json
    python -m scratch_diffusion.metrics path/to/pngs            # an image folder (subfolders 0-9 = labels)
"""

from scratch_diffusion.metrics.cache import (
    CACHE_ENV_VAR,
    classifier_path,
    default_cache_dir,
    load_digits_classifier,
    recipe_hash,
)
from scratch_diffusion.metrics.classifier import (
    CLASSIFIER_RECIPE,
    DigitsClassifier,
    DigitsCNN,
    train_digits_classifier,
)
from scratch_diffusion.metrics.cli import build_parser, check_args, main
from scratch_diffusion.metrics.data import (
    NUM_CLASSES,
    RESOLUTION,
    DigitsSplit,
    digits_images,
    digits_split,
    images_from_numpy,
    to_classifier_input,
)
from scratch_diffusion.metrics.evaluation import DEFAULT_CONFIDENCE_THRESHOLD, evaluate_samples, noise_images
from scratch_diffusion.metrics.frechet import (
    FeatureExtractor,
    frechet_distance,
    frechet_distance_from_features,
    frechet_distance_from_statistics,
    gaussian_statistics,
)
from scratch_diffusion.metrics.sources import load_image_folder, load_pipeline, sample_pipeline
from scratch_diffusion.metrics.summary import markdown_summary

__all__ = [
    "CACHE_ENV_VAR",
    "CLASSIFIER_RECIPE",
    "DEFAULT_CONFIDENCE_THRESHOLD",
    "NUM_CLASSES",
    "RESOLUTION",
    "DigitsCNN",
    "DigitsClassifier",
    "DigitsSplit",
    "FeatureExtractor",
    "build_parser",
    "check_args",
    "classifier_path",
    "default_cache_dir",
    "digits_images",
    "digits_split",
    "evaluate_samples",
    "frechet_distance",
    "frechet_distance_from_features",
    "frechet_distance_from_statistics",
    "gaussian_statistics",
    "images_from_numpy",
    "load_digits_classifier",
    "load_image_folder",
    "load_pipeline",
    "main",
    "markdown_summary",
    "noise_images",
    "recipe_hash",
    "sample_pipeline",
    "to_classifier_input",
    "train_digits_classifier",
]
