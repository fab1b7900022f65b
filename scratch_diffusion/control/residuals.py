"""A control network's residuals added to a plain diffusers ``UNet2DModel`` for one call, by module hooks.

``UNet2DModel.forward`` accepts no extra residuals. Rather than a subclass with a copy of its forward, the
residuals go in through hooks installed for the duration of one call and removed in a ``finally``:

- each up block gets a forward pre-hook that replaces its ``res_hidden_states_tuple`` by skip + residual. The UNet
  hands up block i the *last* ``len(resnets)`` of the skips still unused (``UNet2DModel.forward``, step 5), so the
  residuals are split the same way: the last ``len(up_blocks[0].resnets)`` to the first up block, and so on;
- the mid block gets a forward hook adding the mid residual to its output (a UNet without a mid block: the first
  up block's input, which is what the mid block's output would have been).

So the saved UNet stays a plain ``UNet2DModel`` (every loading story loads it with diffusers' own class), and no
copy of diffusers' forward can drift from the installed one. The hooks live on the UNet's modules while the call
runs: do not call the same UNet from another thread meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from diffusers import UNet2DModel
from torch.utils.hooks import RemovableHandle

from .controlnet import ControlNet2DModel, check_controlnet_fits_unet


def _add_to_skips(up_index: int, residuals: tuple[torch.Tensor, ...]):
    """A forward pre-hook (with kwargs) for up block ``up_index``: its skips plus ``residuals``, in order."""

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        positional = "res_hidden_states_tuple" not in kwargs
        skips = args[1] if positional else kwargs["res_hidden_states_tuple"]
        shapes = [tuple(skip.shape) for skip in skips]
        if shapes != [tuple(residual.shape) for residual in residuals]:
            raise ValueError(
                f"up block {up_index} receives skips of shapes {shapes}, but the control network's residuals for it "
                f"have shapes {[tuple(r.shape) for r in residuals]}; pass residuals of a network made from this UNet."
            )
        added = tuple(skip + residual.to(skip.dtype) for skip, residual in zip(skips, residuals, strict=True))
        if positional:
            return (args[0], added, *args[2:]), kwargs
        return args, {**kwargs, "res_hidden_states_tuple": added}

    return hook


def _add_to_output(residual: torch.Tensor):
    """A forward hook adding ``residual`` to a module's output tensor."""

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + residual.to(output.dtype)

    return hook


def _add_to_input(residual: torch.Tensor):
    """A forward pre-hook (with kwargs) adding ``residual`` to a block's ``hidden_states`` (its first input)."""

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if "hidden_states" in kwargs:
            hidden = kwargs["hidden_states"]
            return args, {**kwargs, "hidden_states": hidden + residual.to(hidden.dtype)}
        return (args[0] + residual.to(args[0].dtype), *args[1:]), kwargs

    return hook


@contextmanager
def residuals_added(
    unet: UNet2DModel, down_block_res_samples: Sequence[torch.Tensor], mid_block_res_sample: torch.Tensor
) -> Iterator[UNet2DModel]:
    """Within the block, calling ``unet`` adds the residuals to its skips and mid block (module docstring).

    Raises:
        ValueError: before installing anything, if the number of residuals is not the number of skips the up
            blocks consume; during the call, if a residual's shape is not its skip's.
    """
    consumed = [len(block.resnets) for block in unet.up_blocks]
    if len(down_block_res_samples) != sum(consumed):
        raise ValueError(
            f"{len(down_block_res_samples)} down block residuals are not allowed for this UNet: its up blocks "
            f"consume {sum(consumed)} skips ({consumed} per block); pass a control network's residuals made from it."
        )
    remaining = tuple(down_block_res_samples)
    handles: list[RemovableHandle] = []
    try:
        for up_index, (block, count) in enumerate(zip(unet.up_blocks, consumed, strict=True)):
            mine, remaining = remaining[-count:], remaining[:-count]
            handles.append(block.register_forward_pre_hook(_add_to_skips(up_index, mine), with_kwargs=True))
        if unet.mid_block is not None:
            handles.append(unet.mid_block.register_forward_hook(_add_to_output(mid_block_res_sample)))
        else:
            hook = _add_to_input(mid_block_res_sample)
            handles.append(unet.up_blocks[0].register_forward_pre_hook(hook, with_kwargs=True))
        yield unet
    finally:
        for handle in handles:
            handle.remove()


class ControlledUNet:
    """A frozen ``UNet2DModel`` steered by a :class:`ControlNet2DModel`: ``(x_t, t, control_image) -> UNet output``.

    Each call runs the control network, then the plain ``unet`` within :func:`residuals_added`. Gradients reach
    the control network through the frozen UNet (whose parameters may have ``requires_grad=False``).

    Args:
        unet: the UNet (unchanged; nothing stays installed on it between calls).
        controlnet: a control network made from it (checked: :func:`check_controlnet_fits_unet`).
    """

    def __init__(self, unet: UNet2DModel, controlnet: ControlNet2DModel):
        check_controlnet_fits_unet(controlnet, unet.config)
        self.unet = unet
        self.controlnet = controlnet

    @property
    def config(self):
        """The UNet's config (what code reading ``unet.config`` expects)."""
        return self.unet.config

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        control_image: torch.Tensor,
        conditioning_scale: float | torch.Tensor = 1.0,
        **unet_kwargs,
    ):
        """``unet(sample, timestep, **unet_kwargs)`` with the control network's residuals added.

        Args:
            sample, timestep: as the UNet takes them.
            control_image: (B, conditioning_channels, f·H, f·W) in [0, 1] (checked before any evaluation).
            conditioning_scale: multiplies the residuals (0: the plain UNet's output); a number or one per example.
            unet_kwargs: the UNet's other keywords (``class_labels`` also goes to the control network,
                ``return_dict``).

        Returns:
            What the UNet returns (a ``UNet2DOutput``, or a tuple with ``return_dict=False``).
        """
        residuals = self.controlnet(
            sample, timestep, control_image, class_labels=unet_kwargs.get("class_labels"),
            conditioning_scale=conditioning_scale,
        )  # fmt: skip
        with residuals_added(self.unet, residuals.down_block_res_samples, residuals.mid_block_res_sample):
            return self.unet(sample, timestep, **unet_kwargs)
