"""Training an ``AutoencoderKL`` from scratch for latent diffusion, installed as ``scratch_diffusion.training.vae``.

``training/train_vae.py`` is the command line (``accelerate launch training/train_vae.py …``, or
``python -m scratch_diffusion.training.train_vae``); :func:`run_vae_training` is the same from Python.
It reuses the UNet trainer's pieces (launch check, data, checkpoints and resume, EMA, logging and throughput
timer, CLI groups, Hub repo and push, the command line's exit statuses); the modules here hold what is the
VAE's own:

===============  =============================================================================
``presets``      ``AutoencoderKL`` presets (tiny f=2 / small f=4 / sd-like f=8) or a JSON config
``losses``       L1/L2 reconstruction + β·KL, the perceptual term, the PatchGAN discriminator
``cli``          the command line and its checks (exit status 2 before any step)
``metrics``      held-out split, PSNR, reconstruction FD vs. the real baseline, the latent scale
``card``         the model card (``README.md``)
``outputs``      evaluations and grids during training; the saved folder (scale, metrics, card)
``trainer``      :func:`train_vae` / :func:`run_vae_training`: the loop
===============  =============================================================================

The output folder loads with ``AutoencoderKL.from_pretrained(output_dir)``; its ``config.json`` carries
the measured ``scaling_factor`` (1 / std of the posterior means over the training data).
"""

from .outputs import METRICS_FILE
from .presets import VAE_PRESETS, build_vae, downsampling_factor, load_vae_config
from .trainer import run_vae_training, train_vae

__all__ = [
    "METRICS_FILE",
    "VAE_PRESETS",
    "build_vae",
    "downsampling_factor",
    "load_vae_config",
    "run_vae_training",
    "train_vae",
]
