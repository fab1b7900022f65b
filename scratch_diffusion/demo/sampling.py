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
from scratch_diffusion.demo.rules import DENOISERS, guidance_arguments, labels_for_call, rule_text
from scratch_schedulers.scheduling_dpmsolver import FEW_STEP_CONFIG


@dataclass
class SampleSet:
    """One sampler × steps × guidance setting, its images and its scores.

    ``rule`` says how ``guidance_scale`` guides (:data:`~scratch_diffusion.demo.rules.RULES`): plain
    classifier-free guidance (``"CFG"``, w = 1: the conditional model alone), CFG only for σ = b/a in
    ``interval``, autoguidance with the pipeline's ``guide_unet``, or classifier guidance with its ``classifier``.
    ``evaluations`` are the pipeline's own counts (``pipe.evaluations``) per image and model, read after each call:
    a classifier-free guidance step counts both halves (two UNet evaluations, though they share a batch), an
    autoguidance step one ``unet`` and one ``guide_unet`` evaluation. ``nfe`` is their total over the networks that
    denoise (:func:`model_evaluations`: the UNet and the guide; a guiding classifier's forward and backward are
    listed in ``evaluations`` only).
    """

    sampler: str
    steps: int
    guidance_scale: float
    n: int
    stage: str  # "sweep", "guidance", "final" or "guidance rules"
    draws: int = 1  # independent draws of n images, scored separately and averaged (see combine_draws)
    rule: str = "CFG"
    interval: tuple[float, float] | None = None  # (σ_lo, σ_hi) of an interval rule
    nfe: float = 0  # model evaluations per image, every half and network counted (filled in by sampling)
    evaluations: dict[str, float] = field(default_factory=dict)  # per image and model, from pipe.evaluations
    seconds: float = 0.0
    images: torch.Tensor | None = field(default=None, repr=False)  # (n, 1, 16, 16) in [-1, 1]
    labels: torch.Tensor | None = field(default=None, repr=False)
    results: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.sampler}, {self.steps} steps, {rule_text(self.rule, self.guidance_scale, self.interval)}"

    def row(self) -> dict:
        keep = {k: v for k, v in asdict(self).items() if k not in ("images", "labels", "results")}
        if self.interval is not None:
            keep["interval"] = list(self.interval)
        return {**keep, **self.results}

    def call_arguments(self) -> dict:
        """The pipeline call's guidance arguments of this setting (:func:`.rules.guidance_arguments`)."""
        return guidance_arguments(self.rule, self.guidance_scale, self.interval)


def model_evaluations(evaluations: dict[str, float]) -> int | float:
    """Evaluations per image of the denoising networks (``unet`` + ``guide_unet``) in ``pipe.evaluations``.

    An integer when whole (it always is for the demo's calls), so tables print 18, not 18.0.
    """
    total = sum(count for model, count in evaluations.items() if model in DENOISERS)
    return int(total) if float(total).is_integer() else total


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


# The DPM-Solver settings by name (over the saved config): the demo's 2M, its stochastic version (DPM-Solver++(2M)
# SDE), the documented few-step configuration, and that one with the grid tuned for the model kept from the saved
# config (``pipelines.tuned_grid.tune_time_grid`` stores it there).
_ODE = {"solver_order": 2, "algorithm_type": "dpmsolver++", "time_grid": None, "corrector": "none",
        "corrector_reuses": "x0", "final_step": "x0"}  # fmt: skip
DPM_SOLVERS: dict[str, dict] = {
    "DPM-Solver++": _ODE,
    "DPM-Solver++ SDE": {**_ODE, "algorithm_type": "sde-dpmsolver++"},
    "DPM-Solver++ few-step": {**_ODE, **FEW_STEP_CONFIG},
}
TUNED_DPM_SOLVER = "DPM-Solver++ few-step, tuned grid"
DPM_SOLVERS[TUNED_DPM_SOLVER] = DPM_SOLVERS["DPM-Solver++ few-step"]


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
        ScratchFlowMapScheduler,
        ScratchFlowMatchScheduler,
    )

    if sampler in ("flow Euler", "flow Heun", "flow Heun (flow path)"):
        return ScratchFlowMatchScheduler.from_config(saved_config, solver=sampler.split()[1].lower(), s_churn=0.0)
    if sampler.startswith(("flow Euler, S_churn=", "flow Heun, S_churn=")):  # EDM churn (Karras et al., 2022, Alg. 2)
        name, _, s_churn = sampler.partition(", S_churn=")
        return ScratchFlowMatchScheduler.from_config(saved_config, solver=name.split()[1].lower(),
                                                     s_churn=float(s_churn))
    if sampler == "DDIM":
        return ScratchDDIMScheduler.from_config(saved_config, timestep_spacing="trailing")
    if sampler == "DDIM (VP path)":  # asks for v: x̂0 = a·x − b·v stays well conditioned at a → 0
        return ScratchDDIMScheduler.from_config(
            saved_config, timestep_spacing="trailing", prediction_type="v_prediction"
        )
    if sampler in ("flow map", "consistency"):  # a few-step model's own scheduler (its saved config kept)
        return ScratchFlowMapScheduler.from_config(saved_config, stochastic_sampling=sampler == "consistency")
    if sampler == "DDPM":
        return ScratchDDPMScheduler.from_config(saved_config, timestep_spacing="trailing")
    if sampler in DPM_SOLVERS:  # a tuned grid in the saved config is kept only by the name that says so
        keys = {**({} if sampler == TUNED_DPM_SOLVER else {"tuned_grids": None}), **DPM_SOLVERS[sampler]}
        if sampler == TUNED_DPM_SOLVER and not saved_config.get("tuned_grids"):
            raise ValueError(f"{sampler!r} needs a scheduler config with tuned_grids (pipelines.tuned_grid).")
        if path == "vp":
            return ScratchDPMSolverScheduler.from_config(saved_config, use_flow_sigmas=False, **keys)
        shift = 1.0 if "time_grid" in keys else saved_config.get("flow_shift", saved_config.get("shift", 1.0))
        return ScratchDPMSolverScheduler.from_config(
            saved_config, use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift, **keys
        )
    raise ValueError(f"unknown sampler {sampler!r}; known: DPM-Solver++ and the names in demo.config.SAMPLERS")


def evaluations_per_image(scheduler, steps: int) -> int:
    """Sampler steps per image at ``steps``: the scheduler's timesteps, one UNet evaluation each when unguided.

    The progress bars count these (one tick per image and step); what a setting evaluated, guidance's extra
    evaluations included, is read from ``pipe.evaluations`` instead (:attr:`SampleSet.evaluations`).
    """
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


def draw_images(
    pipe, sample: SampleSet, seed: int, batch_size: int, bar: tqdm | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
    """``sample.n`` images, their requested labels and the evaluations per image the pipeline counted.

    The same seed gives every setting the same labels and noise. Labels are None where the model is not asked for
    a class (an unconditional model without classifier guidance). The counts are ``pipe.evaluations`` of each call,
    weighted by its images.
    """
    labels = requested_labels(sample.n, seed) if labels_for_call(pipe, sample.rule) else None
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    chunks, evaluated = [], {}
    for begin in range(0, sample.n, batch_size):
        size = min(batch_size, sample.n - begin)

        def advance(_pipe, _i, _t, _tensors, size=size):
            if bar is not None:
                bar.update(size)
            return {}

        output = pipe(
            batch_size=size,
            num_inference_steps=sample.steps,
            generator=generator,
            class_labels=None if labels is None else labels[begin : begin + size].tolist(),
            output_type="np",
            callback_on_step_end=advance,
            **sample.call_arguments(),
        )
        chunks.append(metrics.images_from_numpy(output.images))
        for model, count in pipe.evaluations.items():
            evaluated[model] = evaluated.get(model, 0.0) + count * size
    return torch.cat(chunks), labels, {model: total / sample.n for model, total in evaluated.items()}


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


def use_sampler(pipe, sampler: str) -> None:
    """Give ``pipe`` the scheduler of ``sampler`` (:func:`make_scheduler` from its own scheduler's config)."""
    latent = getattr(pipe, "vae", None) is not None
    pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config, pipe.trained_parametrization.path, latent)


def record_evaluations(sample: SampleSet, evaluations: dict[str, float]) -> None:
    """Set ``sample.evaluations`` (as counted) and ``sample.nfe`` (:func:`model_evaluations`)."""
    sample.evaluations = {model: int(c) if float(c).is_integer() else c for model, c in evaluations.items()}
    sample.nfe = model_evaluations(evaluations)


def score_set(pipe, sample: SampleSet, seed: int, batch_size: int, classifier, bar: tqdm | None = None) -> None:
    """Sample and score ``sample.draws`` draws; sets ``images``/``labels`` (first draw), ``evaluations``/``nfe``
    (as the pipeline counted them), ``seconds`` and ``results``."""
    use_sampler(pipe, sample.sampler)
    results = []
    start = time.perf_counter()
    for k in range(sample.draws):
        draw_seed = seed + k * DRAW_SEED_STRIDE
        images, labels, evaluations = draw_images(pipe, sample, draw_seed, batch_size, bar)
        if k == 0:
            sample.images, sample.labels = images, labels
            record_evaluations(sample, evaluations)
        results.append(metrics.evaluate_samples(images, labels, classifier=classifier, seed=draw_seed))
    sample.seconds = time.perf_counter() - start
    sample.results = combine_draws(results)


def run_stage(pipe, samples: list[SampleSet], config: DemoConfig, classifier, desc: str) -> None:
    """Sample and score ``samples``; one progress bar counting image × sampler steps."""
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
                f"      {sample.name} (n={sample.n}, {evaluations_text(sample.evaluations)}): FD {r['fd']:.2f} "
                f"vs real {r['fd_real_baseline']:.2f} (×{r['fd_ratio']:.2f}{spread}), KID {r['kid']:.0f} vs real "
                f"{r['kid_real_baseline']:.0f}, {match_text(r)}, {sample.seconds:.0f} s"
            )


def evaluations_text(evaluations: dict[str, float]) -> str:
    """``"18 UNet evaluations per image"``, ``"9 UNet + 9 guide evaluations per image"``."""
    names = {"unet": "UNet", "guide_unet": "guide", "classifier": "classifier (forward + backward)"}
    parts = [f"{count:g} {names.get(model, model)}" for model, count in evaluations.items()]
    return " + ".join(parts) + " evaluations per image"


def match_text(r: dict) -> str:
    """``"class match 98.5 %"``, or ``"no class asked"`` for an unconditional model's unguided samples."""
    return "no class asked" if r.get("class_match") is None else f"class match {100 * r['class_match']:.1f} %"


# The quality target is met at few steps: the final stage and the reported best choose among the settings of at
# most this many model evaluations per image, every evaluation counted: flow Heun at 10 steps costs 19 and is only
# shown in the sweep; a guided setting counts both halves of each classifier-free guidance step (Heun at 5 steps
# with w ≠ 1 costs 18, so with --guidance_scale ≠ 1 only 5-step first-order settings compete).
MAX_NFE = 10


def eligible(samples: list[SampleSet]) -> list[SampleSet]:
    """The settings of at most :data:`MAX_NFE` model evaluations per image (all of them if none is that cheap)."""
    cheap = [s for s in samples if s.nfe <= MAX_NFE]
    return cheap or samples


def pick_best(samples: list[SampleSet]) -> SampleSet:
    """Lowest FD ratio (FD over the real baseline at the same n) among the :func:`eligible` ``samples``."""
    return min(eligible(samples), key=lambda s: s.results["fd_ratio"])
