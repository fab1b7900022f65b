"""``UNet2DModel`` presets and JSON configs.

A preset or JSON config fixes the architecture; the data fixes ``sample_size`` (the resolution),
``in_channels``/``out_channels`` and, with class conditioning, ``num_class_embeds`` = classes + 1
(the last index is the null class of classifier-free guidance, as the pipeline expects). A latent run
builds the UNet for the VAE's latents: ``sample_size`` = resolution / the VAE's factor, and its
``latent_channels`` (``cli_latents.py`` refuses a JSON config that fixes other channels).
"""

from __future__ import annotations

import inspect
import json
import os

from diffusers import UNet2DModel

PRESETS: dict[str, dict] = {
    # ~0.16 M parameters, two levels, no attention: autoguidance's guide for the demo's compact UNet on 1×8×8 latents
    # (one evaluation ≈ 0.37× compact's; the best guide measured, benchmarks/bench_guidance.py --search).
    "micro": {
        "block_out_channels": (16, 32),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D"),
        "norm_num_groups": 8,
        "add_attention": False,
    },
    # ~0.7 M parameters: smoke tests and quick CPU runs at 16×16.
    "tiny": {
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
        "norm_num_groups": 8,
        "attention_head_dim": 8,
    },
    # ~1.1 M parameters, three levels (16→8→4 at 16×16) with attention only at the coarsest: more context than
    # tiny at a lower cost per step (its 8×8 attention is what costs); the demo's UNet (benchmarks/bench_recipes.py).
    "compact": {
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "norm_num_groups": 8,
        "attention_head_dim": 8,
    },
    # ~6 M parameters: digits-quality samples at 16×16 to 32×32.
    "small": {
        "block_out_channels": (64, 128, 128),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "norm_num_groups": 32,
        "attention_head_dim": 8,
    },
    # ~37 M parameters: 32×32 to 64×64 colour images, on a GPU.
    "base": {
        "block_out_channels": (128, 256, 256, 256),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "norm_num_groups": 32,
        "attention_head_dim": 8,
    },
}
DATA_KEYS = ("sample_size", "in_channels", "out_channels", "num_class_embeds")


def load_model_config(
    name_or_path: str,
    presets: dict[str, dict],
    class_name: str,
    *,
    what: str,
    preset_noun: str = "preset",
    needs_blocks: bool = False,
) -> dict:
    """The architecture of a preset name in ``presets``, a JSON file, or a folder holding ``config.json``.

    ``class_name`` is the diffusers class the config must describe (``_class_name``, if it has one);
    ``what`` names it in messages ("a UNet2DModel"); ``preset_noun`` names the presets ("VAE preset");
    with ``needs_blocks`` the config must list its ``block_out_channels`` (else it may leave the default).
    The keys starting with ``_`` (diffusers' metadata) are dropped.

    Raises:
        ValueError: an unknown preset name, or a file that is not such a JSON config.
    """
    if name_or_path in presets:
        return dict(presets[name_or_path])
    where = f"--model_config_name_or_path {name_or_path!r}"
    path = os.path.join(name_or_path, "config.json") if os.path.isdir(name_or_path) else name_or_path
    if not os.path.isfile(path):
        raise ValueError(
            f"{where} is neither a {preset_noun} ({', '.join(presets)}) nor a JSON config file or folder with "
            "config.json."
        )
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{where}: not a readable JSON file ({err}).") from None
    blocks = config.get("block_out_channels", None if needs_blocks else ()) if isinstance(config, dict) else None
    if not isinstance(blocks, (list, tuple)):
        needed = " (it needs a block_out_channels list)" if needs_blocks else ""
        raise ValueError(f"{where} is not {what} config{needed}.")
    found = config.get("_class_name", class_name)
    if found != class_name:
        raise ValueError(f"{where} describes a {found}, not {what}.")
    return {k: v for k, v in config.items() if not k.startswith("_")}


def load_unet_config(name_or_path: str) -> dict:
    """A ``UNet2DModel`` architecture: a preset name (:data:`PRESETS`), a JSON file, or a folder with config.json.

    Raises:
        ValueError: an unknown preset name, or a file that is not a UNet2DModel JSON config.
    """
    return load_model_config(name_or_path, PRESETS, "UNet2DModel", what="a UNet2DModel")


def min_resolution(config: dict) -> int:
    """The UNet halves the image once per down block but the last: sides must divide by 2^(blocks−1)."""
    default = inspect.signature(UNet2DModel.__init__).parameters["down_block_types"].default
    blocks = config.get("down_block_types") or default
    return 2 ** (len(blocks) - 1)


def build_unet(name_or_path: str, resolution: int, num_channels: int, num_classes: int | None = None) -> UNet2DModel:
    """A freshly initialised ``UNet2DModel`` (uses the global torch RNG: call ``set_seed`` first)."""
    config = load_unet_config(name_or_path)
    config.update(
        sample_size=resolution,
        in_channels=num_channels,
        out_channels=num_channels,
        num_class_embeds=None if num_classes is None else num_classes + 1,
    )
    return UNet2DModel.from_config(config)
