"""The control and editing study (issue 22, §4; ``benchmarks/bench_control.py``): models, settings, sampling, scores.

Per training seed, one folder (:func:`model_dirs`): ``pixel/`` an unconditional flow-matching UNet on the 16×16
digits (the trainer's ``compact`` preset on the metric's training split, :data:`PIXEL_RECIPE`; trained here through
``training/train.py`` unless a complete one is there) and ``controlnet/`` its control network for the low-resolution
control (``training/train_controlnet.py --control low_resolution``, :data:`CONTROLNET_RECIPE`). A complete model is
reused.

Every :class:`Setting` is sampled on ``draws`` draws of ``n`` inputs — the metric's held-out digits cycled to n
(``control_data.held_out_inputs``; the training digits for a setting of ``inputs="training"``), the same inputs in
every draw; draw k uses seed ``seed + k·DRAW_SEED_STRIDE`` for
the sampler's noise, the corruption's and the metric's baseline draws — through the pipeline's own methods
(``pipe.inpaint``, ``pipe.img2img``, ``pipe(control_image=…)``, ``pipe(guidance=LossGuidance(…))``), and scored by
the demo's metric: FD in the digits CNN's features over the real-vs-real baseline at the same n, and the class that
CNN assigns against the input digit's label. Model evaluations per image are the pipeline's counts
(``pipe.evaluations``: ``unet``, ``controlnet``, ``unet_backward`` for loss guidance's backward pass), read after each
call. :func:`run_setting` returns a JSON-ready record; the caller stores it (the study resumes setting by setting).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from scratch_diffusion import metrics
from scratch_diffusion.demo import control_data as data
from scratch_diffusion.demo.config import QUICK_UNET
from scratch_diffusion.demo.sampling import DRAW_SEED_STRIDE, combine_draws, use_sampler

# The pixel model (the lead's outputs/control/pixel): the demo's flow recipe on the pixels, without classes.
PIXEL_RECIPE = {"digits_split": "train", "resolution": 16, "objective": "flow", "model_config_name_or_path": "compact",
                "train_batch_size": 64, "max_train_steps": 1600, "learning_rate": 1e-3, "lr_scheduler": "cosine",
                "lr_warmup_steps": 100, "weighting_scheme": "logit_normal", "logit_mean": -0.7, "logging_steps": 50,
                "save_images_steps": 1600, "eval_batch_size": 20, "checkpointing_steps": 800,
                "logger": "none"}  # fmt: skip
QUICK_PIXEL_RECIPE = {**PIXEL_RECIPE, "max_train_steps": 20, "train_batch_size": 16, "lr_warmup_steps": 2,
                      "logging_steps": 5, "save_images_steps": 20, "eval_batch_size": 2,
                      "checkpointing_steps": 21}  # fmt: skip
# The control network: train_controlnet.py on the frozen pixel model, the low-resolution control (4×4 average
# pooling, upsampled back), on the same training split.
CONTROLNET_RECIPE = {"control": "low_resolution", "digits_split": "train", "train_batch_size": 64,
                     "max_train_steps": 1600, "learning_rate": 1e-3, "lr_scheduler": "cosine", "lr_warmup_steps": 100,
                     "logger": "none"}  # fmt: skip
QUICK_CONTROLNET_RECIPE = {**CONTROLNET_RECIPE, "max_train_steps": 10, "train_batch_size": 16, "lr_warmup_steps": 2}
TRAINING_RECORD = "training.json"  # beside each model folder: <name>.json


@dataclass(frozen=True)
class Setting:
    """One sampled (or reference) set of the study.

    ``task``: ``"inpainting"``, ``"img2img"`` or ``"control"``. ``method``: ``"replacement"`` / ``"RePaint"``
    (inpainting, ``jump_length`` j and ``jump_n_sample`` r), ``"SDEdit"`` (image-to-image at ``strength``),
    ``"ControlNet"`` (``scale`` = ``controlnet_conditioning_scale``), ``"unconditional"``, ``"loss guidance"``
    (``scale`` = s of ``LossGuidance``), or a reference without any model: ``"real digit"`` (the input itself),
    ``"mean fill"`` (the masked input filled with its known pixels' mean), ``"corrupted input"``.
    """

    task: str
    method: str
    steps: int = 0
    mask: str | None = None
    corruption: str | None = None
    strength: float | None = None
    jump_length: int | None = None
    jump_n_sample: int | None = None
    scale: float | None = None
    inputs: str = "held-out"  # or "training": the metric's training digits (control_data.INPUT_SETS)

    @property
    def key(self) -> str:
        """A unique, readable name: ``"inpainting/RePaint/left half/steps=10/j=5/r=2"``."""
        parts = [self.task, self.method, self.mask, self.corruption, f"steps={self.steps}" if self.steps else None]
        named = (("s", self.strength), ("j", self.jump_length), ("r", self.jump_n_sample), ("scale", self.scale))
        parts += [f"{name}={value:g}" for name, value in named if value is not None]
        parts.append(None if self.inputs == "held-out" else f"inputs={self.inputs}")
        return "/".join(p for p in parts if p)

    @property
    def uses_model(self) -> bool:
        return self.method not in ("real digit", "mean fill", "corrupted input")

    def row(self) -> dict:
        return {"key": self.key, **asdict(self)}


def model_dirs(output_dir: Path, seed: int) -> tuple[Path, Path]:
    """(pixel model, control network) folders of ``seed``: ``pixel/`` and ``controlnet/`` for seed 0, else
    ``seed{S}/pixel`` and ``seed{S}/controlnet``."""
    folder = output_dir if seed == 0 else output_dir / f"seed{seed}"
    return folder / "pixel", folder / "controlnet"


def recipe_argv(recipe: dict, **more) -> list[str]:
    argv = []
    for name, value in {**recipe, **more}.items():
        argv += [f"--{name}", str(value)]
    return argv


def pixel_argv(output_dir: Path, seed: int, quick: bool = False) -> list[str]:
    """``training/train.py``'s command line of the pixel model (``--quick``: the demo's toy UNet, 20 steps)."""
    recipe = dict(QUICK_PIXEL_RECIPE if quick else PIXEL_RECIPE)
    if quick:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        toy = output_dir.parent / "quick_unet.json"
        toy.write_text(json.dumps(QUICK_UNET))
        recipe["model_config_name_or_path"] = str(toy)
    return [*recipe_argv(recipe, output_dir=output_dir, seed=seed), "--use_ema"]


def complete(pipeline_dir: Path) -> bool:
    return (pipeline_dir / "model_index.json").is_file()


def prepare_pixel_model(pixel_dir: Path, seed: int, quick: bool = False) -> dict:
    """The pixel model in ``pixel_dir``: kept when complete, else trained here; its record (``pixel.json`` beside)."""
    from scratch_diffusion.training import run_training

    record_path = pixel_dir.with_suffix(".json")
    if complete(pixel_dir):
        if record_path.is_file():
            return json.loads(record_path.read_text())
        recipe = "python training/train.py " + shlex.join(pixel_argv(pixel_dir, seed))
        return {"reused": str(pixel_dir), "recipe": recipe,
                "note": "trained before the study: its recipe (the model card records the command)"}  # fmt: skip
    argv = pixel_argv(pixel_dir, seed, quick)
    start = time.perf_counter()
    summary = run_training(argv)
    record = {"command": "python training/train.py " + shlex.join(argv), "steps": summary.global_step,
              "seconds": time.perf_counter() - start, "num_threads": torch.get_num_threads()}  # fmt: skip
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def controlnet_argv(pixel_dir: Path, controlnet_dir: Path, seed: int, quick: bool = False, **changes) -> list[str]:
    """``training/train_controlnet.py``'s command line of the control network of ``pixel_dir``."""
    recipe = {**(QUICK_CONTROLNET_RECIPE if quick else CONTROLNET_RECIPE), **changes}
    recipe.setdefault("checkpointing_steps", recipe["max_train_steps"] + 1)  # no training-state checkpoints
    return [*recipe_argv(recipe, pipeline=pixel_dir, output_dir=controlnet_dir, seed=seed), "--use_ema"]


def num_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def prepare_controlnet(pixel_dir: Path, controlnet_dir: Path, seed: int, quick: bool = False, **changes) -> dict:
    """The control network in ``controlnet_dir`` (kept when its record exists, else trained here through
    ``train_controlnet.py``); its record with the training seconds and the parameter count."""
    from scratch_diffusion.control import ControlNet2DModel
    from scratch_diffusion.training.controlnet import run_controlnet_training

    record_path = controlnet_dir.with_suffix(".json")
    if not (record_path.is_file() and (controlnet_dir / "config.json").is_file()):
        argv = controlnet_argv(pixel_dir, controlnet_dir, seed, quick, **changes)
        start = time.perf_counter()
        summary = run_controlnet_training(argv)
        seconds = time.perf_counter() - start
        model = ControlNet2DModel.from_pretrained(str(controlnet_dir))
        record = {"command": "python training/train_controlnet.py " + shlex.join(argv), "steps": summary.global_step,
                  "seconds": seconds, "seconds_per_step": summary.seconds_per_step,
                  "parameters": num_parameters(model), "num_threads": torch.get_num_threads()}  # fmt: skip
        record_path.write_text(json.dumps(record, indent=2) + "\n")
    return json.loads(record_path.read_text())


def load_study_pipeline(pixel_dir: Path, controlnet_dir: Path | None, device: str = "cpu"):
    """The pixel pipeline with the control network (when given) as its ``controlnet`` component."""
    from scratch_diffusion.pipelines import ScratchDiffusionPipeline

    pipe = ScratchDiffusionPipeline.from_pretrained(str(pixel_dir))
    if controlnet_dir is not None:
        from scratch_diffusion.control import ControlNet2DModel

        pipe.register_modules(controlnet=ControlNet2DModel.from_pretrained(str(controlnet_dir)))
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---- sampling -------------------------------------------------------------------------------------------------------


def repaint_steps(pipe, sampler: str, budget: int, jump_length: int, jump_n_sample: int) -> tuple[int, int]:
    """The most steps S of a RePaint run (j, r) with ``sampler`` whose model evaluations per image stay within
    ``budget``, and those evaluations: the editing module's count (``pipe.inpaint_evaluations``), not a run."""
    use_sampler(pipe, sampler)
    best = None
    for steps in range(1, budget + 1):
        evaluations = pipe.inpaint_evaluations(steps, 1.0, min(jump_length, steps), jump_n_sample)
        if evaluations > budget:
            break
        best = steps, evaluations
    if best is None:
        raise ValueError(f"RePaint j={jump_length}, r={jump_n_sample}: one step costs more than {budget} evaluations.")
    return best


def low_resolution_control(images: torch.Tensor) -> torch.Tensor:
    """The control images of ``images`` ([−1, 1]): ``scratch_diffusion.control.transforms.low_resolution`` (4×4
    average pooling, nearest upsampling) on the [0, 1] scale, as the control network was trained with."""
    from scratch_diffusion.control.transforms import low_resolution

    return low_resolution(data.to_unit(images), factor=data.POOL)


def pooled_loss(controls: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Loss guidance's loss for a batch of control images ([0, 1]): per example, the sum of squared differences
    between the 4×4 average pool of x̂0 (on the [0, 1] scale) and the control's — the control's own operator."""
    targets = F.avg_pool2d(controls, data.POOL)

    def loss(images: torch.Tensor) -> torch.Tensor:
        return (data.pooled(images) - targets.to(images)).flatten(1).pow(2).sum(dim=1)

    return loss


def call_batch(pipe, setting: Setting, sources: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One pipeline call of ``setting`` on a batch of its sources ([−1, 1]: the digits, corrupted for image-to-image);
    its outputs on the [0, 1] scale, (B, 1, 16, 16)."""
    common = {"num_inference_steps": setting.steps, "generator": generator, "output_type": "pt"}
    if setting.task == "inpainting":
        mask = data.mask_named(setting.mask, len(sources))
        j, r = (1, 1) if setting.method == "replacement" else (setting.jump_length, setting.jump_n_sample)
        return pipe.inpaint(data.to_unit(sources), mask, jump_length=j, jump_n_sample=r, **common).images
    if setting.task == "img2img":
        return pipe.img2img(data.to_unit(sources), strength=setting.strength, **common).images
    controls = low_resolution_control(sources)
    if setting.method == "ControlNet":
        return pipe(batch_size=len(sources), control_image=controls, controlnet_conditioning_scale=setting.scale,
                    **common).images  # fmt: skip
    if setting.method == "loss guidance":
        from scratch_diffusion.guidance import LossGuidance

        guidance = LossGuidance(pooled_loss(controls), setting.scale)
        return pipe(batch_size=len(sources), guidance=guidance, **common).images
    return pipe(batch_size=len(sources), **common).images  # unconditional


def sources_of(setting: Setting, inputs: torch.Tensor, seed: int) -> torch.Tensor:
    """What the pipeline is given for ``inputs`` ([−1, 1]): the digits, or for image-to-image their corruption."""
    return data.corrupt(setting.corruption, inputs, seed) if setting.corruption else inputs


def reference_outputs(setting: Setting, inputs: torch.Tensor, seed: int) -> torch.Tensor:
    """A reference set without any model, in [−1, 1]: the inputs, their mean fill, or their corruption."""
    if setting.method == "mean fill":
        return data.mean_filled(inputs, data.mask_named(setting.mask, len(inputs)))
    return sources_of(setting, inputs, seed)  # "real digit", "corrupted input"


def draw_outputs(pipe, setting: Setting, inputs: torch.Tensor, seed: int, batch_size: int):
    """All outputs of one draw in [−1, 1], the raw [0, 1] ones, and the evaluations per image by model."""
    if not setting.uses_model:
        outputs = reference_outputs(setting, inputs, seed)
        return outputs, data.to_unit(outputs), {}
    sources = sources_of(setting, inputs, seed)
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    chunks, evaluated = [], {}
    for begin in range(0, len(inputs), batch_size):
        batch = sources[begin : begin + batch_size]
        chunks.append(call_batch(pipe, setting, batch, generator).float().cpu())
        for model, count in pipe.evaluations.items():
            evaluated[model] = evaluated.get(model, 0.0) + count * len(batch)
    unit = torch.cat(chunks)
    return unit * 2 - 1, unit, {model: total / len(inputs) for model, total in evaluated.items()}


def task_numbers(setting: Setting, outputs: torch.Tensor, unit: torch.Tensor, inputs: torch.Tensor, seed: int) -> dict:
    """The task's own numbers for one draw: the known region's error (inpainting, on the [0, 1] scale the pipeline
    returns), L2 to the corrupted input and to the clean digit (image-to-image), the low-resolution consistency."""
    if setting.task == "inpainting":
        mask = data.mask_named(setting.mask, len(inputs))
        return {"known_region_max_abs_error": data.known_region_error(unit, data.to_unit(inputs), mask)}
    if setting.task == "img2img":
        given = data.to_unit(sources_of(setting, inputs, seed))  # what the pipeline was given, bit for bit
        return {"l2_to_input": float(data.rms_distance(unit, given).mean()),
                "l2_to_clean": float(data.rms_distance(unit, data.to_unit(inputs)).mean())}  # fmt: skip
    if setting.task == "control":
        return {"consistency": float(data.consistency(outputs, inputs).mean())}
    return {}


def run_setting(pipe, setting: Setting, sampler: str, n: int, draws: int, seed: int, batch_size: int, metric,
                examples: int = 0) -> dict:  # fmt: skip
    """Sample and score ``setting`` on ``draws`` × ``n`` inputs; its record (JSON-ready).

    ``fd_ratio`` etc. as the demo combines draws (``combine_draws``: means, FD's spread over draws); the task's numbers
    (:func:`task_numbers`) averaged over draws (a largest error: the largest), each draw's values in ``*_draws``, as
    for ``class_match``; ``evaluations`` per image by model (the same in every draw: checked), ``nfe`` their sum;
    ``seconds`` in the pipeline calls; ``copying``: the nearest-neighbour check of the first draw's outputs;
    ``examples``: the first draw's first ``examples`` outputs (list of 16×16 lists on [−1, 1]).
    """
    if setting.uses_model:
        use_sampler(pipe, sampler)
    inputs = data.INPUT_SETS[setting.inputs](n)
    scores, numbers, seconds, evaluations, first = [], [], 0.0, None, None
    for k in range(draws):
        draw_seed = seed + k * DRAW_SEED_STRIDE
        start = time.perf_counter()
        outputs, unit, counted = draw_outputs(pipe, setting, inputs.images, draw_seed, batch_size)
        seconds += time.perf_counter() - start
        if evaluations is not None and counted != evaluations:
            raise RuntimeError(f"{setting.key}: evaluations {counted} in draw {k}, {evaluations} in draw 0.")
        evaluations, first = counted, first if first is not None else outputs
        scores.append(metrics.evaluate_samples(outputs, inputs.labels, classifier=metric, seed=draw_seed))
        numbers.append(task_numbers(setting, outputs, unit, inputs.images, draw_seed))
    record = {**setting.row(), "sampler": sampler if setting.uses_model else None, "n": n, "draws": draws,
              "evaluations": evaluations, "nfe": sum(evaluations.values()), "seconds": seconds}  # fmt: skip
    keep = ("fd", "fd_real_baseline", "fd_real_baseline_std", "fd_ratio", "fd_draws", "fd_ratio_draws",
            "fd_ratio_std_over_draws", "kid", "kid_real_baseline", "class_match", "classifier_accuracy")  # fmt: skip
    combined = combine_draws(scores)
    record.update({k: combined[k] for k in keep})
    record["class_match_draws"] = [s["class_match"] for s in scores]
    for name in numbers[0]:
        values = [d[name] for d in numbers]
        record[name] = max(values) if name.endswith("max_abs_error") else data.mean_and_spread(values)[0]
        record[f"{name}_draws"] = values
    if setting.task in ("inpainting", "control") and setting.uses_model and setting.inputs == "held-out":
        record["copying"] = data.copying_check(first, inputs.indices)
    if examples:
        record["examples"] = first[:examples, 0].tolist()
    return record
