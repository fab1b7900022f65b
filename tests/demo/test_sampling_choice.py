"""The demo's choice of its best setting: the lowest FD ratio among the settings of at most MAX_NFE model evaluations
per image, counted honestly (both halves of a guided step), and the guidance rules' call arguments."""

import pytest

from scratch_diffusion.demo.sampling import MAX_NFE, SampleSet, eligible, model_evaluations, pick_best


def _set(sampler: str, steps: int, nfe: int, ratio: float) -> SampleSet:
    return SampleSet(sampler, steps, 1.0, 100, "sweep", nfe=nfe, results={"fd_ratio": ratio})


def test_a_better_but_costlier_setting_is_not_chosen():
    heun = _set("flow Heun", 10, 2 * 10 - 1, 1.01)
    euler = _set("flow Euler", 10, 10, 1.20)
    dpm = _set("DPM-Solver++", 5, 5, 1.30)
    assert heun.nfe > MAX_NFE
    assert eligible([heun, euler, dpm]) == [euler, dpm]
    assert pick_best([heun, euler, dpm]) is euler


def test_a_guided_setting_counts_both_halves():
    """With --guidance_scale ≠ 1 the sweep is guided: flow Heun at 5 steps costs 2 × 9, DPM-Solver++ 2 × 5."""
    heun = SampleSet("flow Heun", 5, 1.5, 100, "sweep", evaluations={"unet": 18}, results={"fd_ratio": 1.1})
    dpm = SampleSet("DPM-Solver++", 5, 1.5, 100, "sweep", evaluations={"unet": 10}, results={"fd_ratio": 1.3})
    for sample in (heun, dpm):
        sample.nfe = model_evaluations(sample.evaluations)
    assert (heun.nfe, dpm.nfe) == (18, 10)
    assert eligible([heun, dpm]) == [dpm] and pick_best([heun, dpm]) is dpm


def test_evaluation_counts_add_the_guide_but_list_the_classifier_apart():
    assert model_evaluations({"unet": 9.0, "guide_unet": 9.0}) == 18
    assert type(model_evaluations({"unet": 9.0})) is int  # printed as 9, not 9.0
    assert model_evaluations({"unet": 9, "classifier": 8}) == 9


def test_rows_recorded_before_honest_counting_are_corrected():
    """An old metrics.json row counted a CFG step once; the report shows both halves (and new rows as counted)."""
    from scratch_diffusion.demo.report import evaluations_cell, row_evaluations

    old_guided = {"nfe": 9, "guidance_scale": 1.5}
    assert row_evaluations(old_guided) == {"unet": 18} and row_evaluations({"nfe": 9, "guidance_scale": 1}) == {
        "unet": 9
    }
    new = {"nfe": 18, "guidance_scale": 2.0, "evaluations": {"unet": 9, "guide_unet": 9}}
    assert evaluations_cell(new) == "18 (9 + 9 guide)" and evaluations_cell(old_guided) == "18"


def test_guidance_arguments_of_each_rule():
    from scratch_diffusion.demo.rules import guidance_arguments
    from scratch_diffusion.guidance import AutoGuidance, ClassifierFreeGuidance, ClassifierGuidance

    assert guidance_arguments("CFG", 1.5) == {"guidance_scale": 1.5}
    interval = guidance_arguments("interval CFG", 2.0, (0.28, 5.42))["guidance"]
    assert isinstance(interval, ClassifierFreeGuidance) and (interval.interval.low, interval.interval.high) == (
        0.28,
        5.42,
    )
    assert isinstance(guidance_arguments("autoguidance", 2.0)["guidance"], AutoGuidance)
    assert isinstance(guidance_arguments("classifier", 4.0)["guidance"], ClassifierGuidance)
    with pytest.raises(ValueError, match="needs an interval"):
        guidance_arguments("interval CFG", 2.0)
    with pytest.raises(ValueError, match="allowed: CFG, interval CFG, autoguidance, classifier"):
        guidance_arguments("PAG", 2.0)


def test_when_nothing_is_cheap_enough_every_setting_competes():
    costly = [_set("flow Heun", 25, 49, 1.3), _set("flow Heun", 50, 99, 1.1)]
    assert eligible(costly) == costly
    assert pick_best(costly).steps == 50


def test_a_busy_machine_is_noted_with_the_thread_advice_only_for_two_threads():
    from scratch_diffusion.demo.phases import busy_machine_note

    assert busy_machine_note(None, 2) is None and busy_machine_note(0.4, 2) is None
    assert "load average 1.7" in busy_machine_note(1.7, 2) and "--num_threads 1" in busy_machine_note(1.7, 2)
    assert "--num_threads 1" not in busy_machine_note(1.7, 1)


def test_latent_models_sample_with_ddim_without_clipping():
    """The demo's DDIM/DDPM samplers built from a flow config clip x̂0 to ±1 (diffusers' default) on pixels only."""
    from scratch_diffusion.demo.sampling import make_scheduler
    from scratch_schedulers import ScratchFlowMatchScheduler

    config = ScratchFlowMatchScheduler().config
    for sampler in ("DDIM (VP path)",):
        assert make_scheduler(sampler, config, "flow").config.clip_sample is True
        latent = make_scheduler(sampler, config, "flow", latent=True)
        assert latent.config.clip_sample is False and latent.config.prediction_type == "v_prediction"
