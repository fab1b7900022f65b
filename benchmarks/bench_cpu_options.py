"""CPU training options for the demo's UNet (issue 12): ``channels_last`` and ``torch.compile`` against eager.

One optimizer update of the demo's UNet (the ``compact`` preset, class-conditional, 16×16, batch 64) timed per
variant, interleaved in this process (best of ``--repeats`` rounds of ``--steps`` updates each), at
``--num_threads`` torch threads; ``torch.compile``'s first two updates (the compilation) are timed apart, since
they count against the demo's budget. Run it alone: a job beside it measures the contention.

    python benchmarks/bench_cpu_options.py --num_threads 2
    python benchmarks/bench_cpu_options.py --num_threads 2 --no_compile
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import UNet2DModel

from scratch_diffusion.training.models import load_unet_config


def make_unet(preset: str) -> UNet2DModel:
    torch.manual_seed(0)
    config = {**load_unet_config(preset), "sample_size": 16, "in_channels": 1, "out_channels": 1}
    return UNet2DModel(**config, num_class_embeds=11)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="compact")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="updates per timed round")
    p.add_argument("--repeats", type=int, default=5, help="rounds per variant (the best is reported)")
    p.add_argument("--no_compile", action="store_true", help="skip torch.compile (its compilation takes minutes)")
    args = p.parse_args()
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
    print(f"| option ({args.preset}, batch {args.batch_size}, {args.num_threads} threads) | ms per update | "
          "vs eager | one-off cost |")  # fmt: skip
    print("|---|---:|---:|---:|")
    for name, seconds in best.items():
        cost = f"{compile_seconds:.0f} s compiling" if name == "torch.compile" else "–"
        print(f"| {name} | {1e3 * seconds:.0f} | {best['eager'] / seconds:.2f}× | {cost} |")


if __name__ == "__main__":
    main()
