"""``UNet2DModel`` presets and JSON configs.

A preset or JSON config fixes the architecture; the data fixes ``sample_size`` (the resolution),
``in_channels``/``out_channels`` and, with class conditioning, ``num_class_embeds`` = classes + 1
(the last index is the null class of classifier-free guidance, as the pipeline expects).
"""

from __future__ import annotations

import inspect
import json
import os

from diffusers import UNet2DModel

PRESETS: dict[str, dict] = {
    # ~0.7 M parameters: smoke tests and quick CPU runs at 16×16.
    "tiny": {
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
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


def load_unet_config(name_or_path: str) -> dict:
    """The architecture of a preset name, a JSON file, or a folder holding ``config.json``.

    Raises:
        ValueError: an unknown preset name, or a file that is not a UNet2DModel JSON config.
    """
    if name_or_path in PRESETS:
        return dict(PRESETS[name_or_path])
    path = os.path.join(name_or_path, "config.json") if os.path.isdir(name_or_path) else name_or_path
    if not os.path.isfile(path):
        raise ValueError(
            f"--model_config_name_or_path {name_or_path!r} is neither a preset ({', '.join(PRESETS)}) "
            "nor a JSON config file or folder with config.json."
        )
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--model_config_name_or_path {name_or_path!r}: not a readable JSON file ({err}).") from None
    if not isinstance(config, dict) or not isinstance(config.get("block_out_channels", ()), (list, tuple)):
        raise ValueError(f"--model_config_name_or_path {name_or_path!r} is not a UNet2DModel config.")
    class_name = config.get("_class_name", "UNet2DModel")
    if class_name != "UNet2DModel":
        raise ValueError(f"--model_config_name_or_path {name_or_path!r} describes a {class_name}, not a UNet2DModel.")
    return {k: v for k, v in config.items() if not k.startswith("_")}


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
