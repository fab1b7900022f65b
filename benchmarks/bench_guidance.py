"""Guidance on the demo's digits (issue 21, §3): every rule, per training seed, model evaluations counted honestly.

Per seed, in ``--output_dir/seed{S}`` (``scratch_diffusion.demo.guidance_study``; a complete model is reused):
``conditional/`` the demo's class-conditional latent model (trained by the demo's ``train_model``, or copied from
``--conditional_dirs``, one demo output folder per seed) with the demo's autoguidance guide attached as
``guide_unet``; ``unconditional/`` the same recipe without classes on the same VAE's latents, with its own guide and
a noise-aware classifier (``training/train_classifier.py --pipeline``; its held-out accuracy by noise level σ = b/a
is recorded and plotted for every seed in ``guidance_classifier_accuracy.png``).

Every setting samples ``--draws`` × ``--n`` images with one sampler and step count (``--sampler``, ``--steps``) and is
scored by the demo's metric: FD in the digits CNN's features over the real-vs-real baseline at the same n, and the
class match as that CNN judges it — never the guiding classifier. Evaluations per image are the pipeline's own
counts (``pipe.evaluations``): a CFG step counts both halves, an autoguidance step one UNet and one guide
evaluation; classifier guidance's forward and backward passes are listed apart. Timing is interleaved: draw by
draw, every setting of a model in turn, in one process (``sample_interleaved``), so a busy machine slows all of
them alike; ``time_ratio`` is a setting's time in the pipeline calls (decoding included, the metric not) over the
unguided setting's of the same model, the ratio the targets need. The quality numbers do not depend on load.

    python benchmarks/bench_guidance.py --seeds 0 1 2                 # the study → benchmarks/results/guidance.json
    python benchmarks/bench_guidance.py --quick --output_dir /tmp/g   # toy models and a few images, end to end
    python benchmarks/bench_guidance.py --search --seeds 0            # guide recipes and intervals → guidance_search
    python benchmarks/bench_guidance.py --table                       # the docs' table, from the JSON
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

try:  # run as a script, this folder is on sys.path; imported by the tests, it is the `benchmarks` package
    from results_io import environment, read_results, write_results
except ModuleNotFoundError:
    from benchmarks.results_io import environment, read_results, write_results

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "guidance.json"
ACCURACY_PLOT = ROOT / "benchmarks" / "results" / "guidance_classifier_accuracy.png"
# The study's scales, from the search (benchmarks/results/guidance_search.json): full CFG at n = 1000 is past 1.9× from
# w = 1.25 on; classifier guidance on seed 0 (n = 300): s = 2 84 % class match, s = 4 96 %, s = 8 99 % at 5.4×.
GRID = {"cfg_scales": [1.25, 1.5, 2.0], "autoguidance_scales": [1.25, 1.5, 2.0, 3.0],
        "classifier_scales": [3.0, 4.0, 5.0]}  # fmt: skip
QUICK_GRID = {"cfg_scales": [2.0], "autoguidance_scales": [2.0], "classifier_scales": [2.0]}
# --search (on one seed's conditional model): autoguidance guides (trainer preset, steps) and CFG intervals
# of σ = b/a; the demo's defaults are the best of these (flow Heun at 5 steps evaluates at σ = ∞, 3, 1, 0.34, 0.001)
GUIDE_CANDIDATES = (("micro", 200), ("micro", 400), ("micro", 800), ("compact", 200), ("compact", 400), ("tiny", 400))
INTERVAL_CANDIDATES = ((0.28, 5.42), (0.5, 5.42), (0.28, 2.0), (2.0, 5.42))
SEARCH_GRID = {"cfg_scales": [1.25, 1.5, 2.0, 3.0, 4.0], "autoguidance_scales": [1.5, 2.0, 2.5, 3.0]}
SEARCH_RESULTS = ROOT / "benchmarks" / "results" / "guidance_search.json"
# issue 21's targets, checked by :func:`targets` on the means over seeds
TARGETS = {"interval_fd": 1.30, "interval_match": 0.995, "interval_saving": 0.20, "auto_fd": 1.12, "auto_match": 0.97,
           "auto_time": 1.3, "uncond_auto_gain": 0.20, "classifier_match": 0.95, "classifier_fd": 1.5}  # fmt: skip


def settings(kind: str, args) -> list:
    """The sample sets of the ``kind`` ("conditional"/"unconditional") model; the unguided one first."""
    from scratch_diffusion.demo.sampling import SampleSet

    def sample(rule: str, w: float, interval=None) -> SampleSet:
        return SampleSet(args.sampler, args.steps, w, args.n, kind, args.draws, rule=rule, interval=interval)

    sets = [sample("CFG", 1.0)]
    if kind == "conditional":
        sets += [sample("CFG", w) for w in args.cfg_scales]
        sets += [sample("interval CFG", w, tuple(args.interval)) for w in args.cfg_scales]
    sets += [sample("autoguidance", w) for w in args.autoguidance_scales]
    if kind == "unconditional":
        sets += [sample("classifier", s) for s in args.classifier_scales]
    return sets


def run_seed(seed: int, args, given: Path | None) -> dict:
    """Train or reuse the seed's models, then sample and score every setting; the seed's record."""
    from scratch_diffusion import metrics
    from scratch_diffusion.demo import guidance_study as study

    folder = args.output_dir / f"seed{seed}"
    config = study.study_config(seed, folder / "conditional", args.quick, args.num_threads)
    uncond = folder / "unconditional"
    recipe = study.QUICK_CLASSIFIER_RECIPE if args.quick else study.CLASSIFIER_RECIPE
    models = {"conditional": study.prepare_conditional(config, given)}
    models["conditional_guide"] = study.prepare_guide(config, config.pipeline_dir, config.guide_dir, True)
    models["unconditional"] = study.prepare_unconditional(config, uncond)
    models["unconditional_guide"] = study.prepare_guide(config, uncond / "pipeline", uncond / "guide", False)
    models["classifier"] = study.prepare_classifier(config, uncond / "pipeline", folder / "classifier", recipe)
    metric = metrics.load_digits_classifier()
    rows = []
    for kind, pipeline_dir in (("conditional", config.pipeline_dir), ("unconditional", uncond / "pipeline")):
        pipe = study.load_study_pipeline(pipeline_dir, config.device)
        models[f"{kind}_guide"] = study.with_guide_cost(models[f"{kind}_guide"], pipe, args.sample_batch_size)
        sets = settings(kind, args)
        print(f"seed {seed}, {kind}: {len(sets)} settings × {args.draws} draws of {args.n} images, interleaved")
        study.sample_interleaved(pipe, sets, seed, args.sample_batch_size, metric)
        for s in sets:
            rows.append({**s.row(), "model": kind, "time_ratio": s.seconds / sets[0].seconds})
            print(f"  {row_text(rows[-1])}")
    return {"models": models, "rows": rows}


def run_search(seed: int, args, given: Path | None) -> dict:
    """Interval candidates for CFG, then guide candidates for autoguidance, on the seed's conditional model."""
    from scratch_diffusion import metrics
    from scratch_diffusion.demo import guidance_study as study
    from scratch_diffusion.demo.sampling import SampleSet

    folder = args.output_dir / f"seed{seed}"
    config = study.study_config(seed, folder / "conditional", args.quick, args.num_threads)
    study.prepare_conditional(config, given)
    pipe = study.load_study_pipeline(config.pipeline_dir, config.device)
    metric = metrics.load_digits_classifier()

    def sample(rule: str, w: float, interval=None) -> SampleSet:
        return SampleSet(args.sampler, args.steps, w, args.n, "search", args.draws, rule=rule, interval=interval)

    sets = [sample("CFG", 1.0)] + [sample("CFG", w) for w in args.cfg_scales]
    sets += [sample("interval CFG", w, interval) for interval in args.intervals for w in args.cfg_scales]
    print(f"search, seed {seed}: {len(sets)} CFG settings × {args.draws} draws of {args.n} images")
    study.sample_interleaved(pipe, sets, seed, args.sample_batch_size, metric)
    rows = [{**s.row(), "model": "conditional", "time_ratio": s.seconds / sets[0].seconds} for s in sets]
    for r in rows:
        print(f"  {row_text(r)}")
    guides = {}
    for model, steps in args.guides:
        name = f"{model}-{steps}"
        guides[name] = study.use_guide_candidate(pipe, config, folder / "search", model, steps, args.sample_batch_size)
        auto = [sample("autoguidance", w) for w in args.autoguidance_scales]
        study.sample_interleaved(pipe, [sets[0], *auto], seed, args.sample_batch_size, metric)
        for s in auto:
            rows.append({**s.row(), "model": "conditional", "guide": name, "time_ratio": s.seconds / sets[0].seconds})
            print(f"  guide {name}: {row_text(rows[-1])}")
    return {"rows": rows, "guides": guides}


def search_table(record: dict) -> str:
    """Every searched setting: FD / baseline (± over draws), class match, evaluations; guides with their cost."""
    lines = ["| seed | setting | guide | model evals per image | FD / baseline | class match | time × unguided |",
             "|---:|---|---|---:|---:|---:|---:|"]  # fmt: skip
    seen = set()
    for seed, seed_record in ((seed, r) for run in record["runs"] for seed, r in run["seeds"].items()):
        for r in seed_record["rows"]:
            key = (seed, setting_text(r), r.get("guide"))
            if key in seen:  # the unguided and CFG settings of a later run again
                continue
            seen.add(key)
            guide = r.get("guide", "")
            if guide:
                cost = seed_record["guides"][guide]["cost"]["guide_to_unet_time"]
                guide = f"{guide} ({cost:.2f}× per evaluation)"
            lines.append(f"| {seed} | {setting_text(r)} | {guide} | {evaluations_text(r)} | {r['fd_ratio']:.2f}× ± "
                         f"{r['fd_ratio_std_over_draws'] or 0:.2f} | {100 * r['class_match']:.1f} % | "
                         f"{r['time_ratio']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def setting_text(r: dict) -> str:
    """``"unguided"``, ``"CFG w=1.5"``, ``"interval CFG w=1.5, σ ∈ (0.28, 5.42]"``, ``"autoguidance w=2"``."""
    from scratch_diffusion.demo.rules import rule_text

    if r["rule"] == "CFG":
        return "unguided" if r["guidance_scale"] == 1 else f"CFG {rule_text('CFG', r['guidance_scale'])}"
    return rule_text(r["rule"], r["guidance_scale"], r["interval"])


def row_text(r: dict) -> str:
    match = "–" if r["class_match"] is None else f"{100 * r['class_match']:.1f} %"
    return (f"{setting_text(r)}: {evaluations_text(r)} evals, FD {r['fd_ratio']:.2f}× ± "
            f"{r['fd_ratio_std_over_draws'] or 0:.2f}, match {match}, time ×{r['time_ratio']:.2f}")  # fmt: skip


def evaluations_text(r: dict) -> str:
    """``"18"``, ``"9 + 9 guide"``, ``"9 + 9 classifier (fwd + bwd)"``."""
    e = r["evaluations"]
    extra = [f"{e[m]:g} {name}" for m, name in (("guide_unet", "guide"), ("classifier", "classifier (fwd + bwd)"))
             if m in e]  # fmt: skip
    return " + ".join([f"{e['unet']:g}", *extra])


def setting_key(r: dict) -> tuple:
    return (r["model"], r["rule"], r["guidance_scale"], tuple(r["interval"] or ()), r["steps"])


def aggregate(record: dict) -> list[dict]:
    """One row per setting over the recorded seeds: means, FD ratio's spread over seeds and mean spread over draws."""
    groups: dict[tuple, list[dict]] = {}
    for seed_record in record["seeds"].values():
        for r in seed_record["rows"]:
            groups.setdefault(setting_key(r), []).append(r)
    out = []
    for rows in groups.values():
        ratios = [r["fd_ratio"] for r in rows]
        matches = [r["class_match"] for r in rows]
        out.append({
            **{k: rows[0][k] for k in ("model", "rule", "guidance_scale", "interval", "steps", "evaluations", "nfe")},
            "seeds": len(rows),
            "fd_ratio": statistics.fmean(ratios),
            "fd_ratio_std_over_seeds": statistics.stdev(ratios) if len(rows) > 1 else None,
            "fd_ratio_std_over_draws": statistics.fmean(r["fd_ratio_std_over_draws"] or 0 for r in rows),
            "class_match": None if None in matches else statistics.fmean(matches),
            "time_ratio": statistics.fmean(r["time_ratio"] for r in rows),
        })  # fmt: skip
    return out


def targets(rows: list[dict]) -> list[dict]:
    """The issue's four targets on the means over seeds: the best setting for each, a note, and whether it is met."""
    t = TARGETS

    def of(model: str, rule: str, guided: bool = True, min_match: float | None = None) -> list[dict]:
        return [r for r in rows if r["model"] == model and r["rule"] == rule and (r["guidance_scale"] != 1) == guided
                and (min_match is None or r["class_match"] >= min_match)]  # fmt: skip

    def lowest_fd(candidates: list[dict]) -> dict | None:
        return min(candidates, key=lambda r: r["fd_ratio"], default=None)

    checks = []
    interval = lowest_fd(of("conditional", "interval CFG", min_match=t["interval_match"]))
    full = min(of("conditional", "CFG", min_match=t["interval_match"]), key=lambda r: (r["nfe"], r["fd_ratio"]),
               default=None)  # fmt: skip
    if interval is not None and full is not None:
        saving = 1 - interval["nfe"] / full["nfe"]
        note = (f"{saving:.0%} fewer evaluations than full CFG at ≥ 99.5 % ({setting_text(full)}: {full['nfe']:g} "
                f"evals, {full['fd_ratio']:.2f}×)")  # fmt: skip
        met = saving >= t["interval_saving"]
        met = met and interval["fd_ratio"] <= t["interval_fd"]
    else:
        note, met = "interval or full CFG never reached 99.5 %", False
    checks.append(("interval CFG: FD ≤ 1.30× at class match ≥ 99.5 %, ≥ 20 % fewer evaluations than full CFG at "
                   "the same class match", interval, note, met))  # fmt: skip
    unguided = {m: of(m, "CFG", guided=False)[0] for m in ("conditional", "unconditional")}
    auto = lowest_fd(of("conditional", "autoguidance", min_match=t["auto_match"]))
    met = auto is not None and auto["fd_ratio"] <= t["auto_fd"] and auto["time_ratio"] <= t["auto_time"]
    checks.append(("autoguidance (conditional): FD ≤ 1.12× at class match ≥ 97 %, time ≤ 1.3× unguided", auto,
                   f"unguided {unguided['conditional']['fd_ratio']:.2f}×", met))  # fmt: skip
    auto = lowest_fd(of("unconditional", "autoguidance"))
    gain = None if auto is None else 1 - auto["fd_ratio"] / unguided["unconditional"]["fd_ratio"]
    note = f"unguided {unguided['unconditional']['fd_ratio']:.2f}×" + ("" if gain is None else f", {gain:.0%} lower")
    checks.append(("autoguidance (unconditional): FD ≥ 20 % lower than unguided", auto, note,
                   gain is not None and gain >= t["uncond_auto_gain"]))  # fmt: skip
    steered = lowest_fd(of("unconditional", "classifier", min_match=t["classifier_match"]))
    below = [r for r in of("unconditional", "classifier") if r["class_match"] < t["classifier_match"]]
    closest = max(below, key=lambda r: r["class_match"], default=None)
    note = f"unguided {unguided['unconditional']['fd_ratio']:.2f}×"
    if closest is not None:
        note += f"; {setting_text(closest)}: {100 * closest['class_match']:.1f} % at {closest['fd_ratio']:.2f}×"
    checks.append(("classifier guidance (unconditional): class match ≥ 95 % at FD ≤ 1.5×", steered, note,
                   steered is not None and steered["fd_ratio"] <= t["classifier_fd"]))  # fmt: skip
    return [{"target": name, "setting": setting, "note": note, "met": met} for name, setting, note, met in checks]


def table(record: dict) -> str:
    """The markdown table of every setting (means over seeds), the targets, and the classifier's accuracy by σ."""
    rows = sorted(aggregate(record), key=lambda r: (r["model"], ["CFG", "interval CFG", "autoguidance", "classifier"]
                                                     .index(r["rule"]), r["guidance_scale"]))  # fmt: skip
    seeds = ", ".join(sorted(record["seeds"]))
    p = record["protocol"]
    lines = [f"{p['sampler']}, {p['steps']} steps; n = {p['n']} × {p['draws']} draws per setting and seed; seeds "
             f"{seeds}; FD / baseline: mean over seeds ± spread over seeds (± mean spread over draws); class match by "
             "the metric's digits CNN; time: total sampling time over unguided, same model, interleaved in one "
             "process.", "",
             "| model | guidance | model evals per image | FD / baseline | class match | time × unguided |",
             "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        guidance = setting_text(r)
        spread = f" ± {r['fd_ratio_std_over_seeds']:.2f}" if r["fd_ratio_std_over_seeds"] is not None else ""
        match = "–" if r["class_match"] is None else f"{100 * r['class_match']:.1f} %"
        lines.append(f"| {r['model']} | {guidance} | {evaluations_text(r)} | {r['fd_ratio']:.2f}×{spread} "
                     f"(± {r['fd_ratio_std_over_draws']:.2f}) | {match} | {r['time_ratio']:.2f} |")  # fmt: skip
    lines += ["", "| target | best setting | measured | met |", "|---|---|---|---|"]
    for c in targets(rows):
        s = c["setting"]
        measured = "–"
        if s is not None:
            match = "" if s["class_match"] is None else f", match {100 * s['class_match']:.1f} %"
            measured = (f"{setting_text(s)}: {s['fd_ratio']:.2f}×{match}, {evaluations_text(s)} evals, "
                        f"time ×{s['time_ratio']:.2f}")  # fmt: skip
        lines.append(f"| {c['target']} | {measured} | {c['note']} | {'yes' if c['met'] else '**no**'} |")
    lines += ["", accuracy_table(record)]
    return "\n".join(lines)


def accuracy_table(record: dict) -> str:
    """The noisy classifier's held-out accuracy per σ bin, mean over seeds (min–max)."""
    by_seed = [s["models"]["classifier"]["by_noise"] for s in record["seeds"].values()]
    head = "| σ = b/a | " + " | ".join(f"[{b['sigma_low']:g}, {b['sigma_high']:g})" for b in by_seed[0]) + " |"
    cells = []
    for i in range(len(by_seed[0])):
        values = [rows[i]["accuracy"] for rows in by_seed]
        cells.append(f"{100 * statistics.fmean(values):.0f} %" + (f" ({100 * min(values):.0f}–{100 * max(values):.0f})"
                                                                   if len(values) > 1 else ""))  # fmt: skip
    return "\n".join(["Noise-aware classifier (unconditional model's path and latents), held-out accuracy by noise "
                      "level, mean over seeds (min–max):", "", head, "|---|" + "---:|" * len(cells),
                      "| accuracy | " + " | ".join(cells) + " |"])  # fmt: skip


def plot_accuracy(record: dict, path: Path) -> bool:
    """Accuracy against σ (bin centres, log axis), one line per seed; False without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    figure = Figure(figsize=(5.0, 3.2), layout="constrained")
    axes = figure.subplots()
    for seed, seed_record in sorted(record["seeds"].items()):
        rows = seed_record["models"]["classifier"]["by_noise"]
        centres = [math.sqrt(r["sigma_low"] * r["sigma_high"]) for r in rows]
        axes.semilogx(centres, [r["accuracy"] for r in rows], "o-", label=f"seed {seed}")
    axes.axhline(0.1, color="grey", linestyle="--", label="chance (1/10)")
    axes.set(xlabel="noise level σ = b/a", ylabel="held-out accuracy", ylim=(0, 1.02),
             title="noise-aware classifier of the unconditional model")  # fmt: skip
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=120)
    return True


def candidate(text: str) -> tuple:
    """``"micro:800"`` → ("micro", 800); ``"0.28:2"`` → (0.28, 2.0)."""
    first, second = text.split(":")
    try:
        return float(first), float(second)
    except ValueError:
        return first, int(second)


def store(args, seed: int, seed_record: dict) -> None:
    """Add one seed's record to ``args.results`` (re-read first: another run may have added seeds). The study keeps
    one protocol (another protocol's seeds are dropped); the search keeps one run per protocol in ``runs``."""
    protocol = {k: getattr(args, k) for k in ("n", "draws", "sampler", "steps", "interval", *GRID)}
    if args.search:
        protocol.update(intervals=[list(i) for i in args.intervals], guides=[list(g) for g in args.guides])
    recorded = read_results(args.results) if args.results.is_file() else {}
    runs = recorded.get("runs", []) if args.search else [recorded] if recorded.get("protocol") == protocol else []
    run = next((r for r in runs if r["protocol"] == protocol), None)
    if run is None:
        run = {"seeds": {}}
        runs.append(run)
    run.update(environment=environment(), protocol=protocol, timing="interleaved: draw by draw, every setting of a "
               "model in turn in one process; time_ratio = a setting's time in the pipeline calls over the unguided "
               "setting's of the same model (the metric excluded)")  # fmt: skip
    run["seeds"][str(seed)] = seed_record
    write_results(args.results, {"runs": runs} if args.search else run)


def main(argv: list[str] | None = None) -> int:
    from scratch_diffusion.demo.config import DEFAULTS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output_dir", type=Path, default=ROOT / "outputs" / "guidance-bench", help="models")
    parser.add_argument("--conditional_dirs", type=Path, nargs="+", help="demo output folders to reuse, one per seed")
    parser.add_argument("--results", type=Path, default=None, help=f"default {RESULTS.relative_to(ROOT)}")
    parser.add_argument("--table", action="store_true", help="print the recorded table and exit")
    parser.add_argument("--search", action="store_true", help="guide recipes and intervals (--results default "
                        f"{SEARCH_RESULTS.relative_to(ROOT)})")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="toy models, a few images: the script end to end")
    parser.add_argument("--n", type=int, default=1000, help="images per draw")
    parser.add_argument("--draws", type=int, default=3, help="independent draws per setting")
    parser.add_argument("--sampler", default="flow Heun", help="the demo's sampler names")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--interval", type=float, nargs=2, default=list(DEFAULTS["guidance_interval"]))
    for name, values in GRID.items():
        parser.add_argument(f"--{name}", type=float, nargs="+", default=None, help=f"default {values}")
    parser.add_argument("--guides", type=candidate, nargs="+", help="--search: guide candidates MODEL:STEPS (default "
                        + " ".join(f"{m}:{n}" for m, n in GUIDE_CANDIDATES) + ")")  # fmt: skip
    parser.add_argument("--intervals", type=candidate, nargs="+", help="--search: intervals LO:HI of σ (default "
                        + " ".join(f"{lo:g}:{hi:g}" for lo, hi in INTERVAL_CANDIDATES) + ")")  # fmt: skip
    parser.add_argument("--num_threads", type=int, default=2)
    parser.add_argument("--sample_batch_size", type=int, default=250)
    args = parser.parse_args(argv)
    args.results = args.results or (SEARCH_RESULTS if args.search else RESULTS)
    show = search_table if args.search else table
    if args.table:
        print(show(read_results(args.results)))
        return 0
    if args.conditional_dirs and len(args.conditional_dirs) != len(args.seeds):
        parser.error(f"--conditional_dirs: {len(args.conditional_dirs)} folders for {len(args.seeds)} seeds.")
    grid = QUICK_GRID if args.quick else (SEARCH_GRID if args.search else GRID)
    for name in GRID:
        setattr(args, name, getattr(args, name) or grid.get(name, GRID[name]))
    args.intervals = [tuple(args.interval)] if args.quick else (args.intervals or INTERVAL_CANDIDATES)
    args.guides = [("micro", 4)] if args.quick else (args.guides or GUIDE_CANDIDATES)
    if args.quick:
        args.n, args.draws = min(args.n, 30), min(args.draws, 2)
    torch.set_num_threads(args.num_threads)
    for i, seed in enumerate(args.seeds):
        given = args.conditional_dirs[i] if args.conditional_dirs else None
        store(args, seed, (run_search if args.search else run_seed)(seed, args, given))
    record = read_results(args.results)
    if not args.search and plot_accuracy(record, args.results.with_name(ACCURACY_PLOT.name)):
        print(f"plot: {args.results.with_name(ACCURACY_PLOT.name)}")
    print(show(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
