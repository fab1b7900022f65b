"""ScratchDiffusionPipeline: unconditional or class-conditional sampling from a ``UNet2DModel``.

With an optional ``vae`` (a diffusers ``AutoencoderKL``) it is a latent diffusion pipeline (Rombach et
al., 2022): the loop runs on the VAE's scaled latents and the last sample is decoded (``latents.py``).

As thin as diffusers' ``DDPMPipeline`` — set up the noise, loop, postprocess — but it works with
any scheduler that speaks diffusers' API: it scales the initial noise by ``init_noise_sigma``,
calls ``scale_model_input`` every step, passes ``eta``/``generator`` only where ``step`` accepts
them, and iterates ``scheduler.timesteps`` as given (second-order schedulers such as Heun repeat
timesteps, one model evaluation per entry). The UNet is called through one denoiser
(``denoiser.py``) that every use shares — sampling, inversion, the likelihood code — with the call's
guidance rules bound around it (``guidance.py``; the rules are ``scratch_diffusion.guidance``):
``guidance_scale`` is classifier-free guidance (Ho & Salimans, 2022), ŷ = ŷ_∅ + w·(ŷ_c − ŷ_∅) with the
null class ∅ = ``num_class_embeds − 1``; ``guidance=`` adds a guidance interval, autoguidance,
classifier guidance (which steers an unconditional UNet) or loss guidance.

The pipeline records what its UNet was trained to predict (``prediction_type``) on which noise
path (``noise_path``) with which training schedule (``noise_schedule``) in ``model_index.json``.
A scheduler of another path or parametrisation samples it through the exact change of variables
(``cross_path.py``); :meth:`ScratchDiffusionPipeline.invert` runs the deterministic sampler
backwards (``inversion.py``); ``img2img`` (SDEdit) and ``inpaint`` (replacement + RePaint) edit images
(``editing.py``). Every sampling method runs one loop (``sampling_loop.py``). Arguments are checked in
``inputs.py``, saved folders in ``saved_format.py``, outputs made in ``postprocess.py``; the saved format is
described in ``remote_code.py``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from scratch_diffusion.guidance.compose import Guidance, GuidanceRule, GuidedEvaluation
from scratch_diffusion.guidance.setup import EvaluationCounter
from scratch_schedulers import Parametrization

from .components import COMPONENTS, declares_components, optional_components
from .control import Control, ControlledUNetModel, model_conditions, prepare_control
from .cross_path import ModelPath, noise_schedule_of, sampler_levels, scheduler_model_calls
from .denoiser import Denoiser, UNetModel
from .editing import EditingMixin
from .flow_map import interval_ends
from .guidance import bind_call_guidance, call_rules, label_classes
from .inputs import (
    check_call_arguments,
    check_callback_inputs,
    check_conditioning,
    check_latents,
    check_sampling_memory,
    class_label_tensor,
    sample_shape,
)
from .inversion import ImageInput, invert_images
from .latent_pipeline_support import LatentSpaceMixin
from .latents import warn_if_scheduler_clips
from .parametrization import check_scheduler_parametrization, resolve_parametrization
from .postprocess import samples_to_images
from .sampling_loop import SamplingLoop
from .saved_pipeline import SavedPipelineMixin

__all__ = ["ScratchDiffusionPipeline"]


@declares_components
class ScratchDiffusionPipeline(SavedPipelineMixin, LatentSpaceMixin, EditingMixin, DiffusionPipeline):
    r"""Sample images from a ``UNet2DModel`` with any diffusers-style scheduler.

    Args:
        unet: the denoiser; class-conditional if ``unet.config.num_class_embeds`` is set, in which
            case the last class index is the null class used for classifier-free guidance.
        scheduler: ours (``ScratchDDPMScheduler``, ``ScratchDDIMScheduler``,
            ``ScratchFlowMatchScheduler``) or a diffusers scheduler.
        vae: optional ``AutoencoderKL``; with it the UNet denoises its scaled latents
            z = (E(x) − shift_factor)·scaling_factor (its ``in_channels`` must be ``latent_channels``) and
            samples are decoded to images ``vae_scale_factor`` times larger (``latent_shape`` →
            ``image_shape``). Saved as ``vae/``.
        prediction_type: what the UNet was trained to predict: ``epsilon``, ``sample``,
            ``v_prediction`` or ``flow_velocity``. Defaults to the scheduler's.
        noise_path: the path it was trained on: ``vp`` or ``flow``. Defaults to the scheduler's.
        noise_schedule: the training path's config keys (``num_train_timesteps``; on the VP path also
            the β keys). Defaults to the scheduler's when it samples the trained path.

    The last three are saved in ``model_index.json``. A scheduler of another path or parametrisation
    samples the UNet through the exact change of variables (``cross_path.py``). Further optional
    components are the rows of the component table (``components.py``), passed by keyword.
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components: ClassVar[list[str]] = optional_components()  # kept current by @declares_components
    _callback_tensor_inputs: ClassVar[list[str]] = ["latents", "model_output"]

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        vae: AutoencoderKL | None = None,
        prediction_type: str | None = None,
        noise_path: str | None = None,
        noise_schedule: Mapping | None = None,
        **components,
    ):
        super().__init__()
        components = {"unet": unet, "scheduler": scheduler, "vae": vae, **components}
        unknown = sorted(set(components) - set(COMPONENTS))
        if unknown:
            raise TypeError(f"unknown pipeline components {unknown}; the components are {list(COMPONENTS)}.")
        for name, component in components.items():
            fits = COMPONENTS[name].fits
            if component is not None and fits is not None:
                fits(component, unet.config)
        trained = resolve_parametrization(scheduler, prediction_type, noise_path)
        if noise_schedule is None:
            noise_schedule = noise_schedule_of(scheduler, trained.path)
        else:
            noise_schedule = dict(noise_schedule)
            ModelPath.from_schedule(trained, noise_schedule)  # a bad schedule fails here, naming the key
        self.register_modules(**{name: components.get(name) for name in COMPONENTS})
        self.register_to_config(
            prediction_type=trained.prediction_type, noise_path=trained.path, noise_schedule=noise_schedule
        )

    @property
    def trained_parametrization(self) -> Parametrization:
        """The (path, prediction type) the UNet was trained with, as recorded in the config."""
        return Parametrization(self.config.noise_path, self.config.prediction_type)

    # ---- input checks -----------------------------------------------------------------------

    @property
    def num_timesteps(self) -> int:
        """Number of model evaluations of the last call (read by diffusers' ``PipelineCallback``)."""
        return getattr(self, "_num_timesteps", 0)

    @property
    def num_classes(self) -> int | None:
        """Number of real classes of a class-conditional UNet (the null class excluded), else None."""
        num_class_embeds = self.unet.config.num_class_embeds
        return None if num_class_embeds is None else num_class_embeds - 1

    def check_parametrization(self) -> Parametrization:
        """The scheduler's parametrisation; ``ValueError`` if it cannot sample the UNet (``parametrization.py``)."""
        return check_scheduler_parametrization(self.scheduler, self.trained_parametrization, self.config.noise_schedule)

    @property
    def evaluations(self) -> dict[str, float]:
        """Model evaluations per image of the last call, by model: ``unet`` (a classifier-free guidance step
        counts its two halves), ``guide_unet``, ``classifier`` (forward and backward), ``unet_backward``,
        ``controlnet`` (with a control image)."""
        return dict(getattr(self, "_evaluations", {}))

    def prepare_guidance(
        self,
        rules: Sequence[GuidanceRule],
        class_labels,
        batch_size: int,
        device: torch.device,
        control: Control | None = None,
    ) -> tuple[dict[str, torch.Tensor], GuidedEvaluation | None, EvaluationCounter]:
        """The UNet's per-sample inputs, the call's rules bound to the pipeline (``guidance.py``) and the run's counter.

        The inputs are the class labels of a class-conditional UNet and a ``control`` (``control.py``): its image
        and scale. Labels are checked against the classes they name — the UNet's, or a guiding classifier's.
        """
        components = {name: getattr(self, name, None) for name in ("classifier",)}
        classes = label_classes(rules, self.num_classes, components)
        labels = None if class_labels is None else class_label_tensor(class_labels, batch_size, classes, device)
        conditions = model_conditions(self.prepare_class_labels(class_labels, batch_size, device), control)
        guided, counter = bind_call_guidance(self, rules, labels, conditions, batch_size)
        return conditions, guided, counter

    def set_timesteps(self, num_inference_steps: int, device: torch.device, sampled: Parametrization) -> list:
        """Set the scheduler's timesteps for a run on ``device``; return their sampler points (a, b).

        The points are read on a host grid, so nothing is ever read back from the device; on an accelerator
        the grid is then set again there, for the loop (on the CPU the host grid is the loop's).
        """
        self.scheduler.set_timesteps(num_inference_steps)
        levels = sampler_levels(self.scheduler, sampled.path)
        if device.type != "cpu":
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        return levels

    def denoiser(
        self,
        sampled: Parametrization,
        targets: Sequence[str] | None,
        conditions: Mapping[str, torch.Tensor],
        guidance: GuidedEvaluation | None,
        device: torch.device,
        levels: Sequence[tuple[float, float]] | None = None,
        counter: EvaluationCounter | None = None,
    ) -> Denoiser:
        """The UNet as D(x, i) at the scheduler's current timesteps (or ``levels``), answering ``targets``.

        ``sampled`` is the scheduler's parametrisation (:meth:`check_parametrization`, resolved once per call);
        ``targets`` None asks for it, natively where it is the UNet's own (``cross_path.scheduler_model_calls``).
        ``conditions``: the UNet's per-sample inputs (:meth:`prepare_guidance`); with a control image the UNet is
        evaluated with the control network's residuals (``control.py``).
        """
        plan = scheduler_model_calls(
            self.scheduler, sampled, self.trained_parametrization, self.config.noise_schedule, targets, device, levels
        )
        counter = counter if counter is not None else EvaluationCounter(1)
        model = UNetModel(self.unet)
        if "control_image" in conditions:
            model = ControlledUNetModel(self.unet, self.controlnet, counter)
        ends = interval_ends(self.scheduler, self.unet, sampled, self.trained_parametrization)
        return Denoiser(model, plan, conditions, guidance, dtype=self.unet.dtype, counter=counter, interval_ends=ends)

    def check_inputs(
        self,
        batch_size: int,
        num_inference_steps: int,
        generator: torch.Generator | list[torch.Generator] | None,
        class_labels: int | Sequence[int] | torch.Tensor | None,
        guidance_scale: float,
        output_type: str,
        callback_on_step_end_tensor_inputs: Sequence[str],
        eta: float = 0.0,
        guidance: Guidance | None = None,
    ) -> tuple[Parametrization, tuple[GuidanceRule, ...]]:
        """Validate the arguments of ``__call__`` (``inputs.py``); every error names the value and what is allowed.

        Returns the scheduler's parametrisation and the call's guidance rules, each resolved once here.
        """
        check_call_arguments(batch_size, num_inference_steps, generator, eta, guidance_scale, output_type)
        rules = call_rules(guidance_scale, guidance)
        components = {"classifier": getattr(self, "classifier", None)}
        check_conditioning(class_labels, rules, self.num_classes, label_classes(rules, self.num_classes, components))
        check_callback_inputs(callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        sampled = self.check_parametrization()
        if self.vae is not None:
            warn_if_scheduler_clips(self.scheduler)
        self.check_memory(batch_size * max((rule.memory_factor for rule in rules), default=1))
        return sampled, rules

    def check_memory(self, batch_size: int) -> None:
        """Refuse a batch whose sampling buffers alone exceed the free memory (``inputs.check_sampling_memory``)."""
        check_sampling_memory(self.unet, batch_size, self._execution_device)

    def prepare_class_labels(
        self, class_labels: int | Sequence[int] | torch.Tensor | None, batch_size: int, device: torch.device
    ) -> torch.Tensor | None:
        """Class labels as a LongTensor of shape (batch_size,) on ``device``; None for an unconditional UNet.

        ``None`` on a class-conditional UNet samples every image with the null class.
        """
        if self.num_classes is None:
            return None
        return class_label_tensor(class_labels, batch_size, self.num_classes, device)

    def step_kwargs(self, generator: torch.Generator | list[torch.Generator] | None, eta: float) -> dict:
        """``eta`` and ``generator`` for ``scheduler.step``, each only if ``step`` accepts it."""
        accepted = inspect.signature(self.scheduler.step).parameters
        kwargs = {"eta": eta, "generator": generator}
        return {name: value for name, value in kwargs.items() if name in accepted}

    # ---- sampling ---------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        guidance: Guidance | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        latents: torch.Tensor | None = None,
        control_image: ImageInput | None = None,
        controlnet_conditioning_scale: float = 1.0,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images.

        Args:
            batch_size: number of images.
            num_inference_steps: number of sampling steps n; a second-order scheduler (Heun)
                evaluates the UNet 2n − 1 times, and the progress bar counts evaluations.
            generator: a ``torch.Generator``, or a list with one per image, for reproducible noise.
            eta: DDIM's η (0 = deterministic); passed only to schedulers whose ``step`` takes it.
            class_labels: for a class-conditional UNet, one class index for all images or one per
                image, in [0, num_classes − 1]. ``None`` samples with the null class.
            guidance_scale: classifier-free guidance weight w; 1 disables guidance and skips the
                unconditional half of the batch.
            guidance: further guidance (``scratch_diffusion.guidance``): one rule or a list — at most one
                combining rule (``ClassifierFreeGuidance`` with an interval, ``AutoGuidance``), first, then
                ``ClassifierGuidance`` / ``LossGuidance``. With ``guidance_scale`` ≠ 1 no combining rule.
                Classifier guidance lets ``class_labels`` steer an unconditional UNet. ``pipe.evaluations``
                then reports what the call evaluated, per image.
            output_type: ``"pil"`` (list of PIL images), ``"np"`` (float array, shape
                (batch_size, H, W, C), values in [0, 1]), ``"pt"`` (tensor, shape
                (batch_size, C, H, W), values in [0, 1]) or ``"latent"``: the last sample as it
                leaves the loop, not decoded nor clamped — with a VAE its scaled latents
                (``decode_latents(pipe.vae, z)`` decodes them), without one the image in [−1, 1].
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
            callback_on_step_end: called as ``fn(pipeline, i, t, tensors)`` after each step, with
                ``tensors`` holding the names in ``callback_on_step_end_tensor_inputs``; a
                ``latents`` entry in its returned dict replaces the current sample.
            callback_on_step_end_tensor_inputs: names passed to the callback, from
                ``["latents", "model_output"]``.
            latents: the initial noise instead of drawing it, a float tensor of shape
                (batch_size, *latent_shape) (e.g. from :meth:`invert`); scaled by ``init_noise_sigma``
                as drawn noise is, and cast to the UNet's device and dtype.
            control_image: with a ``controlnet`` component, the control (Zhang et al., 2023) in [0, 1] at the images'
                size (the network's ``conditioning_channels``; ``control.py``), as ``invert`` takes images: one for
                all images or one per image. Classifier-free guidance evaluates both halves with it.
            controlnet_conditioning_scale: the factor of the control network's residuals (0 = the UNet alone).

        Returns:
            ``ImagePipelineOutput(images=...)``, or ``(images,)`` if ``return_dict`` is False.

        Raises:
            ValueError: for an argument out of its allowed set, or a scheduler that cannot sample the
                UNet (``cross_path.py``) — always before any model evaluation.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        sampled, rules = self.check_inputs(
            batch_size,
            num_inference_steps,
            generator,
            class_labels,
            guidance_scale,
            output_type,
            callback_on_step_end_tensor_inputs,
            eta,
            guidance,
        )
        device = self._execution_device
        control = prepare_control(self, control_image, controlnet_conditioning_scale, batch_size, device)
        conditions, guided, counter = self.prepare_guidance(rules, class_labels, batch_size, device, control)

        shape = sample_shape(self.unet, batch_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        else:
            check_latents(latents, shape)
            latents = latents.to(device=device, dtype=self.unet.dtype)
        levels = self.set_timesteps(num_inference_steps, device, sampled)
        denoiser = self.denoiser(sampled, None, conditions, guided, device, levels, counter)
        latents = latents * getattr(self.scheduler, "init_noise_sigma", 1.0)
        self._num_timesteps = len(self.scheduler.timesteps)
        step_kwargs = self.step_kwargs(generator, eta)
        loop = SamplingLoop(self, denoiser, step_kwargs, callback_on_step_end, callback_on_step_end_tensor_inputs)
        latents = loop.sample(latents, range(self._num_timesteps))
        self._evaluations = counter.per_image()
        images = samples_to_images(latents, output_type, self.vae)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    # ---- inversion ----------------------------------------------------------------------------

    @torch.no_grad()
    def invert(
        self,
        images: ImageInput,
        num_inference_steps: int = 50,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        r"""The noise that the deterministic sampler maps back to ``images`` (DDIM inversion; ``inversion.py``).

        ``pipe(latents=pipe.invert(x, num_inference_steps=n), num_inference_steps=n)`` reconstructs ``x``
        with the pipeline's (deterministic) scheduler and the same labels and guidance, up to an error
        that falls as n grows.

        Args:
            images: as the pipeline outputs them: a (B, C, H, W) tensor in [0, 1] (``"pt"``), a
                (B, H, W, C) array in [0, 1] (``"np"``), or PIL images (``"pil"``). With a VAE they
                are encoded first (the posterior mean, ``latents.encode_to_latents``).
            num_inference_steps: the sampler's steps n; n model evaluations (one per grid interval).
            class_labels, guidance_scale: as in ``__call__``.

        Returns:
            float32 latents of shape (B, *latent_shape) on the execution device.

        Raises:
            ValueError: for bad images or arguments, or a scheduler with ``init_noise_sigma`` ≠ 1 — before
                any model evaluation.
        """
        return invert_images(self, images, num_inference_steps, class_labels, guidance_scale)
