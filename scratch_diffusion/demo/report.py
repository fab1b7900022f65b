"""Step 4 of the demo in text: ``metrics.md``, and the documentation's demo table, both from ``metrics.json``'s content.

``python -m scratch_diffusion.demo.readme_table outputs/demo/metrics.json`` prints the documentation's table.
A report is the dict the demo writes as ``metrics.json``; its ``results`` rows and ``best`` row are
:meth:`SampleSet.row` dicts (the setting, then :func:`scratch_diffusion.metrics.evaluate_samples`' numbers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from scratch_diffusion import metrics
from scratch_diffusion.demo.editing_stage import editing_text
from scratch_diffusion.demo.few_step_stage import few_step_text
from scratch_diffusion.demo.likelihood import likelihood_text
from scratch_diffusion.demo.quality import bar_text, guided_text
from scratch_diffusion.demo.rules import DENOISERS, RULES_STAGE, interval_text, rule_text


class Column(NamedTuple):
    header: str
    align: str  # a markdown alignment row cell: "---" (left) or "---:" (right)
    cell: Callable[[dict], str]


def _column(header: str, cell: Callable[[dict], str], right: bool = True) -> Column:
    return Column(header, "---:" if right else "---", cell)


STAGE = _column("stage", lambda r: r["stage"], right=False)
SAMPLER = _column("sampler", lambda r: r["sampler"], right=False)
STEPS = _column("steps", lambda r: f"{r['steps']}")


def row_evaluations(r: dict) -> dict[str, float]:
    """A row's model evaluations per image by model, as the pipeline counted them.

    Rows written before the counts were read from the pipeline (no ``evaluations`` key) recorded one evaluation per
    sampler step even for a classifier-free guided step; theirs are corrected here: both halves, 2·nfe at w ≠ 1.
    """
    if "evaluations" in r:
        return r["evaluations"]
    return {"unet": r["nfe"] * (2 if r["guidance_scale"] != 1 else 1)}


def evaluations_cell(r: dict) -> str:
    """``"18"``; with a guide ``"18 (9 + 9 guide)"``."""
    evaluations = row_evaluations(r)
    total = sum(count for model, count in evaluations.items() if model in DENOISERS)
    if "guide_unet" not in evaluations:
        return f"{total:g}"
    return f"{total:g} ({evaluations.get('unet', 0):g} + {evaluations['guide_unet']:g} guide)"


def guidance_cell(r: dict) -> str:
    """``"1.5"`` (plain classifier-free guidance), or the rule: ``"interval CFG w=1.5, σ ∈ (0.28, 5.42]"``."""
    rule = r.get("rule", "CFG")
    if rule == "CFG":
        return f"{r['guidance_scale']:g}"
    return rule_text(rule, r["guidance_scale"], r.get("interval"))


NFE = _column("UNet evals", evaluations_cell)
GUIDANCE = _column("guidance", guidance_cell)


def _spread(r: dict) -> str:
    """`` ± 0.12``: the FD ratio's standard deviation over a final setting's draws ("" for one draw)."""
    return f" ± {r['fd_ratio_std_over_draws']:.2f}" if r.get("draws", 1) > 1 else ""


N = _column("n", lambda r: f"{r['n']}" + (f" × {r['draws']}" if r.get("draws", 1) > 1 else ""))
FD = _column("FD ↓", lambda r: f"{r['fd']:.2f}")
FD_RATIO = _column("FD / baseline", lambda r: f"{r['fd_ratio']:.2f}×" + _spread(r))
CLASS_MATCH = _column("class match", lambda r: "–" if r["class_match"] is None else f"{100 * r['class_match']:.1f} %")
CONFIDENT = _column("confident", lambda r: f"{100 * r['confident_fraction']:.1f} %")
SECONDS = _column("sampling s", lambda r: f"{r['seconds']:.1f}")
KID = _column(
    "KID ↓ (real)", lambda r: f"{r['kid']:.0f} ({r['kid_real_baseline']:.0f} ± {r['kid_real_baseline_std']:.0f})"
)


def _baseline(header: str) -> Column:
    return _column(header, lambda r: f"{r['fd_real_baseline']:.2f} ± {r['fd_real_baseline_std']:.2f}")


# metrics.md: every number of every row; the best row's FD and ratio in bold.
METRICS_MD_COLUMNS = (STAGE, SAMPLER, STEPS, NFE, GUIDANCE, N, FD, _baseline("real baseline (same n)"), FD_RATIO,
                      KID, CLASS_MATCH, CONFIDENT, SECONDS)  # fmt: skip
METRICS_MD_BOLD = (FD, FD_RATIO)
# The docs' table: no timings (machine-dependent beside the caption's totals); the best row's setting in bold too.
README_COLUMNS = (STAGE, SAMPLER, STEPS, NFE, GUIDANCE, N, FD, _baseline("real baseline"), FD_RATIO, KID, CLASS_MATCH)
README_BOLD = (STAGE, SAMPLER, FD, FD_RATIO)


def results_table(rows: list[dict], best: dict, columns: tuple[Column, ...], bold: tuple[Column, ...]) -> str:
    """One markdown row per sample set; the ``bold`` columns of the ``best`` row in bold."""
    lines = [
        "| " + " | ".join(c.header for c in columns) + " |",
        "|" + "|".join(c.align for c in columns) + "|",
    ]
    for row in rows:
        cells = [f"**{c.cell(row)}**" if row == best and c in bold else c.cell(row) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_sentence(report: dict) -> str:
    """The best setting beside its baseline, and the quality bar's verdict."""
    best, verdict = report["best"], report["quality_bar"]
    name = f"{best['sampler']}, {best['steps']} steps, w={best['guidance_scale']:g}"
    return (
        f"Best (final stage): **{name}** — FD {best['fd']:.2f} vs real-data baseline "
        f"{best['fd_real_baseline']:.2f} ± {best['fd_real_baseline_std']:.2f} at n={best['n']} "
        f"(×{best['fd_ratio']:.2f}{_spread(best)}{_draws_text(best)}); class match {100 * best['class_match']:.1f} %"
        + guided_text(verdict)
        + f". Quality bar ({bar_text(verdict)}): "
        + ("met." if verdict["met"] else "**not met**.")
    )


def _draws_text(r: dict) -> str:
    """``", mean of 3 draws"`` for a multi-draw row ("" otherwise)."""
    return f", mean of {r['draws']} draws" if r.get("draws", 1) > 1 else ""


def training_text(record: dict | None) -> str:
    """``"1500 training steps in 3.9 min"`` (latent: the VAE's steps and time first; VAE + UNet = the training time)."""
    if not record:
        return "a reused pipeline"
    unet = f"{record['steps']} training steps in {record['seconds'] / 60:.1f} min"
    vae = record.get("vae")
    if not vae:
        return unet
    latents = "×".join(map(str, vae["latent_shape"]))
    return (
        f"a tiny VAE ({vae['steps']} steps in {vae['seconds'] / 60:.1f} min; held-out PSNR {vae['psnr']:.1f} dB), "
        f"then {unet} on its {latents} latents"
    )


def metrics_markdown(report: dict) -> str:
    """The content of ``metrics.md``."""
    parametrization, best = report["trained_parametrization"], report["best"]
    trained = training_text(report["training"]) + "."
    name = f"{best['sampler']}, {best['steps']} steps, w={best['guidance_scale']:g}"
    return "\n".join(
        [
            "# Demo results",
            "",
            f"Model: {report['pipeline']} ({parametrization['noise_path']} path, "
            f"{parametrization['prediction_type']}); " + trained,
            "",
            results_table(report["results"], best, METRICS_MD_COLUMNS, METRICS_MD_BOLD),
            "",
            best_sentence(report),
            "",
            *([rules_paragraph(report["guidance_rules"]), ""] if report.get("guidance_rules") else []),
            *([editing_paragraph(report["control_and_editing"]), ""] if report.get("control_and_editing") else []),
            *([few_step_paragraph(report["few_step"]), ""] if report.get("few_step") else []),
            *([f"Bits/dim: {likelihood_text(report['likelihood'])}.", ""] if report.get("likelihood") else []),
            metrics.markdown_summary(best, title=f"Best: {name}"),
            "",
        ]
    )


def readme_table(report: dict) -> str:
    """The README's demo table with its caption and verdict line (what ``demo.readme_table`` prints)."""
    record, settings, best, verdict = report["training"], report["settings"], report["best"], report["quality_bar"]
    trained = training_text(record)
    caption = (
        f"Measured here ({trained}; whole demo {report['seconds_total'] / 60:.1f} min; "
        f"{settings['num_eval_samples']} samples in the final stage"
        + (
            f" (× {draws} independent draws, FD averaged, ± its spread)"
            if (draws := settings.get("eval_draws", 1)) > 1
            else ""
        )
        + f", {settings['num_sweep_samples']} in the sweep; "
        "baseline = the same distance between real digit sets of the same size):"
    )
    guided = sorted(
        100 * row["class_match"]
        for row in report["results"]
        if row["guidance_scale"] > 1 and row.get("rule", "CFG") == "CFG" and row["stage"] != RULES_STAGE
    )
    lowest, highest = (f"{guided[0]:.1f}", f"{guided[-1]:.1f}") if guided else ("", "")
    guided_range = f", {lowest if lowest == highest else f'{lowest}–{highest}'} % with guidance" if guided else ""
    verdict_line = (
        f"Quality bar ({bar_text(verdict)}): {'met' if verdict['met'] else 'not met'} — {best['sampler']}, "
        f"{best['steps']} steps: {best['fd_ratio']:.2f}×{_spread(best)}; "
        f"class match {100 * best['class_match']:.1f} % unguided"
        f"{guided_range}."
    )
    table = results_table(report["results"], best, README_COLUMNS, README_BOLD)
    rules = [rules_paragraph(report["guidance_rules"])] if report.get("guidance_rules") else []
    likelihood = [f"Bits/dim: {likelihood_text(report['likelihood'])}."] if report.get("likelihood") else []
    return "\n\n".join([caption, table, verdict_line, *rules, *likelihood])


def _best_text(rule: str, best: dict | None) -> str:
    """``"interval CFG w=1.5, σ ∈ (0.28, 5.42], 6 steps: 1.21× at 99.3 % class match"``."""
    if best is None:
        return f"{rule}: –"
    name = "unguided" if rule == "unguided" else ("CFG " if rule == "CFG" else "") + best["setting"]
    match = "" if best["class_match"] is None else f" at {100 * best['class_match']:.1f} % class match"
    return f"{name}, {best['steps']} steps: {best['fd_ratio']:.2f}×{match}"


def rules_text(summary: dict) -> str:
    """One line: the budget and each rule's lowest FD ratio with its class match."""
    best = summary["best"]
    parts = [_best_text(rule, best.get(rule)) for rule in ("unguided", "CFG", "interval CFG", "autoguidance")]
    return f"at {summary['budget']:g} model evaluations per image ({summary['sampler']}): " + "; ".join(parts)


def rules_paragraph(summary: dict) -> str:
    """The guidance stage in words: the budget, the interval, the guide and its cost, each rule's best."""
    guide, interval = summary.get("guide") or {}, summary.get("interval")
    cost = guide.get("cost")
    guide_words = ""
    if guide:
        guide_words = (
            f" The autoguidance guide is a {guide['model']} UNet trained for {guide['steps']} steps "
            f"({guide['seconds']:.0f} s) with `--guide_for` the pipeline"
            + (
                f"; {cost['guide_parameters'] / 1e6:.2f} M parameters against the UNet's "
                f"{cost['unet_parameters'] / 1e6:.2f} M, one of its evaluations takes "
                f"{cost['guide_to_unet_time']:.2f}× a UNet evaluation"
                if cost
                else ""
            )
            + "."
        )
    where = f" Interval CFG guides for {interval_text(interval)} only." if interval else ""
    return (
        f"Guidance at equal cost (stage `{RULES_STAGE}`): every rule {rules_text(summary)} (lowest FD ratio of each "
        "rule; both halves of a CFG step and every guide evaluation counted)." + where + guide_words
    )


def editing_paragraph(summary: dict) -> str:
    """The control and editing stage in words: its numbers, n and evaluations per image (``editing_stage``)."""
    recipe = summary["recipe"]
    return (f"Control and editing (null class, {recipe['sampler']} at {recipe['steps']} steps, one draw of "
            f"{summary['n']} held-out digits per setting — a small n: the study with n = 1000 × 3 draws is "
            f"`benchmarks/bench_control.py`): {editing_text(summary)}.")  # fmt: skip


def few_step_paragraph(summary: dict) -> str:
    """The few-step stage in words (``few_step_stage``): the tuning and the scores beside the teacher's."""
    return (f"Few-step (`train.py --init_from` this pipeline `--objective consistency`, the command in "
            f"`few_step.json`; unguided; the study with 3 tuning seeds, MeanFlow and training from scratch is "
            f"`benchmarks/bench_few_step_models.py`): {few_step_text(summary)}.")  # fmt: skip
