"""Samplers v3 (issue 24): do stochastic solvers pay, and what does a grid tuned for the model buy?

``--exact``: on the exact denoiser of Gaussian mixtures (``bench_few_step.mixtures()``), the sliced W1 to the mixture
of DPM-Solver++ 2M/3M and their SDE versions (both paths), DDPM's ancestral sampler and flow Heun with and without
EDM churn, against model evaluations, per noise seed (``scratch_diffusion.demo.samplers_study.exact_rows``).

``--demo``: per training seed the demo's model (seed 0: ``--seed0`` a demo output folder, else trained; the others
trained with the demo's recipe into ``--output_dir``/seed{S}); on seed 0 a churn sweep (flow Heun at 19 evaluations,
one draw); then DPM-Solver++ 2M vs DPM-Solver++(2M) SDE and flow Heun vs flow Heun with churn at 10, 20 and 50
evaluations, and the few-step DPM-Solver at 5 evaluations with its default grid and with the grid tuned for the
seed's model, each on ``--draws`` draws of ``--n`` images, scored by the demo's metric (FD beside the real baseline
at the same n). Resumable: each row is stored as soon as it exists and skipped when recorded under the same protocol.

    python benchmarks/bench_samplers_v3.py --exact                               # → results/samplers_v3.json
    python benchmarks/bench_samplers_v3.py --demo --seeds 0 1 2 --seed0 outputs/demo
    python benchmarks/bench_samplers_v3.py --demo --quick --output_dir /tmp/s3   # a toy model, a few images
    python benchmarks/bench_samplers_v3.py --table                               # the docs' tables, from the JSON
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

try:  # run as a script, this folder is on sys.path; imported by the tests, it is the `benchmarks` package
    from bench_few_step import markdown_table, mixtures
    from provenance import print_recorded
    from results_io import environment, read_results, write_results
except ModuleNotFoundError:
    from benchmarks.bench_few_step import markdown_table, mixtures
    from benchmarks.provenance import print_recorded
    from benchmarks.results_io import environment, read_results, write_results

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "samplers_v3.json"
EXACT = {"evaluations": [5, 10, 20, 50, 100], "n_samples": 2000, "seeds": [0, 1, 2],
         "mixtures": ["example", "narrow-2d", "wide-8d"]}  # fmt: skip
QUICK_EXACT = {"evaluations": [5, 10], "n_samples": 200, "seeds": [0, 1], "mixtures": ["example"]}


def load(path: Path) -> dict:
    return read_results(path) if path.is_file() else {}


# ---- exact denoiser --------------------------------------------------------------------------------------------


def run_exact(args) -> None:
    from scratch_diffusion.demo import samplers_study as study

    protocol = QUICK_EXACT if args.quick else EXACT
    record = load(args.results)
    entry = {"protocol": protocol, "environment": environment(), "mixtures": {}}
    for name in protocol["mixtures"]:
        mixture = mixtures()[name]
        rows = study.exact_rows(name, mixture, protocol["evaluations"], protocol["n_samples"], protocol["seeds"])
        entry["mixtures"][name] = {"floor": study.exact_floor(mixture, protocol["n_samples"]), "rows": rows}
        print(exact_table(entry, name), flush=True)
    record["exact"] = entry
    write_results(args.results, record)


def exact_table(entry: dict, name: str) -> str:
    """Sliced W1 (mean ± std over noise seeds) per sampler and evaluation target, beside the floor."""
    block, targets = entry["mixtures"][name], entry["protocol"]["evaluations"]
    body = []
    for sampler in dict.fromkeys(r["sampler"] for r in block["rows"]):
        cells = [next(r for r in block["rows"] if r["sampler"] == sampler and r["target"] == t) for t in targets]
        nfe = "" if all(c["nfe"] == c["target"] for c in cells) else f" ({' / '.join(str(c['nfe']) for c in cells)})"
        body.append([sampler + nfe, *(f"{c['sliced_w1']:.4f} ± {c['sliced_w1_std']:.4f}" for c in cells)])
    body.append(["exact samples (the floor)", *([f"{block['floor']['sliced_wasserstein']:.4f}"] * len(targets))])
    n, seeds = entry["protocol"]["n_samples"], len(entry["protocol"]["seeds"])
    return (f"Mixture `{name}`: sliced W1 to the mixture, n = {n} per seed, mean ± std over {seeds} noise seeds:\n\n"
            + markdown_table(["sampler", *(f"{t} evals" for t in targets)], body))


# ---- the demo's model ------------------------------------------------------------------------------------------


def demo_protocol(args) -> dict:
    from scratch_diffusion.demo import samplers_study as study

    return {"n": args.n, "draws": args.draws, "seed0": str(args.seed0) if args.seed0 else "trained here",
            "pairs": [list(p) for p in study.STOCHASTIC_PAIRS], "evaluations": list(study.STOCHASTIC_EVALUATIONS),
            "grid_evaluations": study.GRID_EVALUATIONS, "churn_sweep": list(study.CHURN_SWEEP),
            "calibration": args.calibration, "quick": args.quick}  # fmt: skip


def demo_record(args) -> dict:
    record = load(args.results)
    demo = record.get("demo", {})
    return demo if demo.get("protocol") == demo_protocol(args) else {"protocol": demo_protocol(args), "seeds": {}}


def store_demo(args, seed: int, key: str, value: dict) -> None:
    record = load(args.results)
    demo = demo_record(args)
    demo["seeds"].setdefault(str(seed), {})[key] = value
    record["demo"] = demo
    write_results(args.results, record)


def run_demo(args) -> None:
    from scratch_diffusion import metrics
    from scratch_diffusion.demo import few_step_study
    from scratch_diffusion.demo import samplers_study as study
    from scratch_diffusion.demo.guidance_study import prepare_conditional, study_config
    from scratch_diffusion.demo.sampling import make_scheduler

    metric = metrics.load_digits_classifier()
    for seed in args.seeds:
        folder = args.output_dir / f"seed{seed}"
        config = study_config(seed, folder, args.quick, args.num_threads)
        training = prepare_conditional(config, args.seed0 if seed == 0 else None)
        pipe = few_step_study.load_study_pipeline(config.pipeline_dir)
        done = demo_record(args)["seeds"].get(str(seed), {})
        if "training" not in done:
            store_demo(args, seed, "training", {k: training.get(k) for k in ("steps", "seconds", "model", "reused")})

        def make(sampler: str, pipe=pipe):
            return make_scheduler(sampler, pipe.scheduler.config, pipe.trained_parametrization.path, latent=True)

        wanted = lambda sampler: args.samplers is None or sampler in args.samplers  # noqa: E731
        settings = study.stochastic_settings(make, args.samplers)
        settings = [(s, k, False) for s, k in settings]
        if seed == args.seeds[0]:  # the churn sweep, one draw each, before the table's value was chosen
            sweep = [study.churn_sampler(c) for c in study.CHURN_SWEEP]
            settings = [(s, study.steps_at_most(s, 20, make), True) for s in sweep if wanted(s)] + settings
        settings += [(s, study.GRID_EVALUATIONS, False) for s in study.GRID_SAMPLERS if wanted(s)]
        if "tuning" not in done and study.GRID_SAMPLERS[1] in {s for s, _, _ in settings}:
            store_demo(args, seed, "tuning", study.tune_grid(pipe, folder, args.calibration, 20 if args.quick else 60))
        for sampler, steps, sweep in settings:
            key = ("sweep: " if sweep else "") + few_step_study.setting_key(sampler, steps)
            if key in demo_record(args)["seeds"].get(str(seed), {}):
                continue
            if sampler == study.GRID_SAMPLERS[1]:
                if demo_record(args)["seeds"][str(seed)]["tuning"]["grid"] is None:
                    print(f"seed {seed}: the search found no grid better than the default; {key} not measured")
                    continue
                study.use_tuned_scheduler(pipe, folder)
            draws = 1 if sweep else args.draws
            row = few_step_study.score_setting(pipe, sampler, steps, args.n, draws, args.batch_size, metric)
            row.update(sweep=sweep, environment=environment())
            store_demo(args, seed, key, row)
            print(f"seed {seed} {key}: {row['nfe']:g} evals, FD {row['fd']:.2f} (×{row['fd_ratio']:.2f} ± "
                  f"{row['fd_ratio_std_over_draws'] or 0:.2f}), class match {100 * row['class_match']:.1f} %, "
                  f"{row['seconds']:.1f} s", flush=True)


def demo_table(demo: dict) -> str:
    """FD / real baseline per setting: mean ± std over training seeds (each seed's value the mean of its draws)."""
    seeds = demo["seeds"]
    keys = [k for k in dict.fromkeys(k for s in seeds.values() for k in s if "/steps=" in k and not k.startswith(
        "sweep: "))]
    samplers = list(dict.fromkeys(k.split("/steps=")[0] for k in keys))  # each sampler's rows together, by steps
    keys.sort(key=lambda k: (samplers.index(k.split("/steps=")[0]), int(k.split("/steps=")[1])))
    body = []
    for key in keys:
        rows = [s[key] for s in seeds.values() if key in s]
        ratios = [r["fd_ratio"] for r in rows]
        spread = f" ± {statistics.stdev(ratios):.2f}" if len(ratios) > 1 else ""
        within = statistics.fmean(r["fd_ratio_std_over_draws"] or 0.0 for r in rows)
        body.append([rows[0]["sampler"], f"{rows[0]['nfe']:g}", f"{statistics.fmean(ratios):.3f}×{spread}",
                     f"{within:.2f}", f"{100 * statistics.fmean(r['class_match'] for r in rows):.1f} %",
                     str(len(rows))])
    n, draws = demo["protocol"]["n"], demo["protocol"]["draws"]
    sweep = [(seed, row) for seed, rows in seeds.items() for key, row in rows.items() if key.startswith("sweep: ")]
    sweep_text = "; ".join(f"{row['sampler'].split(', ')[1]}: {row['fd_ratio']:.2f}×" for _, row in sweep)
    tunings = [rows["tuning"] for rows in seeds.values() if "tuning" in rows]
    tuning_text = "; ".join(f"{t['error_before']:.3f} → {t['error_after']:.3f} in {t['seconds']:.0f} s "
                            f"({t['model_evaluations']} UNet evaluations)" for t in tunings)
    return (f"FD over the real baseline at the same n (n = {n} × {draws} draws per seed; ± over training seeds; "
            "'draws ±' the mean std over a seed's draws):\n\n"
            + markdown_table(["sampler", "evals", "FD / baseline", "draws ±", "class match", "seeds"], body)
            + (f"\n\nChurn sweep (seed {sweep[0][0]}, flow Heun at {sweep[0][1]['nfe']:g} evaluations, n = "
               f"{sweep[0][1]['n']}, one draw; the value kept for the table is the lowest FD): {sweep_text}."
               if sweep else "")
            + (f"\n\nGrid tuning per seed (RMS latent discrepancy to a 100-step solve on "
               f"{demo['protocol']['calibration']} calibration latents, before → after): {tuning_text}."
               if tunings else ""))


def tables(record: dict) -> str:
    parts = []
    if "exact" in record:
        parts += [exact_table(record["exact"], name) for name in record["exact"]["mixtures"]]
    if "demo" in record:
        parts.append(demo_table(record["demo"]))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exact", action="store_true", help="the exact-denoiser part")
    parser.add_argument("--demo", action="store_true", help="the demo-model part")
    parser.add_argument("--table", action="store_true", help="print the tables of the recorded results and exit")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seed0", type=Path, help="a demo output folder holding seed 0's model")
    parser.add_argument("--output_dir", type=Path, default=ROOT / "outputs" / "samplers-v3")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--calibration", type=int, default=64, help="calibration trajectories of the grid tuning")
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--num_threads", type=int, default=2)
    parser.add_argument("--samplers", nargs="+", help="measure only these settings' samplers (default: all)")
    parser.add_argument("--quick", action="store_true", help="toy sizes, for tests")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.table:
        print_recorded(args.results, tables, "`python benchmarks/bench_samplers_v3.py --exact` and `--demo --seeds 0 "
                       "1 2 --seed0 outputs/demo`")
        return 0
    if not (args.exact or args.demo):
        parser.error("choose --exact, --demo or --table")
    torch.set_num_threads(args.num_threads)
    if args.quick:
        args.n, args.draws, args.calibration = min(args.n, 16), 1, min(args.calibration, 4)
    if args.exact:
        run_exact(args)
    if args.demo:
        run_demo(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
