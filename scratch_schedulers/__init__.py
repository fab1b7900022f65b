"""DDPM, DDIM, flow-matching and DPM-Solver++ schedulers over one Gaussian noise path, for 🤗 diffusers.

``noise_path`` holds the path (β schedules, ᾱ, σ grids, spacings, parametrisation
conversions), ``path_change`` the exact change of variables between the VP and the flow path,
``samplers`` the update rules, and the scheduler classes are thin views that speak diffusers'
``SchedulerMixin``/``ConfigMixin`` API: ``scheduling_common`` holds what they share (output type,
step checks, working precision), ``scheduling_vp`` the discrete VP chain of DDPM and DDIM,
``dpm_schedule``/``dpm_grids``/``dpm_stepping`` the DPM-Solver config checks, grids and multistep
history, ``validation`` the argument checks. The ``oracle`` subpackage verifies any scheduler against a
Gaussian mixture's exact denoiser, density and probability-flow ODE; it imports the core, never the other way round.
"""

from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .noise_path import Parametrization, parametrization_of, signal_noise_at
from .scheduling_common import ScratchSchedulerOutput
from .scheduling_ddim import ScratchDDIMScheduler
from .scheduling_ddpm import ScratchDDPMScheduler
from .scheduling_dpmsolver import FEW_STEP_CONFIG, ScratchDPMSolverScheduler
from .scheduling_flow_map import ScratchFlowMapScheduler
from .scheduling_flow_match import ScratchFlowMatchScheduler

__all__ = [
    "FEW_STEP_CONFIG",
    "ConfigMixin",
    "ModelMixin",
    "Parametrization",
    "SchedulerMixin",
    "ScratchDDIMScheduler",
    "ScratchDDPMScheduler",
    "ScratchDPMSolverScheduler",
    "ScratchFlowMapScheduler",
    "ScratchFlowMatchScheduler",
    "ScratchSchedulerOutput",
    "parametrization_of",
    "signal_noise_at",
]
