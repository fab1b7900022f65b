"""The control and editing study's tables and targets (``benchmarks/bench_control.py --table``), from its records.

A record is what ``control_study.run_setting`` returns (means over draws, with each draw's values in ``*_draws``);
over several seeds the records of one setting are merged here (means of the means, every draw's values pooled).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from scratch_diffusion.demo.control_data import gap_closed

MEANS = ("fd_ratio", "class_match", "consistency", "l2_to_input", "l2_to_clean", "seconds", "nfe")


def merged(record: dict) -> dict[str, dict]:
    """One record per setting key over the recorded seeds: numbers averaged, draws pooled, errors maximised."""
    by_key: dict[str, list[dict]] = {}
    for seed_record in record["seeds"].values():
        for key, r in seed_record["settings"].items():
            by_key.setdefault(key, []).append(r)
    out = {}
    for key, rows in by_key.items():
        r = dict(rows[0])
        for name in MEANS:
            if name in r and r[name] is not None:
                r[name] = statistics.fmean(row[name] for row in rows)
        for name in [k for k, v in r.items() if k.endswith("_draws") and isinstance(v, list)]:
            r[name] = [v for row in rows for v in row[name]]
        if "known_region_max_abs_error" in r:
            r["known_region_max_abs_error"] = max(row["known_region_max_abs_error"] for row in rows)
        r["seeds"] = len(rows)
        out[key] = r
    return out


def of(rows: dict[str, dict], **where) -> list[dict]:
    return [r for r in rows.values() if all(r.get(k) == v for k, v in where.items())]


def inpainting_summary(rows: dict[str, dict], steps: int) -> dict[str, dict]:
    """Per mask: the mean fill's and the real digits' class match, each completion's gap closed, the best completion
    (highest class match) and RePaint's largest gain in class match over replacement at the same evaluations."""
    real = of(rows, method="real digit")[0]["class_match"]
    summary = {}
    for mask in dict.fromkeys(r["mask"] for r in rows.values() if r["task"] == "inpainting"):
        fill = of(rows, task="inpainting", mask=mask, method="mean fill")[0]["class_match"]
        completions = [r for r in of(rows, task="inpainting", mask=mask) if r["evaluations"]]
        gaps = {r["key"]: gap_closed(r["class_match"], fill, real) for r in completions}
        replacement = {r["nfe"]: r for r in of(rows, task="inpainting", mask=mask, method="replacement")}
        repaint = [r for r in of(rows, task="inpainting", mask=mask, method="RePaint") if r["nfe"] in replacement]
        gains = sorted(((r["class_match"] - replacement[r["nfe"]]["class_match"], r) for r in repaint),
                       key=lambda pair: (pair[1]["nfe"], pair[1]["key"]))  # fmt: skip
        summary[mask] = {"fill": fill, "real": real, "gaps": gaps, "gains": gains,
                         "best": max(completions, key=lambda r: r["class_match"], default=None)}  # fmt: skip
    return summary


def control_summary(rows: dict[str, dict], fraction: float) -> dict:
    """ControlNet against unconditional sampling and loss guidance: the consistency gain of the study's ControlNet
    setting (the most steps), and the cost check — the cheapest ControlNet setting at least as consistent as the most
    consistent loss guidance, met where it costs at most ``fraction`` × that setting's evaluations."""
    controls = of(rows, method="ControlNet", inputs="held-out")
    unconditional = of(rows, method="unconditional")
    if not controls or not unconditional:
        return {}
    control, unconditional = max(controls, key=lambda r: r["nfe"]), unconditional[0]
    fair = next(iter(of(rows, method="ControlNet", inputs="training")), None)
    best_guided = min(of(rows, method="loss guidance"), key=lambda r: r["consistency"], default=None)
    as_good = [r for r in controls if best_guided is None or r["consistency"] <= best_guided["consistency"]]
    cheapest = min(as_good, key=lambda r: r["nfe"], default=None)
    cost_met = best_guided is None or (cheapest is not None and cheapest["nfe"] <= fraction * best_guided["nfe"])
    return {"control": control, "training_controls": fair, "unconditional": unconditional,
            "gain": unconditional["consistency"] / control["consistency"], "cheapest_control": cheapest,
            "most_consistent_guided": best_guided, "cost_met": cost_met}  # fmt: skip


def targets(rows: dict[str, dict], t: dict, steps: int) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each of issue 22's evidence targets."""
    checks = []
    errors = [r["known_region_max_abs_error"] for r in rows.values() if "known_region_max_abs_error" in r and
              r["evaluations"]]  # fmt: skip
    largest = max(errors, default=None)
    checks.append(("inpainting: known region of the output = input exactly",
                   "not measured" if largest is None else f"largest error {largest:g}", largest == 0))  # fmt: skip
    for mask, s in inpainting_summary(rows, steps).items():
        best, bar = s["best"], t["gap_centre"] if "centre" in mask else t["gap_halves"]
        gap = s["gaps"][best["key"]]
        checks.append((f"inpainting {mask}: gap closed ≥ {100 * bar:.0f} %, FD ≤ {t['fd']:g}×",
                       f"{best_name(best)} ({best['nfe']:g} evals): {percent(gap)} (match "
                       f"{percent(best['class_match'])}, fill {percent(s['fill'])}, real {percent(s['real'])}), FD "
                       f"{best['fd_ratio']:.2f}×",
                       gap is not None and gap >= bar and best["fd_ratio"] <= t["fd"]))  # fmt: skip
        for within in (True, False):  # at the study's step count's evaluations, then at larger budgets
            gains = [(gain, r) for gain, r in s["gains"] if (r["nfe"] <= steps) == within]
            if not gains:
                continue
            where = f"≤ {steps}" if within else f"> {steps}"
            listed = "; ".join(f"{best_name(r)} ({r['nfe']:g}): {100 * gain:+.1f}" for gain, r in gains)
            checks.append((f"inpainting {mask}: RePaint ≥ +{100 * t['repaint_points']:.0f} points of class match over "
                           f"replacement at equal evaluations ({where})", listed + " points",
                           max(gain for gain, _ in gains) >= t["repaint_points"]))  # fmt: skip
    for corruption in dict.fromkeys(r["corruption"] for r in of(rows, method="SDEdit")):
        line = sorted(of(rows, method="SDEdit", corruption=corruption), key=lambda r: r["strength"])
        good = [r for r in line if r["fd_ratio"] <= t["fd"] and r["class_match"] >= t["class_preserved"]]
        near = min(line, key=lambda r: max(r["fd_ratio"] / t["fd"], t["class_preserved"] / max(r["class_match"], 1e-9)))
        shown = good or [near]
        listed = ", ".join(f"s={r['strength']:g}: FD {r['fd_ratio']:.2f}×, class kept {percent(r['class_match'])}"
                           for r in shown)  # fmt: skip
        measured = ("" if good else "none; closest ") + listed
        checks.append((f"image-to-image, {corruption}: a strength with FD ≤ {t['fd']:g}× and class kept ≥ "
                       f"{100 * t['class_preserved']:.0f} %", measured, bool(good)))  # fmt: skip
    c = control_summary(rows, t["cost_fraction"])
    if c:
        control = c["control"]
        checks.append((f"ControlNet: consistency ≥ {t['consistency_gain']:g}× better than unconditional samples'",
                       f"{c['gain']:.1f}× ({control['consistency']:.2e} vs {c['unconditional']['consistency']:.2e})",
                       c["gain"] >= t["consistency_gain"]))  # fmt: skip
        fair = c["training_controls"]  # its FD is not lowered by controls from the reference's own digits
        judged = fair or control
        measured = f"FD {control['fd_ratio']:.2f}×, class match {percent(control['class_match'])}"
        if fair is not None:
            measured += (f"; with training-digit controls FD {fair['fd_ratio']:.2f}×, class match "
                         f"{percent(fair['class_match'])}")  # fmt: skip
        checks.append((f"ControlNet: FD ≤ {t['fd']:g}× (with training-digit controls where measured; class match "
                       "reported)", measured, judged["fd_ratio"] <= t["fd"]))  # fmt: skip
        cheapest, best = c["cheapest_control"], c["most_consistent_guided"]
        if best is None:
            measured = "no loss guidance measured"
        else:
            measured = (f"most consistent loss guidance: {best_name(best)}, {best['consistency']:.2e} at "
                        f"{best['nfe']:g} evals; cheapest ControlNet at least as consistent: ")  # fmt: skip
            measured += "none" if cheapest is None else (
                f"{best_name(cheapest)}, {cheapest['consistency']:.2e} at {cheapest['nfe']:g} evals "
                f"({cheapest['nfe'] / best['nfe']:.2f}× the evaluations)"
            )
        checks.append(("ControlNet at least as consistent as loss guidance at ≤ 1/3 of its evaluations", measured,
                       c["cost_met"]))  # fmt: skip
    return checks


def best_name(r: dict) -> str:
    name = r["method"]
    if name == "RePaint":
        name += f" j={r['jump_length']}, r={r['jump_n_sample']}"
    elif name == "loss guidance":
        name += f" s={r['scale']:g}"
    return name + (f", {r['steps']} steps" if r.get("steps") else "")


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def copying_text(r: dict) -> str:
    """``"0.93 (real 0.95); 0.1 % closer"``: the median d_train / d_held, the real digits', the share of outputs
    closer to a training digit than the nearest 1 % of real held-out digits."""
    c = r.get("copying")
    if not c or r.get("inputs") == "training":  # outputs of training-digit controls are near them by design
        return "–"
    closer = percent(c["closer_than_real_1st_percentile"])
    return f"{c['median_ratio']:.2f} (real {c['real_median_ratio']:.2f}); {closer}"


def control_tables(record: dict, setting_text: Callable, evaluations_text: Callable, spread: Callable,
                   t: dict) -> str:  # fmt: skip
    """The markdown of the study: protocol line, inpainting, image-to-image, control, targets."""
    rows, p = merged(record), record["protocol"]
    seeds = ", ".join(sorted(record["seeds"]))
    models = next(iter(record["seeds"].values()))["models"]
    lines = [f"{p['sampler']}, {p['steps']} steps; n = {p['n']} held-out digits (cycled) × {p['draws']} draws per "
             f"setting; seeds {seeds}; mean ± spread over draws; class match by the metric's digits CNN against the "
             "input digit's label; FD / baseline against the held-out split (the inputs' own digits: read edits "
             "beside the real digits' row).", ""]  # fmt: skip
    summary = inpainting_summary(rows, p["steps"])
    lines += ["| mask | method | model evals per image | class match | gap closed | FD / baseline | known region "
              "max abs error | copying: d_train / d_held (real); closer than real 1 % |",
              "|---|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    real = of(rows, method="real digit")[0]
    lines.append(f"| – | real digit | – | {spread(real, 'class_match', 100, 1)} % | 100 % | "
                 f"{spread(real, 'fd_ratio')}× | – | – |")  # fmt: skip
    for mask, s in summary.items():
        for r in of(rows, task="inpainting", mask=mask):
            gap = "0 %" if r["method"] == "mean fill" else percent(s["gaps"].get(r["key"]))
            error = f"{r['known_region_max_abs_error']:g}" if r["evaluations"] else "–"
            lines.append(f"| {mask} | {setting_text(r)} | {evaluations_text(r)} | "
                         f"{spread(r, 'class_match', 100, 1)} % | {gap} | {spread(r, 'fd_ratio')}× | {error} | "
                         f"{copying_text(r)} |")  # fmt: skip
    lines += ["", "| corruption | setting | model evals per image | FD / baseline | L2 to input | L2 to clean digit | "
              "class kept |", "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in sorted(of(rows, task="img2img"), key=lambda r: (r["corruption"], r["strength"] or -1)):
        l2_input = spread(r, "l2_to_input", digits=3) if r["method"] == "SDEdit" else "0"
        lines.append(f"| {r['corruption']} | {setting_text(r)} | {evaluations_text(r)} | {spread(r, 'fd_ratio')}× | "
                     f"{l2_input} | {spread(r, 'l2_to_clean', digits=3)} | "
                     f"{spread(r, 'class_match', 100, 1)} % |")  # fmt: skip
    c = control_summary(rows, t["cost_fraction"])
    net = models.get("controlnet", {})
    lines += ["", f"Control network: {net.get('parameters', 0) / 1e6:.2f} M parameters, {net.get('steps')} training "
              f"steps in {net.get('seconds', 0) / 60:.1f} min ({net.get('num_threads')} torch thread(s)); "
              f"`{net.get('command', '')}`.", "",
              "| control | model evals per image | consistency (MSE of 4×4 pools, ×10⁻³) | × better than "
              "unconditional | class match | FD / baseline | time × unconditional | copying: d_train / d_held "
              "(real); closer than real 1 % |", "|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    order = {"unconditional": 0, "ControlNet": 1, "loss guidance": 2}
    for r in sorted(of(rows, task="control"), key=lambda r: (order[r["method"]], r["nfe"], r["scale"] or 0)):
        gain = c["unconditional"]["consistency"] / r["consistency"] if c else None
        time_ratio = r["seconds"] / c["unconditional"]["seconds"] if c else None
        lines.append(f"| {setting_text(r)} | {evaluations_text(r)} | {spread(r, 'consistency', 1e3, 3)} | "
                     f"{'–' if gain is None else f'{gain:.1f}×'} | {spread(r, 'class_match', 100, 1)} % | "
                     f"{spread(r, 'fd_ratio')}× | {'–' if time_ratio is None else f'{time_ratio:.2f}'} | "
                     f"{copying_text(r)} |")  # fmt: skip
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    checks = targets(rows, t, p["steps"])
    lines += [f"| {name} | {measured} | {'yes' if met else '**no**'} |" for name, measured, met in checks]
    return "\n".join(lines)
