"""Evaluation during training (``--eval_steps``): FD and KID of samples against real training images.

Every ``--eval_steps`` optimizer steps, and at the last step, the main process samples
``--eval_num_samples`` images from the EMA weights (the raw weights with ``--no-use_ema``) with the
evaluation scheduler (:func:`evaluation_scheduler`), unguided, class-conditional models with labels
0, 1, …, K−1, 0, … (``scratch_diffusion.metrics.sources.sample_from``), and scores them with
:func:`scratch_diffusion.metrics.evaluation.evaluate_samples` against a fixed seeded subset of the
training images (:func:`reference_images`, 2n of them, materialised once: 30 % the reference, 70 % the
pool of the real baseline), in the ``--eval_features`` space (a latent run's samples are decoded by its VAE
first: the metrics compare decoded images with real images). The numbers go to tensorboard (``eval/…``)
and the log; with ``--save_best`` the pipeline of the lowest FD so far is saved to ``OUTPUT_DIR/best/``
beside ``evaluation.json`` (its step and metrics) — and read back when the run is resumed.

Training never sees an evaluation: the sampling noise comes from a private generator seeded by
(``--seed``, "evaluation") — the same noise at every evaluation, so evaluations differ by the
weights only — and everything runs inside ``torch.random.fork_rng``, so the global CPU and CUDA
random states are what they were (exact resume and the weights of a run with evaluation off are
unchanged). The other processes wait at a barrier meanwhile; the time is reported apart from the
training throughput (:attr:`TrainingEvaluation.seconds`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list

from . import export
from .cli_evaluation import feature_space_allowed
from .data import centre_crop
from .errors import ConfigError
from .objectives import Objective
from .optimization import ema_weights
from .randomness import derive_seed

logger = get_logger(__name__)

BEST_DIR = "best"
BEST_RECORD = "evaluation.json"
SAMPLE_CHUNK = 256  # images per pipeline call of an evaluation
# Real images per sample: evaluate_samples holds out 30 % of them as the FD/KID reference and draws the
# real baseline (n images, as many as the samples) from the other 70 %, so 2n leaves 1.4n to draw from.
REAL_IMAGES_PER_SAMPLE = 2
MIN_REAL_IMAGES = 4  # 2 for the reference, 2 for the baseline


@dataclass(frozen=True)
class EvaluationRecord:
    """One evaluation: its step, how it sampled, and what ``evaluate_samples`` returned."""

    step: int
    sampler: str  # e.g. "ScratchDDIMScheduler" or "ScratchDPMSolverScheduler (FEW_STEP_CONFIG)"
    num_inference_steps: int
    seconds: float  # sampling and scoring
    metrics: dict
    # a few-step model's evaluations at further step counts: {str(steps): metrics}, e.g. {"1": …, "4": …}
    other_steps: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def evaluation_scheduler(sampler: str, objective: Objective, sampling_scheduler):
    """The scheduler of ``--eval_sampler``: ``saved`` (the saved pipeline's) or ``dpmsolver`` (few-step).

    ``dpmsolver`` is :class:`~scratch_schedulers.ScratchDPMSolverScheduler` with ``FEW_STEP_CONFIG`` on
    the ``objective``'s path (:meth:`Objective.few_step_scheduler`).
    """
    if sampler == "saved":
        return sampling_scheduler
    if sampler != "dpmsolver":
        raise ValueError(f"--eval_sampler {sampler!r}; allowed: 'saved', 'dpmsolver'.")
    return objective.few_step_scheduler(sampling_scheduler)


def reference_images(dataset, num_images: int, resolution: int, seed: int) -> torch.Tensor:
    """``num_images`` training images ``(N, C, R, R)`` in [-1, 1]: a subset fixed by ``seed``, centre-cropped.

    At most the whole dataset; the subset depends on (``seed``, "eval-reference") only.
    """
    generator = torch.Generator().manual_seed(derive_seed(seed, "eval-reference"))
    indices = torch.randperm(len(dataset), generator=generator)[:num_images].sort().values.tolist()
    return centre_crop(dataset.__getitems__(indices)["images"], resolution)


@torch.no_grad()
def sample_images(pipeline, num_images: int, num_inference_steps: int, seed: int) -> torch.Tensor:
    """``num_images`` unguided samples ``(N, C, H, W)`` in [-1, 1] on the CPU, from a private generator."""
    from scratch_diffusion.metrics.sources import sample_from

    generator = torch.Generator(device=pipeline.unet.device).manual_seed(derive_seed(seed, "evaluation"))
    return sample_from(pipeline, num_images, num_inference_steps, generator, SAMPLE_CHUNK)[0]


@contextlib.contextmanager
def private_randomness(device: torch.device):
    """Leave the global CPU (and this CUDA device's) random state as it was (``torch.random.fork_rng``)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def read_best(output_dir: str) -> EvaluationRecord | None:
    """The record in ``OUTPUT_DIR/best/evaluation.json``, or None (no best yet, or unreadable)."""
    try:
        with open(os.path.join(output_dir, BEST_DIR, BEST_RECORD)) as f:
            return EvaluationRecord(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def save_best(pipeline, record: EvaluationRecord, output_dir: str) -> str:
    """Save ``pipeline`` and ``record`` as ``OUTPUT_DIR/best/``; the folder is replaced whole or not at all."""
    best = os.path.join(output_dir, BEST_DIR)
    partial, old = f"{best}.partial-{os.getpid()}.tmp", f"{best}.old-{os.getpid()}.tmp"  # .tmp: never pushed
    shutil.rmtree(partial, ignore_errors=True)
    export.save_pipeline(pipeline, partial)
    with open(os.path.join(partial, BEST_RECORD), "w") as f:
        json.dump(record.as_dict(), f, indent=2)
    if os.path.isdir(best):
        os.replace(best, old)
    os.replace(partial, best)
    shutil.rmtree(old, ignore_errors=True)
    return best


def describe(record: EvaluationRecord) -> str:
    """The log lines: FD and KID beside their real baselines, at each evaluated step count."""
    lines = [(record.num_inference_steps, record.metrics)] + [(int(k), m) for k, m in record.other_steps.items()]
    text = []
    for steps, m in lines:
        ratio = "" if m["fd_ratio"] is None else f", ×{m['fd_ratio']:.2f}"
        text.append(
            f"Step {record.step}: FD {m['fd']:.3g} (real {m['fd_real_baseline']:.3g}{ratio}), "
            f"KID {m['kid']:.3g} ± {m['kid_std']:.2g} (real {m['kid_real_baseline']:.3g}) in {m['feature_space']} "
            f"features; n={m['n']}, {record.sampler}, {steps} steps"
        )
    return "\n".join(text) + f" ({record.seconds:.1f} s)"


class TrainingEvaluation:
    """When to evaluate, the feature space and real images (main process only), and the results so far.

    Built on every process before the first step; loading the feature network (and training the
    digits CNN into its cache on first use) happens here, so a bad ``--eval_features`` stops the run
    before training, on every process, with a :class:`ConfigError`.
    """

    def __init__(
        self,
        args,
        dataset,
        objective: Objective,
        sampling_scheduler,
        max_train_steps: int,
        accelerator: Accelerator,
        resumed: bool,
        vae=None,
    ):
        self.args, self.sampling_scheduler, self.max_train_steps = args, sampling_scheduler, max_train_steps
        self.vae = vae  # a latent run's VAE: samples are decoded and scored as images
        self.every = args.eval_steps or 0
        self.scheduler = evaluation_scheduler(args.eval_sampler, objective, sampling_scheduler)
        # the first count is the record's (and --save_best's); a few-step model is scored at 1, 2 and 4 too
        self.step_counts = list(args.eval_num_inference_steps or [args.ddpm_num_inference_steps])
        self.num_inference_steps = self.step_counts[0]
        self.sampler = type(self.scheduler).__name__ + (
            " (FEW_STEP_CONFIG)" if args.eval_sampler == "dpmsolver" else ""
        )
        self.best = read_best(args.output_dir) if resumed and args.save_best else None
        self.last: EvaluationRecord | None = None
        self.seconds, self.cpu_seconds = 0.0, 0.0  # this call's evaluations, waits at the barrier included
        self.extractor, self.reference = None, None
        if not self.enabled:
            return
        problem, start = None, time.perf_counter()
        if accelerator.is_main_process:
            try:
                if len(dataset) < MIN_REAL_IMAGES:
                    raise ConfigError(
                        f"--eval_steps needs at least {MIN_REAL_IMAGES} training images (a reference and a real "
                        f"baseline); the data has {len(dataset)}."
                    )
                with private_randomness(accelerator.device):
                    self.extractor = load_feature_space(args.eval_features, accelerator.device)
                    count = REAL_IMAGES_PER_SAMPLE * args.eval_num_samples
                    self.reference = reference_images(dataset, count, args.resolution, args.seed)
            except ConfigError as err:
                problem = str(err)
        problem = broadcast_object_list([problem])[0]  # every process stops together
        if problem is not None:
            raise ConfigError(problem)
        if accelerator.is_main_process:
            logger.info(
                f"Evaluating every {self.every} steps and at step {max_train_steps}: {args.eval_num_samples} samples "
                f"({self.sampler}, {self.num_inference_steps} steps) against {len(self.reference)} training images "
                f"in {getattr(self.extractor, 'name', args.eval_features)} features (set up in "
                f"{time.perf_counter() - start:.1f} s).",
                main_process_only=True,
            )

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def due(self, step: int) -> bool:
        return self.enabled and (step % self.every == 0 or step == self.max_train_steps)

    def __call__(self, accelerator: Accelerator, unet, ema, step: int) -> EvaluationRecord | None:
        """Evaluate the weights of ``step`` on the main process (the others wait); returns the record there."""
        start, cpu_start = time.perf_counter(), time.process_time()
        record = None
        if accelerator.is_main_process:
            model = accelerator.unwrap_model(unet)
            model.eval()
            with private_randomness(accelerator.device), ema_weights(ema, model):
                record = self.evaluate(export.build_pipeline(model, self.scheduler, vae=self.vae), step)
                if self.args.save_best and (self.best is None or record.metrics["fd"] < self.best.metrics["fd"]):
                    self.best = record
                    where = save_best(
                        export.build_pipeline(model, self.sampling_scheduler, vae=self.vae),
                        record,
                        self.args.output_dir,
                    )
                    logger.info(
                        f"Step {step}: the best FD so far; saved the pipeline to {where}", main_process_only=True
                    )
            model.train()
            self.last = record
            m = record.metrics
            accelerator.log(
                {
                    "eval/fd": m["fd"],
                    "eval/fd_real_baseline": m["fd_real_baseline"],
                    **({} if m["fd_ratio"] is None else {"eval/fd_ratio": m["fd_ratio"]}),
                    "eval/kid": m["kid"],
                    "eval/kid_real_baseline": m["kid_real_baseline"],
                    "eval/seconds": record.seconds,
                    **{f"eval/fd@{k}": other["fd"] for k, other in record.other_steps.items()},
                    **{f"eval/kid@{k}": other["kid"] for k, other in record.other_steps.items()},
                },
                step=step,
            )
            logger.info(describe(record), main_process_only=True)
        accelerator.wait_for_everyone()
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.process_time() - cpu_start
        return record

    def evaluate(self, pipeline, step: int) -> EvaluationRecord:
        from scratch_diffusion.metrics.evaluation import evaluate_samples

        start = time.perf_counter()
        scored = {}
        for steps in self.step_counts:
            samples = sample_images(pipeline, self.args.eval_num_samples, steps, self.args.seed)
            scored[steps] = evaluate_samples(
                samples, reference_images=self.reference, feature_extractor=self.extractor, seed=self.args.seed
            )  # the class numbers of the digits classifier are None here: the reference is our own data
        metrics = scored.pop(self.num_inference_steps)
        others = {str(steps): m for steps, m in scored.items()}
        seconds = time.perf_counter() - start
        return EvaluationRecord(step, self.sampler, self.num_inference_steps, seconds, metrics, others)


def load_feature_space(name: str, device: torch.device):
    """The ``--eval_features`` extractor; one that does not load raises :class:`ConfigError` naming the allowed ones."""
    from scratch_diffusion.metrics.feature_spaces import feature_extractor

    try:
        return feature_extractor(name, device=device)
    except Exception as err:  # any failure to load means: this run cannot evaluate
        raise ConfigError(
            f"--eval_features {name!r} could not be loaded: {type(err).__name__}: {' '.join(str(err).split())} "
            f"({feature_space_allowed()})."
        ) from None
