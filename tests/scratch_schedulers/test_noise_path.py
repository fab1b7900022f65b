"""Parametrisation converters of ``noise_path``, each pair round-tripped both ways in float64.

Path points cover the inside and the ends of both paths: VP a = √ᾱ, b = √(1 − ᾱ) with ᾱ from 0
(pure noise, a = 0) to 1 (data, b = 0); flow a = 1 − σ, b = σ with σ from 0 to 1. Where a
conversion divides by zero it is undefined, and the tests say so by asserting a non-finite result:

* ``eps_to_x0`` divides by a: undefined at a = 0 (ᾱ = 0, σ = 1), where ε says nothing about x0;
* ``x0_to_eps`` divides by b: undefined at b = 0 (ᾱ = 1, σ = 0), where x0 says nothing about ε;
* ``v_to_x0`` / ``v_to_eps`` and ``velocity_to_x0`` / ``velocity_to_eps`` never divide: defined
  at every point of their own path, ends included (and wrong off it: v needs a² + b² = 1).
"""

from __future__ import annotations

import math
import typing

import pytest
import torch

from scratch_schedulers import ScratchDDIMScheduler, ScratchDDPMScheduler, ScratchFlowMatchScheduler
from scratch_schedulers.noise_path import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    PREDICTION_TYPES_BY_PATH,
    TIME_SHIFT_TYPES,
    TIMESTEP_SPACINGS,
    eps_to_x0,
    split_prediction,
    target_for,
    v_to_eps,
    v_to_x0,
    velocity_to_eps,
    velocity_to_x0,
    x0_to_eps,
)
from scratch_schedulers.scheduling_ddpm import VARIANCE_TYPES
from scratch_schedulers.scheduling_flow_match import SOLVERS

pytestmark = pytest.mark.numerics  # rerun by make test under ATEN_CPU_CAPABILITY=default

F64 = torch.float64
ALPHA_BARS = [0.0, 1e-8, 1e-3, 0.1, 0.5, 0.9, 0.999, 1 - 1e-8, 1.0]
SIGMAS = [0.0, 1e-8, 1e-3, 0.25, 0.5, 0.75, 0.999, 1 - 1e-8, 1.0]
VP_POINTS = [(math.sqrt(ab), math.sqrt(1 - ab)) for ab in ALPHA_BARS]
FLOW_POINTS = [(1 - s, s) for s in SIGMAS]
POINTS = {"vp": VP_POINTS, "flow": FLOW_POINTS}
CASES = [(path, a, b) for path, points in POINTS.items() for a, b in points]
IDS = [f"{path}-a={a:.3g}-b={b:.3g}" for path, a, b in CASES]


def clean_and_noise(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, generator=generator, dtype=F64), torch.randn(4, 3, generator=generator, dtype=F64)


def close(actual: torch.Tensor, expected: torch.Tensor, divisor: torch.Tensor | float = 1.0) -> None:
    """Equal up to float64 rounding, amplified by a division by ``divisor`` (a or b near an end).

    A conversion or round trip is ≤ 6 operations on values ≤ 8 (sums of two N(0, 1) draws): ≤ 6·8·2⁻⁵³ ≈ 5e-15
    absolute, over ``divisor`` where it divides; atol = 1e-13/divisor and rtol = 1e-12 sit 20× above that and
    far below the O(1) error of a wrong formula.
    """
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-13 / float(divisor))


def undefined(value: torch.Tensor) -> bool:
    return not bool(torch.isfinite(value).all())


@pytest.mark.parametrize(("path", "a", "b"), CASES, ids=IDS)
def test_eps_and_x0_convert_into_each_other(path, a, b):
    """x0 = (x_t − b·ε)/a and ε = (x_t − a·x0)/b, each the inverse of the other for any x_t."""
    x0, eps = clean_and_noise(1)
    a, b = torch.tensor(a, dtype=F64), torch.tensor(b, dtype=F64)
    x_t = a * x0 + b * eps
    if a > 0:
        close(eps_to_x0(eps, x_t, a, b), x0, divisor=a)
    else:  # pure noise: ε = x_t says nothing about x0
        assert undefined(eps_to_x0(eps, x_t, a, b))
        close(x0_to_eps(x0, x_t, a, b), x_t)
    if b > 0:
        close(x0_to_eps(x0, x_t, a, b), eps, divisor=b)
    else:  # data: x0 = x_t says nothing about ε
        assert undefined(x0_to_eps(x0, x_t, a, b))
        close(eps_to_x0(eps, x_t, a, b), x_t)
    if a > 0 and b > 0:  # both directions, for an arbitrary x_t
        other, other_x_t = clean_and_noise(8)
        close(eps_to_x0(x0_to_eps(other, other_x_t, a, b), other_x_t, a, b), other, divisor=a)
        close(x0_to_eps(eps_to_x0(other, other_x_t, a, b), other_x_t, a, b), other, divisor=b)


@pytest.mark.parametrize(("a", "b"), VP_POINTS, ids=[f"a={a:.3g}" for a, _ in VP_POINTS])
def test_v_converts_to_x0_and_eps_and_back_on_the_vp_path(a, b):
    """v = a·ε − b·x0 ⇄ (x0 = a·x_t − b·v, ε = a·v + b·x_t): defined at both ends (a = 0 and b = 0)."""
    x0, eps = clean_and_noise(2)
    a, b = torch.tensor(a, dtype=F64), torch.tensor(b, dtype=F64)
    x_t = a * x0 + b * eps
    v = target_for("v_prediction", x0, eps, a, b)
    close(v_to_x0(v, x_t, a, b), x0)
    close(v_to_eps(v, x_t, a, b), eps)
    other_v, other_x_t = clean_and_noise(3)  # v → (x0, ε) → v, and x_t rebuilt, for any (v, x_t)
    x0_back, eps_back = v_to_x0(other_v, other_x_t, a, b), v_to_eps(other_v, other_x_t, a, b)
    close(target_for("v_prediction", x0_back, eps_back, a, b), other_v)
    close(a * x0_back + b * eps_back, other_x_t)


def test_v_conversion_is_wrong_off_the_vp_path():
    """The v formulas use a² + b² = 1; on the flow path's σ = 0.5 (a² + b² = 0.5) they do not invert v."""
    x0, eps = clean_and_noise(4)
    a = b = torch.tensor(0.5, dtype=F64)
    v = target_for("v_prediction", x0, eps, a, b)
    assert not torch.allclose(v_to_x0(v, a * x0 + b * eps, a, b), x0)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_velocity_converts_to_x0_and_eps_and_back_on_the_flow_path(sigma):
    """u = ε − x0 ⇄ (x0 = x_t − σ·u, ε = x_t + (1 − σ)·u): defined at σ = 0 and σ = 1."""
    x0, eps = clean_and_noise(5)
    s = torch.tensor(sigma, dtype=F64)
    x_t = (1 - s) * x0 + s * eps
    u = target_for("flow_velocity", x0, eps)
    close(velocity_to_x0(u, x_t, s), x0)
    close(velocity_to_eps(u, x_t, s), eps)
    other_u, other_x_t = clean_and_noise(6)
    x0_back, eps_back = velocity_to_x0(other_u, other_x_t, s), velocity_to_eps(other_u, other_x_t, s)
    close(target_for("flow_velocity", x0_back, eps_back), other_u)
    close((1 - s) * x0_back + s * eps_back, other_x_t)


PARAMETRISED = [(p, a, b) for path, a, b in CASES for p in PREDICTION_TYPES_BY_PATH[path]]


@pytest.mark.parametrize(("prediction_type", "a", "b"), PARAMETRISED,
                         ids=[f"{p}-a={a:.3g}-b={b:.3g}" for p, a, b in PARAMETRISED])
def test_split_prediction_inverts_target_for(prediction_type, a, b):
    """split_prediction(target_for(p, x0, ε)) = (x0, ε), and target_for(p, *split_prediction(out)) = out,
    for every parametrisation of each path; ``epsilon`` at a = 0 and ``sample`` at b = 0 are undefined."""
    x0, eps = clean_and_noise(7)
    a, b = torch.tensor(a, dtype=F64), torch.tensor(b, dtype=F64)
    x_t = a * x0 + b * eps
    output = target_for(prediction_type, x0, eps, a, b)
    x0_hat, eps_hat = split_prediction(output, x_t, a, b, prediction_type)
    divisor = {"epsilon": a, "sample": b}.get(prediction_type, 1.0)  # x̂0 = (x_t − b·ε̂)/a, ε̂ = (x_t − a·x̂0)/b
    if divisor == 0:
        assert undefined(x0_hat if prediction_type == "epsilon" else eps_hat)
        return
    close(x0_hat, x0, divisor)
    close(eps_hat, eps, divisor)
    close(target_for(prediction_type, x0_hat, eps_hat, a, b), output, divisor)


@pytest.mark.parametrize("call", [lambda: target_for("score", torch.zeros(1), torch.zeros(1)),
                                  lambda: split_prediction(torch.zeros(1), torch.zeros(1), 1.0, 0.0, "score")])
def test_unknown_prediction_type_names_every_allowed_one(call):
    with pytest.raises(ValueError, match="'score'") as info:
        call()
    for name in PREDICTION_TYPES:
        assert name in str(info.value)


@pytest.mark.parametrize(("cls", "argument", "allowed"), [
    (ScratchDDPMScheduler, "beta_schedule", BETA_SCHEDULES),
    (ScratchDDPMScheduler, "timestep_spacing", TIMESTEP_SPACINGS),
    (ScratchDDPMScheduler, "prediction_type", PREDICTION_TYPES_BY_PATH["vp"]),
    (ScratchDDPMScheduler, "variance_type", VARIANCE_TYPES),
    (ScratchDDIMScheduler, "beta_schedule", BETA_SCHEDULES),
    (ScratchDDIMScheduler, "timestep_spacing", TIMESTEP_SPACINGS),
    (ScratchDDIMScheduler, "prediction_type", PREDICTION_TYPES_BY_PATH["vp"]),
    (ScratchFlowMatchScheduler, "time_shift_type", TIME_SHIFT_TYPES),
    (ScratchFlowMatchScheduler, "solver", SOLVERS),
])
def test_literal_annotations_are_the_checked_choices(cls, argument, allowed):
    """Each choice argument is annotated with the Literal whose values the scheduler accepts; every
    value of it constructs, and the annotation names no other value."""
    hints = typing.get_type_hints(cls.__init__)
    assert typing.get_origin(hints[argument]) is typing.Literal
    assert typing.get_args(hints[argument]) == tuple(allowed)
    for value in allowed:
        if argument == "prediction_type" and value == "epsilon":
            continue  # the default; constructing it again adds nothing
        assert cls(**{argument: value}).config[argument] == value
