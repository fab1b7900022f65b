"""The demo's figure ``demo.png``: sample grids (one row per class) and quality against cost and guidance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from scratch_diffusion.demo.quality import QUALITY_BAR, class_match_bar_text, fd_bar_text
from scratch_diffusion.demo.sampling import SampleSet, pick_best

GRID_COLUMNS = 8  # samples per class in each grid of the figure


def class_grid(sample: SampleSet, num_classes: int, columns: int = GRID_COLUMNS, pad: int = 1) -> np.ndarray:
    """A (rows = classes) × ``columns`` mosaic in [0, 1] of the first images of each class (white gaps)."""
    images = (sample.images[:, 0].clamp(-1, 1).numpy() + 1) / 2
    h, w = images.shape[1:]
    grid = np.ones((num_classes * (h + pad) + pad, columns * (w + pad) + pad), np.float32)
    for c in range(num_classes):
        members = np.flatnonzero(sample.labels.numpy() == c)[:columns]
        for j, index in enumerate(members):
            top, left = pad + c * (h + pad), pad + j * (w + pad)
            grid[top : top + h, left : left + w] = images[index]
    return grid


def edit_mosaic(rows: list[torch.Tensor], pad: int = 1) -> np.ndarray:
    """A mosaic in [0, 1] of image rows (each (k, 1, H, W) in [−1, 1]: e.g. input, output, original), white gaps."""
    images = [((r[:, 0].clamp(-1, 1) + 1) / 2).numpy() for r in rows]
    k, h, w = images[0].shape
    grid = np.ones((len(rows) * (h + pad) + pad, k * (w + pad) + pad), np.float32)
    for i, row in enumerate(images):
        for j, image in enumerate(row):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            grid[top : top + h, left : left + w] = image
    return grid


EDIT_INPUTS = {"inpainting": "masked digit, mean-filled", "img2img": "noisy digit", "control": "its 4×4 average pools"}


def save_figure(
    sweep: list[SampleSet],
    guidance: list[SampleSet],
    final: list[SampleSet],
    path: Path,
    num_classes: int,
    rules: list[SampleSet] | None = None,
    edits: dict | None = None,
    few_step: dict | None = None,
) -> None:
    """The demo's figure (matplotlib, Agg).

    Rows of sample grids (one row of digits per class): one per sampler across the step counts, and
    one across guidance scales at the sweep's best sampler/steps. Below, FD / baseline and class
    match against model evaluations per image, and both against the guidance scale. With the guidance
    stage's ``rules``, a row: FD / baseline against class match for CFG, interval CFG and
    autoguidance at equal model evaluations per image, beside the grids of the best interval CFG and
    autoguidance settings. With the control and editing stage's summary (``edits``, ``editing_stage``), a row
    of examples: inpainting, image-to-image and control (input, output and original digit each). With the few-step
    stage's (``few_step``, ``few_step_stage``), a last row: the tuned model's 1-step samples, one per class.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samplers = list(dict.fromkeys(s.sampler for s in sweep))
    steps = sorted({s.steps for s in sweep})
    scales = sorted([pick_best(sweep), *guidance], key=lambda s: s.guidance_scale)
    cols = max(len(steps), len(scales), 4)
    panel_rows = len(samplers) + (1 if guidance else 0)
    rules = rules or []
    plot_rows = 2 if rules else 1
    edit_height = 2.2 if edits else 0
    few_height = 1.6 if few_step else 0
    fig = plt.figure(figsize=(2.3 * cols, 2.95 * panel_rows + 3.4 * plot_rows + edit_height + few_height), dpi=100)
    heights = [2.95] * panel_rows + [3.4] * plot_rows + ([edit_height] if edits else [])
    heights += [few_height] if few_step else []
    grid = fig.add_gridspec(len(heights), cols, height_ratios=heights)

    def panel(row: int, col: int, sample: SampleSet, title: str) -> None:
        ax = fig.add_subplot(grid[row, col])
        ax.imshow(class_grid(sample, num_classes), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        r = sample.results
        ax.set_title(f"{title}\nFD ×{r['fd_ratio']:.2f}, match {100 * r['class_match']:.0f} %", fontsize=7.5)
        if col == 0:
            ax.set_ylabel("class 0 → 9", fontsize=7.5)

    by_key = {(s.sampler, s.steps): s for s in sweep}
    for i, sampler in enumerate(samplers):
        for j, n_steps in enumerate(steps):
            if (sampler, n_steps) in by_key:
                panel(i, j, by_key[(sampler, n_steps)], f"{sampler}, {n_steps} steps")
    if guidance:
        for j, sample in enumerate(scales):
            panel(len(samplers), j, sample, f"{sample.sampler}, {sample.steps} st., w={sample.guidance_scale:g}")

    plots = panel_rows
    plot_quality_vs_cost(
        fig.add_subplot(grid[plots, : cols // 2]), fig.add_subplot(grid[plots, cols // 2 : 3 * cols // 4]), sweep, final
    )
    ax_w = fig.add_subplot(grid[plots, 3 * cols // 4 :])
    if guidance:
        plot_guidance(ax_w, scales)
    else:
        ax_w.axis("off")
    if rules:
        plot_rules(fig.add_subplot(grid[plots + 1, : cols // 2]), rules)
        shown = [best_of(rules, rule) for rule in ("interval CFG", "autoguidance")]
        for j, sample in enumerate(s for s in shown if s is not None):
            ax = fig.add_subplot(grid[plots + 1, cols // 2 + j])
            ax.imshow(class_grid(sample, num_classes), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            r = sample.results
            ax.set_title(f"{sample.rule} w={sample.guidance_scale:g}, {sample.steps} st.\n"
                         f"FD ×{r['fd_ratio']:.2f}, match {100 * r['class_match']:.0f} %", fontsize=7.5)  # fmt: skip
    if edits:
        plot_edits(fig, grid[-2 if few_step else -1, :].subgridspec(1, 3), edits)
    if few_step:
        plot_few_step(fig.add_subplot(grid[-1, cols // 4 : cols - cols // 4]), few_step)
    for ax in fig.axes:
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_quality_vs_cost(ax_fd, ax_match, sweep: list[SampleSet], final: list[SampleSet]) -> None:
    """FD / baseline (log-log) and class match against model evaluations per image, one line per sampler."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    samplers = list(dict.fromkeys(s.sampler for s in sweep))
    for k, sampler in enumerate(samplers):
        rows = sorted((s for s in sweep if s.sampler == sampler), key=lambda s: s.nfe)
        color = f"C{k}"
        x = [s.nfe for s in rows]
        ax_fd.plot(x, [s.results["fd_ratio"] for s in rows], "o-", color=color, label=f"{sampler}, n={rows[0].n}")
        ax_match.plot(x, [100 * s.results["class_match"] for s in rows], "o-", color=color, label=sampler)
        for s in rows:
            ax_fd.annotate(str(s.steps), (s.nfe, s.results["fd_ratio"]), fontsize=6, xytext=(2, 3),
                           textcoords="offset points")  # fmt: skip
        finals = [s for s in final if s.sampler == sampler]
        if finals:
            ax_fd.plot([s.nfe for s in finals], [s.results["fd_ratio"] for s in finals], "*", ms=10, color=color,
                       label=f"{sampler}, n={finals[0].n}")  # fmt: skip
            ax_match.plot([s.nfe for s in finals], [100 * s.results["class_match"] for s in finals], "*", ms=10,
                          color=color)  # fmt: skip
    ax_fd.axhline(1.0, color="k", lw=0.8, label="real vs real")
    ax_fd.axhline(QUALITY_BAR["fd_ratio_max"], color="k", lw=0.8, ls="--", label=f"bar ({fd_bar_text()})")
    for ax in (ax_fd, ax_match):
        ax.set_xscale("log")
        ax.set_xlabel("model evaluations per image", fontsize=8)
    ax_fd.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    for axis in (ax_fd.xaxis, ax_fd.yaxis, ax_match.xaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(NullFormatter())
    ax_fd.set_ylabel("FD / real baseline (same n)", fontsize=8)
    ax_fd.set_title(f"quality vs cost (w={sweep[0].guidance_scale:g}; point labels: steps)", fontsize=8.5)
    ax_fd.legend(fontsize=6, loc="upper right")
    bar_label = f"bar ({class_match_bar_text()})"
    ax_match.axhline(100 * QUALITY_BAR["class_match_min"], color="k", lw=0.8, ls="--", label=bar_label)
    ax_match.set_ylabel("classified as requested (%)", fontsize=8)
    ax_match.set_title("class match", fontsize=8.5)
    ax_match.legend(fontsize=6)


def plot_guidance(ax_w, scales: list[SampleSet]) -> None:
    """FD / baseline (left axis) and class match (right axis) against the guidance scale of one sampler/steps."""
    ws = [s.guidance_scale for s in scales]
    ax_w.plot(ws, [s.results["fd_ratio"] for s in scales], "o-", color="C3")
    ax_w.set_ylabel("FD / real baseline", color="C3", fontsize=8)
    ax_w2 = ax_w.twinx()
    ax_w2.plot(ws, [100 * s.results["class_match"] for s in scales], "s--", color="C2")
    ax_w2.set_ylabel("class match (%)", color="C2", fontsize=8)
    ax_w.set_xlabel("guidance scale w", fontsize=8)
    ax_w.set_title(f"guidance ({scales[0].sampler}, {scales[0].steps} st.)", fontsize=8.5)


def best_of(sets: list[SampleSet], rule: str) -> SampleSet | None:
    """The guided set of ``rule`` with the lowest FD ratio (None if there is none)."""
    of_rule = [s for s in sets if s.rule == rule and s.guidance_scale != 1]
    return min(of_rule, key=lambda s: s.results["fd_ratio"], default=None)


def plot_rules(ax, rules: list[SampleSet]) -> None:
    """FD / baseline against class match at equal model evaluations per image: one line per rule over w (labels: w),
    the unguided set as a star."""
    budget = max(s.nfe for s in rules)
    for k, rule in enumerate(("CFG", "interval CFG", "autoguidance")):
        rows = sorted((s for s in rules if s.rule == rule and s.guidance_scale != 1), key=lambda s: s.guidance_scale)
        if not rows:
            continue
        x = [100 * s.results["class_match"] for s in rows]
        y = [s.results["fd_ratio"] for s in rows]
        ax.plot(x, y, "o-", color=f"C{k}", label=f"{rule}, {rows[0].steps} steps ({rows[0].nfe:g} evals)")
        for s, xi, yi in zip(rows, x, y, strict=True):
            ax.annotate(f"{s.guidance_scale:g}", (xi, yi), fontsize=6, xytext=(2, 3), textcoords="offset points")
    for s in rules:
        if s.rule == "CFG" and s.guidance_scale == 1:
            ax.plot(100 * s.results["class_match"], s.results["fd_ratio"], "*", ms=10, color="k",
                    label=f"unguided, {s.steps} steps ({s.nfe:g} evals)")  # fmt: skip
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xlabel("classified as requested (%)", fontsize=8)
    ax.set_ylabel("FD / real baseline (same n)", fontsize=8)
    ax.set_title(f"guidance at ≤ {budget:g} model evaluations per image (n={rules[0].n}; labels: w)", fontsize=8.5)
    ax.legend(fontsize=6)


def plot_edits(fig, cells, edits: dict) -> None:
    """One panel each of inpainting, image-to-image and control: input, output and original rows of examples, titled
    with the stage's numbers (n images each, one draw)."""
    r, recipe, n = edits["rows"], edits["recipe"], edits["n"]
    gap = edits["inpainting_gap_closed"]
    gap_text = "–" if gap is None else f"{100 * gap:.0f} %"
    inpainting, img2img, control = r["inpainting"], r["img2img"], r["control"]
    titles = {
        "inpainting": f"inpainting, {recipe['mask']} (replacement)\nclass match "
        f"{100 * inpainting['class_match']:.0f} % (mean fill {100 * r['fill']['class_match']:.0f} %, gap closed "
        f"{gap_text})\nFD ×{inpainting['fd_ratio']:.2f}, {inpainting['nfe']:g} evals, n={n}",
        "img2img": f"image-to-image, {recipe['corruption']}, strength {recipe['strength']:g}\nclass kept "
        f"{100 * img2img['class_match']:.0f} %\nFD ×{img2img['fd_ratio']:.2f}, {img2img['nfe']:g} evals, n={n}",
        "control": f"ControlNet, low-resolution control\nconsistency {edits['control_consistency_gain']:.1f}× "
        f"unconditional's, class match {100 * control['class_match']:.0f} %\nFD ×{control['fd_ratio']:.2f}, "
        f"{control['nfe']:g} evals, n={n}",
    }
    for k, (task, rows) in enumerate(edits["examples"].items()):
        ax = fig.add_subplot(cells[0, k])
        ax.imshow(edit_mosaic(rows), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([(i + 0.5) * (rows[0].shape[-2] + 1) for i in range(len(rows))] if k == 0 else [])
        if k == 0:
            ax.set_yticklabels(["input", "output", "original"], fontsize=6.5)
        ax.set_title(titles[task], fontsize=6.5)
        ax.set_xlabel(f"input: {EDIT_INPUTS[task]}", fontsize=6.5)


def plot_few_step(ax, few_step: dict) -> None:
    """The consistency-tuned model's 1-step samples, one per class (0 … 9), titled with its scores beside the
    teacher's at the same evaluations (``few_step_stage``)."""
    tuned, teacher = few_step["tuned"][0], few_step["teacher"][0]
    examples = few_step["examples"]
    ax.imshow(edit_mosaic([examples]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([(j + 0.5) * (examples.shape[-1] + 1) for j in range(len(examples))])
    ax.set_xticklabels([str(c) for c in range(len(examples))], fontsize=6.5)
    ax.set_yticks([])
    ax.set_title(f"consistency-tuned ({few_step['training']['steps']} steps), {tuned['nfe']:g} evaluation per image: "
                 f"FD ×{tuned['fd_ratio']:.2f}, class match {100 * tuned['class_match']:.0f} % (n={few_step['n']} × "
                 f"{few_step['draws']}); the teacher with {teacher['sampler']} at {teacher['nfe']:g}: FD "
                 f"×{teacher['fd_ratio']:.2f}", fontsize=7)  # fmt: skip
    ax.set_xlabel("requested class", fontsize=6.5)
