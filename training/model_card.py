"""The model card (``README.md``) written next to the saved pipeline.

Built with ``huggingface_hub.ModelCard``/``ModelCardData``: YAML metadata, a usage snippet, the
sample grid, the hyperparameters and, for a run with ``--eval_steps``, the evaluation results: a
table and the Hub's ``model-index`` metadata (``EvalResult``s, which ``ModelCard.load`` parses back
into ``card.data.eval_results``). Only :func:`public_hyperparameters` reach the card (and the
tensorboard hparams): the Hub token is dropped and local paths are reduced to their last component.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .evaluation import EvaluationRecord
from .export import usage_snippet
from .objectives import objective_class, unused_objective_arguments

if TYPE_CHECKING:
    from .latent_data import LatentTraining

SECRET_ARGS = ("hub_token",)
PATH_ARGS = (
    "output_dir", "train_data_dir", "cache_dir", "logging_dir", "resume_from_checkpoint", "latent_cache_dir",
    "init_from",
)  # fmt: skip
LATENT_ARGS = ("vae_subfolder", "vae_sample_posterior", "latent_scaling_factor")
TASK = "unconditional-image-generation"
METRICS = (("fd", "FD"), ("kid", "KID"))  # (key in evaluate_samples' result, label)


def shareable(value: str, is_path: bool = False) -> str:
    """``value``, or its last path component if it is (or names) a local path: no local folders in a card."""
    if is_path or os.path.isabs(value) or os.path.exists(value):
        return os.path.basename(os.path.normpath(value)) or value
    return value


def public_hyperparameters(args, **extra) -> dict:
    """The command line as shareable scalars: no secrets, no local absolute paths, no None."""
    public = {}
    for key, value in {**vars(args), **extra}.items():
        if key in SECRET_ARGS or value is None:
            continue
        if isinstance(value, str):
            value = shareable(value, is_path=key in PATH_ARGS)
        public[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return public


def card_hyperparameters(args, **extra) -> dict:
    """:func:`public_hyperparameters` without the ones that did not apply to this run."""
    unused = {"output_dir", "logging_dir", "logger", "resume_from_checkpoint", "push_to_hub", "hub_model_id"}
    unused |= {"hub_private_repo", "license", "cache_dir", "dataloader_num_workers", "num_epochs", "max_train_steps"}
    unused |= {"latent_cache_dir", "vae_batch_size"}
    if getattr(args, "vae_name_or_path", None) is None:
        unused |= set(LATENT_ARGS)
    unused |= unused_objective_arguments(args)
    if not args.class_conditional:
        unused |= {"class_dropout_prob", "label_column"}
    if not args.use_ema:
        unused |= {"ema_max_decay", "ema_inv_gamma", "ema_power"}
    if not args.eval_steps:
        unused |= {"eval_num_samples", "eval_sampler", "eval_num_inference_steps", "eval_features", "save_best"}
    return {k: v for k, v in public_hyperparameters(args, **extra).items() if k not in unused}


def latent_section(latents: LatentTraining | None) -> str:
    """The card's "Autoencoder" section of a latent run: which VAE (license, source), the scale, the encoding."""
    if latents is None:
        return ""
    target = "one draw from the posterior per image per epoch" if latents.sample_posterior else "the posterior mean"
    mirrors = " and of its mirror image (random flips)" if latents.flips else ""
    return f"""
## Autoencoder

The UNet denoises {latents.channels}×{latents.size}×{latents.size} latents of a frozen `AutoencoderKL`
({latents.factor}× downsampling): {latents.source.markdown()}.
It is saved in `vae/` with the pipeline, which decodes the samples. Training used {target} of each image's
centre crop{mirrors}, scaled by s = {latents.scale:.6g} — {latents.scale_source} — recorded as
`scaling_factor` in `vae/config.json`.
"""


def model_name(args) -> str:
    """The card's title: ``--hub_model_id``'s name part, else the ``--output_dir`` folder's name (one line)."""
    name = args.hub_model_id.split("/")[-1] if args.hub_model_id else os.path.basename(os.path.abspath(args.output_dir))
    return " ".join(name.split())  # a folder name may hold newlines


def _value(metrics: dict, key: str) -> str:
    std = metrics.get(f"{key}_std")
    return f"{metrics[key]:.4g}" + (f" ± {std:.2g}" if std is not None else "")


def _evaluated(final: EvaluationRecord | None, best: EvaluationRecord | None) -> list[tuple[str, EvaluationRecord]]:
    runs = [("final", final)] if final is not None else []
    if best is not None:
        runs.append(("best", best))
    return [(f"{which} (step {record.step})", record) for which, record in runs]


def results_section(
    final: EvaluationRecord | None, best: EvaluationRecord | None, num_classes: int | None, use_ema: bool
) -> str:
    """The card's "Evaluation" section: one row per (weights, metric); empty without evaluations."""
    evaluated = _evaluated(final, best)
    if not evaluated:
        return ""
    rows = []
    for weights, record in evaluated:
        scored = [(record.num_inference_steps, record.metrics)]
        scored += [(int(steps), m) for steps, m in record.other_steps.items()]
        for steps, m in sorted(scored, key=lambda pair: pair[0]):
            for key, label in METRICS:
                baseline = _value(m, f"{key}_real_baseline")
                rows.append(
                    f"| {weights} | {label} | {_value(m, key)} | {baseline} | {record.sampler} | {steps} | {m['n']} |"
                )
    m = evaluated[0][1].metrics
    space = shareable(m["feature_space"])
    labels = "" if num_classes is None else f", unguided, with labels cycling through the {num_classes} classes"
    kept = "" if best is None else " The best weights (lowest FD) are saved in `best/`, with `evaluation.json`."
    table = "\n".join(rows)
    return f"""
## Evaluation

Measured during training (`--eval_steps`): n images sampled from the {"EMA" if use_ema else "raw"} weights{labels},
against a reference of {m["n_reference"]} real training images (a fixed seeded subset), in the `{space}`
feature space; lower is better. The real baseline is the same metric for n real training images outside the
reference (mean ± std over {m["baseline_draws"]} draws): what a perfect model scores at this n (FD is biased upward
at small n; KID is unbiased, about 0 for real data).{kept}

| weights | metric | value | real baseline | sampler | steps | n |
|---|---|---|---|---|---|---|
{table}
"""


def eval_results(
    final: EvaluationRecord | None, best: EvaluationRecord | None, dataset_type: str, dataset_name: str
) -> list[EvalResult] | None:
    """The ``model-index`` entries of the evaluations (FD and KID of the final and the best weights)."""
    results = [
        EvalResult(
            task_type=TASK,
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            metric_type=key,
            metric_value=record.metrics[key],
            metric_name=f"{label} ({shareable(record.metrics['feature_space'])} features), {weights}",
            metric_config=shareable(record.metrics["feature_space"]),
            metric_args={
                "n": record.metrics["n"],
                "sampler": record.sampler,
                "num_inference_steps": record.num_inference_steps,
                "real_baseline": record.metrics[f"{key}_real_baseline"],
            },
        )
        for weights, record in _evaluated(final, best)
        for key, label in METRICS
    ]
    return results or None


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
    final_evaluation: EvaluationRecord | None = None,
    best_evaluation: EvaluationRecord | None = None,
    latents: LatentTraining | None = None,
) -> ModelCard:
    """The card of a finished run; ``model_id`` is the Hub repo id or the output folder's name.

    ``final_evaluation`` / ``best_evaluation`` (``--eval_steps`` / ``--save_best``) add the results;
    ``latents`` (``--vae_name_or_path``) the VAE, its license and source, and the latent scale.
    """
    name = model_name(args)
    results = eval_results(
        final_evaluation, best_evaluation, hub_dataset_id or _local_dataset_type(args), data_description
    )
    tags = ["diffusers", "diffusers-training", "scratch-diffusion", TASK]
    tags.append(objective_class(args.objective).tag)
    if num_classes is not None:
        tags.append("class-conditional")
    if latents is not None:
        tags.append("latent-diffusion")
    data = ModelCardData(
        library_name="diffusers",
        pipeline_tag=TASK,
        license=args.license,
        tags=tags,
        datasets=[hub_dataset_id] if hub_dataset_id else None,
        eval_results=results,
        model_name=name if results else None,  # the model-index entry's name
    )
    conditioning = (
        f"A class-conditional diffusion model ({num_classes} classes, label dropout {args.class_dropout_prob:g} "
        "for classifier-free guidance)"
        if num_classes is not None
        else "An unconditional diffusion model"
    )
    rows = "\n".join(f"| `{key}` | `{value}` |" for key, value in sorted(hyperparameters.items()))
    shape = f"{args.resolution}×{args.resolution}"
    if latents is not None:
        shape = f"on {latents.channels}×{latents.size}×{latents.size} latents of {shape} images"
    init_from = getattr(args, "init_from", None)
    objective = objective_class(args.objective)
    origin = "from scratch" if init_from is None else f"starting from the UNet of `{shareable(init_from)}`"
    if init_from is not None and objective.few_step:
        origin = f"from the teacher `{shareable(init_from)}` (its UNet is the start)"
    samples = (
        f"\n## Samples\n\n![{args.eval_batch_size} samples from the EMA weights]({sample_grid})\n"
        if sample_grid
        else ""
    )
    content = f"""---
{data.to_yaml()}
---

# {name}

{conditioning}: {objective.model_description} ({num_parameters / 1e6:.2f} M parameters, {shape})
trained {origin} on {data_description} with {objective.describe(args)}, using
scratch-diffusion's `training/train.py`. The weights are the exponential moving average
(EMA) of training{"" if args.use_ema else " — here EMA was off, so they are the raw weights"}.

## Usage

Install `scratch-diffusion` (it brings `diffusers`), then:

```python
{usage_snippet(model_id, num_classes, args.ddpm_num_inference_steps).rstrip()}
```

`diffusers` alone also loads it: `DiffusionPipeline.from_pretrained({json.dumps(model_id)}, trust_remote_code=True)`.
{latent_section(latents)}{samples}{results_section(final_evaluation, best_evaluation, num_classes, args.use_ema)}
## Training

| hyperparameter | value |
|---|---|
{rows}
"""
    return ModelCard(content)


def _local_dataset_type(args) -> str:
    """A ``model-index`` dataset type for data that is no Hub dataset."""
    return "imagefolder" if args.train_data_dir or args.dataset_name else "sklearn-digits"


def save_model_card(card: ModelCard, output_dir: str) -> str:
    path = os.path.join(output_dir, "README.md")
    card.save(path)
    return path
