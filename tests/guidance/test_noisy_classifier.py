"""NoisyClassifier: the encoder of diffusers' UNet2DModel with a pooling head, its config, checks and save/load."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import UNet2DModel

from scratch_diffusion.guidance.noisy_classifier import MIRRORED_UNET_KEYS, NoisyClassifier
from scratch_diffusion.pipelines.cross_path import VP_SCHEDULE_DEFAULTS

# A two-level UNet with attention at the coarse level, small enough for milliseconds per call.
UNET = {
    "sample_size": 8, "in_channels": 2, "out_channels": 2, "block_out_channels": [8, 16], "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "norm_num_groups": 4, "attention_head_dim": 4,
}  # fmt: skip
FLOW_SCHEDULE = {"num_train_timesteps": 1000}


def classifier(**overrides) -> NoisyClassifier:
    """A 3-class flow classifier like :data:`UNET`; ``overrides`` replace any argument."""
    given = {"num_classes": 3, "noise_path": "flow", "noise_schedule": FLOW_SCHEDULE, **overrides}
    path_and_classes = [given.pop(name) for name in ("num_classes", "noise_path", "noise_schedule")]
    return NoisyClassifier.from_unet_config(UNET, *path_and_classes, **given)


def randomise_head(model: NoisyClassifier) -> None:
    """The head starts at zero (uniform logits); give it weights so the outputs depend on the input."""
    torch.manual_seed(1)
    torch.nn.init.normal_(model.classify.weight)
    torch.nn.init.normal_(model.classify.bias)


def test_logits_shape_and_timestep_forms() -> None:
    torch.manual_seed(0)
    model = classifier().eval()
    x = torch.randn(4, 2, 8, 8)
    with torch.no_grad():
        untrained = model(x, 500)
        assert untrained.shape == (4, 3) and untrained.dtype == torch.float32
        assert torch.equal(untrained, torch.zeros(4, 3))  # the zero-initialised head: p(y | x_t) uniform
        randomise_head(model)
        scalar = model(x, 250.5)
        assert torch.equal(scalar, model(x, torch.tensor(250.5)))
        assert torch.equal(scalar, model(x, torch.full((4,), 250.5)))  # one timestep per example, all equal
        assert torch.equal(model(x, 7), model(x, torch.full((4,), 7, dtype=torch.long)))  # VP: integer steps
        assert not torch.equal(scalar, model(x, 900.0))  # the timestep is an input
    with pytest.raises(ValueError, match=r"timestep of shape \(3,\) is not allowed for a batch of 4"):
        model(x, torch.zeros(3))


def test_encoder_is_the_unets_own() -> None:
    """With a UNet2DModel's weights, the classifier's mid-block output is the UNet's, bit for bit."""
    torch.manual_seed(0)
    unet = UNet2DModel(**UNET)
    model = NoisyClassifier.from_unet_config(unet.config, 3, "vp", None)
    missing, _ = model.load_state_dict(unet.state_dict(), strict=False)
    assert sorted(missing) == ["classify.bias", "classify.weight", "norm_out.bias", "norm_out.weight"]  # the head
    seen = {}
    unet.mid_block.register_forward_hook(lambda module, inputs, output: seen.setdefault("unet", output))
    model.mid_block.register_forward_hook(lambda module, inputs, output: seen.setdefault("classifier", output))
    x, t = torch.randn(3, 2, 8, 8), torch.tensor([3.0, 250.5, 999.0])
    with torch.no_grad():
        unet(x, t)
        model(x, t)
    assert torch.equal(seen["unet"], seen["classifier"])


def test_save_and_load_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = classifier(noise_path="vp", noise_schedule={**VP_SCHEDULE_DEFAULTS, "beta_schedule": "squaredcos_cap_v2"})
    randomise_head(model)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["_class_name"] == "NoisyClassifier" and saved["noise_path"] == "vp"
    assert saved["noise_schedule"]["beta_schedule"] == "squaredcos_cap_v2"
    loaded = NoisyClassifier.from_pretrained(tmp_path).eval()
    loaded_config = {k: v for k, v in json.loads(loaded.to_json_string()).items() if k != "_name_or_path"}
    assert loaded_config == json.loads(model.to_json_string())
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys() and all(torch.equal(state[k], loaded_state[k]) for k in state)
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.eval()(x, 10), loaded(x, 10))


def test_from_unet_config_mirrors_the_unet() -> None:
    model = classifier()
    for key in set(MIRRORED_UNET_KEYS) & set(UNET):
        assert json.loads(json.dumps(model.config[key])) == UNET[key], key
    assert model.config.num_classes == 3 and model.config.noise_path == "flow"
    assert model.config.noise_schedule == FLOW_SCHEDULE
    assert len(model.down_blocks) == 2 and model.classify.out_features == 3
    # where the UNet config is silent, the UNet2DModel default: norm_num_groups 32 for (32, 64) widths
    silent_config = {"sample_size": 16, "block_out_channels": [32, 64], "down_block_types": ["DownBlock2D"] * 2}
    silent = NoisyClassifier.from_unet_config(silent_config, 10, "flow", None).config
    assert (silent.norm_num_groups, silent.in_channels, silent.layers_per_block) == (32, 3, 2)
    assert classifier(layers_per_block=2, in_channels=1).config.layers_per_block == 2  # overrides win
    with pytest.raises(TypeError, match=r"overrides \['up_block_types'\] are not NoisyClassifier arguments"):
        classifier(up_block_types=["UpBlock2D", "UpBlock2D"])


def test_model_path_is_the_recorded_clock() -> None:
    """On the flow path λ = 0 (σ = b/a = 1) is σ_flow = 1/2, timestep T/2; VP: where ᾱ = 1/2."""
    point = classifier().model_path.point(0.0)
    assert (point.timestep, point.a, point.b) == (500.0, 0.5, 0.5)
    vp = classifier(noise_path="vp", noise_schedule={"num_train_timesteps": 1000}).model_path.point(0.0)
    assert math.isclose(vp.a, math.sqrt(0.5)) and math.isclose(vp.b, math.sqrt(0.5))
    with pytest.raises(ValueError, match="records no noise_schedule"):
        classifier(noise_schedule=None).model_path  # noqa: B018


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_classes": 1}, "num_classes=1 is not allowed; pass an integer ≥ 2."),
        ({"noise_path": "ve"}, "noise_path='ve' is not allowed; pass one of ['vp', 'flow']."),
        ({"noise_schedule": {"num_train_timesteps": 1000, "beta_schedule": "linear"}},
         "is not a 'flow' schedule (unknown keys ['beta_schedule'])"),
        ({"noise_path": "vp", "noise_schedule": {"num_train_timesteps": 1000, "beta_schedule": "cubic"}},
         "beta_schedule='cubic' is not supported"),
        ({"noise_schedule": {"steps": 1000}}, "num_train_timesteps required"),
        ({"down_block_types": ["DownBlock2D", "SkipDownBlock2D"]}, "pass types from ['DownBlock2D', 'AttnDownBlock2D'"),
        ({"block_out_channels": [8, 18]}, "positive widths divisible by norm_num_groups"),
        ({"block_out_channels": [8]}, "one down block type per width"),
        ({"sample_size": 9}, "sample_size=9 is not allowed; pass a positive multiple of 2 (2 levels)."),
    ],
)  # fmt: skip
def test_bad_config_values_are_refused(overrides, message) -> None:
    with pytest.raises(ValueError) as caught:
        classifier(**overrides)
    assert message in str(caught.value)


def test_a_saved_bad_config_is_refused_on_load(tmp_path) -> None:
    classifier().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "noise_path": "edm"}))
    with pytest.raises(ValueError, match="noise_path='edm' is not allowed"):
        NoisyClassifier.from_pretrained(tmp_path)
