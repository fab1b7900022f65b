"""Inpainting by replacement (imputation, Song et al., 2021; Lugmayr et al., 2022) with RePaint resampling.

The known region (mask 0) of the sample is, before each model evaluation at entry k, replaced by the input x0
noised to entry k's level with fresh noise, (a_k·x0 + b_k·z)/c_k in the scheduler's sample coordinates
(:mod:`.edit_levels`), and after the last step by x0 itself; the region to regenerate is sampled by the
pipeline's one loop (:mod:`.sampling_loop`), so every scheduler, both paths, guidance and class labels work as in
``__call__``. RePaint (:mod:`.repaint`) adds jumps: at its jump points the sample is carried forward j steps by
the exact forward transition (:meth:`~.edit_levels.EditLevels.jump`) and descends them again, r − 1 times.

**The scheduler across a jump.** Before each resampled segment the scheduler's state (``__dict__``, deep-copied)
is saved, and restored at every jump back to it: step indices, a Heun step's half-step state and a multistep
solver's history are those of the segment's start. For first-order schedulers (DDPM, DDIM, Euler, flow-matching
Euler) a step depends on the current sample alone, so each re-descent is exactly RePaint's chain. Multistep
solvers (DPM-Solver(++) 2M/3M, UniPC, DEIS) reuse, for the first order − 1 steps after a jump, model outputs of the
trajectory before the jump (the history at the segment's start): approximate there, consistent again after.
Second-order schedulers (Heun, KDPM2) jump only at full-step boundaries (entries m·order), where no half step is
pending, and a resampled step re-runs its predictor and corrector.
"""

from __future__ import annotations

import copy

import torch
from diffusers.utils.torch_utils import randn_tensor

from .edit_images import (
    MaskInput,
    clean_samples,
    latent_grid_mask,
    regenerate_mask,
    unit_images_to_output,
)
from .edit_levels import EditLevels
from .edit_run import EditCall, begin_edit, check_edit, unchanged_output
from .inputs import check_resampling
from .inversion import ImageInput
from .postprocess import samples_to_images
from .repaint import descent_entries, entry_moves, repaint_moves


class KnownRegion:
    """The input's known region put back on the path: a :data:`~.sampling_loop.Replacement` plus the final paste.

    Args:
        x0: the clean input in sample space (pixels in [−1, 1], or a latent pipeline's scaled latents).
        keep: bool (B, 1, h, w) on the sample grid, True where x0 is kept.
        levels: the run's :class:`~.edit_levels.EditLevels`; generator: draws the fresh noise of each replacement.
    """

    def __init__(self, x0: torch.Tensor, keep: torch.Tensor, levels: EditLevels, generator):
        self.x0, self.keep, self.levels, self.generator = x0, keep, levels, generator

    def __call__(self, latents: torch.Tensor, entry: int) -> torch.Tensor:
        """``latents`` with the known region at entry ``entry``'s level, (a·x0 + b·z)/c with fresh z."""
        signal_scale, noise_scale = self.levels.noising(entry)
        noise = randn_tensor(latents.shape, generator=self.generator, device=latents.device, dtype=latents.dtype)
        return torch.where(self.keep, self.x0 * signal_scale + noise * noise_scale, latents)

    def clean(self, latents: torch.Tensor) -> torch.Tensor:
        """``latents`` with the known region set to the clean input (after the last step)."""
        return torch.where(self.keep, self.x0, latents)


def jump_up(latents: torch.Tensor, levels: EditLevels, source: int, target: int, generator) -> torch.Tensor:
    """The sample at entry ``source`` carried forward to the noisier entry ``target`` (RePaint's jump back):
    ``levels.jump`` with z ~ N(0, I) fresh."""
    noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    return levels.jump(latents, source, target, noise)


def restore_state(scheduler: object, state: dict) -> None:
    """Put ``scheduler`` (the same object) back into a state saved as ``copy.deepcopy(scheduler.__dict__)``."""
    scheduler.__dict__.clear()
    scheduler.__dict__.update(copy.deepcopy(state))


def inpaint_images(
    pipe, image: ImageInput, mask_image: MaskInput, jump_length: int, jump_n_sample: int, call: EditCall
):
    """``EditingMixin.inpaint`` without its ``return_dict``: the output images (or latents)."""
    check_resampling(jump_length, jump_n_sample)
    edit = check_edit(pipe, image, call)
    images, steps, generator = edit.images, edit.steps, call.generator
    regenerate = regenerate_mask(mask_image, edit.batch_size, *images.shape[-2:], images.device)
    if steps == 0:  # the input, as it came
        return unchanged_output(pipe, images, call.output_type)

    run = begin_edit(pipe, edit, call)
    moves = entry_moves(run.levels.layout, run.start_step, repaint_moves(steps, jump_length, jump_n_sample))
    x0 = clean_samples(pipe, images).to(dtype=pipe.unet.dtype)
    known = KnownRegion(x0, ~latent_grid_mask(regenerate, pipe.vae_scale_factor), run.levels, generator)
    latents = run.initial_sample(None if run.from_noise else x0, generator)
    total = descent_entries(moves)
    loop = run.loop(generator, call.eta, call.callback, edit.callback_inputs, total, replace=known)
    segment_starts = {target for source, target in moves if target < source}  # where jumps land
    saved: dict[int, dict] = {}  # the scheduler's state at each segment start, as the last descent left it
    with loop.progress(total):
        for index, (source, target) in enumerate(moves):
            if target < source:  # jump back up to a segment's start and restore the scheduler as it was there
                restore_state(pipe.scheduler, saved[target])
                latents = jump_up(latents, run.levels, source, target, generator)
                continue
            after_jump = index > 0 and moves[index - 1][1] < moves[index - 1][0]
            if source in segment_starts and not after_jump:
                saved[source] = copy.deepcopy(pipe.scheduler.__dict__)
            latents = loop.run(latents, range(source, target))
            if target == run.levels.num_entries:
                latents = known.clean(latents)
    run.finish()
    if call.output_type == "latent":
        return latents
    generated = samples_to_images(latents, "pt", pipe.vae)
    return unit_images_to_output(torch.where(regenerate, generated, images), call.output_type)
