"""The latent UNet's recipe search (issues 12-13): the demo's latent recipe with one lever changed, on ONE fixed VAE.

Every recipe is the demo's own UNet command line (:func:`scratch_diffusion.demo.training.probe_argv` over the
demo's :data:`~scratch_diffusion.demo.config.DEFAULTS`: flow matching, logit-normal σ, the compact UNet, batch 64,
LR 1e-3, 100 warm-up steps, EMA, class-conditional, the metric's training split; the cheapest outputs) at 1500
steps, with some demo settings and extra ``train.py`` flags changed (:data:`RECIPES`), trained in this process
through :func:`scratch_diffusion.training.run_training` on the latents of one VAE (``--vae_dir``, shared by every
recipe and seed, so a difference between rows is the UNet's recipe, not its autoencoder). Without that VAE one is
trained first into ``work_dir/vae`` with the demo's recipe (:func:`~scratch_diffusion.demo.training.vae_argv`,
seed 0).

Each pipeline is scored with the demo's :func:`~scratch_diffusion.demo.sampling.score_set`: unguided, the demo's
seeded labels and noise, ``--draws`` independent draws of ``--n`` images (FD averaged by ``combine_draws``),
DPM-Solver++ 2M at 10 steps by default (10 UNet evaluations per image, the issue's bar). FD is the Fréchet distance
in the digits classifier's feature space; ``fd_real_baseline`` (± std) is real-vs-real at the same n (the metric's
training split against its held-out reference), and ``fd_ratio`` = FD / baseline is the number to read: 1.25× is
the demo's target. ``fd_ratio_std_over_draws`` is the spread of one model's ratio over the draws (sampling noise);
the spread over training seeds (the table's "mean ± std over seeds") is the larger one.

    python benchmarks/bench_latent_recipes.py --recipes base b128 --seeds 0 1 2      # train what is missing, score
    python benchmarks/bench_latent_recipes.py --recipes base --seeds 1 --samplers "DPM-Solver++:10 flow Euler:10"
    python benchmarks/bench_latent_recipes.py --table                                # the README's table

Runs live in ``work_dir/{recipe}-s{seed}`` (default outputs/exp/grid, the search's layout: a run whose
``pipeline/model_index.json`` exists is re-scored, not retrained), latents cached in ``work_dir/latent-cache``.
A run trained here writes ``training.json`` (argv, steps, wall and CPU seconds per step at ``--num_threads``); a
run of the search script (``exp.json`` beside its pipeline, :data:`PREVIOUS_RUNS`) is recorded from that file with
its rebuilt, equivalent argv, and its re-score is checked against the search's own score (the sampling is seeded:
they must be equal). Rows merge into ``--results``, one per recipe × seed × evaluation seed × sampler × steps × n.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "latent_recipes.json"
VAE_DIR = Path("outputs/latent-bench/seed0-threads1-3min/vae")  # bench_latent.py's VAE, seed 0, 1 thread
WORK_DIR = Path("outputs/exp/grid")
STEPS = 1500
COMPACT_DEEP = {  # the compact UNet with two ResNet layers per block
    "block_out_channels": [32, 64, 64], "layers_per_block": 2, "down_block_types": ["DownBlock2D", "DownBlock2D",
    "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"], "norm_num_groups": 8,
    "attention_head_dim": 8,
}  # fmt: skip
COMPACT_DROPOUT = {  # the compact UNet with dropout 0.1 in its ResNet blocks
    "block_out_channels": [32, 64, 64], "layers_per_block": 1, "down_block_types": ["DownBlock2D", "DownBlock2D",
    "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"], "norm_num_groups": 8,
    "attention_head_dim": 8, "dropout": 0.1,
}  # fmt: skip
COMPACT_WIDE = {  # the compact layout at twice the widths (4.4 M parameters)
    "block_out_channels": [64, 128, 128], "layers_per_block": 1, "down_block_types": ["DownBlock2D", "DownBlock2D",
    "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"], "norm_num_groups": 8,
    "attention_head_dim": 8,
}  # fmt: skip
MODEL_FILES = {"compact2": COMPACT_DEEP, "compact_drop": COMPACT_DROPOUT, "latent_wide": COMPACT_WIDE}

# name → (DemoConfig changes, extra train.py flags); every recipe is 1500 steps unless it says otherwise.
RECIPES: dict[str, tuple[dict, tuple[str, ...]]] = {
    "base": ({}, ()),  # the demo's latent recipe at 1500 steps
    "steps3000": ({"max_train_steps": 3000}, ()),
    "b128": ({"train_batch_size": 128}, ()),  # twice the images per step, same steps
    "uniform": ({"weighting_scheme": "uniform"}, ()),  # σ ~ U(0, 1) instead of logit-normal
    "lnm-0.5": ({}, ("--logit_mean", "-0.5")),  # logit-normal centred on lower noise
    "lnm-1.0": ({}, ("--logit_mean", "-1.0")),
    "lnm-0.7": ({"logit_mean": -0.7}, ()),  # ≈ the training σ of shift0.5 (logit σ' = logit σ + ln s), sampling at 1
    "shift0.5": ({}, ("--flow_shift", "0.5")),  # time shift s = 0.5 (training and sampling)
    "shift0.33": ({}, ("--flow_shift", "0.33")),
    "noema": ({"use_ema": False}, ()),  # the raw weights of the last step
    "deep": ({"model": "compact2"}, ()),
    "drop": ({"model": "compact_drop"}, ()),
    "drop3k": ({"model": "compact_drop", "max_train_steps": 3000}, ()),
    "wide": ({"model": "latent_wide"}, ()),
}
# Runs of the search script made before the work_dir layout, re-scored where they are when work_dir lacks them.
PREVIOUS_RUNS = {
    ("steps3000", 0): Path("outputs/exp/latent3000s0"),
    ("steps3000", 1): Path("outputs/exp/latent3000s1"),
    ("wide", 1): Path("outputs/exp/lwide1500s1"),
}
SEARCH_SCORE_KEYS = ("fd", "fd_ratio", "fd_ratio_std_over_draws", "class_match", "fd_real_baseline")
ROW_KEYS = ("sampler", "steps", "nfe", "n", "draws", "fd", "fd_real_baseline", "fd_real_baseline_std", "fd_ratio",
            "fd_ratio_std_over_draws", "fd_ratio_draws", "fd_draws", "class_match", "kid",
            "kid_real_baseline")  # fmt: skip


def recipe_config(name: str, seed: int, run_dir: Path):
    """The demo's resolved settings (its own command line) at :data:`STEPS` with recipe ``name``'s changes."""
    from scratch_diffusion.demo.cli import build_parser
    from scratch_diffusion.demo.config import resolve_config

    config = resolve_config(build_parser().parse_args(["--output_dir", str(run_dir), "--seed", str(seed)]))
    # the search's base: logit-normal σ centred at 0 (the demo's default logit_mean came out of this search)
    changes = {"max_train_steps": STEPS, "logit_mean": None, **RECIPES[name][0]}
    if changes.get("model") in MODEL_FILES:
        changes["model"] = str(run_dir / f"{changes['model']}.json")  # written by train_recipe
    return dataclasses.replace(config, **changes)


def recipe_argv(name: str, seed: int, run_dir: Path, vae_dir: Path) -> list[str]:
    """``train.py``'s command line of recipe ``name``: the demo's probe command line on ``vae_dir``'s latents."""
    from scratch_diffusion.demo.training import probe_argv

    config = recipe_config(name, seed, run_dir)
    latents = ["--vae_name_or_path", str(vae_dir), "--latent_cache_dir", str(run_dir.parent / "latent-cache")]
    pixel = dataclasses.replace(config, space="pixel")  # the VAE flags come next, once (latent_flags adds its own)
    return [*probe_argv(pixel, run_dir / "pipeline", config.max_train_steps), *latents, *RECIPES[name][1]]


def ensure_vae(vae_dir: Path, work_dir: Path) -> Path:
    """``vae_dir`` if it holds a VAE, else the demo's VAE (seed 0) trained once into ``work_dir/vae``."""
    from scratch_diffusion.demo.config import DEFAULTS
    from scratch_diffusion.demo.training import train_vae_model, vae_argv

    for folder in (vae_dir, work_dir / "vae"):
        if (folder / "config.json").exists():
            return folder
    print(f"no VAE in {vae_dir}: training the demo's into {work_dir / 'vae'}", flush=True)
    record = train_vae_model(vae_argv(work_dir / "vae", DEFAULTS["vae_steps"], 0))
    print(f"  PSNR {record['psnr']:.2f} dB, reconstruction FD {record['fd']:.3g}, {record['seconds']:.0f} s")
    return work_dir / "vae"


def unet_config(name: str) -> dict:
    """``{"unet_config": ...}`` for a recipe with its own UNet file (the search read its copy from elsewhere)."""
    model = RECIPES[name][0].get("model")
    return {"unet_config": MODEL_FILES[model]} if model in MODEL_FILES else {}


def train_recipe(name: str, seed: int, run_dir: Path, vae_dir: Path) -> dict:
    """Train recipe ``name`` into ``run_dir/pipeline``; writes and returns ``run_dir/training.json``."""
    from scratch_diffusion.demo.training import timed_training

    model = RECIPES[name][0].get("model")
    run_dir.mkdir(parents=True, exist_ok=True)
    if model in MODEL_FILES:
        (run_dir / f"{model}.json").write_text(json.dumps(MODEL_FILES[model]))
    argv = recipe_argv(name, seed, run_dir, vae_dir)
    record = {"recipe": name, "seed": seed, **timed_training(argv), **unet_config(name)}
    (run_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def search_record(name: str, seed: int, run_dir: Path, vae_dir: Path) -> dict | None:
    """The training record of a run the search script made (from its ``exp.json``); None if it has none yet."""
    exp_file = run_dir / "exp.json"
    if not exp_file.exists():
        return None
    exp = json.loads(exp_file.read_text())
    return {
        "recipe": name,
        "seed": seed,
        "argv": recipe_argv(name, seed, run_dir, vae_dir),  # rebuilt: the same settings as the search's
        "steps": recipe_config(name, seed, run_dir).max_train_steps,
        "seconds_per_step": exp["seconds_per_step"],
        "cpu_seconds_per_step": None,
        "train_seconds": exp["train_seconds"],
        "num_threads": None,
        "trained_by": "the search script (same argv)",
        **unet_config(name),
    }


def run_dir_of(name: str, seed: int, work_dir: Path) -> Path:
    """``work_dir/{name}-s{seed}``, or the :data:`PREVIOUS_RUNS` folder of that run when only that one exists."""
    run_dir = work_dir / f"{name}-s{seed}"
    previous = PREVIOUS_RUNS.get((name, seed))
    if not run_dir.exists() and previous is not None and (previous / "pipeline" / "model_index.json").exists():
        return previous
    return run_dir


def parse_samplers(words: list[str]) -> list[tuple[str, int]]:
    """``["DPM-Solver++:10", "flow Euler:10"]`` (or one string of both) → [("DPM-Solver++", 10), ("flow Euler", 10)]."""
    from scratch_diffusion.demo.config import SAMPLERS

    known = sorted({"DPM-Solver++", *(s for names in SAMPLERS.values() for s in names)})
    text = " ".join(words)
    pairs = [(sampler.strip(), int(steps)) for sampler, steps in re.findall(r"\s*(.+?):(\d+)", text)]
    leftover = re.sub(r"\s*(.+?):(\d+)", "", text).strip()
    bad = [s for s, _ in pairs if s not in known]
    if not pairs or leftover or bad:
        raise SystemExit(f"--samplers {text!r}: expected SAMPLER:STEPS pairs with SAMPLER one of {known}")
    return pairs


def score_run(run_dir: Path, samplers: list[tuple[str, int]], args: argparse.Namespace, eval_seed: int, classifier):
    """Rows of ``score_set`` scores of ``run_dir/pipeline``, one per (sampler, steps)."""
    from tqdm.auto import tqdm

    from scratch_diffusion.demo.sampling import SampleSet, score_set
    from scratch_diffusion.pipelines import ScratchDiffusionPipeline

    pipe = ScratchDiffusionPipeline.from_pretrained(str(run_dir / "pipeline"))
    pipe.set_progress_bar_config(disable=True)
    if args.sampling_shift is not None:  # sample on another time grid than the training shift the folder saved
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, shift=args.sampling_shift)
    saved, rows = pipe.scheduler, []
    for sampler, steps in samplers:
        sample = SampleSet(sampler, steps, guidance_scale=1.0, n=args.n, stage="final", draws=args.draws)
        with tqdm(total=args.n * steps * args.draws, disable=True) as bar:
            score_set(pipe, sample, eval_seed, args.sample_batch_size, classifier, bar)
        pipe.scheduler = saved  # each sampler from the saved config, not from the previous swap
        r = sample.row()
        row = {"eval_seed": eval_seed, **{k: r.get(k) for k in ROW_KEYS}, "score_seconds": sample.seconds}
        if args.sampling_shift is not None:
            row["sampler"] = f"{sampler} (sampling shift {args.sampling_shift:g})"
        rows.append(row)
    return rows


def compare_with_search(run_dir: Path, row: dict) -> bool | None:
    """Whether ``row`` equals the search script's score of the same setting in ``exp.json`` (None: not comparable)."""
    exp_file = run_dir / "exp.json"
    exp = json.loads(exp_file.read_text()) if exp_file.exists() else {}
    theirs = exp.get(f"{row['sampler']}-{row['steps']}")
    if theirs is None or (row["n"], row["draws"]) != (1000, 3) or row["eval_seed"] != row["seed"]:
        return None
    differ = {k: (row[k], theirs[k]) for k in SEARCH_SCORE_KEYS if row[k] != theirs[k]}
    for key, (ours, search) in differ.items():
        print(f"    MISMATCH {key}: re-scored {ours!r}, exp.json {search!r}", flush=True)
    return not differ


def merge_results(path: Path, training: dict, rows: list[dict]) -> None:
    """Add ``rows`` to the JSON file, replacing rows of the same recipe, seeds, sampler, steps, n and draws."""
    data = json.loads(path.read_text()) if path.exists() else {"runs": {}, "rows": []}
    data["runs"][f"{training['recipe']}|seed{training['seed']}"] = training
    ident = lambda r: (r["recipe"], r["seed"], r["eval_seed"], r["sampler"], r["steps"], r["n"], r["draws"])  # noqa
    replaced = {ident(r) for r in rows}
    data["rows"] = [r for r in data["rows"] if ident(r) not in replaced] + rows
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def mean_ratio(rows: list[dict]) -> float:
    return statistics.fmean(r["fd_ratio"] for r in rows)


def mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else "–"


def seed_cell(row: dict) -> str:
    """``s1: 1.296 ± 0.049`` (``s1 (eval 7): …`` when scored at another evaluation seed)."""
    seeds = f"s{row['seed']}" + ("" if row["eval_seed"] == row["seed"] else f" (eval {row['eval_seed']})")
    spread = f" ± {row['fd_ratio_std_over_draws']:.3f}" if row["draws"] > 1 else ""
    return f"{seeds}: {row['fd_ratio']:.3f}{spread}"


def table(path: Path) -> str:
    """One line per recipe × sampler × steps × n: each seed's ratio (± over draws), the seeds' mean ± std."""
    data = json.loads(path.read_text())
    groups: dict[tuple, list[dict]] = {}
    for r in data["rows"]:
        groups.setdefault((r["recipe"], r["sampler"], r["steps"], r["nfe"], r["n"], r["draws"]), []).append(r)
    lines = [
        "| recipe | train steps | s/step wall (CPU) | sampler, steps (NFE) | n × draws "
        "| FD / baseline by seed (± over draws) | mean ± std over seeds | real baseline ± std | class match |",
        "|---|---:|---:|---|---:|---|---:|---:|---:|",
    ]
    # each sampler × steps × n a block (DPM-Solver++ 10 first), its recipes by mean ratio
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][4], kv[0][1], -kv[0][2], mean_ratio(kv[1])))
    for (recipe, sampler, steps, nfe, n, draws), rows in ordered:
        rows = sorted(rows, key=lambda r: (r["seed"], r["eval_seed"]))
        runs = [data["runs"][f"{recipe}|seed{r['seed']}"] for r in rows]
        per_seed = ", ".join(seed_cell(r) for r in rows)
        cpu = [run["cpu_seconds_per_step"] for run in runs if run.get("cpu_seconds_per_step") is not None]
        wall = statistics.fmean(run["seconds_per_step"] for run in runs)
        seconds = f"{wall:.3f}" + (f" (CPU {statistics.fmean(cpu):.3f})" if cpu else "")
        baseline = statistics.fmean(r["fd_real_baseline"] for r in rows)
        baseline_std = statistics.fmean(r["fd_real_baseline_std"] for r in rows)
        match = statistics.fmean(r["class_match"] for r in rows)
        train_steps = "/".join(sorted({str(run["steps"]) for run in runs}))
        lines.append(
            f"| {recipe} | {train_steps} | {seconds} | {sampler}, {steps} ({nfe}) | {n} × {draws} | {per_seed} "
            f"| {mean_std([r['fd_ratio'] for r in rows])} | {baseline:.2f} ± {baseline_std:.2f} | {100 * match:.1f} % |"
        )
    return "\n".join(lines)


def run_one(name: str, seed: int, args: argparse.Namespace, vae_dir: Path, samplers, classifier) -> None:
    """Train (if missing) and score one recipe × seed; merge its rows into ``args.results``."""
    run_dir = run_dir_of(name, seed, args.work_dir)
    if (run_dir / "training.json").exists():
        training = json.loads((run_dir / "training.json").read_text())
    elif (run_dir / "pipeline" / "model_index.json").exists():
        training = search_record(name, seed, run_dir, vae_dir)
        if training is None:
            print(f"{run_dir}: a pipeline without exp.json or training.json (not finished): skipped", flush=True)
            return
    elif (run_dir / "pipeline").exists():
        print(f"{run_dir}: training in progress or failed (no model_index.json): skipped", flush=True)
        return
    else:
        print(f"{name} seed {seed}: training into {run_dir}", flush=True)
        training = train_recipe(name, seed, run_dir, vae_dir)
    eval_seed = seed if args.eval_seed is None else args.eval_seed
    rows = [{"recipe": name, "seed": seed, **r} for r in score_run(run_dir, samplers, args, eval_seed, classifier)]
    for r in rows:
        r["equals_search_score"] = compare_with_search(run_dir, r)
        print(f"  {name} s{seed} (eval {eval_seed}) {r['sampler']} {r['steps']} (NFE {r['nfe']}, n = {r['n']} × "
              f"{r['draws']}): FD {r['fd']:.2f} vs real {r['fd_real_baseline']:.2f} ± {r['fd_real_baseline_std']:.2f} "
              f"(×{r['fd_ratio']:.3f}), class match {100 * r['class_match']:.1f} %, {r['score_seconds']:.0f} s; "
              f"equals the search's score: {r['equals_search_score']}", flush=True)  # fmt: skip
    merge_results(args.results, {**training, "run_dir": str(run_dir), "vae_dir": str(vae_dir)}, rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipes", nargs="+", default=["base"], choices=list(RECIPES), help="recipes to run")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds")
    p.add_argument("--eval_seed", type=int, help="seed of the sampled labels, noise and baseline draws (unset: seed)")
    p.add_argument("--samplers", nargs="+", default=["DPM-Solver++:10"], help='SAMPLER:STEPS, e.g. "flow Euler:10"')
    p.add_argument("--sampling_shift", type=float, help="sample with this time shift instead of the saved one")
    p.add_argument("--n", type=int, default=1000, help="images per scored draw (the baseline uses the same n)")
    p.add_argument("--draws", type=int, default=3, help="independent draws of --n, FD averaged")
    p.add_argument("--sample_batch_size", type=int, default=250)
    p.add_argument("--num_threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--vae_dir", type=Path, default=VAE_DIR, help="the VAE every recipe trains on")
    p.add_argument("--work_dir", type=Path, default=WORK_DIR, help="runs, latent cache (and a VAE if trained)")
    p.add_argument("--results", type=Path, default=RESULTS, help="JSON file the rows merge into")
    p.add_argument("--table", action="store_true", help="print the table of --results and exit")
    args = p.parse_args(argv)
    if not args.table:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        torch.set_num_threads(args.num_threads)
        from scratch_diffusion import metrics

        samplers = parse_samplers(args.samplers)
        vae_dir = ensure_vae(args.vae_dir, args.work_dir)
        classifier = metrics.load_digits_classifier()
        for name in dict.fromkeys(args.recipes):
            for seed in dict.fromkeys(args.seeds):
                run_one(name, seed, args, vae_dir, samplers, classifier)
    if args.results.exists():
        print(table(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
