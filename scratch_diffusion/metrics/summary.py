"""The two-column markdown table of one evaluation: each number beside its scale."""

from __future__ import annotations


def markdown_summary(results: dict, title: str | None = None) -> str:
    """A two-column markdown table of :func:`evaluate_samples`' results, each number beside its scale."""

    def num(v: float | None, percent: bool = False) -> str:
        if v is None:
            return "n/a"
        return f"{100 * v:.1f} %" if percent else f"{v:.3g}"

    std = results.get("fd_real_baseline_std")
    spread = f" ± {num(std)}" if std is not None else ""
    rows = [
        ("samples", f"{results['n']} (reference: {results['n_reference']} held-out real digits)"),
        (
            "Fréchet distance (lower is better)",
            f"**{num(results['fd'])}** (×{num(results['fd_ratio'])} of the baseline) — real baseline "
            f"{num(results['fd_real_baseline'])}{spread}, noise ceiling {num(results['fd_noise_ceiling'])}",
        ),
        (
            f"confident (max softmax ≥ {results['confidence_threshold']})",
            f"**{num(results['confident_fraction'], True)}** — real "
            f"{num(results['confident_fraction_real_baseline'], True)}, "
            f"noise {num(results['confident_fraction_noise'], True)}",
        ),
        (
            "classified as requested class",
            f"**{num(results['class_match'], True)}** — classifier accuracy on real "
            f"{num(results['classifier_accuracy'], True)}",
        ),
    ]
    lines = [f"### {title}", ""] if title else []
    lines += ["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    return "\n".join(lines)
