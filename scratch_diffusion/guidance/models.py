"""The second networks guidance uses — autoguidance's guide, classifier guidance's classifier — checked and called.

A guide or classifier must see what the main model sees: the same noise path and training schedule (the same
timestep means the same noise level), the same sample size and space (pixels, or one VAE's latents), and for a
classifier the classes the labels name. Each check runs when a rule is bound, before any model evaluation, and
names the mismatch. A bare ``UNet2DModel`` cannot state its path (its config has no such key): it is taken to be
the pipeline's (a ``guide_unet`` component is saved with it); pass the guide's pipeline to have its path checked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from .setup import GuidanceSetup, ModelFunction


def _config(model: object) -> Mapping | None:
    config = getattr(model, "config", None)
    return config if isinstance(config, Mapping) else None


def check_same_space(name: str, config: Mapping, sample_shape: tuple[int, ...]) -> None:
    """``config``'s sample size and channels are the main model's ``sample_shape`` (resolution, latent space)."""
    channels, *size = sample_shape
    sample_size = config.get("sample_size")
    if sample_size is not None:
        given = [sample_size] * 2 if isinstance(sample_size, int) else list(sample_size)
        if given != size:
            raise ValueError(f"the {name} has sample_size={sample_size!r}, but the model samples {tuple(size)}.")
    if config.get("in_channels", channels) != channels:
        raise ValueError(
            f"the {name} takes in_channels={config['in_channels']}, but the model's samples have {channels} channels "
            "(a guide or classifier of another latent space or of pixels?)."
        )


def check_same_path(name: str, config: Mapping, setup: GuidanceSetup) -> None:
    """``config``'s recorded noise path and schedule (where it records them) are the main model's."""
    path = config.get("noise_path")
    if path is not None and path != setup.parametrization.path:
        raise ValueError(
            f"the {name} was trained on the {path!r} path, the model on {setup.parametrization.path!r}; "
            "allowed: one of the model's own path."
        )
    schedule = config.get("noise_schedule")
    if schedule is not None and setup.noise_schedule is not None and dict(schedule) != dict(setup.noise_schedule):
        raise ValueError(
            f"the {name}'s noise_schedule {dict(schedule)} differs from the model's {dict(setup.noise_schedule)}; "
            "its timesteps would mean other noise levels."
        )


def guide_function(guide: object, setup: GuidanceSetup) -> tuple[ModelFunction, bool]:
    """The guide as ``fn(x, t, conditions)`` and whether it takes the class labels, after every check."""
    pipeline_config = _config(guide) if hasattr(guide, "unet") else None
    if pipeline_config is not None:  # a pipeline of ours: its path, parametrisation and space are known
        check_same_path("guide pipeline", pipeline_config, setup)
        if pipeline_config.get("prediction_type") not in (None, setup.parametrization.prediction_type):
            raise ValueError(
                f"the guide pipeline predicts {pipeline_config['prediction_type']!r}, the model "
                f"{setup.parametrization.prediction_type!r}; allowed: a guide of the same parametrisation."
            )
        if (getattr(guide, "vae", None) is None) != (setup.decode is None):
            raise ValueError("the guide pipeline and the model differ in space (one has a VAE, the other not).")
        guide = guide.unet
    config = _config(guide)
    if config is None:
        if not callable(guide):
            raise TypeError(f"guide={guide!r} is not allowed; pass a UNet2DModel, a pipeline or a callable.")
        takes_labels = "class_labels" in setup.model_conditions
        return (lambda x, t, conditions: guide(x, t, **conditions)), takes_labels
    check_same_space("guide UNet", config, setup.sample_shape)
    if config.get("out_channels", setup.sample_shape[0]) != setup.sample_shape[0]:
        raise ValueError(
            f"the guide UNet outputs {config['out_channels']} channels; the model {setup.sample_shape[0]}."
        )
    classes = config.get("num_class_embeds")
    if classes is not None and (setup.null_class is None or classes != setup.null_class + 1):
        model_classes = (
            "an unconditional model" if setup.null_class is None else f"{setup.null_class + 1} class embeddings"
        )
        raise ValueError(
            f"the guide UNet has num_class_embeds={classes}, the model {model_classes}; allowed: the same classes, "
            "or an unconditional guide."
        )
    unet = guide

    def call(x: torch.Tensor, t: torch.Tensor, conditions: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return unet(x.to(unet.dtype), t, **conditions).sample

    return call, classes is not None


def check_classifier_classes(classes: int, model_classes: int | None, model: str) -> None:
    """A class-conditional ``model`` (``model_classes`` real classes; None: unconditional) and its classifier agree."""
    if model_classes is not None and classes != model_classes:
        raise ValueError(
            f"the classifier knows {classes} classes, the class-conditional {model} {model_classes}; "
            f"allowed: a classifier of the {model}'s classes."
        )


def classifier_function(
    classifier: object, setup: GuidanceSetup
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The classifier as ``fn(x, t) -> logits`` after every check (its classes against the labels included)."""
    config = _config(classifier)
    if config is None:
        if not callable(classifier):
            raise TypeError(f"classifier={classifier!r} is not allowed; pass a NoisyClassifier or a callable.")
        return classifier
    check_same_space("classifier", config, setup.sample_shape)
    check_same_path("classifier", config, setup)
    classes = config.get("num_classes")
    if classes is not None:
        check_classifier_classes(classes, setup.null_class, "model")
        if setup.labels is not None and setup.labels.device.type == "cpu" and bool((setup.labels >= classes).any()):
            raise ValueError(
                f"class labels {setup.labels.tolist()} name classes the classifier does not know; allowed: "
                f"integers in [0, {classes - 1}]."
            )
    dtype = getattr(classifier, "dtype", None)
    return lambda x, t: classifier(x if dtype is None else x.to(dtype), t)


def unet_sample_shape(unet_config: Mapping) -> tuple[int, int, int]:
    """(C, H, W) of the samples a UNet with ``unet_config`` denoises."""
    size = unet_config["sample_size"]
    height, width = (size, size) if isinstance(size, int) else size
    return (unet_config["in_channels"], height, width)


def check_guide_fits_unet(guide: object, unet_config: Mapping) -> None:
    """The ``guide_unet`` component denoises the UNet's samples, with its classes or none (pipeline row check)."""
    num_classes = unet_config.get("num_class_embeds")
    setup = GuidanceSetup(
        parametrization=None,
        sample_shape=unet_sample_shape(unet_config),
        null_class=None if num_classes is None else num_classes - 1,
    )
    guide_function(guide, setup)


def check_classifier_fits_unet(classifier: object, unet_config: Mapping) -> None:
    """The ``classifier`` component sees the UNet's samples and, for a conditional UNet, knows its classes."""
    check_same_space("classifier", classifier.config, unet_sample_shape(unet_config))
    num_class_embeds, classes = unet_config.get("num_class_embeds"), classifier.config.get("num_classes")
    if classes is not None:
        check_classifier_classes(classes, None if num_class_embeds is None else num_class_embeds - 1, "UNet")
