"""The demo's quality bar: the one constant that is checked, printed, plotted and written."""

from __future__ import annotations

from scratch_diffusion.demo.sampling import SampleSet

# Issue 5's bar: the best setting's FD at most 1.5× the real-vs-real baseline at the same sample
# size; the requested class recognised in at least 90 % of samples (best setting and every guided set).
QUALITY_BAR = {"fd_ratio_max": 1.5, "class_match_min": 0.9}


def fd_bar_text(bar: dict = QUALITY_BAR) -> str:
    """``"1.5×"``: the FD-ratio bar as printed."""
    return f"{bar['fd_ratio_max']:g}×"


def class_match_bar_text(bar: dict = QUALITY_BAR) -> str:
    """``"90 %"``: the class-match bar as printed."""
    return f"{100 * bar['class_match_min']:g} %"


def bar_text(bar: dict = QUALITY_BAR) -> str:
    """``"FD ≤ 1.5× baseline, class match ≥ 90 %"``."""
    return f"FD ≤ {fd_bar_text(bar)} baseline, class match ≥ {class_match_bar_text(bar)}"


def quality_verdict(best: SampleSet, guided: list[SampleSet]) -> dict:
    """:data:`QUALITY_BAR` applied: ``best``'s FD ratio, and the lowest class match of ``best`` and every guided set."""
    r = best.results
    guided_match = min((s.results["class_match"] for s in guided), default=None)
    fd_ok = r["fd_ratio"] is not None and r["fd_ratio"] <= QUALITY_BAR["fd_ratio_max"]
    matches = [m for m in (r["class_match"], guided_match) if m is not None]
    match_ok = bool(matches) and min(matches) >= QUALITY_BAR["class_match_min"]
    return {
        **QUALITY_BAR,
        "fd_ratio": r["fd_ratio"],
        "class_match": r["class_match"],
        "guided_class_match_min": guided_match,
        "guided_scales": sorted({s.guidance_scale for s in guided}),
        "met": bool(fd_ok and match_ok),
    }


def guided_text(verdict: dict) -> str:
    """``" (with guidance w = 1.5, 3: 99.5 % at the lowest)"`` (empty without guided sets)."""
    if verdict["guided_class_match_min"] is None:
        return ""
    scales = ", ".join(f"{g:g}" for g in verdict["guided_scales"])
    return f" (with guidance w = {scales}: {100 * verdict['guided_class_match_min']:.1f} % at the lowest)"
