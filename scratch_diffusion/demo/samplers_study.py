"""The samplers-v3 study (issue 24; ``benchmarks/bench_samplers_v3.py``): stochastic against deterministic solvers,
and a time grid tuned for the model against the default one.

**On the exact denoiser** (:func:`exact_rows`): each sampler of :func:`exact_samplers` samples a Gaussian mixture
driven by its closed-form denoiser (``scratch_schedulers.oracle``) at several numbers of model evaluations; the
distribution error is the sliced W1 to the mixture (``oracle.mixture_error``), per noise seed, beside the floor of
exact samples of the same size (``oracle.sampling_noise``). The exact model makes no error for stochasticity to
correct, so this isolates the discretisation error of each solver.

**On the demo's model** (:data:`STOCHASTIC_SETTINGS`, :data:`GRID_SETTINGS`): per training seed the demo's
class-conditional latent flow model (trained with the demo's recipe as the guidance study does, or copied from a
demo output folder), every setting sampled on ``draws`` draws of ``n`` images by the demo's own code
(``few_step_study.score_setting``: the same labels and noise for every setting) and scored by the demo's metric
(FD in the digits CNN's features beside the real baseline at the same n). The grid settings tune the few-step
DPM-Solver's grid on the seed's model first (``pipelines.tuned_grid.tune_time_grid``, calibration noise apart
from the scoring draws) and store the tuned scheduler beside the model.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scratch_schedulers import ScratchDDPMScheduler, ScratchDPMSolverScheduler, ScratchFlowMatchScheduler
from scratch_schedulers.oracle import GaussianMixture, mixture_error, sample_with, sampling_noise

FLOW_DPM = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
# EDM's churn on the flow Heun sampler (S_churn on EDM's noise level s = σ/(1 − σ); S_tmin, S_tmax, S_noise left at
# their defaults). The demo's value was chosen on seed 0 at 19 evaluations (n = 1000, one draw): see CHURN_SWEEP.
DEMO_CHURN = 1.0
CHURN_SWEEP = (1.0, 3.0, 10.0)
# Deterministic and stochastic pairs at 10, 20 and 50 model evaluations (Heun: the largest n with 2n − 1 ≤ target).
STOCHASTIC_PAIRS = (("DPM-Solver++", "DPM-Solver++ SDE"), ("flow Heun", f"flow Heun, S_churn={DEMO_CHURN:g}"))
STOCHASTIC_EVALUATIONS = (10, 20, 50)
# The few-step DPM-Solver (FEW_STEP_CONFIG) with its default grid and with a grid tuned for the model, at 5.
GRID_EVALUATIONS = 5
GRID_SAMPLERS = ("DPM-Solver++ few-step", "DPM-Solver++ few-step, tuned grid")
TUNED_SCHEDULER = "scheduler-tuned"  # the tuned scheduler's folder beside each seed's model
CALIBRATION_SEED = 1234  # the tuning's noise and labels: apart from the scoring draws (EVAL_SEED + k·stride)


def churn_sampler(s_churn: float) -> str:
    """The demo's sampler name of flow Heun with EDM churn ``s_churn`` (``demo.sampling.make_scheduler`` reads it)."""
    return f"flow Heun, S_churn={s_churn:g}"


def steps_at_most(sampler: str, evaluations: int, make: Callable[[str], Any]) -> int:
    """The largest step count whose schedule makes at most ``evaluations`` model evaluations per image."""
    for steps in range(evaluations, 0, -1):
        scheduler = make(sampler)
        scheduler.set_timesteps(steps)
        if len(scheduler.timesteps) <= evaluations:
            return steps
    raise ValueError(f"{sampler!r} makes more than {evaluations} evaluations at every step count")


def stochastic_settings(make: Callable[[str], Any], only: Sequence[str] | None = None) -> list[tuple[str, int]]:
    """(sampler, steps) of every deterministic/stochastic pair at :data:`STOCHASTIC_EVALUATIONS` (``only``: of
    these samplers)."""
    return [(sampler, steps_at_most(sampler, target, make)) for pair in STOCHASTIC_PAIRS for sampler in pair
            for target in STOCHASTIC_EVALUATIONS if only is None or sampler in only]


# ---- the exact denoiser ----------------------------------------------------------------------------------------


def exact_samplers() -> dict[str, tuple[str, Callable[[], Any]]]:
    """Name → (path, factory): deterministic solvers beside their stochastic versions, on both paths."""
    dpm = {"VP": {}, "flow": FLOW_DPM}
    samplers: dict[str, tuple[str, Callable[[], Any]]] = {}
    for path, keys in dpm.items():
        for order in (2, 3):
            for algorithm in ("dpmsolver++", "sde-dpmsolver++"):
                name = f"{path}: DPM-Solver++ {order}M{' SDE' if algorithm.startswith('sde') else ''}"
                samplers[name] = (path, lambda o=order, a=algorithm, k=keys: ScratchDPMSolverScheduler(
                    solver_order=o, algorithm_type=a, time_grid="flow_uniform", **k))
    samplers["VP: DDPM (ancestral)"] = ("VP", lambda: ScratchDDPMScheduler(timestep_spacing="trailing",
                                                                          clip_sample=False))
    samplers["flow: Heun"] = ("flow", lambda: ScratchFlowMatchScheduler(solver="heun"))
    for s_churn in CHURN_SWEEP:
        samplers[f"flow: Heun, S_churn={s_churn:g}"] = (
            "flow", lambda c=s_churn: ScratchFlowMatchScheduler(solver="heun", s_churn=c))
    return samplers


def exact_rows(mixture_name: str, mixture: GaussianMixture, evaluations: Sequence[int], n_samples: int,
               seeds: Sequence[int]) -> list[dict]:
    """Per sampler and evaluation target: the sliced W1 (and the component errors) of each noise seed's samples."""
    rows = []
    for name, (path, factory) in exact_samplers().items():
        steps_of = {t: steps_at_most(name, t, lambda _name, f=factory: f()) for t in evaluations}
        for target, steps in steps_of.items():
            errors = []
            for seed in seeds:
                samples, nfe = sample_with(factory(), mixture, steps, n_samples=n_samples, seed=seed)
                errors.append(mixture_error(samples, mixture))
            w1 = [e["sliced_wasserstein"] for e in errors]
            rows.append({"mixture": mixture_name, "sampler": name, "path": path, "target": target, "steps": steps,
                         "nfe": nfe, "sliced_w1": statistics.fmean(w1), "sliced_w1_std": statistics.stdev(w1),
                         "sliced_w1_seeds": w1, "weight_error": statistics.fmean(e["weight_error"] for e in errors),
                         "std_error": statistics.fmean(e["std_error"] for e in errors)})
    return rows


def exact_floor(mixture: GaussianMixture, n_samples: int) -> dict[str, float]:
    """The statistics of exact samples of the same size (the noise floor of the sliced W1)."""
    return sampling_noise(mixture, n_samples)


# ---- the demo's model ------------------------------------------------------------------------------------------


def tuned_scheduler_dir(folder: Path) -> Path:
    return folder / TUNED_SCHEDULER


def tune_grid(pipe, folder: Path, num_calibration: int, max_evaluations: int = 60) -> dict:
    """Tune the few-step DPM-Solver's grid at :data:`GRID_EVALUATIONS` on ``pipe``'s model; the tuned scheduler is
    saved in ``folder/scheduler-tuned`` and the tuning's record beside it (reused when present)."""
    from scratch_diffusion.demo.sampling import use_sampler
    from scratch_diffusion.pipelines.tuned_grid import tune_time_grid

    target = tuned_scheduler_dir(folder)
    record_path = target / "tuning.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    use_sampler(pipe, GRID_SAMPLERS[0])
    record = tune_time_grid(pipe, GRID_EVALUATIONS, num_calibration=num_calibration, seed=CALIBRATION_SEED,
                            max_evaluations=max_evaluations)
    pipe.scheduler.save_config(str(target))
    record = dataclasses.asdict(record)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def use_tuned_scheduler(pipe, folder: Path) -> None:
    """Give ``pipe`` the scheduler tuned for it (its grid is in the config: ``from_config`` keeps it)."""
    pipe.scheduler = ScratchDPMSolverScheduler.from_pretrained(str(tuned_scheduler_dir(folder)))
