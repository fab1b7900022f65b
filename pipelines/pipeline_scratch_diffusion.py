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
import warnings
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np
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
# One call samples one batch in one forward pass per step. Larger requests are typos (10**6) or
# belong in several calls (the metrics CLI splits --num_samples into --batch_size chunks).
MAX_BATCH_SIZE = 65_536
# The sampling loop holds at least this many sample-sized tensors at once (latents, model input,
# model output, next latents): a lower bound on its memory, checked before anything is allocated.
SAMPLING_BUFFERS = 4
PREDICTION_TYPES_BY_PATH = {"vp": ("epsilon", "sample", "v_prediction"), "flow": ("flow_velocity",)}
SHIPPED_SCHEDULERS = {
    cls.__name__: cls for cls in (ScratchDDPMScheduler, ScratchDDIMScheduler, ScratchFlowMatchScheduler)
}


class SavedPipelineError(OSError):
    """A file of a saved pipeline folder is corrupt, truncated or of a refused kind; the message names it."""


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON object from ``path``, or a :class:`SavedPipelineError` naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SavedPipelineError(
            f"{path} is not valid JSON ({err}); the file is corrupt or truncated. Re-save or re-download the pipeline."
        ) from None
    if not isinstance(data, dict):
        raise SavedPipelineError(f"{path} holds a JSON {type(data).__name__}, not an object; it is not a config file.")
    return data


def _check_safetensors(path: str | os.PathLike) -> None:
    """The header of a safetensors file parses and the file is exactly as long as the header says."""
    size = os.path.getsize(path)
    problem = None
    with open(path, "rb") as f:
        head = f.read(8)
        header_length = int.from_bytes(head, "little") if len(head) == 8 else None
        if header_length is None or header_length > size - 8:
            problem = f"{size} bytes, shorter than its header"
        else:
            try:
                header = json.loads(f.read(header_length))
                end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
                problem = f"unreadable header ({type(err).__name__})"
            else:
                if size != 8 + header_length + end:
                    problem = f"{size} bytes where its header says {8 + header_length + end}"
    if problem is not None:
        raise SavedPipelineError(
            f"{path} is truncated or not a safetensors file ({problem}); re-save or re-download the pipeline."
        )


def _warn_unknown_keys(path: str | os.PathLike, config: dict, known: set[str]) -> None:
    unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
    if unknown:
        import diffusers

        warnings.warn(
            f"{path}: keys {unknown} are not known to this version and are ignored; the file was probably written by "
            f"a newer version (its _diffusers_version is {config.get('_diffusers_version')!r}, installed "
            f"{diffusers.__version__}). Upgrade scratch-diffusion/diffusers if the pipeline misbehaves.",
            UserWarning,
            stacklevel=4,
        )


def _init_keys(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}


def check_saved_folder(folder: str | os.PathLike, pipeline_cls: type | None = None) -> None:
    """Check a saved pipeline folder before diffusers reads it; raise :class:`SavedPipelineError` naming the file.

    ``model_index.json``, ``scheduler/scheduler_config.json`` and ``unet/config.json`` must be JSON
    objects; every ``unet/*.safetensors`` file must be complete (header and length); a UNet with
    only pickle-based weights (``.bin``, ``.pt``, ``.ckpt``) is refused. Keys unknown to the
    installed classes (a folder from a newer version) are reported with a ``UserWarning``. A
    missing file is left to diffusers' own error.
    """
    root = os.fspath(folder)
    index_path = os.path.join(root, "model_index.json")
    if not os.path.isfile(index_path):
        return
    index = read_json_object(index_path)
    if pipeline_cls is not None:
        _warn_unknown_keys(index_path, index, _init_keys(pipeline_cls))
    scheduler_entry = index.get("scheduler")
    scheduler_config = os.path.join(root, "scheduler", "scheduler_config.json")
    if scheduler_entry is not None and os.path.isfile(scheduler_config):
        config = read_json_object(scheduler_config)
        scheduler_cls = SHIPPED_SCHEDULERS.get(scheduler_entry[1]) if isinstance(scheduler_entry, list) else None
        if scheduler_cls is not None and scheduler_entry[0] == BUNDLE_MODULE:
            _warn_unknown_keys(scheduler_config, config, _init_keys(scheduler_cls))
    unet_dir = os.path.join(root, "unet")
    if index.get("unet") is not None and os.path.isdir(unet_dir):
        unet_config = os.path.join(unet_dir, "config.json")
        if os.path.isfile(unet_config):
            config = read_json_object(unet_config)
            if index["unet"] == ["diffusers", "UNet2DModel"]:
                _warn_unknown_keys(unet_config, config, _init_keys(UNet2DModel))
        names = sorted(os.listdir(unet_dir))
        weights = [n for n in names if n.endswith(".safetensors")]
        for name in weights:
            _check_safetensors(os.path.join(unet_dir, name))
        pickled = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
        if not weights and pickled:
            raise SavedPipelineError(
                f"{unet_dir} holds only pickle-based weights {pickled}; scratch-diffusion loads weights only from "
                "safetensors files, because unpickling can run code. Convert them with a trusted tool and save "
                "with safe_serialization=True."
            )


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
        Weights load only from safetensors files (``use_safetensors=True`` unless given), and the
        folder is checked first (:func:`check_saved_folder`): a corrupt or truncated file raises
        :class:`SavedPipelineError` naming it; keys this version does not know are warned about.
        """
        if running_from_bundle() or "scheduler" in kwargs:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        kwargs.setdefault("use_safetensors", True)  # weights are never unpickled (.bin files are refused)
        name = str(pretrained_model_name_or_path)
        if not os.path.isdir(name) and (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1):
            raise FileNotFoundError(
                f"{name!r}: no such folder; pass a saved pipeline folder or a Hub repo id ('name' or 'owner/name')."
            )
        folder = name if os.path.isdir(name) else cls.download(name, **kwargs)
        check_saved_folder(folder, cls)
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
        eta: float = 0.0,
    ) -> None:
        """Validate the arguments of ``__call__``; every error names the value and what is allowed."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is not allowed; pass an integer ≥ 1.")
        if batch_size > MAX_BATCH_SIZE:
            raise ValueError(
                f"batch_size={batch_size} is not allowed; pass an integer ≤ {MAX_BATCH_SIZE} and sample larger sets "
                "in several calls."
            )
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, numbers.Integral)
            or num_inference_steps < 1
        ):
            raise ValueError(f"num_inference_steps={num_inference_steps!r} is not allowed; pass an integer ≥ 1.")
        generators = generator if isinstance(generator, list) else [generator]
        if any(g is not None and not isinstance(g, torch.Generator) for g in generators) or None in generators[1:]:
            raise TypeError(
                f"generator={generator!r} is not allowed; pass None, a torch.Generator, or a list of batch_size "
                "torch.Generator objects."
            )
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"got a list of {len(generator)} generators for batch_size={batch_size}; "
                "pass one generator, or exactly one per image."
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; choose one of {list(OUTPUT_TYPES)}.")
        if not isinstance(guidance_scale, numbers.Real) or not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale={guidance_scale!r} is not allowed; pass a finite number.")
        if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0 <= eta < math.inf:
            raise ValueError(f"eta={eta!r} is not allowed; pass a finite number ≥ 0 (0: deterministic DDIM).")
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
        guided = self.num_classes is not None and class_labels is not None and guidance_scale != 1
        self.check_memory(batch_size * (2 if guided else 1))

    def check_memory(self, batch_size: int) -> None:
        """Refuse, before allocating, a batch whose sampling buffers alone exceed the device's free memory.

        The bound counts only :data:`SAMPLING_BUFFERS` sample-sized tensors (the UNet's activations
        come on top), so a batch refused here could never have run. Free memory is read where it is
        cheap to know: ``MemAvailable`` on a Linux CPU, ``torch.cuda.mem_get_info`` on CUDA; other
        devices are not checked.
        """
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        per_sample = self.unet.config.in_channels * height * width * self.unet.dtype.itemsize
        needed = SAMPLING_BUFFERS * batch_size * per_sample
        device = self._execution_device
        free = _free_memory(device)
        if free is not None and needed > free:
            raise ValueError(
                f"batch_size={batch_size} needs at least {needed / 2**30:.1f} GiB for the sampling buffers alone "
                f"({SAMPLING_BUFFERS} tensors of {per_sample * batch_size / 2**30:.2f} GiB) but {device} has "
                f"{free / 2**30:.1f} GiB free; pass a smaller batch_size and sample in several calls."
            )

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
        try:
            labels = torch.as_tensor(given).reshape(-1)
        except (TypeError, ValueError, RuntimeError):  # strings, ragged lists, objects
            labels = None
        if labels is None or labels.dtype.is_floating_point or labels.dtype == torch.bool or len(labels) != batch_size:
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
            eta,
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
            _warn_if_not_finite(images)  # on the host already: free to check (pil would hide NaN as black)
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def _free_memory(device: torch.device) -> int | None:
    """Free memory of ``device`` in bytes where it is cheap and reliable to read, else None."""
    try:
        if device.type == "cuda":
            return torch.cuda.mem_get_info(device)[0]
        if device.type == "cpu":
            with open("/proc/meminfo", encoding="ascii") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
    except (OSError, RuntimeError, ValueError):
        pass
    return None


def _warn_if_not_finite(images: np.ndarray) -> None:
    """A NaN/inf sample (a diverged model or scheduler) is reported instead of silently saved as black."""
    bad = ~np.isfinite(images).reshape(len(images), -1).all(axis=1)
    if bad.any():
        warnings.warn(
            f"{int(bad.sum())} of {len(images)} sampled images contain NaN or inf values (the model output or the "
            "scheduler diverged); as PIL images they would come out black.",
            RuntimeWarning,
            stacklevel=3,
        )
