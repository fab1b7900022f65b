"""What the control network is judged by during and after training, on held-out examples, with EMA weights.

* **The held-out loss, with and without the control**: the pipeline's own objective on the held-out examples,
  one seeded draw of (t, ε) each, evaluated through the controlled UNet and through the frozen UNet alone on the
  very same draws. The control network starts at the frozen UNet's loss (zero convolutions) and should go below it.
* **The control consistency** (a built-in control): ``--eval_num_samples`` images sampled with held-out controls
  and as many without (the frozen UNet; the same initial noise and labels), each scored by
  MSE(transform(sample), control) — the faithfulness of samples to their control, against the uncontrolled
  baseline (their ratio: how many times closer the control brings the samples).

Samples come from the pipeline itself: a ``ScratchDiffusionPipeline`` of the frozen UNet, the sampler ``train.py``
saves for the objective (:meth:`Objective.sampling_scheduler`: DDIM for a VP pipeline, Euler for a flow one), a
latent pipeline's VAE and the evaluated control network, called as ``pipe(control_image=c, ...)`` and ``pipe(...)``
(no control: the frozen UNet alone) — what a user of the trained network runs. The network evaluated is the
evaluator's own float32 copy of the (EMA) weights: under mixed precision accelerate wraps the trained network's
``forward`` with an output conversion that cannot rebuild a ``ControlNet2DOutput``, and the copy is evaluated in full
precision as it is saved. Every draw is private (seeded generators under ``private_randomness``), so evaluations
change nothing of the training run (exact resume).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate.logging import get_logger

from scratch_diffusion.control import ControlledUNet, ControlNet2DModel, ControlNet2DOutput
from scratch_diffusion.pipelines import ScratchDiffusionPipeline
from scratch_diffusion.pipelines.denoiser import UNetModel

from ..evaluation import private_randomness
from ..objectives import Objective
from ..optimization import ema_weights
from ..randomness import derive_seed

logger = get_logger(__name__)

EVAL_CHUNK = 64  # examples per model call of the held-out loss
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class HeldOut:
    """The fixed evaluation examples: x0 (samples), controls in [0, 1], labels, the real images in [0, 1]."""

    x0: torch.Tensor
    control: torch.Tensor
    labels: torch.Tensor | None
    images: torch.Tensor
    source: str  # "held-out" or "training"


class _Residuals:
    """A control network (or accelerate's wrapper of it) as :class:`ControlledUNet` calls it, with
    ``return_dict=False``: under mixed precision accelerate converts a model's outputs to float32 and rebuilds a
    mapping by its type from one dict, which ``ControlNet2DOutput`` (two required fields) cannot take; diffusers'
    ControlNet training calls its network the same way."""

    def __init__(self, network: torch.nn.Module):
        self.network = network

    def __call__(self, *args, **kwargs) -> ControlNet2DOutput:
        down, mid = self.network(*args, **kwargs, return_dict=False)
        return ControlNet2DOutput(down_block_res_samples=tuple(down), mid_block_res_sample=mid)


def controlled_unet(unet, controlnet: ControlNet2DModel, call: torch.nn.Module | None = None) -> ControlledUNet:
    """``ControlledUNet(unet, controlnet)`` (its fit check on the bare network) calling the network through ``call``:
    accelerate's wrapper of it in training (DDP's gradient sync, mixed precision), else the network itself."""
    controlled = ControlledUNet(unet, controlnet)
    controlled.controlnet = _Residuals(controlnet if call is None else call)
    return controlled


def controlled_model(controlled: ControlledUNet, control: torch.Tensor, labels: torch.Tensor | None) -> ModelFn:
    """``model(x_t, t)``: the controlled UNet's prediction for these controls (and labels)."""
    conditions = {} if labels is None else {"class_labels": labels}
    return lambda x_t, t: controlled(x_t, t, control, **conditions).sample


def frozen_model(unet, labels: torch.Tensor | None) -> ModelFn:
    """``model(x_t, t)``: the frozen UNet alone (no control), as the pipeline calls it."""
    call = UNetModel(unet)
    conditions = {} if labels is None else {"class_labels": labels}
    return lambda x_t, t: call(x_t, t, **conditions)


@torch.no_grad()
def held_out_losses(objective: Objective, controlled: ControlledUNet, unet, held_out: HeldOut, seed: int) -> tuple:
    """(loss with the control, loss of the frozen UNet) on the same seeded draws, averaged over the examples."""
    device = held_out.x0.device
    totals = [0.0, 0.0]
    for start in range(0, len(held_out.x0), EVAL_CHUNK):
        part = slice(start, start + EVAL_CHUNK)
        x0, control = held_out.x0[part], held_out.control[part]
        labels = None if held_out.labels is None else held_out.labels[part]
        for i, model in enumerate((controlled_model(controlled, control, labels), frozen_model(unet, labels))):
            generator = torch.Generator(device=device).manual_seed(derive_seed(seed, "controlnet-loss", start))
            totals[i] += objective.loss(model, x0, generator).item() * len(x0)
    return totals[0] / len(held_out.x0), totals[1] / len(held_out.x0)


def control_pipeline(unet, scheduler, vae, controlnet: ControlNet2DModel) -> ScratchDiffusionPipeline:
    """The pipeline a user of the trained network runs: the frozen UNet, ``scheduler``, the VAE (or None) and
    ``controlnet`` as its ``controlnet`` component, without a progress bar."""
    pipe = ScratchDiffusionPipeline(unet=unet, scheduler=scheduler, vae=vae, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample_with_and_without_control(
    pipe: ScratchDiffusionPipeline,
    control: torch.Tensor,
    labels: torch.Tensor | None,
    num_inference_steps: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, C, H, W) in [0, 1] on the CPU sampled by ``pipe`` with the control images (B, C_c, H, W) in [0, 1]
    and without them (the frozen UNet alone), each run from the same noise (``seed``, on the UNet's device) and
    labels; the deterministic samplers draw nothing more."""
    device = pipe.unet.device
    images = []
    for control_image in (control, None):
        generator = torch.Generator(device=device).manual_seed(seed)
        output = pipe(batch_size=len(control), num_inference_steps=num_inference_steps, generator=generator,
                      class_labels=labels, output_type="pt", control_image=control_image)  # fmt: skip
        images.append(output.images.float().cpu())
    return images[0], images[1]


def consistency(images: torch.Tensor, control: torch.Tensor, transform) -> float:
    """Mean over images of MSE(transform(image), control), both in [0, 1]."""
    return float((transform(images) - control).square().mean(dim=(1, 2, 3)).mean())


class ControlEvaluator:
    """Held-out losses and, with samples, the control consistency of the (EMA) control network; main process."""

    def __init__(self, args, objective: Objective, unet, held_out: HeldOut, sampling_scheduler, vae, transform):
        self.args, self.objective, self.unet, self.held_out = args, objective, unet, held_out
        self.sampling_scheduler, self.vae, self.transform = sampling_scheduler, vae, transform
        self.history: list[dict] = []
        self.figure: torch.Tensor | None = None  # (4k, C, H, W): controls, controlled, uncontrolled, real images
        self.seconds = self.cpu_seconds = 0.0
        self.network: ControlNet2DModel | None = None  # the evaluated copy (made at the first evaluation)
        self.pipe: ScratchDiffusionPipeline | None = None

    def evaluated_network(self, controlnet: ControlNet2DModel, ema) -> ControlNet2DModel:
        """The evaluator's copy of ``controlnet`` (a plain float32 module, frozen) holding its EMA weights, or its
        weights without EMA; made at the first call (its random initial weights are overwritten at once), then
        reloaded at every call. Call under ``private_randomness``."""
        if self.network is None:
            self.network = ControlNet2DModel.from_config(controlnet.config).to(controlnet.device)
            self.network.requires_grad_(False).eval()
            self.pipe = control_pipeline(self.unet, self.sampling_scheduler, self.vae, self.network)
        with ema_weights(ema, controlnet):
            self.network.load_state_dict(controlnet.state_dict())
        return self.network

    def __call__(self, accelerator, model, ema, step: int) -> None:
        start, cpu_start = time.perf_counter(), time.process_time()
        if accelerator.is_main_process:
            with private_randomness(accelerator.device):
                network = self.evaluated_network(accelerator.unwrap_model(model), ema)
                record = self.evaluate(network, step)
            self.history.append(record)
            logged = {f"eval/{k}": v for k, v in record.items() if isinstance(v, float)}
            accelerator.log(logged, step=step)
            logger.info(f"Step {step}: {describe(record)}", main_process_only=True)
        accelerator.wait_for_everyone()
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.process_time() - cpu_start

    def evaluate(self, network: ControlNet2DModel, step: int) -> dict:
        """The record of ``network`` (:meth:`evaluated_network`) at ``step``: losses and, with samples, consistency."""
        seed, held_out = derive_seed(self.args.seed, "controlnet-evaluation"), self.held_out
        controlled = ControlledUNet(self.unet, network)
        with_control, without = held_out_losses(self.objective, controlled, self.unet, held_out, seed)
        record = {"step": step, "loss_with_control": with_control, "loss_without_control": without,
                  "n_images": len(held_out.x0), "evaluated_on": held_out.source}  # fmt: skip
        count = min(self.args.eval_num_samples, len(held_out.x0))
        if count:
            control = held_out.control[:count]
            labels = None if held_out.labels is None else held_out.labels[:count]
            steps, noise_seed = self.args.eval_num_inference_steps, derive_seed(self.args.seed, "controlnet-samples")
            controlled_images, free_images = sample_with_and_without_control(self.pipe, control, labels, steps,
                                                                             noise_seed)  # fmt: skip
            shown = slice(0, min(4, count))
            self.figure = torch.cat([control[shown].cpu(), controlled_images[shown], free_images[shown],
                                     held_out.images[shown].cpu()])  # fmt: skip
            record.update(n_samples=count, num_inference_steps=steps)
            if self.transform is not None:
                with_c = consistency(controlled_images, control.cpu(), self.transform)
                free = consistency(free_images, control.cpu(), self.transform)
                record.update(consistency_with_control=with_c, consistency_without_control=free,
                              consistency_gain=free / with_c if with_c > 0 else float("inf"))  # fmt: skip
        return record


def describe(record: dict) -> str:
    """One line: the held-out losses and, where sampled, the consistency."""
    text = (
        f"{record['evaluated_on']} loss {record['loss_with_control']:.4f} with the control, "
        f"{record['loss_without_control']:.4f} without (n = {record['n_images']})"
    )
    if "consistency_with_control" in record:
        text += (
            f"; consistency MSE(transform(sample), control) {record['consistency_with_control']:.4g} with, "
            f"{record['consistency_without_control']:.4g} without ({record['consistency_gain']:.3g}×; "
            f"{record['n_samples']} samples, {record['num_inference_steps']} steps)"
        )
    return text
