"""benchmarks/bench_time_grids.py: one tuned cell end to end on tiny draws, and the tables from a hand-made record."""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks import bench_time_grids as bench


def test_a_tuned_cell_on_tiny_draws():
    args = argparse.Namespace(n_calibration=64, calibration_seed=1, validation_seed=2, max_evaluations=6, n_samples=64,
                              seed=0)
    mixture = bench.tuning_mixtures()["separated-2d"]
    row = bench.tuned_cell(mixture, "flow", 4, args)
    name, kind = row["config"].split(", ")
    assert row["scheduler"] == bench.TUNED and row["nfe"] == 4 and name in bench.CANDIDATES
    assert kind in ("tuned", "configured")
    for candidate in row["candidates"].values():
        assert candidate["calibration_after"] <= candidate["calibration_before"] and candidate["evaluations"] <= 6
        assert np.all(np.diff(candidate["grid"]) < 0)
    # the kept grid is the one with the lowest error on the validation draws, tuned or configured
    kept = row["candidates"][name][f"validation_{kind}"]
    assert kept == min(min(c["validation_tuned"], c["validation_configured"]) for c in row["candidates"].values())
    if kind == "configured":
        assert row["rms"] == row["untuned_rms"]


def test_the_benchmark_mixtures_add_a_narrow_and_a_wide_one():
    mixtures = bench.tuning_mixtures()
    assert {"example", "narrow-2d", "wide-8d", "separated-2d", "mixed-scales-4d"} <= set(mixtures)
    assert float(mixtures["separated-2d"].stds.max()) < 0.2 and float(mixtures["mixed-scales-4d"].stds.max()) >= 2


def test_tables_mark_missed_cells():
    def rows(ours: float, theirs: float) -> list[dict]:
        return [{"scheduler": "UniPCMultistepScheduler", "ours": False, "target": 5, "rms": theirs},
                {"scheduler": bench.TUNED, "ours": True, "target": 5, "rms": ours, "untuned_rms": 2 * ours,
                 "config": "FEW_STEP_CONFIG, tuned"}]

    record = {"nfe": [5], "n_samples": 10, "seed": 0, "n_calibration": 10, "calibration_seed": 1,
              "validation_seed": 2, "max_evaluations": 3, "goal": 0.5, "seconds": 1.0,
              "mixtures": {"m": {"VP": rows(0.1, 1.0), "flow": rows(0.6, 1.0)}}}
    text = bench.tables(record)
    assert "| `m` | VP | 0.10 |" in text and "| `m` | flow | 0.60 (missed) |" in text
    assert "0.100 (0.200 untuned, FEW_STEP_CONFIG, tuned)" in text
