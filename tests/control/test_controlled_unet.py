"""ControlledUNet: the control network's residuals reach the skips the plain UNet consumes, for one call only."""

from __future__ import annotations

import pytest
import torch

from scratch_diffusion import ControlledUNet, ControlNet2DModel
from scratch_diffusion.control import residuals_added

from .helpers import (
    CONFIGS,
    POSITIONAL,
    control_image_for,
    inputs_for,
    randomised,
    reference_forward,
    unet_of,
    unet_skips,
)

SCALES = (0.0, 1.0, 0.37, 7.5, torch.tensor([2.0, -1.0]))


def no_hooks_left(unet: torch.nn.Module) -> bool:
    return all(
        not (m._forward_pre_hooks or m._forward_hooks or m._forward_pre_hooks_with_kwargs) for m in unet.modules()
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_at_initialisation_the_controlled_unet_is_the_frozen_unet_bit_for_bit(name):
    unet = unet_of(name)
    controlled = ControlledUNet(unet, ControlNet2DModel.from_unet(unet))
    sample, timestep, keywords = inputs_for(unet)
    plain = unet(sample, timestep, **keywords).sample
    for scale in SCALES:
        control = control_image_for(controlled.controlnet, sample, seed=len(str(scale)))
        output = controlled(sample, timestep, control, conditioning_scale=scale, **keywords)
        assert torch.equal(output.sample, plain), scale
    assert no_hooks_left(unet)


def one_skip_residual(skips: list[torch.Tensor], index: int | None, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(skip.shape, generator=generator) if k == index else torch.zeros_like(skip)
        for k, skip in enumerate(skips)
    ]


@pytest.mark.parametrize("name", ["attention_resnet_sampling", "two_resnets_per_block", "no_mid_block"])
def test_a_residual_on_one_skip_reaches_exactly_that_skip(name):
    """Nonzero on skip k alone (then on the mid block alone): the hooked UNet equals UNet2DModel.forward re-traced
    with k's residual added by hand, and differs from the plain UNet — for every k."""
    unet = unet_of(name)
    sample, timestep, _ = inputs_for(unet)
    plain = unet(sample, timestep).sample
    skips = unet_skips(unet, sample, timestep)["skips"]
    mid_shape = skips[-1].shape  # the down path's last output: the mid block keeps its shape
    targets = [*range(len(skips)), "mid"]
    for target in targets:
        down = one_skip_residual(skips, None if target == "mid" else target, seed=len(targets))
        mid = torch.randn(mid_shape) if target == "mid" else torch.zeros(mid_shape)
        with residuals_added(unet, down, mid):
            output = unet(sample, timestep).sample
        assert no_hooks_left(unet)
        assert torch.equal(output, reference_forward(unet, sample, timestep, down, mid)), target
        assert not torch.equal(output, plain), target


@pytest.mark.parametrize("name", POSITIONAL)
def test_a_trained_control_network_steers_the_unet_by_its_residuals(name):
    unet = unet_of(name)
    controlnet = randomised(ControlNet2DModel.from_unet(unet))
    sample, timestep, keywords = inputs_for(unet)
    control = control_image_for(controlnet, sample)
    labels = keywords.get("class_labels")
    residuals = controlnet(sample, timestep, control, class_labels=labels, conditioning_scale=0.5)
    expected = reference_forward(
        unet, sample, timestep, list(residuals.down_block_res_samples), residuals.mid_block_res_sample, labels
    )
    output = ControlledUNet(unet, controlnet)(sample, timestep, control, conditioning_scale=0.5, **keywords)
    assert torch.equal(output.sample, expected)
    tuple_output = ControlledUNet(unet, controlnet)(sample, timestep, control, 0.5, return_dict=False, **keywords)
    assert torch.equal(tuple_output[0], expected)


def test_gradients_reach_the_control_network_through_the_frozen_unet():
    """At Z = 0 only the zero convs get gradients (everything before them is multiplied by Z = 0); one step on
    them opens the path to the encoder and the copied blocks. The frozen UNet gets none."""
    unet = unet_of("attention").requires_grad_(False)
    controlnet = ControlNet2DModel.from_unet(unet)
    controlled = ControlledUNet(unet, controlnet)
    sample, timestep, _ = inputs_for(unet)
    control = control_image_for(controlnet, sample)
    controlled(sample, timestep, control).sample.square().sum().backward()
    zero_convs = [*controlnet.down_zero_convs, controlnet.mid_zero_conv]
    assert all(conv.weight.grad.abs().amax() > 0 and conv.bias.grad.abs().amax() > 0 for conv in zero_convs)
    assert not controlnet.conditioning_encoder.conv_out.weight.grad.any()
    assert not controlnet.down_blocks[0].resnets[0].conv1.weight.grad.any()
    assert all(p.grad is None for p in unet.parameters())
    torch.optim.SGD(controlnet.parameters(), lr=0.1).step()
    controlnet.zero_grad()
    controlled(sample, timestep, control).sample.square().sum().backward()
    assert controlnet.conditioning_encoder.conv_out.weight.grad.abs().amax() > 0
    assert controlnet.down_blocks[0].resnets[0].conv1.weight.grad.abs().amax() > 0
    assert all(p.grad is None for p in unet.parameters()) and no_hooks_left(unet)


def test_hooks_are_removed_after_an_error_and_a_users_own_hooks_stay():
    unet = unet_of("plain")
    controlled = ControlledUNet(unet, randomised(ControlNet2DModel.from_unet(unet)))
    calls = []
    mine = unet.up_blocks[0].register_forward_pre_hook(lambda m, a: calls.append(1))
    sample, timestep, _ = inputs_for(unet)
    control = control_image_for(controlled.controlnet, sample)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        controlled(sample, timestep, control, bogus=1)  # raised inside the UNet's call, hooks installed
    controlled(sample, timestep, control)
    assert calls == [1]  # the user's hook ran (on the good call) and is still the only one left
    mine.remove()
    assert no_hooks_left(unet)
    skips = unet_skips(unet, sample, timestep)["skips"]
    wrong = [torch.zeros(s.shape[0], s.shape[1] + 1, *s.shape[2:]) for s in skips]
    shapes = r"up block 0 receives skips of shapes \[\(2, 8, 4, 4\), \(2, 16, 4, 4\)\]"
    with pytest.raises(ValueError, match=shapes), residuals_added(unet, wrong, torch.zeros(2, 16, 4, 4)):
        unet(sample, timestep)
    count = r"3 down block residuals are not allowed.*consume 4 skips \(\[2, 2\] per"
    with pytest.raises(ValueError, match=count), residuals_added(unet, skips[:3], torch.zeros(2, 16, 4, 4)):
        pass
    assert no_hooks_left(unet)


class Counter:
    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        module.register_forward_pre_hook(self.count)

    def count(self, module, args):
        self.calls += 1


def test_a_bad_control_image_or_a_foreign_network_is_refused_before_any_evaluation():
    unet = unet_of("class_conditional")
    controlnet = ControlNet2DModel.from_unet(unet, conditioning_channels=1)
    controlled = ControlledUNet(unet, controlnet)
    counters = [Counter(unet.conv_in), Counter(controlnet.conv_in)]
    sample, timestep, keywords = inputs_for(unet)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 8, 8\) is not allowed.*needs \(2, 1, 8, 8\)"):
        controlled(sample, timestep, torch.rand(2, 3, 8, 8), **keywords)
    with pytest.raises(ValueError, match="class_labels=None is not allowed"):
        controlled(sample, timestep, torch.rand(2, 1, 8, 8))
    assert [c.calls for c in counters] == [0, 0]
    with pytest.raises(ValueError, match=r"made from a UNet with num_class_embeds=5, but this UNet has num_class_emb"):
        ControlledUNet(unet_of("plain"), controlnet)
    with pytest.raises(
        ValueError, match=r"block_out_channels=\[8, 16\], but this UNet has block_out_channels=\[8, 8\]"
    ):
        ControlledUNet(unet_of("class_conditional", block_out_channels=(8, 8)), controlnet)


def test_float64_bfloat16_autocast_and_the_meta_device():
    unet = unet_of("attention")
    controlnet = ControlNet2DModel.from_unet(unet)
    sample, timestep, _ = inputs_for(unet)
    control = control_image_for(controlnet, sample)  # float32: cast to the network's dtype
    unet64, controlled64 = unet.double(), ControlledUNet(unet, controlnet.double())
    assert torch.equal(
        controlled64(sample.double(), timestep, control).sample, unet64(sample.double(), timestep).sample
    )
    unet.float(), controlnet.float()
    controlled = ControlledUNet(unet, controlnet)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = unet(sample, timestep).sample
        output = controlled(sample, timestep, control).sample
    assert output.dtype == plain.dtype == torch.bfloat16 and torch.equal(output, plain)
    randomised(controlnet)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        steered = controlled(sample, timestep, control).sample
    assert steered.dtype == torch.bfloat16 and not torch.equal(steered, plain)
    unet.to("meta"), controlnet.to("meta")
    output = controlled(sample.to("meta"), timestep.to("meta"), control.to("meta")).sample
    assert output.device.type == "meta" and output.shape == sample.shape and no_hooks_left(unet)
