"""1 process × 2 threads vs 2 processes × 1 thread under ``accelerate launch``: the demo's training on 2 CPU cores.

The demo's recipe (:func:`scratch_diffusion.demo.training.probe_argv` over
:data:`~scratch_diffusion.demo.config.DEFAULTS`: flow matching, logit-normal σ, the compact UNet, global batch 64,
class-conditional, EMA; the probe's cheapest outputs, so no sample grids inside the timed loop) is trained for
``--steps`` updates by each arm, each a fresh subprocess, as a user would launch it:

* ``1x2``: ``python training/train.py …`` with ``OMP_NUM_THREADS=2`` (one process, two torch threads; what the
  demo does in its own process).
* ``2x1``: ``accelerate launch --multi_gpu --num_processes 2 --num_cpu_threads_per_process 1 training/train.py …
  --train_batch_size 32`` with ``ACCELERATE_USE_CPU=1`` (two gloo-joined CPU processes of one thread each, the
  same global batch). accelerate 1.15's ``--cpu`` launcher starts one process unless mpirun is set up, so this is
  the torchrun launcher the 2-process tests use (``tests/training/conftest.py``'s ``launch_command``).
* ``1x1`` (optional): ``python training/train.py …`` with ``OMP_NUM_THREADS=1``: what the second core buys at all.
* ``1x2-launch`` (optional): ``accelerate launch --num_processes 1 --num_cpu_threads_per_process 2``: the launcher's
  own cost, apart from the split.

Seconds per step and images/s are the trainer's own (its log line ``N steps at X images/s (first step
excluded)``: the warm-up update is left out; s/step = global batch / images/s); the wall and CPU seconds are the
whole subprocess (start-up, data, latent cache read, saving). The arms run interleaved, ``--repeats`` rounds; the
best and every value are recorded. In latent space (``--space latent``, the default) the demo's VAE is trained once
(``--vae_steps``, :func:`~scratch_diffusion.demo.training.train_vae_model`) into ``--work_dir`` and every latent
arm reads its latent cache, which a 2-step priming run fills before any timed arm. Run it alone: a job beside it
measures the contention (the load average before and after each space is recorded): beside busy processes, libgomp's
default spin-waiting makes a 2-thread process many times slower, which ``--omp_wait_policy PASSIVE`` shows.

    python benchmarks/bench_processes.py                        # latent, 2 arms × 2 rounds × 150 steps: ~4 min
    python benchmarks/bench_processes.py --space latent pixel --arms 1x2 2x1 1x1 1x2-launch    # ~15 min
    python benchmarks/bench_processes.py --table                # the recorded table

Runs are recorded in ``benchmarks/results/processes.json``, keyed by space, steps, global batch and
``OMP_WAIT_POLICY`` (a rerun replaces its entry).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN_PY = ROOT / "training" / "train.py"
RESULTS = ROOT / "benchmarks" / "results" / "processes.json"
REFERENCE_ARM = "1x2"
THROUGHPUT_LINE = re.compile(r"(\d+) steps at ([\d.]+) images/s \(first step excluded")
BATCH_LINE = re.compile(r"(\d+) process\(es\) × batch (\d+) × accumulation (\d+) = (\d+) images per step")


@dataclass(frozen=True)
class Arm:
    """One way to run the same training: ``processes`` × ``threads`` torch threads, plain python or launched."""

    processes: int
    threads: int
    launched: bool  # under ``accelerate launch`` (always when processes > 1)

    def command(self, argv: list[str], global_batch: int) -> list[str]:
        """The subprocess's command line: ``argv`` with the per-process batch that keeps ``global_batch``."""
        argv = [*argv, "--train_batch_size", str(global_batch // self.processes)]  # argparse: the last one wins
        if not self.launched:
            return [sys.executable, str(TRAIN_PY), *argv]
        with socket.socket() as s:  # a free port for the process group
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launcher = ["--multi_gpu"] if self.processes > 1 else []  # the torchrun launcher: one process per rank
        return [
            sys.executable, "-m", "accelerate.commands.launch", *launcher,
            "--num_processes", str(self.processes), "--num_machines", "1",
            "--num_cpu_threads_per_process", str(self.threads),
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
            str(TRAIN_PY), *argv,
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        threads = str(self.threads)
        return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "ACCELERATE_USE_CPU": "1",
                "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}  # fmt: skip

    @property
    def shape(self) -> str:
        return f"{self.processes} × {self.threads}" + (" (launched)" if self.launched and self.processes == 1 else "")


ARMS = {
    "1x2": Arm(1, 2, launched=False),
    "2x1": Arm(2, 1, launched=True),
    "1x1": Arm(1, 1, launched=False),
    "1x2-launch": Arm(1, 2, launched=True),
}


def children_cpu_seconds() -> float:
    """User + system CPU seconds of every waited-for descendant so far (the launcher's workers included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_arm(arm: Arm, argv: list[str], global_batch: int, timeout: float, wait_policy: str | None = None) -> dict:
    """Train once with ``arm`` (then delete the output); the trainer's throughput, the subprocess's wall and CPU s.

    ``wait_policy``: ``OMP_WAIT_POLICY`` of the run (unset: libgomp's default, which spins while it waits).
    """
    command = arm.command(argv, global_batch)
    env = arm.env() if wait_policy is None else {**arm.env(), "OMP_WAIT_POLICY": wait_policy}
    cpu_start, start = children_cpu_seconds(), time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    wall, cpu = time.perf_counter() - start, children_cpu_seconds() - cpu_start
    shutil.rmtree(argv[argv.index("--output_dir") + 1], ignore_errors=True)
    log = result.stdout + result.stderr
    throughput, batch = THROUGHPUT_LINE.search(log), BATCH_LINE.search(log)
    if result.returncode != 0 or throughput is None or batch is None:
        raise RuntimeError(f"arm {arm.shape} exited {result.returncode} without its throughput line; command: "
                           f"{shlex.join(command)}\n{log[-4000:]}")  # fmt: skip
    processes, per_process, _, total = map(int, batch.groups())
    if (processes, total) != (arm.processes, global_batch):
        raise RuntimeError(f"arm {arm.shape} ran {processes} process(es) × batch {per_process} = {total} images "
                           f"per step; expected {arm.processes} process(es) and {global_batch}.")  # fmt: skip
    images_per_second = float(throughput.group(2))
    return {
        "timed_steps": int(throughput.group(1)),
        "images_per_second": images_per_second,
        "seconds_per_step": global_batch / images_per_second,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "command": shlex.join(command),
    }


def prepare_space(config, args: argparse.Namespace) -> dict:
    """Latent: train the demo's VAE once (or reuse it); either space: a 2-step priming run (fills the latent cache)."""
    from scratch_diffusion.demo.training import probe_argv, train_vae_model, vae_argv
    from scratch_diffusion.training import run_training

    record: dict = {}
    if config.space == "latent":
        if args.reuse_vae and (config.vae_dir / "config.json").exists():
            record["vae"] = {"reused": str(config.vae_dir)}
        else:
            vae = train_vae_model(vae_argv(config.vae_dir, args.vae_steps, args.seed, config.digits_split))
            record["vae"] = {k: vae[k] for k in ("steps", "psnr", "fd", "fd_real_baseline", "latent_shape", "seconds")}
            print(f"      VAE: {vae['steps']} steps in {vae['seconds']:.0f} s, held-out PSNR {vae['psnr']:.1f} dB",
                  flush=True)  # fmt: skip
    start = time.perf_counter()
    run_training(probe_argv(config, args.work_dir / "prime", 2))
    shutil.rmtree(args.work_dir / "prime", ignore_errors=True)
    record["priming_seconds"] = time.perf_counter() - start
    return record


def time_space(space: str, args: argparse.Namespace) -> dict:
    """Every arm of ``args.arms`` in ``space``, interleaved over ``args.repeats`` rounds; the record of this space."""
    from scratch_diffusion.demo.cli import build_parser
    from scratch_diffusion.demo.config import resolve_config
    from scratch_diffusion.demo.training import probe_argv

    options = ["--output_dir", str(args.work_dir), "--seed", str(args.seed), "--space", space]
    config = resolve_config(build_parser().parse_args(options))
    global_batch = config.train_batch_size
    if any(global_batch % ARMS[name].processes for name in args.arms):
        raise ValueError(f"the demo's batch {global_batch} does not split over the arms' processes {args.arms}.")
    print(f"[{space}] preparing", flush=True)
    record = {"space": space, "steps": args.steps, "global_batch": global_batch, "model": config.model,
              "objective": config.objective, "omp_wait_policy": args.omp_wait_policy, **prepare_space(config, args),
              "load_before": os.getloadavg()}  # fmt: skip
    runs: dict[str, list[dict]] = {name: [] for name in args.arms}
    for round_index in range(args.repeats):
        for name in args.arms:
            argv = probe_argv(config, args.work_dir / f"{space}-{name}", args.steps)
            run = run_arm(ARMS[name], argv, global_batch, args.timeout, args.omp_wait_policy)
            runs[name].append(run)
            print(f"[{space}] round {round_index + 1}/{args.repeats} {ARMS[name].shape}: "
                  f"{run['seconds_per_step'] * 1e3:.0f} ms/step, {run['images_per_second']:.0f} images/s, "
                  f"{run['wall_seconds']:.0f} s wall, {run['cpu_seconds']:.0f} CPU s", flush=True)  # fmt: skip
    record["load_after"] = os.getloadavg()
    record["arms"] = {name: arm_record(ARMS[name], runs[name], global_batch) for name in args.arms}
    return record


def arm_record(arm: Arm, runs: list[dict], global_batch: int) -> dict:
    """An arm's rounds and their best (the fastest step loop; the shortest wall)."""
    return {
        "processes": arm.processes,
        "threads": arm.threads,
        "launched": arm.launched,
        "batch_per_process": global_batch // arm.processes,
        "best_seconds_per_step": min(r["seconds_per_step"] for r in runs),
        "best_wall_seconds": min(r["wall_seconds"] for r in runs),
        "runs": runs,
    }


def table(records: list[dict]) -> str:
    """The markdown table: one row per (space, arm), speed relative to ``1x2`` of the same run."""
    lines = [
        "| space | arm | processes × threads | batch per process | s/step: best (all) | images/s (best) "
        "| vs 1 × 2 | wall s incl. start-up: best (all) | CPU s per run | load avg before → after |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(records, key=lambda r: (r["space"], r["steps"], r.get("omp_wait_policy") or "")):
        policy = f", OMP_WAIT_POLICY={r['omp_wait_policy']}" if r.get("omp_wait_policy") else ""
        reference = r["arms"].get(REFERENCE_ARM)
        for name, a in r["arms"].items():
            runs = a["runs"]
            speed = f"{reference['best_seconds_per_step'] / a['best_seconds_per_step']:.2f}×" if reference else "–"
            each = ", ".join(f"{x['seconds_per_step']:.3f}" for x in runs)
            walls = ", ".join(f"{x['wall_seconds']:.0f}" for x in runs)
            cpu = ", ".join(f"{x['cpu_seconds']:.0f}" for x in runs)
            lines.append(
                f"| {r['space']} ({r['steps']} steps{policy}) | {name} | {ARMS[name].shape} | {a['batch_per_process']} "
                f"| {a['best_seconds_per_step']:.3f} ({each}) | {r['global_batch'] / a['best_seconds_per_step']:.0f} "
                f"| {speed} | {a['best_wall_seconds']:.0f} ({walls}) | {cpu} "
                f"| {r['load_before'][0]:.1f} → {r['load_after'][0]:.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--space", nargs="+", choices=("latent", "pixel"), default=["latent"])
    p.add_argument("--arms", nargs="+", choices=tuple(ARMS), default=["1x2", "2x1"])
    p.add_argument("--steps", type=int, default=150, help="optimizer updates per run (the first is not timed)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds of every arm")
    p.add_argument("--vae_steps", type=int, default=300, help="steps of the latent arms' VAE (trained once)")
    p.add_argument("--reuse_vae", action="store_true", help="keep a VAE already in --work_dir/vae")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_threads", type=int, default=2, help="torch threads of this process (VAE and priming)")
    p.add_argument("--omp_wait_policy", choices=("PASSIVE", "ACTIVE"), help="OMP_WAIT_POLICY of every arm (unset)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per training subprocess")
    p.add_argument("--work_dir", type=Path, default=ROOT / "outputs" / "processes-bench")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--table", action="store_true", help="print the recorded table and exit")
    args = p.parse_args(argv)
    if args.steps < 2 or args.repeats < 1:
        p.error(f"--steps {args.steps} / --repeats {args.repeats}: allowed at least 2 steps and 1 repeat")
    recorded = json.loads(args.results.read_text()) if args.results.exists() else {}
    if args.table:
        print(table(list(recorded.values())))
        return 0
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.num_threads)
    policy = f"-omp{args.omp_wait_policy.lower()}" if args.omp_wait_policy else ""
    for space in args.space:  # each space is recorded as soon as it is timed
        record = {**time_space(space, args), "torch": torch.__version__, "cpu_count": os.cpu_count(),
                  "date": time.strftime("%Y-%m-%d")}  # fmt: skip
        recorded[f"{space}-steps{args.steps}-batch{record['global_batch']}{policy}"] = record
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(recorded, indent=1) + "\n")
    print(table(list(recorded.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
