"""The sampling loop every sampling method of the pipeline runs: ``__call__``, image-to-image and inpainting.

For each entry i of a range of ``scheduler.timesteps`` (t = timesteps[i]): an optional replacement of part of the
sample (inpainting puts the known region back at entry i's noise level), ``scale_model_input``, one evaluation of
the pipeline's denoiser at plan position i (:mod:`.denoiser`: guidance, the path change and the evaluation count
live there), ``scheduler.step`` with the ``eta`` / ``generator`` it accepts, the progress bar, and diffusers'
``callback_on_step_end(pipeline, step_index, t, tensors)`` whose returned ``latents`` replace the sample.

A run may be several calls of :meth:`SamplingLoop.run` over consecutive or repeated ranges (RePaint goes back up
the schedule and down again): the step index passed to callbacks counts every step of the run, and the scheduler
is read at each call, so a caller may restore its state in place between calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from .denoiser import Denoiser

# (sample, entry) -> sample: applied before the model evaluation at that entry (inpainting's replacement).
Replacement = Callable[[torch.Tensor, int], torch.Tensor]


class SamplingLoop:
    """The loop of one pipeline call: its denoiser, step arguments, callback and optional replacement.

    Args:
        pipe: the pipeline (its ``scheduler``, ``progress_bar``; passed to the callback).
        denoiser: D(x, i) of the run (:meth:`ScratchDiffusionPipeline.denoiser`), indexed by timestep entry.
        step_kwargs: ``eta`` / ``generator`` for ``scheduler.step`` (:meth:`ScratchDiffusionPipeline.step_kwargs`).
        callback: ``callback_on_step_end`` or None; callback_inputs: the tensor names it receives.
        replace: called as ``replace(sample, i)`` before each model evaluation, or None.
    """

    def __init__(
        self,
        pipe,
        denoiser: Denoiser,
        step_kwargs: Mapping[str, object],
        callback: Callable | None = None,
        callback_inputs: Sequence[str] = ("latents",),
        replace: Replacement | None = None,
    ):
        self.pipe, self.denoiser, self.step_kwargs = pipe, denoiser, dict(step_kwargs)
        self.callback, self.callback_inputs, self.replace = callback, tuple(callback_inputs), replace
        self.steps_taken = 0
        self.advance_progress: Callable[[int], object] = lambda _: None

    def run(self, latents: torch.Tensor, entries: range) -> torch.Tensor:
        """Step ``latents`` through ``entries`` of ``scheduler.timesteps``: one model evaluation per entry."""
        scheduler = self.pipe.scheduler
        scale_model_input = getattr(scheduler, "scale_model_input", None)
        timesteps = scheduler.timesteps
        for i in entries:
            t = timesteps[i]
            if self.replace is not None:
                latents = self.replace(latents, i)
            model_input = latents if scale_model_input is None else scale_model_input(latents, t)
            model_output = self.denoiser(model_input, i)[0]
            latents = scheduler.step(model_output, t, latents, **self.step_kwargs, return_dict=False)[0]
            self.advance_progress(1)
            if self.callback is not None:
                tensors = {"latents": latents, "model_output": model_output}
                requested = {name: tensors[name] for name in self.callback_inputs}
                returned = self.callback(self.pipe, self.steps_taken, t, requested) or {}
                latents = returned.get("latents", latents)
            self.steps_taken += 1
        return latents

    @contextlib.contextmanager
    def progress(self, total: int) -> Iterator[None]:
        """Count the model evaluations of the runs inside the block on one progress bar of ``total``."""
        with self.pipe.progress_bar(total=total) as bar:
            self.advance_progress = bar.update
            try:
                yield
            finally:
                self.advance_progress = lambda _: None

    def sample(self, latents: torch.Tensor, entries: range) -> torch.Tensor:
        """:meth:`run` under a progress bar of ``len(entries)`` model evaluations."""
        with self.progress(len(entries)):
            return self.run(latents, entries)
