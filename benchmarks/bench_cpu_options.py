"""CPU training options for the demo's UNet (issue 12): ``channels_last`` and ``torch.compile`` against eager.

One optimizer update of the demo's UNet (the ``compact`` preset, class-conditional, 16×16, batch 64) timed per
variant, interleaved in this process (best of ``--repeats`` rounds of ``--steps`` updates each), at
``--num_threads`` torch threads; ``torch.compile``'s first two updates (the compilation) are timed apart, since
they count against the demo's budget. Run it alone: a job beside it measures the contention.

    python benchmarks/bench_cpu_options.py --num_threads 2
    python benchmarks/bench_cpu_options.py --num_threads 2 --no_compile
    python benchmarks/bench_cpu_options.py --table             # the recorded table, measuring nothing

Every run records its timings, settings and machine in ``--results`` (default ``benchmarks/results/cpu_options.json``,
replaced).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel
from provenance import print_recorded
from results_io import environment, write_results

from scratch_diffusion.training.models import load_unet_config

RESULTS = Path(__file__).resolve().parent / "results" / "cpu_options.json"


def make_unet(preset: str) -> UNet2DModel:
    torch.manual_seed(0)
    config = {**load_unet_config(preset), "sample_size": 16, "in_channels": 1, "out_channels": 1}
    return UNet2DModel(**config, num_class_embeds=11)


def table(record: dict[str, Any]) -> str:
    """The documentation's table of a recorded run."""
    s, best = record["settings"], record["seconds_per_update"]
    threads = f"{s['num_threads']} torch thread{'s' if s['num_threads'] != 1 else ''}"
    lines = [
        f"| option (`{s['preset']}` UNet, batch {s['batch_size']}, {threads}) | ms per update | vs eager "
        "| one-off cost |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds in best.items():
        cost = f"{record['compile_seconds']:.0f} s compiling" if name == "torch.compile" else "–"
        lines.append(f"| {name} | {1e3 * seconds:.0f} | {best['eager'] / seconds:.2f}× | {cost} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="compact")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="updates per timed round")
    p.add_argument("--repeats", type=int, default=5, help="rounds per variant (the best is reported)")
    p.add_argument("--no_compile", action="store_true", help="skip torch.compile (its compilation takes minutes)")
    p.add_argument("--results", type=Path, default=RESULTS, help="JSON file the run is recorded in")
    p.add_argument("--table", action="store_true", help="print the table recorded in --results; measure nothing")
    args = p.parse_args(argv)
    if args.table:
        print_recorded(args.results, table, "`python benchmarks/bench_cpu_options.py --num_threads 2` (run it alone)")
        return
    torch.set_num_threads(args.num_threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 1, 16, 16, generator=generator)
    t = torch.rand(args.batch_size, generator=generator) * 1000
    labels = torch.randint(0, 11, (args.batch_size,), generator=generator)

    def update(model, optimizer, sample) -> None:
        loss = model(sample, t, class_labels=labels).sample.square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    variants = {}
    eager = make_unet(args.preset)
    variants["eager"] = (eager, torch.optim.AdamW(eager.parameters()), x)
    last = make_unet(args.preset).to(memory_format=torch.channels_last)
    variants["channels_last"] = (last, torch.optim.AdamW(last.parameters()), x.to(memory_format=torch.channels_last))
    compile_seconds = None
    if not args.no_compile:
        base = make_unet(args.preset)
        compiled, optimizer = torch.compile(base), torch.optim.AdamW(base.parameters())
        start = time.perf_counter()
        update(compiled, optimizer, x)
        update(compiled, optimizer, x)
        compile_seconds = time.perf_counter() - start
        variants["torch.compile"] = (compiled, optimizer, x)
    for model, optimizer, sample in variants.values():  # warm-up
        update(model, optimizer, sample)
    best = {name: float("inf") for name in variants}
    for _ in range(args.repeats):
        for name, (model, optimizer, sample) in variants.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                update(model, optimizer, sample)
            best[name] = min(best[name], (time.perf_counter() - start) / args.steps)
    settings = {"preset": args.preset, "batch_size": args.batch_size, "num_threads": args.num_threads,
                "steps": args.steps, "repeats": args.repeats}  # fmt: skip
    record = {"environment": environment(), "settings": settings, "seconds_per_update": best,
              "compile_seconds": compile_seconds}  # fmt: skip
    print(table(record))
    write_results(args.results, record)
    print(f"recorded in {args.results}")


if __name__ == "__main__":
    main()
