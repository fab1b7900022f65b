"""The two-column markdown table of one evaluation: each number beside its scale."""

from __future__ import annotations

REFERENCE_WORDS = {"digits held-out split": "held-out real digits", "reference_images": "held-out reference images"}


def _num(v: float | None, percent: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f} %" if percent else f"{v:.3g}"


def _spread(std: float | None) -> str:
    return f" ± {_num(std)}" if std is not None else ""


def markdown_summary(results: dict, title: str | None = None) -> str:
    """A two-column markdown table of :func:`evaluate_samples`' results, each number beside its scale.

    The classification rows appear where the digits classifier was used (``classifier_accuracy`` set).
    """
    r = results
    reference = REFERENCE_WORDS.get(r.get("reference", ""), "held-out real digits")
    rows = [
        ("samples", f"{r['n']} (reference: {r['n_reference']} {reference})"),
        ("feature space", f"`{r.get('feature_space', 'digits-classifier')}`"),
        (
            "Fréchet distance (lower is better)",
            f"**{_num(r['fd'])}** (×{_num(r['fd_ratio'])} of the baseline) — real baseline "
            f"{_num(r['fd_real_baseline'])}{_spread(r.get('fd_real_baseline_std'))}, "
            f"noise ceiling {_num(r['fd_noise_ceiling'])}",
        ),
    ]
    if "kid" in r:
        rows.append(
            (
                f"KID (lower is better; ± std over {r['kid_subsets']} subsets of {r['kid_subset_size']})",
                f"**{_num(r['kid'])}{_spread(r['kid_std'])}** — real baseline "
                f"{_num(r['kid_real_baseline'])}{_spread(r.get('kid_real_baseline_std'))}, "
                f"noise ceiling {_num(r['kid_noise_ceiling'])}",
            )
        )
    if r.get("classifier_accuracy") is not None:
        rows += [
            (
                f"confident (max softmax ≥ {r['confidence_threshold']})",
                f"**{_num(r['confident_fraction'], True)}** — real "
                f"{_num(r['confident_fraction_real_baseline'], True)}, "
                f"noise {_num(r['confident_fraction_noise'], True)}",
            ),
            (
                "classified as requested class",
                f"**{_num(r['class_match'], True)}** — classifier accuracy on real "
                f"{_num(r['classifier_accuracy'], True)}",
            ),
        ]
    lines = [f"### {title}", ""] if title else []
    lines += ["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    return "\n".join(lines)
