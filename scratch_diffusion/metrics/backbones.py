"""Features from any ``transformers`` image backbone (DINOv2 for FD-DINOv2, Stein et al., 2023), batched, in torch.

:class:`TransformersBackbone` loads ``AutoModel.from_pretrained(name_or_path)`` from a local folder
or a Hub id and maps images ``(N, C, H, W)`` in [-1, 1] to pooled features ``(N, D)`` (float32, CPU).

Preprocessing follows the checkpoint's image processor (``AutoImageProcessor.from_pretrained``
where the folder or repo has a ``preprocessor_config.json``): its resize (``shortest_edge`` keeping
the aspect ratio, or ``height``/``width``) with its resampling filter, its centre crop, rescaling to
[0, 1] and its mean/std normalisation. It is re-done in torch (on the model's device, per batch), the
way the processor's PIL backend does it on 8-bit images: ``torch.nn.functional.interpolate`` with
``antialias=True`` (PIL's bicubic/bilinear kernels), width then height with clipping to [0, 1] after each
pass (within about 1/255 of the processor's output on 8-bit images); filters
torch lacks (lanczos, box, hamming) use bicubic. Without a processor config the fallback is a resize
to the model config's ``image_size`` (square, bicubic, 224 if the config has none) and ImageNet
mean/std. Grayscale images are repeated to the model's ``num_channels``.

Pooling (``pooling="auto"``): the model's ``pooler_output`` if it returns one (for DINOv2 that *is*
the CLS token of the layer-normed ``last_hidden_state``, the DINOv2 / FD-DINOv2 convention), else
the CLS (first) token of a token sequence, else the spatial mean of a feature map (CNNs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FALLBACK_IMAGE_SIZE = 224
POOLINGS = ("auto", "pooler", "cls", "mean")
# PIL's resampling enum (as stored in preprocessor configs) → torch interpolation mode.
_RESAMPLE_MODES = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class BackboneUnavailableError(OSError):
    """A backbone that is neither a local folder nor in the Hugging Face cache (e.g. offline)."""


@dataclass(frozen=True)
class Preprocessing:
    """What the image processor says: resize, centre crop, normalisation (applied to pixels in [0, 1])."""

    shortest_edge: int | None  # resize so the shorter side is this (aspect kept) ...
    resize_to: tuple[int, int] | None  # ... or to exactly (height, width); neither: no resize
    crop_to: tuple[int, int] | None  # centre crop (height, width) after resizing
    mode: str  # torch interpolation mode
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # "image processor" or "fallback"

    def __call__(self, images: torch.Tensor, num_channels: int = 3) -> torch.Tensor:
        """``(N, C, H, W)`` in [-1, 1] → normalised ``(N, num_channels, h, w)`` pixel values."""
        x = ((images.to(torch.float32).clamp(-1, 1) + 1) / 2).contiguous()
        if x.shape[1] != num_channels:
            if x.shape[1] == 1:
                x = x.expand(-1, num_channels, -1, -1)
            elif num_channels == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise ValueError(f"images with {x.shape[1]} channels; the backbone takes {num_channels} (or 1).")
        height, width = self._resized_size(*x.shape[-2:])
        antialias = self.mode in ("bilinear", "bicubic")
        # Width, then height, clipping after each pass, as PIL does on 8-bit images.
        for size in ((x.shape[-2], width), (height, width)):
            if size != tuple(x.shape[-2:]):
                x = F.interpolate(x, size=size, mode=self.mode, antialias=antialias).clamp(0, 1)
        if self.crop_to is not None:
            x = _centre_crop(x, self.crop_to)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def _resized_size(self, height: int, width: int) -> tuple[int, int]:
        if self.resize_to is not None:
            return self.resize_to
        if self.shortest_edge is None:
            return height, width
        short, long = sorted((height, width))
        other = int(self.shortest_edge * long / short)  # as transformers' get_resize_output_image_size
        return (self.shortest_edge, other) if height <= width else (other, self.shortest_edge)


def _centre_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre crop to ``size``, zero-padding first where the image is smaller (as transformers does)."""
    (h, w), (ch, cw) = x.shape[-2:], size
    pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
    if pad_h or pad_w:
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        h, w = x.shape[-2:]
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top : top + ch, left : left + cw]


def _size_entry(size: object, key: str) -> int | None:
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value is not None else None


def _pair(size: object) -> tuple[int, int] | None:
    height, width = _size_entry(size, "height"), _size_entry(size, "width")
    return (height, width) if height is not None and width is not None else None


def preprocessing_from_processor(processor: object) -> Preprocessing:
    """The :class:`Preprocessing` an image processor (``BitImageProcessor``, ``ViTImageProcessor``, …) describes."""
    size = getattr(processor, "size", None) if getattr(processor, "do_resize", True) else None
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    shortest_edge = _size_entry(size, "shortest_edge") if size is not None else None
    normalise = getattr(processor, "do_normalize", True)
    resample = getattr(processor, "resample", 3)
    return Preprocessing(
        shortest_edge=shortest_edge,
        resize_to=_pair(size) if size is not None and shortest_edge is None else None,
        crop_to=_pair(crop) if crop is not None else None,
        mode=_RESAMPLE_MODES.get(int(resample) if resample is not None else 3, "bicubic"),
        mean=tuple(float(v) for v in processor.image_mean) if normalise else (0.0,),
        std=tuple(float(v) for v in processor.image_std) if normalise else (1.0,),
        source="image processor",
    )


def fallback_preprocessing(config: object) -> Preprocessing:
    """No processor config: a square bicubic resize to ``config.image_size`` (else 224), ImageNet mean/std."""
    size = getattr(config, "image_size", None) or FALLBACK_IMAGE_SIZE
    side = int(size[0] if isinstance(size, list | tuple) else size)
    return Preprocessing(None, (side, side), None, "bicubic", IMAGENET_MEAN, IMAGENET_STD, "fallback")


def _unavailable(name: str, error: Exception) -> BackboneUnavailableError:
    return BackboneUnavailableError(
        f"cannot load the transformers backbone {name!r}: it is not a local folder and is not in the Hugging Face "
        f"cache (offline: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}). Download it once while online "
        f"with `hf download {name}` (`huggingface-cli download {name}` before huggingface_hub 1.0), or pass a "
        f"local folder written by `save_pretrained` (config.json, weights, and preferably preprocessor_config.json). "
        f"Cause: {type(error).__name__}: {error}"
    )


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r}; allowed: {sorted(_DTYPES)} or a torch.dtype.")
    return _DTYPES[dtype]


def _load_processor(name: str) -> object | None:
    """The checkpoint's image processor, or None where it has no preprocessor config."""
    import transformers
    from transformers import AutoImageProcessor

    if Path(name).is_dir() and not (Path(name) / "preprocessor_config.json").is_file():
        return None
    # Only its settings are read, so the PIL backend (no torchvision needed) is enough.
    kwargs = {"backend": "pil"} if int(transformers.__version__.split(".")[0]) >= 5 else {}
    try:
        return AutoImageProcessor.from_pretrained(name, **kwargs)
    except (OSError, ValueError):  # no preprocessor_config.json in the repo / cache
        return None


class TransformersBackbone:
    """A :class:`~scratch_diffusion.metrics.frechet.FeatureExtractor` over a ``transformers`` image backbone.

    ``name_or_path``: a local folder or a Hub id (e.g. ``facebook/dinov2-small``); ``device``
    (default cuda if available, else cpu); ``batch_size`` images per forward pass; ``dtype`` of the
    weights and inputs (float32 default; features come back as float32 on the CPU); ``pooling`` one of
    :data:`POOLINGS` (see the module docstring).
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        dtype: torch.dtype | str | None = None,
        pooling: str = "auto",
    ) -> None:
        from transformers import AutoModel

        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}; allowed: at least 1.")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}; allowed: {POOLINGS}.")
        self.name = self.__name__ = str(name_or_path)
        self.batch_size, self.pooling, self.dtype = batch_size, pooling, _resolve_dtype(dtype)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            model = AutoModel.from_pretrained(self.name, dtype=self.dtype)
        except (OSError, ValueError) as error:
            if Path(self.name).is_dir():
                problem = f"{type(error).__name__}: {error}"
                raise ValueError(
                    f"{self.name!r} is a folder but not a transformers model folder ({problem})."
                ) from error
            if isinstance(error, ValueError):
                raise
            raise _unavailable(self.name, error) from error
        self.model = model.to(self.device).eval()
        processor = _load_processor(self.name)
        config = self.model.config
        self.preprocessing = preprocessing_from_processor(processor) if processor else fallback_preprocessing(config)
        self.num_channels = int(getattr(config, "num_channels", 3))

    def _pool(self, output: object) -> torch.Tensor:
        pooled = getattr(output, "pooler_output", None)
        if self.pooling in ("auto", "pooler") and pooled is not None:
            return pooled.flatten(1)
        if self.pooling == "pooler":
            raise ValueError(f"{self.name!r} returns no pooler_output; use pooling='cls' or 'mean'.")
        hidden = output.last_hidden_state
        if hidden.ndim == 4:  # (N, C, H, W) feature map
            return hidden.mean(dim=(2, 3))
        return hidden[:, 0] if self.pooling in ("auto", "cls") else hidden.mean(dim=1)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in [-1, 1] → ``(N, D)`` float32 features on the CPU, ``batch_size`` at a time."""
        images = torch.as_tensor(images)
        if images.ndim != 4:
            raise ValueError(f"images of shape {tuple(images.shape)}; expected (N, C, H, W) in [-1, 1].")
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size].to(self.device)
            pixels = self.preprocessing(batch, self.num_channels).to(self.dtype)
            chunks.append(self._pool(self.model(pixel_values=pixels)).to(torch.float32).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0)

    def __repr__(self) -> str:
        options = f"device={str(self.device)!r}, dtype={self.dtype}, pooling={self.pooling!r}"
        return f"TransformersBackbone({self.name!r}, {options})"
