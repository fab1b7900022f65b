"""The demo run, one function per phase: train (or reuse), load, sample and score, write, summarise."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from scratch_diffusion import metrics
from scratch_diffusion.demo.config import SAMPLERS, DemoConfig, DemoError
from scratch_diffusion.demo.editing_stage import editing_stage, editing_text
from scratch_diffusion.demo.equal_evaluations import (
    RULES_STAGE,
    equal_evaluation_sets,
    guidance_budget,
    rules_summary,
)
from scratch_diffusion.demo.few_step_stage import few_step_stage, few_step_text
from scratch_diffusion.demo.figure import save_figure
from scratch_diffusion.demo.guide import GUIDE_RECORD, guide_cost, guide_name, train_guide
from scratch_diffusion.demo.likelihood import likelihood_text, measure_likelihood
from scratch_diffusion.demo.outputs import prepare_output_dir
from scratch_diffusion.demo.quality import bar_text, guided_text, quality_verdict
from scratch_diffusion.demo.report import metrics_markdown, rules_text
from scratch_diffusion.demo.sampling import MAX_NFE, SampleSet, eligible, pick_best, run_stage
from scratch_diffusion.demo.training import train_model


@contextlib.contextmanager
def timed(phase_seconds: dict[str, float], phase: str) -> Iterator[None]:
    """Add the wall time of the block to ``phase_seconds[phase]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        phase_seconds[phase] = phase_seconds.get(phase, 0.0) + time.perf_counter() - start


@dataclass
class Stages:
    """The sampling stages' sample sets; ``best`` comes from the final stage. ``rules``: the guidance stage's sets
    (every rule at equal model evaluations, :mod:`~scratch_diffusion.demo.equal_evaluations`), ``guidance_rules``
    its summary (budget, guide, each rule's best)."""

    sweep: list[SampleSet]
    guidance: list[SampleSet]
    final: list[SampleSet]
    rules: list[SampleSet] = field(default_factory=list)
    guidance_rules: dict | None = None

    @property
    def everything(self) -> list[SampleSet]:
        return self.sweep + self.guidance + self.final + self.rules

    @property
    def best(self) -> SampleSet:
        return pick_best(self.final)

    @property
    def guided(self) -> list[SampleSet]:
        """The classifier-free guided sets the quality bar's "guided ≥ 99 %" applies to (the guidance stage's rules
        are compared in their own table)."""
        return [s for s in self.sweep + self.guidance + self.final if s.guidance_scale > 1]


def train_or_reuse(config: DemoConfig) -> dict | None:
    """Steps 1-2: train into ``config.pipeline_dir`` and write ``training.json``, or keep it with ``--reuse``.

    Returns the training record (with ``--reuse``: the earlier one, or None without ``training.json``).
    """
    record = prepare_output_dir(config)
    if config.reuse:
        print("[1/6] Training skipped (--reuse)")
        print(f"[2/6] Pipeline, model card and tensorboard logs: {config.pipeline_dir}")
        return record
    where = "on a tiny VAE's latents (VAE trained first)" if config.space == "latent" else "on the pixels"
    print(f"[1/6] Training: {config.objective} objective, {config.model} UNet {where}, class-conditional, "
          "built-in digits")  # fmt: skip
    record = train_model(config)
    (config.output_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"[2/6] Saved pipeline, model card and tensorboard logs to {config.pipeline_dir} "
          f"({record['steps']} steps in {record['seconds'] / 60:.1f} min)")  # fmt: skip
    return record


def load_pipeline(pipeline_dir: Path, device: str):
    """The saved pipeline on ``device``, its own progress bar off (the demo's bars count image × steps)."""
    from scratch_diffusion.pipelines import ScratchDiffusionPipeline

    pipe = ScratchDiffusionPipeline.from_pretrained(str(pipeline_dir)).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline_and_classifier(config: DemoConfig):
    """The trained class-conditional pipeline on ``config.device`` and the metric's digits classifier."""
    pipe = load_pipeline(config.pipeline_dir, config.device)
    if pipe.num_classes is None:
        raise DemoError(f"{config.pipeline_dir} holds an unconditional UNet; the demo needs a class-conditional one.")
    classifier = metrics.load_digits_classifier()
    how = f"trained now in {classifier.training_seconds:.1f} s" if classifier.trained_now else "loaded from cache"
    print(f"      metric: digits classifier {how} ({classifier.path}); held-out accuracy "
          f"{100 * classifier.holdout_accuracy:.1f} %")  # fmt: skip
    return pipe, classifier


def sample_and_score(pipe, classifier, config: DemoConfig, phase_seconds: dict[str, float]) -> Stages:
    """Step 3: sweep every sampler × steps; guidance scales at the sweep's best; the best few again at full size."""
    samplers = SAMPLERS[pipe.trained_parametrization.path]
    w = config.guidance_scale
    sweep = [SampleSet(s, n, w, config.num_sweep_samples, "sweep") for s in samplers for n in config.step_counts]
    print(f"[3/6] Sampling (sweep): {', '.join(samplers)} × {config.step_counts} steps, guidance w={w:g}, "
          f"{config.num_sweep_samples} images each")  # fmt: skip
    with timed(phase_seconds, "sweep"):
        run_stage(pipe, sweep, config, classifier, "sweep")
    top = pick_best(sweep)
    scales = [g for g in dict.fromkeys(config.guidance_sweep) if g != w]
    guidance = [SampleSet(top.sampler, top.steps, g, config.num_sweep_samples, "guidance") for g in scales]
    if guidance:
        print(f"      guidance: {top.sampler}, {top.steps} steps (best of the sweep) at w = "
              f"{', '.join(f'{g:g}' for g in scales)}, {config.num_sweep_samples} images each")  # fmt: skip
        with timed(phase_seconds, "guidance"):
            run_stage(pipe, guidance, config, classifier, "guidance")
    ranked = sorted(eligible(sweep), key=lambda s: s.results["fd_ratio"])[: config.num_final]
    final = [SampleSet(s.sampler, s.steps, w, config.num_eval_samples, "final", config.eval_draws) for s in ranked]
    draws = f" × {config.eval_draws} independent draws" if config.eval_draws > 1 else ""
    print(f"      final: the best {len(final)} of the sweep at ≤ {MAX_NFE} model evaluations per image (both "
          f"halves of a guided step counted), {config.num_eval_samples} images{draws} each")  # fmt: skip
    with timed(phase_seconds, "final"):
        run_stage(pipe, final, config, classifier, "final")
    return Stages(sweep, guidance, final)


def guide_or_reuse(config: DemoConfig) -> dict:
    """The autoguidance guide: trained into ``config.guide_dir`` and attached to the pipeline as ``guide_unet``, or
    with ``--reuse`` the earlier one (if the pipeline has one); its record is written to ``guide.json``."""
    record_path = config.output_dir / GUIDE_RECORD
    if config.reuse and (config.pipeline_dir / "guide_unet").is_dir() and record_path.is_file():
        record = json.loads(record_path.read_text())
        print(f"      guide: reusing the pipeline's guide_unet ({record['model']}, {record['steps']} steps; --reuse)")
        return record
    print(f"      guide: training a {guide_name(config)} UNet for {config.guide_steps} steps "
          f"(--guide_for {config.pipeline_dir})")  # fmt: skip
    record = train_guide(config)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def guidance_rules_stage(pipe, classifier, config: DemoConfig, stages: Stages, phase_seconds: dict) -> object:
    """The guidance stage: train the guide, then the final stage's best sampler with unguided sampling, full-range
    CFG, interval CFG and autoguidance at equal model evaluations per image; returns the pipeline (with its guide).
    """
    if config.num_rule_samples == 0:
        print("      guidance stage skipped (--num_rule_samples 0)")
        return pipe
    with timed(phase_seconds, "guide"):
        guide = guide_or_reuse(config)
        pipe = load_pipeline(config.pipeline_dir, config.device)
        guide["cost"] = guide_cost(pipe, min(config.sample_batch_size, 250))
    cost = guide["cost"]
    print(f"      guide: {cost['guide_parameters'] / 1e6:.2f} M parameters (UNet {cost['unet_parameters'] / 1e6:.2f} "
          f"M); one guide evaluation takes {cost['guide_to_unet_time']:.2f}× a UNet evaluation "
          f"({cost['guide_ms']:.0f} vs {cost['unet_ms']:.0f} ms for {cost['batch_size']} images)")  # fmt: skip
    best = stages.best
    with timed(phase_seconds, RULES_STAGE):
        budget = guidance_budget(pipe, best.sampler, best.steps)
        rules = equal_evaluation_sets(pipe, config, best.sampler, budget)
        print(f"[3/6] Sampling ({RULES_STAGE}): {best.sampler} at {budget:g} model evaluations per image "
              f"(CFG at the best's {best.steps} steps), {config.num_rule_samples} images each: unguided, CFG, "
              f"interval CFG (σ = b/a ∈ ({config.guidance_interval[0]:g}, {config.guidance_interval[1]:g}]) and "
              "autoguidance")  # fmt: skip
        run_stage(pipe, rules, config, classifier, RULES_STAGE)
    stages.rules = rules
    stages.guidance_rules = rules_summary(rules, budget, guide)
    return pipe


def control_and_editing(classifier, config: DemoConfig, phase_seconds: dict) -> dict:
    """The control and editing stage (``editing_stage``): inpainting, image-to-image, a ControlNet; its summary."""
    return editing_stage(lambda: load_pipeline(config.pipeline_dir, config.device), classifier, config,
                         phase_seconds, timed)  # fmt: skip


def few_step(classifier, config: DemoConfig, phase_seconds: dict) -> dict:
    """The few-step stage (``few_step_stage``): the demo's model consistency-tuned and scored; its summary."""
    return few_step_stage(lambda path: load_pipeline(path, config.device), classifier, config, phase_seconds, timed)


def likelihood_of(pipe, config: DemoConfig) -> dict | None:
    """Step 4: bits/dim of the model on held-out digits, by the ODE and by the bound (None with 0 images)."""
    if config.likelihood_images == 0:
        print("[4/6] Likelihood skipped (--likelihood_images 0)")
        return None
    if getattr(pipe, "vae", None) is not None:
        print("[4/6] Likelihood skipped: a latent model's ODE likelihood is of the VAE's latents, not of the digits' "
              "pixels (--space pixel measures bits/dim)")  # fmt: skip
        return None
    print(f"[4/6] Likelihood: bits/dim of {config.likelihood_images} held-out digits, unconditional (null class)")
    record = measure_likelihood(pipe, str(config.pipeline_dir), config.likelihood_images, config.seed, config.quick)
    print(f"      {likelihood_text(record)}")
    return record


def build_report(
    config: DemoConfig,
    record: dict | None,
    pipe,
    classifier,
    stages: Stages,
    likelihood: dict | None,
    edits: dict | None = None,
    few: dict | None = None,
) -> dict:
    """The content of ``metrics.json`` (without the timings, which :func:`run` adds; ``edits`` and ``few`` without
    their example images)."""
    everything = stages.everything
    return {
        "output_dir": str(config.output_dir),
        "pipeline": str(config.pipeline_dir),
        "trained_parametrization": {
            "noise_path": pipe.trained_parametrization.path,
            "prediction_type": pipe.trained_parametrization.prediction_type,
        },
        "training": record,
        "reused_pipeline": config.reuse,
        "classifier": {
            "path": str(classifier.path),
            "trained_now": classifier.trained_now,
            "holdout_accuracy": classifier.holdout_accuracy,
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "results": [s.row() for s in everything],
        "best": stages.best.row(),
        "sampling_seconds": sum(s.seconds for s in everything),
        "quality_bar": quality_verdict(stages.best, stages.guided),
        "guidance_rules": stages.guidance_rules,
        "control_and_editing": None if edits is None else {k: v for k, v in edits.items() if k != "examples"},
        "few_step": None if few is None else {k: v for k, v in few.items() if k != "examples"},
        "likelihood": likelihood,
    }


def write_outputs(
    config: DemoConfig, report: dict, stages: Stages, num_classes: int, edits: dict | None, few: dict | None = None
) -> None:
    """Step 5: ``metrics.json``, ``metrics.md`` and ``demo.png`` in ``config.output_dir``."""
    print("[5/6] Writing metrics.json, metrics.md and demo.png")
    (config.output_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (config.output_dir / "metrics.md").write_text(metrics_markdown(report))
    save_figure(stages.sweep, stages.guidance, stages.final, config.output_dir / "demo.png", num_classes, stages.rules,
                edits, few)  # fmt: skip


def load_command(pipeline_dir: Path, steps: int, guidance_scale: float) -> str:
    """A one-line shell command that loads the pipeline and saves one sample per class."""
    code = (
        "from scratch_diffusion import ScratchDiffusionPipeline as P; "
        f"p = P.from_pretrained({json.dumps(str(pipeline_dir))}); "
        f'[im.save(f"digit_{{i}}.png") for i, im in enumerate(p(batch_size=10, class_labels=list(range(10)), '
        f"guidance_scale={guidance_scale:g}, num_inference_steps={steps}).images)]"
    )
    return f"python -c {shlex.quote(code)}"


def draws_text(r: dict) -> str:
    """``", mean of 3 draws: 1.31, 1.18, 1.40"`` for a multi-draw result ("" for one draw)."""
    if r.get("draws", 1) == 1:
        return ""
    return f", mean of {r['draws']} draws: " + ", ".join(f"{x:.2f}" for x in r["fd_ratio_draws"])


def print_summary(config: DemoConfig, report: dict, best: SampleSet) -> None:
    """Step 6: where everything is, the best setting beside its baseline, the verdict, how to load the pipeline."""
    r, verdict = best.results, report["quality_bar"]
    print("[6/6] Summary")
    print(f"  outputs:   {config.output_dir}/  (pipeline/ with README.md model card and logs/, "
          f"metrics.json, metrics.md, demo.png)")  # fmt: skip
    print(f"  best:      {best.name} ({best.nfe} model evaluations per image): FD {r['fd']:.2f} vs real-data "
          f"baseline {r['fd_real_baseline']:.2f} ± {r['fd_real_baseline_std']:.2f} (×{r['fd_ratio']:.2f}, n={best.n}"
          f"{draws_text(r)}); noise {r['fd_noise_ceiling']:.0f}")  # fmt: skip
    print(f"             KID {r['kid']:.1f} ± {r['kid_std']:.1f} vs real {r['kid_real_baseline']:.1f} ± "
          f"{r['kid_real_baseline_std']:.1f}; noise {r['kid_noise_ceiling']:.0f} "
          "(digits-CNN features, unscaled)")  # fmt: skip
    print(f"             classified as the requested class: {100 * r['class_match']:.1f} %{guided_text(verdict)} "
          f"(classifier accuracy on real digits {100 * r['classifier_accuracy']:.1f} %)")  # fmt: skip
    print(f"  quality bar ({bar_text(verdict)}): {'met' if verdict['met'] else 'NOT met'}")
    if report.get("guidance_rules"):
        print(f"  guidance:  {rules_text(report['guidance_rules'])}")
    if report.get("control_and_editing"):
        print(f"  editing:   {editing_text(report['control_and_editing'])}")
    if report.get("few_step"):
        print(f"  few-step:  {few_step_text(report['few_step'])}")
    if report["likelihood"] is not None:
        print(f"  bits/dim:  {likelihood_text(report['likelihood'])}")
    print(f"  tensorboard --logdir {config.pipeline_dir / 'logs'}")
    print(f"  load it:   {load_command(config.pipeline_dir, best.steps, best.guidance_scale)}")
    phases = ", ".join(f"{phase} {seconds / 60:.1f}" for phase, seconds in report["phase_seconds"].items())
    print(f"  total time {report['seconds_total'] / 60:.1f} min ({phases} min; seed {config.seed}, "
          f"{torch.get_num_threads()} torch threads)")  # fmt: skip


def busy_machine_note(load: float | None, threads: int) -> str | None:
    """A note when other work is running (1-minute load average ≥ 1): times will be slower than the documented ones.

    With 2 threads beside busy processes, libgomp's spin-waiting makes an update many times slower
    (``benchmarks/bench_processes.py``); 1 thread, or ``OMP_WAIT_POLICY=PASSIVE`` in the environment, avoids that
    there — and costs ~2× on an idle machine, so neither is the default.
    """
    if load is None or load < 1.0:
        return None
    advice = "; with 2 threads beside busy processes training slows down many times: --num_threads 1" * (threads > 1)
    return f"note: load average {load:.1f} before the demo: another job is running, the times will be slower{advice}"


def run(config: DemoConfig) -> dict:
    """Steps 1-6; returns ``metrics.json``'s content.

    ``phase_seconds``: train, load, sweep, guidance, final, guide, guidance rules, editing, control training,
    control, few-step training, few-step, likelihood.
    """
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if note := busy_machine_note(load, torch.get_num_threads()):
        print(note)
    started = time.perf_counter()
    phase_seconds: dict[str, float] = {}
    with timed(phase_seconds, "train"):
        record = train_or_reuse(config)
    with timed(phase_seconds, "load"):
        pipe, classifier = load_pipeline_and_classifier(config)
    stages = sample_and_score(pipe, classifier, config, phase_seconds)
    pipe = guidance_rules_stage(pipe, classifier, config, stages, phase_seconds)
    edits = control_and_editing(classifier, config, phase_seconds)
    few = few_step(classifier, config, phase_seconds)
    with timed(phase_seconds, "likelihood"):
        likelihood = likelihood_of(pipe, config)
    report = build_report(config, record, pipe, classifier, stages, likelihood, edits, few)
    report["phase_seconds"] = phase_seconds
    report["load_average_at_start"] = load
    report["seconds_total"] = time.perf_counter() - started
    write_outputs(config, report, stages, pipe.num_classes, edits, few)
    print_summary(config, report, stages.best)
    return report
