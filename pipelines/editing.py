"""Editing methods of ``ScratchDiffusionPipeline``: image-to-image (SDEdit) and inpainting (replacement + RePaint).

They are methods of the one pipeline class rather than separate pipeline classes, so every loading story
(installed package, diffusers with the shipped code, a Hub repo id) that gives a ``ScratchDiffusionPipeline``
can edit with it, from the same saved folder. Each is a thin wrapper: the work is in :mod:`.img2img` and
:mod:`.inpainting`; both run the pipeline's one denoiser (counted: ``pipe.evaluations``) in its one sampling
loop (:mod:`.sampling_loop`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from scratch_diffusion.guidance.compose import Guidance

from .edit_images import MaskInput
from .edit_levels import StepLayout, edit_step_count
from .edit_run import EditCall
from .img2img import image_to_image
from .inpainting import inpaint_images
from .inputs import check_call_arguments, check_resampling, check_strength
from .inversion import ImageInput
from .repaint import descent_entries, entry_moves, repaint_moves

StepCallback = (
    Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict] | PipelineCallback | MultiPipelineCallbacks | None
)


class EditingMixin:
    """``img2img`` and ``inpaint`` for a pipeline with a UNet, a scheduler and an optional VAE."""

    @torch.no_grad()
    def img2img(
        self,
        image: ImageInput,
        strength: float = 0.8,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        guidance: Guidance | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        control_image: ImageInput | None = None,
        controlnet_conditioning_scale: float = 1.0,
    ) -> ImagePipelineOutput | tuple:
        r"""Image-to-image by SDEdit (Meng et al., 2022): noise ``image`` to the level ``strength`` sets, then sample.

        Of an n-step schedule the last S = round(strength·n) steps run (Python's ``round``; diffusers' img2img
        convention), from step t_start = n − S: the input x0 is put at that step's point of the scheduler's path in
        the scheduler's own sample coordinates, (a·x0 + b·z)/c (``edit_levels.py``), and ``set_begin_index`` is
        called where the scheduler has it. Model evaluations: S for first-order schedulers, 2S − 1 for second-order
        ones (Heun), twice that in ``pipe.evaluations["unet"]`` under classifier-free guidance.

        - strength 0 (or one that rounds to 0 steps): the input itself, with no model evaluation (``"pt"``: its
          float32 values bit for bit; ``"latent"``: 2·x − 1, or a latent pipeline's encoded input).
        - strength 1: bit-identical to ``pipe(batch_size=B, generator=generator, ...)`` with the same arguments —
          the noise is drawn the same way, and the input is not used.

        Args:
            image: as ``invert`` takes it: a (B, C, H, W) tensor in [0, 1], a (B, H, W, C) array in [0, 1], or PIL
                images; the batch size is B. A latent pipeline encodes it (the posterior mean,
                ``latents.encode_to_latents``).
            strength: in [0, 1], how far up the path the input goes (0 keeps it, 1 starts from pure noise).
            num_inference_steps: steps n of the whole schedule.
            generator, eta, class_labels, guidance_scale, guidance, output_type, return_dict,
            callback_on_step_end, callback_on_step_end_tensor_inputs: as in ``__call__``; the callback's step index
                counts from 0 at the first step run, and ``pipe.num_timesteps`` is the number of entries run.
            control_image, controlnet_conditioning_scale: a ``controlnet`` component's control, as in ``__call__``.

        Returns:
            ``ImagePipelineOutput(images=...)``, or ``(images,)`` if ``return_dict`` is False.

        Raises:
            ValueError: for ``strength`` outside [0, 1], images of the wrong shape or range, any argument
                ``__call__`` refuses, or a scheduler that cannot start within its schedule (for strength < 1) —
                always before any model evaluation.
        """
        call = EditCall(
            num_inference_steps,
            strength,
            generator,
            eta,
            class_labels,
            guidance_scale,
            guidance,
            output_type,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            control_image,
            controlnet_conditioning_scale,
        )
        images = image_to_image(self, image, call)
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    @torch.no_grad()
    def inpaint(
        self,
        image: ImageInput,
        mask_image: MaskInput,
        num_inference_steps: int = 50,
        strength: float = 1.0,
        jump_length: int = 10,
        jump_n_sample: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        guidance: Guidance | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        control_image: ImageInput | None = None,
        controlnet_conditioning_scale: float = 1.0,
    ) -> ImagePipelineOutput | tuple:
        r"""Regenerate the white region of ``mask_image``, keeping the rest of ``image`` (replacement + RePaint).

        Before each model evaluation at timestep entry k the known region (mask black) of the sample is replaced by
        the input noised to entry k's level with fresh noise, and after the last step by the clean input
        (``inpainting.py``). RePaint resampling (Lugmayr et al., 2022; names as diffusers' ``RePaintScheduler``): at
        its jump points the sample is noised j = ``jump_length`` steps back up the path by the exact forward
        transition and descends them again, r − 1 times (r = ``jump_n_sample``; r = 1 is plain replacement). The
        scheduler's state is restored to that of the segment's start at each jump: exact RePaint for first-order
        schedulers; for multistep solvers the first order − 1 steps after a jump reuse the history of the
        trajectory before it (approximate); second-order schedulers (Heun) jump at full-step boundaries only.

        **Model evaluations** of a run of S = round(strength·n) steps, J = |{0, j, 2j, …} ∩ [0, S − j)| jump
        points, scheduler order k (1; 2 for Heun): k·S − (k − 1) + (r − 1)·(k·j·J − (k − 1)·[J > 0]) — for
        first-order schedulers S + (r − 1)·j·J (``repaint.repaint_evaluations``; :meth:`inpaint_evaluations`
        computes it for this pipeline's scheduler before running). Under classifier-free guidance
        ``pipe.evaluations["unet"]`` counts two per evaluation.

        **Exactness.** The known region of the output equals the input exactly for ``"pt"`` (its float32 values),
        ``"np"`` and ``"pil"``: the result is composited in [0, 1] image space, generated pixels where the mask is
        white, the input's own pixels elsewhere. A latent pipeline denoises the encoded input (posterior mean) with
        the mask max-pooled to the latent grid (a latent cell is regenerated if any of its pixels is), decodes, and
        pastes the input's known pixels the same way, so the known pixels are exact there too; its ``"latent"``
        output holds the encoded input in the known cells, which decode to the input only up to the VAE's
        reconstruction error. A pixel pipeline's ``"latent"`` output holds 2·x − 1 there.

        Args:
            image: as in :meth:`img2img`.
            mask_image: white (≥ 0.5) = regenerate, black = keep: a float or bool tensor (B, 1, H, W) in [0, 1], an
                array (B, H, W) or (B, H, W, 1) in [0, 1], or PIL images ("L"); batch 1 serves every image.
            num_inference_steps: steps n of the whole schedule.
            strength: as diffusers' inpainting: 1 starts from pure noise; below 1 the run starts from the input
                noised to step n − round(strength·n), 0 returns the input with no model evaluation.
            jump_length, jump_n_sample: RePaint's j and r, integers ≥ 1.
            generator, eta, class_labels, guidance_scale, guidance, output_type, return_dict,
            callback_on_step_end, callback_on_step_end_tensor_inputs: as in ``__call__``; the callback's step index
                counts every step of the run, re-descents included.
            control_image, controlnet_conditioning_scale: a ``controlnet`` component's control, as in ``__call__``.

        Returns:
            ``ImagePipelineOutput(images=...)``, or ``(images,)`` if ``return_dict`` is False.

        Raises:
            ValueError: for a mask of the wrong shape or values outside [0, 1], ``strength`` outside [0, 1],
                ``jump_length`` or ``jump_n_sample`` < 1, any argument ``__call__`` refuses, or a scheduler whose
                timesteps are not laid out per step (PNDM) with strength < 1 or resampling — always before any model
                evaluation.
        """
        call = EditCall(
            num_inference_steps,
            strength,
            generator,
            eta,
            class_labels,
            guidance_scale,
            guidance,
            output_type,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            control_image,
            controlnet_conditioning_scale,
        )
        images = inpaint_images(self, image, mask_image, jump_length, jump_n_sample, call)
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def inpaint_evaluations(
        self, num_inference_steps: int = 50, strength: float = 1.0, jump_length: int = 10, jump_n_sample: int = 1
    ) -> int:
        """Model evaluations per image that :meth:`inpaint` makes with these arguments and the current scheduler
        (before guidance doubles them), computed without running it: the moves of the RePaint schedule on the
        scheduler's timestep layout. Raises ``ValueError`` as :meth:`inpaint` would for the same arguments."""
        check_call_arguments(1, num_inference_steps, None, 0.0, 1.0, "pt")
        check_strength(strength)
        check_resampling(jump_length, jump_n_sample)
        steps = edit_step_count(strength, num_inference_steps)
        probe = copy.deepcopy(self.scheduler)
        probe.set_timesteps(num_inference_steps)
        layout = StepLayout.of(probe, num_inference_steps)
        moves = repaint_moves(steps, jump_length, jump_n_sample)
        return descent_entries(entry_moves(layout, num_inference_steps - steps, moves))
