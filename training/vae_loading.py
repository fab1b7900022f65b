"""The frozen ``AutoencoderKL`` of a latent run: its config, weights, identity, and where it comes from.

The config is read raw (``AutoencoderKL.load_config``: the file as written, no defaults filled in), so a
``scaling_factor`` the file does not state is seen as missing — diffusers would fill in Stable Diffusion's
0.18215, which is wrong for a VAE trained elsewhere. Weights load from safetensors only, in float32.
Every failure is a :class:`ConfigError` naming the path and the error, raised before training.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import torch

from scratch_diffusion.pipelines.loading import looks_like_local_path

from .errors import ConfigError

VAE_CLASS = "AutoencoderKL"
HUB_URL = "https://huggingface.co"
# Config keys that do not change what the encoder computes: the latent scale is applied after the cache.
NOT_IDENTITY_KEYS = ("_name_or_path", "_diffusers_version", "_use_default_values", "scaling_factor", "shift_factor")


def _where(name_or_path: str, subfolder: str | None) -> str:
    return f"--vae_name_or_path {name_or_path!r}" + (f" (--vae_subfolder {subfolder!r})" if subfolder else "")


def _one_line(err: Exception) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def load_vae_config(name_or_path: str, subfolder: str | None = None) -> dict:
    """The VAE's ``config.json`` as written (local folder, or Hub repo: online or from the cache offline)."""
    from diffusers import AutoencoderKL

    if looks_like_local_path(name_or_path) and not os.path.isdir(name_or_path):
        raise ConfigError(f"{_where(name_or_path, subfolder)}: no such folder; pass a VAE folder or a Hub repo id.")
    if subfolder and os.path.isdir(name_or_path) and not os.path.isdir(os.path.join(name_or_path, subfolder)):
        # diffusers would fall back to the folder's own config.json
        raise ConfigError(f"{_where(name_or_path, subfolder)}: the folder has no subfolder {subfolder!r}.")
    try:
        config = dict(AutoencoderKL.load_config(name_or_path, subfolder=subfolder))
    except Exception as err:  # diffusers / huggingface_hub raise many types; all mean "no VAE config here"
        raise ConfigError(f"{_where(name_or_path, subfolder)} could not be loaded: {_one_line(err)}") from None
    class_name = config.get("_class_name", VAE_CLASS)
    if class_name != VAE_CLASS or not isinstance(config.get("block_out_channels"), (list, tuple)):
        raise ConfigError(
            f"{_where(name_or_path, subfolder)} describes a {class_name}; allowed: an {VAE_CLASS} "
            "(its latent_dist gives the posterior mean and std)."
        )
    return config


def load_vae(name_or_path: str, subfolder: str | None = None):
    """The ``AutoencoderKL`` in float32 on the CPU, frozen (``eval``, no gradients)."""
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(
            name_or_path, subfolder=subfolder, torch_dtype=torch.float32, use_safetensors=True
        )
    except Exception as err:
        raise ConfigError(
            f"{_where(name_or_path, subfolder)} could not be loaded (weights are read from safetensors only): "
            f"{_one_line(err)}"
        ) from None
    vae.requires_grad_(False)
    return vae.eval()


def vae_fingerprint(vae) -> str:
    """SHA-256 of what the encoder computes with: the config (the latent scale excluded) and every weight."""
    digest = hashlib.sha256()
    config = {k: v for k, v in vae.config.items() if k not in NOT_IDENTITY_KEYS}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in vae.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class VaeSource:
    """What a model card says about the VAE: its name, license and source ("unknown" where no card states one)."""

    name: str  # a Hub repo id, or a local folder's name (no local paths in a card)
    license: str
    source: str
    subfolder: str | None = None

    def markdown(self) -> str:
        where = f"`{self.name}`" + (f" (subfolder `{self.subfolder}`)" if self.subfolder else "")
        return f"{where}; license: {self.license}; source: {self.source}"


def vae_source(name_or_path: str, subfolder: str | None = None) -> VaeSource:
    """The VAE's license and source from the model card (``README.md``) of its folder or Hub repo.

    Read from the folder, or fetched from the Hub (offline: from the cache, where ``from_pretrained`` does
    not put it unless it was downloaded before). The source is the Hub page, or for a local folder the
    card's ``base_model`` / ``datasets`` when it states them.
    """
    from huggingface_hub import ModelCard

    local = os.path.isdir(name_or_path)
    name = os.path.basename(os.path.normpath(name_or_path)) if local else name_or_path
    if local:  # the subfolder's own card first (a VAE folder inside a pipeline folder), then the folder's
        folders = ([os.path.join(name_or_path, subfolder)] if subfolder else []) + [name_or_path]
        where = next((f for f in folders if os.path.isfile(os.path.join(f, "README.md"))), None)
        where = None if where is None else os.path.join(where, "README.md")
    else:
        where = name_or_path  # the repo's card, at its root
    try:
        card = ModelCard.load(where) if where is not None else None
    except Exception:  # offline without the card in the cache, or unparsable: the card says "unknown"
        card = None
    data = card.data.to_dict() if card is not None else {}
    license_name = data.get("license_name") if data.get("license") == "other" else None
    license = str(license_name or data.get("license") or "unknown")
    if not local:
        source = f"{HUB_URL}/{name_or_path}"
    else:
        datasets = data.get("datasets") or []
        datasets = [datasets] if isinstance(datasets, str) else list(datasets)
        stated = ([f"base model {data['base_model']}"] if data.get("base_model") else []) + (
            [f"trained on {', '.join(map(str, datasets))}"] if datasets else []
        )
        source = "a local folder" + (f" ({'; '.join(stated)})" if stated else "")
    return VaeSource(name, license, source, subfolder)
