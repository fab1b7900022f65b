"""Checks of the arguments of ``ScratchDiffusionPipeline.__call__``, all made before any model evaluation.

Every error names the offending value and what is allowed. The memory check refuses a batch whose
sampling buffers alone could not fit; the output check reports NaN/inf samples that PIL would
silently turn black.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from diffusers import UNet2DModel

# "latent": the final sample before decoding and clamping (a latent pipeline's scaled VAE latents).
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# One call samples one batch in one forward pass per step. Larger requests are typos (10**6) or
# belong in several calls (the metrics CLI splits --num_samples into --batch_size chunks).
MAX_BATCH_SIZE = 65_536
# The sampling loop holds at least this many sample-sized tensors at once (latents, model input,
# model output, next latents): a lower bound on its memory, checked before anything is allocated.
SAMPLING_BUFFERS = 4


def _is_positive_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= 1


def check_call_arguments(
    batch_size: int,
    num_inference_steps: int,
    generator: torch.Generator | list[torch.Generator] | None,
    eta: float,
    guidance_scale: float,
    output_type: str,
) -> None:
    """Validate the arguments of ``__call__`` that do not depend on the UNet."""
    if not _is_positive_int(batch_size):
        raise ValueError(f"batch_size={batch_size!r} is not allowed; pass an integer ≥ 1.")
    if batch_size > MAX_BATCH_SIZE:
        raise ValueError(
            f"batch_size={batch_size} is not allowed; pass an integer ≤ {MAX_BATCH_SIZE} and sample larger sets "
            "in several calls."
        )
    if not _is_positive_int(num_inference_steps):
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


def check_conditioning(
    class_labels: int | Sequence[int] | torch.Tensor | None,
    rules: Sequence[object],
    num_classes: int | None,
    label_classes: int | None,
) -> None:
    """Class labels only where something takes them; every rule that guides towards labels gets them.

    ``rules`` are the call's guidance rules (``guidance.call_rules``); ``label_classes`` how many classes labels
    may name — the UNet's, or on an unconditional UNet a guiding classifier's (None: nothing takes labels).
    """
    if label_classes is None and class_labels is not None:
        raise ValueError(
            f"class_labels={class_labels!r} given, but the UNet is unconditional "
            "(unet.config.num_class_embeds is None) and no classifier guides it; allowed: class_labels=None "
            "(or guidance=ClassifierGuidance(...) with a classifier)."
        )
    for rule in rules:
        if rule.needs_labels and class_labels is None:
            reason = "the UNet is unconditional" if num_classes is None else "no class_labels were given"
            allowed = "guidance_scale=1.0" if rule.argument.startswith("guidance_scale") else "class_labels"
            raise ValueError(f"{rule.argument} needs class labels to guide towards, but {reason}; allowed: {allowed}.")


def check_callback_inputs(requested: Sequence[str], allowed: Sequence[str]) -> None:
    """Every tensor name requested for ``callback_on_step_end`` is one the loop provides."""
    unknown = [name for name in requested if name not in allowed]
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs contains {unknown}; allowed: {list(allowed)}.")


def sample_shape(unet: UNet2DModel, batch_size: int) -> tuple[int, int, int, int]:
    """(batch, channels, height, width) of the samples ``unet`` denoises."""
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    return (batch_size, unet.config.in_channels, height, width)


def check_latents(latents: object, shape: tuple[int, ...]) -> None:
    """Given initial noise must be a floating-point tensor of the sample shape (its device and dtype are cast)."""
    if not isinstance(latents, torch.Tensor) or not latents.dtype.is_floating_point:
        raise ValueError(
            f"latents must be a floating-point torch.Tensor of shape {shape}; got {type(latents).__name__}"
            + (f" of dtype {latents.dtype}" if isinstance(latents, torch.Tensor) else "")
            + "."
        )
    if tuple(latents.shape) != tuple(shape):
        raise ValueError(f"latents have shape {tuple(latents.shape)}; expected {shape} (batch_size, C, H, W).")


def check_sampling_memory(unet: UNet2DModel, batch_size: int, device: torch.device) -> None:
    """Refuse, before allocating, a batch whose sampling buffers alone exceed the device's free memory.

    The bound counts only :data:`SAMPLING_BUFFERS` sample-sized tensors (the UNet's activations
    come on top), so a batch refused here could never have run. Free memory is read where it is
    cheap to know: ``MemAvailable`` on a Linux CPU, ``torch.cuda.mem_get_info`` on CUDA; other
    devices are not checked.
    """
    per_sample = math.prod(sample_shape(unet, 1)) * unet.dtype.itemsize
    needed = SAMPLING_BUFFERS * batch_size * per_sample
    free = free_memory(device)
    if free is not None and needed > free:
        raise ValueError(
            f"batch_size={batch_size} needs at least {needed / 2**30:.1f} GiB for the sampling buffers alone "
            f"({SAMPLING_BUFFERS} tensors of {per_sample * batch_size / 2**30:.2f} GiB) but {device} has "
            f"{free / 2**30:.1f} GiB free; pass a smaller batch_size and sample in several calls."
        )


def free_memory(device: torch.device) -> int | None:
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


def class_label_tensor(
    class_labels: int | Sequence[int] | torch.Tensor | None, batch_size: int, num_classes: int, device: torch.device
) -> torch.Tensor:
    """Class labels as a LongTensor of shape (batch_size,) on ``device``, checked to be in [0, num_classes).

    A single int applies to the whole batch. ``None`` samples every image with the null class
    (index ``num_classes``), i.e. unconditionally.
    """
    if class_labels is None:
        return torch.full((batch_size,), num_classes, dtype=torch.long, device=device)
    given = [int(class_labels)] * batch_size if isinstance(class_labels, numbers.Integral) else class_labels
    try:
        labels = torch.as_tensor(given).reshape(-1)
    except (TypeError, ValueError, RuntimeError):  # strings, ragged lists, objects
        labels = None
    if labels is None or labels.dtype.is_floating_point or labels.dtype == torch.bool or len(labels) != batch_size:
        raise ValueError(
            f"class_labels={class_labels!r} is not allowed; pass one int, or {batch_size} ints (one per image)."
        )
    if any(not 0 <= v < num_classes for v in labels.tolist()):  # host check before sampling starts
        raise ValueError(
            f"class_labels={class_labels!r} out of range; allowed: integers in [0, {num_classes - 1}] "
            f"(index {num_classes} is the null class used for guidance)."
        )
    return labels.to(device=device, dtype=torch.long)


def warn_if_not_finite(images: np.ndarray) -> None:
    """A NaN/inf sample (a diverged model or scheduler) is reported instead of silently saved as black."""
    bad = ~np.isfinite(images).reshape(len(images), -1).all(axis=1)
    if bad.any():
        warnings.warn(
            f"{int(bad.sum())} of {len(images)} sampled images contain NaN or inf values (the model output or the "
            "scheduler diverged); as PIL images they would come out black.",
            RuntimeWarning,
            stacklevel=3,
        )


def check_strength(strength: float) -> None:
    """Image-to-image and inpainting ``strength``: a real number in [0, 1] (0 keeps the input, 1 starts from noise)."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 <= strength <= 1:
        raise ValueError(
            f"strength={strength!r} is not allowed; pass a number in [0, 1] (0 returns the input, 1 starts from pure "
            "noise)."
        )


def check_resampling(jump_length: int, jump_n_sample: int) -> None:
    """RePaint's jump length j and resample count r (Lugmayr et al., 2022): integers ≥ 1 (r = 1: no resampling)."""
    for name, value in (("jump_length", jump_length), ("jump_n_sample", jump_n_sample)):
        if not _is_positive_int(value):
            raise ValueError(f"{name}={value!r} is not allowed; pass an integer ≥ 1.")
