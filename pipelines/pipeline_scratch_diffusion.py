"""ScratchDiffusionPipeline: unconditional or class-conditional sampling from a ``UNet2DModel``.

As thin as diffusers' ``DDPMPipeline`` — set up the noise, loop, postprocess — but it works with
any scheduler that speaks diffusers' API: it scales the initial noise by ``init_noise_sigma``,
calls ``scale_model_input`` every step, passes ``eta``/``generator`` only where ``step`` accepts
them, and iterates ``scheduler.timesteps`` as given (second-order schedulers such as Heun repeat
timesteps, one model evaluation per entry). Classifier-free guidance (Ho & Salimans, 2022) runs
the conditional and unconditional halves in one batched forward pass:
ŷ = ŷ_∅ + w·(ŷ_c − ŷ_∅), with the null class ∅ = ``num_class_embeds − 1``.

The pipeline records what its UNet was trained to predict (``prediction_type``) on which noise
path (``noise_path``) in ``model_index.json``, and refuses to sample with a scheduler that would
read the model output differently. The saved format is described in ``remote_code.py``.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
import os
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from scratch_schedulers import (
    Parametrization,
    ScratchDDIMScheduler,
    ScratchDDPMScheduler,
    ScratchFlowMatchScheduler,
    parametrization_of,
)

from .remote_code import (
    BUNDLE_MODULE,
    installed_model_index,
    running_from_bundle,
    shipped_model_index,
    write_shipped_code,
)

OUTPUT_TYPES = ("pil", "np", "pt")
PREDICTION_TYPES_BY_PATH = {"vp": ("epsilon", "sample", "v_prediction"), "flow": ("flow_velocity",)}
SHIPPED_SCHEDULERS = {
    cls.__name__: cls for cls in (ScratchDDPMScheduler, ScratchDDIMScheduler, ScratchFlowMatchScheduler)
}


def resolve_parametrization(scheduler: object, prediction_type: str | None, noise_path: str | None) -> Parametrization:
    """The parametrisation a UNet was trained with: given explicitly, or that of its scheduler.

    ``prediction_type`` alone fixes the path (``flow_velocity`` ⇒ ``flow``, otherwise ``vp``);
    ``noise_path="flow"`` alone fixes ``flow_velocity``; ``noise_path="vp"`` alone takes the
    scheduler's prediction type, which must then be a VP one.
    """
    if noise_path is not None and noise_path not in PREDICTION_TYPES_BY_PATH:
        raise ValueError(f"noise_path={noise_path!r} is not supported; choose one of {list(PREDICTION_TYPES_BY_PATH)}.")
    allowed = [p for types in PREDICTION_TYPES_BY_PATH.values() for p in types]
    if prediction_type is not None and prediction_type not in allowed:
        raise ValueError(f"prediction_type={prediction_type!r} is not supported; choose one of {allowed}.")
    if prediction_type is None:
        if noise_path == "flow":
            prediction_type = "flow_velocity"
        else:
            of_scheduler = parametrization_of(scheduler)
            if noise_path is not None and of_scheduler.path != noise_path:
                raise ValueError(
                    f"noise_path={noise_path!r} but the scheduler samples the {of_scheduler.path!r} path; "
                    f"pass prediction_type too (one of {list(PREDICTION_TYPES_BY_PATH[noise_path])})."
                )
            prediction_type = of_scheduler.prediction_type
    if noise_path is None:
        noise_path = "flow" if prediction_type == "flow_velocity" else "vp"
    if prediction_type not in PREDICTION_TYPES_BY_PATH[noise_path]:
        raise ValueError(
            f"prediction_type={prediction_type!r} does not exist on the {noise_path!r} noise path; "
            f"choose one of {list(PREDICTION_TYPES_BY_PATH[noise_path])}."
        )
    return Parametrization(noise_path, prediction_type)


class ScratchDiffusionPipeline(DiffusionPipeline):
    r"""Sample images from a ``UNet2DModel`` with any diffusers-style scheduler.

    Args:
        unet: the denoiser; class-conditional if ``unet.config.num_class_embeds`` is set, in which
            case the last class index is the null class used for classifier-free guidance.
        scheduler: ours (``ScratchDDPMScheduler``, ``ScratchDDIMScheduler``,
            ``ScratchFlowMatchScheduler``) or a diffusers scheduler.
        prediction_type: what the UNet was trained to predict: ``epsilon``, ``sample``,
            ``v_prediction`` or ``flow_velocity``. Defaults to the scheduler's.
        noise_path: the path it was trained on: ``vp`` or ``flow``. Defaults to the scheduler's.

    Both are saved in ``model_index.json``; sampling with a scheduler that reads the model output
    as something else raises ``ValueError``.
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs: ClassVar[list[str]] = ["latents", "model_output"]

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        prediction_type: str | None = None,
        noise_path: str | None = None,
    ):
        super().__init__()
        trained = resolve_parametrization(scheduler, prediction_type, noise_path)
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(prediction_type=trained.prediction_type, noise_path=trained.path)

    @property
    def trained_parametrization(self) -> Parametrization:
        """The (path, prediction type) the UNet was trained with, as recorded in the config."""
        return Parametrization(self.config.noise_path, self.config.prediction_type)

    # ---- saving and loading -----------------------------------------------------------------

    def save_config(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        """Write ``model_index.json`` and the shipped code it names (see ``remote_code.py``).

        ``save_pretrained`` calls this after saving the components and before any upload.
        """
        write_shipped_code(save_directory, type(self), self.components)
        super().save_config(save_directory, push_to_hub=push_to_hub, **kwargs)

    def to_json_string(self) -> str:
        """``model_index.json`` as saved: ``_class_name`` and our components point at the shipped file."""
        index = shipped_model_index(json.loads(super().to_json_string()), type(self), self.components)
        return json.dumps(index, indent=2, sort_keys=True) + "\n"

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict:
        # diffusers reads model_index.json through this hook both in `download` and in `load_config`.
        return installed_model_index(super()._dict_from_json_file(json_file))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> ScratchDiffusionPipeline:
        """Load a saved pipeline from a folder or Hub repo id with the installed classes.

        No remote code is loaded or run: a scheduler saved as ``["scratch_diffusion", <class>]`` is
        built from the installed class of that name; everything else (download and its validation,
        the UNet, dtype and device options) is diffusers' ``DiffusionPipeline.from_pretrained``.
        """
        if running_from_bundle() or "scheduler" in kwargs:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        name = str(pretrained_model_name_or_path)
        folder = name if os.path.isdir(name) else cls.download(name, **kwargs)
        library, class_name = cls.load_config(folder).get("scheduler", (None, None))
        if library == BUNDLE_MODULE:
            if class_name not in SHIPPED_SCHEDULERS:
                raise ValueError(
                    f"{name}: scheduler class {class_name!r} is not part of this scratch-diffusion version; "
                    f"known: {sorted(SHIPPED_SCHEDULERS)}. Upgrade the package or load with "
                    "DiffusionPipeline.from_pretrained(..., trust_remote_code=True)."
                )
            kwargs["scheduler"] = SHIPPED_SCHEDULERS[class_name].from_pretrained(folder, subfolder="scheduler")
        pipeline = super().from_pretrained(folder, **kwargs)
        pipeline.register_to_config(_name_or_path=name)
        return pipeline

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

    def check_parametrization(self) -> None:
        """Raise ``ValueError`` unless the scheduler reads model outputs as the UNet was trained."""
        sampled = parametrization_of(self.scheduler)
        trained = self.trained_parametrization
        if sampled != trained:
            raise ValueError(
                f"{type(self.scheduler).__name__} samples the {sampled.path!r} path with "
                f"prediction_type={sampled.prediction_type!r}, but the UNet was trained on the {trained.path!r} "
                f"path to predict {trained.prediction_type!r}. Use a scheduler configured for "
                f"(noise_path={trained.path!r}, prediction_type={trained.prediction_type!r})."
            )

    def check_inputs(
        self,
        batch_size: int,
        num_inference_steps: int,
        generator: torch.Generator | list[torch.Generator] | None,
        class_labels: int | Sequence[int] | torch.Tensor | None,
        guidance_scale: float,
        output_type: str,
        callback_on_step_end_tensor_inputs: Sequence[str],
    ) -> None:
        """Validate the arguments of ``__call__``; every error names the value and what is allowed."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is not allowed; pass an integer ≥ 1.")
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, numbers.Integral)
            or num_inference_steps < 1
        ):
            raise ValueError(f"num_inference_steps={num_inference_steps!r} is not allowed; pass an integer ≥ 1.")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"got a list of {len(generator)} generators for batch_size={batch_size}; "
                "pass one generator, or exactly one per image."
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; choose one of {list(OUTPUT_TYPES)}.")
        if not isinstance(guidance_scale, numbers.Real) or not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale={guidance_scale!r} is not allowed; pass a finite number.")
        if self.num_classes is None and class_labels is not None:
            raise ValueError(
                f"class_labels={class_labels!r} given, but the UNet is unconditional "
                "(unet.config.num_class_embeds is None); allowed: class_labels=None."
            )
        if guidance_scale != 1 and class_labels is None:
            reason = "the UNet is unconditional" if self.num_classes is None else "no class_labels were given"
            raise ValueError(
                f"guidance_scale={guidance_scale!r} needs class labels to guide towards, but {reason}; "
                "allowed: guidance_scale=1.0."
            )
        unknown = [name for name in callback_on_step_end_tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs contains {unknown}; allowed: {self._callback_tensor_inputs}."
            )
        self.check_parametrization()

    def prepare_class_labels(
        self, class_labels: int | Sequence[int] | torch.Tensor | None, batch_size: int, device: torch.device
    ) -> torch.Tensor | None:
        """Class labels as a LongTensor of shape (batch_size,) on ``device``, checked to be in range.

        A single int applies to the whole batch. ``None`` on a class-conditional UNet samples every
        image with the null class, i.e. unconditionally.
        """
        if self.num_classes is None:
            return None
        if class_labels is None:
            return torch.full((batch_size,), self.num_classes, dtype=torch.long, device=device)
        given = [int(class_labels)] * batch_size if isinstance(class_labels, numbers.Integral) else class_labels
        labels = torch.as_tensor(given).reshape(-1)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or len(labels) != batch_size:
            raise ValueError(
                f"class_labels={class_labels!r} is not allowed; pass one int, or {batch_size} ints (one per image)."
            )
        if any(not 0 <= v < self.num_classes for v in labels.tolist()):  # host check before sampling starts
            raise ValueError(
                f"class_labels={class_labels!r} out of range; allowed: integers in [0, {self.num_classes - 1}] "
                f"(index {self.num_classes} is the null class used for guidance)."
            )
        return labels.to(device=device, dtype=torch.long)

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
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
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
            output_type: ``"pil"`` (list of PIL images), ``"np"`` (float array, shape
                (batch_size, H, W, C), values in [0, 1]) or ``"pt"`` (tensor, shape
                (batch_size, C, H, W), values in [0, 1]).
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
            callback_on_step_end: called as ``fn(pipeline, i, t, tensors)`` after each step, with
                ``tensors`` holding the names in ``callback_on_step_end_tensor_inputs``; a
                ``latents`` entry in its returned dict replaces the current sample.
            callback_on_step_end_tensor_inputs: names passed to the callback, from
                ``["latents", "model_output"]``.

        Returns:
            ``ImagePipelineOutput(images=...)``, or ``(images,)`` if ``return_dict`` is False.

        Raises:
            ValueError: for an argument out of its allowed set, or a scheduler whose parametrisation
                differs from the one the UNet was trained with — always before any model evaluation.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        self.check_inputs(
            batch_size,
            num_inference_steps,
            generator,
            class_labels,
            guidance_scale,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        device = self._execution_device
        labels = self.prepare_class_labels(class_labels, batch_size, device)
        guided = labels is not None and guidance_scale != 1
        if guided:  # conditional half first, then the null class: one forward pass per step
            labels = torch.cat([labels, torch.full_like(labels, self.num_classes)])

        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        shape = (batch_size, self.unet.config.in_channels, height, width)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * getattr(self.scheduler, "init_noise_sigma", 1.0)
        self._num_timesteps = len(self.scheduler.timesteps)
        step_kwargs = self.step_kwargs(generator, eta)
        scale_model_input = getattr(self.scheduler, "scale_model_input", lambda sample, timestep: sample)

        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = scale_model_input(model_input, t)
            model_output = self.unet(model_input, t, class_labels=labels).sample
            if guided:
                conditional, unconditional = model_output.chunk(2)
                model_output = unconditional + guidance_scale * (conditional - unconditional)
            latents = self.scheduler.step(model_output, t, latents, **step_kwargs, return_dict=False)[0]
            if callback_on_step_end is not None:
                tensors = {"latents": latents, "model_output": model_output}
                requested = {name: tensors[name] for name in callback_on_step_end_tensor_inputs}
                returned = callback_on_step_end(self, i, t, requested) or {}
                latents = returned.get("latents", latents)

        images = (latents / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            images = images.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
