"""Few-step models from the demo's flow model (issue 23): consistency tuning and MeanFlow, evaluations counted.

The teacher is the demo's own flow model (``--teacher``: a demo output folder, used in place; without it, the demo's
recipe is trained into ``--output_dir``/teacher). Per tuning seed it is tuned with ``--objective consistency`` and
``--objective meanflow`` (``scratch_diffusion.demo.few_step_study.RECIPES``), then MeanFlow is trained from scratch
with the teacher's and the tuning's time together, and the single-seed ``LEVERS`` runs follow. Every setting —
the teacher with flow Euler and DPM-Solver++ at 1, 2 and 4 steps and flow Heun at 5 (its best at ≤ 10 evaluations),
each model with its own sampler at 1, 2 and 4 steps (from scratch: 1 and 2) — is sampled on ``--draws`` draws of
``--n`` images (levers: one draw) and scored by the demo's metric: FD and KID beside the real baseline at the same n,
class match by the digits CNN, model evaluations per image as the pipeline counts them. Training runs use
``--num_threads`` torch threads (1: like for like with the demo's teacher, trained on 1).

Resumable: each model's training record and each setting's scores are stored as soon as they exist; a run with the
same protocol skips what is recorded, and a model is reused while its recorded command is the one wanted (another
recipe trains it again and scores it afresh; another protocol starts the scores afresh).

    python benchmarks/bench_few_step_models.py --teacher outputs/demo-full22  # → results/few_step_models.json
    python benchmarks/bench_few_step_models.py --quick --output_dir /tmp/fs   # a toy teacher, a few images
    python benchmarks/bench_few_step_models.py --table                        # the docs' tables, from the JSON
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

try:  # run as a script, this folder is on sys.path; imported by the tests, it is the `benchmarks` package
    from provenance import git, print_recorded
    from results_io import environment, read_results, write_results
except ModuleNotFoundError:
    from benchmarks.provenance import git, print_recorded
    from benchmarks.results_io import environment, read_results, write_results

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "few_step_models.json"
QUICK = {"n": 20, "draws": 1, "levers": 1}  # --quick: n and draws at most these, the first lever only
TEACHER_KEYS = ("command", "steps", "seconds", "num_threads", "model", "train_batch_size")


def protocol_of(args) -> dict:
    from scratch_diffusion.demo import few_step_study as study

    return {"n": args.n, "draws": args.draws, "teacher": str(args.teacher) if args.teacher else "trained here",
            "teacher_settings": [list(s) for s in study.TEACHER_SETTINGS], "tuned_steps": list(study.TUNED_STEPS),
            "scratch_steps": list(study.SCRATCH_STEPS), "eval_seed": study.EVAL_SEED, "quick": args.quick}  # fmt: skip


def recorded(args) -> dict:
    """The results under this run's protocol (an empty record under another)."""
    record = read_results(args.results) if args.results.is_file() else {}
    return record if record.get("protocol") == protocol_of(args) else {"protocol": protocol_of(args), "models": {}}


def stored(args, model, training: dict) -> dict:
    """The settings recorded for ``model`` made by this very training (none for a model trained anew)."""
    entry = recorded(args)["models"].get(model.name, {})
    return entry.get("settings", {}) if entry.get("training") == training else {}


def store(args, model, training: dict, row: dict | None = None, **more) -> dict:
    """Record ``model`` (its training record and ``more``) and, given, one setting's ``row`` (with this machine's
    environment and the commit); the model's recorded settings."""
    record = recorded(args)
    entry = record["models"].get(model.name, {})
    settings = entry.get("settings", {}) if entry.get("training") == training else {}
    if row is not None:
        row.update(environment=environment(), commit=git("rev-parse", "HEAD"),
                   uncommitted_changes=bool(git("status", "--porcelain", "--untracked-files=no")))  # fmt: skip
        settings[row["key"]] = row
    record["models"][model.name] = {**model.row(), **more, "training": training, "settings": settings}
    write_results(args.results, record)
    return settings


def measure(args, model, training: dict, metric, **more) -> None:
    """Score every setting of ``model`` not yet recorded for this training (each stored at once)."""
    from scratch_diffusion.demo import few_step_study as study

    settings = stored(args, model, training) or store(args, model, training, **more)  # the training recorded first
    pending = [(s, k) for s, k in model.settings if study.setting_key(s, k) not in settings]
    print(f"{model.name}: {len(settings)} settings recorded, {len(pending)} to measure ({args.n} × {model.draws})")
    pipe = study.load_study_pipeline(model.folder) if pending else None
    for sampler, steps in pending:
        draws = min(model.draws, args.draws)
        row = study.score_setting(pipe, sampler, steps, args.n, draws, args.batch_size, metric)
        store(args, model, training, row, **more)
        print(f"  {row['key']}: {row['nfe']:g} evals, FD {row['fd']:.2f} (×{row['fd_ratio']:.2f}), KID "
              f"{row['kid']:.0f}, class match {100 * row['class_match']:.1f} %, {row['seconds']:.1f} s", flush=True)


def run(args) -> None:
    """The teacher, the tuned models per seed, from scratch per seed, then the levers."""
    from scratch_diffusion import metrics
    from scratch_diffusion.demo import few_step_study as study

    metric = metrics.load_digits_classifier()
    teacher = study.prepare_teacher(args.teacher, args.output_dir, args.quick, args.num_threads)
    teacher_training = {k: teacher.record.get(k) for k in TEACHER_KEYS}
    measure(args, study.teacher_model(teacher, args.draws), teacher_training, metric)
    tuning: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for objective in study.RECIPES:
            model = study.tuned_model(teacher, objective, seed, args.output_dir, args.draws, args.quick)
            training = study.train_or_reuse(model.folder, model.argv)
            tuning.setdefault(objective, []).append(training)
            measure(args, model, training, metric)
    budget_steps = study.scratch_steps(teacher.seconds, tuning["meanflow"])
    steps = min(budget_steps, study.QUICK_CHANGES["max_train_steps"]) if args.quick else budget_steps
    budget = {"teacher_seconds": teacher.seconds, "tuning_seconds": [r["seconds"] for r in tuning["meanflow"]],
              "tuning_seconds_per_step": [r["seconds_per_step"] for r in tuning["meanflow"]],
              "steps": budget_steps, "trained_steps": steps}  # fmt: skip
    for seed in args.scratch_seeds or args.seeds:
        model = study.scratch_model(teacher, seed, steps, args.output_dir, args.draws, args.quick)
        measure(args, model, study.train_or_reuse(model.folder, model.argv), metric, budget=budget)
    for lever in args.levers:
        model = study.lever_model(teacher, lever, args.seeds[0], args.output_dir, args.quick)
        measure(args, model, study.train_or_reuse(model.folder, model.argv), metric)


def summarise(args) -> dict:
    """Add the teacher's best and the targets to the results file; the record."""
    from scratch_diffusion.demo import few_step_report as report

    record = read_results(args.results)
    record["teacher_best"] = report.teacher_best(record)
    record["targets"] = report.targets(record)
    write_results(args.results, record)
    return record


def main(argv: list[str] | None = None) -> int:
    from scratch_diffusion.demo import few_step_study as study
    from scratch_diffusion.demo.few_step_report import few_step_tables

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", type=Path, help="a demo output folder (pipeline/, vae/, latent-cache/, "
                        "training.json); default: train the demo's model into OUTPUT_DIR/teacher")  # fmt: skip
    parser.add_argument("--output_dir", type=Path, default=ROOT / "outputs" / "few-step-models", help="models")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="print the recorded tables and exit")
    parser.add_argument("--quick", action="store_true", help="a toy teacher, a few images: the script end to end")
    parser.add_argument("--n", type=int, default=1000, help="images per draw")
    parser.add_argument("--draws", type=int, default=3, help="independent draws per setting (levers: 1)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="tuning seeds (levers: the first)")
    parser.add_argument("--scratch_seeds", type=int, nargs="+", help="MeanFlow-from-scratch seeds; unset: --seeds")
    parser.add_argument("--no_levers", action="store_true", help="skip the LEVERS runs")
    parser.add_argument("--num_threads", type=int, default=1, help="torch threads, training and sampling")
    parser.add_argument("--batch_size", type=int, default=250, help="images per pipeline call")
    args = parser.parse_args(argv)
    if args.table:
        print_recorded(args.results, few_step_tables, "python benchmarks/bench_few_step_models.py")
        return 0
    args.levers = [] if args.no_levers else list(study.LEVERS)
    args.output_dir = args.output_dir.resolve()  # the recorded commands hold absolute paths: resumable from anywhere
    args.teacher = args.teacher.resolve() if args.teacher else None
    if args.quick:
        args.n, args.draws, args.levers = min(args.n, QUICK["n"]), min(args.draws, QUICK["draws"]), \
            args.levers[: QUICK["levers"]]  # fmt: skip
    torch.set_num_threads(args.num_threads)
    run(args)
    print(few_step_tables(summarise(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
