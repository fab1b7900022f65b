"""The demo's few-step stage (issue 23): the demo's flow model consistency-tuned, scored at 1, 2 and 4 evaluations.

After the control and editing stage, ``training/train.py --init_from`` the demo's pipeline ``--objective
consistency`` (ECT-style consistency tuning: the study's recipe, ``few_step_study.RECIPES["consistency"]``, for
:data:`DEMO_TUNING_STEPS` steps) on the demo's VAE and latents, into ``OUTPUT_DIR/few-step`` (``--reuse`` keeps an
earlier one). The tuned pipeline samples with its own scheduler (multistep consistency sampling: the demo's sampler
``"consistency"``) at 1, 2 and 4 steps, the teacher with DPM-Solver++ at the same steps, each on the final stage's
``num_eval_samples`` × ``eval_draws`` images, unguided, scored by the demo's metric, evaluations per image as the
pipeline counts them. The figure gets a row of 1-step samples, one per class. The study with 3 tuning seeds, MeanFlow,
training from scratch and the levers is ``benchmarks/bench_few_step_models.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from scratch_diffusion import metrics
from scratch_diffusion.demo.config import DemoConfig
from scratch_diffusion.demo.few_step_study import Teacher, complete, recipe_of, run_recorded, tuning_argv
from scratch_diffusion.demo.sampling import SampleSet, run_stage, use_sampler

# Sized for the demo's budget: 300 consistency steps of the compact UNet take about as long as 150-200 of its
# flow-matching steps (two forward passes, one backward) — under a minute with 1-2 threads.
DEMO_TUNING_STEPS = 300
QUICK_TUNING_STEPS = 4
OBJECTIVE = "consistency"
SAMPLER = "consistency"  # the tuned pipeline's own scheduler, re-noising (demo.sampling.make_scheduler)
TEACHER_SAMPLER = "DPM-Solver++"
STEP_COUNTS = (1, 2, 4)
FEW_STEP_SUBDIR = "few-step"
FEW_STEP_RECORD = "few_step.json"  # beside the pipeline: what --reuse reads back
ROW_KEYS = ("sampler", "steps", "n", "draws", "evaluations", "nfe", "fd", "fd_real_baseline", "fd_real_baseline_std",
            "fd_ratio", "fd_ratio_std_over_draws", "kid", "kid_real_baseline", "class_match", "seconds")  # fmt: skip


def few_step_dir(config: DemoConfig) -> Path:
    return config.output_dir / FEW_STEP_SUBDIR


def tuning_changes(config: DemoConfig) -> dict:
    """The demo's changes to the study's consistency recipe: its step count, seed data and EMA choice."""
    changes = {"max_train_steps": QUICK_TUNING_STEPS if config.quick else DEMO_TUNING_STEPS,
               "class_dropout_prob": config.class_dropout_prob, "digits_split": config.digits_split,
               "use_ema": config.use_ema}  # fmt: skip
    if config.quick:
        changes["train_batch_size"] = config.train_batch_size
    return changes


def demo_tuning_argv(config: DemoConfig) -> list[str]:
    """``train.py``'s command line: consistency tuning of the demo's pipeline on its VAE's latents."""
    teacher = Teacher(config.output_dir, {"model": config.model})
    return tuning_argv(teacher, OBJECTIVE, config.seed, few_step_dir(config), config.quick, tuning_changes(config))


def tune_or_reuse(config: DemoConfig) -> dict:
    """The consistency-tuned pipeline: trained here, or with ``--reuse`` an earlier one; its training record."""
    record_path = config.output_dir / FEW_STEP_RECORD
    if config.reuse and complete(few_step_dir(config)) and record_path.is_file():
        record = json.loads(record_path.read_text())
        print(f"      few-step: reusing the consistency-tuned pipeline in {few_step_dir(config)} ({record['steps']} "
              "steps; --reuse)")  # fmt: skip
        return record
    argv, steps = demo_tuning_argv(config), tuning_changes(config)["max_train_steps"]
    print(f"      few-step: consistency tuning of {config.pipeline_dir} for {steps} steps (train.py --init_from … "
          f"--objective consistency) into {few_step_dir(config)}")  # fmt: skip
    record = run_recorded(argv)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


@torch.no_grad()
def one_per_class(pipe, steps: int, seed: int) -> torch.Tensor:
    """One sample of each class 0…K−1 at ``steps`` steps with the tuned sampler, (K, 1, 16, 16) in [−1, 1]."""
    use_sampler(pipe, SAMPLER)
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    output = pipe(batch_size=pipe.num_classes, class_labels=list(range(pipe.num_classes)), num_inference_steps=steps,
                  generator=generator, output_type="np")  # fmt: skip
    return metrics.images_from_numpy(output.images)


def few_step_stage(pipe_loader, classifier, config: DemoConfig, phase_seconds: dict, timed) -> dict:
    """Tune (or reuse), then score the tuned pipeline and the teacher (``pipe_loader(path)`` loads a pipeline);
    returns ``metrics.json``'s ``few_step`` with ``examples`` (a tensor, for the figure)."""
    n, draws = config.num_eval_samples, config.eval_draws
    print(f"[3/6] Few-step: the pipeline consistency-tuned, sampled with its own scheduler at "
          f"{', '.join(map(str, STEP_COUNTS))} steps beside the teacher's {TEACHER_SAMPLER}, {n} images × {draws} "
          "draws each, unguided")  # fmt: skip
    with timed(phase_seconds, "few-step training"):
        training = tune_or_reuse(config)
    tuned = [SampleSet(SAMPLER, k, 1.0, n, "few-step", draws) for k in STEP_COUNTS]
    teacher = [SampleSet(TEACHER_SAMPLER, k, 1.0, n, "few-step", draws) for k in STEP_COUNTS]
    with timed(phase_seconds, "few-step"):
        pipe = pipe_loader(few_step_dir(config))
        run_stage(pipe, tuned, config, classifier, "few-step (tuned)")
        examples = one_per_class(pipe, STEP_COUNTS[0], config.seed)
        run_stage(pipe_loader(config.pipeline_dir), teacher, config, classifier, "few-step (teacher)")
    changes = tuning_changes(config)
    summary = {
        "objective": OBJECTIVE,
        "recipe": recipe_of(OBJECTIVE, config.quick, changes),
        "pipeline": str(few_step_dir(config)),
        "n": n,
        "draws": draws,
        "training": training,
        "tuned": [{k: s.row()[k] for k in ROW_KEYS} for s in tuned],
        "teacher": [{k: s.row()[k] for k in ROW_KEYS} for s in teacher],
        "examples": examples,
    }
    print(f"      {few_step_text(summary)}")
    return summary


def few_step_text(summary: dict) -> str:
    """One line: the tuning's steps and time, FD ratio and class match of the tuned sampler at each count, the
    teacher's FD ratio at the same counts."""
    tuned, teacher, training = summary["tuned"], summary["teacher"], summary["training"]
    counts = "/".join(f"{r['nfe']:g}" for r in tuned)
    ratios = " / ".join(f"×{r['fd_ratio']:.2f}" for r in tuned)
    matches = " / ".join(f"{100 * r['class_match']:.1f}" for r in tuned)
    teacher_ratios = " / ".join(f"×{r['fd_ratio']:.2f}" for r in teacher)
    teacher_counts = "/".join(f"{r['nfe']:g}" for r in teacher)
    return (f"consistency-tuned ({training['steps']} steps in {training['seconds']:.0f} s) at {counts} evaluations "
            f"per image: FD {ratios}, class match {matches} %; the teacher with {teacher[0]['sampler']} at "
            f"{teacher_counts}: FD {teacher_ratios} (n = {summary['n']} × {summary['draws']} draws)")  # fmt: skip
