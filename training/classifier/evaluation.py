"""How accurate a noise-aware classifier is at each noise level σ = b/a = exp(−λ), and on its training distribution.

:func:`accuracy_by_noise_level` reports the accuracy in bins [σ_lo, σ_hi) of the noise level: every image gets
``draws`` noisy copies per bin, each at log σ drawn uniformly in [log σ_lo, log σ_hi) with fresh noise ε. The
point of that log-SNR λ = −log σ on the classifier's own path (``ModelPath.point``: σ_flow = σ/(1 + σ) at
timestep σ_flow·T; on the VP path the fractional timestep with ᾱ = 1/(1 + σ²)) gives x = a·x0 + b·ε and the
timestep, so one bin means the same noise whichever path the classifier is on. On the VP path a σ outside the
trained range is clamped to the nearest trained end; the row's timestep range shows where. σ = b/a is the
noise level guidance intervals use (``scratch_diffusion.guidance``), and the x-axis of :func:`plot_accuracy_by_noise`.

:func:`accuracy_on_training_distribution` draws x_t as training does (``Objective.noised``). Every draw comes from
a private CPU generator seeded by ``seed``: the same classifier, images and seed give the same numbers, on any
device, and training's random state is never touched.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch

from scratch_schedulers.model_path import ModelPath

DEFAULT_NOISE_LEVEL_EDGES = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)  # σ = b/a: nearly clean … nearly pure noise
BATCH = 256  # images per classifier call

Classifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, timestep) -> logits, e.g. a NoisyClassifier


def _correct(classifier: Classifier, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, device) -> int:
    """How many of ``x`` the classifier labels right (batched on ``device``)."""
    hits = 0
    for start in range(0, len(x), BATCH):
        part = slice(start, start + BATCH)
        logits = classifier(x[part].to(device), t[part].to(device))
        hits += int((logits.argmax(dim=-1).cpu() == labels[part]).sum())
    return hits


def _device(classifier: Classifier) -> torch.device:
    return getattr(classifier, "device", torch.device("cpu"))


@torch.no_grad()
def accuracy_by_noise_level(
    classifier: Classifier,
    x0: torch.Tensor,
    labels: torch.Tensor,
    edges: Sequence[float] = DEFAULT_NOISE_LEVEL_EDGES,
    draws: int = 4,
    seed: int = 0,
    model_path: ModelPath | None = None,
) -> list[dict]:
    """Accuracy in each bin [edges[i], edges[i+1]) of σ = b/a: one row per bin (see the module docstring).

    Args:
        classifier: a ``NoisyClassifier`` (its ``model_path`` is used), or any ``fn(x, t) -> logits`` with
            ``model_path``.
        x0: clean evaluation samples (N, C, H, W) — images in [−1, 1], or a latent pipeline's scaled latents.
        labels: their classes (N,).
        edges: increasing, positive bin edges of σ.
        draws: noisy copies per image per bin.
        seed: seeds the private generator of every draw.
        model_path: the classifier's path and clock; unset: ``classifier.model_path``.

    Returns:
        ``{"sigma_low", "sigma_high", "accuracy", "n", "timestep_low", "timestep_high"}`` per bin.
    """
    path = model_path if model_path is not None else classifier.model_path
    x0, labels = x0.detach().cpu().float(), labels.detach().cpu()
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for low, high in itertools.pairwise(edges):
        hits, timesteps = 0, []
        for _ in range(draws):
            log_sigma = math.log(low) + torch.rand(len(x0), generator=generator, dtype=torch.float64) * math.log(
                high / low
            )
            points = [path.point(-value) for value in log_sigma.tolist()]  # λ = −log σ
            a, b, t = (torch.tensor([getattr(p, k) for p in points]) for k in ("a", "b", "timestep"))
            noise = torch.randn(x0.shape, generator=generator)
            x = (a.view(-1, 1, 1, 1) * x0.double() + b.view(-1, 1, 1, 1) * noise.double()).float()
            hits += _correct(classifier, x, t.float(), labels, _device(classifier))
            timesteps.append(t)
        spanned = torch.cat(timesteps)
        rows.append(
            {
                "sigma_low": float(low),
                "sigma_high": float(high),
                "accuracy": hits / (draws * len(x0)),
                "n": draws * len(x0),
                "timestep_low": float(spanned.min()),
                "timestep_high": float(spanned.max()),
            }
        )
    return rows


@torch.no_grad()
def accuracy_on_training_distribution(
    classifier: Classifier, objective, x0: torch.Tensor, labels: torch.Tensor, draws: int = 4, seed: int = 0
) -> float:
    """Accuracy on ``draws`` copies of each sample noised as training noises them (``objective.noised``)."""
    x0, labels = x0.detach().cpu().float(), labels.detach().cpu()
    generator = torch.Generator().manual_seed(seed)
    hits = 0
    for _ in range(draws):
        t, _, x_t = objective.noised(x0, generator)
        hits += _correct(classifier, x_t, t, labels, _device(classifier))
    return hits / (draws * len(x0))


def plot_accuracy_by_noise(rows: list[dict], path: str, num_classes: int, title: str = "") -> bool:
    """Accuracy against σ (bin centres √(σ_lo·σ_hi), log axis) with chance 1/K, as a PNG; False without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    figure = Figure(figsize=(5.0, 3.2), layout="constrained")
    axes = figure.subplots()
    centres = [math.sqrt(row["sigma_low"] * row["sigma_high"]) for row in rows]
    axes.semilogx(centres, [row["accuracy"] for row in rows], "o-", label="held-out accuracy")
    axes.axhline(1 / num_classes, color="grey", linestyle="--", label=f"chance (1/{num_classes})")
    for edge in [rows[0]["sigma_low"]] + [row["sigma_high"] for row in rows]:
        axes.axvline(edge, color="0.9", linewidth=0.8, zorder=0)
    axes.set(xlabel="noise level σ = b/a (bins)", ylabel="accuracy", ylim=(0, 1.02), title=title)
    axes.legend(loc="upper right", fontsize="small")
    figure.savefig(path, dpi=120)
    return True
