"""The guidance rules the demo and ``benchmarks/bench_guidance.py`` sample with, as pipeline call arguments.

A setting names its rule, its scale and an optional noise-level interval; :func:`guidance_arguments` turns them into
the ``ScratchDiffusionPipeline.__call__`` arguments (``scratch_diffusion.guidance``):

================  =====================================================  ==========================================
rule              call                                                   model evaluations per step (per image)
================  =====================================================  ==========================================
``CFG``           ``guidance_scale=w`` (w = 1: the conditional model)    2 (both halves, one batch); 1 at w = 1
``interval CFG``  ``ClassifierFreeGuidance(w, interval=(σ_lo, σ_hi))``   2 inside the interval, 1 outside
``autoguidance``  ``AutoGuidance(w, interval=…)``, the ``guide_unet``   1 UNet + 1 guide (inside the interval)
``classifier``    ``ClassifierGuidance(s)``, the ``classifier``          1 UNet + classifier forward and backward
================  =====================================================  ==========================================

The counts are never computed here: the pipeline counts what it evaluates (``pipe.evaluations``), and the demo
reads them after each call.
"""

from __future__ import annotations

RULES = ("CFG", "interval CFG", "autoguidance", "classifier")
RULES_STAGE = "guidance rules"  # the demo's stage of every rule at equal evaluations (demo.equal_evaluations)
# The networks that denoise: their evaluations per image are a setting's cost (a classifier's are listed apart).
DENOISERS = ("unet", "guide_unet")


def check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} is not a guidance rule of the demo; allowed: {', '.join(RULES)}.")


def guidance_arguments(rule: str, scale: float, interval: tuple[float, float] | None = None) -> dict:
    """``guidance_scale`` / ``guidance`` for a pipeline call of ``rule`` at ``scale`` (σ = b/a ``interval``)."""
    from scratch_diffusion.guidance import AutoGuidance, ClassifierFreeGuidance, ClassifierGuidance

    check_rule(rule)
    if rule == "CFG":
        if interval is not None:
            raise ValueError(f"rule 'CFG' guides at every step; interval={interval!r} needs rule 'interval CFG'.")
        return {"guidance_scale": scale}
    if rule == "interval CFG":
        if interval is None:
            raise ValueError("rule 'interval CFG' needs an interval (σ_lo, σ_hi).")
        return {"guidance": ClassifierFreeGuidance(scale, interval=interval)}
    if rule == "autoguidance":
        return {"guidance": AutoGuidance(scale, interval=interval)}
    return {"guidance": ClassifierGuidance(scale)}


def labels_for_call(pipe, rule: str) -> bool:
    """Whether a call asks for classes: a class-conditional model always, an unconditional one only to be steered
    by a classifier (its unguided and autoguided samples are of no requested class)."""
    return pipe.num_classes is not None or rule == "classifier"


def interval_text(interval: tuple[float, float] | None) -> str:
    """``"σ ∈ (0.28, 5.42]"`` ("" without an interval)."""
    return "" if interval is None else f"σ ∈ ({interval[0]:g}, {interval[1]:g}]"


def rule_text(rule: str, scale: float, interval: tuple[float, float] | None = None) -> str:
    """``"w=1.5"`` (CFG), ``"interval CFG w=1.5, σ ∈ (0.28, 5.42]"``, ``"autoguidance w=2"``, ``"classifier s=4"``."""
    if rule == "CFG":
        return f"w={scale:g}"
    symbol = "s" if rule == "classifier" else "w"
    where = f", {interval_text(interval)}" if interval is not None else ""
    return f"{rule} {symbol}={scale:g}{where}"
