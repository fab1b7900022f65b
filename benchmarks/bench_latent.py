"""Latent vs pixel diffusion on the built-in 16×16 digits, at equal training wall time (issue 13).

Four phases, one process, ``--num_threads`` torch threads (default 1: run it beside nothing, or beside
one other 1-thread job; the wall times are part of the result):

1. **VAE**: ``train_vae`` (:func:`scratch_diffusion.training.vae.run_vae_training`) trains an
   ``AutoencoderKL`` here: tiny preset (f = 2) with ``--latent_channels 1``, so a 1×16×16 digit becomes a
   1×8×8 latent (4× fewer numbers). Its ``vae_metrics.json`` gives the held-out PSNR and the FD of
   reconstructions beside the real baseline.
2. **UNets**: the demo's recipe (:func:`scratch_diffusion.demo.training.probe_argv` over
   :data:`~scratch_diffusion.demo.config.DEFAULTS`: flow matching, logit-normal σ, the compact UNet, batch 64,
   LR 1e-3, 100 warm-up steps, class-conditional, EMA, the metric's training split; the cheapest outputs) trained
   twice for the same ``--wall_minutes`` of step loop: on pixels, and on the VAE's latents (``--vae_name_or_path``;
   at 8×8 the compact UNet's three levels end at 2×2). Each arm's step count comes from a short probe of that arm, as
   :func:`~scratch_diffusion.demo.training.calibrate_steps` does (the latent probe also encodes the digits
   into the latent cache, which the real run then reads).
3. **Scores**: each pipeline is sampled with the demo's :func:`~scratch_diffusion.demo.sampling.score_set`
   (flow Euler, 10 steps = 10 UNet evaluations, no guidance, the demo's seeded labels, ``--draws``
   independent draws of ``--n`` images, FD averaged by ``combine_draws``) in the digits-CNN feature space,
   beside the real-vs-real baseline at the same n. The VAE round trip of ``--n`` real digits (encode →
   decode, scored the same way) is the latent model's floor: a latent UNet cannot beat its decoder.
4. **Times**: each phase's wall time, each trainer's images/s at equal batch, the sampling time per
   ``--n`` images (the latent one includes decoding, also timed alone).

    python benchmarks/bench_latent.py                                  # ~3 min VAE + 2 × 3 min UNets + scoring
    python benchmarks/bench_latent.py --seed 1 --wall_minutes 5
    python benchmarks/bench_latent.py --table                          # the README tables of the recorded runs

Runs are recorded in ``benchmarks/results/latent.json``, keyed by seed, threads and wall minutes (a rerun
replaces its entry); trained models stay under ``--work_dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "latent.json"
SAMPLER, SAMPLE_STEPS = "flow Euler", 10  # 10 UNet evaluations per image, the demo's ≤ 10 NFE bar


def train_vae_phase(args: argparse.Namespace, output_dir: Path) -> dict:
    """Phase 1: the demo's VAE recipe (``demo.training.vae_argv``) with this run's steps, batch, LR and channels."""
    from scratch_diffusion.demo.training import train_vae_model, vae_argv

    changes = {"latent_channels": args.latent_channels, "train_batch_size": args.vae_batch_size,
               "learning_rate": args.vae_learning_rate}  # fmt: skip
    record = train_vae_model(vae_argv(output_dir, args.vae_steps, args.seed, **changes))
    return {**record, "train_batch_size": args.vae_batch_size, "phase_seconds": record["seconds"]}


def train_unet_phase(config, minutes: float, run_dir: Path, extra: list[str]) -> dict:
    """Phase 2, one arm: probe, then train the demo's recipe (+ ``extra`` flags) for ``minutes`` of step loop.

    The step count is :func:`~scratch_diffusion.demo.training.calibrate_steps`'s rule (its share
    ``TRAIN_MINUTES_USED`` of the budget over the probe's seconds per step), applied to a probe that
    carries ``extra`` (``calibrate_steps`` itself runs the pixel command line only).
    """
    from scratch_diffusion.demo.training import PROBE_STEPS, TRAIN_MINUTES_USED, probe_argv
    from scratch_diffusion.training import run_training

    start = time.perf_counter()
    probe = run_training([*probe_argv(config, run_dir / "probe", PROBE_STEPS), *extra])
    probe_seconds = time.perf_counter() - start
    shutil.rmtree(run_dir / "probe", ignore_errors=True)
    steps = max(1, int(TRAIN_MINUTES_USED * minutes * 60 / probe.seconds_per_step))
    start = time.perf_counter()
    summary = run_training([*probe_argv(config, run_dir / "pipeline", steps), *extra])
    return {
        "steps": summary.global_step,
        "train_batch_size": config.train_batch_size,
        "probe_seconds_per_step": probe.seconds_per_step,
        "seconds_per_step": summary.seconds_per_step,
        "cpu_seconds_per_step": summary.cpu_seconds_per_step,
        "images_per_second": summary.images_per_second,
        "training_seconds": summary.training_seconds,
        "probe_phase_seconds": probe_seconds,
        "phase_seconds": time.perf_counter() - start,
    }


def score_pipeline(pipeline_dir: Path, args: argparse.Namespace, classifier) -> dict:
    """Phase 3, one arm: the demo's ``score_set`` at ``SAMPLER`` × ``SAMPLE_STEPS``, then one timed draw of ``n``.

    ``score_set``'s own seconds include the metric; the timed draw (the first draw's seed again) is sampling
    alone, decoding included; for a latent pipeline the decoding of ``n`` latents is timed alone too.
    """
    from tqdm.auto import tqdm

    from scratch_diffusion.demo.sampling import SampleSet, draw_images, score_set
    from scratch_diffusion.pipelines import ScratchDiffusionPipeline
    from scratch_diffusion.pipelines.latents import decode_latents

    pipe = ScratchDiffusionPipeline.from_pretrained(str(pipeline_dir))
    pipe.set_progress_bar_config(disable=True)
    sample = SampleSet(SAMPLER, SAMPLE_STEPS, guidance_scale=1.0, n=args.n, stage="final", draws=args.draws)
    with tqdm(total=args.n * SAMPLE_STEPS * (args.draws + 1), desc=pipeline_dir.parent.name, unit="img·step",
              unit_scale=True, dynamic_ncols=True) as bar:  # fmt: skip
        score_set(pipe, sample, args.eval_seed, args.sample_batch_size, classifier, bar)
        start = time.perf_counter()
        draw_images(pipe, sample, args.eval_seed, args.sample_batch_size, bar)
        sample_seconds = time.perf_counter() - start
    decode_seconds = None
    if getattr(pipe, "vae", None) is not None:
        shape = (args.n, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
        latents = torch.randn(shape, generator=torch.Generator().manual_seed(args.eval_seed))
        start = time.perf_counter()
        with torch.no_grad():
            for chunk in latents.split(args.sample_batch_size):
                decode_latents(pipe.vae, chunk)
        decode_seconds = time.perf_counter() - start
    return {**sample.row(), "sampling_seconds": sample_seconds, "decode_seconds": decode_seconds}


@torch.no_grad()
def score_round_trip(vae_dir: Path, args: argparse.Namespace, classifier) -> dict:
    """The VAE's floor: ``n`` real digits of the metric's pool (its seeded draws) encoded and decoded, scored alike."""
    from diffusers import AutoencoderKL

    from scratch_diffusion import metrics
    from scratch_diffusion.demo.sampling import DRAW_SEED_STRIDE, combine_draws
    from scratch_diffusion.metrics.classifier import CLASSIFIER_RECIPE
    from scratch_diffusion.metrics.data import digits_split
    from scratch_diffusion.pipelines.latents import decode_latents, encode_to_latents

    vae = AutoencoderKL.from_pretrained(str(vae_dir)).eval()
    split = digits_split(CLASSIFIER_RECIPE["split_seed"], CLASSIFIER_RECIPE["holdout_fraction"])
    pool, labels = split.train_images, split.train_labels  # the baseline's pool: disjoint from the reference
    results = []
    for k in range(args.draws):
        seed = args.eval_seed + k * DRAW_SEED_STRIDE
        pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[: args.n]
        images = torch.cat([decode_latents(vae, encode_to_latents(vae, chunk)).clamp(-1, 1)
                            for chunk in pool[pick].split(args.sample_batch_size)])  # fmt: skip
        results.append(metrics.evaluate_samples(images, labels[pick], classifier=classifier, seed=seed))
    return combine_draws(results)


SCORE_KEYS = ("n", "draws", "nfe", "fd", "fd_real_baseline", "fd_real_baseline_std", "fd_ratio", "fd_draws",
              "fd_ratio_std_over_draws", "kid", "kid_real_baseline", "class_match", "confident_fraction")  # fmt: skip


def run_benchmark(args: argparse.Namespace) -> dict:
    """The four phases; returns the record of this run (see the module docstring)."""
    from scratch_diffusion import metrics
    from scratch_diffusion.demo.cli import build_parser
    from scratch_diffusion.demo.config import resolve_config

    work = args.work_dir / f"seed{args.seed}-threads{args.num_threads}-{args.wall_minutes:g}min"
    shutil.rmtree(work, ignore_errors=True)  # a fresh latent cache: the latent probe's encoding is measured
    config = resolve_config(build_parser().parse_args(["--output_dir", str(work), "--seed", str(args.seed)]))
    # both arms from the pixel command line (the latent arm adds its VAE flags below), with the recipe as it was
    # measured: logit-normal σ centred at 0 (the demo's logit_mean −0.7 came later, from bench_latent_recipes.py)
    config = dataclasses.replace(config, space="pixel", logit_mean=None)
    vae_dir = work / "vae"
    print(f"[1/3] VAE: tiny f=2, {args.latent_channels} latent channel(s), {args.vae_steps} steps", flush=True)
    vae = train_vae_phase(args, vae_dir)
    print(f"      PSNR {vae['psnr']:.2f} dB, reconstruction FD {vae['fd']:.3g} vs real {vae['fd_real_baseline']:.3g}, "
          f"{vae['phase_seconds']:.0f} s", flush=True)  # fmt: skip
    latent_flags = ["--vae_name_or_path", str(vae_dir), "--latent_cache_dir", str(work / "latent-cache")]
    arms = {"latent": latent_flags, "pixel": []}
    trained = {}
    for name, flags in arms.items():
        print(f"[2/3] {name} UNet: {args.wall_minutes:g} min of training", flush=True)
        trained[name] = train_unet_phase(config, args.wall_minutes, work / name, flags)
        t = trained[name]
        print(f"      {t['steps']} steps, {t['images_per_second']:.0f} images/s, {t['training_seconds']:.0f} s",
              flush=True)  # fmt: skip
    print(f"[3/3] scoring: {SAMPLER} {SAMPLE_STEPS} steps, n = {args.n} × {args.draws} draws", flush=True)
    classifier = metrics.load_digits_classifier()
    start = time.perf_counter()
    round_trip = {k: v for k, v in score_round_trip(vae_dir, args, classifier).items() if k in SCORE_KEYS}
    scores = {"vae_round_trip": {**round_trip, "seconds": time.perf_counter() - start}}
    for name in arms:
        start = time.perf_counter()
        row = score_pipeline(work / name / "pipeline", args, classifier)
        scores[name] = {**{k: row.get(k) for k in (*SCORE_KEYS, "sampling_seconds", "decode_seconds")},
                        "phase_seconds": time.perf_counter() - start}  # fmt: skip
    for name, s in scores.items():
        print(f"      {name}: FD {s['fd']:.2f} vs real {s['fd_real_baseline']:.2f} (×{s['fd_ratio']:.2f}), "
              f"class match {100 * s['class_match']:.1f} %", flush=True)  # fmt: skip
    return {
        "seed": args.seed,
        "eval_seed": args.eval_seed,
        "num_threads": torch.get_num_threads(),
        "wall_minutes": args.wall_minutes,
        "sampler": f"{SAMPLER}, {SAMPLE_STEPS} steps",
        "vae": vae,
        "training": trained,
        "scores": scores,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def tables(runs: list[dict]) -> str:
    """The README's two tables: the VAE (with its round trip), then latent vs pixel at equal wall time."""
    vae_lines = [
        "| seed | threads | VAE | latent | steps | wall s | PSNR (held-out) | recon FD / real baseline "
        "| round trip n × draws: FD / real baseline (ratio) |",
        "|---:|---:|---|---|---:|---:|---:|---:|---|",
    ]
    lines = [
        "| seed | threads | wall min | trained on | UNet steps | train images/s | s/step | FD | real baseline ± std "
        "| FD / baseline | class match | wall s: probe + training | sampling s / n (decode s) |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(runs, key=lambda r: (r["wall_minutes"], -r["num_threads"], r["seed"])):
        v, rt = r["vae"], r["scores"]["vae_round_trip"]
        c, side = v["latent_shape"][0], v["latent_shape"][1]
        vae_lines.append(
            f"| {r['seed']} | {r['num_threads']} | tiny f={v['downsampling_factor']} | {c}×{side}×{side} "
            f"| {v['steps']} | {v['phase_seconds']:.0f} | {v['psnr']:.1f} dB "
            f"| {v['fd']:.3g} / {v['fd_real_baseline']:.3g} "
            f"| {rt['n']} × {rt['draws']}: {rt['fd']:.2f} / {rt['fd_real_baseline']:.2f} (×{rt['fd_ratio']:.2f}) |"
        )
        for arm, shape in (("latent", f"latents {c}×{side}×{side}"), ("pixel", "pixels 1×16×16")):
            t, s = r["training"][arm], r["scores"][arm]
            decode = f" ({s['decode_seconds']:.1f})" if s.get("decode_seconds") is not None else ""
            lines.append(
                f"| {r['seed']} | {r['num_threads']} | {r['wall_minutes']:g} | {shape} | {t['steps']} "
                f"| {t['images_per_second']:.0f} | {t['seconds_per_step']:.3f} | {s['fd']:.2f} "
                f"| {s['fd_real_baseline']:.2f} ± {s['fd_real_baseline_std']:.2f} | {s['fd_ratio']:.2f}× "
                f"| {100 * s['class_match']:.1f} % | {t['probe_phase_seconds']:.0f} + {t['phase_seconds']:.0f} "
                f"| {s['sampling_seconds']:.1f} / {s['n']}{decode} |"
            )
    return "\n".join(vae_lines) + "\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0, help="training seed of the VAE and both UNets")
    p.add_argument("--eval_seed", type=int, help="seed of the sampled labels, noise and baseline draws (unset: --seed)")
    p.add_argument("--num_threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--latent_channels", type=int, default=1, help="VAE latent channels (1: 1×8×8 latents)")
    p.add_argument("--vae_steps", type=int, default=1200, help="VAE optimizer steps (2-3 min at 1 thread)")
    p.add_argument("--vae_batch_size", type=int, default=16)
    p.add_argument("--vae_learning_rate", type=float, default=1e-3)
    p.add_argument("--wall_minutes", type=float, default=3.0, help="step-loop minutes of each UNet")
    p.add_argument("--n", type=int, default=1000, help="images per scored draw")
    p.add_argument("--draws", type=int, default=3, help="independent draws of --n, FD averaged")
    p.add_argument("--sample_batch_size", type=int, default=250)
    p.add_argument("--work_dir", type=Path, default=ROOT / "outputs" / "latent-bench")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--table", action="store_true", help="print the recorded runs' tables and exit")
    args = p.parse_args(argv)
    args.eval_seed = args.seed if args.eval_seed is None else args.eval_seed
    recorded = json.loads(args.results.read_text()) if args.results.exists() else {}
    if not args.table:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        torch.set_num_threads(args.num_threads)
        run = run_benchmark(args)
        recorded[f"seed{args.seed}-threads{args.num_threads}-{args.wall_minutes:g}min"] = run
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(recorded, indent=1) + "\n")
    print(tables(list(recorded.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
