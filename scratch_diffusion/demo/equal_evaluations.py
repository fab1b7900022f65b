"""The guidance stage's settings: every rule at the same number of model evaluations per image.

The budget is what classifier-free guidance costs at the final stage's best setting: twice its unguided count
(both halves of every step). Each rule then gets the most sampler steps whose evaluations stay within the budget,
as the pipeline counts them (``pipe.evaluations`` of a one-image call, :func:`probe_evaluations`; nothing is
computed from a formula): full-range CFG and autoguidance (one UNet and one guide evaluation per step) run the
best's steps; interval CFG evaluates the unconditional half only inside its interval, so it affords more steps;
unguided sampling affords twice the steps. Every setting samples the same labels and noise seeds.
"""

from __future__ import annotations

import torch

from scratch_diffusion.demo.config import DemoConfig, DemoError
from scratch_diffusion.demo.rules import RULES_STAGE, labels_for_call, rule_text
from scratch_diffusion.demo.sampling import SampleSet, model_evaluations, use_sampler


@torch.no_grad()
def probe_evaluations(pipe, sample: SampleSet, steps: int) -> dict[str, float]:
    """``pipe.evaluations`` of a one-image call of ``sample``'s rule at ``steps`` (its sampler already set)."""
    labels = [0] if labels_for_call(pipe, sample.rule) else None
    generator = torch.Generator(device=pipe.device).manual_seed(0)  # the global random stream is left alone
    pipe(batch_size=1, num_inference_steps=steps, generator=generator, class_labels=labels, output_type="latent",
         **sample.call_arguments())  # fmt: skip
    return pipe.evaluations


def steps_at_budget(pipe, sample: SampleSet, budget: float) -> int:
    """The most steps of ``sample``'s setting whose model evaluations per image (:func:`model_evaluations`) are at
    most ``budget``; DemoError if even one step costs more."""
    affordable = None
    for steps in range(1, int(budget) + 1):  # every step evaluates at least once
        if model_evaluations(probe_evaluations(pipe, sample, steps)) > budget:
            break
        affordable = steps
    if affordable is None:
        raise DemoError(f"{sample.name}: one step already costs more than {budget:g} model evaluations per image.")
    return affordable


def guidance_budget(pipe, sampler: str, steps: int) -> int | float:
    """Classifier-free guidance's evaluations per image at ``sampler``/``steps``: twice the unguided count."""
    use_sampler(pipe, sampler)
    unguided = SampleSet(sampler, steps, 1.0, 1, RULES_STAGE)
    return 2 * model_evaluations(probe_evaluations(pipe, unguided, steps))


def equal_evaluation_sets(pipe, config: DemoConfig, sampler: str, budget: float) -> list[SampleSet]:
    """Unguided, full-range CFG, interval CFG and autoguidance settings of ``sampler`` at ``budget`` evaluations.

    Steps are found once per rule (the count does not depend on w ≠ 1); the sets are not sampled yet.
    """
    use_sampler(pipe, sampler)
    interval = tuple(config.guidance_interval)
    settings = [("CFG", 1.0, None)]
    settings += [("CFG", w, None) for w in config.cfg_scales if w != 1]
    settings += [("interval CFG", w, interval) for w in config.cfg_scales]
    settings += [("autoguidance", w, None) for w in config.autoguidance_scales]
    steps_of: dict[tuple, int] = {}
    sets = []
    for rule, w, where in settings:
        sample = SampleSet(sampler, 1, w, config.num_rule_samples, RULES_STAGE, rule=rule, interval=where)
        key = (rule, where, w == 1)
        if key not in steps_of:
            steps_of[key] = steps_at_budget(pipe, sample, budget)
        sample.steps = steps_of[key]
        sets.append(sample)
    return sets


def best_of_rule(sets: list[SampleSet], rule: str, guided: bool = True) -> SampleSet | None:
    """The lowest FD ratio among ``sets`` of ``rule`` (``guided``: w ≠ 1; else the w = 1 set)."""
    of_rule = [s for s in sets if s.rule == rule and (s.guidance_scale != 1) == guided]
    return min(of_rule, key=lambda s: s.results["fd_ratio"], default=None)


def rules_summary(sets: list[SampleSet], budget: float, guide: dict | None) -> dict:
    """``metrics.json``'s ``guidance_rules``: the budget, the interval, the guide and each rule's best setting."""
    best = {"unguided": best_of_rule(sets, "CFG", guided=False)}
    for rule in ("CFG", "interval CFG", "autoguidance"):
        best[rule] = best_of_rule(sets, rule)
    intervals = {tuple(s.interval) for s in sets if s.interval is not None}
    return {
        "budget": budget,
        "sampler": sets[0].sampler if sets else None,
        "interval": list(next(iter(intervals))) if len(intervals) == 1 else None,
        "guide": guide,
        "best": {
            rule: None
            if s is None
            else {
                "setting": rule_text(s.rule, s.guidance_scale, s.interval),
                "steps": s.steps,
                "nfe": s.nfe,
                "fd_ratio": s.results["fd_ratio"],
                "class_match": s.results["class_match"],
            }
            for rule, s in best.items()
        },
    }
