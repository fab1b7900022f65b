"""ControlNet2DModel: a copy of the UNet's encoder whose streams are the UNet's, with zero residuals at start."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from diffusers import UNet2DModel

from scratch_diffusion import ControlNet2DModel
from scratch_diffusion.control.controlnet import COPIED_UNET_KEYS, COPIED_UNET_MODULES

from .helpers import CONFIGS, control_image_for, inputs_for, randomised, same_weights, unet_of, unet_skips

UP_PATH_KEYS = {"out_channels", "up_block_types", "upsample_type"}


def parameters_of(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def test_the_copied_keys_are_the_unet_config_but_its_up_path_with_the_unets_defaults():
    unet_parameters = inspect.signature(UNet2DModel.__init__).parameters
    ours = inspect.signature(ControlNet2DModel.__init__).parameters
    assert set(COPIED_UNET_KEYS) == set(unet_parameters) - {"self"} - UP_PATH_KEYS  # fails on a new diffusers key
    assert {key: ours[key].default for key in COPIED_UNET_KEYS} == {
        key: unet_parameters[key].default for key in COPIED_UNET_KEYS
    }


@pytest.mark.parametrize("name", list(CONFIGS))
def test_from_unet_copies_the_path_exactly_and_starts_with_zero_convolutions(name):
    unet = unet_of(name)
    controlnet = ControlNet2DModel.from_unet(unet)
    for module in COPIED_UNET_MODULES:
        assert (getattr(unet, module) is None) == (getattr(controlnet, module) is None), module
        if getattr(unet, module) is not None:
            assert same_weights(getattr(controlnet, module), getattr(unet, module)), module
    for key in COPIED_UNET_KEYS:
        assert controlnet.config[key] == unet.config[key], key
    zero_convs = [*controlnet.down_zero_convs, controlnet.mid_zero_conv, controlnet.conditioning_encoder.conv_out]
    assert all(not parameter.any() for conv in zero_convs for parameter in conv.parameters())
    # every parameter is the copy's, the encoder's or a zero conv's: nothing else was kept from the built UNet
    copied = sum(parameters_of(getattr(unet, module)) for module in COPIED_UNET_MODULES)
    added = parameters_of(controlnet.conditioning_encoder) + sum(parameters_of(conv) for conv in zero_convs[:-1])
    assert parameters_of(controlnet) == copied + added
    fresh = ControlNet2DModel.from_unet(unet, load_weights_from_unet=False)
    assert not torch.equal(fresh.conv_in.weight, unet.conv_in.weight)  # the copy is a copy, not a coincidence


@pytest.mark.parametrize("name", list(CONFIGS))
def test_embedding_and_block_outputs_equal_the_unets_and_the_residuals_are_zero(name):
    """Copied weights, E(c) = 0: the network's stream is the UNet's — embedding, every skip, the mid output."""
    unet = unet_of(name)
    controlnet = ControlNet2DModel.from_unet(unet)
    sample, timestep, keywords = inputs_for(unet)
    expected = unet_skips(unet, sample, timestep, **keywords)
    seen: list[torch.Tensor] = []
    convs = [*controlnet.down_zero_convs, controlnet.mid_zero_conv]
    handles = [conv.register_forward_pre_hook(lambda m, a: seen.append(a[0])) for conv in convs]
    control = control_image_for(controlnet, sample)
    output = controlnet(sample, timestep, control, class_labels=keywords.get("class_labels"), conditioning_scale=3.0)
    for handle in handles:
        handle.remove()
    assert torch.equal(controlnet.embedding(sample, timestep, keywords.get("class_labels")), expected["temb"])
    *skips, mid = seen
    assert [s.shape for s in skips] == [s.shape for s in expected["skips"]]
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(skips, expected["skips"], strict=True))
    if unet.mid_block is not None:
        assert torch.equal(mid, expected["mid"])
    residuals = output.down_block_res_samples
    assert [r.shape for r in residuals] == [s.shape for s in expected["skips"]]
    assert all(not r.any() for r in residuals) and not output.mid_block_res_sample.any()


@pytest.mark.parametrize("timestep", [7, 7.9, torch.tensor(7), torch.tensor([7]), torch.tensor([7, 7, 7])])
def test_every_timestep_form_embeds_as_the_unet_does(timestep):
    """A Python float becomes an integer step in UNet2DModel.forward (7.9 → 7); the copy does the same."""
    unet = unet_of("class_conditional")
    controlnet = ControlNet2DModel.from_unet(unet)
    sample, _, keywords = inputs_for(unet, batch=3)
    expected = unet_skips(unet, sample, timestep, **keywords)["temb"]
    assert torch.equal(controlnet.embedding(sample, timestep, keywords["class_labels"]), expected)


def test_residuals_scale_linearly_and_per_example():
    unet = unet_of("attention")
    controlnet = randomised(ControlNet2DModel.from_unet(unet))
    sample, timestep, _ = inputs_for(unet)
    control = control_image_for(controlnet, sample)
    one = controlnet(sample, timestep, control)
    two = controlnet(sample, timestep, control, conditioning_scale=2.0)  # ×2 is exact in binary floating point
    mixed = controlnet(sample, timestep, control, conditioning_scale=torch.tensor([1.0, 0.0]))
    for a, b, m in zip([*one.down_block_res_samples, one.mid_block_res_sample],
                       [*two.down_block_res_samples, two.mid_block_res_sample],
                       [*mixed.down_block_res_samples, mixed.mid_block_res_sample], strict=True):  # fmt: skip
        assert a.abs().amax() > 0 and torch.equal(b, 2 * a)
        assert torch.equal(m[0], a[0]) and not m[1].any()
    # the control image matters once the encoder's zero conv has trained
    other = controlnet(sample, timestep, 1 - control)
    assert not torch.equal(other.mid_block_res_sample, one.mid_block_res_sample)


def test_save_and_load_round_trip(tmp_path):
    unet = unet_of("class_conditional")
    controlnet = randomised(ControlNet2DModel.from_unet(unet, conditioning_channels=1, conditioning_downscale_factor=2))
    controlnet.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["_class_name"] == "ControlNet2DModel" and saved["conditioning_downscale_factor"] == 2
    loaded = ControlNet2DModel.from_pretrained(tmp_path)

    def plain_config(model) -> dict:
        return {k: v for k, v in json.loads(model.to_json_string()).items() if not k.startswith("_")}

    assert plain_config(loaded) == plain_config(controlnet) and same_weights(loaded, controlnet)
    sample, timestep, keywords = inputs_for(unet)
    control = control_image_for(controlnet, sample)
    labels = keywords["class_labels"]
    before, after = controlnet(sample, timestep, control, labels), loaded(sample, timestep, control, labels)
    assert all(torch.equal(a, b) for a, b in zip(before.down_block_res_samples, after.down_block_res_samples))
    assert torch.equal(before.mid_block_res_sample, after.mid_block_res_sample)


@pytest.mark.parametrize(("factor", "widths", "stride_two"), [(1, (16, 32), 0), (2, (16, 32), 1), (8, (16, 32), 3),
                                                              (4, (4,), 2), (2, (4, 8, 16), 1)])  # fmt: skip
def test_the_encoder_brings_a_larger_control_image_to_the_sample_grid(factor, widths, stride_two):
    unet = unet_of("plain")
    controlnet = ControlNet2DModel.from_unet(
        unet, conditioning_channels=1, conditioning_downscale_factor=factor, conditioning_embedding_channels=widths
    )
    strides = [m.stride[0] for m in controlnet.conditioning_encoder.layers if isinstance(m, torch.nn.Conv2d)]
    assert strides.count(2) == stride_two and len(strides) == max(len(widths), 1 + stride_two)
    sample, timestep, _ = inputs_for(unet)
    control = torch.rand(2, 1, 8 * factor, 8 * factor)
    features = randomised(controlnet).conditioning_encoder(control)
    assert features.shape == (2, 8, 8, 8)  # conv_in's output: (B, block_out_channels[0], H, W)
    output = controlnet(sample, timestep, control)
    assert output.down_block_res_samples[0].shape == (2, 8, 8, 8)
    with pytest.raises(ValueError, match=rf"needs \(2, 1, {8 * factor}, {8 * factor}\)"):
        controlnet(sample, timestep, torch.rand(2, 1, 8 * factor * 2, 8 * factor * 2))


class CountingHook:
    """Counts the evaluations of a module (a forward pre-hook)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self.count)

    def count(self, module, args):
        self.calls += 1


BAD_CALLS = [
    (dict(controlnet_cond=torch.rand(2, 1, 8, 8)), ValueError, r"shape \(2, 1, 8, 8\).*needs \(2, 3, 8, 8\)"),
    (dict(controlnet_cond=torch.rand(2, 3, 4, 4)), ValueError, r"conditioning_downscale_factor=1 times the sample"),
    (dict(controlnet_cond=torch.rand(1, 3, 8, 8)), ValueError, r"needs \(2, 3, 8, 8\): the sample's batch"),
    (dict(controlnet_cond=[[0.5]]), TypeError, "controlnet_cond of type list is not allowed"),
    (dict(timestep=torch.tensor([1, 2, 3])), ValueError, r"timestep of shape \(3,\) is not allowed for a batch of 2"),
    (dict(class_labels=torch.tensor([1, 2])), ValueError, "class_labels are not allowed"),
    (dict(conditioning_scale=torch.ones(3)), ValueError, r"conditioning_scale of shape \(3,\) is not allowed"),
]


@pytest.mark.parametrize(("bad", "error", "message"), BAD_CALLS)
def test_bad_calls_fail_before_any_evaluation(bad, error, message):
    controlnet = ControlNet2DModel.from_unet(unet_of("plain"))
    counters = [CountingHook(controlnet.conv_in), CountingHook(controlnet.conditioning_encoder)]
    call = {"sample": torch.randn(2, 3, 8, 8), "timestep": 10, "controlnet_cond": torch.rand(2, 3, 8, 8), **bad}
    with pytest.raises(error, match=message):
        controlnet(**call)
    assert [counter.calls for counter in counters] == [0, 0]


def test_a_class_conditional_network_needs_labels():
    controlnet = ControlNet2DModel.from_unet(unet_of("class_conditional"))
    with pytest.raises(ValueError, match="class_labels=None is not allowed"):
        controlnet(torch.randn(2, 3, 8, 8), 10, torch.rand(2, 3, 8, 8))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (dict(conditioning_downscale_factor=3), r"conditioning_downscale_factor=3 is not allowed; pass a power of 2"),
        (dict(conditioning_downscale_factor=0), r"conditioning_downscale_factor=0 is not allowed"),
        (dict(conditioning_downscale_factor=True), r"conditioning_downscale_factor=True is not allowed"),
        (dict(conditioning_channels=0), r"conditioning_channels=0 is not allowed; pass an integer ≥ 1"),
        (dict(conditioning_embedding_channels=()), r"conditioning_embedding_channels=\[\] is not allowed"),
        (dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D")),
         r"down_block_types=\['CrossAttnDownBlock2D', 'DownBlock2D'\] is not allowed; pass types from \['DownBlock2D'"),
    ],
)  # fmt: skip
def test_bad_configs_are_refused_naming_the_value(override, message):
    config = {key: unet_of("plain").config[key] for key in COPIED_UNET_KEYS}
    with pytest.raises(ValueError, match=message):
        ControlNet2DModel(**{**config, **override})
