"""A control network (ControlNet) for a saved pipeline's frozen UNet, installed as
``scratch_diffusion.training.controlnet``.

``training/train_controlnet.py`` is the command line (``accelerate launch training/train_controlnet.py --pipeline
DIR …``, or ``python -m scratch_diffusion.training.train_controlnet``); :func:`run_controlnet_training` is the
same from Python. The control network (:class:`~scratch_diffusion.control.ControlNet2DModel`, Zhang et al., 2023)
is made from the pipeline's UNet (``from_unet``) and learns, through
:class:`~scratch_diffusion.control.ControlledUNet`, with the pipeline's own objective — its path, schedule,
prediction type and time distribution, read from the saved pipeline as the classifier trainer reads them — while
the UNet (and a latent pipeline's VAE) stay frozen. It reuses the UNet trainer's pieces (data, latents, checkpoints
and exact resume, EMA, the optimizer update, logging, CLI groups, Hub push, exit statuses); the modules here hold
what is the control network's own:

==============  =================================================================================================
``cli``         the command line and its checks (exit status 2 before any step); the pipeline's objective
``data``        control images: built-in transforms per batch or the user's pairs; the batch with its dropouts
``evaluation``  held-out loss with and without the control; the control consistency of samples
``card``        the model card (``README.md``)
``trainer``     :func:`train_controlnet` / :func:`run_controlnet_training`: the loop and the outputs
==============  =================================================================================================

The output folder loads with ``ControlNet2DModel.from_pretrained(output_dir)`` and holds ``controlnet_metrics.json``
(the evaluations), ``control_samples.png`` (controls, samples with and without them, real images) and the model
card; ``--attach`` also saves the network into the pipeline folder as its ``controlnet`` component.
"""

from .data import ControlRecipe, controlled_batch, drop_controls
from .trainer import FIGURE_FILE, METRICS_FILE, run_controlnet_training, train_controlnet

__all__ = [
    "FIGURE_FILE",
    "METRICS_FILE",
    "ControlRecipe",
    "controlled_batch",
    "drop_controls",
    "run_controlnet_training",
    "train_controlnet",
]
