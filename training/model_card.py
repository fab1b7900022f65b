"""The model card (``README.md``) written next to the saved pipeline.

Built with ``huggingface_hub.ModelCard``/``ModelCardData``: YAML metadata, a usage snippet, the
sample grid and the hyperparameters. Only :func:`public_hyperparameters` reach the card (and the
tensorboard hparams): the Hub token is dropped and local paths are reduced to their last component.
"""

from __future__ import annotations

import json
import os

from huggingface_hub import ModelCard, ModelCardData

from .export import usage_snippet

SECRET_ARGS = ("hub_token",)
PATH_ARGS = ("output_dir", "train_data_dir", "cache_dir", "logging_dir", "resume_from_checkpoint")
OBJECTIVE_TAGS = {"ddpm": "ddpm", "flow": "flow-matching"}


def public_hyperparameters(args, **extra) -> dict:
    """The command line as shareable scalars: no secrets, no local absolute paths, no None."""
    public = {}
    for key, value in {**vars(args), **extra}.items():
        if key in SECRET_ARGS or value is None:
            continue
        if isinstance(value, str) and (key in PATH_ARGS or os.path.isabs(value) or os.path.exists(value)):
            value = os.path.basename(os.path.normpath(value)) or value
        public[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return public


def card_hyperparameters(args, **extra) -> dict:
    """:func:`public_hyperparameters` without the ones that did not apply to this run."""
    unused = {"output_dir", "logging_dir", "logger", "resume_from_checkpoint", "push_to_hub", "hub_model_id"}
    unused |= {"hub_private_repo", "license", "cache_dir", "dataloader_num_workers", "num_epochs", "max_train_steps"}
    if args.objective == "flow":
        unused |= {"prediction_type", "ddpm_beta_schedule", "rescale_betas_zero_snr", "snr_gamma"}
    else:
        unused |= {"weighting_scheme", "logit_mean", "logit_std", "flow_shift"}
    if args.objective == "flow" and args.weighting_scheme == "uniform":
        unused |= {"logit_mean", "logit_std"}
    if not args.class_conditional:
        unused |= {"class_dropout_prob", "label_column"}
    if not args.use_ema:
        unused |= {"ema_max_decay", "ema_inv_gamma", "ema_power"}
    return {k: v for k, v in public_hyperparameters(args, **extra).items() if k not in unused}


def objective_description(args) -> str:
    if args.objective == "flow":
        shift = f", shift {args.flow_shift:g}" if args.flow_shift != 1 else ""
        return f"flow matching (velocity ε − x0, {args.weighting_scheme} σ{shift})"
    snr = f", min-SNR-{args.snr_gamma:g} weighting" if args.snr_gamma else ""
    return f"the DDPM objective ({args.prediction_type} prediction, {args.ddpm_beta_schedule} β schedule{snr})"


def build_model_card(
    args,
    *,
    model_id: str,
    data_description: str,
    hub_dataset_id: str | None,
    num_classes: int | None,
    num_parameters: int,
    hyperparameters: dict,
    sample_grid: str | None = "samples.png",
) -> ModelCard:
    """The card of a finished run; ``model_id`` is the Hub repo id or the output folder's name."""
    tags = ["diffusers", "diffusers-training", "scratch-diffusion", "unconditional-image-generation"]
    tags.append(OBJECTIVE_TAGS[args.objective])
    if num_classes is not None:
        tags.append("class-conditional")
    data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        license=args.license,
        tags=tags,
        datasets=[hub_dataset_id] if hub_dataset_id else None,
    )
    conditioning = (
        f"class-conditional ({num_classes} classes, label dropout {args.class_dropout_prob:g} "
        "for classifier-free guidance)"
        if num_classes is not None
        else "unconditional"
    )
    rows = "\n".join(f"| `{key}` | `{value}` |" for key, value in sorted(hyperparameters.items()))
    samples = (
        f"\n## Samples\n\n![{args.eval_batch_size} samples from the EMA weights]({sample_grid})\n"
        if sample_grid
        else ""
    )
    name = " ".join(model_id.split("/")[-1].split())  # one line: a folder name may hold newlines
    content = f"""---
{data.to_yaml()}
---

# {name}

An {conditioning} `UNet2DModel` ({num_parameters / 1e6:.2f} M parameters, {args.resolution}×{args.resolution})
trained from scratch on {data_description} with {objective_description(args)}, using
scratch-diffusion's `training/train.py`. The weights are the exponential moving average
(EMA) of training{"" if args.use_ema else " — here EMA was off, so they are the raw weights"}.

## Usage

Install `scratch-diffusion` (it brings `diffusers`), then:

```python
{usage_snippet(model_id, num_classes, args.ddpm_num_inference_steps).rstrip()}
```

`diffusers` alone also loads it: `DiffusionPipeline.from_pretrained({json.dumps(model_id)}, trust_remote_code=True)`.
{samples}
## Training

| hyperparameter | value |
|---|---|
{rows}
"""
    return ModelCard(content)


def save_model_card(card: ModelCard, output_dir: str) -> str:
    path = os.path.join(output_dir, "README.md")
    card.save(path)
    return path
