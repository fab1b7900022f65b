"""Step 3 of the demo: sample every setting with the saved pipeline and score it with the offline metric."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from scratch_diffusion import metrics
from scratch_diffusion.demo.config import DemoConfig


@dataclass
class SampleSet:
    """One sampler × steps × guidance setting, its images and its scores."""

    sampler: str
    steps: int
    guidance_scale: float
    n: int
    stage: str  # "sweep", "guidance" or "final"
    draws: int = 1  # independent draws of n images, scored separately and averaged (see combine_draws)
    nfe: int = 0  # UNet evaluations per image (a guided evaluation runs both halves in one batch)
    seconds: float = 0.0
    images: torch.Tensor | None = field(default=None, repr=False)  # (n, 1, 16, 16) in [-1, 1]
    labels: torch.Tensor | None = field(default=None, repr=False)
    results: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.sampler}, {self.steps} steps, w={self.guidance_scale:g}"

    def row(self) -> dict:
        keep = {k: v for k, v in asdict(self).items() if k not in ("images", "labels", "results")}
        return {**keep, **self.results}


@contextlib.contextmanager
def other_class_keys_quiet() -> Iterator[None]:
    """Silence diffusers' "config attributes … are not expected and will be ignored" during a ``from_config`` swap.

    Every swap between scheduler classes carries the other class's keys; the demo swaps on purpose, many times.
    """
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def make_scheduler(sampler: str, saved_config, path: str, latent: bool = False):
    """The scheduler of ``sampler`` built from the saved pipeline's scheduler config (quietly: see below).

    ``latent``: the model denoises a VAE's scaled latents, so DDIM and DDPM do not clip x̂0 to ±1.
    """
    with other_class_keys_quiet():
        scheduler = _make_scheduler(sampler, saved_config, path)
    if latent and scheduler.config.get("clip_sample", False):
        scheduler = type(scheduler).from_config(scheduler.config, clip_sample=False)
    return scheduler


def _make_scheduler(sampler: str, saved_config, path: str):
    """The scheduler of ``sampler`` built from the saved pipeline's scheduler config (``from_config`` swap).

    ``DPM-Solver++`` is the second-order multistep solver on the trained model's ``path`` (``vp``/``flow``; configs
    carry other classes' leftover keys across swaps, so it is given, not guessed), with ``use_flow_sigmas=True,
    prediction_type="flow_prediction"`` on the flow path; the samplers named after the other path
    (``DDIM (VP path)``, ``flow Heun (flow path)``) sample the model through the change of variables.
    """
    from scratch_schedulers import (
        ScratchDDIMScheduler,
        ScratchDDPMScheduler,
        ScratchDPMSolverScheduler,
        ScratchFlowMatchScheduler,
    )

    if sampler in ("flow Euler", "flow Heun", "flow Heun (flow path)"):
        return ScratchFlowMatchScheduler.from_config(saved_config, solver=sampler.split()[1].lower())
    if sampler == "DDIM":
        return ScratchDDIMScheduler.from_config(saved_config, timestep_spacing="trailing")
    if sampler == "DDIM (VP path)":  # asks for v: x̂0 = a·x − b·v stays well conditioned at a → 0
        return ScratchDDIMScheduler.from_config(
            saved_config, timestep_spacing="trailing", prediction_type="v_prediction"
        )
    if sampler == "DDPM":
        return ScratchDDPMScheduler.from_config(saved_config, timestep_spacing="trailing")
    if sampler == "DPM-Solver++":
        if path == "vp":
            return ScratchDPMSolverScheduler.from_config(saved_config, solver_order=2, use_flow_sigmas=False)
        shift = saved_config.get("flow_shift", saved_config.get("shift", 1.0))
        return ScratchDPMSolverScheduler.from_config(
            saved_config, solver_order=2, use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift
        )
    raise ValueError(f"unknown sampler {sampler!r}; known: DPM-Solver++ and the names in demo.config.SAMPLERS")


def evaluations_per_image(scheduler, steps: int) -> int:
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


@torch.no_grad()
def requested_labels(n: int, seed: int) -> torch.Tensor:
    """``n`` class labels with the class counts of the metric's real baseline: a random n-subset of its pool's labels.

    The real-vs-real baseline draws ``n`` of the pool's real digits without replacement, so its class counts
    vary little (hypergeometric: at n = 1000 of 1,257, about ±4 per class); a generated set is compared with
    it like for like only if its requested classes vary the same way. Labels drawn i.i.d. (±9 per class at
    n = 1000) made the class mix alone move one model's FD ratio from 0.8× to 1.5× between draws; exactly
    balanced labels would err the other way (at n = 200 a balanced real draw scores about 9 against 14 for a
    random one). Beyond the pool's size the rest is drawn i.i.d. from its class frequencies.
    """
    pool_labels = metrics.digits_split(
        metrics.CLASSIFIER_RECIPE["split_seed"], metrics.CLASSIFIER_RECIPE["holdout_fraction"]
    ).train_labels
    generator = torch.Generator().manual_seed(seed)
    labels = pool_labels[torch.randperm(len(pool_labels), generator=generator)[:n]]
    if n > len(labels):
        frequencies = torch.bincount(pool_labels, minlength=metrics.NUM_CLASSES).to(torch.float64)
        extra = torch.multinomial(frequencies, n - len(labels), replacement=True, generator=generator)
        labels = torch.cat([labels, extra])
    return labels


# Draw k > 0 of a setting uses seed + k · DRAW_SEED_STRIDE (its labels, noise and baseline draws): new images,
# the same for every setting, so settings stay compared on equal draws.
DRAW_SEED_STRIDE = 1_000_003


def draw_images(pipe, sample: SampleSet, seed: int, batch_size: int, bar: tqdm) -> tuple[torch.Tensor, torch.Tensor]:
    """``sample.n`` images and their requested labels; the same seed gives every setting the same labels and noise."""
    labels = requested_labels(sample.n, seed)
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    chunks = []
    for begin in range(0, sample.n, batch_size):
        size = min(batch_size, sample.n - begin)

        def advance(_pipe, _i, _t, _tensors, size=size):
            bar.update(size)
            return {}

        output = pipe(
            batch_size=size,
            num_inference_steps=sample.steps,
            generator=generator,
            class_labels=labels[begin : begin + size].tolist(),
            guidance_scale=sample.guidance_scale,
            output_type="np",
            callback_on_step_end=advance,
        )
        chunks.append(metrics.images_from_numpy(output.images))
    return torch.cat(chunks), labels


def combine_draws(draws: list[dict]) -> dict:
    """One result from ``evaluate_samples`` results of independent draws: numbers averaged, FD's spread kept.

    ``fd_ratio`` is the mean FD over the mean baseline; ``fd_draws`` / ``fd_ratio_draws`` list each draw's
    values and ``fd_ratio_std_over_draws`` their standard deviation (None for one draw).
    """
    combined = dict(draws[0])
    for key, value in draws[0].items():
        values = [d[key] for d in draws]
        if isinstance(value, float) and None not in values:  # counts (n, draws of the baseline) stay integers
            combined[key] = statistics.fmean(values)
    ratios = [d["fd_ratio"] for d in draws]
    combined.update(
        draws=len(draws),
        fd_ratio=combined["fd"] / combined["fd_real_baseline"] if len(draws) > 1 else draws[0]["fd_ratio"],
        fd_draws=[d["fd"] for d in draws],
        fd_ratio_draws=ratios,
        fd_ratio_std_over_draws=statistics.stdev(ratios) if len(ratios) > 1 else None,
    )
    return combined


def score_set(pipe, sample: SampleSet, seed: int, batch_size: int, classifier, bar: tqdm) -> None:
    """Sample and score ``sample.draws`` draws; sets ``images``/``labels`` (first draw), ``seconds``, ``results``."""
    latent = getattr(pipe, "vae", None) is not None
    pipe.scheduler = make_scheduler(sample.sampler, pipe.scheduler.config, pipe.trained_parametrization.path, latent)
    sample.nfe = evaluations_per_image(pipe.scheduler, sample.steps)
    results = []
    start = time.perf_counter()
    for k in range(sample.draws):
        draw_seed = seed + k * DRAW_SEED_STRIDE
        images, labels = draw_images(pipe, sample, draw_seed, batch_size, bar)
        if k == 0:
            sample.images, sample.labels = images, labels
        results.append(metrics.evaluate_samples(images, labels, classifier=classifier, seed=draw_seed))
    sample.seconds = time.perf_counter() - start
    sample.results = combine_draws(results)


def run_stage(pipe, samples: list[SampleSet], config: DemoConfig, classifier, desc: str) -> None:
    """Sample and score ``samples``; one progress bar counting image × UNet evaluations."""
    path = pipe.trained_parametrization.path
    total = sum(
        s.n * s.draws * evaluations_per_image(make_scheduler(s.sampler, pipe.scheduler.config, path), s.steps)
        for s in samples
    )
    with tqdm(total=total, desc=desc, unit="img·step", unit_scale=True, dynamic_ncols=True) as bar:
        for sample in samples:
            bar.set_postfix_str(sample.name)
            score_set(pipe, sample, config.seed, config.sample_batch_size, classifier, bar)
            r = sample.results
            spread = f" ± {r['fd_ratio_std_over_draws']:.2f} over {r['draws']} draws" if r["draws"] > 1 else ""
            bar.write(
                f"      {sample.name} (n={sample.n}): FD {r['fd']:.2f} vs real {r['fd_real_baseline']:.2f} "
                f"(×{r['fd_ratio']:.2f}{spread}), KID {r['kid']:.0f} vs real {r['kid_real_baseline']:.0f}, "
                f"class match {100 * r['class_match']:.1f} %, {sample.seconds:.0f} s"
            )


# The quality target is met at few steps: the final stage and the reported best choose among the settings of at
# most this many UNet evaluations per image (flow Heun at 10 steps costs 19 and is only shown in the sweep).
MAX_NFE = 10


def eligible(samples: list[SampleSet]) -> list[SampleSet]:
    """The settings of at most :data:`MAX_NFE` UNet evaluations per image (all of them if none is that cheap)."""
    cheap = [s for s in samples if s.nfe <= MAX_NFE]
    return cheap or samples


def pick_best(samples: list[SampleSet]) -> SampleSet:
    """Lowest FD ratio (FD over the real baseline at the same n) among the :func:`eligible` ``samples``."""
    return min(eligible(samples), key=lambda s: s.results["fd_ratio"])
