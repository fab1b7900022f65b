"""The denoiser: the pipeline's model as one callable D(x, i) at the points of a sampling plan.

k-diffusion calls its model through a wrapper ``D(x, σ)`` and puts guidance around it; flow_matching
wraps the model so a solver sees one velocity field. Here the solver is a diffusers scheduler, whose
``step(model_output, t, x)`` wants the model's prediction in *its* parametrisation at its point i, so
the denoiser is indexed by the plan position i (:class:`~.cross_path.ModelCalls`: a plan exists for
every run, of identity calls when the scheduler samples the model's own parametrisation). It knows both
points of each call, ``plan.calls[i].sampler`` and ``.model`` (a, b, λ), and for targets
``("sample", "epsilon")`` returns x̂0 and ε̂ at the sampler's point, as inversion asks.

One evaluation: the sample at the model's point of equal SNR (``scale_input``), cast to the model's
dtype (and device, where one is given), the bound guidance rules around the model call at the model's
point (:mod:`scratch_diffusion.guidance`, bound by :mod:`.guidance`), the output back in the sample's
dtype, read out as every target of the plan. Every model call is counted (:attr:`Denoiser.counter`):
a guided step that evaluates two halves in one batch counts two evaluations.

:class:`UNetModel` is the one place the pipeline's UNet is called: the call ``unet(x, t, **conditions)``
with its per-sample ``conditions`` (``class_labels`` today; a control residual or a second time input
would be further entries, which guidance expands along with the batch).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from scratch_diffusion.guidance.compose import GuidedEvaluation
from scratch_diffusion.guidance.setup import EvaluationCounter

from .cross_path import ModelCalls


class UNetModel:
    """A diffusers UNet as ``model(x, timestep, **conditions) -> output`` (its ``.sample``)."""

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, **conditions: torch.Tensor) -> torch.Tensor:
        return self.unet(x, timestep, **conditions).sample


class Denoiser:
    """D(x, i): the model's prediction at sampler point i of ``plan``, one tensor per ``plan.targets``.

    Args:
        model: the model callable (:class:`UNetModel`).
        plan: the run's model calls (:func:`~.cross_path.scheduler_model_calls`).
        conditions: per-sample model inputs (``class_labels``), for the sample batch.
        guidance: the run's bound guidance rules (:func:`~.guidance.bind_call_guidance`), or None.
        dtype: the model's dtype; device: where the model runs (None: where the sample is).
        counter: counts the evaluations of every model (one of the sample batch's size is made if None).
        interval_ends: a flow-map UNet's second time input r at each entry (:mod:`.flow_map`), or None (r = t).
    """

    def __init__(
        self,
        model: UNetModel,
        plan: ModelCalls,
        conditions: Mapping[str, torch.Tensor] | None = None,
        guidance: GuidedEvaluation | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
        counter: EvaluationCounter | None = None,
        interval_ends: torch.Tensor | None = None,
    ):
        self.model, self.plan, self.guidance, self.dtype, self.device = model, plan, guidance, dtype, device
        self.conditions = dict(conditions or {})
        self.counter = counter if counter is not None else EvaluationCounter(1)
        self.model_function = self.counter.counted("unet", self._call_model)
        self.interval_ends = interval_ends  # a flow map's r per entry (flow_map.py), or None
        self._interval_end: torch.Tensor | None = None

    def _call_model(self, x: torch.Tensor, timestep: torch.Tensor, conditions: Mapping) -> torch.Tensor:
        if self._interval_end is not None:  # the same r for every row, so it needs no expansion under guidance
            conditions = {**conditions, "r_timestep": self._interval_end}
        return self.model(x, timestep, **conditions)

    @property
    def memory_factor(self) -> int:
        """The model's batch per sample of the run's batch (2 under classifier-free guidance)."""
        return 1 if self.guidance is None else self.guidance.memory_factor

    def __call__(self, x: torch.Tensor, i: int) -> list[torch.Tensor]:
        """Every target of the plan at sampler point i for the sample ``x`` there (no value is read back)."""
        call = self.plan.calls[i]
        x_model = call.scale_input(x)
        self._interval_end = None if self.interval_ends is None else self.interval_ends[i]
        return call.read(self.evaluate(x_model, self.plan.timesteps[i], call.model), x_model)

    def evaluate(self, x_model: torch.Tensor, timestep: torch.Tensor, point=None) -> torch.Tensor:
        """The (guided) model output at ``x_model`` and the model's ``timestep`` (at its path ``point``).

        In ``x_model``'s dtype and device. Guidance needs the point (a, b, λ) of the call.
        """
        model_input = x_model.to(device=self.device, dtype=self.dtype)
        if self.guidance is None:
            output = self.model_function(model_input, timestep, self.conditions)
        else:
            output = self.guidance(self.model_function, model_input, timestep, point)
        return output.to(device=x_model.device, dtype=x_model.dtype)
