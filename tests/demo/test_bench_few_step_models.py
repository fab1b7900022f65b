"""benchmarks/bench_few_step_models.py: the tuning commands and the from-scratch budget, the tables and targets from a
hand-made results dict (means and standard deviations over seeds worked out here), and a ``--quick`` run end to end
(a toy teacher trained with the demo's recipe, both objectives tuned, from scratch, one lever) that a second run
resumes without training anything."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pytest
import torch

from benchmarks import bench_few_step_models as bench
from scratch_diffusion.demo import few_step_report as report
from scratch_diffusion.demo import few_step_study as study


def _teacher(tmp_path: Path, space: str = "latent") -> study.Teacher:
    (tmp_path / "pipeline").mkdir(parents=True, exist_ok=True)
    if space == "latent":  # the VAE it was trained on, and the pipeline's copy
        (tmp_path / "pipeline" / "vae").mkdir(exist_ok=True)
        (tmp_path / "vae").mkdir(exist_ok=True)
        (tmp_path / "vae" / "config.json").write_text("{}")
    return study.Teacher(tmp_path, {"seconds": 192.0, "steps": 1600, "model": "compact"})


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(f"--{name}") + 1]


def test_tuning_commands_follow_the_recipes(tmp_path):
    teacher = _teacher(tmp_path)
    argv = study.tuning_argv(teacher, "consistency", 2, tmp_path / "out")
    recipe = study.RECIPES["consistency"]
    assert _option(argv, "init_from") == str(tmp_path / "pipeline") and _option(argv, "seed") == "2"
    assert _option(argv, "objective") == "consistency" and "--model_config_name_or_path" not in argv
    assert _option(argv, "max_train_steps") == str(recipe["max_train_steps"])
    assert _option(argv, "learning_rate") == str(recipe["learning_rate"])
    assert _option(argv, "checkpointing_steps") == str(recipe["max_train_steps"] + 1)  # no training-state checkpoints
    assert _option(argv, "vae_name_or_path") == str(tmp_path / "vae")
    assert _option(argv, "latent_cache_dir") == str(tmp_path / "latent-cache")
    assert "--class_conditional" in argv and "--use_ema" in argv
    lever = study.tuning_argv(teacher, "consistency", 0, tmp_path, changes={"consistency_renoise": False,
                                                                             "learning_rate": 3e-4})  # fmt: skip
    assert "--no-consistency_renoise" in lever and _option(lever, "learning_rate") == "0.0003"
    scratch = study.tuning_argv(teacher, "meanflow", 1, tmp_path, quick=True, changes={"max_train_steps": 37},
                                from_scratch=True)  # fmt: skip
    assert "--init_from" not in scratch and _option(scratch, "model_config_name_or_path") == "compact"
    assert _option(scratch, "max_train_steps") == "37" and _option(scratch, "checkpointing_steps") == "38"
    assert _option(scratch, "train_batch_size") == str(study.QUICK_CHANGES["train_batch_size"])
    pixel = study.tuning_argv(_teacher(tmp_path / "pixel", "pixel"), "meanflow", 0, tmp_path)
    assert "--vae_name_or_path" not in pixel and "--latent_cache_dir" not in pixel
    with pytest.raises(ValueError, match="allowed: consistency, meanflow"):
        study.recipe_of("flow")


def test_a_given_teacher_needs_its_training_record(tmp_path):
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "model_index.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"no training\.json"):
        study.prepare_teacher(tmp_path, tmp_path / "out", quick=False, num_threads=1)
    (tmp_path / "training.json").write_text(json.dumps({"seconds": 192.0, "model": "compact"}))
    teacher = study.prepare_teacher(tmp_path, tmp_path / "out", quick=False, num_threads=1)
    assert teacher.seconds == 192.0 and teacher.vae_dir is None and teacher.latent_argv() == []  # a pixel model


def test_from_scratch_budget_is_the_teacher_and_the_tuning_time():
    tuning = [{"seconds": 100.0, "seconds_per_step": 0.2}, {"seconds": 110.0, "seconds_per_step": 0.3}]
    assert study.scratch_steps(192.0, tuning) == round((192 + 105) / 0.25)  # 1188
    with pytest.raises(ValueError, match="no MeanFlow tuning record"):
        study.scratch_steps(192.0, [])


def _row(sampler: str, steps: int, nfe: int, fd: float, match: float) -> dict:
    return {"key": study.setting_key(sampler, steps), "sampler": sampler, "steps": steps, "nfe": nfe, "fd": fd,
            "fd_draws": [fd - 0.1, fd + 0.1], "fd_ratio": fd / 5.0, "fd_real_baseline": 5.0,
            "fd_real_baseline_std": 0.2, "kid": 10.0, "kid_real_baseline": 1.0, "class_match": match,
            "classifier_accuracy": 0.99}  # fmt: skip


def _model(group: str, objective: str | None, seed: int | None, rows: list[dict], seconds: float, **more) -> dict:
    training = {"steps": 400, "seconds": seconds, "seconds_per_step": seconds / 400, "num_threads": 1}
    return {"group": group, "objective": objective, "seed": seed, "training": training,
            "settings": {r["key"]: r for r in rows}, **more}  # fmt: skip


def _record() -> dict:
    """The teacher (best ≤ 10 evaluations: flow Heun 5 steps, FD 5.0), two seeds of each objective, one lever."""
    teacher = [_row("flow Euler", 1, 1, 60.0, 0.5), _row("DPM-Solver++", 2, 2, 9.0, 0.9),
               _row("flow Heun", 5, 9, 5.0, 0.97)]  # fmt: skip
    models = {"teacher": _model("teacher", None, None, teacher, 192.0)}
    for seed, shift in ((0, -0.2), (1, 0.2)):
        models[f"consistency/seed{seed}"] = _model("tuned", "consistency", seed, [
            _row("consistency", 1, 1, 6.5 + shift, 0.96 + shift / 10), _row("consistency", 2, 2, 5.4 + shift, 0.97),
            _row("consistency", 4, 4, 5.2, 0.97)], 90.0 + 10 * shift)  # fmt: skip
        models[f"meanflow/seed{seed}"] = _model("tuned", "meanflow", seed, [
            _row("flow map", 1, 1, 8.0 + shift, 0.90), _row("flow map", 2, 2, 6.0, 0.92)], 250.0)  # fmt: skip
    budget = {"teacher_seconds": 192.0, "tuning_seconds": [250.0, 250.0], "tuning_seconds_per_step": [0.5, 0.5],
              "steps": 884, "trained_steps": 884}  # fmt: skip
    models["scratch meanflow/seed0"] = _model("scratch", "meanflow", 0, [_row("flow map", 1, 1, 40.0, 0.3)], 440.0,
                                              budget=budget)  # fmt: skip
    lever = {"name": "4 stages", "objective": "consistency", "changes": {"consistency_stages": 4}}
    models["lever/consistency/4 stages"] = _model("lever", "consistency", 0, [_row("consistency", 1, 1, 7.0, 0.95)],
                                                  80.0, lever=lever)  # fmt: skip
    return {"protocol": {"n": 1000, "draws": 3}, "models": models}


def test_targets_are_met_or_missed_as_the_means_over_seeds_say():
    record = _record()
    assert report.teacher_best(record)["key"] == "flow Heun/steps=5"
    checks = report.targets(record)
    assert [c["objective"] for c in checks] == ["consistency"] * 4 + ["meanflow"] * 4
    fd2, fd1, match, time = checks[:4]  # FD at ≤ 2, at ≤ 1 evaluation, class match at 1, training time
    # ≤ 2 evaluations: the 2-step mean FD 5.4 (5.2, 5.6) is lower than the 1-step 6.5: 5.4 / 5.0 = 1.08 ≤ 1.10
    assert fd2["value"] == pytest.approx(5.4 / 5.0) and fd2["met"] and "consistency/steps=2" in fd2["measured"]
    assert fd1["value"] == pytest.approx(6.5 / 5.0) and fd1["met"]  # 1.30 ≤ 1.4
    assert match["value"] == pytest.approx(0.96) and match["met"]  # (0.94 + 0.98) / 2
    assert match["measured"] == f"96.0 ± {statistics.stdev([94.0, 98.0]):.1f} %"
    assert time["value"] == pytest.approx(90.0 / 192.0) and time["met"]
    fd2, fd1, match, time = checks[4:]
    assert fd2["value"] == pytest.approx(6.0 / 5.0) and not fd2["met"]  # 1.2 > 1.10
    assert fd1["value"] == pytest.approx(8.0 / 5.0) and not fd1["met"]
    assert not match["met"] and time["value"] == pytest.approx(250 / 192) and not time["met"]


def test_tables_from_a_hand_made_record():
    text = report.few_step_tables(_record())
    std = statistics.stdev([6.3, 6.7])
    assert (f"| consistency-tuned | 2 | consistency | 1 | 1 | 6.50 ± {std:.2f} | 1.30 ± {std / 5:.2f}× | 1.30× | "
            f"10 (1) | 96.0 ± {statistics.stdev([94.0, 98.0]):.1f} % |") in text  # fmt: skip
    # the teacher: one model, its FD's spread over draws (5.0 ∓ 0.1)
    assert f"| teacher (flow model) | 1 | flow Heun | 5 | 9 | 5.00 ± {statistics.stdev([4.9, 5.1]):.2f} | 1.00× | " \
           "1.00× |" in text  # fmt: skip
    assert "| MeanFlow from scratch (400 steps) | 1 | flow map | 1 | 1 | 40.00 ± 0.14 | 8.00× | 8.00× |" in text
    assert "| real digits (baseline, same n) | – | – | – | – | 5.00 ± 0.20 | 1.00× | – | 1 | 99.0 % " in text
    assert "| MeanFlow-tuned | 2 | 400 | 250 ± 0 | 0.625 ± 0.000 | 1.30× | 1 |" in text
    assert "| consistency-tuned | 2 | 400 | 90 ± 3 | 0.225 ± 0.007 | 0.47× | 1 |" in text  # 88, 92 s
    assert "(the teacher's 192 s + MeanFlow tuning's 250 s) / its 0.500 s per step = 884 steps, the MeanFlow" in text
    assert "| consistency-tuned | the recipe (seed 0) | 1.26× | 1.04× | 1.04× | 94.0 % | 88 |" in text
    assert "| consistency-tuned | 4 stages (consistency_stages 4) | 1.40× | – | – | 95.0 % | 80 |" in text
    assert "| MeanFlow-tuned: FD at ≤ 2 evaluations per image ≤ 1.1× the teacher's best FD (≤ 10 evaluations) | " \
           "flow map/steps=2: FD 6.00 ± 0.00 = 1.20× the teacher's 5.00 (flow Heun, 5 steps, 9 evaluations) | " \
           "**no** |" in text  # fmt: skip


def test_results_of_another_protocol_are_not_resumed(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "environment", lambda: {"date": "now"})
    args = argparse.Namespace(results=tmp_path / "r.json", n=1000, draws=3, teacher=None, quick=False)
    model = study.Model("consistency/seed0", "tuned", tmp_path, ["--a"], [("consistency", 1)], 3, "consistency", 0)
    training = {"argv": ["--a"], "seconds": 1.0}
    bench.store(args, model, training, {"key": "consistency/steps=1"})
    assert list(bench.stored(args, model, training)) == ["consistency/steps=1"]
    assert bench.stored(args, model, {**training, "seconds": 2.0}) == {}  # trained again: scored afresh
    args.n = 500
    assert bench.stored(args, model, training) == {}  # another protocol: nothing to resume


def test_quick_study_end_to_end_and_resumed(tmp_path, capsys, monkeypatch):
    """``--quick`` with one seed: the toy teacher trained through the demo's recipe, both objectives tuned from it,
    MeanFlow from scratch and one lever, every setting counted by the pipeline; a second run trains nothing."""
    threads = torch.get_num_threads()
    argv = ["--quick", "--seeds", "0", "--n", "10", "--output_dir", str(tmp_path / "models"), "--results",
            str(tmp_path / "r.json")]  # fmt: skip
    assert bench.main(argv) == 0
    record = json.loads((tmp_path / "r.json").read_text())
    models = record["models"]
    assert set(models) == {"teacher", "consistency/seed0", "meanflow/seed0", "scratch meanflow/seed0",
                           f"lever/{study.LEVERS[0]['objective']}/{study.LEVERS[0]['name']}"}  # fmt: skip
    teacher = models["teacher"]["settings"]
    heun = teacher["flow Heun/steps=5"]
    assert heun["evaluations"] == {"unet": 9} and heun["n"] == 10 and heun["draws"] == 1  # 2·5 − 1
    assert all(teacher[study.setting_key(s, k)]["nfe"] == k for s, k in study.TEACHER_SETTINGS if s != "flow Heun")
    for name, sampler in (("consistency/seed0", "consistency"), ("meanflow/seed0", "flow map")):
        rows = models[name]["settings"]
        assert {r["sampler"] for r in rows.values()} == {sampler}
        assert {r["steps"]: r["evaluations"] for r in rows.values()} == {k: {"unet": k} for k in study.TUNED_STEPS}
        assert models[name]["training"]["steps"] == study.QUICK_CHANGES["max_train_steps"]
        assert "--init_from" in models[name]["training"]["argv"]
    scratch = models["scratch meanflow/seed0"]
    tuning = models["meanflow/seed0"]["training"]
    budget_steps = study.scratch_steps(models["teacher"]["training"]["seconds"], [tuning])
    assert scratch["budget"]["steps"] == budget_steps and "--init_from" not in scratch["training"]["argv"]
    assert scratch["training"]["steps"] == min(budget_steps, study.QUICK_CHANGES["max_train_steps"])
    assert sorted(r["steps"] for r in scratch["settings"].values()) == list(study.SCRATCH_STEPS)
    assert len(record["targets"]) == 8 and record["teacher_best"]["nfe"] <= report.TARGETS["max_teacher_nfe"]
    printed = capsys.readouterr().out
    assert "| target | measured | met |" in printed and "| real digits (baseline, same n) |" in printed

    def no_training(argv):
        raise AssertionError(f"trained again: {argv}")

    monkeypatch.setattr("scratch_diffusion.training.run_training", no_training)
    assert bench.main(argv) == 0
    torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "teacher: 7 settings recorded, 0 to measure" in printed and " 0 settings recorded" not in printed
    assert json.loads((tmp_path / "r.json").read_text())["models"] == models
