"""Starting a run from a saved model's weights (``--init_from``) instead of a fresh initialisation.

``train.py --init_from PIPELINE`` starts the UNet from a saved ``ScratchDiffusionPipeline`` (a folder written by
``train.py`` / ``save_pretrained``, or its Hub repo id): the ``unet/`` config and weights, exactly as saved (for
fine-tuning, consistency tuning, a frozen ControlNet base, autoguidance's guide). ``train_vae.py --init_from VAE``
does the same for an ``AutoencoderKL`` folder, or a pipeline folder holding one in ``vae/``. Any trainer that
starts from saved weights calls :func:`load_unet_from_pipeline` / :func:`load_vae_for_training`, and refuses
misfits with the ``check_*`` functions here before its first step.

What must fit, each refused with a :class:`ConfigError` naming the value and the allowed one:

* the UNet's parametrisation (its path and prediction type, as the pipeline records them) is the objective's;
* its ``sample_size`` is the side the run trains at (the resolution, or a latent run's latent side), its
  ``in_channels`` / ``out_channels`` the data's, its ``num_class_embeds`` the classes + 1 (or none, unconditional);
* the VAE's ``in_channels`` are the data's, ``--resolution`` divides by its downsampling factor, and
  ``--latent_channels`` (if given) is its ``latent_channels``.

Weights load from safetensors only, in float32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from scratch_diffusion.pipelines.loading import looks_like_local_path
from scratch_schedulers import Parametrization

from .errors import ConfigError
from .errors import check as _check

PIPELINE_INDEX = "model_index.json"
UNET_CLASSES = ("UNet2DModel", "FlowMapUNet2DModel")  # what a pipeline's unet/ may hold to start a run from


def _one_line(err: Exception) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _where(name_or_path: str) -> str:
    return f"--init_from {name_or_path!r}"


@dataclass(frozen=True)
class SavedUNet:
    """A saved pipeline's UNet, as its configs describe it (no weights loaded)."""

    name_or_path: str
    config: dict  # unet/config.json
    parametrization: Parametrization  # from model_index.json: what the UNet predicts, on which path


def read_saved_unet(name_or_path: str) -> SavedUNet:
    """The UNet config and parametrisation of a saved pipeline (local folder or Hub repo id); configs only."""
    from diffusers import DiffusionPipeline, UNet2DModel

    where = _where(name_or_path)
    if looks_like_local_path(name_or_path) or os.path.exists(name_or_path):
        _check(os.path.isdir(name_or_path), f"{where}: no such folder; pass a saved pipeline folder or a Hub repo id.")
        _check(
            os.path.isfile(os.path.join(name_or_path, PIPELINE_INDEX)),
            f"{where} holds no {PIPELINE_INDEX}; pass the folder a training run wrote (its --output_dir) or a "
            "folder saved by ScratchDiffusionPipeline.save_pretrained.",
        )
    try:
        index = dict(DiffusionPipeline.load_config(name_or_path))
        config = dict(UNet2DModel.load_config(name_or_path, subfolder="unet"))
    except Exception as err:  # diffusers / huggingface_hub raise many types; all mean "no such pipeline here"
        raise ConfigError(f"{where} could not be read as a pipeline with a unet/: {_one_line(err)}") from None
    prediction_type, path = index.get("prediction_type"), index.get("noise_path")
    _check(
        prediction_type is not None and path is not None,
        f"{where} ({index.get('_class_name', 'no _class_name')}) does not record what its UNet predicts "
        "(prediction_type and noise_path in model_index.json); allowed: a ScratchDiffusionPipeline folder.",
    )
    _check(
        config.get("_class_name", "UNet2DModel") in UNET_CLASSES,
        f"{where}: unet/ holds a {config.get('_class_name')}; allowed: {' or '.join(UNET_CLASSES)}.",
    )
    return SavedUNet(name_or_path, config, Parametrization(path, prediction_type))


def check_parametrization(saved: SavedUNet, trained: Parametrization, objective: str) -> None:
    """The saved UNet predicts what the objective trains (same path, same prediction type)."""
    _check(
        saved.parametrization == trained,
        f"{_where(saved.name_or_path)}: its UNet predicts {saved.parametrization.prediction_type!r} on the "
        f"{saved.parametrization.path!r} path, but --objective {objective} trains {trained.prediction_type!r} on the "
        f"{trained.path!r} path; allowed: a pipeline whose UNet predicts {trained.prediction_type!r} on the "
        f"{trained.path!r} path (or the objective arguments that train what it predicts).",
    )


def check_unet_side(config: dict, name_or_path: str, side: int) -> None:
    """The UNet was built for the side this run trains at (``sample_size``)."""
    _check(
        config.get("sample_size") == side,
        f"{_where(name_or_path)}: its UNet was built for sample_size {config.get('sample_size')}, but this run trains "
        f"at side {side} (--resolution, or a latent run's latent side); allowed: sample_size {side}.",
    )


def check_unet_fits(config: dict, name_or_path: str, side: int, channels: int, num_classes: int | None) -> None:
    """The UNet's ``sample_size``, channels and class embeddings are this run's (``num_classes`` None: no labels)."""
    where = _where(name_or_path)
    check_unet_side(config, name_or_path, side)
    for key in ("in_channels", "out_channels"):
        _check(
            config.get(key) == channels,
            f"{where}: its UNet has {key} {config.get(key)}, but the training data have {channels} channel(s); "
            f"allowed: {key} {channels}.",
        )
    embeds = None if num_classes is None else num_classes + 1  # the last index is the null class of guidance
    stated = config.get("num_class_embeds")
    if embeds is None:
        allowed = "an unconditional UNet (num_class_embeds None), or --class_conditional with its classes"
    else:
        allowed = f"num_class_embeds {embeds} ({num_classes} classes + the null class)"
    _check(
        stated == embeds,
        f"{where}: its UNet has num_class_embeds {stated}, but this run is "
        f"{'unconditional' if num_classes is None else f'conditioned on {num_classes} classes'}; allowed: {allowed}.",
    )


def load_unet_from_pipeline(name_or_path: str):
    """The UNet of a saved pipeline (``unet/``: a ``UNet2DModel``, or a flow map's ``FlowMapUNet2DModel``), float32,
    its weights exactly as saved, in train mode."""
    from diffusers import UNet2DModel

    from scratch_diffusion.few_step.flow_map_unet import FlowMapUNet2DModel

    try:
        name = UNet2DModel.load_config(name_or_path, subfolder="unet").get("_class_name", "UNet2DModel")
        unet_class = FlowMapUNet2DModel if name == FlowMapUNet2DModel.__name__ else UNet2DModel
        unet = unet_class.from_pretrained(
            name_or_path, subfolder="unet", torch_dtype=torch.float32, use_safetensors=True
        )
    except Exception as err:
        raise ConfigError(
            f"{_where(name_or_path)}: its unet/ could not be loaded (weights are read from safetensors only): "
            f"{_one_line(err)}"
        ) from None
    return unet.train()


def vae_subfolder(name_or_path: str) -> str | None:
    """``"vae"`` when ``name_or_path`` is a local pipeline folder (it has ``model_index.json``), else None."""
    return "vae" if os.path.isfile(os.path.join(name_or_path, PIPELINE_INDEX)) else None


def read_saved_vae_config(name_or_path: str) -> dict:
    """The ``AutoencoderKL`` config of a VAE folder, a pipeline folder's ``vae/``, or a Hub repo id; configs only."""
    from diffusers import AutoencoderKL

    where = _where(name_or_path)
    if looks_like_local_path(name_or_path) or os.path.exists(name_or_path):
        _check(os.path.isdir(name_or_path), f"{where}: no such folder; pass a VAE folder, a pipeline folder with "
               "vae/, or a Hub repo id.")  # fmt: skip
    subfolder = vae_subfolder(name_or_path)
    try:
        config = dict(AutoencoderKL.load_config(name_or_path, subfolder=subfolder))
    except Exception as err:
        raise ConfigError(f"{where} could not be read as an AutoencoderKL folder: {_one_line(err)}") from None
    _check(
        config.get("_class_name", "AutoencoderKL") == "AutoencoderKL"
        and isinstance(config.get("block_out_channels"), (list, tuple)),
        f"{where} describes a {config.get('_class_name')}; allowed: an AutoencoderKL.",
    )
    return config


def load_vae_for_training(name_or_path: str):
    """The ``AutoencoderKL`` of a VAE folder (or a pipeline folder's ``vae/``), float32, trainable, in train mode."""
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(
            name_or_path, subfolder=vae_subfolder(name_or_path), torch_dtype=torch.float32, use_safetensors=True
        )
    except Exception as err:
        raise ConfigError(
            f"{_where(name_or_path)} could not be loaded (weights are read from safetensors only): {_one_line(err)}"
        ) from None
    return vae.train()


def check_vae_fits(config: dict, name_or_path: str, channels: int) -> None:
    """The VAE takes images of the data's ``channels``."""
    for key in ("in_channels", "out_channels"):
        _check(
            config.get(key) == channels,
            f"{_where(name_or_path)}: the VAE has {key} {config.get(key)}, but the training data have {channels} "
            f"channel(s); allowed: {key} {channels}.",
        )
