"""Training for scratch-diffusion, installed as ``scratch_diffusion.training``.

``train.py`` is the command line (``accelerate launch training/train.py …``, or
``accelerate launch -m scratch_diffusion.training.train …``); :func:`run_training` is the same
from Python. The loop lives in ``trainer``; everything else in the modules here:

===================  ==========================================================================
``cli``              the command line (diffusers' ``train_unconditional.py`` names) and its checks
``cli_common``       argument groups and checks shared by ``train.py`` and ``train_vae.py``
``cli_evaluation``   the ``--eval_*`` / ``--save_best`` arguments and their checks
``cli_latents``      the ``--vae_*`` / ``--latent_*`` arguments (training on a VAE's latents)
``vae_loading``      the frozen ``AutoencoderKL``: config, weights, identity, card (license, source)
``latent_data``      latents encoded once, cached on disk, their scale, latent batches
``errors``           :class:`ConfigError` (bad input before training: exit status 2)
``entry``            the command line's exit statuses and messages (``run_command``), shared by both scripts
``loop``             the accelerate state, the launch check, one model's preparation, run length, batches, update
``trainer``          :func:`train` / :func:`run_training`: accelerate, the loop, the outputs
``monitoring``       :class:`TrainingSummary`, the buffered loss log, non-finite-loss checks
``optimization``     AdamW and the EMA weights
``data``             datasets → uint8 tensors decoded once, the epoch-seeded sampler, augmentation
``models``           ``UNet2DModel`` presets (micro / tiny / compact / small / base) or a JSON config
``init_from``        ``--init_from``: a run started from a saved pipeline's UNet (or a saved VAE)
``objectives``       one module per objective (ddpm, flow): arguments, checks, loss, card text, sampler
``checkpoints``      atomic ``accelerate.save_state`` checkpoints, rotation and resume
``export``           the saved pipeline, a component attached to it (``--guide_for``), sample grid, usage snippet
``evaluation``       ``--eval_steps``: FD/KID of EMA samples during training, ``best/``
``model_card``       the Hugging Face model card (``README.md``)
``hub``              ``HfApi.create_repo`` + ``upload_folder``
``vae``              ``train_vae.py``: an ``AutoencoderKL`` trained from scratch
``classifier``       ``train_classifier.py``: a noise-aware classifier p_φ(y | x_t) for classifier guidance
``controlnet``       ``train_controlnet.py``: a ControlNet for a saved pipeline's frozen UNet
===================  ==========================================================================
"""

from .checkpoints import CheckpointError
from .data import DataError
from .errors import ConfigError
from .hub import HubError
from .monitoring import NonFiniteLossError, TrainingSummary
from .trainer import OutputWriteError, run_training

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "HubError",
    "NonFiniteLossError",
    "OutputWriteError",
    "TrainingSummary",
    "run_training",
]
