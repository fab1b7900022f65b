"""A noise-aware classifier p(y | x_t) for classifier guidance, installed as ``scratch_diffusion.training.classifier``.

``training/train_classifier.py`` is the command line (``accelerate launch training/train_classifier.py …``, or
``python -m scratch_diffusion.training.train_classifier``); :func:`run_classifier_training` is the same from Python.
The classifier (:class:`~scratch_diffusion.guidance.noisy_classifier.NoisyClassifier`) learns on the diffusion
model's own noisy inputs — its path, schedule and time distribution (``Objective.noised``), and its sample space
(a latent pipeline's VAE) — read from a saved pipeline (``--pipeline``) or given as objective arguments. It reuses
the UNet trainer's pieces (data, latents, checkpoints and exact resume, EMA, the optimizer update, logging, CLI
groups, Hub push, exit statuses); the modules here hold what is the classifier's own:

===============  =============================================================================
``source``       the diffusion model it guides: ``--pipeline``'s path, schedule, time distribution, VAE, UNet
``cli``          the command line and its checks (exit status 2 before any step)
``evaluation``   accuracy by noise level σ = b/a and on the training distribution; the plot
``card``         the model card (``README.md``)
``trainer``      :func:`train_classifier` / :func:`run_classifier_training`: the loop and the outputs
===============  =============================================================================

The output folder loads with ``NoisyClassifier.from_pretrained(output_dir)`` and holds ``classifier_metrics.json``
(held-out accuracy by noise level), ``accuracy_by_noise.png`` (with matplotlib) and the model card.
"""

from .evaluation import (
    DEFAULT_NOISE_LEVEL_EDGES,
    accuracy_by_noise_level,
    accuracy_on_training_distribution,
    plot_accuracy_by_noise,
)
from .trainer import METRICS_FILE, PLOT_FILE, run_classifier_training, train_classifier

__all__ = [
    "DEFAULT_NOISE_LEVEL_EDGES",
    "METRICS_FILE",
    "PLOT_FILE",
    "accuracy_by_noise_level",
    "accuracy_on_training_distribution",
    "plot_accuracy_by_noise",
    "run_classifier_training",
    "train_classifier",
]
