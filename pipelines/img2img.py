"""Image-to-image by SDEdit (Meng et al., 2022): noise the input to the level ``strength`` sets, then sample from there.

With n steps the run is the last round(strength·n) of them (diffusers' img2img convention; :mod:`.edit_levels`):
the input x0 (a latent pipeline's encoded posterior mean) is put at the start entry's point of the scheduler's
path in its own sample coordinates, x = (a·x0 + b·z)/c, and the pipeline's one sampling loop
(:mod:`.sampling_loop`) takes it from there with the scheduler's ``set_begin_index`` set where it has one. Two ends
are exact by construction: strength 0 (or any strength that rounds to 0 steps) returns the input itself with no
model evaluation, and strength 1 draws its noise and runs exactly as ``pipe(batch_size=B, ...)``, so the two agree
bit for bit — the input is then not used.
"""

from __future__ import annotations

from .edit_images import clean_samples
from .edit_run import EditCall, begin_edit, check_edit, unchanged_output
from .inversion import ImageInput
from .postprocess import samples_to_images


def image_to_image(pipe, image: ImageInput, call: EditCall):
    """``EditingMixin.img2img`` without its ``return_dict``: the output images (or latents)."""
    edit = check_edit(pipe, image, call)
    if edit.steps == 0:  # the input, as it came
        return unchanged_output(pipe, edit.images, call.output_type)

    run = begin_edit(pipe, edit, call, needs_levels=False)
    x0 = None if run.from_noise else clean_samples(pipe, edit.images)
    latents = run.initial_sample(x0, call.generator)
    entries = range(run.start_entry(), len(pipe.scheduler.timesteps))
    loop = run.loop(call.generator, call.eta, call.callback, edit.callback_inputs, len(entries))
    latents = loop.sample(latents, entries)
    run.finish()
    return samples_to_images(latents, call.output_type, pipe.vae)
