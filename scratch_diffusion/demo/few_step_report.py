"""The few-step study's tables and targets (``benchmarks/bench_few_step_models.py --table``), from its records.

A record (the results file) holds ``protocol`` and ``models``: per model (``few_step_study.Model.row``) its
``training`` record and its ``settings``, each setting what ``few_step_study.score_setting`` returns (numbers
averaged over draws). A number of the tuned and from-scratch models is the mean over the tuning seeds ± their sample
standard deviation; a teacher's (one model) ± the spread of its FD over draws.
"""

from __future__ import annotations

import statistics

# issue 23's targets, against the teacher's best FD at ≤ max_teacher_nfe evaluations (the same n and draws)
TARGETS = {"fd_at_2": 1.10, "fd_at_1": 1.4, "class_match_at_1": 0.95, "training_time": 1.0, "max_teacher_nfe": 10}
NAMES = {"consistency": "consistency-tuned", "meanflow": "MeanFlow-tuned"}


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (None for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def spread_text(values: list[float], scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    """``"1.21 ± 0.03"`` (one value: ``"1.21"``)."""
    mean, std = mean_std([scale * v for v in values])
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}") + unit


def models_of(record: dict, group: str, objective: str | None = None) -> list[dict]:
    return [m for m in record["models"].values() if m["group"] == group and
            (objective is None or m["objective"] == objective)]  # fmt: skip


def teacher(record: dict) -> dict | None:
    return record["models"].get("teacher")


def by_setting(models: list[dict]) -> dict[str, list[dict]]:
    """One list of rows (one per model, in seed order) per setting key, in the settings' order."""
    rows: dict[str, list[dict]] = {}
    for model in sorted(models, key=lambda m: m["seed"] if m["seed"] is not None else -1):
        for key, row in model["settings"].items():
            rows.setdefault(key, []).append(row)
    return rows


def teacher_best(record: dict, max_nfe: int = TARGETS["max_teacher_nfe"]) -> dict | None:
    """The teacher's setting of lowest FD at ≤ ``max_nfe`` evaluations per image (None before it is measured)."""
    model = teacher(record)
    rows = [r for r in (model or {}).get("settings", {}).values() if r["nfe"] <= max_nfe]
    return min(rows, key=lambda r: r["fd"], default=None)


def best_within(rows: dict[str, list[dict]], evaluations: int) -> tuple[str, list[dict]] | None:
    """The setting of lowest mean FD over the seeds among those of ≤ ``evaluations`` per image."""
    within = [(key, rs) for key, rs in rows.items() if rs[0]["nfe"] <= evaluations]
    return min(within, key=lambda pair: mean_std([r["fd"] for r in pair[1]])[0], default=None)


def targets(record: dict, t: dict = TARGETS) -> list[dict]:
    """Per tuning objective: issue 23's four targets on the means over the seeds, each with what was measured."""
    best, reference = teacher_best(record, t["max_teacher_nfe"]), teacher(record)
    checks = []
    for objective in dict.fromkeys(m["objective"] for m in models_of(record, "tuned")):
        models = models_of(record, "tuned", objective)
        rows, name = by_setting(models), NAMES.get(objective, objective)
        for evaluations, bar in ((2, t["fd_at_2"]), (1, t["fd_at_1"])):
            found = best_within(rows, evaluations)
            target = (f"{name}: FD at ≤ {evaluations} evaluation{'s' * (evaluations > 1)} per image ≤ {bar:g}× the "
                      f"teacher's best FD (≤ {t['max_teacher_nfe']} evaluations)")  # fmt: skip
            if found is None or best is None:
                checks.append({"objective": objective, "target": target, "measured": "not measured", "met": False})
                continue
            fds = [r["fd"] for r in found[1]]
            ratio = mean_std(fds)[0] / best["fd"]
            measured = (f"{found[0]}: FD {spread_text(fds)} = {ratio:.2f}× the teacher's {best['fd']:.2f} "
                        f"({best['sampler']}, {best['steps']} steps, {best['nfe']:g} evaluations)")  # fmt: skip
            checks.append({"objective": objective, "target": target, "measured": measured, "value": ratio,
                           "met": ratio <= bar})  # fmt: skip
        found = best_within(rows, 1)
        target = f"{name}: class match ≥ {100 * t['class_match_at_1']:.0f} % at 1 evaluation"
        if found is None:
            checks.append({"objective": objective, "target": target, "measured": "not measured", "met": False})
        else:
            matches = [r["class_match"] for r in found[1]]
            value = mean_std(matches)[0]
            checks.append({"objective": objective, "target": target, "value": value, "met": value >=
                           t["class_match_at_1"], "measured": f"{spread_text(matches, 100, 1)} %"})  # fmt: skip
        seconds = [m["training"]["seconds"] for m in models]
        target = f"{name}: extra training time ≤ {t['training_time']:g}× the teacher's"
        if reference is None or not reference.get("training", {}).get("seconds"):
            checks.append({"objective": objective, "target": target, "measured": "teacher time unknown", "met": False})
            continue
        ratio = mean_std(seconds)[0] / reference["training"]["seconds"]
        teacher_seconds = reference["training"]["seconds"]
        measured = f"{spread_text(seconds, digits=0)} s = {ratio:.2f}× the teacher's {teacher_seconds:.0f} s"
        checks.append({"objective": objective, "target": target, "measured": measured, "value": ratio,
                       "met": ratio <= t["training_time"]})  # fmt: skip
    return checks


def model_label(model: dict) -> str:
    if model["group"] == "teacher":
        return "teacher (flow model)"
    if model["group"] == "scratch":
        return f"MeanFlow from scratch ({model['training']['steps']} steps)"
    return NAMES.get(model["objective"], model["objective"])


def evaluations_text(row: dict) -> str:
    return f"{row['nfe']:g}"


def score_cells(rows: list[dict], best: dict | None) -> list[str]:
    """FD, FD / baseline, × the teacher's best, KID (real), class match of one setting over its models (one model:
    FD ± its spread over draws)."""
    fds = [r["fd"] for r in rows]
    fd = spread_text(fds) if len(rows) > 1 else spread_text(rows[0]["fd_draws"])
    ratio = spread_text([r["fd_ratio"] for r in rows], unit="×")
    versus = "–" if best is None else f"{mean_std(fds)[0] / best['fd']:.2f}×"
    kid = f"{mean_std([r['kid'] for r in rows])[0]:.0f} ({rows[0]['kid_real_baseline']:.0f})"
    matches = [r["class_match"] for r in rows if r["class_match"] is not None]
    match = f"{spread_text(matches, 100, 1)} %" if matches else "–"
    return [fd, ratio, versus, kid, match]


def scores_table(record: dict) -> list[str]:
    """The teacher's rows, then each tuned objective's and from scratch, one row per sampler × steps."""
    best = teacher_best(record)
    lines = ["| model | seeds | sampler | steps | model evals per image | FD | FD / baseline | × teacher's best FD | "
             "KID (real) | class match |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    groups = [[teacher(record)]] if teacher(record) else []
    for objective in dict.fromkeys(m["objective"] for m in models_of(record, "tuned")):
        groups.append(models_of(record, "tuned", objective))
    if models_of(record, "scratch"):
        groups.append(models_of(record, "scratch"))
    baseline = None
    for models in groups:
        for rows in by_setting(models).values():
            baseline = baseline or rows[0]
            lines.append(f"| {model_label(models[0])} | {len(rows)} | {rows[0]['sampler']} | {rows[0]['steps']} | "
                         f"{evaluations_text(rows[0])} | " + " | ".join(score_cells(rows, best)) + " |")  # fmt: skip
    if baseline is not None:
        lines.append(f"| real digits (baseline, same n) | – | – | – | – | {baseline['fd_real_baseline']:.2f} ± "
                     f"{baseline['fd_real_baseline_std']:.2f} | 1.00× | – | {baseline['kid_real_baseline']:.0f} | "
                     f"{100 * baseline['classifier_accuracy']:.1f} % (held-out accuracy) |")  # fmt: skip
    return lines


def training_table(record: dict) -> list[str]:
    """Training cost: the teacher's, each tuning objective's and from scratch, mean ± std over the seeds."""
    reference = teacher(record)
    teacher_seconds = (reference or {}).get("training", {}).get("seconds")
    lines = ["| model | seeds | steps | seconds (wall) | seconds per step | × teacher's training time | torch "
             "threads |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    groups = [[reference]] if reference else []
    groups += [models_of(record, "tuned", o) for o in dict.fromkeys(m["objective"] for m in models_of(record, "tuned"))]
    groups += [models_of(record, "scratch")] if models_of(record, "scratch") else []
    for models in groups:
        runs = [m["training"] for m in models]
        seconds = [r["seconds"] for r in runs]
        per_step = [r["seconds_per_step"] for r in runs if r.get("seconds_per_step")]
        steps = sorted({r["steps"] for r in runs})
        versus = "–" if not teacher_seconds else f"{mean_std(seconds)[0] / teacher_seconds:.2f}×"
        threads = sorted({str(r.get("num_threads", "?")) for r in runs})
        lines.append(f"| {model_label(models[0])} | {len(models)} | {', '.join(map(str, steps))} | "
                     f"{spread_text(seconds, digits=0)} | {spread_text(per_step, digits=3) if per_step else '–'} | "
                     f"{versus} | {', '.join(threads)} |")  # fmt: skip
    budget = next((m["budget"] for m in models_of(record, "scratch") if m.get("budget")), None)
    if budget:
        tuning, per_step = mean_std(budget["tuning_seconds"])[0], mean_std(budget["tuning_seconds_per_step"])[0]
        steps, trained = budget["steps"], budget["trained_steps"]
        capped = "" if trained == steps else f" (trained: {trained}, --quick)"
        lines += ["", f"From scratch: (the teacher's {budget['teacher_seconds']:.0f} s + MeanFlow tuning's "
                  f"{tuning:.0f} s) / its {per_step:.3f} s per step = {steps} steps{capped}, the MeanFlow recipe "
                  "otherwise, on the teacher's architecture, VAE and latents."]  # fmt: skip
    return lines


def levers_table(record: dict) -> list[str]:
    """Each lever beside its objective's recipe on the same seed: FD / baseline at 1, 2 and 4 steps (one draw for a
    lever), class match at 1 step, training seconds."""
    levers = models_of(record, "lever")
    recipes = [m for m in models_of(record, "tuned") if (m["objective"], m["seed"]) in
               {(lever["objective"], lever["seed"]) for lever in levers}]  # fmt: skip
    steps = sorted({r["steps"] for m in levers + recipes for r in m["settings"].values()})
    lines = ["| objective | run | " + " | ".join(f"FD / baseline, {k} step{'s' * (k > 1)}" for k in steps)
             + " | class match, 1 step | training s |", "|---|---|" + "---:|" * (len(steps) + 2)]  # fmt: skip
    for objective in dict.fromkeys(m["objective"] for m in levers):
        seed = next(m["seed"] for m in levers if m["objective"] == objective)
        reference = [m for m in recipes if m["objective"] == objective and m["seed"] == seed]
        for model in reference + [m for m in levers if m["objective"] == objective]:
            by_steps = {r["steps"]: r for r in model["settings"].values()}
            if model["group"] == "lever":
                changes = ", ".join(f"{k} {v}" for k, v in model["lever"]["changes"].items())
                name = f"{model['lever']['name']} ({changes})"
            else:
                name = f"the recipe (seed {seed})"
            cells = [f"{by_steps[k]['fd_ratio']:.2f}×" if k in by_steps else "–" for k in steps]
            match = f"{100 * by_steps[1]['class_match']:.1f} %" if 1 in by_steps else "–"
            lines.append(f"| {NAMES.get(objective, objective)} | {name} | " + " | ".join(cells) +
                         f" | {match} | {model['training']['seconds']:.0f} |")  # fmt: skip
    return lines


def few_step_tables(record: dict, t: dict = TARGETS) -> str:
    """The markdown of the study: protocol line, scores, training cost, levers, targets."""
    p = record["protocol"]
    seeds = sorted({m["seed"] for m in models_of(record, "tuned")})
    lines = [f"n = {p['n']} × {p['draws']} draws per setting (levers: 1 draw), the same requested labels and noise for "
             f"every model; tuning seeds {', '.join(map(str, seeds)) or '–'}; FD and KID in the digits CNN's features "
             "beside the real baseline at the same n; class match by that CNN against the requested class; model "
             "evaluations per image as the pipeline counts them. Tuned models: mean ± std over the seeds; the "
             "teacher: ± its FD's spread over draws.", ""]  # fmt: skip
    lines += [*scores_table(record), "", *training_table(record)]
    if models_of(record, "lever"):
        lines += ["", *levers_table(record)]
    checks = targets(record, t)
    if checks:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {c['target']} | {c['measured']} | {'yes' if c['met'] else '**no**'} |" for c in checks]
    return "\n".join(lines)
