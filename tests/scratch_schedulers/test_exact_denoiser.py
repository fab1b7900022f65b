"""The exact Gaussian-mixture denoiser, and schedulers checked against it.

"Within sampling noise" (``_outside_noise``): a statistic of the scheduler's samples may exceed
the same statistic of exact samples of the same size (``sampling_noise``: the mean over 16 exact
draws with other seeds) by at most the factor ``C = 3``, plus a small absolute slack for
statistics whose noise floor is itself tiny. Averaging 16 exact draws makes the yardstick stable;
``C = 3`` leaves room for an unlucky draw of the scheduler's own sample (single exact draws reach
about 2.2× the averaged floor) while a systematic error of a few noise floors — e.g. component
spreads 15 % too wide, or a 5-step sampler — fails (see the negative controls below).

Sampler accuracy is measured path by path where that is sharper: deterministic samplers started
from the same noise are compared with a fine solution of the same probability-flow ODE.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
)

from benchmarks.bench_exact_denoiser import default_factories, format_table, main
from scratch_schedulers import (
    ScratchDDIMScheduler,
    ScratchDDPMScheduler,
    ScratchFlowMatchScheduler,
    parametrization_of,
    signal_noise_at,
)
from scratch_schedulers.noise_path import PREDICTION_TYPES, PREDICTION_TYPES_BY_PATH
from scratch_schedulers.oracle import (
    ExactDenoiser,
    GaussianMixture,
    error_table,
    mixture_error,
    sample_with,
    sampling_noise,
)
from scratch_schedulers.oracle.denoiser import _prediction_type, path_coefficients

pytestmark = pytest.mark.numerics  # rerun by make test under ATEN_CPU_CAPABILITY=default

N_SAMPLES = 4000  # distribution tests


def independent_path_coefficients(scheduler, timestep: float | torch.Tensor) -> tuple[float, float]:
    """(a_t, b_t) written apart from the core: VP (has ``alphas_cumprod``) interpolates σ = √((1 − ᾱ)/ᾱ)
    linearly at a fractional t, as Euler/Heun schedulers do; flow σ = t/T, a = 1 − σ, b = σ."""
    t = float(timestep)
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is not None:
        acp = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        lo = min(max(math.floor(t), 0), len(acp) - 1)
        hi = min(lo + 1, len(acp) - 1)
        sigma = ((1.0 - acp[[lo, hi]]) / acp[[lo, hi]]).sqrt()
        frac = t - lo
        sig = float(sigma[0]) if frac == 0 else float((1.0 - frac) * sigma[0] + frac * sigma[1])
        alpha_bar = 1.0 / (1.0 + sig * sig)
        return math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    sigma = t / scheduler.config.num_train_timesteps
    return 1.0 - sigma, sigma
N_PATHS = 1000  # path-wise (deterministic ODE) tests
C = 3.0
# About one standard deviation of each statistic over exact draws of N_SAMPLES (0.007, 0.004, 0.010, 0.023 over 40
# draws): C·floor + SLACK then sits ≥ 5 sd above the exact-sample mean for every statistic (these are maxima over
# components, heavier-tailed than a Gaussian: the largest of 40 exact draws reached 4.1 sd), while the negative
# controls below exceed it by ≥ 7 sd (5 steps) and 15 sd (15 % wide spreads, std_error).
SLACK = {"sliced_wasserstein": 0.005, "weight_error": 0.005, "std_error": 0.01, "mean_error": 0.02}

Factory = Callable[[], Any]
DDPM: dict[str, Factory] = {
    "diffusers": lambda: DDPMScheduler(clip_sample=False),
    "ours": lambda: ScratchDDPMScheduler(clip_sample=False),
}
DDIM: dict[str, Factory] = {
    "diffusers": lambda: DDIMScheduler(clip_sample=False),
    "ours": lambda: ScratchDDIMScheduler(clip_sample=False),
}
FLOW_EULER: dict[str, Factory] = {
    "diffusers": FlowMatchEulerDiscreteScheduler,
    "ours": ScratchFlowMatchScheduler,
}
IMPLEMENTATIONS = ("diffusers", "ours")


@pytest.fixture(scope="module")
def mixture() -> GaussianMixture:
    return GaussianMixture.example()


@pytest.fixture(scope="module")
def floor(mixture: GaussianMixture) -> dict[str, float]:
    return sampling_noise(mixture, N_SAMPLES, repeats=16, seed=2024)


@pytest.fixture(scope="module")
def noise() -> torch.Tensor:
    """Initial noise of the path-wise tests (only its first ``N_PATHS`` rows where paths are compared)."""
    return torch.randn(N_SAMPLES, 2, generator=torch.Generator().manual_seed(7))


def _flow_ode_reference(mixture: GaussianMixture, noise: torch.Tensor, n_steps: int = 200) -> torch.Tensor:
    """Classical RK4 on dx/dσ = E[ε − x0 | x_σ] from σ = 1 to 0, in float64, using no scheduler.

    200 steps agree with 400 steps to ~1e-8 on the example mixture, far below any sampler's error.
    """
    x = noise.to(torch.float64)
    sigmas = torch.linspace(1.0, 0.0, n_steps + 1, dtype=torch.float64).tolist()

    def u(x: torch.Tensor, s: float) -> torch.Tensor:
        return mixture.model_output(x, 1.0 - s, s, "flow_velocity")

    for s, s_next in itertools.pairwise(sigmas):
        h = s_next - s
        k1 = u(x, s)
        k2 = u(x + 0.5 * h * k1, s + 0.5 * h)
        k3 = u(x + 0.5 * h * k2, s + 0.5 * h)
        k4 = u(x + h * k3, s_next)
        x = x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


@pytest.fixture(scope="module")
def flow_reference(mixture: GaussianMixture, noise: torch.Tensor) -> torch.Tensor:
    return _flow_ode_reference(mixture, noise[:N_PATHS])


def _path_error(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean distance of the first ``len(reference)`` samples to the reference solution."""
    diff = samples[: len(reference)].to(torch.float64) - reference.to(torch.float64)
    return float(diff.norm(dim=1).mean())


def _outside_noise(err: dict[str, float], floor: dict[str, float]) -> list[str]:
    """Statistics of ``err`` above ``C × floor + slack``, each with its numbers."""
    return [
        f"{key}={err[key]:.4g} > {C}×{floor[key]:.4g}+{SLACK[key]}"
        for key in SLACK
        if not err[key] <= C * floor[key] + SLACK[key]
    ]


# --- the denoiser itself --------------------------------------------------------------------


def test_without_noise_the_denoiser_returns_its_input(mixture: GaussianMixture) -> None:
    x = 2.0 * torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # float64: ≤ 20 operations on values ≤ 10 (|x| ≤ 8, means, responsibilities ≤ 1): ≤ 20·10·2⁻⁵³ ≈ 2e-14 < 1e-12
    torch.testing.assert_close(mixture.denoise(x, 1.0, 0.0), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(mixture.denoise(x, 2.0, 0.0), x / 2, rtol=0, atol=1e-12)
    torch.testing.assert_close(mixture.model_output(x, 1.0, 0.0, "epsilon"), torch.zeros_like(x))


def test_from_pure_noise_the_denoiser_returns_the_mixture_mean(mixture: GaussianMixture) -> None:
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = (mixture.weights[:, None] * mixture.means).sum(0).expand_as(x)  # 1e-12 as above (float64, ≤ 20 ops)
    torch.testing.assert_close(mixture.denoise(x, 0.0, 1.0), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(mixture.model_output(x, 0.0, 1.0, "epsilon"), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(mixture.model_output(x, 0.0, 1.0, "flow_velocity"), x - expected)


@pytest.mark.parametrize(("a", "b"), [(1.0, 1e-12), (1e-12, 1.0), (1.0 - 1e-9, 1e-9), (1e-6, 1e-6)])
def test_no_nan_near_the_ends_of_the_path(mixture: GaussianMixture, a: float, b: float) -> None:
    x = 3.0 * torch.randn(200, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for kind in PREDICTION_TYPES:
        assert torch.isfinite(mixture.model_output(x, a, b, kind)).all(), (kind, a, b)
    # the limits are approached to first order: at b = 1e-12 the posterior mean is x/a − O(b²/s²) ≈ 1e-24 off,
    # at a = 1e-12 the mean + O(a·|x|/s²) ≈ 1e-11; float64 rounding of |x/a| ≤ 10 adds ≤ 2e-15. 1e-6 also covers
    # (1 − 1e-9, 1e-9), b²/s² ≈ 1e-16; a wrong limit is off by O(1)
    if b < 1e-8:
        torch.testing.assert_close(mixture.denoise(x, a, b), x / a, rtol=1e-6, atol=1e-6)
    if a < 1e-8:
        torch.testing.assert_close(mixture.denoise(x, a, b), mixture.mean.expand_as(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("a", "b"), [(0.8, 0.6), (0.3, math.sqrt(1 - 0.09))])
def test_posterior_mean_matches_monte_carlo(mixture: GaussianMixture, a: float, b: float) -> None:
    """Self-normalised importance sampling of E[x0 | x_t] with the prior as proposal.

    The point sits between two components so that both responsibilities matter; the tolerance
    is 5 Monte-Carlo standard errors, estimated from the same weights.
    """
    x_t = a * 0.5 * (mixture.means[0] + mixture.means[1]) + torch.tensor([0.1, -0.2], dtype=torch.float64)
    x0 = mixture.sample(400_000, torch.Generator().manual_seed(3))
    log_w = -0.5 * (x_t - a * x0).square().sum(1) / b**2
    w = torch.softmax(log_w, dim=0)
    estimate = (w[:, None] * x0).sum(0)
    standard_error = (w[:, None] ** 2 * (x0 - estimate) ** 2).sum(0).sqrt()
    exact = mixture.denoise(x_t[None], a, b)[0]
    # 5 standard errors (two-sided P ≈ 6e-7 per coordinate); + 1e-9 for float64 sums of 400 000 weights (4e5·2⁻⁵³)
    assert ((exact - estimate).abs() <= 5 * standard_error + 1e-9).all(), (exact, estimate, standard_error)
    r = mixture.responsibilities(x_t[None], a, b)[0]
    assert int((r > 0.05).sum()) >= 2, f"the test point should see two components, r={r}"
    member = (mixture.responsibilities(x0, 1.0, 0.0).argmax(1)[:, None] == torch.arange(len(r))).double()
    r_mc = (w[:, None] * member).sum(0)
    r_standard_error = (w[:, None] ** 2 * (member - r_mc) ** 2).sum(0).sqrt()
    # + 1e-3: assigning prior draws to components by nearest component is exact up to ~1e-4
    assert ((r - r_mc).abs() <= 5 * r_standard_error + 1e-3).all(), (r, r_mc, r_standard_error)


def test_model_outputs_are_consistent_parametrisations(mixture: GaussianMixture) -> None:
    x_t = 2.0 * torch.randn(100, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    # float64 conversions with 1/a, 1/b ≤ 1.6 and 1/σ ≤ 3: ≤ 10 ops on |x| ≤ 8 → ≤ 3e-14, inside the float64 defaults
    a, b = math.cos(0.7), math.sin(0.7)  # VP: a² + b² = 1
    x0 = mixture.model_output(x_t, a, b, "sample")
    eps = mixture.model_output(x_t, a, b, "epsilon")
    v = mixture.model_output(x_t, a, b, "v_prediction")
    torch.testing.assert_close(a * x0 + b * eps, x_t)
    torch.testing.assert_close(a * x_t - b * v, x0)  # diffusers' v → x̂0 conversion
    torch.testing.assert_close(b * x_t + a * v, eps)
    sigma = 0.35  # flow: a = 1 − σ, b = σ
    u = mixture.model_output(x_t, 1 - sigma, sigma, "flow_velocity")
    torch.testing.assert_close(x_t - sigma * u, mixture.denoise(x_t, 1 - sigma, sigma))


def test_bad_input_is_refused(mixture: GaussianMixture) -> None:
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="prediction_type"):
        mixture.model_output(x, 0.5, 0.5, "score")
    with pytest.raises(ValueError, match="both be zero"):
        mixture.denoise(x, 0.0, 0.0)
    with pytest.raises(ValueError, match="last dimension"):
        mixture.denoise(torch.zeros(3, 5), 0.5, 0.5)
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture(torch.tensor([0.5, 0.6]), torch.zeros(2, 2), torch.ones(2))
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture(torch.tensor([0.5, 0.5]), torch.zeros(2, 2), torch.tensor([1.0, 0.0]))


# --- timestep → (a_t, b_t) and the expected output ----------------------------------------


@pytest.mark.parametrize(
    "factory",
    [
        DDPMScheduler,
        ScratchDDPMScheduler,
        lambda: DDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing"),
        lambda: ScratchDDIMScheduler(prediction_type="sample", beta_schedule="squaredcos_cap_v2"),
        FlowMatchEulerDiscreteScheduler,
        lambda: ScratchFlowMatchScheduler(shift=3.0),
        lambda: ScratchFlowMatchScheduler(solver="heun"),
        lambda: EulerDiscreteScheduler(timestep_spacing="linspace"),  # fractional timesteps: interpolated levels
    ],
)
def test_path_coefficients_agree_with_the_core(factory: Factory) -> None:
    """An independent timestep → (a, b) mapping equals the core's one look-up, which the harness uses."""
    scheduler = factory()
    scheduler.set_timesteps(10)
    assert _prediction_type(scheduler) == parametrization_of(scheduler).prediction_type
    for t in scheduler.timesteps:
        a, b = independent_path_coefficients(scheduler, t)
        a_core, b_core = signal_noise_at(scheduler, t)
        assert (float(a_core), float(b_core)) == path_coefficients(scheduler, t)
        # float32 ᾱ or σ, √ taken in float64 by one side and float32 by the other: ≤ 1 ulp of a, b ≤ 1 (6e-8)
        assert a == pytest.approx(float(a_core), abs=1e-7) and b == pytest.approx(float(b_core), abs=1e-7)
        if parametrization_of(scheduler).path == "vp":
            assert a * a + b * b == pytest.approx(1.0)
        else:
            assert a + b == pytest.approx(1.0)


def test_exact_denoiser_counts_model_evaluations(mixture: GaussianMixture) -> None:
    scheduler = ScratchFlowMatchScheduler(solver="heun")
    samples, nfe = sample_with(scheduler, mixture, 5, n_samples=10)
    assert nfe == 2 * 5 - 1 and samples.shape == (10, 2)
    model = ExactDenoiser(mixture, DDIMScheduler(prediction_type="v_prediction"))
    assert model.prediction_type == "v_prediction" and model.nfe == 0
    model(torch.zeros(4, 2), torch.tensor(500))
    assert model.nfe == 1


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_ddim_is_parametrisation_invariant_with_an_exact_model(
    mixture: GaussianMixture, noise: torch.Tensor, impl: str
) -> None:
    """Deterministic DDIM is a function of (x̂0, ε̂) only, so every exact parametrisation gives the same path.

    This checks the denoiser's epsilon / sample / v outputs against each scheduler's own inversions.
    """
    factory = {"diffusers": DDIMScheduler, "ours": ScratchDDIMScheduler}[impl]
    runs = {
        kind: sample_with(
            factory(clip_sample=False, prediction_type=kind), mixture, 20, N_PATHS, noise=noise[:N_PATHS]
        )[0]
        for kind in PREDICTION_TYPES_BY_PATH["vp"]
    }
    # float32 DDIM, 20 steps: each parametrisation's x̂0 (ε̂: (x − b·ε̂)/a, v̂: a·x − b·v̂) rounds by ≤ γ_4·(|x| + b·|ε̂|)/a
    # with |x| + b·|ε̂| ≤ 8, and the step weighs it by a_next: Σ_k γ_4·8·a_{k+1}/a_k = 4u·8·25.4 ≈ 5e-5 on this grid
    # (a_{k+1}/a_k from 1.6 down to 1), carried by steps whose exact flow is ~1-Lipschitz: ≤ 1e-4. A wrong
    # conversion moves samples by ≥ 1e-2.
    torch.testing.assert_close(runs["sample"], runs["epsilon"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(runs["v_prediction"], runs["epsilon"], rtol=1e-4, atol=1e-4)


# --- 1. the standard settings reproduce the mixture ------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(("sampler", "steps"), [("ddpm", 1000), ("ddim", 100), ("flow_euler", 100)])
def test_sampler_reproduces_the_mixture(
    mixture: GaussianMixture, floor: dict[str, float], impl: str, sampler: str, steps: int
) -> None:
    factory = {"ddpm": DDPM, "ddim": DDIM, "flow_euler": FLOW_EULER}[sampler][impl]
    samples, nfe = sample_with(factory(), mixture, steps, N_SAMPLES, seed=0)
    assert nfe == steps
    err = mixture_error(samples, mixture)
    assert not _outside_noise(err, floor), (_outside_noise(err, floor), err, floor)


def test_the_criterion_rejects_wrong_samples(mixture: GaussianMixture, floor: dict[str, float]) -> None:
    """Negative controls: the same criterion fails a 5-step sampler and a model with 15 % too wide spreads."""
    coarse, _ = sample_with(DDIM["ours"](), mixture, 5, N_SAMPLES, seed=0)
    assert _outside_noise(mixture_error(coarse, mixture), floor)
    wrong = GaussianMixture(mixture.weights, mixture.means, 1.15 * mixture.stds)
    x, _ = sample_with(FLOW_EULER["ours"](), wrong, 100, N_SAMPLES, seed=0)  # a model of the wrong data
    failing = _outside_noise(mixture_error(x, mixture), floor)
    assert any(item.startswith("std_error") for item in failing), failing


# --- 2. more steps, less error -----------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("sampler", ["ddim", "flow_euler"])
def test_error_falls_as_steps_grow(
    mixture: GaussianMixture,
    noise: torch.Tensor,
    flow_reference: torch.Tensor,
    impl: str,
    sampler: str,
) -> None:
    """Deterministic samplers, fixed seed: both the distance to the mixture and the distance to a
    fine ODE solution from the same noise fall strictly from 2 to 5 to 20 to 100 steps."""
    factory = {"ddim": DDIM, "flow_euler": FLOW_EULER}[sampler][impl]
    if sampler == "ddim":  # DDIM's own 1000-step path (step size 1) stands in for the VP ODE solution
        reference = sample_with(factory(), mixture, 1000, N_PATHS, noise=noise[:N_PATHS])[0]
    else:
        reference = flow_reference
    sliced, path = [], []
    for steps in (2, 5, 20, 100):
        samples = sample_with(factory(), mixture, steps, N_SAMPLES, noise=noise)[0]
        sliced.append(mixture_error(samples, mixture)["sliced_wasserstein"])
        path.append(_path_error(samples, reference))
    assert all(x > y for x, y in itertools.pairwise(sliced)), sliced
    assert all(x > y for x, y in itertools.pairwise(path)), path


# --- 3. the error-versus-NFE table ---------------------------------------------------------------


def test_error_table_lists_every_scheduler_and_step_count(mixture: GaussianMixture) -> None:
    factories = {"ddim (ours)": DDIM["ours"], "heun (ours)": lambda: ScratchFlowMatchScheduler(solver="heun")}
    rows = error_table(factories, [2, 4], mixture=mixture, n_samples=300, seed=1)
    assert [(r["scheduler"], r["steps"], r["nfe"]) for r in rows] == [
        ("exact samples (noise floor)", None, 0),
        ("ddim (ours)", 2, 2),
        ("ddim (ours)", 4, 4),
        ("heun (ours)", 2, 3),
        ("heun (ours)", 4, 7),
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].startswith("| scheduler | steps | NFE | sliced W1 |")
    assert len(lines) == 2 + len(rows)
    for row, line in zip(rows[1:], lines[3:]):
        assert line.startswith(f"| {row['scheduler']} | {row['steps']} | {row['nfe']} | ")
        assert f"{row['sliced_wasserstein']:.4g}" in line


def test_benchmark_entry_point_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--steps", "2", "--n-samples", "200"])
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    names = list(default_factories())
    assert {"diffusers DDPMScheduler", "diffusers DDIMScheduler", "ScratchFlowMatchScheduler (heun)"} <= set(names)
    assert len(table) == 2 + 1 + len(names)  # header, separator, noise floor, one row per scheduler
    for name, line in zip(names, table[3:]):
        assert line.startswith(f"| {name} | 2 | ")


# --- 4. second order pays off ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "heun",
    [lambda: ScratchFlowMatchScheduler(solver="heun"), FlowMatchHeunDiscreteScheduler],
    ids=["ours", "diffusers"],
)
def test_heun_beats_euler_at_equal_model_evaluations(
    mixture: GaussianMixture, noise: torch.Tensor, flow_reference: torch.Tensor, heun: Factory
) -> None:
    """Heun with 20 steps (39 evaluations) lands closer to the exact ODE solution than Euler with 40."""
    heun_samples, heun_nfe = sample_with(heun(), mixture, 20, N_PATHS, noise=noise[:N_PATHS])
    euler_samples, euler_nfe = sample_with(ScratchFlowMatchScheduler(), mixture, 40, N_PATHS, noise=noise[:N_PATHS])
    assert (heun_nfe, euler_nfe) == (39, 40)
    heun_error = _path_error(heun_samples, flow_reference)
    euler_error = _path_error(euler_samples, flow_reference)
    assert heun_error <= euler_error, (heun_error, euler_error)
