"""EDM's stochastic churn (Karras et al., 2022, "Elucidating the Design Space…", Alg. 2) on the flow path.

Alg. 2 raises the noise level of the sample before each step, t̂_i = (1 + γ_i)·t_i with
γ_i = min(S_churn/N, √2 − 1) on S_tmin ≤ t_i ≤ S_tmax, by fresh noise x̂_i = x_i + √(t̂_i² − t_i²)·S_noise·ε
(VE coordinates, t = s = b/a), and then takes the ODE step from t̂_i to t_{i+1}. On the flow path
x = (1 − σ)·x0 + σ·ε the level is s = σ/(1 − σ), so ŝ = (1 + γ)·s is σ̂ = (1 + γ)·σ/(1 + γ·σ) and the raise is
:func:`~.samplers.raise_noise` from (1 − σ, σ) to (1 − σ̂, σ̂). The model is evaluated at σ̂_i, so the
scheduler lists σ̂_i as its timesteps; in a diffusers loop (one ``step`` per model evaluation) step i's
call ends with the raise σ_{i+1} → σ̂_{i+1} of the next step. The first raise would precede the first
evaluation: the initial noise stands for the sample at σ̂_0 (at σ_0 = 1, s = ∞, there is no churn).
Everything here is computed once per schedule, in float64 on the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from .samplers import churn_gamma, raise_noise
from .scheduling_common import Generators, check_step_timesteps


def check_churn(s_churn: object, s_tmin: object, s_tmax: object, s_noise: object, stochastic_sampling: bool) -> None:
    """s_churn ≥ 0, 0 ≤ s_tmin ≤ s_tmax (s_tmax may be inf), 0 < s_noise < inf; churn excludes stochastic_sampling."""

    def number(value: object) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, float, np.number)) and not math.isnan(value)

    if not (number(s_churn) and s_churn >= 0):
        raise ValueError(f"s_churn={s_churn!r} is not allowed; pass a number ≥ 0 (0 = no churn, EDM uses 0–80).")
    if not (number(s_tmin) and number(s_tmax) and 0 <= s_tmin <= s_tmax):
        raise ValueError(
            f"s_tmin={s_tmin!r}, s_tmax={s_tmax!r} are not allowed; pass 0 ≤ s_tmin ≤ s_tmax (s_tmax may be "
            "float('inf')), EDM noise levels s = σ/(1 − σ)."
        )
    if not (number(s_noise) and 0 < s_noise < math.inf):
        raise ValueError(f"s_noise={s_noise!r} is not allowed; pass a finite number > 0 (EDM uses 1.0–1.007).")
    if stochastic_sampling and s_churn > 0:
        raise ValueError(
            f"stochastic_sampling=True and s_churn={s_churn!r} are two different stochastic samplers; choose one "
            "(s_churn=0.0 or stochastic_sampling=False)."
        )


def churned_sigma(sigma: float, gamma: float) -> float:
    """σ̂ of the level ŝ = (1 + γ)·s, s = σ/(1 − σ): σ̂ = (1 + γ)·σ/(1 + γ·σ) (σ itself at γ = 0)."""
    return sigma if gamma == 0 else (1 + gamma) * sigma / (1 + gamma * sigma)


@dataclass(frozen=True)
class ChurnPlan:
    """The churned schedule of n steps.

    Attributes:
        sigmas: σ_0 > … > σ_{n−1} > σ_n = 0 (float64): step i's ODE goes from σ̂_i to σ_{i+1}.
        churned: σ̂_0 … σ̂_{n−1} (float64), the model's levels; σ̂_i = σ_i exactly where γ_i = 0.
        s_noise: S_noise, the scale of the fresh noise.
        timesteps: the Euler loop's timesteps σ̂_i·T (float32 values, as ``scheduler.timesteps`` holds them).
    """

    sigmas: np.ndarray
    churned: np.ndarray
    s_noise: float
    timesteps: tuple[float, ...]

    @classmethod
    def of(cls, sigmas: np.ndarray, config) -> ChurnPlan | None:
        """The plan for the grid ``sigmas`` (σ_0 … σ_{n−1}, 0) and a scheduler ``config`` (its s_churn, s_tmin,
        s_tmax, s_noise, num_train_timesteps); None when no step churns (every γ_i = 0)."""
        n = len(sigmas) - 1
        levels = [sigma / (1 - sigma) if sigma < 1 else math.inf for sigma in sigmas[:-1].tolist()]
        gammas = [churn_gamma(level, n, config.s_churn, config.s_tmin, config.s_tmax) for level in levels]
        if not any(gammas):
            return None
        churned = np.array([churned_sigma(s, g) for s, g in zip(sigmas[:-1].tolist(), gammas, strict=True)])
        timesteps = (torch.from_numpy(churned).to(torch.float32) * config.num_train_timesteps).tolist()
        return cls(sigmas, churned, float(config.s_noise), tuple(timesteps))

    @property
    def num_steps(self) -> int:
        return len(self.churned)

    def loop_sigmas(self, heun: bool) -> torch.Tensor:
        """The model's level at every entry of ``timesteps`` then 0 (float32): σ̂_0 … σ̂_{n−1}, 0 (Euler);
        σ̂_0, σ_1, σ̂_1, σ_2, …, σ_{n−1}, σ̂_{n−1}, 0 (Heun: predictor at σ̂_i, corrector at σ_{i+1})."""
        if not heun:
            levels = [*self.churned.tolist(), 0.0]
        else:
            pairs = zip(self.sigmas[1:-1].tolist(), self.churned[1:].tolist(), strict=True)
            levels = [float(self.churned[0]), *(level for pair in pairs for level in pair), 0.0]
        return torch.tensor(levels, dtype=torch.float64).to(torch.float32)

    def euler_start(self, value: float, num_train_timesteps: int) -> tuple[float, int]:
        """(σ, j) of an Euler step from host timestep ``value``: (σ̂_i, i + 1) at entry i of the schedule (within
        float32 rounding), else (t/T, j) with j the first entry below t (n if none; t in [0, T] is checked)."""
        i = next((k for k, t in enumerate(self.timesteps) if t == value), None)
        if i is None:
            check_step_timesteps(torch.tensor(value), num_train_timesteps, integer=False)
            tolerance = 1e-3 * max(1.0, value)
            i = next((k for k, t in enumerate(self.timesteps) if abs(t - value) <= tolerance), None)
        if i is not None:
            return float(self.churned[i]), i + 1
        j = next((k for k, t in enumerate(self.timesteps) if t < value), self.num_steps)
        return value / num_train_timesteps, j

    def raise_to(self, x: torch.Tensor, j: int, generator: Generators) -> torch.Tensor:
        """x at σ_j raised to σ̂_j (:func:`~.samplers.raise_noise`, noise drawn from ``generator``); x itself
        where γ_j = 0 (nothing drawn) or j = n (the end)."""
        if j >= self.num_steps or self.churned[j] == self.sigmas[j]:
            return x
        sigma, sigma_hat = float(self.sigmas[j]), float(self.churned[j])
        noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return raise_noise(x, 1 - sigma, sigma, 1 - sigma_hat, sigma_hat, noise, self.s_noise)


def per_example_churn_error(timestep: torch.Tensor) -> ValueError:
    """The refusal of one timestep per example with churn on."""
    return ValueError(
        f"s_churn > 0 takes one timestep for the whole batch, got {tuple(timestep.shape)} timesteps: the churn "
        "belongs to a step of the schedule. For one timestep per example use s_churn=0.0."
    )
