"""The VAE training loop: :func:`train_vae` and :func:`run_vae_training`.

It reads like the UNet trainer and uses its pieces: accelerate state, the launch check and the optimizer update
(``loop``: non-finite skips, clipping, LR, EMA, the loss log, checkpoint cadence), the data
(``load_training_data``, the epoch-seeded sampler, ``augment``), counter-based draws (``randomness``), AdamW and
EMA (``optimization``), atomic checkpoints with exact resume (``checkpoints``), the throughput timer
(``monitoring``) and the Hub repo and push (``hub``). What is the VAE's own: the objective
(``losses``), an optional PatchGAN discriminator with its optimizer and LR schedule, and the outputs — the
``AutoencoderKL`` folder with the measured ``scaling_factor``, ``vae_metrics.json``, ``reconstructions.png`` and
the model card.

Exact resume: the crop/flip and the posterior draw z ~ q(z|x) of each micro-batch come from a generator
seeded by (``--seed``, epoch, batch, process); the evaluations and the latent-scale measurement run under
``private_randomness``, so a resumed run ends with bit-identical weights.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from accelerate.logging import get_logger

from .. import checkpoints, hub
from ..data import augment, load_training_data, make_dataloader
from ..errors import ConfigError
from ..evaluation import load_feature_space
from ..init_from import check_vae_fits, load_vae_for_training
from ..loop import Optimized, OptimizerUpdates, evaluation_due, finish_run, resumed_batches, run_length, start_run
from ..monitoring import TrainingSummary
from ..optimization import keep_ema_weights, make_ema, make_lr_scheduler, make_optimizer
from ..randomness import seeded_generator
from . import card, metrics
from .cli import MAX_DEFAULT_VALIDATION, VALIDATION_SHARE, parse_args, validate_args
from .losses import (
    AutoencoderForTraining,
    PatchDiscriminator,
    VAELoss,
    discriminator_hinge_loss,
    load_perceptual_distance,
)
from .outputs import ReconstructionEvaluator, save_outputs
from .presets import build_vae, downsampling_factor

logger = get_logger(__name__)


def run_vae_training(argv: Sequence[str]) -> TrainingSummary:
    """Train as ``train_vae.py`` would with these arguments, in this process; returns when the output is saved."""
    args = parse_args(list(argv))
    validate_args(args)
    return train_vae(args)


def train_vae(args: argparse.Namespace) -> TrainingSummary:
    """Run VAE training as the (validated) command line says; returns when the output is saved."""
    accelerator = start_run(args, "training/train_vae.py")  # --seed: the VAE's initial weights

    # ---- data: training images and the held-out evaluation images -------------------------------------
    with accelerator.main_process_first():
        data = load_training_data(args)
        features = load_feature_space(args.eval_features, accelerator.device) if accelerator.is_main_process else None
    num_validation = metrics.validation_size(
        args.num_validation_images, len(data.dataset), VALIDATION_SHARE, MAX_DEFAULT_VALIDATION
    )
    train_set, held_out = metrics.split_validation(data.dataset, num_validation, args.seed)
    eval_images, eval_source = metrics.evaluation_images(
        train_set, held_out, args.eval_num_images, args.resolution, args.seed
    )
    dataloader = make_dataloader(train_set, args.train_batch_size, args.seed, args.dataloader_num_workers)

    # ---- model, loss, optimizers, EMA ----------------------------------------------------------------
    if args.init_from is None:
        vae = build_vae(args.model_config_name_or_path, args.resolution, data.num_channels, args.latent_channels)
    else:  # a saved VAE, exactly as saved; refused before any step if it does not take the data's channels
        vae = load_vae_for_training(args.init_from)
        check_vae_fits(vae.config, args.init_from, data.num_channels)
    num_parameters = sum(p.numel() for p in vae.parameters())
    model = AutoencoderForTraining(vae)
    perceptual = None
    if args.perceptual_weight > 0:
        image_shape = (data.num_channels, args.resolution, args.resolution)
        try:
            perceptual = load_perceptual_distance(args.perceptual_features, accelerator.device, image_shape)
        except (ValueError, TypeError, OSError) as err:
            raise ConfigError(str(err)) from None
    objective = VAELoss(args.reconstruction_loss, args.kl_weight, perceptual, args.perceptual_weight,
                        args.adversarial_weight)  # fmt: skip
    ema = make_ema(vae, args)
    optimizer = make_optimizer(list(model.parameters()), args)
    prepared = [model, optimizer, dataloader]
    discriminator = None
    if args.adversarial_weight > 0:
        discriminator = PatchDiscriminator(data.num_channels, args.discriminator_channels, args.discriminator_layers)
        disc_args = argparse.Namespace(**{**vars(args), "learning_rate": args.discriminator_learning_rate})
        prepared += [discriminator, make_optimizer(list(discriminator.parameters()), disc_args)]
    prepared = accelerator.prepare(*prepared)
    model, optimizer, dataloader = prepared[:3]
    discriminator, disc_optimizer = prepared[3:] if discriminator is not None else (None, None)
    if ema is not None:
        ema.to(accelerator.device)

    length = run_length(args, len(dataloader), accelerator.num_processes)
    _, max_train_steps, num_epochs, total_batch_size = length
    lr_scheduler = make_lr_scheduler(optimizer, args, max_train_steps)
    disc_scheduler = None
    if discriminator is not None:  # its schedule runs over its own updates, from --adversarial_start_step on
        disc_steps = max(1, max_train_steps - args.adversarial_start_step)
        disc_scheduler = make_lr_scheduler(disc_optimizer, args, disc_steps)
    progress = checkpoints.TrainingProgress(accelerator.num_processes, total_batch_size)
    registered = [lr_scheduler, progress, *([ema] if ema else []), *([disc_scheduler] if disc_scheduler else [])]
    accelerator.register_for_checkpointing(*registered)

    # ---- resume, Hub repo, trackers -----------------------------------------------------------------
    checkpoints.resume(accelerator, args.output_dir, args.resume_from_checkpoint, ema)
    global_step = progress.global_step
    repo_id = hub.create_repo_before_training(accelerator, args)
    accelerator.init_trackers("train_vae", config=card.public_hyperparameters(args))
    factor = downsampling_factor(vae.config)
    latent_side = args.resolution // factor
    logger.info(
        f"{data.description}: {len(train_set)} training images, {num_validation} held out; {total_batch_size} images "
        f"per step; {max_train_steps} steps ({num_epochs} epochs); AutoencoderKL {num_parameters / 1e6:.2f} M "
        f"parameters, f={factor}, latents {vae.config.latent_channels}×{latent_side}×{latent_side}.",
        main_process_only=True,
    )
    evaluator = ReconstructionEvaluator(args, eval_images, eval_source, features)

    # ---- the loop ---------------------------------------------------------------------------------
    generator = torch.Generator(device=accelerator.device)
    parts = [Optimized(list(model.parameters()), optimizer, lr_scheduler)]
    if discriminator is not None:  # the critic: its own optimizer and LR schedule, from --adversarial_start_step on
        parts.append(Optimized(list(discriminator.parameters()), disc_optimizer, disc_scheduler))
    ema_parameters = list(accelerator.unwrap_model(model).vae.parameters())
    updates = OptimizerUpdates(accelerator, args, progress, max_train_steps, parts, ema, ema_parameters)
    trained = [model] + ([discriminator] if discriminator is not None else [])
    model.train()
    with updates:
        for epoch, index, batch in resumed_batches(accelerator, dataloader, length, global_step):
            seeded_generator(generator, args.seed, "batch", epoch, index, accelerator.process_index)
            adversarial = discriminator is not None and updates.global_step >= args.adversarial_start_step
            with accelerator.accumulate(*trained):
                x = augment(batch["images"], args.resolution, args.random_flip, generator)
                critic = accelerator.unwrap_model(discriminator) if adversarial else None
                loss, terms, reconstructions = objective(model, x, generator, critic)
                accelerator.backward(loss)
                if adversarial:
                    terms["discriminator"] = discriminator_hinge_loss(
                        discriminator(x), discriminator(reconstructions.detach())
                    )
                    accelerator.backward(terms["discriminator"])
                    terms["discriminator"] = terms["discriminator"].detach()
                updates.step(loss, x.shape[0], parts if adversarial else parts[:1])
            if not updates.finish():
                continue
            global_step = updates.global_step  # an update done (or skipped: it still counts)
            if not updates.skipped and global_step % args.logging_steps == 0:  # one more host sync per logging step
                values = torch.stack(list(terms.values())).tolist()
                accelerator.log({f"loss/{k}": v for k, v in zip(terms, values)}, step=global_step)
            if global_step % args.save_images_steps == 0:
                evaluator.log_grid(accelerator, model, ema, global_step)
            if evaluation_due(args, updates):
                evaluator(accelerator, model, ema, global_step)
            if updates.done:
                break
    global_step = updates.global_step
    summary = finish_run(accelerator, args, updates, evaluator, model, ema)  # and the final evaluation

    # ---- outputs: the EMA VAE with its latent scale, metrics, reconstructions, model card -----------------
    if accelerator.is_main_process:
        vae = keep_ema_weights(ema, accelerator.unwrap_model(model).vae)
        extra = {"num_parameters": num_parameters, "images_per_second": summary.images_per_second}
        save_outputs(args, vae, evaluator, train_set, data, global_step, repo_id, extra)
    accelerator.end_training()

    hub.push_after_training(accelerator, args, repo_id, f"VAE training finished at step {global_step}")
    return summary
