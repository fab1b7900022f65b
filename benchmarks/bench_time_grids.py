"""Tuned time grids on exact mixtures: ODE endpoint error of our tuned sampler / diffusers' best, at 5, 10, 20 NFE.

For every mixture (``bench_few_step.mixtures()`` and two more: well-separated narrow modes in 2-D, mixed
scales in 4-D), path (VP: ε-prediction, linear β; flow: velocity, no shift) and number of evaluations n,
each candidate configuration (``FEW_STEP_CONFIG``, the UniPC-like one) gets its n-point grid tuned by
:func:`~scratch_schedulers.grid_search.search_time_grid` against the exact ODE endpoints of *calibration*
draws (``--calibration-seed``); among the tuned and the configured grid of each candidate, the one with the lowest
error on *validation* draws (``--validation-seed``) is kept — a grid fitted to a few ill-conditioned calibration
trajectories (those that start near the boundary between two sharp modes dominate the RMS) is not — and its error is
measured by :func:`~scratch_schedulers.oracle.ode_endpoint_error` on *fresh* draws (``--seed``, the draws of
``bench_few_step.py``), beside diffusers' schedulers on the same draws. Goal (issue 24): ≤ 0.5× diffusers'
best in every cell.

    python benchmarks/bench_time_grids.py [--nfe 5 10 20] [--mixture example ...] [--record]
    python benchmarks/bench_time_grids.py --table     # the tables of benchmarks/results/time_grids.json
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scratch_schedulers import ScratchDPMSolverScheduler
from scratch_schedulers.grid_search import configured_flow_grid, search_time_grid
from scratch_schedulers.oracle import GaussianMixture, ode_endpoint_error, sample_with
from scratch_schedulers.scheduling_dpmsolver import FEW_STEP_CONFIG

try:  # run as a script, this folder is on sys.path; imported by the tests, it is the `benchmarks` package
    from bench_few_step import FLOW_DPM, GOAL, UNIPC_LIKE, best_ratios, few_step_rows, markdown_table, mixtures
    from bench_few_step import path_schedulers as few_step_paths
    from provenance import print_recorded
    from results_io import environment, write_results
except ModuleNotFoundError:
    from benchmarks.bench_few_step import (
        FLOW_DPM,
        GOAL,
        UNIPC_LIKE,
        best_ratios,
        few_step_rows,
        markdown_table,
        mixtures,
    )
    from benchmarks.bench_few_step import path_schedulers as few_step_paths
    from benchmarks.provenance import print_recorded
    from benchmarks.results_io import environment, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "time_grids.json"
TUNED = "ours: tuned grid"
CANDIDATES: dict[str, dict[str, Any]] = {"FEW_STEP_CONFIG": FEW_STEP_CONFIG, "UniPC-like": UNIPC_LIKE}
PATH_KEYS = {"VP": {}, "flow": FLOW_DPM}


def tuning_mixtures() -> dict[str, GaussianMixture]:
    """bench_few_step's three mixtures, one narrower (separated sharp modes) and one wider (mixed scales in 4-D)."""
    angles = torch.arange(3, dtype=torch.float64) * (2 * math.pi / 3)
    g = torch.Generator().manual_seed(1)
    return {
        **mixtures(),
        "separated-2d": GaussianMixture(weights=torch.tensor([0.5, 0.3, 0.2]),
                                        means=2.5 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1),
                                        stds=torch.tensor([0.05, 0.05, 0.1])),
        "mixed-scales-4d": GaussianMixture(weights=torch.tensor([0.4, 0.35, 0.25]),
                                           means=torch.randn(3, 4, generator=g, dtype=torch.float64),
                                           stds=torch.tensor([0.2, 1.0, 2.0])),
    }


def tune_grid(config: dict[str, Any], mixture: GaussianMixture, n: int, n_calibration: int, seed: int,
              max_evaluations: int):
    """Search the n-point grid of ``ScratchDPMSolverScheduler(**config)`` on ``n_calibration`` draws from ``seed``."""
    calibration = ode_endpoint_error(ScratchDPMSolverScheduler(**config), mixture, n, n_samples=n_calibration,
                                     seed=seed)
    grid, bottom = configured_flow_grid(ScratchDPMSolverScheduler(**config), n)

    def sample(candidate: list[float]) -> torch.Tensor:
        scheduler = ScratchDPMSolverScheduler(**config, tuned_grids={n: candidate})
        return sample_with(scheduler, mixture, n, n_samples=n_calibration, seed=seed)[0]

    return search_time_grid(sample, calibration.reference, n, float(grid[0]), bottom=bottom,
                            max_evaluations=max_evaluations)


def tuned_cell(mixture: GaussianMixture, path: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Tune every candidate on calibration draws; keep, among the tuned and the configured grid of each candidate,
    the one with the lowest error on *validation* draws (another seed: a grid fitted to a few ill-conditioned
    calibration trajectories is not kept); measure it (and its configuration untuned) on fresh draws."""
    candidates, options = {}, {}
    for name, config in CANDIDATES.items():
        full = {**config, **PATH_KEYS[path]}
        result = tune_grid(full, mixture, n, args.n_calibration, args.calibration_seed, args.max_evaluations)
        candidates[name] = {"grid": result.grid, "calibration_before": result.initial_error,
                            "calibration_after": result.error, "evaluations": result.evaluations,
                            "seconds": result.seconds}
        for label, extra in ((f"{name}, tuned", {"tuned_grids": {n: result.grid}}), (f"{name}, configured", {})):
            validation = ode_endpoint_error(ScratchDPMSolverScheduler(**full, **extra), mixture, n,
                                            n_samples=args.n_calibration, seed=args.validation_seed).rms_error
            candidates[name][f"validation_{label.split(', ')[1]}"] = validation
            options[label] = (full, extra, validation)
    chosen = min(options, key=lambda label: options[label][2])
    full, extra, _ = options[chosen]
    fresh = {label: ode_endpoint_error(ScratchDPMSolverScheduler(**full, **more), mixture, n,
                                       n_samples=args.n_samples, seed=args.seed)
             for label, more in (("chosen", extra), ("untuned", {}))}
    return {"scheduler": TUNED, "ours": True, "target": n, "steps": n, "nfe": fresh["chosen"].nfe,
            "rms": fresh["chosen"].rms_error, "untuned_rms": fresh["untuned"].rms_error, "config": chosen,
            "candidates": candidates}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every cell of every mixture and path, printed as measured; returns the record ``--record`` writes."""
    record: dict[str, Any] = {key: getattr(args, key) for key in (
        "nfe", "n_samples", "seed", "n_calibration", "calibration_seed", "validation_seed", "max_evaluations")}
    record.update(goal=GOAL, candidates=list(CANDIDATES), mixtures={})
    began = time.perf_counter()
    for mixture_name in args.mixture:
        mixture = tuning_mixtures()[mixture_name]
        record["mixtures"][mixture_name] = {}
        for path, (_, schedulers) in few_step_paths().items():
            theirs = {name: entry for name, entry in schedulers.items() if not entry[1]}
            rows = few_step_rows(theirs, mixture, args.nfe, args.n_samples, args.seed)
            rows = [{k: r[k] for k in ("scheduler", "ours", "target", "steps", "nfe", "rms")} for r in rows]
            rows += [tuned_cell(mixture, path, n, args) for n in args.nfe]
            record["mixtures"][mixture_name][path] = rows
            print(f"{mixture_name} {path}: " + ", ".join(f"NFE {t}: {ratio:.2f} (vs {name})" for t, (ratio, name)
                                                          in best_ratios(rows, args.nfe, TUNED).items()), flush=True)
    record["seconds"] = time.perf_counter() - began
    return record


def tables(record: dict[str, Any]) -> str:
    """Tuned / best diffusers per mixture and path, then the tuned errors and the candidate each cell kept."""
    targets = record["nfe"]
    ratios, errors = [], []
    for name, paths in record["mixtures"].items():
        for path, rows in paths.items():
            cells = best_ratios(rows, targets, TUNED)
            ratios.append([f"`{name}`", path, *(
                f"{ratio:.2f}{' (missed)' if ratio > record['goal'] else ''}" for ratio, _ in cells.values())])
            tuned = {r["target"]: r for r in rows if r["scheduler"] == TUNED}
            errors.append([f"`{name}`", path, *(
                f"{tuned[t]['rms']:#.3g} ({tuned[t]['untuned_rms']:#.3g} untuned, {tuned[t]['config']})"
                for t in targets)])
    head = ["mixture", "path", *(f"{t} NFE" for t in targets)]
    intro = (f"Tuned grid / best diffusers scheduler (RMS ODE endpoint error on {record['n_samples']} fresh draws, "
             f"seed {record['seed']}; grids tuned on {record['n_calibration']} draws of seed "
             f"{record['calibration_seed']}, ≤ {record['max_evaluations']} sampler runs each, kept or not on "
             f"{record['n_calibration']} validation draws of seed {record['validation_seed']}; "
             f"goal ≤ {record['goal']}):")
    path_column = lambda table: table.replace("|---|---:|", "|---|---|", 1)  # noqa: E731
    return "\n\n".join([intro, path_column(markdown_table(head, ratios)),
                        "RMS endpoint error of the tuned grid (the same sampler on its configured grid; the kept "
                        "candidate):", path_column(markdown_table(head, errors)),
                        f"Whole benchmark: {record['seconds']:.0f} s."])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--mixture", nargs="+", default=list(tuning_mixtures()), choices=list(tuning_mixtures()))
    parser.add_argument("--n-samples", type=int, default=2000, help="fresh draws (as bench_few_step.py)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh draws")
    parser.add_argument("--n-calibration", type=int, default=4000)
    parser.add_argument("--calibration-seed", type=int, default=1)
    parser.add_argument("--validation-seed", type=int, default=2, help="draws that choose between the grids")
    parser.add_argument("--max-evaluations", type=int, default=150, help="sampler runs per tuned grid")
    parser.add_argument("--record", action="store_true", help=f"write the results to {RESULTS.name}")
    parser.add_argument("--table", action="store_true", help="print the tables of the recorded results and exit")
    args = parser.parse_args(argv)
    if args.table:
        print_recorded(RESULTS, tables, "`python benchmarks/bench_time_grids.py --record`")
        return
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    record = measure(args)
    print("\n" + tables(record))
    if args.record:
        write_results(RESULTS, {"environment": environment(), **record})
        print(f"\nrecorded in {RESULTS}")


if __name__ == "__main__":
    main()
