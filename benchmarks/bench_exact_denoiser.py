"""Error of exact-denoiser samples versus model evaluations (NFE), for diffusers' and our schedulers.

Each scheduler samples ``GaussianMixture.example()`` driven by the closed-form denoiser of
:mod:`scratch_schedulers.oracle`; the table gives, per step count, the sliced
Wasserstein-1 distance and the component errors of :func:`~scratch_schedulers.oracle.mixture_error`,
after a first row with the same statistics of exact samples (the noise floor). Prints markdown.

    python benchmarks/bench_exact_denoiser.py [--steps 5 20 100] [--n-samples 2000] [--seed 0]
    python benchmarks/bench_exact_denoiser.py --steps 5 20 100 --n-samples 2000 --record  # results/exact_denoiser.json
    python benchmarks/bench_exact_denoiser.py --table     # the documentation's table, from the recorded file

``--table`` prints the sliced W1 per sampler and step count, one row where ours and diffusers' agree to the
printed digits (two where they do not), beside the floor of exact samples.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

from scratch_schedulers import ScratchDDIMScheduler, ScratchDDPMScheduler, ScratchFlowMatchScheduler
from scratch_schedulers.oracle import error_table

try:  # run as a script, this folder is on sys.path; imported by the tests, it is the `benchmarks` package
    from provenance import print_recorded
    from results_io import environment, write_results
except ModuleNotFoundError:
    from benchmarks.provenance import print_recorded
    from benchmarks.results_io import environment, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "exact_denoiser.json"
FLOOR = "exact samples (noise floor)"  # error_table's first row
# The documentation's rows: sampler → (our row, diffusers' row or None), names of default_factories().
SAMPLERS: dict[str, tuple[str, str | None]] = {
    "DDPM": ("ScratchDDPMScheduler", "diffusers DDPMScheduler"),
    "DDIM": ("ScratchDDIMScheduler", "diffusers DDIMScheduler"),
    "flow Euler": ("ScratchFlowMatchScheduler", "diffusers FlowMatchEulerDiscreteScheduler"),
    "flow Heun": ("ScratchFlowMatchScheduler (heun)", None),
}

# (row key, column title) of the printed table, left to right.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("scheduler", "scheduler"),
    ("steps", "steps"),
    ("nfe", "NFE"),
    ("sliced_wasserstein", "sliced W1"),
    ("weight_error", "weight err"),
    ("std_error", "std err (rel)"),
    ("mean_error", "mean err (/std)"),
)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of ``error_table`` rows (floats with four significant digits)."""

    def cell(value: Any) -> str:
        if value is None:
            return "—"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" if key == "scheduler" else "---:" for key, _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cell(row.get(key)) for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def default_factories() -> dict[str, Callable[[], Any]]:
    """diffusers' DDPM, DDIM and flow Euler schedulers and this project's (with Heun), by table row name."""
    return {
        "diffusers DDPMScheduler": lambda: DDPMScheduler(clip_sample=False),
        "diffusers DDIMScheduler": lambda: DDIMScheduler(clip_sample=False, timestep_spacing="trailing"),
        "diffusers FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler,
        "ScratchDDPMScheduler": lambda: ScratchDDPMScheduler(clip_sample=False),
        "ScratchDDIMScheduler": lambda: ScratchDDIMScheduler(clip_sample=False, timestep_spacing="trailing"),
        "ScratchFlowMatchScheduler": ScratchFlowMatchScheduler,
        "ScratchFlowMatchScheduler (heun)": lambda: ScratchFlowMatchScheduler(solver="heun"),
    }


def summary_table(record: Mapping[str, Any]) -> str:
    """Sliced W1 per sampler (rows) and step count (columns) from a ``--record`` file; ours = diffusers merged."""
    rows, steps = record["rows"], record["steps"]

    def w1(name: str) -> list[str]:
        return [
            f"{next(r for r in rows if r['scheduler'] == name and r['steps'] == n)['sliced_wasserstein']:.3f}"
            for n in steps
        ]

    def nfe_note(name: str) -> str:
        nfe = [next(r for r in rows if r["scheduler"] == name and r["steps"] == n)["nfe"] for n in steps]
        return "" if nfe == list(steps) else "; NFE " + " / ".join(map(str, nfe))

    lines = ["| sampler | " + " | ".join(f"{n} steps" for n in steps) + " |", "|---|" + "---:|" * len(steps)]
    for sampler, (ours, theirs) in SAMPLERS.items():
        if theirs is None:
            lines.append(f"| {sampler} (ours{nfe_note(ours)}) | " + " | ".join(w1(ours)) + " |")
        elif w1(ours) == w1(theirs):
            lines.append(f"| {sampler} (ours = diffusers{nfe_note(ours)}) | " + " | ".join(w1(ours)) + " |")
        else:
            lines.append(f"| {sampler}, ours{nfe_note(ours)} | " + " | ".join(w1(ours)) + " |")
            lines.append(f"| {sampler}, diffusers{nfe_note(theirs)} | " + " | ".join(w1(theirs)) + " |")
    floor = next(r for r in rows if r["scheduler"] == FLOOR)["sliced_wasserstein"]
    lines.append("| exact samples of the same size (the floor) | " + " | ".join([f"{floor:.3f}"] * len(steps)) + " |")
    caption = (
        f"Sliced Wasserstein-1 distance to `GaussianMixture.example()` of {record['n_samples']} samples "
        f"(seed {record['seed']}) driven by the exact denoiser; lower is better:"
    )
    return caption + "\n\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Prints the error-versus-NFE table for the default schedulers (``--record``: and records it)."""
    parser = argparse.ArgumentParser(description="Error of exact-denoiser samples versus model evaluations.")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    parser.add_argument("--n-samples", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", action="store_true", help=f"write the rows to {RESULTS.name}")
    parser.add_argument("--table", action="store_true", help="print the recorded rows' summary table and exit")
    args = parser.parse_args(argv)
    if args.table:
        print_recorded(
            RESULTS,
            summary_table,
            "`python benchmarks/bench_exact_denoiser.py --steps 5 20 100 --n-samples 2000 --record`",
        )
        return
    torch.set_num_threads(1)  # the tensors are tiny: more threads only add synchronisation overhead
    rows = error_table(default_factories(), args.steps, n_samples=args.n_samples, seed=args.seed)
    print(f"Exact denoiser on GaussianMixture.example(), {args.n_samples} samples, seed {args.seed}\n")
    print(format_table(rows))
    if args.record:
        write_results(
            RESULTS,
            {
                "environment": environment(),
                "n_samples": args.n_samples,
                "seed": args.seed,
                "steps": args.steps,
                "rows": rows,
            },
        )
        print(f"\nrecorded in {RESULTS}")


if __name__ == "__main__":
    main()
