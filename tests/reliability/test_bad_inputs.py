"""Bad input at every user-facing entry point, in one table.

Entry points: the scheduler constructors and methods, ``ScratchDiffusionPipeline`` (call and
``from_pretrained``), the trainer CLI (``train.py``), the evaluation CLI (``python -m
scratch_diffusion.metrics``) and the push CLI (``python -m scratch_diffusion.training.hub push``).
Each row asserts the exception type — or, for a CLI, the exit status and a one-line ``error:`` on
stderr with no traceback — and that the message names the offending value and what is accepted.
Pipeline rows also assert that the UNet was never evaluated (refused before any allocation).

The scheduler table of ``tests/scratch_schedulers/test_bad_input.py`` (``CASES``) is not repeated
here: ``test_no_case_repeats_the_scheduler_table`` checks that this table only adds to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
import torch

from scratch_schedulers import ScratchDDIMScheduler, ScratchDDPMScheduler, ScratchFlowMatchScheduler

from ..pipelines.helpers import CallCounter, tiny_unet
from ..scratch_schedulers.test_bad_input import CASES as SCHEDULER_CASES
from .conftest import run_main

X = torch.zeros(2, 3, 4, 4)


def ready(cls, **config):
    scheduler = cls(**config)
    scheduler.set_timesteps(10)
    return scheduler


@dataclass
class Env:
    tmp: Path
    saved_pipeline: Path
    counters: list

    def pipe(self, conditional: bool = False):
        from scratch_diffusion import ScratchDiffusionPipeline

        unet = tiny_unet(num_class_embeds=4 if conditional else None)
        pipe = ScratchDiffusionPipeline(unet=unet, scheduler=ScratchDDIMScheduler())
        pipe.set_progress_bar_config(disable=True)
        self.counters.append(CallCounter(pipe.unet))
        return pipe

    def train(self, *args: str) -> int:
        return run_main(["--output_dir", str(self.tmp / "out"), "--model_config_name_or_path", "tiny", *args])

    def metrics(self, *args: str, path: Path | None = None) -> int:
        from scratch_diffusion import metrics

        return metrics.main([str(path or self.saved_pipeline), *args])

    def push(self, *args: str, complete: bool = True) -> int:
        import shutil

        from scratch_diffusion.training import hub

        folder = self.tmp / "finished"
        if complete and not folder.exists():
            shutil.copytree(self.saved_pipeline, folder)
            (folder / "README.md").write_text("card")
        return hub.main(["push", "--output_dir", str(folder), *args])

    def load(self, folder: Path):
        from scratch_diffusion import ScratchDiffusionPipeline

        return ScratchDiffusionPipeline.from_pretrained(str(folder))

    def empty_checkpoint(self) -> str:
        (self.tmp / "checkpoint-3").mkdir()  # named like one, but nothing in it
        return str(self.tmp / "checkpoint-3")

    def not_a_dir(self) -> str:
        (self.tmp / "a-file").write_text("x")
        return str(self.tmp / "a-file" / "out")


@dataclass
class Case:
    id: str
    entry: str  # scheduler | pipeline | train.py | metrics | hub push
    call: Callable[[Env], object]
    error: type[BaseException] | int  # the exception type, or a CLI's exit status
    needles: tuple[str, ...]  # the offending value and the accepted ones, as the message spells them


def free_memory(nbytes: int):
    return mock.patch("scratch_diffusion.pipelines.inputs.free_memory", return_value=nbytes)


def _pipe_call_low_memory(env: Env):
    with free_memory(2**20):  # 1 MiB free: the refusal comes from the estimate, not from an allocation
        env.pipe()(batch_size=60_000, num_inference_steps=2)


CASES = [
    # ---- scheduler constructors -----------------------------------------------------------------------
    Case("T absurd", "scheduler", lambda e: ScratchDDPMScheduler(num_train_timesteps=10**9), ValueError,
         ("num_train_timesteps=1000000000", "≤ 100000")),
    Case("T a string", "scheduler", lambda e: ScratchDDIMScheduler(num_train_timesteps="1000"), TypeError,
         ("'1000'", "an int in [1, 100000]")),
    Case("flow T zero", "scheduler", lambda e: ScratchFlowMatchScheduler(num_train_timesteps=0), ValueError,
         ("num_train_timesteps=0", "positive integer ≤ 100000")),
    Case("beta_end > 1", "scheduler", lambda e: ScratchDDPMScheduler(beta_end=2.0), ValueError,
         ("beta_end=2.0", "[0, 1)")),
    Case("beta_start NaN", "scheduler", lambda e: ScratchDDIMScheduler(beta_start=math.nan), ValueError,
         ("beta_start=nan", "[0, 1)")),
    Case("negative steps_offset", "scheduler", lambda e: ScratchDDIMScheduler(steps_offset=-5), ValueError,
         ("steps_offset=-5", "integer ≥ 0")),
    Case("clip_sample_range 0", "scheduler", lambda e: ScratchDDPMScheduler(clip_sample_range=0.0), ValueError,
         ("clip_sample_range=0.0", "finite number > 0")),
    Case("sample_max_value inf", "scheduler", lambda e: ScratchDDPMScheduler(sample_max_value=math.inf), ValueError,
         ("sample_max_value=inf", "finite number > 0")),
    Case("dynamic_thresholding_ratio 0", "scheduler",
         lambda e: ScratchDDPMScheduler(dynamic_thresholding_ratio=0.0), ValueError, ("=0.0", "(0, 1]")),
    Case("flow shift NaN", "scheduler", lambda e: ScratchFlowMatchScheduler(shift=math.nan), ValueError,
         ("shift=nan", "finite number > 0")),
    # ---- scheduler methods: dtype / device mixes, NaN arguments, shapes ------------------------------------
    Case("integer tensors to step", "scheduler",
         lambda e: ready(ScratchDDPMScheduler).step(X.long(), 900, X.long()), TypeError,
         ("torch.int64", "floating point", "torch.float32")),
    Case("model_output on another device", "scheduler",
         lambda e: ready(ScratchDDIMScheduler).step(X.to("meta"), 900, X), ValueError,
         ("device meta", "on cpu", "same device")),
    Case("flow step with a list", "scheduler", lambda e: ready(ScratchFlowMatchScheduler).step([0.0], 1000.0, X),
         TypeError, ("list", "torch tensors")),
    Case("eta NaN", "scheduler", lambda e: ready(ScratchDDIMScheduler).step(X, 900, X, eta=math.nan), ValueError,
         ("eta=nan", "finite number ≥ 0")),
    Case("eta inf", "scheduler", lambda e: ready(ScratchDDIMScheduler).step(X, 900, X, eta=math.inf), ValueError,
         ("eta=inf", "finite number ≥ 0")),
    Case("negative training timestep", "scheduler",
         lambda e: ScratchDDPMScheduler().add_noise(X, X, torch.tensor([-1, 5])), ValueError, ("[-1, 5]", "[0, 1000)")),
    Case("training timestep = T", "scheduler",
         lambda e: ScratchDDIMScheduler().get_velocity(X, X, torch.tensor([1000, 0])), ValueError,
         ("[1000, 0]", "[0, 1000)")),
    Case("noise of another shape", "scheduler",
         lambda e: ScratchDDPMScheduler().add_noise(X, torch.zeros(3, 3, 4, 4), torch.tensor([1, 2])), ValueError,
         ("(3, 3, 4, 4)", "(2, 3, 4, 4)", "must match")),
    Case("3 timesteps for a batch of 2", "scheduler",
         lambda e: ScratchFlowMatchScheduler().add_noise(X, X, torch.tensor([1.0, 2.0, 3.0])), ValueError,
         ("got 3 timesteps", "one per example (2)")),
    Case("flow NaN timestep", "scheduler",
         lambda e: ScratchFlowMatchScheduler().add_noise(X, X, torch.tensor([math.nan, 1.0])), ValueError,
         ("nan", "[0, 1000]")),
    Case("non-finite custom sigmas", "scheduler",
         lambda e: ScratchFlowMatchScheduler().set_timesteps(sigmas=[1.0, math.nan]), ValueError,
         ("finite", "nan")),
    Case("unknown device", "scheduler", lambda e: ScratchDDIMScheduler().set_timesteps(10, device="gpu0"),
         ValueError, ("device='gpu0'", "'cpu', 'cuda', 'cuda:0'")),
    Case("flow device not a device", "scheduler", lambda e: ScratchFlowMatchScheduler().set_timesteps(4, device=3.5),
         ValueError, ("device=3.5", "torch.device")),
    # ---- pipeline ------------------------------------------------------------------------------------
    Case("batch 10**6", "pipeline", lambda e: e.pipe()(batch_size=10**6, num_inference_steps=2), ValueError,
         ("batch_size=1000000", "≤ 65536")),
    Case("batch beyond free memory", "pipeline", _pipe_call_low_memory, ValueError,
         ("batch_size=60000", "GiB free", "smaller batch_size")),
    Case("batch True", "pipeline", lambda e: e.pipe()(batch_size=True), ValueError,
         ("batch_size=True", "integer ≥ 1")),
    Case("steps beyond T", "pipeline", lambda e: e.pipe()(num_inference_steps=5000), ValueError,
         ("num_inference_steps=5000", "num_train_timesteps=1000")),
    Case("pipeline eta < 0", "pipeline", lambda e: e.pipe()(num_inference_steps=2, eta=-1.0), ValueError,
         ("eta=-1.0", "finite number ≥ 0")),
    Case("pipeline eta NaN", "pipeline", lambda e: e.pipe()(num_inference_steps=2, eta=math.nan), ValueError,
         ("eta=nan", "finite number ≥ 0")),
    Case("generator a string", "pipeline", lambda e: e.pipe()(num_inference_steps=2, generator="seed"), TypeError,
         ("generator='seed'", "torch.Generator")),
    Case("class_labels a string", "pipeline",
         lambda e: e.pipe(conditional=True)(batch_size=2, num_inference_steps=2, class_labels="3"), ValueError,
         ("class_labels='3'", "one int, or 2 ints")),
    Case("missing folder", "pipeline", lambda e: e.load(e.tmp / "nowhere"), FileNotFoundError,
         ("nowhere'", "saved pipeline folder", "owner/name")),
    # ---- trainer CLI (exit 2, before any training step) ----------------------------------------------------
    Case("--resolution 0", "train.py", lambda e: e.train("--resolution", "0"), 2, ("--resolution 0", "[1, 4096]")),
    Case("--resolution 10**5", "train.py", lambda e: e.train("--resolution", "100000"), 2,
         ("--resolution 100000", "[1, 4096]")),
    Case("--train_batch_size 10**6", "train.py", lambda e: e.train("--train_batch_size", "1000000"), 2,
         ("--train_batch_size 1000000", "at most 65536")),
    Case("--eval_batch_size 10**6", "train.py", lambda e: e.train("--eval_batch_size", "1000000"), 2,
         ("--eval_batch_size 1000000", "at most 65536")),
    Case("--seed -1", "train.py", lambda e: e.train("--seed", "-1"), 2, ("--seed -1", "[0, 4294967295]")),
    Case("--learning_rate inf", "train.py", lambda e: e.train("--learning_rate", "inf"), 2,
         ("--learning_rate inf", "finite number")),
    Case("--learning_rate nan", "train.py", lambda e: e.train("--learning_rate", "nan"), 2,
         ("--learning_rate nan", "finite number")),
    Case("--adam_beta1 1.5", "train.py", lambda e: e.train("--adam_beta1", "1.5"), 2,
         ("--adam_beta1", "[0, 1)", "1.5")),
    Case("--ema_inv_gamma 0", "train.py", lambda e: e.train("--ema_inv_gamma", "0"), 2,
         ("--ema_inv_gamma", "> 0", "0.0")),
    Case("--flow_shift inf", "train.py", lambda e: e.train("--objective", "flow", "--flow_shift", "inf"), 2,
         ("--flow_shift inf", "finite number")),
    Case("--ddpm_num_steps 10**9", "train.py", lambda e: e.train("--ddpm_num_steps", "1000000000"), 2,
         ("--ddpm_num_steps", "[2, 100000]", "1000000000")),
    Case("grid steps > T", "train.py", lambda e: e.train("--ddpm_num_inference_steps", "5000"), 2,
         ("--ddpm_num_inference_steps 5000", "at most --ddpm_num_steps (1000)")),
    Case("--hub_model_id traversal", "train.py", lambda e: e.train("--hub_model_id", "../evil"), 2,
         ("'../evil'", "'name' or 'your-name/name'")),
    Case("--hub_model_id 3 parts", "train.py", lambda e: e.train("--hub_model_id", "me/models/x"), 2,
         ("'me/models/x'", "'name' or 'your-name/name'")),
    Case("--logging_dir escapes", "train.py", lambda e: e.train("--logging_dir", "../../outside"), 2,
         ("'../../outside'", "relative folder inside it")),
    Case("--logging_dir absolute", "train.py", lambda e: e.train("--logging_dir", "/tmp/logs"), 2,
         ("'/tmp/logs'", "relative folder inside it")),
    Case("--output_dir under a file", "train.py", lambda e: e.train("--output_dir", e.not_a_dir()), 2,
         ("a-file/out' is not writable", "NotADirectoryError")),
    Case("--lr_scheduler unknown", "train.py", lambda e: e.train("--lr_scheduler", "exp"), 2,
         ("invalid choice: 'exp'", "'cosine'")),
    Case("--resume_from_checkpoint empty", "train.py",
         lambda e: e.train("--resume_from_checkpoint", e.empty_checkpoint()), 2,
         ("checkpoint-3 is not a complete checkpoint", "no checkpoint_manifest.json")),
    # ---- evaluation CLI ---------------------------------------------------------------------------------
    Case("metrics --batch_size 0", "metrics", lambda e: e.metrics("--batch_size", "0"), 2,
         ("--batch_size must be at least 1, got 0",)),
    Case("metrics --num_inference_steps 0", "metrics", lambda e: e.metrics("--num_inference_steps", "0"), 2,
         ("--num_inference_steps must be at least 1, got 0",)),
    Case("metrics --num_samples 1", "metrics", lambda e: e.metrics("--num_samples", "1"), 2,
         ("--num_samples must be at least 2, got 1",)),
    Case("metrics --guidance_scale nan", "metrics", lambda e: e.metrics("--guidance_scale", "nan"), 2,
         ("--guidance_scale nan", "finite number")),
    Case("metrics --confidence_threshold 1.5", "metrics", lambda e: e.metrics("--confidence_threshold", "1.5"), 2,
         ("--confidence_threshold 1.5", "(0, 1)")),
    Case("metrics --device bogus", "metrics", lambda e: e.metrics("--device", "bogus"), 2,
         ("--device 'bogus'", "cpu, cuda")),
    Case("metrics --device cuda:99", "metrics", lambda e: e.metrics("--device", "cuda:99"), 2,
         ("--device 'cuda:99'", "available here; available: [")),
    Case("metrics --format xml", "metrics", lambda e: e.metrics("--format", "xml"), 2,
         ("invalid choice: 'xml'", "'markdown'")),
    Case("metrics path not a folder", "metrics", lambda e: e.metrics(path=e.tmp / "nowhere"), 2,
         ("nowhere' is not a folder", "a saved pipeline or a folder of images")),
    Case("metrics batch 10**6", "metrics",
         lambda e: e.metrics("--num_samples", "1000000", "--batch_size", "1000000", "--device", "cpu"), 2,
         ("batch_size=1000000", "≤ 65536")),
    # ---- push CLI -------------------------------------------------------------------------------------
    Case("push repo id traversal", "hub push", lambda e: e.push("--hub_model_id", "../evil"), 2,
         ("'../evil' is not a Hub repo id", "alphanumeric chars")),
    Case("push missing folder", "hub push", lambda e: e.push("--hub_model_id", "me/x", complete=False), 2,
         ("finished' is not a folder",)),
    Case("push without token", "hub push", lambda e: e.push("--hub_model_id", "me/x"), 2,
         ("no token", "--hub_token, set HF_TOKEN")),
]  # fmt: skip


def test_the_table_covers_every_entry_point_and_adds_to_the_scheduler_table():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    assert {c.entry for c in CASES} == {"scheduler", "pipeline", "train.py", "metrics", "hub push"}
    assert not {c.id for c in CASES} & {c[0] for c in SCHEDULER_CASES}


@pytest.mark.parametrize("case", CASES, ids=[f"{c.entry}: {c.id}" for c in CASES])
def test_bad_input_is_refused_naming_the_value_and_what_is_accepted(
    case, tmp_path, saved_pipeline, hf_home, fresh_accelerate_state, capsys
):
    env = Env(tmp_path, saved_pipeline, [])
    if isinstance(case.error, int):
        try:
            status = case.call(env)
        except SystemExit as exit_info:  # argparse
            status = exit_info.code
        err = capsys.readouterr().err
        assert status == case.error, err
        lines = [line for line in err.splitlines() if "error: " in line]
        assert "Traceback" not in err and len(lines) == 1, err
        message = lines[0]
    else:
        with pytest.raises(case.error) as info:
            case.call(env)
        message = str(info.value)
    for needle in case.needles:
        assert needle in message, f"{case.id}: {needle!r} not in {message!r}"
    assert all(counter.calls == [] for counter in env.counters), "the UNet ran before the input was refused"
    if case.entry == "train.py":
        assert not (tmp_path / "out" / "checkpoint-1").exists()


# ---- non-finite values: documented propagation, and a warning where it is free ---------------------------------


@pytest.mark.parametrize("make", [lambda: ready(ScratchDDPMScheduler), lambda: ready(ScratchDDIMScheduler),
                                  lambda: ready(ScratchFlowMatchScheduler),
                                  lambda: ready(ScratchFlowMatchScheduler, solver="heun")],
                         ids=["ddpm", "ddim", "flow-euler", "flow-heun"])  # fmt: skip
def test_nan_in_the_model_output_propagates_into_prev_sample(make):
    """``step`` does not read values (a NaN check would be a host sync per step on a GPU): a NaN model
    output gives a NaN ``prev_sample`` — never an exception, never a silently finite result."""
    scheduler = make()
    t = scheduler.timesteps[0]
    out = scheduler.step(torch.full_like(X, math.nan), t, X, generator=torch.Generator().manual_seed(0))
    assert out.prev_sample.isnan().all()


def test_inf_in_the_model_output_follows_the_update_rule():
    """±inf in ε makes x̂0 infinite, which ``clip_sample=True`` (the DDPM/DDIM default) clamps to ±1.
    DDIM's update also uses ε̂ itself, so its ``prev_sample`` stays non-finite; DDPM's posterior mean
    uses only x̂0 and x_t, so with clipping it comes out finite (documented in the README)."""
    inf = torch.full_like(X, math.inf)
    ddim = ready(ScratchDDIMScheduler).step(inf, 900, X)
    assert ddim.pred_original_sample.eq(-1).all() and not ddim.prev_sample.isfinite().any()
    ddpm = ready(ScratchDDPMScheduler).step(inf, 900, X, generator=torch.Generator().manual_seed(0))
    assert ddpm.pred_original_sample.eq(-1).all() and ddpm.prev_sample.isfinite().all()
    unclipped = ready(ScratchDDPMScheduler, clip_sample=False).step(inf, 900, X)
    assert not unclipped.prev_sample.isfinite().any()
    flow = ready(ScratchFlowMatchScheduler).step(inf, 1000.0, X)
    assert not flow.prev_sample.isfinite().any()


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # diffusers' NaN → uint8
def test_a_nan_sample_is_reported_not_saved_as_a_black_image():
    """A UNet that outputs NaN: ``np``/``pil`` outputs warn (the values are on the host already); ``pt``
    is returned untouched, without a check (no host sync on an accelerator)."""
    from scratch_diffusion import ScratchDiffusionPipeline

    unet = tiny_unet()
    unet.register_forward_hook(lambda module, args, output: type(output)(sample=output.sample * math.nan))
    pipe = ScratchDiffusionPipeline(unet=unet, scheduler=ScratchDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    with pytest.warns(RuntimeWarning, match="2 of 2 sampled images contain NaN or inf"):
        pipe(batch_size=2, num_inference_steps=2, output_type="pil")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images = pipe(batch_size=2, num_inference_steps=2, output_type="pt").images
    assert images.isnan().all()
