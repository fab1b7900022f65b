"""``AutoencoderKL`` presets and JSON configs, named like the UNet's (``training/models.py``).

A preset or JSON config fixes the architecture; the data fixes ``in_channels`` / ``out_channels`` and
``sample_size`` (the resolution), and ``--latent_channels`` may override the preset's. The downsampling
factor f = 2^(blocks − 1): an image of side R becomes latents of side R / f (Rombach et al., 2022, §3).
"""

from __future__ import annotations

from diffusers import AutoencoderKL

from ..models import load_model_config

VAE_PRESETS: dict[str, dict] = {
    # f = 2, ~0.6 M parameters: tests and the 16×16 digits (latents 4×8×8) on a CPU.
    "tiny": {
        "block_out_channels": (32, 64),
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "mid_block_add_attention": False,
    },
    # f = 4, ~4 M parameters: 32–64 px images (latents 4×8×8 to 4×16×16).
    "small": {
        "block_out_channels": (64, 128, 128),
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
    },
    # f = 8, ~84 M parameters: the KL-f8 layout of Stable Diffusion's VAE, for 256 px and up on a GPU.
    "sd-like": {
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
    },
}


def load_vae_config(name_or_path: str) -> dict:
    """An ``AutoencoderKL`` architecture: a preset name, a JSON file, or a folder holding ``config.json``.

    Raises:
        ValueError: an unknown preset, or a file that is not an ``AutoencoderKL`` JSON config.
    """
    config = load_model_config(name_or_path, VAE_PRESETS, "AutoencoderKL", what="an AutoencoderKL",
                               preset_noun="VAE preset", needs_blocks=True)  # fmt: skip
    blocks = len(config["block_out_channels"])
    for key in ("down_block_types", "up_block_types"):
        if key in config and len(config[key]) != blocks:
            raise ValueError(
                f"--model_config_name_or_path {name_or_path!r}: {key} has {len(config[key])} entries for {blocks} "
                "block_out_channels."
            )
    return config


def downsampling_factor(config: dict) -> int:
    """Pixels per latent along a side: the encoder halves the image once per block but the last."""
    return 2 ** (len(config["block_out_channels"]) - 1)


def build_vae(
    name_or_path: str, resolution: int, num_channels: int, latent_channels: int | None = None
) -> AutoencoderKL:
    """A freshly initialised ``AutoencoderKL`` (uses the global torch RNG: call ``set_seed`` first)."""
    config = load_vae_config(name_or_path)
    config.update(sample_size=resolution, in_channels=num_channels, out_channels=num_channels)
    if latent_channels is not None:
        config["latent_channels"] = latent_channels
    return AutoencoderKL.from_config(config)
