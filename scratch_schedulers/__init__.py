"""DDPM, DDIM and flow-matching schedulers over one Gaussian noise path, for 🤗 diffusers.

``noise_path`` holds the path (β schedules, ᾱ, σ grids, spacings, parametrisation
conversions), ``samplers`` the update rules, and the three scheduler classes are thin views
that speak diffusers' ``SchedulerMixin``/``ConfigMixin`` API: ``scheduling_common`` holds what
they share (output type, step checks, working precision), ``scheduling_vp`` the discrete VP
chain of DDPM and DDIM, ``validation`` the argument checks. ``exact_denoiser`` (with
``mixture_statistics``) verifies any scheduler against a Gaussian mixture's exact denoiser.
"""

from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .noise_path import Parametrization, parametrization_of, signal_noise_at
from .scheduling_common import ScratchSchedulerOutput
from .scheduling_ddim import ScratchDDIMScheduler
from .scheduling_ddpm import ScratchDDPMScheduler
from .scheduling_dpmsolver import ScratchDPMSolverScheduler
from .scheduling_flow_match import ScratchFlowMatchScheduler

__all__ = [
    "ConfigMixin",
    "ModelMixin",
    "Parametrization",
    "SchedulerMixin",
    "ScratchDDIMScheduler",
    "ScratchDDPMScheduler",
    "ScratchDPMSolverScheduler",
    "ScratchFlowMatchScheduler",
    "ScratchSchedulerOutput",
    "parametrization_of",
    "signal_noise_at",
]
