"""The model card (``README.md``) of a trained VAE: data, architecture, losses, metrics, license and usage.

Built with ``huggingface_hub.ModelCard`` like the UNet's card, and with its helpers: only
:func:`~scratch_diffusion.training.model_card.public_hyperparameters` reach it (no token, no local paths).
The PSNR and reconstruction FD also go into the ``model-index`` metadata.
"""

from __future__ import annotations

import json

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..model_card import model_name, public_hyperparameters, save_model_card, shareable

__all__ = ["build_vae_card", "describe", "public_hyperparameters", "save_model_card", "usage_snippet"]

TASK = "image-to-image"  # the Hub's closest task for an autoencoder
# Arguments that do not describe the trained model (or do not apply without their feature).
NOT_IN_CARD = {"output_dir", "logging_dir", "logger", "resume_from_checkpoint", "push_to_hub", "hub_model_id",
               "hub_private_repo", "hub_token", "license", "cache_dir", "dataloader_num_workers", "num_epochs",
               "max_train_steps", "class_conditional", "label_column"}  # fmt: skip
ADVERSARIAL_ARGS = {"adversarial_start_step", "discriminator_layers", "discriminator_channels",
                    "discriminator_learning_rate"}  # fmt: skip


def describe(record: dict, source: str) -> str:
    """One line: PSNR and reconstruction FD beside the real baseline."""
    return (
        f"reconstruction PSNR {record['psnr']:.2f} dB on {record['n_images']} {source} images; FD of reconstructions "
        f"{record['fd']:.4g} vs. real baseline {record['fd_real_baseline']:.4g} ({shareable(record['feature_space'])})"
    )


def loss_description(args) -> str:
    terms = [f"{args.reconstruction_loss.upper()} reconstruction", f"KL (β = {args.kl_weight:g})"]
    if args.perceptual_weight > 0:
        terms.append(f"perceptual ({shareable(args.perceptual_features)} features, weight {args.perceptual_weight:g})")
    if args.adversarial_weight > 0:
        terms.append(
            f"PatchGAN hinge adversarial (weight {args.adversarial_weight:g}, from step {args.adversarial_start_step}, "
            f"{args.discriminator_layers}-layer discriminator trained from scratch)"
        )
    return " + ".join(terms)


def usage_snippet(model_id: str, num_channels: int, resolution: int) -> str:
    """Python that loads ``model_id`` and encodes / decodes a batch with the recorded latent scale."""
    return f"""import torch
from diffusers import AutoencoderKL

vae = AutoencoderKL.from_pretrained({json.dumps(model_id)})
images = torch.rand(4, {num_channels}, {resolution}, {resolution}) * 2 - 1  # your images, in [-1, 1]
with torch.no_grad():
    latents = vae.encode(images).latent_dist.mean * vae.config.scaling_factor  # unit-variance latents
    reconstructions = vae.decode(latents / vae.config.scaling_factor).sample
"""


def _card_hyperparameters(args) -> dict:
    unused = set(NOT_IN_CARD)
    if args.adversarial_weight == 0:
        unused |= ADVERSARIAL_ARGS
    if args.perceptual_weight == 0:
        unused.add("perceptual_features")
    if not args.use_ema:
        unused |= {"ema_max_decay", "ema_inv_gamma", "ema_power"}
    return {k: v for k, v in public_hyperparameters(args).items() if k not in unused}


def build_vae_card(
    args, record: dict, model_id: str, data_description: str, hub_dataset_id: str | None, grid_file: str
) -> ModelCard:
    """The card of a finished VAE run; ``record`` is what ``vae_metrics.json`` holds."""
    name = model_name(args)
    space = shareable(record["feature_space"])
    dataset_type = hub_dataset_id or ("imagefolder" if args.train_data_dir or args.dataset_name else "sklearn-digits")
    results = [
        EvalResult(
            task_type=TASK,
            dataset_type=dataset_type,
            dataset_name=data_description,
            metric_type=metric,
            metric_value=record[key],
            metric_name=label,
            metric_config=config,
        )
        for key, metric, label, config in (
            ("psnr", "psnr", f"reconstruction PSNR (dB, {record['evaluated_on']} images)", None),
            ("fd", "frechet_distance", f"FD of reconstructions ({space} features)", space),
        )
    ]
    data = ModelCardData(
        library_name="diffusers",
        license=args.license,
        tags=["diffusers", "diffusers-training", "scratch-diffusion", "autoencoder", "vae", "latent-diffusion"],
        datasets=[hub_dataset_id] if hub_dataset_id else None,
        eval_results=results,
        model_name=name,
    )
    channels, side, _ = record["latent_shape"]
    scale = record["latent_scale"]
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in sorted(_card_hyperparameters(args).items()))
    held_out = (
        "held out of training" if record["evaluated_on"] == "held-out" else "from the training set (none held out)"
    )
    baseline_ratio = f"{record['fd_ratio']:.3g}" if record["fd_ratio"] is not None else "n/a"
    shift = "" if scale.get("shift_factor") is None else ", recorded as `shift_factor`: z = (E(x) − shift)·scale"
    init_from = getattr(args, "init_from", None)
    origin = "from scratch" if init_from is None else f"starting from `{shareable(init_from)}`"
    kid = f"{record['kid']:.3g}" + (f" ± {record['kid_std']:.2g}" if record["kid_std"] is not None else "")
    content = f"""---
{data.to_yaml()}
---

# {name}

An `AutoencoderKL` (a KL-regularised VAE, {record["num_parameters"] / 1e6:.2f} M parameters) trained {origin} on
{data_description} with scratch-diffusion's `training/train_vae.py`. It maps {args.resolution}×{args.resolution} images
to latents of shape {channels}×{side}×{side} (downsampling factor {record["downsampling_factor"]}). Loss:
{loss_description(args)}. The weights are the exponential moving average (EMA) of
training{"" if args.use_ema else " — here EMA was off, so they are the raw weights"}. License: `{args.license}`.

The latent scale is measured, as in the LDM paper (Rombach et al., 2022, §4.3.2): `scaling_factor` =
1 / std of the posterior means of {scale["n_images"]} training images = **{scale["scaling_factor"]:.5g}** (std
{scale["latent_std"]:.4g}, mean {scale["latent_mean"]:.3g}{shift}). It is saved in `config.json`, where latent
diffusion pipelines read it.

## Usage

```python
{usage_snippet(model_id, record["image_channels"], args.resolution).rstrip()}
```

Train a latent diffusion model on it: `accelerate launch training/train.py --vae_name_or_path {model_id} ...`.

## Evaluation

On {record["n_images"]} images {held_out}, after step {record["step"]}, reconstructing from the posterior mean:

| metric | value | real baseline |
|---|---|---|
| PSNR (dB, [0, 1] scale, mean over images) | {record["psnr"]:.2f} | — |
| FD of reconstructions, `{space}` | {record["fd"]:.4g} | {record["fd_real_baseline"]:.4g} (ratio {baseline_ratio}) |
| KID of reconstructions (± std over subsets) | {kid} | {record["kid_real_baseline"]:.3g} |

The evaluation images are split into a reference ({record["n_reference"]} images) and the rest
({record["n_reconstructed"]}); the FD compares the reconstructions of the rest with the reference, the baseline the
same rest unreconstructed: FD ≈ baseline means the reconstructions are as close to the data as the data itself.

![real | reconstruction]({grid_file})

## Training

| hyperparameter | value |
|---|---|
{rows}
"""
    return ModelCard(content)
