"""The classifier training loop: :func:`train_classifier` and :func:`run_classifier_training`.

It reads like the UNet and VAE trainers and uses their pieces: accelerate state, the launch check and the optimizer
update (``loop``), the data with its labels (``load_training_data``, the epoch-seeded sampler, ``augment``), a latent
pipeline's cached latents (``latent_data``), counter-based draws (``randomness``), AdamW and EMA
(``optimization``), atomic checkpoints with exact resume (``checkpoints``), the throughput timer and loss log
(``monitoring``), the held-out split (``vae.metrics``) and the Hub repo and push (``hub``). Its own: the objective
only draws x_t (``Objective.noised``, the diffusion model's path and time distribution) and the loss is the
cross-entropy of :class:`~scratch_diffusion.guidance.noisy_classifier.NoisyClassifier`'s logits.

Exact resume: the crop/flip and the draw of (t, ε) of each micro-batch come from a generator seeded by (``--seed``,
epoch, batch, process); the evaluations use private generators under ``private_randomness``, so a resumed run ends
with bit-identical weights.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger

from scratch_diffusion.guidance.noisy_classifier import NoisyClassifier

from .. import checkpoints, hub
from ..data import DataError, augment, centre_crop, load_training_data, make_dataloader
from ..errors import ConfigError
from ..evaluation import private_randomness
from ..latent_data import latent_input, prepare_latent_training
from ..loop import Optimized, OptimizerUpdates, evaluation_due, finish_run, prepare_model, resumed_batches, start_run
from ..model_card import save_model_card
from ..monitoring import TrainingSummary
from ..optimization import ema_weights, keep_ema_weights
from ..randomness import derive_seed, seeded_generator
from ..trainer import OutputWriteError
from ..vae.metrics import split_validation, validation_size
from . import card
from .cli import MAX_DEFAULT_VALIDATION, VALIDATION_SHARE, classifier_architecture, parse_args, validate_args
from .evaluation import accuracy_by_noise_level, accuracy_on_training_distribution, plot_accuracy_by_noise
from .source import describe_time_distribution, make_classifier_objective, read_pipeline

logger = get_logger(__name__)
METRICS_FILE = "classifier_metrics.json"
PLOT_FILE = "accuracy_by_noise.png"


def run_classifier_training(argv: Sequence[str]) -> TrainingSummary:
    """Train as ``train_classifier.py`` would with these arguments, in this process; returns when it is saved."""
    args = parse_args(list(argv))
    validate_args(args)
    return train_classifier(args)


def evaluation_samples(dataset, latent: bool, resolution: int, limit: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Clean samples of ``dataset`` with their labels — all, or a seeded subset of ``limit`` — as centre crops in
    [−1, 1], or a latent pipeline's (scaled) posterior means."""
    indices = list(range(len(dataset)))
    if len(dataset) > limit:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(derive_seed(seed, "eval-subset")))
        indices = order[:limit].sort().values.tolist()
    batch = dataset.__getitems__(indices)
    x0 = batch["mean"] if latent else centre_crop(batch["images"], resolution)
    return x0, batch["labels"]


class AccuracyEvaluator:
    """Accuracy by noise level of the (EMA) classifier on the fixed evaluation samples, on the main process."""

    def __init__(self, args, objective, x0: torch.Tensor, labels: torch.Tensor, source: str):
        self.args, self.objective, self.x0, self.labels, self.source = args, objective, x0, labels, source
        self.history: list[dict] = []
        self.seconds = self.cpu_seconds = 0.0

    def __call__(self, accelerator, model, ema, step: int) -> None:
        start, cpu_start = time.perf_counter(), time.process_time()
        if accelerator.is_main_process:
            classifier = accelerator.unwrap_model(model)
            classifier.eval()
            seed = derive_seed(self.args.seed, "classifier-evaluation")
            with ema_weights(ema, classifier), private_randomness(accelerator.device):
                rows = accuracy_by_noise_level(classifier, self.x0, self.labels, self.args.noise_level_edges,
                                               self.args.eval_noise_draws, seed)  # fmt: skip
                overall = accuracy_on_training_distribution(
                    classifier, self.objective, self.x0, self.labels, self.args.eval_noise_draws, seed
                )
            classifier.train()
            record = {"step": step, "accuracy": overall, "by_noise": rows}
            self.history.append(record)
            logged = {f"eval/accuracy σ∈[{r['sigma_low']:g},{r['sigma_high']:g})": r["accuracy"] for r in rows}
            accelerator.log({"eval/accuracy": overall, **logged}, step=step)
            described = card.describe({**record, "n_images": len(self.x0), "evaluated_on": self.source})
            logger.info(f"Step {step}: {described}", main_process_only=True)
        accelerator.wait_for_everyone()
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.process_time() - cpu_start


def train_classifier(args: argparse.Namespace) -> TrainingSummary:
    """Run classifier training as the (validated) command line says; returns when the output is saved."""
    accelerator = start_run(args, "training/train_classifier.py")  # --seed: the classifier's initial weights
    saved = read_pipeline(args.pipeline) if args.pipeline is not None else None

    # ---- data: labelled images (or a latent pipeline's latents), split into training and held-out ---------
    with accelerator.main_process_first():
        data = load_training_data(args)
    if data.num_classes is None or data.num_classes < 2:
        raise DataError(f"{data.description} has {data.num_classes} classes; a classifier needs labels of ≥ 2.")
    if saved is not None and saved.num_classes not in (None, data.num_classes):
        raise ConfigError(
            f"--pipeline {args.pipeline!r} is conditioned on {saved.num_classes} classes, but {data.description} has "
            f"{data.num_classes}; allowed: the data the pipeline was trained on (its classes)."
        )
    latents = None
    if args.vae_name_or_path is not None:
        with private_randomness(accelerator.device):  # loading and encoding draw nothing from training's RNG
            latents = prepare_latent_training(args, data, accelerator)
    dataset = data.dataset if latents is None else latents.dataset
    num_validation = validation_size(args.num_validation_images, len(dataset), VALIDATION_SHARE, MAX_DEFAULT_VALIDATION)
    train_set, held_out = split_validation(dataset, num_validation, args.seed)
    eval_set = held_out if held_out is not None else train_set
    eval_x0, eval_labels = evaluation_samples(eval_set, latents is not None, args.resolution, args.eval_num_images,
                                              args.seed)  # fmt: skip
    dataloader = make_dataloader(train_set, args.train_batch_size, args.seed, args.dataloader_num_workers)

    # ---- the objective (its draw of x_t only), classifier, optimizer, EMA -------------------------------------
    objective, noise_schedule = make_classifier_objective(args, saved)
    side, channels = (args.resolution, data.num_channels) if latents is None else (latents.size, latents.channels)
    classifier = NoisyClassifier.from_unet_config(
        classifier_architecture(args, saved), data.num_classes, objective.parametrization.path, noise_schedule,
        sample_size=side, in_channels=channels,
    )  # fmt: skip
    num_parameters = sum(p.numel() for p in classifier.parameters())
    prepared = prepare_model(accelerator, classifier, dataloader, args)
    model, optimizer, dataloader, ema, lr_scheduler, progress, length = prepared
    _, max_train_steps, num_epochs, total_batch_size = length

    # ---- resume, Hub repo, trackers -----------------------------------------------------------------
    checkpoints.resume(accelerator, args.output_dir, args.resume_from_checkpoint, ema)
    repo_id = hub.create_repo_before_training(accelerator, args)
    accelerator.init_trackers("train_classifier", config=card.public_hyperparameters(args))
    source = "held-out" if held_out is not None else "training"
    evaluator = AccuracyEvaluator(args, objective, eval_x0, eval_labels, source)
    space = "pixels" if latents is None else f"latents of {latents.source.name}"
    logger.info(
        f"{data.description}{'' if latents is None else ' as ' + latents.description}: {len(train_set)} training "
        f"examples, {num_validation} held out; {total_batch_size} per step; {max_train_steps} steps ({num_epochs} "
        f"epochs); NoisyClassifier {num_parameters / 1e6:.2f} M parameters on {channels}×{side}×{side} {space}, "
        f"the {objective.parametrization.path!r} path ({args.time_distribution_source}).",
        main_process_only=True,
    )

    # ---- the loop ---------------------------------------------------------------------------------
    generator = torch.Generator(device=accelerator.device)
    parameters = list(model.parameters())
    updates = OptimizerUpdates(accelerator, args, progress, max_train_steps,
                               [Optimized(parameters, optimizer, lr_scheduler)], ema, parameters)  # fmt: skip
    model.train()
    with updates:
        for epoch, index, batch in resumed_batches(accelerator, dataloader, length, progress.global_step):
            seeded_generator(generator, args.seed, "batch", epoch, index, accelerator.process_index)
            with accelerator.accumulate(model):
                if latents is None:
                    x0 = augment(batch["images"], args.resolution, args.random_flip, generator)
                else:
                    x0 = latent_input(batch, args.random_flip, generator)
                t, _, x_t = objective.noised(x0, generator)
                loss = F.cross_entropy(model(x_t, t).float(), batch["labels"].to(x0.device))
                accelerator.backward(loss)
                updates.step(loss, x0.shape[0])
            if not updates.finish():
                continue
            if evaluation_due(args, updates):
                evaluator(accelerator, model, ema, updates.global_step)
            if updates.done:
                break
    summary = finish_run(accelerator, args, updates, evaluator, model, ema)  # and the final evaluation

    # ---- outputs: the EMA classifier, its accuracy by noise level, the plot, the model card -----------------
    if accelerator.is_main_process:
        classifier = keep_ema_weights(ema, accelerator.unwrap_model(model))
        final = evaluator.history[-1]
        record = {
            "step": final["step"],
            "evaluated_on": source,
            "n_images": len(eval_x0),
            "n_training_images": len(train_set),
            "draws": args.eval_noise_draws,
            "num_classes": data.num_classes,
            "chance": 1 / data.num_classes,
            "accuracy": final["accuracy"],
            "by_noise": final["by_noise"],
            "noise_path": classifier.config.noise_path,
            "noise_schedule": noise_schedule,
            "time_distribution": describe_time_distribution(args),
            "time_distribution_source": args.time_distribution_source,
            "space": space,
            "input_shape": [channels, side, side],
            "num_parameters": num_parameters,
            "images_per_second": summary.images_per_second,
            "training_seconds": summary.training_seconds,
            "history": evaluator.history,
        }
        save_outputs(args, classifier, record, data, repo_id)
    accelerator.end_training()

    hub.push_after_training(accelerator, args, repo_id, f"Classifier training finished at step {updates.global_step}")
    return summary


def save_outputs(args, classifier: NoisyClassifier, record: dict, data, repo_id: str | None) -> None:
    """Write the classifier, ``classifier_metrics.json``, the plot (with matplotlib) and the card (last)."""
    try:
        classifier.save_pretrained(args.output_dir)
        plot = os.path.join(args.output_dir, PLOT_FILE)
        title = f"{os.path.basename(os.path.normpath(args.output_dir))}, step {record['step']}"
        plotted = plot_accuracy_by_noise(record["by_noise"], plot, record["num_classes"], title)
        record["plot"] = PLOT_FILE if plotted else None
        with open(os.path.join(args.output_dir, METRICS_FILE), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        model_id = repo_id or os.path.basename(os.path.normpath(args.output_dir))
        model_card = card.build_classifier_card(args, record, model_id, data.description, data.hub_dataset_id)
        save_model_card(model_card, args.output_dir)  # written last: its presence marks a complete output
    except OSError as err:
        raise OutputWriteError(
            f"could not write the classifier to {args.output_dir!r}: {type(err).__name__}: {err}"
        ) from None
    logger.info(f"{card.describe(record)}. Saved the classifier, {METRICS_FILE}, {PLOT_FILE if record['plot'] else ''}"
                f" and README.md to {args.output_dir}", main_process_only=True)  # fmt: skip
