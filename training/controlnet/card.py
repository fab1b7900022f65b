"""The model card (``README.md``) of a trained control network: what it steers, with what control, how well.

Built with ``huggingface_hub.ModelCard`` like the other trainers' cards, with their helpers: only
:func:`~scratch_diffusion.training.model_card.public_hyperparameters` reach it (no token, no local paths).
"""

from __future__ import annotations

import json

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..model_card import model_name, public_hyperparameters, shareable
from ..objectives import unused_objective_arguments
from .evaluation import describe

__all__ = ["build_controlnet_card", "card_hyperparameters", "describe", "usage_snippet"]

TASK = "image-to-image"
# Arguments that do not describe the trained network.
NOT_IN_CARD = {"output_dir", "logging_dir", "logger", "resume_from_checkpoint", "push_to_hub", "hub_model_id",
               "hub_private_repo", "hub_token", "license", "cache_dir", "dataloader_num_workers", "num_epochs",
               "max_train_steps", "class_conditional", "latent_cache_dir", "vae_batch_size", "vae_name_or_path",
               "vae_subfolder", "latent_scaling_factor", "control_dir", "attach"}  # fmt: skip


def card_hyperparameters(args) -> dict:
    """:func:`public_hyperparameters` without what did not apply to this run."""
    unused = set(NOT_IN_CARD) | unused_objective_arguments(args)
    if args.vae_name_or_path is None:
        unused.add("vae_sample_posterior")
    if not args.use_ema:
        unused |= {"ema_max_decay", "ema_inv_gamma", "ema_power"}
    if not args.class_conditional:
        unused |= {"class_dropout_prob", "label_column"}
    if args.control != "low_resolution":
        unused.add("low_resolution_factor")
    if not args.eval_num_samples:
        unused.add("eval_num_inference_steps")
    return {k: v for k, v in public_hyperparameters(args).items() if k not in unused}


def usage_snippet(model_id: str, pipeline_id: str, record: dict) -> str:
    """Python that loads the pipeline with ``model_id`` as its ``controlnet`` and samples 4 images with controls.

    A pipeline folder saved with ``--attach`` already holds the network; passing it explicitly also serves one
    without (and a network on the Hub). As many steps as the evaluation took, else the pipeline call's default.
    """
    control_channels, control_side, _ = record["control_shape"]
    labels = f", class_labels=torch.arange(4) % {record['num_classes']}" if record["num_classes"] else ""
    steps = f"num_inference_steps={record['num_inference_steps']}, " if "num_inference_steps" in record else ""
    return f"""import torch
from scratch_diffusion.control import ControlNet2DModel
from scratch_diffusion.pipelines import ScratchDiffusionPipeline

controlnet = ControlNet2DModel.from_pretrained({json.dumps(model_id)})
pipe = ScratchDiffusionPipeline.from_pretrained({json.dumps(pipeline_id)}, controlnet=controlnet)
control = torch.rand(4, {control_channels}, {control_side}, {control_side})  # control images in [0, 1] at image size
images = pipe(
    batch_size=4, {steps}generator=torch.Generator().manual_seed(0), control_image=control,
    controlnet_conditioning_scale=1.0{labels}, output_type="pt",
).images  # (4, C, H, W) in [0, 1]; controlnet_conditioning_scale=0 samples the frozen UNet alone
"""


def _results(record: dict, dataset_type: str, dataset_name: str) -> list[EvalResult]:
    rows = [("loss_with_control", "loss with the control"), ("loss_without_control", "loss of the frozen UNet")]
    rows += [("consistency_with_control", "MSE(transform(sample), control), with the control"),
             ("consistency_without_control", "MSE(transform(sample), control), frozen UNet")]  # fmt: skip
    return [
        EvalResult(
            task_type=TASK,
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            metric_type="mse",
            metric_value=record[key],
            metric_name=f"{name}, {record['evaluated_on']}",
        )
        for key, name in rows
        if key in record
    ]


def build_controlnet_card(args, record: dict, model_id: str, data_description: str, hub_dataset_id: str | None):
    """The card of a finished run; ``record`` is what ``controlnet_metrics.json`` holds."""
    name = model_name(args)
    dataset_type = hub_dataset_id or ("imagefolder" if args.train_data_dir or args.dataset_name else "sklearn-digits")
    data = ModelCardData(
        library_name="diffusers",
        license=args.license,
        tags=["diffusers", "diffusers-training", "scratch-diffusion", "controlnet", f"control-{record['control']}"],
        datasets=[hub_dataset_id] if hub_dataset_id else None,
        eval_results=_results(record, dataset_type, data_description),
        model_name=name,
    )
    pipeline_id = shareable(args.pipeline, is_path=True)
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in sorted(card_hyperparameters(args).items()))
    nan = float("nan")
    table = "\n".join(
        f"| {h['step']} | {h['loss_with_control']:.4f} | {h['loss_without_control']:.4f} | "
        f"{h.get('consistency_with_control', nan):.4g} | {h.get('consistency_without_control', nan):.4g} |"
        for h in record["history"]
    )
    ema = "" if args.use_ema else " — here EMA was off, so they are the raw weights"
    labels = f", and a label by the null class with probability {args.class_dropout_prob:g}" if (
        args.class_conditional) else ""  # fmt: skip
    frozen = "UNet and VAE" if args.vae_name_or_path else "UNet"
    figure = f"![controls, samples with them, samples without, real images]({record['figure']})" if record.get(
        "figure") else ""  # fmt: skip
    channels, side, _ = record["sample_shape"]
    control_channels, control_side, _ = record["control_shape"]
    content = f"""---
{data.to_yaml()}
---

# {name}

A control network (ControlNet, Zhang et al., 2023; `ControlNet2DModel`, {record["num_parameters"] / 1e6:.2f} M
parameters) for the frozen UNet of the pipeline `{pipeline_id}`: a trainable copy of that UNet's encoder whose
zero-initialised 1×1 convolutions add residuals to the UNet's skip connections and mid block. It reads a control
image of shape {control_channels}×{control_side}×{control_side} in [0, 1] ({record["control_description"]}) beside
the UNet's input ({channels}×{side}×{side} {record["space"]}). Trained on {record["n_training_images"]} examples of
{data_description} with the pipeline's own objective ({record["objective"]}; times: {record["time_distribution"]},
from {record["time_distribution_source"]}), the {frozen} frozen; the control was replaced by zeros (the empty
control) with probability {args.control_dropout_prob:g}{labels}. The weights are the exponential
moving average (EMA) of training{ema}. License: `{args.license}`.

## Usage

```python
{usage_snippet(model_id, pipeline_id, record).rstrip()}
```

## Evaluation

{describe(record)}. The loss is the pipeline's objective on the same seeded noise draws with the control network
and with the frozen UNet alone; the consistency is MSE(transform(sample), control) of images the pipeline samples
with held-out controls (`pipe(control_image=...)`) and without them (the same initial noise).

| step | loss with control | loss without | consistency with control | consistency without |
|---|---|---|---|---|
{table}

{figure}

## Training

| hyperparameter | value |
|---|---|
{rows}
"""
    return ModelCard(content)
