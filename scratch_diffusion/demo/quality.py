"""The demo's quality bar: the one constant that is checked, printed, plotted and written."""

from __future__ import annotations

from scratch_diffusion.demo.sampling import SampleSet

# The bar (issue 12): the best setting's FD (mean over the final draws) at most 1.25× the real-vs-real baseline at
# the same sample size; the requested class recognised in at least 95 % of its samples, and 99 % of every guided set.
QUALITY_BAR = {"fd_ratio_max": 1.25, "class_match_min": 0.95, "guided_match_min": 0.99}


def fd_bar_text(bar: dict = QUALITY_BAR) -> str:
    """``"1.5×"``: the FD-ratio bar as printed."""
    return f"{bar['fd_ratio_max']:g}×"


def class_match_bar_text(bar: dict = QUALITY_BAR) -> str:
    """``"90 %"``: the class-match bar as printed."""
    return f"{100 * bar['class_match_min']:g} %"


def guided_match_bar_text(bar: dict = QUALITY_BAR) -> str:
    """``"99 %"``: the guided sets' class-match bar as printed."""
    return f"{100 * bar['guided_match_min']:g} %"


def bar_text(bar: dict = QUALITY_BAR) -> str:
    """``"FD ≤ 1.25× baseline, class match ≥ 95 % (guided ≥ 99 %)"``."""
    return (
        f"FD ≤ {fd_bar_text(bar)} baseline, class match ≥ {class_match_bar_text(bar)} "
        f"(guided ≥ {guided_match_bar_text(bar)})"
    )


def quality_verdict(best: SampleSet, guided: list[SampleSet]) -> dict:
    """:data:`QUALITY_BAR` applied: ``best``'s FD ratio and class match; the lowest class match of the guided sets."""
    r = best.results
    guided_match = min((s.results["class_match"] for s in guided), default=None)
    fd_ok = r["fd_ratio"] is not None and r["fd_ratio"] <= QUALITY_BAR["fd_ratio_max"]
    match_ok = r["class_match"] is not None and r["class_match"] >= QUALITY_BAR["class_match_min"]
    guided_ok = guided_match is None or guided_match >= QUALITY_BAR["guided_match_min"]
    return {
        **QUALITY_BAR,
        "fd_ratio": r["fd_ratio"],
        "class_match": r["class_match"],
        "guided_class_match_min": guided_match,
        "guided_scales": sorted({s.guidance_scale for s in guided}),
        "fd_ok": bool(fd_ok),
        "class_match_ok": bool(match_ok),
        "guided_ok": bool(guided_ok),
        "met": bool(fd_ok and match_ok and guided_ok),
    }


def guided_text(verdict: dict) -> str:
    """``" (with guidance w = 1.5, 3: 99.5 % at the lowest)"`` (empty without guided sets)."""
    if verdict["guided_class_match_min"] is None:
        return ""
    scales = ", ".join(f"{g:g}" for g in verdict["guided_scales"])
    return f" (with guidance w = {scales}: {100 * verdict['guided_class_match_min']:.1f} % at the lowest)"
