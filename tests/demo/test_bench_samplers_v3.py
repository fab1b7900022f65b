"""benchmarks/bench_samplers_v3.py: the demo's sampler names build the schedulers they say, the exact-denoiser part
and the demo part end to end at toy sizes (a second demo run resumes without measuring again), and the tables."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_samplers_v3 as bench
from scratch_diffusion.demo import samplers_study as study
from scratch_diffusion.demo.sampling import make_scheduler
from scratch_schedulers import FEW_STEP_CONFIG, ScratchDPMSolverScheduler, ScratchFlowMatchScheduler

FLOW_CONFIG = ScratchFlowMatchScheduler().config


def make(sampler: str, config=FLOW_CONFIG):
    return make_scheduler(sampler, config, "flow", latent=True)


def test_sampler_names_build_what_they_say():
    sde = make("DPM-Solver++ SDE")
    assert isinstance(sde, ScratchDPMSolverScheduler) and sde.config.algorithm_type == "sde-dpmsolver++"
    assert sde.config.use_flow_sigmas and sde.config.solver_order == 2 and sde.config.corrector == "none"
    churn = make("flow Heun, S_churn=1.5")
    assert churn.config.solver == "heun" and churn.config.s_churn == 1.5
    assert make("flow Heun").config.s_churn == 0.0
    few = make("DPM-Solver++ few-step")
    assert {k: few.config[k] for k in FEW_STEP_CONFIG} == FEW_STEP_CONFIG
    tuned_config = ScratchDPMSolverScheduler(tuned_grids={5: [0.99, 0.8, 0.5, 0.2, 0.05]}).config
    assert make("DPM-Solver++ few-step", tuned_config).config.tuned_grids is None  # only the tuned name keeps it
    assert make("DPM-Solver++", tuned_config).config.tuned_grids is None
    kept = make(study.GRID_SAMPLERS[1], tuned_config)
    assert kept.config.tuned_grids == {"5": [0.99, 0.8, 0.5, 0.2, 0.05]} and kept.config.corrector == "unic_bh2"
    with pytest.raises(ValueError, match="needs a scheduler config with tuned_grids"):
        make(study.GRID_SAMPLERS[1])


def test_step_counts_match_the_evaluation_targets():
    assert study.steps_at_most("flow Heun", 10, make) == 5  # 2·5 − 1 = 9 ≤ 10 < 11
    assert study.steps_at_most("DPM-Solver++ SDE", 20, make) == 20
    settings = study.stochastic_settings(make)
    assert len(settings) == 2 * 2 * len(study.STOCHASTIC_EVALUATIONS)
    assert ("flow Heun", 25) in settings and (study.churn_sampler(study.DEMO_CHURN), 25) in settings
    assert study.stochastic_settings(make, ["flow Heun"]) == [("flow Heun", 5), ("flow Heun", 10), ("flow Heun", 25)]


def test_exact_part_end_to_end(tmp_path, capsys):
    results = tmp_path / "v3.json"
    bench.main(["--exact", "--quick", "--num_threads", "1", "--results", str(results)])
    record = json.loads(results.read_text())
    rows = record["exact"]["mixtures"]["example"]["rows"]
    names = {r["sampler"] for r in rows}
    assert {"VP: DPM-Solver++ 2M SDE", "flow: DPM-Solver++ 3M", "VP: DDPM (ancestral)", "flow: Heun"} <= names
    for row in rows:
        assert row["nfe"] <= row["target"] and len(row["sliced_w1_seeds"]) == 2
        assert 0 < row["sliced_w1"] < 10
    heun = {r["target"]: r["nfe"] for r in rows if r["sampler"] == "flow: Heun"}
    assert heun == {5: 5, 10: 9}
    capsys.readouterr()
    bench.main(["--table", "--results", str(results)])
    table = capsys.readouterr().out
    assert "| flow: Heun (5 / 9) |" in table and "exact samples (the floor)" in table


def test_demo_part_end_to_end_and_resumed(tmp_path, capsys):
    results, out = tmp_path / "v3.json", tmp_path / "runs"
    argv = ["--demo", "--quick", "--seeds", "0", "--num_threads", "1", "--output_dir", str(out),
            "--results", str(results), "--samplers", "DPM-Solver++ SDE", *study.GRID_SAMPLERS]
    bench.main(argv)
    seed = json.loads(results.read_text())["demo"]["seeds"]["0"]
    tuning = seed["tuning"]
    assert tuning["num_inference_steps"] == study.GRID_EVALUATIONS and tuning["error_after"] <= tuning["error_before"]
    keys = {k for k in seed if "/steps=" in k}
    # the tuned setting is measured when the search found a grid better than the default (a toy model may have none)
    tuned = {"DPM-Solver++ few-step, tuned grid/steps=5"} if tuning["grid"] is not None else set()
    assert keys == {"DPM-Solver++ SDE/steps=10", "DPM-Solver++ SDE/steps=20", "DPM-Solver++ SDE/steps=50",
                    "DPM-Solver++ few-step/steps=5", *tuned}
    saved = ScratchDPMSolverScheduler.from_pretrained(str(out / "seed0" / study.TUNED_SCHEDULER)).config
    assert (saved.tuned_grids or {}).get(str(study.GRID_EVALUATIONS)) == tuning["grid"]
    assert seed["DPM-Solver++ SDE/steps=20"]["nfe"] == 20 and seed["DPM-Solver++ few-step/steps=5"]["nfe"] == 5
    before = results.read_text()
    capsys.readouterr()
    bench.main(argv)  # everything recorded: nothing measured again
    assert results.read_text() == before and "evals" not in capsys.readouterr().out
    bench.main(["--table", "--results", str(results)])
    assert "| DPM-Solver++ few-step | 5 |" in capsys.readouterr().out
