"""FlowMapUNet2DModel: a UNet's config builds it, it starts as the UNet bit for bit, r enters only through the
interval embedding, it saves and loads as a diffusers model, and it runs in bfloat16."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DModel

from scratch_diffusion.few_step import FlowMapUNet2DModel

from . import attention_unet, sample_for, with_live_interval_embedding

TIMESTEPS = torch.tensor([3.0, 612.5])
# r as the flow map takes it: None (r = t), numbers, 0-d tensors and per-example tensors, below and at t
R_VALUES = [None, 0, 250.0, torch.tensor(17.25), torch.tensor([0.0, 612.5]), torch.tensor([2.5, 100.0])]
UNET_SETTINGS = {
    "unconditional": {},
    "class_table": dict(num_class_embeds=3),
    "timestep_class_embedding": dict(class_embed_type="timestep"),
    "no_mid_block": dict(mid_block_type=None, num_class_embeds=3),
    "fourier_time_embedding": dict(time_embedding_type="fourier"),
}


def class_labels_for(unet: UNet2DModel, batch: int = 2) -> torch.Tensor | None:
    if unet.config.num_class_embeds is not None:
        return torch.tensor([2, 0])[:batch]
    if unet.config.class_embed_type == "timestep":
        return torch.tensor([7, 400])[:batch]
    return None


def test_built_from_a_unet_config_without_extra_keys():
    unet = attention_unet(num_class_embeds=3)
    flow_map = FlowMapUNet2DModel.from_config(unet.config)
    assert dict(flow_map.config) == dict(unet.config)
    interval_keys = set(flow_map.state_dict()) - set(unet.state_dict())
    assert set(unet.state_dict()) <= set(flow_map.state_dict())
    assert interval_keys and all(key.startswith("interval_embedding.") for key in interval_keys)
    # a fresh flow map's interval embedding ends in zeros (the identity at start)
    assert not flow_map.interval_embedding.embedding.linear_2.weight.any()


def test_a_learned_time_table_is_refused():
    with pytest.raises(ValueError, match="time_embedding_type='learned'"):
        FlowMapUNet2DModel.from_config(attention_unet(time_embedding_type="learned", num_train_timesteps=1000).config)


@pytest.mark.parametrize("setting", list(UNET_SETTINGS))
def test_from_unet_equals_the_unet_bit_for_bit_at_every_r(setting):
    unet = attention_unet(**UNET_SETTINGS[setting])
    flow_map = FlowMapUNet2DModel.from_unet(unet)
    sample, labels = sample_for(unet), class_labels_for(unet)
    expected = unet(sample, TIMESTEPS, class_labels=labels).sample
    for r in R_VALUES:
        # the zero last layer adds exact zeros to the time embedding: no rounding anywhere
        assert torch.equal(flow_map(sample, TIMESTEPS, class_labels=labels, r_timestep=r).sample, expected)
    # a Python-number timestep reaches the UNet as diffusers makes it (an integer tensor)
    assert torch.equal(flow_map(sample, 612, labels, r_timestep=5.5).sample, unet(sample, 612, labels).sample)
    assert flow_map.training == unet.training and flow_map.dtype == unet.dtype


def test_r_enters_through_the_interval_embedding_and_the_hook_is_removed():
    """Oracle: a UNet with an identity class embedding adds its class input to the time embedding inside
    diffusers' own forward, so feeding it interval_embedding(t − r) must give the flow map's output — bit for
    bit, since (time + interval) + 0 and time + (0 + interval) round alike."""
    unet = attention_unet(class_embed_type="identity")
    flow_map = with_live_interval_embedding(FlowMapUNet2DModel.from_unet(unet))
    sample = sample_for(unet)
    width = unet.time_embedding.linear_2.out_features
    zeros = torch.zeros(2, width)
    outputs = []
    for r in R_VALUES:
        got = flow_map(sample, TIMESTEPS, class_labels=zeros, r_timestep=r).sample
        r_per_example = TIMESTEPS if r is None else torch.as_tensor(r, dtype=torch.float32).expand(2)
        interval_emb = flow_map.interval_embedding(TIMESTEPS - r_per_example)
        assert torch.equal(got, unet(sample, TIMESTEPS, class_labels=interval_emb).sample)
        outputs.append(got)
        assert not flow_map.time_embedding._forward_hooks
    # the output now depends on r (r = t and r = 0 differ), and r = t given explicitly is r = None
    assert not torch.equal(outputs[0], outputs[1])
    assert torch.equal(outputs[0], flow_map(sample, TIMESTEPS, zeros, r_timestep=TIMESTEPS.clone()).sample)


def test_r_of_a_wrong_shape_is_refused_and_a_failing_call_leaves_no_hook():
    flow_map = FlowMapUNet2DModel.from_unet(attention_unet(num_class_embeds=3))
    sample = sample_for(flow_map)
    with pytest.raises(ValueError, match=r"r_timestep of shape \(3,\)"):
        flow_map(sample, TIMESTEPS, torch.tensor([0, 1]), r_timestep=torch.zeros(3))
    with pytest.raises(ValueError, match="class_labels should be provided"):  # raised inside UNet2DModel.forward
        flow_map(sample, TIMESTEPS, r_timestep=0.0)
    assert not flow_map.time_embedding._forward_hooks


def test_save_pretrained_round_trip_and_what_plain_diffusers_loads(tmp_path):
    flow_map = with_live_interval_embedding(FlowMapUNet2DModel.from_unet(attention_unet(num_class_embeds=3)))
    flow_map.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == "FlowMapUNet2DModel"
    loaded = FlowMapUNet2DModel.from_pretrained(tmp_path)
    sample, labels = sample_for(flow_map), torch.tensor([1, 2])
    saved_state, loaded_state = flow_map.state_dict(), loaded.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    assert all(torch.equal(saved_state[key], loaded_state[key]) for key in saved_state)
    expected = flow_map(sample, TIMESTEPS, labels, r_timestep=40.0).sample
    assert torch.equal(loaded(sample, TIMESTEPS, labels, r_timestep=40.0).sample, expected)

    # diffusers' UNet2DModel loads the folder by dropping the interval embedding (a warning, no error): a
    # different model, not even the flow map at r = t once the embedding of the interval 0 is nonzero
    plain = UNet2DModel.from_pretrained(tmp_path)
    assert type(plain) is UNet2DModel
    plain_state = plain.state_dict()
    assert plain_state.keys() == {key for key in saved_state if not key.startswith("interval_embedding.")}
    assert all(torch.equal(plain_state[key], saved_state[key]) for key in plain_state)
    at_r_equal_t = flow_map(sample, TIMESTEPS, labels).sample
    assert not torch.equal(plain(sample, TIMESTEPS, labels).sample, at_r_equal_t)


def test_a_plain_unet_folder_loads_as_from_unet_does(tmp_path):
    unet = attention_unet()
    unet.save_pretrained(tmp_path)
    flow_map = FlowMapUNet2DModel.from_pretrained(tmp_path)  # diffusers would leave the interval weights on meta
    assert not any(parameter.is_meta for parameter in flow_map.parameters())
    sample = sample_for(unet)
    assert torch.equal(flow_map(sample, TIMESTEPS, r_timestep=1.0).sample, unet(sample, TIMESTEPS).sample)


def test_bfloat16_weights_and_autocast():
    unet = attention_unet(num_class_embeds=3)
    sample, labels = sample_for(unet), torch.tensor([0, 2])
    # bf16 weights: the identity at start holds in bf16 too
    bf16_unet = attention_unet(num_class_embeds=3).to(torch.bfloat16)
    bf16_flow_map = FlowMapUNet2DModel.from_unet(bf16_unet)
    assert bf16_flow_map.interval_embedding.embedding.linear_1.weight.dtype == torch.bfloat16
    expected = bf16_unet(sample.bfloat16(), TIMESTEPS, labels).sample
    assert torch.equal(bf16_flow_map(sample.bfloat16(), TIMESTEPS, labels, r_timestep=9.0).sample, expected)

    # autocast over float32 weights, and bf16 weights with a float32 interval embedding: the hook casts the
    # interval embedding to the time embedding's dtype
    flow_map = with_live_interval_embedding(FlowMapUNet2DModel.from_unet(unet))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_out = flow_map(sample, TIMESTEPS, labels, r_timestep=100.0).sample
    mixed = with_live_interval_embedding(FlowMapUNet2DModel.from_unet(bf16_unet))
    mixed.interval_embedding.float()
    mixed_out = mixed(sample.bfloat16(), TIMESTEPS, labels, r_timestep=100.0).sample
    for out in (autocast_out, mixed_out):
        assert out.dtype == torch.bfloat16 and out.shape == sample.shape and out.isfinite().all()
