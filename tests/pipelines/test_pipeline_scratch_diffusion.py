"""ScratchDiffusionPipeline in one process: the scheduler matrix, CFG, outputs, callbacks, bad input."""

from __future__ import annotations

import inspect
import io
import json
from typing import ClassVar

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.callbacks import PipelineCallback
from diffusers.utils.torch_utils import randn_tensor

from scratch_diffusion import (
    ScratchDDIMScheduler,
    ScratchDDPMScheduler,
    ScratchDiffusionPipeline,
    ScratchDPMSolverScheduler,
    ScratchFlowMatchScheduler,
)

from .helpers import CallCounter, tiny_unet

SCHEDULERS = {
    "scratch-ddpm": ScratchDDPMScheduler,
    "scratch-ddim": ScratchDDIMScheduler,
    "scratch-flow-euler": ScratchFlowMatchScheduler,
    "scratch-flow-heun": lambda: ScratchFlowMatchScheduler(solver="heun"),
    "scratch-dpmsolver": ScratchDPMSolverScheduler,
    "scratch-dpmsolver-flow-uniform-grid": lambda: ScratchDPMSolverScheduler(time_grid="flow_uniform"),
    "diffusers-ddpm": DDPMScheduler,
    "diffusers-ddim": DDIMScheduler,
    "diffusers-euler": EulerDiscreteScheduler,
    "diffusers-dpmsolver": DPMSolverMultistepScheduler,
    "diffusers-flowmatch-euler": FlowMatchEulerDiscreteScheduler,
}
SHAPE = (2, 3, 8, 8)


def make_pipeline(scheduler=None, **unet_overrides) -> ScratchDiffusionPipeline:
    pipe = ScratchDiffusionPipeline(unet=tiny_unet(**unet_overrides), scheduler=scheduler or ScratchDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_loop(unet, scheduler, num_inference_steps, generator, eta=0.0, class_labels=None, batch_size=2):
    """The sampling loop spelled out the way diffusers' Stable Diffusion pipelines call a scheduler.

    ``generator`` is one ``torch.Generator`` or a list with one per image; images in [0, 1], (B, C, H, W).
    """
    shape = (batch_size, *SHAPE[1:])
    x = randn_tensor(shape, generator=generator, dtype=unet.dtype) * getattr(scheduler, "init_noise_sigma", 1.0)
    scheduler.set_timesteps(num_inference_steps)
    accepted = inspect.signature(scheduler.step).parameters
    kwargs = {k: v for k, v in {"eta": eta, "generator": generator}.items() if k in accepted}
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        x = scheduler.step(unet(model_input, t, class_labels=class_labels).sample, t, x, **kwargs).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_matrix_matches_reference_loop(name):
    """Every scheduler samples, honouring init_noise_sigma, scale_model_input, order and step's kwargs."""
    pipe = make_pipeline(SCHEDULERS[name]())
    counter = CallCounter(pipe.unet)
    images = pipe(batch_size=2, num_inference_steps=4, generator=torch.manual_seed(0), eta=0.5, output_type="pt").images
    expected_evaluations = 4 * pipe.scheduler.order - (pipe.scheduler.order - 1)  # Heun: 2n − 1
    assert len(counter.calls) == expected_evaluations == pipe.num_timesteps
    counter.remove()
    expected = reference_loop(pipe.unet, SCHEDULERS[name](), 4, torch.manual_seed(0), eta=0.5)
    assert images.shape == SHAPE and torch.isfinite(images).all()
    # the same UNet and scheduler calls on the same tensors: bit-identical (1e-6 ≈ 8 float32 ulps at 1 on [0, 1])
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-6)


def test_flow_timesteps_reach_the_unet_as_floats():
    pipe = make_pipeline(FlowMatchEulerDiscreteScheduler())
    counter = CallCounter(pipe.unet)
    pipe(num_inference_steps=3, output_type="np")
    assert all(t.dtype.is_floating_point for _, t in counter.calls)
    torch.testing.assert_close(torch.stack([t for _, t in counter.calls]), pipe.scheduler.timesteps, rtol=0, atol=0)
    assert not torch.equal(pipe.scheduler.timesteps, pipe.scheduler.timesteps.round())  # fractional, not cast


@pytest.mark.parametrize(
    ("trained", "swaps"),
    [
        (
            ScratchDDIMScheduler,
            [
                ScratchDDPMScheduler,
                DDPMScheduler,
                DDIMScheduler,
                EulerDiscreteScheduler,
                DPMSolverMultistepScheduler,
                ScratchDDIMScheduler,
            ],
        ),
        (ScratchFlowMatchScheduler, [FlowMatchEulerDiscreteScheduler, ScratchFlowMatchScheduler]),
    ],
)
def test_scheduler_swap_with_from_config(trained, swaps):
    """Story D in one process: pipe.scheduler = X.from_config(pipe.scheduler.config) samples as X does."""
    pipe = make_pipeline(trained())
    for scheduler_class in swaps:
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
        assert type(pipe.scheduler) is scheduler_class and pipe.config.scheduler[1] == scheduler_class.__name__
        images = pipe(batch_size=2, num_inference_steps=3, generator=torch.manual_seed(0), output_type="pt").images
        reference = scheduler_class.from_config(pipe.scheduler.config)
        expected = reference_loop(pipe.unet, reference, 3, torch.manual_seed(0))
        torch.testing.assert_close(images, expected, rtol=0, atol=1e-6, msg=scheduler_class.__name__)  # bit-identical


# ---- parametrisation -------------------------------------------------------------------------


def test_trained_parametrization_is_derived_and_saved(tmp_path):
    pipe = make_pipeline(ScratchDDIMScheduler(prediction_type="v_prediction"))
    assert (pipe.config.noise_path, pipe.config.prediction_type) == ("vp", "v_prediction")
    flow = make_pipeline(FlowMatchEulerDiscreteScheduler())
    assert (flow.config.noise_path, flow.config.prediction_type) == ("flow", "flow_velocity")
    pipe.save_pretrained(tmp_path)
    loaded = ScratchDiffusionPipeline.from_pretrained(tmp_path)
    assert loaded.trained_parametrization == pipe.trained_parametrization


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(prediction_type="x0"), r"prediction_type='x0' is not supported; choose one of \['epsilon'"),
        (dict(noise_path="ve"), r"noise_path='ve' is not supported; choose one of \['vp', 'flow'\]"),
        (dict(prediction_type="flow_velocity", noise_path="vp"), r"does not exist on the 'vp' noise path"),
        (dict(noise_path="flow", prediction_type="epsilon"), r"does not exist on the 'flow' noise path"),
    ],
)
def test_constructor_rejects_unknown_parametrization(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScratchDiffusionPipeline(unet=tiny_unet(), scheduler=ScratchDDIMScheduler(), **kwargs)


@pytest.mark.parametrize(
    ("trained", "sampler"),
    [
        (ScratchDDIMScheduler(), ScratchDDIMScheduler(prediction_type="v_prediction")),
        (ScratchDDIMScheduler(), FlowMatchEulerDiscreteScheduler()),
        (ScratchFlowMatchScheduler(), DDIMScheduler()),
        (DDPMScheduler(prediction_type="sample"), ScratchDDPMScheduler()),
    ],
)
def test_a_scheduler_of_another_parametrisation_samples_through_the_change_of_variables(trained, sampler):
    """Pairs refused before issue 10 now sample (tests/pipelines/test_cross_path.py), one UNet call per timestep."""
    pipe = make_pipeline(trained)
    pipe.scheduler = sampler
    counter = CallCounter(pipe.unet)
    images = pipe(num_inference_steps=3, output_type="pt").images
    assert len(counter.calls) == len(pipe.scheduler.timesteps) and torch.isfinite(images).all()


def test_explicit_prediction_type_overrides_the_scheduler():
    """The trainer passes what it trained; an ε-scheduler then reads the v-model through the conversion."""
    pipe = ScratchDiffusionPipeline(unet=tiny_unet(), scheduler=ScratchDDIMScheduler(), prediction_type="v_prediction")
    pipe.set_progress_bar_config(disable=True)
    converted = pipe(num_inference_steps=2, generator=torch.manual_seed(0), output_type="pt").images
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    images = pipe(num_inference_steps=2, generator=torch.manual_seed(0), output_type="pt").images
    expected = reference_loop(
        pipe.unet, DDIMScheduler.from_config(pipe.scheduler.config), 2, torch.manual_seed(0), batch_size=1
    )
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-6)  # the same calls: bit-identical
    # v read through ε (ε̂ = b·x + a·v̂, x̂0 = (x − b·ε̂)/a) re-rounds x̂0 by ≤ γ_4·(|x| + b·|ε̂|)/a, weighed by a_next:
    # at the first step a_next/a ≈ 40 makes the worst case ≈ 1e-4, but x̂0 is clipped to [−1, 1] there (|x̂0| ≫ 1 from
    # the untrained UNet), which removes it; measured 2.0e-6. 1e-5 = 168·u at 1
    torch.testing.assert_close(converted, expected, rtol=0, atol=1e-5)


# ---- classifier-free guidance ----------------------------------------------------------------


def test_guidance_runs_both_halves_in_one_batched_pass():
    pipe = make_pipeline(ScratchDDIMScheduler(), num_class_embeds=4)  # classes 0..2, null class 3
    counter = CallCounter(pipe.unet)
    images = pipe(
        batch_size=2,
        num_inference_steps=3,
        class_labels=[0, 2],
        guidance_scale=2.5,
        generator=torch.manual_seed(0),
        output_type="pt",
    ).images
    assert [batch for batch, _ in counter.calls] == [4, 4, 4]
    assert all(labels.tolist() == [0, 2, 3, 3] for labels in counter.class_labels)
    counter.remove()

    # reference: separate conditional and unconditional passes, combined as ŷ_∅ + w·(ŷ_c − ŷ_∅)
    scheduler, unet = ScratchDDIMScheduler(), pipe.unet
    x = randn_tensor(SHAPE, generator=torch.manual_seed(0))
    scheduler.set_timesteps(3)
    for t in scheduler.timesteps:
        conditional = unet(x, t, class_labels=torch.tensor([0, 2])).sample
        unconditional = unet(x, t, class_labels=torch.tensor([3, 3])).sample
        x = scheduler.step(unconditional + 2.5 * (conditional - unconditional), t, x).prev_sample
    # one batch of 4 against two of 2: the UNet's float32 conv/GEMM kernels may block their sums differently per batch
    # size (≤ γ_K·Σ|w·x| per layer); measured ≤ 2.2e-6 on [0, 1] images after 3 guided DDIM steps; 1e-5 = 168·u at 1
    torch.testing.assert_close(images, (x / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-5)


def test_guidance_scale_one_skips_the_unconditional_half():
    pipe = make_pipeline(ScratchDDIMScheduler(), num_class_embeds=4)
    counter = CallCounter(pipe.unet)
    pipe(batch_size=3, num_inference_steps=2, class_labels=1, output_type="np")
    assert [batch for batch, _ in counter.calls] == [3, 3]
    assert all(labels.tolist() == [1, 1, 1] for labels in counter.class_labels)


def test_no_class_labels_on_a_conditional_unet_samples_the_null_class():
    pipe = make_pipeline(ScratchDDIMScheduler(), num_class_embeds=4)
    counter = CallCounter(pipe.unet)
    pipe(batch_size=2, num_inference_steps=2, output_type="np")
    assert all(labels.tolist() == [3, 3] for labels in counter.class_labels)


# ---- outputs, generators, callbacks, progress bar, dtype ----------------------------------------


def test_output_types():
    """pil, np and pt are one sample in three forms: (B, H, W, C) floats, 8-bit images, (B, C, H, W) floats."""
    pipe = make_pipeline()
    pil = pipe(batch_size=2, num_inference_steps=2, generator=torch.manual_seed(0)).images
    assert len(pil) == 2 and all(isinstance(im, PIL.Image.Image) and im.size == (8, 8) for im in pil)
    array = pipe(batch_size=2, num_inference_steps=2, output_type="np", generator=torch.manual_seed(0)).images
    assert isinstance(array, np.ndarray) and array.shape == (2, 8, 8, 3) and 0 <= array.min() <= array.max() <= 1
    assert array.std() > 0  # a real sample, not a constant image
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in pil]), (array * 255).round().astype(np.uint8))
    tensor = pipe(batch_size=2, num_inference_steps=2, output_type="pt", generator=torch.manual_seed(0)).images
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(tensor.permute(0, 2, 3, 1).numpy(), array)
    (as_tuple,) = pipe(
        batch_size=2, num_inference_steps=2, output_type="np", generator=torch.manual_seed(0), return_dict=False
    )
    np.testing.assert_array_equal(as_tuple, array)


def seeded(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


@pytest.mark.parametrize("scheduler_class", [ScratchDDIMScheduler, ScratchDDPMScheduler])
def test_a_generator_list_seeds_each_image(scheduler_class):
    """Image i draws its initial noise — and DDPM's per-step noise — from generator i alone."""
    pipe = make_pipeline(scheduler_class())
    counter = CallCounter(pipe.unet)
    both = pipe(batch_size=2, num_inference_steps=3, output_type="pt", generator=seeded(1, 2)).images
    assert [batch for batch, _ in counter.calls] == [2, 2, 2] and pipe.num_timesteps == 3
    counter.remove()
    expected = reference_loop(pipe.unet, scheduler_class(), 3, seeded(1, 2))
    torch.testing.assert_close(both, expected, rtol=0, atol=1e-6)  # the same calls: bit-identical
    second = pipe(batch_size=1, num_inference_steps=3, output_type="pt", generator=seeded(2)).images
    # the same image, sampled alone: batch 1 against 2 re-blocks the UNet's sums as above (measured 3e-7)
    torch.testing.assert_close(both[1:], second, rtol=0, atol=1e-5)
    assert not torch.allclose(both[0], both[1])


def test_callback_on_step_end_sees_and_replaces_latents():
    pipe = make_pipeline()
    seen = []

    def callback(pipeline, i, t, tensors):
        seen.append((i, sorted(tensors)))
        return {"latents": torch.zeros_like(tensors["latents"])}

    images = pipe(
        num_inference_steps=3,
        output_type="np",
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "model_output"],
    ).images
    assert seen == [(i, ["latents", "model_output"]) for i in range(3)]
    np.testing.assert_allclose(images, 0.5)  # the last replacement is the final sample: 0/2 + 0.5


def test_pipeline_callback_objects_are_supported():
    class Stop(PipelineCallback):
        tensor_inputs: ClassVar[list[str]] = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            cutoff = self.config.cutoff_step_index or int(pipeline.num_timesteps * self.config.cutoff_step_ratio)
            return {"latents": callback_kwargs["latents"] * 0} if step_index >= cutoff else callback_kwargs

    images = make_pipeline()(
        num_inference_steps=4, output_type="np", callback_on_step_end=Stop(cutoff_step_ratio=None, cutoff_step_index=3)
    )
    np.testing.assert_allclose(images.images, 0.5)


def test_progress_bar_counts_model_evaluations():
    pipe = make_pipeline(ScratchFlowMatchScheduler(solver="heun"))
    stream = io.StringIO()
    pipe.set_progress_bar_config(file=stream, disable=False)
    pipe(num_inference_steps=3, output_type="np")
    assert "5/5" in stream.getvalue()  # Heun: 2·3 − 1 evaluations


def test_runs_in_the_unets_dtype():
    pipe = make_pipeline()
    pipe.to(torch.float64)
    images = pipe(num_inference_steps=2, output_type="pt").images
    assert images.dtype == torch.float64


# ---- stock diffusers pipelines with our schedulers ------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs"), [(ScratchDDPMScheduler, DDPMScheduler), (ScratchDDIMScheduler, DDIMScheduler)]
)
def test_stock_ddpm_pipeline_accepts_our_schedulers(ours, theirs):
    unet = tiny_unet()
    kwargs = dict(batch_size=2, num_inference_steps=5, output_type="np")
    images = DDPMPipeline(unet=unet, scheduler=ours())(generator=torch.manual_seed(0), **kwargs).images
    expected = DDPMPipeline(unet=unet, scheduler=theirs())(generator=torch.manual_seed(0), **kwargs).images
    np.testing.assert_allclose(images, expected, atol=1e-5)  # diffusers' DDPMPipeline, ours and its schedulers: 0 today


def test_stock_ddpm_pipeline_folder_loads_locally(tmp_path):
    """A folder saved by the stock DDPMPipeline names our scheduler by module path; it loads locally."""
    DDPMPipeline(unet=tiny_unet(), scheduler=ScratchDDPMScheduler()).save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["scratch_schedulers.scheduling_ddpm", "ScratchDDPMScheduler"]
    assert type(DDPMPipeline.from_pretrained(tmp_path).scheduler) is ScratchDDPMScheduler


def test_stock_ddim_pipeline_silently_replaces_our_scheduler():
    """Documented pitfall: DDIMPipeline.__init__ rebuilds any scheduler as diffusers' DDIMScheduler."""
    pipe = DDIMPipeline(unet=tiny_unet(), scheduler=ScratchDDIMScheduler())
    assert type(pipe.scheduler) is DDIMScheduler


# ---- bad input --------------------------------------------------------------------------------

UNCONDITIONAL_ERRORS = [
    (dict(batch_size=0), r"batch_size=0 is not allowed; pass an integer ≥ 1"),
    (dict(batch_size=2.0), r"batch_size=2\.0 is not allowed"),
    (dict(num_inference_steps=0), r"num_inference_steps=0 is not allowed; pass an integer ≥ 1"),
    (
        dict(output_type="latents"),
        r"output_type='latents' is not supported; choose one of \['pil', 'np', 'pt', 'latent'\]",
    ),
    (dict(batch_size=3, generator=[torch.Generator()] * 2), r"list of 2 generators for batch_size=3"),
    (dict(class_labels=1), r"class_labels=1 given, but the UNet is unconditional.*allowed: class_labels=None"),
    (dict(guidance_scale=3.0), r"guidance_scale=3\.0 .*the UNet is unconditional; allowed: guidance_scale=1\.0"),
    (dict(guidance_scale=float("nan")), r"guidance_scale=nan is not allowed"),
    (dict(callback_on_step_end_tensor_inputs=["noise"]), r"\['noise'\]; allowed: \['latents', 'model_output'\]"),
]
CONDITIONAL_ERRORS = [
    (dict(class_labels=3), r"class_labels=3 out of range; allowed: integers in \[0, 2\]"),
    (dict(class_labels=[0, -1]), r"class_labels=\[0, -1\] out of range"),
    (dict(class_labels=[0, 1, 2]), r"pass one int, or 2 ints"),
    (dict(class_labels=[0.5, 1.0]), r"pass one int, or 2 ints"),
    (dict(guidance_scale=2.0), r"guidance_scale=2\.0 needs class labels.*no class_labels were given"),
]


@pytest.mark.parametrize(
    ("conditional", "kwargs", "message"),
    [(False, *case) for case in UNCONDITIONAL_ERRORS] + [(True, *case) for case in CONDITIONAL_ERRORS],
)
def test_bad_input_raises_before_any_model_evaluation(conditional, kwargs, message):
    pipe = make_pipeline(num_class_embeds=4 if conditional else None)
    counter = CallCounter(pipe.unet)
    with pytest.raises(ValueError, match=message):
        pipe(**{"batch_size": 2, "num_inference_steps": 2, **kwargs})
    assert counter.calls == []
