"""An objective is one module plus one registration: a throwaway one trains end to end through ``run_training``.

``PseudoHuberFlow`` below is such a module: flow matching with the pseudo-Huber distance
d(u, û) = √(‖u − û‖²/D + c²) − c (Song & Dhariwal, 2023, "Improved techniques for training consistency models",
§3.3) on the velocity u = ε − x0, with its own argument ``--huber_c``. Registered in ``OBJECTIVES`` for one test, it
gets its argument group, its checks, the refusal of other objectives' arguments, the card text and the sampler.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from huggingface_hub import ModelCard

from scratch_diffusion.training import run_training
from scratch_diffusion.training.cli import build_parser, parse_args
from scratch_diffusion.training.errors import check
from scratch_diffusion.training.objectives import OBJECTIVES, Objective, unused_objective_arguments
from scratch_schedulers import ScratchFlowMatchScheduler
from scratch_schedulers.model_fn import ModelFn

from .test_cli import _fails


@dataclass
class PseudoHuberFlow(Objective):
    """E_{σ, ε} √(‖f(x_σ, σ·T) − (ε − x0)‖²/D + c²) − c, σ ~ U(0, 1)."""

    name: ClassVar[str] = "flow_pseudo_huber"
    title: ClassVar[str] = "--objective flow_pseudo_huber: flow matching with a pseudo-Huber distance"
    tag: ClassVar[str] = "flow-matching"
    float_arguments: ClassVar[tuple[str, ...]] = ("huber_c",)
    few_step_path: ClassVar[dict] = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}

    scheduler: ScratchFlowMatchScheduler
    c: float = 0.03

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--huber_c", type=float, default=0.03, help="c of the pseudo-Huber distance")

    @classmethod
    def validate(cls, args: argparse.Namespace) -> None:
        check(args.huber_c > 0, f"--huber_c must be > 0, got {args.huber_c}.")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PseudoHuberFlow:
        return cls(ScratchFlowMatchScheduler(num_train_timesteps=args.ddpm_num_steps), args.huber_c)

    def loss(self, model_fn: ModelFn, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        t = torch.rand(x0.shape[0], generator=generator, device=x0.device) * self.scheduler.config.num_train_timesteps
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        error = model_fn(self.scheduler.add_noise(x0, noise, t), t) - self.scheduler.get_velocity(x0, noise, t)
        mean_square = error.float().pow(2).flatten(1).mean(dim=1)
        return ((mean_square + self.c**2).sqrt() - self.c).mean()

    @classmethod
    def describe(cls, args: argparse.Namespace) -> str:
        return f"pseudo-Huber flow matching (c = {args.huber_c:g})"

    def sampling_scheduler(self, latent: bool = False) -> ScratchFlowMatchScheduler:
        return ScratchFlowMatchScheduler.from_config(self.scheduler.config)


@pytest.fixture
def pseudo_huber(monkeypatch):
    """The one registration line, for this test only."""
    monkeypatch.setitem(OBJECTIVES, PseudoHuberFlow.name, PseudoHuberFlow)


@pytest.mark.usefixtures("pseudo_huber")
def test_a_registered_objective_trains_end_to_end(tmp_path, hf_home, tiny_unet_json):
    out = tmp_path / "huber"
    summary = run_training([
        "--output_dir", str(out), "--model_config_name_or_path", str(tiny_unet_json), "--max_train_steps", "2",
        "--train_batch_size", "4", "--objective", "flow_pseudo_huber", "--huber_c", "0.05", "--logger", "none",
        "--eval_batch_size", "2", "--ddpm_num_inference_steps", "2", "--checkpointing_steps", "1000",
    ])  # fmt: skip
    assert summary.global_step == 2
    card = ModelCard.load(out / "README.md")
    assert "with pseudo-Huber flow matching (c = 0.05)" in card.text and "flow-matching" in card.data.tags
    assert "| `huber_c` | `0.05` |" in card.text
    for other in ("snr_gamma", "prediction_type", "weighting_scheme", "logit_mean", "flow_shift"):
        assert f"`{other}`" not in card.text  # other objectives' arguments did not apply
    assert (out / "scheduler" / "scheduler_config.json").read_text().count("ScratchFlowMatchScheduler") == 1


@pytest.mark.usefixtures("pseudo_huber")
def test_a_registered_objective_gets_its_group_checks_and_refusals(capsys):
    help_text = build_parser().format_help()
    assert "--objective flow_pseudo_huber: flow matching with a pseudo-Huber distance" in help_text
    assert "{ddpm,flow,meanflow,consistency,flow_pseudo_huber}" in help_text
    args = parse_args(["--objective", "flow_pseudo_huber"])
    assert args.huber_c == 0.03 and args.weighting_scheme is None  # flow's defaults are flow's only
    from scratch_diffusion.training.objectives import ConsistencyObjective, MeanFlowObjective, own_arguments

    few_step = {*own_arguments(MeanFlowObjective), *own_arguments(ConsistencyObjective)}
    assert unused_objective_arguments(args) == {
        "prediction_type", "ddpm_beta_schedule", "rescale_betas_zero_snr", "snr_gamma",
        "weighting_scheme", "logit_mean", "logit_std", "flow_shift", *few_step,
    }  # fmt: skip
    assert parse_args([]).objective == "flow"  # the default is unchanged by a registration
    _fails(["--objective", "flow_pseudo_huber", "--huber_c", "-1"], "--huber_c must be > 0, got -1.0.", capsys)
    _fails(["--objective", "flow_pseudo_huber", "--huber_c", "nan"], "--huber_c nan is not allowed", capsys)
    _fails(["--objective", "flow", "--huber_c", "0.1"], "--huber_c applies to --objective flow_pseudo_huber only.",
           capsys)  # fmt: skip
    _fails(["--objective", "flow_pseudo_huber", "--snr_gamma", "5"], "--snr_gamma applies to --objective ddpm only.",
           capsys)  # fmt: skip


def test_without_the_registration_the_objective_is_unknown(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--objective", "flow_pseudo_huber"])
    assert exit_info.value.code == 2 and "invalid choice: 'flow_pseudo_huber'" in capsys.readouterr().err
