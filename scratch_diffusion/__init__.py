"""scratch-diffusion: DDPM, DDIM and flow matching as a diffusers plugin.

Importing this package makes every scratch-diffusion class visible to diffusers' loaders
(diffusers ≥ 0.42 resolves plugin components only from already-imported modules; a saved ``classifier``
component is ``["scratch_diffusion", "NoisyClassifier"]``, a ``controlnet`` one
``["scratch_diffusion", "ControlNet2DModel"]``, a flow map's ``unet`` ``["scratch_diffusion", "FlowMapUNet2DModel"]``).
It also
re-exports diffusers' ``SchedulerMixin``/``ModelMixin`` (through ``scratch_schedulers``): a saved
pipeline names its scheduler ``["scratch_diffusion", <class>]``, and diffusers checks a component
against the base classes found on the module it names.
"""

from scratch_diffusion.control import ControlledUNet, ControlNet2DModel
from scratch_diffusion.few_step.flow_map_unet import FlowMapUNet2DModel
from scratch_diffusion.guidance import NoisyClassifier
from scratch_diffusion.pipelines import ScratchDiffusionPipeline
from scratch_schedulers import *  # noqa: F403
from scratch_schedulers import __all__ as _scheduler_names

__version__ = "0.1.0"
__all__ = [
    *_scheduler_names,
    "ControlNet2DModel",
    "ControlledUNet",
    "FlowMapUNet2DModel",
    "NoisyClassifier",
    "ScratchDiffusionPipeline",
]
