"""Print the README's one results table from the recorded results files (never re-measuring).

    python benchmarks/front_page.py

Rows of evidence, each beside its reference: the demo (``docs/demo-metrics.json`` and the seeds
table ``benchmarks/results/demo_seeds.json``), its model tuned for one to four steps against the teacher at the same
evaluations (``benchmarks/results/few_step_models.json``), few-step accuracy against diffusers' best scheduler on
the exact denoiser (``benchmarks/results/few_step.json``) and with grids tuned for the sampler
(``benchmarks/results/time_grids.json``), and quality at equal training steps against
the objective of diffusers' ``train_unconditional.py`` (``benchmarks/results/recipes.json``).
tests/test_readme.py checks that the README's block is exactly this output.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from results_io import read_results

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEMO_METRICS = REPO / "docs" / "demo-metrics.json"
# diffusers' train_unconditional.py trains DDPM with ε-prediction on a linear β schedule and samples with DDPM/DDIM;
# our default objective is flow matching with logit-normal σ. Same UNet, data, loop and step count in both rows.
OURS_OBJECTIVE, DIFFUSERS_OBJECTIVE = "flow_logit_normal", "ddpm_eps_linear"


def demo_row() -> str:
    """The recorded demo run's best setting at ≤ 10 UNet evaluations, and its spread over training seeds."""
    report = json.loads(DEMO_METRICS.read_text(encoding="utf-8"))
    best = report["best"]
    seeds = [row for row in read_results(RESULTS / "demo_seeds.json").values() if row["threads"] == 2]
    ratios = [row["fd_ratio"] for row in seeds]
    training = report["training"]
    minutes = (training["seconds"] + training.get("vae", {}).get("seconds", 0.0)) / 60
    return (
        f"| `make demo`: class-conditional latent flow model, {minutes:.1f} min of training (VAE + UNet) on 2 CPU "
        f"cores; FD in a digits CNN's features, n = {best['n']} × {best['draws']} draws | "
        f"{best['sampler']}, {best['steps']} steps ({best['nfe']} UNet evaluations): FD {best['fd']:.2f}; "
        f"{len(ratios)} training seeds: {statistics.fmean(ratios):.2f}× ± {statistics.stdev(ratios):.2f} | "
        f"real digits vs real digits: FD {best['fd_real_baseline']:.2f} ± {best['fd_real_baseline_std']:.2f} | "
        f"**{best['fd_ratio']:.2f}×** the real baseline, class match {100 * best['class_match']:.1f} % |"
    )


def equal_steps_row() -> str:
    """FD ratio at 10 evaluations with each run's saved sampler, EMA weights: our default vs diffusers' objective."""
    rows = read_results(RESULTS / "recipes.json")["rows"]

    def saved_sampler(recipe: str) -> dict[str, Any]:
        candidates = [r for r in rows if r["recipe"] == recipe and r["weights"] == "ema" and r["nfe"] == 10
                      and not r["sampler"].startswith("DPM")]
        if len(candidates) != 1:
            raise SystemExit(f"recipes.json: expected one saved-sampler row of {recipe!r} at 10 NFE, "
                             f"not {len(candidates)}")
        return candidates[0]

    ours, theirs = saved_sampler(OURS_OBJECTIVE), saved_sampler(DIFFUSERS_OBJECTIVE)
    return (
        f"| Quality at equal steps (800 training steps, the same UNet and loop, 10 sampling steps, n = {ours['n']}, "
        f"one seed) | flow matching, logit-normal σ (our default), {ours['sampler']}: {ours['fd_ratio']:.2f}× | "
        f"ε-prediction, linear β — diffusers' `train_unconditional.py` objective — {theirs['sampler']}: "
        f"{theirs['fd_ratio']:.2f}× | **{theirs['fd_ratio'] / ours['fd_ratio']:.1f}× lower FD ratio**; "
        f"real baseline ± {ours['fd_real_baseline_std']:.1f} at this n |"
    )


def few_step_rows() -> list[str]:
    """ODE endpoint error of FEW_STEP_CONFIG over the best diffusers scheduler at each NFE, per path."""
    record = read_results(RESULTS / "few_step.json")
    lines = []
    for path, summary in record["summary"].items():
        cells = " · ".join(f"{nfe} NFE {entry['ours']:#.3g}" for nfe, entry in summary.items())
        best = " · ".join(f"{entry['theirs']:#.3g} ({entry['theirs_name']})" for entry in summary.values())
        ratios = " / ".join(f"{entry['ours'] / entry['theirs']:.2f}" for entry in summary.values())
        lines.append(
            f"| Few-step accuracy, {path} path: RMS ODE endpoint error on a Gaussian mixture's exact denoiser "
            f"({record['mixture']}, {record['n_samples']} samples) | `FEW_STEP_CONFIG`: {cells} | best diffusers "
            f"scheduler: {best} | **{ratios}×** at {' / '.join(summary)} NFE |"
        )
    return lines


def tuned_grid_row() -> str:
    """Tuned time grids on every exact mixture and path (``time_grids.json``): cells within the goal, the worst."""
    record = read_results(RESULTS / "time_grids.json")
    ratios = []
    for paths in record["mixtures"].values():
        for rows in paths.values():
            for target in record["nfe"]:
                tuned = next(r["rms"] for r in rows if r["ours"] and r["target"] == target)
                ratios.append(tuned / min(r["rms"] for r in rows if not r["ours"] and r["target"] == target))
    met = sum(ratio <= record["goal"] for ratio in ratios)
    nfe = " / ".join(str(t) for t in record["nfe"])
    return (
        f"| Time grids tuned for the sampler: RMS ODE endpoint error on {len(record['mixtures'])} Gaussian mixtures' "
        f"exact denoisers × 2 paths × {nfe} NFE, grids tuned on {record['n_calibration']} calibration draws (kept "
        f"where better on as many validation draws), error on {record['n_samples']} fresh ones | `FEW_STEP_CONFIG` or "
        f"UniPC-like on the chosen grid: median "
        f"{statistics.median(ratios):.2f}× | the best diffusers scheduler of each cell | **≤ {record['goal']}× in "
        f"{met} of {len(ratios)} cells**, worst {max(ratios):.2f}× |"
    )


def one_step_row() -> str:
    """The consistency-tuned demo model at 1 and 2 evaluations beside the teacher at 2 (``few_step_models.json``)."""
    from scratch_diffusion.demo import few_step_report as report

    record = read_results(RESULTS / "few_step_models.json")
    rows = report.by_setting(report.models_of(record, "tuned", "consistency"))
    one, two = (rows[f"consistency/steps={k}"] for k in (1, 2))
    teacher = report.teacher(record)["settings"]["DPM-Solver++/steps=2"]
    fd_one, fd_two = (statistics.fmean(r["fd"] for r in found) for found in (one, two))
    baseline = teacher["fd_real_baseline"]
    return (
        f"| One to four steps: the demo's model consistency-tuned (800 steps), {len(one)} seeds, n = "
        f"{teacher['n']} × {teacher['draws']} draws | 1 UNet evaluation: FD {fd_one:.2f} ({fd_one / baseline:.2f}× "
        f"the real baseline); 2: FD {fd_two:.2f} | the teacher at 2 evaluations (DPM-Solver++): FD {teacher['fd']:.2f}"
        f" | **{teacher['fd'] / fd_two:.1f}× lower FD** at 2 evaluations; 1 evaluation "
        f"{statistics.fmean(r['class_match'] for r in one) * 100:.1f} % class match |"
    )


def table() -> str:
    head = ["| measurement | ours | reference | ratio |", "|---|---|---|---|"]
    return "\n".join([*head, demo_row(), one_step_row(), *few_step_rows(), tuned_grid_row(), equal_steps_row()])


def main() -> None:
    print(table())


if __name__ == "__main__":
    main()
