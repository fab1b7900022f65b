"""Flow maps in the pipeline: the second time input r of a flow-map UNet at each entry of a flow-map scheduler.

A flow-map UNet (:class:`~scratch_diffusion.few_step.FlowMapUNet2DModel`, MeanFlow) predicts the average velocity
u(x_t, r, t) over [r, t]; a flow-map scheduler steps x_r = x_t − (t − r)·u to the next level r of its grid
(:class:`~scratch_schedulers.ScratchFlowMapScheduler`, diffusers' ``FlowMapEulerDiscreteScheduler``). So at entry i
the UNet is called with ``r_timestep`` = the next grid level in model units. Any other scheduler samples the same
UNet as a flow model — r = t, the instantaneous velocity — and a plain UNet under a flow-map scheduler is that
scheduler's Euler (or consistency) step: neither needs anything here.
"""

from __future__ import annotations

import inspect

import torch

from scratch_schedulers import Parametrization

# diffusers' flow-map schedulers by name (ours say so with ``is_flow_map = True``)
FLOW_MAP_SCHEDULERS = ("FlowMapEulerDiscreteScheduler",)


def takes_interval(unet: torch.nn.Module) -> bool:
    """The UNet's forward takes a second time input ``r_timestep``: a flow map."""
    return "r_timestep" in inspect.signature(unet.forward).parameters


def interval_ends(
    scheduler: object, unet: torch.nn.Module, sampled: Parametrization, trained: Parametrization
) -> torch.Tensor | None:
    """``r_timestep`` for each entry of ``scheduler.timesteps``, in model units; None where r = t.

    Defined for a flow-map ``unet`` (:func:`takes_interval`) and a flow-map scheduler (its ``sigmas`` hold n + 1
    levels ending at 0) sampling the UNet's own flow parametrisation; the next level of entry i is ``sigmas[i + 1]·T``.
    """
    flow_map = getattr(scheduler, "is_flow_map", False) or type(scheduler).__name__ in FLOW_MAP_SCHEDULERS
    if not flow_map or not takes_interval(unet) or sampled != trained or trained.path != "flow":
        return None
    sigmas = torch.as_tensor(scheduler.sigmas)
    return (sigmas[1:] * scheduler.config.num_train_timesteps).to(torch.as_tensor(scheduler.timesteps).device)
