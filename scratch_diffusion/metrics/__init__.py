"""Offline sample quality: FD and KID in a chosen feature space, each beside its real baseline and noise ceiling.

The default space needs no download: a tiny CNN trained deterministically on a fixed training
split of scikit-learn's digits (the data the built-in demo trains on, see :func:`digits_images`)
and cached as safetensors. DINOv2 (Stein et al., 2023) or any other ``transformers`` image backbone
(a local folder or a Hub id), or a plug-in ``package.module:callable``, gives another space
(:func:`feature_extractor`). Every number comes with a scale:

============================  ====================================================================
``fd``                        Fréchet distance, samples vs. the real held-out reference (lower is better)
``fd_real_baseline``          the same distance for real images disjoint from the reference (same
                              sample size, mean of 10 draws, ``fd_real_baseline_std`` beside it):
                              what a perfect generator scores
``fd_noise_ceiling``          the same distance for Gaussian noise clipped to [-1, 1] (same size):
                              what an untrained generator scores
``fd_ratio``                  ``fd / fd_real_baseline`` (1 ≈ indistinguishable from real data)
``kid`` ± ``kid_std``         KID (Bińkowski et al., 2018): unbiased MMD², cubic kernel, mean ± std
                              over ``kid_subsets`` subsets of ``min(1000, n)``; beside
                              ``kid_real_baseline`` (± ``…_std`` over the same draws, ≈ 0) and
                              ``kid_noise_ceiling``
``confident_fraction``        share of samples whose max softmax ≥ ``confidence_threshold`` (0.9),
                              beside ``confident_fraction_real_baseline`` / ``…_noise`` (digits only)
``class_match``               for class-conditional samples, share classified as the requested
                              class (None without labels); beside ``classifier_accuracy``
``classifier_accuracy``       the classifier's accuracy on the held-out split (≥ 95 % required)
``feature_space``             the extractor's name (``digits-classifier``, ``facebook/dinov2-small``, …)
============================  ====================================================================

Any feature extractor works through the same functions: a callable mapping images
``(N, C, H, W)`` in [-1, 1] to features ``(N, D)`` (see :class:`FeatureExtractor`). No package
computing Inception FID installs here without torchvision, so a standard FID is a plug-in: wrap
Inception weights you have (resize to 299, repeat the channel, 2048-d pool features) in such a
callable and pass it as ``--features my_module:inception``.

Modules (everything below is re-exported here):

==================  =========================================================================
``data``            the digits as the trainer sees them, the fixed split, image layouts
``classifier``      the feature CNN and its deterministic training (``CLASSIFIER_RECIPE``)
``cache``           the classifier's safetensors cache (``$SCRATCH_DIFFUSION_CACHE``)
``frechet``         Gaussian statistics and the Fréchet distance
``kernel``          KID: the unbiased polynomial-kernel MMD² over subsets
``backbones``       features from any ``transformers`` image backbone (DINOv2), batched
``feature_spaces``  ``feature_extractor(name)``: a feature space by name
``evaluation``      ``evaluate_samples``: every number beside its baseline and ceiling, any reference
``summary``         the markdown table of one evaluation
``sources``         images from a folder or sampled from a saved pipeline
``cli``             the command line (also the ``scratch-diffusion-metrics`` script)
==================  =========================================================================

Command line::

    python -m scratch_diffusion.metrics outputs/demo/pipeline --num_samples 500 --output metrics.json
    python -m scratch_diffusion.metrics path/to/pngs            # an image folder (subfolders 0-9 = labels)
    python -m scratch_diffusion.metrics outputs/demo/pipeline --features dinov2   # FD-DINOv2 (weights cached)
"""

from scratch_diffusion.metrics.backbones import (
    BackboneUnavailableError,
    Preprocessing,
    TransformersBackbone,
    fallback_preprocessing,
    preprocessing_from_processor,
)
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
from scratch_diffusion.metrics.evaluation import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    ReferenceSplit,
    evaluate_samples,
    noise_images,
    reference_split,
)
from scratch_diffusion.metrics.feature_spaces import DigitsFeatures, feature_extractor, is_plugin_name
from scratch_diffusion.metrics.frechet import (
    FeatureExtractor,
    frechet_distance,
    frechet_distance_from_features,
    frechet_distance_from_statistics,
    gaussian_statistics,
)
from scratch_diffusion.metrics.kernel import KernelDistance, kernel_distance_from_features, polynomial_mmd2
from scratch_diffusion.metrics.sources import load_image_folder, load_pipeline, sample_pipeline
from scratch_diffusion.metrics.summary import markdown_summary

__all__ = [
    "CACHE_ENV_VAR",
    "CLASSIFIER_RECIPE",
    "DEFAULT_CONFIDENCE_THRESHOLD",
    "NUM_CLASSES",
    "RESOLUTION",
    "BackboneUnavailableError",
    "DigitsCNN",
    "DigitsClassifier",
    "DigitsFeatures",
    "DigitsSplit",
    "FeatureExtractor",
    "KernelDistance",
    "Preprocessing",
    "ReferenceSplit",
    "TransformersBackbone",
    "build_parser",
    "check_args",
    "classifier_path",
    "default_cache_dir",
    "digits_images",
    "digits_split",
    "evaluate_samples",
    "fallback_preprocessing",
    "feature_extractor",
    "frechet_distance",
    "frechet_distance_from_features",
    "frechet_distance_from_statistics",
    "gaussian_statistics",
    "images_from_numpy",
    "is_plugin_name",
    "kernel_distance_from_features",
    "load_digits_classifier",
    "load_image_folder",
    "load_pipeline",
    "main",
    "markdown_summary",
    "noise_images",
    "polynomial_mmd2",
    "preprocessing_from_processor",
    "recipe_hash",
    "reference_split",
    "sample_pipeline",
    "to_classifier_input",
    "train_digits_classifier",
]
