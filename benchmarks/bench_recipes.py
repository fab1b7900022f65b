"""The demo's recipe search (issue 12): train candidate recipes on the built-in digits, score them at ≤ 10 NFE.

Each recipe is the demo's own training command (:func:`scratch_diffusion.demo.training.training_argv`
over the demo's :data:`~scratch_diffusion.demo.config.DEFAULTS`) with some settings changed, run in
this process through :func:`scratch_diffusion.training.run_training`. The trained pipeline is sampled
with few-step samplers (≤ 10 UNet evaluations per image: the saved scheduler, DPM-Solver++ 2M, the
3M + UniC few-step setting ``FEW_STEP_CONFIG``, flow Heun) with the demo's labels and noise
(:func:`scratch_diffusion.demo.sampling.requested_labels`), and scored with
:func:`scratch_diffusion.metrics.evaluate_samples`: Fréchet distance in the digits classifier's
feature space beside the real-vs-real baseline at the same n (mean ± std of 10 real draws) and the
class match. The raw (non-EMA) weights of the last step are scored too (``+ raw`` rows: the
trainer's final checkpoint), so every run also answers "EMA or not".

Two groups of recipes: ``recipes`` (the demo's levers: EMA length, LR, batch, UNet size, σ sampling,
label dropout) and ``objectives`` (the trainer's objective / prediction type / schedule at equal
steps, each sampled with its saved scheduler and with DPM-Solver++ at 10 steps).

    python benchmarks/bench_recipes.py --recipes steps_1600 ddpm_eps_linear [--seed 0] [--n 500]
    python benchmarks/bench_recipes.py --group objectives --n 500
    python benchmarks/bench_recipes.py --table        # print every row of --results
    python benchmarks/bench_recipes.py --summary      # the README's table: saved sampler and DPM-Solver++ at 10

The first search (``benchmarks/results/recipes-v1.json``, the README's "first search" table) ran before three
changes of protocol: the tiny UNet, training on all 1,797 digits (the FD reference included) and i.i.d. requested
labels; its rows are kept as they were measured and are not comparable with the current ones.

Results merge into ``--results`` (default benchmarks/results/recipes.json), one row per recipe ×
seed × weights × sampler × steps × n; trained runs stay under ``--work_dir`` so ``--n 1000`` re-scores
one without retraining. Seconds per step are this process's wall and CPU time per update at
``--num_threads`` threads; on a shared host read the CPU time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "recipes.json"
CHEAP_OUTPUTS = ["--logger", "none", "--eval_batch_size", "1", "--ddpm_num_inference_steps", "1"]
TINY_NO_ATTENTION = {  # the tiny preset's widths without its 8×8 attention blocks
    "block_out_channels": [32, 64], "layers_per_block": 1, "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"], "norm_num_groups": 8,
}  # fmt: skip
WIDE = {  # tiny's layout at 1.5× the widths (~1.5 M parameters)
    "block_out_channels": [48, 96], "layers_per_block": 1, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8, "attention_head_dim": 8,
}  # fmt: skip
MODEL_FILES = {"tiny_no_attention": TINY_NO_ATTENTION, "wide": WIDE}


@dataclass(frozen=True)
class Recipe:
    """The demo recipe with ``demo`` (DemoConfig fields) and extra ``train.py`` ``flags`` changed."""

    demo: dict = dataclasses.field(default_factory=dict)
    flags: tuple[str, ...] = ()


# The demo recipe as it was before issue 12 (800 steps, uniform σ), and the objectives table's length.
STEPS_800 = {"max_train_steps": 800, "weighting_scheme": "uniform"}
RECIPES = {
    "demo": Recipe(demo={}),  # the demo as it ships: compact UNet, 1600 steps, logit-normal σ, training split
    "tiny_1600": Recipe(demo={"model": "tiny"}),  # the previous demo UNet
    "all_digits": Recipe(demo={"digits_split": "all"}),  # trained on the FD reference too (the previous demo data)
    "steps_800": Recipe(demo=STEPS_800),  # flow, tiny UNet, batch 64, LR 1e-3, 100 warm-up steps, cosine LR
    "steps_1200": Recipe(demo={**STEPS_800, "max_train_steps": 1200}),
    "steps_1600": Recipe(demo={**STEPS_800, "max_train_steps": 1600}),
    "ema_power_2/3": Recipe(demo=STEPS_800, flags=("--ema_power", str(2 / 3))),
    "ema_power_1": Recipe(demo=STEPS_800, flags=("--ema_power", "1.0")),
    "lr_2e-3": Recipe(demo={**STEPS_800, "learning_rate": 2e-3}),
    "lr_2e-3_warmup_50": Recipe(demo={**STEPS_800, "learning_rate": 2e-3, "lr_warmup_steps": 50}),
    "batch_128_400_steps": Recipe(demo={**STEPS_800, "train_batch_size": 128, "max_train_steps": 400}),
    "tiny_no_attention": Recipe(demo={**STEPS_800, "model": "tiny_no_attention"}),
    "wide": Recipe(demo={**STEPS_800, "model": "wide"}),
    "class_dropout_0.2": Recipe(demo={**STEPS_800, "class_dropout_prob": 0.2}),
    "flow_logit_normal": Recipe(demo={**STEPS_800, "weighting_scheme": "logit_normal"}),
    "flow_logit_normal_1600": Recipe(demo={"max_train_steps": 1600, "weighting_scheme": "logit_normal"}),
    "flow_shift_2": Recipe(demo=STEPS_800, flags=("--flow_shift", "2.0")),
    "flow_shift_0.5": Recipe(demo=STEPS_800, flags=("--flow_shift", "0.5")),
}
DDPM = {**STEPS_800, "objective": "ddpm", "weighting_scheme": None}
V_PRED = {**DDPM, "prediction_type": "v_prediction"}
OBJECTIVES = {  # at the same 800 steps; the flow uniform row is steps_800
    "ddpm_eps_linear": Recipe(demo=DDPM),
    "ddpm_eps_cosine": Recipe(demo=DDPM, flags=("--ddpm_beta_schedule", "squaredcos_cap_v2")),
    "ddpm_v_zero_snr": Recipe(demo=V_PRED, flags=("--rescale_betas_zero_snr",)),
    "ddpm_v_cosine": Recipe(demo=V_PRED, flags=("--ddpm_beta_schedule", "squaredcos_cap_v2")),
    "ddpm_eps_min_snr_5": Recipe(demo=DDPM, flags=("--snr_gamma", "5")),
    "ddpm_v_zero_snr_min_snr_5": Recipe(demo=V_PRED, flags=("--rescale_betas_zero_snr", "--snr_gamma", "5")),
    "ddpm_x0_linear": Recipe(demo={**DDPM, "prediction_type": "sample"}),
    "ddpm_eps_scaled_linear": Recipe(demo=DDPM, flags=("--ddpm_beta_schedule", "scaled_linear")),
    "ddpm_eps_sigmoid": Recipe(demo=DDPM, flags=("--ddpm_beta_schedule", "sigmoid")),
    **{name: RECIPES[name] for name in ("steps_800", "flow_logit_normal", "flow_shift_2")},
}
GROUPS = {"recipes": RECIPES, "objectives": OBJECTIVES}
ALL_RECIPES = {**RECIPES, **OBJECTIVES}


def demo_config(recipe: Recipe, seed: int, work_dir: Path):
    """The demo's resolved settings (its own command line, no flags) with ``recipe.demo`` applied."""
    from scratch_diffusion.demo.cli import build_parser
    from scratch_diffusion.demo.config import resolve_config

    config = resolve_config(build_parser().parse_args(["--output_dir", str(work_dir), "--seed", str(seed)]))
    # the recipes below were searched on pixels (the demo's old space), logit-normal σ centred at 0
    changes = {"space": "pixel", "logit_mean": None, **recipe.demo}
    if changes.get("objective") == "ddpm":
        changes.setdefault("prediction_type", "epsilon")
    if changes.get("model") in MODEL_FILES:
        model_file = work_dir / f"{changes['model']}.json"
        model_file.parent.mkdir(parents=True, exist_ok=True)
        model_file.write_text(json.dumps(MODEL_FILES[changes["model"]]))
        changes["model"] = str(model_file)
    return dataclasses.replace(config, **changes)


def train_recipe(name: str, recipe: Recipe, seed: int, run_dir: Path) -> dict:
    """Train ``recipe`` into ``run_dir/pipeline`` (a final checkpoint keeps the raw weights); returns its timing."""
    from scratch_diffusion.demo.training import timed_training, training_argv

    config = demo_config(recipe, seed, run_dir)
    steps = config.max_train_steps
    argv = [*training_argv(config, steps), *CHEAP_OUTPUTS, "--checkpointing_steps", str(steps), *recipe.flags]
    record = {"recipe": name, "seed": seed, "train_batch_size": config.train_batch_size, **timed_training(argv)}
    (run_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def few_step_samplers(path: str, full: bool = True) -> list[tuple[str, int]]:
    """(sampler, steps) pairs at ≤ 10 UNet evaluations per image on the model's ``path``; DPM-Solver++ 10 last.

    ``full=False``: the saved scheduler and DPM-Solver++ at 10 steps only (the objectives table). Flow Heun
    at 5 steps (9 NFE) is left out: it scored 1.9× the baseline where Euler at 10 scored 1.5× (demo recipe).
    """
    own = ("flow Euler" if path == "flow" else "DDIM", 10)
    extra = [("DPM-Solver++ 3M UniC", 10), ("DPM-Solver++", 5)] if full else []
    return [own, *extra, ("DPM-Solver++", 10)]


def make_few_step_scheduler(sampler: str, pipe):
    """The demo's scheduler of ``sampler``, plus ``DPM-Solver++ 3M UniC`` (``FEW_STEP_CONFIG`` on the model's path)."""
    from scratch_diffusion.demo.sampling import make_scheduler
    from scratch_schedulers import FEW_STEP_CONFIG

    path = pipe.trained_parametrization.path
    if sampler != "DPM-Solver++ 3M UniC":
        return make_scheduler(sampler, pipe.scheduler.config, path)
    dpm = make_scheduler("DPM-Solver++", pipe.scheduler.config, path)
    return type(dpm).from_config(dpm.config, **FEW_STEP_CONFIG)


@torch.no_grad()
def score(pipe, classifier, sampler: str, steps: int, n: int, seed: int, batch_size: int = 250) -> dict:
    """Sample ``n`` images with the demo's seeded labels and noise; the metric's scores and the evaluations."""
    from scratch_diffusion import metrics
    from scratch_diffusion.demo.sampling import evaluations_per_image, requested_labels

    saved = pipe.scheduler
    pipe.scheduler = make_few_step_scheduler(sampler, pipe)
    nfe = evaluations_per_image(pipe.scheduler, steps)
    labels = requested_labels(n, seed)
    generator = torch.Generator().manual_seed(seed)
    start, chunks = time.perf_counter(), []
    for begin in range(0, n, batch_size):
        chunk = labels[begin : begin + batch_size].tolist()
        out = pipe(batch_size=len(chunk), num_inference_steps=steps, generator=generator, class_labels=chunk,
                   output_type="np")  # fmt: skip
        chunks.append(metrics.images_from_numpy(out.images))
    seconds = time.perf_counter() - start
    pipe.scheduler = saved
    r = metrics.evaluate_samples(torch.cat(chunks), labels, classifier=classifier, seed=seed)
    print(f"  {sampler} {steps} (NFE {nfe}, n={n}): FD {r['fd']:.2f} vs real {r['fd_real_baseline']:.2f} ± "
          f"{r['fd_real_baseline_std']:.2f} (×{r['fd_ratio']:.2f}), class match {100 * r['class_match']:.1f} %, "
          f"{seconds:.0f} s", flush=True)  # fmt: skip
    return {"sampler": sampler, "steps": steps, "nfe": nfe, "sample_seconds": seconds, **r}


def evaluate_run(run_dir: Path, n: int, seed: int, full: bool = True) -> list[dict]:
    """Score the EMA pipeline of ``run_dir`` with the few-step samplers, its raw final weights with DPM-Solver++ 10."""
    from safetensors.torch import load_file

    from scratch_diffusion import metrics
    from scratch_diffusion.pipelines import ScratchDiffusionPipeline

    pipe = ScratchDiffusionPipeline.from_pretrained(str(run_dir / "pipeline"))
    pipe.set_progress_bar_config(disable=True)
    classifier = metrics.load_digits_classifier()
    samplers = few_step_samplers(pipe.trained_parametrization.path, full)
    rows = [{"weights": "ema", "eval_seed": seed, **score(pipe, classifier, s, k, n, seed)} for s, k in samplers]
    raw = sorted((run_dir / "pipeline").glob("checkpoint-*/model.safetensors"))
    if raw:
        pipe.unet.load_state_dict(load_file(str(raw[-1])))
        rows += [
            {"weights": "raw", "eval_seed": seed, **score(pipe, classifier, s, k, n, seed)} for s, k in samplers[-1:]
        ]
    return rows


def merge_results(path: Path, training: dict, rows: list[dict]) -> None:
    """Add ``rows`` (replacing any with the same recipe, seed, weights, sampler, steps, n) to the JSON file."""
    data = json.loads(path.read_text()) if path.exists() else {"runs": {}, "rows": []}
    key = f"{training['recipe']}|seed{training['seed']}"
    data["runs"][key] = training
    new = [{"recipe": training["recipe"], "seed": training["seed"], **r} for r in rows]
    ident = lambda r: (r["recipe"], r["seed"], r["eval_seed"], r["weights"], r["sampler"], r["steps"], r["n"])  # noqa
    replaced = {ident(r) for r in new}
    data["rows"] = [r for r in data["rows"] if ident(r) not in replaced] + new
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def table(path: Path) -> str:
    """One line per scored row: recipe, seed, steps, s/step, weights, sampler, NFE, n, FD vs baseline, class match."""
    data = json.loads(path.read_text())
    lines = [
        "| recipe | seed (evaluation) | train steps | s/step (wall / CPU) | weights | sampler | NFE | n | FD "
        "| real baseline ± std | ratio | class match |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(data["rows"], key=lambda r: (r["recipe"], r["seed"], r["eval_seed"], r["n"], r["fd_ratio"])):
        run = data["runs"][f"{r['recipe']}|seed{r['seed']}"]
        lines.append(
            f"| {r['recipe']} | {r['seed']} ({r['eval_seed']}) | {run['steps']} | {run['seconds_per_step']:.3f} / "
            f"{run['cpu_seconds_per_step']:.3f} | {r['weights']} | {r['sampler']} {r['steps']} | {r['nfe']} "
            f"| {r['n']} | {r['fd']:.2f} | {r['fd_real_baseline']:.2f} ± {r['fd_real_baseline_std']:.2f} "
            f"| {r['fd_ratio']:.2f} | {100 * r['class_match']:.1f} % |"
        )
    return "\n".join(lines)


def summary_table(path: Path) -> str:
    """The README's table: a line per recipe × seed × n; EMA weights, saved sampler and DPM-Solver++ 2M, 10 steps."""
    data = json.loads(path.read_text())
    picked: dict[tuple, dict] = {}
    for r in data["rows"]:
        if r["weights"] == "ema" and r["steps"] == 10 and r["sampler"] in ("flow Euler", "DDIM", "DPM-Solver++"):
            which = "dpm" if r["sampler"] == "DPM-Solver++" else "own"
            picked.setdefault((r["recipe"], r["seed"], r["eval_seed"], r["n"]), {})[which] = r
    lines = [
        "| recipe | train steps | CPU s/step | seed (evaluation) | n | real baseline ± std "
        "| saved sampler, 10 NFE: FD (ratio) | DPM-Solver++ 2M, 10 NFE: FD (ratio) | class match (DPM) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (recipe, seed, eval_seed, n), pair in sorted(
        picked.items(), key=lambda kv: (kv[0][3], kv[1]["dpm"]["fd_ratio"])
    ):
        run, own, dpm = data["runs"][f"{recipe}|seed{seed}"], pair["own"], pair["dpm"]
        lines.append(
            f"| {recipe} | {run['steps']} | {run['cpu_seconds_per_step']:.2f} | {seed} ({eval_seed}) | {n} "
            f"| {dpm['fd_real_baseline']:.2f} ± {dpm['fd_real_baseline_std']:.2f} "
            f"| {own['sampler']}: {own['fd']:.2f} (×{own['fd_ratio']:.2f}) | {dpm['fd']:.2f} (×{dpm['fd_ratio']:.2f}) "
            f"| {100 * dpm['class_match']:.1f} % |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="*", default=[], choices=sorted(ALL_RECIPES), help="recipes to run")
    p.add_argument("--group", choices=sorted(GROUPS), help="run every recipe of a group")
    p.add_argument("--seed", type=int, default=0, help="training seed (and the evaluation's, by default)")
    p.add_argument("--eval_seed", type=int, help="seed of the sampled labels and noise and the baseline draws")
    p.add_argument("--n", type=int, default=500, help="samples per scored setting (the baseline uses the same n)")
    p.add_argument("--num_threads", type=int, default=1, help="torch threads")
    p.add_argument("--work_dir", type=Path, default=Path("outputs/bench_recipes"), help="trained runs")
    p.add_argument("--results", type=Path, default=RESULTS, help="JSON file the rows merge into")
    p.add_argument("--table", action="store_true", help="print every row of --results and exit")
    p.add_argument("--summary", action="store_true", help="print the README's table of --results and exit")
    args = p.parse_args()
    if args.table or args.summary:
        print(table(args.results) if args.table else summary_table(args.results))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.num_threads)
    names = [*args.recipes, *(GROUPS[args.group] if args.group else [])]
    for name in dict.fromkeys(names):
        run_dir = args.work_dir / f"{name.replace('/', '_')}-seed{args.seed}"
        record_file = run_dir / "training.json"
        if record_file.exists():
            training = json.loads(record_file.read_text())  # trained before: re-score only
        else:
            training = train_recipe(name, ALL_RECIPES[name], args.seed, run_dir)
        eval_seed = args.seed if args.eval_seed is None else args.eval_seed
        rows = evaluate_run(run_dir, args.n, eval_seed, full=name in RECIPES and args.eval_seed is None)
        merge_results(args.results, training, rows)
        best = min(rows, key=lambda r: r["fd_ratio"])
        print(f"{name} seed {args.seed} (evaluation seed {eval_seed}): {training['seconds_per_step']:.3f} s/step; "
              f"best {best['weights']} {best['sampler']} {best['steps']} (NFE {best['nfe']}): "
              f"FD {best['fd']:.2f} vs real {best['fd_real_baseline']:.2f} ± {best['fd_real_baseline_std']:.2f} "
              f"(×{best['fd_ratio']:.2f}), class match {100 * best['class_match']:.1f} % (n={args.n})",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
