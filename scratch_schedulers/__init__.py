"""DDPM, DDIM and flow-matching schedulers over one Gaussian noise path, for 🤗 diffusers.

``noise_path`` holds the path (β schedules, ᾱ, σ grids, spacings, parametrisation
conversions), ``samplers`` the update rules, and the three scheduler classes are thin views
that speak diffusers' ``SchedulerMixin``/``ConfigMixin`` API.
"""

from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .noise_path import Parametrization, parametrization_of, signal_noise_at
from .scheduling_ddim import ScratchDDIMScheduler
from .scheduling_ddpm import ScratchDDPMScheduler
from .scheduling_flow_match import ScratchFlowMatchScheduler
from .scheduling_vp import ScratchSchedulerOutput

__all__ = [
    "ConfigMixin",
    "ModelMixin",
    "Parametrization",
    "SchedulerMixin",
    "ScratchDDIMScheduler",
    "ScratchDDPMScheduler",
    "ScratchFlowMatchScheduler",
    "ScratchSchedulerOutput",
    "parametrization_of",
    "signal_noise_at",
]
