"""Choosing a feature space by name: the digits CNN, DINOv2 or any ``transformers`` backbone, or a plug-in.

One entry point, :func:`feature_extractor`, shared by the metrics CLI, the trainer's evaluation and
the demo. Names:

=============================  ===================================================================
``digits`` (default)           the digits classifier's 64-d penultimate features
``dinov2``                     alias for ``facebook/dinov2-small`` (Stein et al., 2023)
a folder or a Hub id           any ``transformers`` image backbone (:class:`TransformersBackbone`)
``package.module:factory``     a plug-in: ``factory(**options)`` returns a :class:`FeatureExtractor`
                               (it gets ``device`` / ``batch_size`` / ``dtype`` if it accepts them)
=============================  ===================================================================

Every extractor returned carries a ``name`` (and ``__name__``) for reports.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import re
from pathlib import Path

import torch

from scratch_diffusion.metrics.frechet import FeatureExtractor

DIGITS = "digits"
DEFAULT_FEATURE_SPACE = DIGITS
ALIASES = {"dinov2": "facebook/dinov2-small"}
_PLUGIN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class DigitsFeatures:
    """The digits classifier's penultimate features as a named :class:`FeatureExtractor` (cached CNN)."""

    name = __name__ = "digits-classifier"

    def __init__(self, cache_dir: str | os.PathLike | None = None) -> None:
        from scratch_diffusion.metrics.cache import load_digits_classifier

        self.classifier = load_digits_classifier(cache_dir)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


def is_plugin_name(name: str) -> bool:
    """``package.module:callable`` (and not an existing path)."""
    return bool(_PLUGIN.match(name)) and not Path(name).exists()


def _load_plugin(name: str, options: dict) -> FeatureExtractor:
    module_name, _, attribute = name.partition(":")
    try:
        factory = importlib.import_module(module_name)
        for part in attribute.split("."):
            factory = getattr(factory, part)
    except (ImportError, AttributeError) as error:
        problem = f"cannot import {attribute!r} from {module_name!r} ({error})"
        raise ValueError(f"feature space {name!r}: {problem}.") from error
    if not callable(factory):
        raise TypeError(f"feature space {name!r}: {attribute} is a {type(factory).__name__}, not a callable.")
    parameters = inspect.signature(factory).parameters.values()
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    accepted = {p.name for p in parameters}
    extractor = factory(**{k: v for k, v in options.items() if takes_any or k in accepted})
    if not callable(extractor):
        raise TypeError(f"feature space {name!r}: {attribute}() returned {type(extractor).__name__}, not a callable.")
    if not hasattr(extractor, "name"):
        with contextlib.suppress(AttributeError):  # a builtin or slotted object: reports use its type's name
            extractor.name = getattr(extractor, "__name__", name)
    return extractor


def feature_extractor(
    name: str = DEFAULT_FEATURE_SPACE,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    dtype: torch.dtype | str | None = None,
) -> FeatureExtractor:
    """The feature extractor called ``name`` (see the module docstring), ready to use.

    ``device`` (default: cuda if available, else cpu), ``batch_size`` and ``dtype`` (default float32)
    apply to transformers backbones and are offered to plug-ins; the digits CNN runs on the CPU.
    A backbone that is neither a local folder nor in the Hugging Face cache while offline raises
    :class:`~scratch_diffusion.metrics.backbones.BackboneUnavailableError`, naming it and how to get it.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"feature space {name!r}; allowed: 'digits', 'dinov2', a backbone folder or Hub id, "
                         "or 'package.module:callable'.")  # fmt: skip
    name = name.strip()
    if name == DIGITS:
        return DigitsFeatures()
    if is_plugin_name(name):
        return _load_plugin(name, {"device": device, "batch_size": batch_size, "dtype": dtype})
    from scratch_diffusion.metrics.backbones import TransformersBackbone

    return TransformersBackbone(ALIASES.get(name, name), device=device, batch_size=batch_size, dtype=dtype)
