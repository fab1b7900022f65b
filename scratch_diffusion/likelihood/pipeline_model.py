"""A saved pipeline's UNet as the model callable of the likelihood functions: ``(sample, timestep) -> output``.

The callable answers in the parametrisation of a chosen scheduler: the UNet's own training path by
default (:func:`trained_scheduler`), or any other scheduler ``noise_path.parametrization_of`` can
describe, through the pipeline's denoiser and its exact change of variables (``pipelines.denoiser``,
``pipelines.cross_path``): e.g. a flow
model as seen by a DDPM scheduler, which is the model the DDPM sampler runs and whose variational bound
:func:`~.variational_bound.variational_bound` then computes. A class-conditional UNet is evaluated
given labels (p(x | y)) or with the null class (the unconditional p(x) it learned with class dropout).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from scratch_diffusion.pipelines.components import COMPONENTS
from scratch_diffusion.pipelines.cross_path import ModelPath, native_model_calls, plan_model_calls
from scratch_diffusion.pipelines.denoiser import Denoiser, UNetModel
from scratch_schedulers import ScratchDDPMScheduler, ScratchFlowMatchScheduler
from scratch_schedulers.noise_path import parametrization_of, signal_noise_at

from .probability_flow import ModelFn


def trained_scheduler(pipeline) -> object:
    """A scheduler of the UNet's training path: the pipeline's own if it is one, else built from its
    recorded ``noise_schedule`` (``ScratchFlowMatchScheduler`` / ``ScratchDDPMScheduler``)."""
    trained = pipeline.trained_parametrization
    if parametrization_of(pipeline.scheduler) == trained:
        return pipeline.scheduler
    schedule = dict(pipeline.config.noise_schedule)
    if trained.path == "flow":
        return ScratchFlowMatchScheduler(num_train_timesteps=int(schedule["num_train_timesteps"]))
    return ScratchDDPMScheduler(**schedule, prediction_type=trained.prediction_type)


def pipeline_model(
    pipeline,
    scheduler: object | None = None,
    class_labels: int | Sequence[int] | torch.Tensor | None = None,
) -> ModelFn:
    """The pipeline's UNet as ``(sample, timestep) -> model_output`` in ``scheduler``'s parametrisation.

    Args:
        pipeline: A ``ScratchDiffusionPipeline`` (e.g. from ``pipelines.loading.load_pipeline``).
        scheduler: Whose parametrisation to answer in; default :func:`trained_scheduler` (no conversion).
        class_labels: For a class-conditional UNet: one label or one per example of every batch it is
            called with; None evaluates the null class (unconditional). Ignored by an unconditional UNet.

    The sample is moved to the UNet's device and dtype; the output comes back on the sample's device.
    Gradients flow to the sample (the ODE needs them); wrap calls in ``torch.no_grad`` where they are not needed.
    A latent pipeline (with a ``vae``, or any component the table marks as changing the sample space) raises
    ``ValueError``: image likelihood through a VAE is not computed here.
    """
    for component in COMPONENTS.values():
        present = getattr(pipeline, component.name, None)
        if not component.pixel_space and present is not None:
            raise ValueError(
                f"{type(pipeline).__name__} has a {component.name} ({type(present).__name__}): its UNet models the "
                f"{component.name}'s scaled latents, not images, so this code would give a likelihood of latents in "
                "the UNet's units. An image likelihood through a VAE also needs the decoder's density "
                "(a reconstruction term and the change of volume from latents to pixels), which this code does not "
                "compute; pass a pixel-space pipeline."
            )
    unet = pipeline.unet
    scheduler = trained_scheduler(pipeline) if scheduler is None else scheduler
    trained, target = pipeline.trained_parametrization, parametrization_of(scheduler)
    model_path = None if target == trained else ModelPath.of_schedule(trained, pipeline.config.noise_schedule)
    if model_path is not None and unet.config.out_channels != unet.config.in_channels:
        raise ValueError(
            f"the UNet predicts a variance ({unet.config.out_channels} output channels) and cannot be converted to "
            f"{type(scheduler).__name__}'s parametrisation; use trained_scheduler(pipeline)."
        )

    unet_model = UNetModel(unet)

    def model(sample: torch.Tensor, timestep: int | float | torch.Tensor) -> torch.Tensor:
        if model_path is None:  # the UNet's own timestep, one per example (float32, as the trainer gives it)
            timesteps = torch.as_tensor(timestep, dtype=torch.float32, device=unet.device).reshape(1, -1)
            plan = native_model_calls(timesteps.expand(1, len(sample)), target.prediction_type)
        else:
            a, b = signal_noise_at(scheduler, timestep)
            plan = plan_model_calls([(float(a), float(b))], model_path, [target.prediction_type], unet.device)
        labels = pipeline.prepare_class_labels(class_labels, len(sample), unet.device)
        conditions = {} if labels is None else {"class_labels": labels}
        return Denoiser(unet_model, plan, conditions, dtype=unet.dtype, device=unet.device)(sample, 0)[0]

    return model
