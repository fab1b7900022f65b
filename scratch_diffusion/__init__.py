"""scratch-diffusion: DDPM, DDIM and flow matching as a diffusers plugin.

Importing this package makes every scratch-diffusion class visible to diffusers' loaders
(diffusers ≥ 0.42 resolves plugin components only from already-imported modules).
"""

from scratch_schedulers import *  # noqa: F403
from scratch_schedulers import __all__ as _scheduler_names

__version__ = "0.1.0"
__all__ = [*_scheduler_names]
