"""The demo's reproducibility table: `make demo` for several training seeds and torch thread counts.

Each (seed, threads) runs the whole demo as a user would (``python -m scratch_diffusion.demo --seed S
--num_threads T``) in its own output folder, one at a time (run nothing else beside it: the wall times are part
of the result); the table shows each run's best setting at ≤ 10 UNet evaluations per image beside the real
baseline at the same n, its class match, and the phase times, then the mean ± std over seeds per thread count.

    python benchmarks/bench_demo_seeds.py --seeds 0 1 2 --threads 2 1
    python benchmarks/bench_demo_seeds.py --table          # print the table of the recorded runs

Runs are recorded in ``benchmarks/results/demo_seeds.json`` (keyed by seed and threads; a rerun replaces its row;
two instances may run at once, e.g. one seed each at 1 thread: each re-reads the file before adding its row). The
pixel demo's runs (before the demo moved to latent space) are kept in ``benchmarks/results/demo_seeds-pixel.json``:
``--table --results benchmarks/results/demo_seeds-pixel.json`` prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "demo_seeds.json"


def run_demo(seed: int, threads: int, work_dir: Path) -> dict:
    """One whole demo run; returns the row recorded for it (from the run's ``metrics.json``)."""
    output_dir = work_dir / f"seed{seed}-threads{threads}"
    command = [sys.executable, "-m", "scratch_diffusion.demo", "--output_dir", str(output_dir),
               "--seed", str(seed), "--num_threads", str(threads)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, check=True, env=env, cwd=ROOT)
    return row_of(json.loads((output_dir / "metrics.json").read_text()), seed, threads)


def row_of(report: dict, seed: int, threads: int) -> dict:
    best, verdict, phases = report["best"], report["quality_bar"], report["phase_seconds"]
    return {
        "seed": seed,
        "threads": threads,
        "sampler": best["sampler"],
        "steps": best["steps"],
        "nfe": best["nfe"],
        "n": best["n"],
        "fd": best["fd"],
        "fd_real_baseline": best["fd_real_baseline"],
        "fd_real_baseline_std": best["fd_real_baseline_std"],
        "fd_ratio": best["fd_ratio"],
        "draws": best.get("draws", 1),
        "fd_ratio_std_over_draws": best.get("fd_ratio_std_over_draws"),
        "class_match": best["class_match"],
        "guided_class_match_min": verdict["guided_class_match_min"],
        "train_minutes": phases["train"] / 60,
        "total_minutes": report["seconds_total"] / 60,
    }


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def table(rows: list[dict]) -> str:
    lines = [
        "| seed | threads | best (≤ 10 UNet evals) | n × draws | FD | real baseline | FD / baseline (± over draws) | "
        "class match | "
        "guided (lowest) | training min | whole demo min |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (-r["threads"], r["seed"])):
        guided = f"{100 * r['guided_class_match_min']:.1f} %" if r["guided_class_match_min"] is not None else "–"
        draws = r.get("draws", 1)
        spread = f" ± {r['fd_ratio_std_over_draws']:.2f}" if draws > 1 else ""
        lines.append(
            f"| {r['seed']} | {r['threads']} | {r['sampler']}, {r['steps']} steps ({r['nfe']}) | {r['n']} × {draws} | "
            f"{r['fd']:.2f} | {r['fd_real_baseline']:.2f} ± {r['fd_real_baseline_std']:.2f} | "
            f"{r['fd_ratio']:.2f}×{spread} | "
            f"{100 * r['class_match']:.1f} % | {guided} | {r['train_minutes']:.1f} | {r['total_minutes']:.1f} |"
        )
    for threads in sorted({r["threads"] for r in rows}, reverse=True):
        group = [r for r in rows if r["threads"] == threads]
        if len(group) < 2:
            continue
        fd = [r["fd"] for r in group]
        ratio = [r["fd_ratio"] for r in group]
        base = statistics.mean(r["fd_real_baseline"] for r in group)
        base_std = statistics.mean(r["fd_real_baseline_std"] for r in group)
        fd_text = f"{statistics.mean(fd):.2f} ± {statistics.stdev(fd):.2f}"
        ratio_text = f"{statistics.mean(ratio):.2f}× ± {statistics.stdev(ratio):.2f}"
        train = statistics.mean(r["train_minutes"] for r in group)
        total = statistics.mean(r["total_minutes"] for r in group)
        lines.append(
            f"| mean ± std ({len(group)} seeds) | {threads} | | | {fd_text} | {base:.2f} ± {base_std:.2f} | "
            f"{ratio_text} | | | {train:.1f} | {total:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--work_dir", type=Path, default=ROOT / "outputs" / "demo-seeds")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="print the recorded runs' table and exit")
    args = parser.parse_args(argv)
    if not args.table:
        for threads in args.threads:
            for seed in args.seeds:
                row = run_demo(seed, threads, args.work_dir)
                recorded = load_results(args.results)  # re-read: another instance may have added its runs
                recorded[f"seed{seed}-threads{threads}"] = row
                args.results.parent.mkdir(parents=True, exist_ok=True)
                args.results.write_text(json.dumps(recorded, indent=1) + "\n")
    print(table(list(load_results(args.results).values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
