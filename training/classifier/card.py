"""The model card (``README.md``) of a trained noise-aware classifier: what it guides, its accuracy by noise level.

Built with ``huggingface_hub.ModelCard`` like the UNet's and the VAE's cards, with their helpers: only
:func:`~scratch_diffusion.training.model_card.public_hyperparameters` reach it (no token, no local paths).
"""

from __future__ import annotations

import json

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..model_card import model_name, public_hyperparameters, shareable
from ..objectives import unused_objective_arguments

TASK = "image-classification"
# Arguments that do not describe the trained classifier.
NOT_IN_CARD = {"output_dir", "logging_dir", "logger", "resume_from_checkpoint", "push_to_hub", "hub_model_id",
               "hub_private_repo", "hub_token", "license", "cache_dir", "dataloader_num_workers", "num_epochs",
               "max_train_steps", "class_conditional", "latent_cache_dir", "vae_batch_size", "prediction_type",
               "snr_gamma"}  # fmt: skip
LATENT_ARGS = {"vae_name_or_path", "vae_subfolder", "vae_sample_posterior", "latent_scaling_factor"}


def describe(record: dict) -> str:
    """One line: the accuracy in each σ bin."""
    bins = ", ".join(f"σ∈[{r['sigma_low']:g}, {r['sigma_high']:g}) {r['accuracy']:.3f}" for r in record["by_noise"])
    return f"accuracy on {record['n_images']} {record['evaluated_on']} images by noise level: {bins}"


def usage_snippet(model_id: str, channels: int, side: int) -> str:
    """Python that loads ``model_id`` and classifies a batch of noisy samples at one timestep."""
    return f"""import torch
from scratch_diffusion.guidance.noisy_classifier import NoisyClassifier

classifier = NoisyClassifier.from_pretrained({json.dumps(model_id)})
x_t = torch.randn(4, {channels}, {side}, {side})  # noisy samples at the diffusion model's timestep t
log_probs = classifier(x_t, torch.full((4,), 500.0)).log_softmax(dim=-1)  # log p(y | x_t)
"""


def card_hyperparameters(args) -> dict:
    """:func:`public_hyperparameters` without what did not apply to this run."""
    unused = set(NOT_IN_CARD) | unused_objective_arguments(args)
    if args.vae_name_or_path is None or args.pipeline is not None:  # a pipeline's VAE is named by --pipeline
        unused |= LATENT_ARGS
    if not args.use_ema:
        unused |= {"ema_max_decay", "ema_inv_gamma", "ema_power"}
    return {k: v for k, v in public_hyperparameters(args).items() if k not in unused}


def build_classifier_card(args, record: dict, model_id: str, data_description: str, hub_dataset_id: str | None):
    """The card of a finished run; ``record`` is what ``classifier_metrics.json`` holds."""
    name = model_name(args)
    dataset_type = hub_dataset_id or ("imagefolder" if args.train_data_dir or args.dataset_name else "sklearn-digits")
    results = [
        EvalResult(
            task_type=TASK,
            dataset_type=dataset_type,
            dataset_name=data_description,
            metric_type="accuracy",
            metric_value=row["accuracy"],
            metric_name=f"accuracy, σ = b/a in [{row['sigma_low']:g}, {row['sigma_high']:g}), {record['evaluated_on']}",
        )
        for row in record["by_noise"]
    ]
    data = ModelCardData(
        library_name="diffusers",
        license=args.license,
        tags=["diffusers", "diffusers-training", "scratch-diffusion", "noise-aware-classifier", "classifier-guidance"],
        datasets=[hub_dataset_id] if hub_dataset_id else None,
        eval_results=results,
        model_name=name,
    )
    channels, side, _ = record["input_shape"]
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in sorted(card_hyperparameters(args).items()))
    table = "\n".join(
        f"| [{r['sigma_low']:g}, {r['sigma_high']:g}) | {r['timestep_low']:.4g} – {r['timestep_high']:.4g} "
        f"| {r['accuracy']:.3f} | {r['n']} |"
        for r in record["by_noise"]
    )
    guided = f"the pipeline `{shareable(args.pipeline, is_path=True)}`" if args.pipeline else "a diffusion model"
    space = record["space"]
    content = f"""---
{data.to_yaml()}
---

# {name}

A noise-aware classifier p(y | x_t) ({record["num_classes"]} classes, {record["num_parameters"] / 1e6:.2f} M
parameters) for classifier guidance (Dhariwal & Nichol, 2021) of {guided}: the encoder of a `UNet2DModel` with a
pooling head (`NoisyClassifier`), trained with cross-entropy on {record["n_training_images"]} images of
{data_description}, noised on the {record["noise_path"]!r} path (`noise_schedule`
{json.dumps(record["noise_schedule"])}) at the diffusion model's noise levels: {record["time_distribution"]} (from
{record["time_distribution_source"]}). It reads {space} of shape {channels}×{side}×{side} and
the diffusion UNet's own timestep. The weights are the exponential moving average (EMA) of
training{"" if args.use_ema else " — here EMA was off, so they are the raw weights"}. License: `{args.license}`.

## Usage

```python
{usage_snippet(model_id, channels, side).rstrip()}
```

## Evaluation

Accuracy on {record["n_images"]} {record["evaluated_on"]} images after step {record["step"]}, {record["draws"]} noisy
copies per image per bin of the noise level σ = b/a = exp(−λ) (log σ uniform in the bin); chance is
{1 / record["num_classes"]:.3f}. On the training distribution of noise levels: {record["accuracy"]:.3f}.

| σ = b/a | timesteps | accuracy | n |
|---|---|---|---|
{table}

{"![accuracy by noise level](" + record["plot"] + ")" if record.get("plot") else ""}

## Training

| hyperparameter | value |
|---|---|
{rows}
"""
    return ModelCard(content)
