"""benchmarks/bench_control.py's bookkeeping on hand-made records: gap closed, RePaint against replacement at equal
evaluations, the image-to-image and ControlNet targets met or missed as the numbers say, the tables printed from the
JSON, records merged over seeds, and a run of another protocol kept apart (resuming only its own)."""

from __future__ import annotations

import argparse

import pytest

from benchmarks import bench_control as bench
from scratch_diffusion.demo import control_report as report
from scratch_diffusion.demo.control_study import Setting


def _row(setting: Setting, match: float, fd_ratio: float, evaluations: dict | None = None, **numbers) -> dict:
    evaluations = evaluations or {}
    return {**setting.row(), "evaluations": evaluations, "nfe": sum(evaluations.values()), "class_match": match,
            "fd_ratio": fd_ratio, "fd_ratio_draws": [fd_ratio - 0.01, fd_ratio + 0.01],
            "class_match_draws": [match, match], "seconds": 10.0, **numbers}  # fmt: skip


def _settings(shift: float = 0.0) -> dict:
    """One seed's records; ``shift`` moves every class match (seeds differ by it)."""
    rows = [_row(Setting("reference", "real digit"), 0.98 + shift, 0.2)]
    for mask, fill, plain, repaint in (("left half", 0.60, 0.80, 0.85), ("centre 6×6", 0.70, 0.94, 0.95)):
        rows += [
            _row(Setting("inpainting", "mean fill", mask=mask), fill + shift, 9.0, known_region_max_abs_error=0.0),
            _row(Setting("inpainting", "replacement", 20, mask), plain + shift, 1.2, {"unet": 20},
                 known_region_max_abs_error=0.0),
            _row(Setting("inpainting", "RePaint", 12, mask, jump_length=4, jump_n_sample=2), repaint + shift, 1.25,
                 {"unet": 20}, known_region_max_abs_error=0.0),
        ]  # fmt: skip
    noise = "noise σ=0.5"
    rows.append(_row(Setting("img2img", "corrupted input", corruption=noise), 0.8, 4.0, l2_to_clean=0.2))
    for strength, match, fd in ((0.3, 0.97, 1.6), (0.5, 0.96, 1.25), (0.8, 0.7, 1.1)):
        rows.append(_row(Setting("img2img", "SDEdit", 20, corruption=noise, strength=strength), match, fd,
                         {"unet": round(20 * strength)}, l2_to_input=strength / 5, l2_to_clean=0.1))  # fmt: skip
    rows += [
        _row(Setting("control", "unconditional", 20), 0.1, 3.0, {"unet": 20}, consistency=0.05),
        _row(Setting("control", "ControlNet", 20, scale=1.0), 0.9, 1.2, {"unet": 20, "controlnet": 20},
             consistency=0.005),
        _row(Setting("control", "ControlNet", 20, scale=1.0, inputs="training"), 0.93, 1.28,
             {"unet": 20, "controlnet": 20}, consistency=0.006),
        _row(Setting("control", "loss guidance", 20, scale=16.0), 0.7, 1.8, {"unet": 20, "unet_backward": 19},
             consistency=0.007),
        _row(Setting("control", "loss guidance", 60, scale=16.0), 0.8, 1.9, {"unet": 60, "unet_backward": 59},
             consistency=0.004),
    ]  # fmt: skip
    return {r["key"]: r for r in rows}


def _record(*shifts: float) -> dict:
    models = {"controlnet": {"parameters": 470464, "steps": 1600, "seconds": 600.0, "num_threads": 1, "command": "x"}}
    return {"protocol": {"sampler": "flow Euler", "steps": 20, "n": 1000, "draws": 3},
            "seeds": {str(k): {"models": models, "settings": _settings(s)} for k, s in enumerate(shifts)}}  # fmt: skip


def test_gap_closed_and_repaint_at_equal_evaluations():
    summary = report.inpainting_summary(report.merged(_record(0.0)), steps=20)
    left = summary["left half"]
    assert left["fill"] == 0.60 and left["real"] == 0.98
    # (0.85 − 0.60) / (0.98 − 0.60) for RePaint, the best completion
    assert left["gaps"][left["best"]["key"]] == pytest.approx(0.25 / 0.38) and left["best"]["method"] == "RePaint"
    (gain, repaint), = left["gains"]  # fmt: skip
    assert gain == pytest.approx(0.05) and repaint["nfe"] == 20


def _check(checks: list, *words: str) -> tuple[str, bool]:
    """(measured, met) of the one target whose name holds every word."""
    (found,) = [(measured, met) for name, measured, met in checks if all(w in name for w in words)]
    return found


def test_targets_are_met_or_missed_as_the_numbers_say():
    checks = report.targets(report.merged(_record(0.0)), bench.TARGETS, 20)
    assert _check(checks, "known region")[1]  # every recorded error is 0
    assert _check(checks, "left half", "gap closed")[1]  # (0.85 − 0.60) / (0.98 − 0.60) = 66 % ≥ 60 %, FD 1.25×
    centre = _check(checks, "centre 6×6", "gap closed")
    assert centre[1] and "89.3 %" in centre[0]  # (0.95 − 0.70) / (0.98 − 0.70) ≥ 80 %
    assert _check(checks, "left half", "RePaint")[1]  # +5 points
    assert not _check(checks, "centre 6×6", "RePaint")[1]  # +1 point
    img2img = _check(checks, "image-to-image")
    assert img2img == ("s=0.5: FD 1.25×, class kept 96.0 %", True)  # s=0.3 keeps 97 % at 1.6×, s=0.8 70 %
    gain = _check(checks, "ControlNet: consistency")
    assert gain[1] and gain[0].startswith("10.0×")
    fd = _check(checks, "ControlNet: FD")
    assert fd[1] and fd[0] == "FD 1.20×, class match 90.0 %; with training-digit controls FD 1.28×, class match 93.0 %"
    cost = _check(checks, "1/3")
    # the most consistent loss guidance (s=16, 60 steps) costs 119 evaluations < 3 × ControlNet's 40
    assert not cost[1] and "loss guidance s=16, 60 steps" in cost[0] and "at 119 evals" in cost[0]

    records = _record(0.0)
    settings = records["seeds"]["0"]["settings"]
    settings["inpainting/replacement/left half/steps=20"]["known_region_max_abs_error"] = 1e-7
    settings["control/ControlNet/steps=20/scale=1/inputs=training"]["fd_ratio"] = 1.31  # judged on the fair FD
    checks = report.targets(report.merged(records), bench.TARGETS, 20)
    assert not _check(checks, "known region")[1] and not _check(checks, "ControlNet: FD")[1]


def test_a_cheaper_control_network_setting_meets_the_cost_target():
    """The cost check takes the cheapest ControlNet setting at least as consistent as the best loss guidance."""
    record = _record(0.0)
    settings = record["seeds"]["0"]["settings"]
    control = settings["control/ControlNet/steps=20/scale=1"]
    fewer = {**control, "key": "control/ControlNet/steps=5/scale=1", "steps": 5, "nfe": 10, "consistency": 0.003}
    settings[fewer["key"]] = fewer
    summary = report.control_summary(report.merged(record), bench.TARGETS["cost_fraction"])
    best = summary["most_consistent_guided"]
    assert summary["control"]["steps"] == 20 and summary["cheapest_control"]["steps"] == 5
    assert summary["cost_met"] == (bench.TARGETS["cost_fraction"] * best["nfe"] >= 10) and summary["cost_met"]
    fewer["consistency"] = 1.0  # no longer as consistent, and the 20-step setting (0.005) is not either (best: 0.004)
    summary = report.control_summary(report.merged(record), bench.TARGETS["cost_fraction"])
    assert best["consistency"] == 0.004 and summary["cheapest_control"] is None and not summary["cost_met"]


def test_merged_over_seeds_and_the_table():
    rows = report.merged(_record(-0.01, 0.01))
    real = next(r for r in rows.values() if r["method"] == "real digit")
    assert real["class_match"] == pytest.approx(0.98) and real["seeds"] == 2 and len(real["class_match_draws"]) == 4
    text = bench.table(_record(0.0))
    assert "| left half | RePaint j=4, r=2, 12 steps | 20 | 85.0 ± 0.0 % | 65.8 % | 1.25 ± 0.01× | 0 | – |" in text
    assert "| noise σ=0.5 | SDEdit s=0.5 | 10 | 1.25 ± 0.01× | 0.100 | 0.100 | 96.0 ± 0.0 % |" in text
    assert "| ControlNet scale 1, 20 steps | 20 + 20 ControlNet | 5.000 | 10.0× | 90.0 ± 0.0 % |" in text
    assert "| loss guidance s=16, 60 steps | 60 + 59 backward | 4.000 | 12.5× |" in text
    assert "Control network: 0.47 M parameters, 1600 training steps in 10.0 min (1 torch thread(s))" in text


def test_a_run_of_another_protocol_is_not_mixed_in(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "environment", lambda: {"date": "now"})
    args = argparse.Namespace(results=tmp_path / "c.json", n=1000, draws=3, sampler="flow Euler", steps=20,
                              strengths=[0.5], repaint=[(1, 2, None)], loss_scales=[16.0], quick=False)  # fmt: skip
    bench.store(args, 0, {}, {"key": "a"})
    bench.store(args, 0, {}, {"key": "b"})
    assert sorted(bench.stored(args, 0)) == ["a", "b"] and bench.stored(args, 1) == {}
    args.n = 500
    assert bench.stored(args, 0) == {}  # another protocol: nothing to resume
    bench.store(args, 0, {}, {"key": "c"})
    assert sorted(bench.stored(args, 0)) == ["c"]


def test_setting_keys_name_every_parameter():
    assert Setting("inpainting", "RePaint", 12, "left half", jump_length=4, jump_n_sample=2).key == (
        "inpainting/RePaint/left half/steps=12/j=4/r=2"
    )
    assert Setting("img2img", "SDEdit", 20, corruption="noise σ=0.5", strength=0.3).key == (
        "img2img/SDEdit/noise σ=0.5/steps=20/s=0.3"
    )
    assert bench.repaint_setting("5:5:100") == (5, 5, 100) and bench.repaint_setting("4:2") == (4, 2, None)


def test_quick_study_end_to_end_and_resumed(tmp_path, capsys):
    """``--quick`` with 10 inputs and one draw: toy models trained through train.py and train_controlnet.py, every
    setting measured through the pipeline's own methods, counts as the pipeline counted them, then a second run that
    resumes with nothing left to measure."""
    import json

    import torch

    threads = torch.get_num_threads()
    argv = ["--quick", "--n", "10", "--draws", "1", "--output_dir", str(tmp_path / "models"), "--results",
            str(tmp_path / "control.json"), "--num_threads", "1"]  # fmt: skip
    assert bench.main(argv) == 0
    record = json.loads((tmp_path / "control.json").read_text())
    rows = record["seeds"]["0"]["settings"]
    steps = bench.QUICK["steps"]
    assert record["protocol"]["n"] == 10 and record["protocol"]["steps"] == steps
    assert record["seeds"]["0"]["models"]["controlnet"]["parameters"] > 0
    by_method: dict[str, list[dict]] = {}
    for r in rows.values():
        by_method.setdefault(r["method"], []).append(r)
        assert r["n"] == 10 and r["draws"] == 1 and r["commit"] is not None
    assert all(r["evaluations"] == {"unet": r["steps"]} for r in by_method["replacement"])  # flow Euler: one per step
    assert all(r["known_region_max_abs_error"] == 0 for r in by_method["replacement"] + by_method["RePaint"])
    assert {r["evaluations"]["unet"] for r in by_method["RePaint"]} <= {r["steps"] for r in by_method["replacement"]}
    assert {(r["strength"], r["nfe"]) for r in by_method["SDEdit"]} == {(s, round(s * steps)) for s in
                                                                        bench.QUICK["strengths"]}  # fmt: skip
    assert all(r["evaluations"] == {"unet": r["steps"], "controlnet": r["steps"]} for r in by_method["ControlNet"])
    assert {r["steps"] for r in by_method["ControlNet"]} == {steps, *bench.CONTROLNET_FEWER_STEPS}
    guided = sorted(by_method["loss guidance"], key=lambda r: r["steps"])
    assert [r["steps"] for r in guided] == [steps, bench.LOSS_STEPS_FACTOR * steps]
    assert all(r["evaluations"] == {"unet": r["steps"], "unet_backward": r["steps"] - 1} for r in guided)  # not at a=0
    printed = capsys.readouterr().out
    assert "| target | measured | met |" in printed and (tmp_path / bench.CURVE_PLOT).is_file()

    assert bench.main(argv) == 0
    torch.set_num_threads(threads)
    assert f"seed 0: {len(rows)} settings recorded, 0 to measure" in capsys.readouterr().out
