"""The few-step study's models and scores (issue 23; ``benchmarks/bench_few_step_models.py``).

The start is the demo's own flow model, the **teacher** (:class:`Teacher`: a demo output folder with ``pipeline/``,
``vae/``, ``latent-cache/`` and ``training.json``; given, or trained here with the demo's recipe as the guidance
study does). From it, per tuning seed, ``training/train.py --init_from`` the teacher's pipeline with
``--objective consistency`` (ECT-style consistency tuning; a plain UNet, sampled with ``ScratchFlowMapScheduler``
re-noising: the demo's sampler ``"consistency"``) and with ``--objective meanflow`` (MeanFlow flow maps; a
``FlowMapUNet2DModel``, sampled with ``ScratchFlowMapScheduler``: ``"flow map"``), each with its recipe in
:data:`RECIPES` (the one place the recipes live) on the teacher's VAE and latent cache. **From scratch**: the
MeanFlow recipe without ``--init_from`` on the teacher's architecture, for the teacher's and the tuning's time
together (:func:`scratch_steps`). **Levers** (:data:`LEVERS`): single-seed tuning runs with one change each.

Every model is trained through the trainer in this process (:func:`train_or_reuse`; its record beside the folder,
``<folder>.json``, with the command, the wall seconds and the trainer's ``seconds_per_step``); a complete model
whose recorded command is the one wanted is reused, another is trained afresh. Every setting is sampled by the
demo's own code (``sampling.score_set``: requested labels with the real baseline's class counts, ``draws`` draws of
``n`` images, draw k at seed ``EVAL_SEED + k·DRAW_SEED_STRIDE`` — the same labels and noise for every model) and
scored by the demo's metric (FD and KID in the digits CNN's features beside the real baseline at the same n, the
CNN's class against the requested one); evaluations per image are the pipeline's own counts (``SampleSet.nfe``).
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from scratch_diffusion.demo.sampling import SampleSet, score_set

# The tuning recipes, the one place they live (the study, its levers and the demo's stage read them): trainer options
# by name over COMMON, a bool a flag (False: --no-NAME); the objectives' own defaults otherwise (ECT's σ distribution,
# the sampler's shift 3: training/objectives/consistency.py). Chosen by single-seed runs on the demo's teacher
# (n = 1000, one draw; the LEVERS below re-measure the alternatives in the study itself): for consistency tuning 800
# steps beat 400, lr 3e-4 beat 1e-4, EMA beat none, 6 stages (final gap 1/32) beat 4; for MeanFlow lr 1e-3 and
# 800 steps with half the examples on intervals moved the 1-step FD most (9.6× → 8.3× the baseline; still far off).
RECIPES: dict[str, dict] = {
    "consistency": {"max_train_steps": 800, "learning_rate": 3e-4},
    "meanflow": {"max_train_steps": 800, "learning_rate": 1e-3, "meanflow_interval_fraction": 0.5},
}
# MeanFlow from scratch: the teacher's own from-scratch optimiser settings (the demo's recipe: lr 1e-3, 100 warm-up
# steps) instead of a tuning's.
SCRATCH_CHANGES = {"learning_rate": 1e-3, "lr_warmup_steps": 100}
# What every tuning run shares: the teacher's data split, null-class dropout and batch, EMA, no tensorboard logs.
COMMON = {"class_conditional": True, "class_dropout_prob": 0.1, "digits_split": "train", "train_batch_size": 64,
          "lr_warmup_steps": 10, "use_ema": True, "logger": "none", "eval_batch_size": 20}  # fmt: skip
QUICK_CHANGES = {"max_train_steps": 4, "train_batch_size": 16, "lr_warmup_steps": 1, "eval_batch_size": 2}
# The sampler each objective's saved pipeline is scored with (demo.sampling.make_scheduler's names).
SAMPLERS = {"consistency": "consistency", "meanflow": "flow map"}
# Extra single-seed tuning runs: one change to an objective's recipe each (``sampler``: another than SAMPLERS'). The
# recipe's two largest single-draw gains, re-measured at the study's n and draws; the other levers tried (learning
# rate, steps, EMA, distance, stages, MeanFlow's interval fraction) are in the RECIPES comment above.
LEVERS: list[dict] = [
    {"name": "sampler shift 1", "objective": "consistency", "changes": {"consistency_sampling_shift": 1.0}},
    {"name": "σ logit-normal(−0.4, 1)", "objective": "consistency",
     "changes": {"consistency_logit_mean": -0.4, "consistency_logit_std": 1.0}},
]
# The teacher's rows: first- and second-order solvers at the tuned models' step counts, and its best at ≤ 10
# evaluations (flow Heun, 5 steps = 9 evaluations; the demo's final stage).
TEACHER_SETTINGS = [("flow Euler", 1), ("flow Euler", 2), ("flow Euler", 4), ("DPM-Solver++", 1),
                    ("DPM-Solver++", 2), ("DPM-Solver++", 4), ("flow Heun", 5)]  # fmt: skip
TUNED_STEPS = (1, 2, 4)
SCRATCH_STEPS = (1, 2)
EVAL_SEED = 0  # every model's draws: the same requested labels and noise
ROW_KEYS = ("fd", "fd_real_baseline", "fd_real_baseline_std", "fd_ratio", "fd_draws", "fd_ratio_draws",
            "fd_ratio_std_over_draws", "kid", "kid_real_baseline", "class_match", "classifier_accuracy")  # fmt: skip
TRAINING_RECORD = "training.json"


def complete(pipeline_dir: Path) -> bool:
    """A whole saved pipeline: the trainer writes its model card (README.md) last."""
    return (pipeline_dir / "model_index.json").is_file() and (pipeline_dir / "README.md").is_file()


@dataclass(frozen=True)
class Teacher:
    """A demo output folder: the flow pipeline, the VAE it was trained on, its latent cache and training record."""

    folder: Path
    record: dict  # its training.json: steps, seconds (the UNet's), num_threads, model, command

    @property
    def pipeline_dir(self) -> Path:
        return self.folder / "pipeline"

    @property
    def vae_dir(self) -> Path | None:
        """The VAE folder the teacher was trained with (``vae/``, else the pipeline's copy); None in pixel space."""
        if not (self.pipeline_dir / "vae").is_dir():
            return None
        for folder in (self.folder / "vae", self.pipeline_dir / "vae"):
            if (folder / "config.json").is_file():
                return folder
        return None

    @property
    def model(self) -> str:
        """The teacher's UNet preset or JSON config (the demo's ``compact``; ``--quick``: its toy UNet)."""
        return str(self.record.get("model") or "compact")

    @property
    def seconds(self) -> float:
        """The teacher's training wall time (the UNet's; the VAE is shared with every model here)."""
        return float(self.record["seconds"])

    def latent_argv(self) -> list[str]:
        vae = self.vae_dir
        return [] if vae is None else ["--vae_name_or_path", str(vae), "--latent_cache_dir",
                                       str(self.folder / "latent-cache")]  # fmt: skip


def prepare_teacher(given: Path | None, output_dir: Path, quick: bool, num_threads: int) -> Teacher:
    """The teacher: ``given`` (a demo output folder, used in place), or the demo's model trained with its own recipe
    into ``output_dir/teacher`` (kept when complete; ``quick``: the demo's toy UNet)."""
    if given is not None:
        for needed in (given / "pipeline" / "model_index.json", given / TRAINING_RECORD):
            if not needed.is_file():
                raise FileNotFoundError(f"--teacher {given}: no {needed.relative_to(given)} (a demo output folder "
                                        "holds pipeline/ and training.json).")  # fmt: skip
        return Teacher(given, json.loads((given / TRAINING_RECORD).read_text()))
    from scratch_diffusion.demo.guidance_study import prepare_conditional, study_config

    config = study_config(0, output_dir / "teacher", quick, num_threads)
    return Teacher(config.output_dir, prepare_conditional(config))


def flag_argv(options: dict) -> list[str]:
    """``{"use_ema": True, "consistency_renoise": False, "seed": 0}`` → ``--use_ema --no-consistency_renoise
    --seed 0``."""
    argv = []
    for name, value in options.items():
        if isinstance(value, bool):
            argv.append(f"--{name}" if value else f"--no-{name}")
        else:
            argv += [f"--{name}", str(value)]
    return argv


def recipe_of(objective: str, quick: bool = False, changes: dict | None = None) -> dict:
    """The trainer options of one tuning run: :data:`COMMON`, the objective's :data:`RECIPES` entry, (``quick``)
    :data:`QUICK_CHANGES`, then ``changes``."""
    if objective not in RECIPES:
        raise ValueError(f"objective {objective!r}; allowed: {', '.join(RECIPES)}")
    return {**COMMON, **RECIPES[objective], **(QUICK_CHANGES if quick else {}), **(changes or {})}


def tuning_argv(teacher: Teacher, objective: str, seed: int, output_dir: Path, quick: bool = False,
                changes: dict | None = None, from_scratch: bool = False) -> list[str]:  # fmt: skip
    """``training/train.py``'s command line: ``--init_from`` the teacher's pipeline (``from_scratch``: its
    architecture, ``--model_config_name_or_path``, instead), on its VAE's latents."""
    recipe = recipe_of(objective, quick, changes)
    start = {"model_config_name_or_path": teacher.model} if from_scratch else {"init_from": teacher.pipeline_dir}
    fixed = {"output_dir": output_dir, **start, "objective": objective, "seed": seed,
             "checkpointing_steps": recipe["max_train_steps"] + 1}  # fmt: skip  (no training-state checkpoints)
    return [*flag_argv({**fixed, **recipe}), *teacher.latent_argv()]


def run_recorded(argv: list[str]) -> dict:
    """Train ``argv`` in this process; its record: ``command``, ``argv``, ``steps``, wall ``seconds`` of the whole
    call, the trainer's ``seconds_per_step`` and ``cpu_seconds_per_step`` (first update excluded), ``num_threads``."""
    from scratch_diffusion.training import run_training

    start = time.perf_counter()
    summary = run_training(argv)
    return {"command": "python training/train.py " + shlex.join(argv), "argv": argv, "steps": summary.global_step,
            "seconds": time.perf_counter() - start, "seconds_per_step": summary.seconds_per_step,
            "cpu_seconds_per_step": summary.cpu_seconds_per_step, "num_threads": torch.get_num_threads()}  # fmt: skip


def train_or_reuse(folder: Path, argv: list[str]) -> dict:
    """The model in ``folder``: reused when complete and trained by ``argv`` (its ``<folder>.json`` record says so),
    else trained here (an earlier pipeline there, of another recipe, is replaced); its :func:`run_recorded` record.
    """
    record_path = folder.with_suffix(".json")
    if complete(folder) and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("argv") == argv:
            return record
    if (folder / "model_index.json").is_file():
        shutil.rmtree(folder)
    record = run_recorded(argv)
    folder.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def scratch_steps(teacher_seconds: float, tuning: list[dict]) -> int:
    """Steps of a from-scratch MeanFlow run with the teacher's and the tuning's time together:
    round((teacher seconds + mean tuning seconds) / mean tuning seconds per step), over the tuning ``records``."""
    if not tuning:
        raise ValueError("no MeanFlow tuning record: the from-scratch budget is the teacher's plus the tuning's time")
    seconds = sum(r["seconds"] for r in tuning) / len(tuning)
    per_step = sum(r["seconds_per_step"] for r in tuning) / len(tuning)
    return max(1, round((teacher_seconds + seconds) / per_step))


@dataclass(frozen=True)
class Model:
    """One model of the study: its name (the results' key), group, how it is made and what is sampled."""

    name: str  # "teacher", "consistency/seed0", "scratch meanflow/seed1", "lever/consistency/4 stages"
    group: str  # "teacher", "tuned", "scratch" or "lever"
    folder: Path  # its pipeline
    argv: list[str] | None  # the trainer's command line (None: the teacher, not trained by the study)
    settings: list[tuple[str, int]]  # (sampler, steps)
    draws: int
    objective: str | None = None
    seed: int | None = None
    lever: dict | None = None

    def row(self) -> dict:
        """Its description in the results (without the settings' scores)."""
        about = {"group": self.group, "objective": self.objective, "seed": self.seed, "folder": str(self.folder)}
        return {**about, **({"lever": self.lever} if self.lever else {})}


def teacher_model(teacher: Teacher, draws: int) -> Model:
    return Model("teacher", "teacher", teacher.pipeline_dir, None, list(TEACHER_SETTINGS), draws)


def tuned_model(teacher: Teacher, objective: str, seed: int, output_dir: Path, draws: int, quick: bool) -> Model:
    folder = output_dir / objective / f"seed{seed}"
    argv = tuning_argv(teacher, objective, seed, folder, quick)
    settings = [(SAMPLERS[objective], k) for k in TUNED_STEPS]
    return Model(f"{objective}/seed{seed}", "tuned", folder, argv, settings, draws, objective, seed)


def scratch_model(teacher: Teacher, seed: int, steps: int, output_dir: Path, draws: int, quick: bool) -> Model:
    """MeanFlow from scratch for ``steps`` steps (:func:`scratch_steps`), otherwise the MeanFlow recipe."""
    folder = output_dir / "scratch-meanflow" / f"seed{seed}"
    changes = {**SCRATCH_CHANGES, "max_train_steps": steps}
    argv = tuning_argv(teacher, "meanflow", seed, folder, quick, changes, from_scratch=True)
    settings = [(SAMPLERS["meanflow"], k) for k in SCRATCH_STEPS]
    return Model(f"scratch meanflow/seed{seed}", "scratch", folder, argv, settings, draws, "meanflow", seed)


def lever_model(teacher: Teacher, lever: dict, seed: int, output_dir: Path, quick: bool) -> Model:
    """One lever: its objective's recipe with its ``changes``, one seed, one draw per setting."""
    objective = lever["objective"]
    folder = output_dir / "levers" / objective / lever["name"].replace(" ", "-")
    argv = tuning_argv(teacher, objective, seed, folder, quick, lever["changes"])
    settings = [(lever.get("sampler", SAMPLERS[objective]), k) for k in TUNED_STEPS]
    return Model(f"lever/{objective}/{lever['name']}", "lever", folder, argv, settings, 1, objective, seed, lever)


def setting_key(sampler: str, steps: int) -> str:
    return f"{sampler}/steps={steps}"


def load_study_pipeline(folder: Path):
    from scratch_diffusion.pipelines import ScratchDiffusionPipeline

    pipe = ScratchDiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def score_setting(pipe, sampler: str, steps: int, n: int, draws: int, batch_size: int, metric) -> dict:
    """Sample and score one setting (``draws`` × ``n`` images, unguided); its JSON-ready record: the demo's numbers
    combined over draws (``combine_draws``), the evaluations per image as the pipeline counted them, the seconds
    in the pipeline calls and the metric."""
    sample = SampleSet(sampler, steps, 1.0, n, "few-step", draws=draws)
    score_set(pipe, sample, EVAL_SEED, batch_size, metric)
    return {"key": setting_key(sampler, steps), "sampler": sampler, "steps": steps, "n": n, "draws": draws,
            "evaluations": sample.evaluations, "nfe": sample.nfe, "seconds": sample.seconds,
            **{k: sample.results[k] for k in ROW_KEYS}}  # fmt: skip
