"""What image-to-image and inpainting share: checked arguments, the schedule, the denoiser and the first sample.

An edit is a sampling run that starts at step t_start = n − round(strength·n) of an n-step schedule
(:mod:`.edit_levels`) from the clean input x0 noised to that level, or, at strength 1, from pure noise drawn
exactly as ``ScratchDiffusionPipeline.__call__`` draws it (so strength 1 reproduces ``pipe(...)``). The call's
arguments, the scheduler's parametrisation, sample coordinates and start step, and the guidance rules are checked
here, before any model evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor

from scratch_diffusion.guidance.compose import Guidance
from scratch_diffusion.guidance.setup import EvaluationCounter

from .control import Control, prepare_control
from .denoiser import Denoiser
from .edit_images import clean_samples, unit_images, unit_images_to_output
from .edit_levels import EditLevels, edit_levels, edit_step_count
from .inputs import check_strength, sample_shape
from .inversion import ImageInput, image_count
from .sampling_loop import Replacement, SamplingLoop


@dataclass
class EditRun:
    """One editing call, resolved: its schedule, denoiser and evaluation counter, and where it starts.

    ``levels`` is None for a run from pure noise that never puts the input on the path (image-to-image at strength 1).
    """

    pipe: object
    device: torch.device
    shape: tuple[int, ...]
    denoiser: Denoiser
    counter: EvaluationCounter
    levels: EditLevels | None
    start_step: int
    num_steps: int

    @property
    def from_noise(self) -> bool:
        """Whether the run starts at the first step, from pure noise (strength 1)."""
        return self.start_step == 0

    def start_entry(self) -> int:
        """The timestep entry the run starts at."""
        return 0 if self.from_noise else self.levels.boundary(self.start_step)

    def initial_sample(self, x0: torch.Tensor | None, generator) -> torch.Tensor:
        """z·``init_noise_sigma`` from the first step (as ``__call__``), else x0 noised to the start: (a·x0 + b·z)/c.

        z ~ N(0, I) is drawn as ``__call__`` draws it: ``randn_tensor`` of the sample shape, in the UNet's dtype.
        """
        unet = self.pipe.unet
        noise = randn_tensor(self.shape, generator=generator, device=self.device, dtype=unet.dtype)
        if self.from_noise:
            return noise * getattr(self.pipe.scheduler, "init_noise_sigma", 1.0)
        signal_scale, noise_scale = self.levels.noising(self.start_entry())
        return x0.to(dtype=unet.dtype) * signal_scale + noise * noise_scale

    def loop(
        self,
        generator,
        eta: float,
        callback,
        callback_inputs: Sequence[str],
        evaluated_entries: int,
        replace: Replacement | None = None,
    ) -> SamplingLoop:
        """The run's :class:`~.sampling_loop.SamplingLoop`; ``pipe.num_timesteps`` is set to ``evaluated_entries``
        first (diffusers' ``PipelineCallback`` reads it during the loop)."""
        self.pipe._num_timesteps = evaluated_entries
        step_kwargs = self.pipe.step_kwargs(generator, eta)
        return SamplingLoop(self.pipe, self.denoiser, step_kwargs, callback, callback_inputs, replace)

    def finish(self) -> None:
        """Record the run's evaluations per image on the pipeline (``pipe.evaluations``) and free offload hooks."""
        self.pipe._evaluations = self.counter.per_image()
        self.pipe.maybe_free_model_hooks()


def unchanged_output(pipe, images: torch.Tensor, output_type: str):
    """The input itself as the call's output (an edit of no step): no noise, no model evaluation recorded.

    ``images`` in [0, 1]; ``"latent"`` gives the clean samples (2·x − 1, or a latent pipeline's encoded input).
    """
    pipe._num_timesteps, pipe._evaluations = 0, {}
    if output_type == "latent":
        return clean_samples(pipe, images)
    return unit_images_to_output(images.clone(), output_type)


def callback_tensor_inputs(callback, requested: Sequence[str]) -> Sequence[str]:
    """The tensors a callback receives: a ``PipelineCallback``'s own ``tensor_inputs``, else ``requested``."""
    if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
        return callback.tensor_inputs
    return requested


@dataclass(frozen=True)
class EditCall:
    """The arguments ``img2img`` and ``inpaint`` share, as the methods take them (see ``EditingMixin``)."""

    num_inference_steps: int
    strength: float
    generator: torch.Generator | list[torch.Generator] | None
    eta: float
    class_labels: object
    guidance_scale: float
    guidance: Guidance | None
    output_type: str
    callback: object
    callback_inputs: Sequence[str]
    control_image: object = None
    controlnet_conditioning_scale: float = 1.0


@dataclass
class EditInputs:
    """An edit's checked inputs: the images in [0, 1] on the device, how many steps run, the scheduler's
    parametrisation, the guidance rules, the control (``control.py``) and the callback's tensor names."""

    images: torch.Tensor
    steps: int
    sampled: object
    rules: tuple
    control: Control | None
    callback_inputs: Sequence[str]

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]


def check_edit(pipe, image: ImageInput, call: EditCall) -> EditInputs:
    """Every check of an edit, before any model evaluation: ``__call__``'s (``pipe.check_inputs``), ``strength``,
    the control image and the images themselves (against the images the pipeline makes)."""
    batch_size = image_count(image)
    callback_inputs = callback_tensor_inputs(call.callback, call.callback_inputs)
    sampled, rules = pipe.check_inputs(
        batch_size,
        call.num_inference_steps,
        call.generator,
        call.class_labels,
        call.guidance_scale,
        call.output_type,
        callback_inputs,
        call.eta,
        call.guidance,
    )
    check_strength(call.strength)
    device = pipe._execution_device
    control = prepare_control(pipe, call.control_image, call.controlnet_conditioning_scale, batch_size, device)
    images = unit_images(pipe, image, batch_size, device)
    steps = edit_step_count(call.strength, call.num_inference_steps)
    return EditInputs(images, steps, sampled, rules, control, callback_inputs)


def begin_edit(pipe, edit: EditInputs, call: EditCall, needs_levels: bool = True) -> EditRun:
    """Bind the guidance, set the schedule (and its begin index), build the denoiser: an :class:`EditRun`.

    ``needs_levels`` False skips the sample-coordinate probe for a run from pure noise that never noises the input.
    Raises ``ValueError`` (before any model evaluation) for a scheduler that cannot start at step t_start.
    """
    device, n = pipe._execution_device, call.num_inference_steps
    conditions, guided, counter = pipe.prepare_guidance(
        edit.rules, call.class_labels, edit.batch_size, device, edit.control
    )
    points = pipe.set_timesteps(n, device, edit.sampled)
    levels = None
    if needs_levels or edit.steps < n:
        levels = edit_levels(pipe.scheduler, points, edit.sampled.path, n)
    denoiser = pipe.denoiser(edit.sampled, None, conditions, guided, device, points, counter)
    run = EditRun(
        pipe, device, sample_shape(pipe.unet, edit.batch_size), denoiser, counter, levels, n - edit.steps, edit.steps
    )
    start = run.start_entry()  # an irregular layout is refused here for strength < 1
    if hasattr(pipe.scheduler, "set_begin_index"):
        pipe.scheduler.set_begin_index(start)
    return run
