"""The variational bound of a discrete VP diffusion model (Ho et al., 2020, Eq. 5), per term, in nats.

For data x0 and the chain of T steps (diffusers' indices i = 0 … T−1; Ho et al.'s t = i + 1),

    −log p(x0) ≤ L_T + Σ_{i=1}^{T−1} L_i + L_0,
    L_T = KL(q(x_{T−1} | x0) ‖ N(0, I)),
    L_i = E_q KL(q(x_{i−1} | x_i, x0) ‖ p(x_{i−1} | x_i))     (Ho et al.'s L_{t−1}),
    L_0 = E_q [−log p(x0 | x_0)]                              (the decoder at the first noise level),

with x_i = √ᾱ_i x0 + √(1 − ᾱ_i) ε. The posterior q(x_{i−1} | x_i, x0) = N(μ̃_i, β̃_i I) (Eq. 7) and the
model p(x_{i−1} | x_i) = N(μ̃_i(x̂0, x_i), σ_i² I), x̂0 read from the model output by its prediction type
(``epsilon``, ``sample``, ``v_prediction``; clipped to ±``clip_sample_range`` where the scheduler's
config clips, as its sampler does), and σ_i² by ``variance_type``:

* ``fixed_small`` → β̃_i, ``fixed_large`` → β_i (the ``*_log`` aliases alike);
* ``learned`` → the model's variance channels, read as the variance itself (as this project's and
  diffusers' DDPM samplers read them);
* ``learned_range`` → exp(f·log β_i + (1 − f)·log β̃_i), f = (v + 1)/2 (Nichol & Dhariwal, 2021, Eq. 15).

Learned types need a model output of 2·C channels (mean part first). At i = 0 β̃_0 = 0, so the decoder
variance follows Ho et al.'s code: β̃_1 (``first_step_variance="posterior_clipped"``, also the lower end
of ``learned_range``), or β_0 (``"beta"``, the variance the DDPM sampler draws its last step with under
``fixed_large``; right for continuous data smooth at the scale √β_0).

The decoder is Ho et al.'s Eq. 13 for 8-bit data in [−1, 1] (``decoder="discretized"``: the Gaussian's
mass over the bin [x − 1/255, x + 1/255], the outer bins extended to ±∞), so the total bounds −log P(x)
of the discrete data; ``decoder="gaussian"`` uses the density N(x0; μ, σ²) for continuous data.

**Monte Carlo.** Each term is estimated with one draw of x_i per example. ``num_terms=K`` evaluates K
of the T − 1 KL terms: ``"uniform"`` draws K distinct indices and weights each by (T − 1)/K,
``"stratified"`` draws one index in each of K contiguous strata and weights it by its stratum's size;
both are unbiased for Σ L_i. L_T is exact and L_0 is always evaluated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from scratch_schedulers.model_fn import ModelFn
from scratch_schedulers.noise_path import parametrization_of, split_prediction
from scratch_schedulers.scheduling_ddpm import VARIANCE_TYPES
from scratch_schedulers.validation import check_choice

from .units import BIN_WIDTH_8BIT, nats_to_bits_per_dim

DECODERS = ("discretized", "gaussian")
TERM_SAMPLINGS = ("uniform", "stratified")
FIRST_STEP_VARIANCES = ("posterior_clipped", "beta")


@dataclass(frozen=True)
class BoundTerms:
    """Per-example terms of the variational bound in nats (see the module docstring).

    Attributes:
        prior: L_T, shape (B,).
        diffusion: the evaluated KL terms L_i, shape (B, K), at ``timesteps``.
        timesteps: the indices i ∈ [1, T − 1] of the evaluated terms, shape (K,).
        weights: importance weight of each evaluated term, shape (K,) (all 1 for every term).
        decoder: L_0, shape (B,).
        num_dims: D = values per example, for bits/dim.
    """

    prior: torch.Tensor
    diffusion: torch.Tensor
    timesteps: torch.Tensor
    weights: torch.Tensor
    decoder: torch.Tensor
    num_dims: int

    @property
    def total(self) -> torch.Tensor:
        """The bound on −log p(x0) per example, nats: L_T + Σ_i w_i L_i + L_0."""
        return self.prior + self.diffusion @ self.weights + self.decoder

    @property
    def bits_per_dim(self) -> torch.Tensor:
        """The total per example in bits/dim."""
        return nats_to_bits_per_dim(self.total, self.num_dims)

    def terms_bits_per_dim(self) -> dict[str, float]:
        """Mean over examples of each part, in bits/dim: prior L_T, the weighted Σ L_i, decoder L_0, total."""
        parts = {"prior": self.prior, "diffusion": self.diffusion @ self.weights, "decoder": self.decoder}
        parts["total"] = self.total
        return {name: float(nats_to_bits_per_dim(value, self.num_dims).mean()) for name, value in parts.items()}


def vp_chain(scheduler: object) -> tuple[torch.Tensor, torch.Tensor]:
    """(β_i, ᾱ_i) for i = 0 … T−1 of a VP scheduler (ours or diffusers'), float64, from its ``alphas_cumprod``."""
    if parametrization_of(scheduler).path != "vp":
        raise ValueError(
            f"the variational bound needs a discrete VP scheduler (with alphas_cumprod); {type(scheduler).__name__} "
            "samples the flow path. Evaluate a flow model through a VP scheduler (pipeline_model(..., scheduler=...))."
        )
    alpha_bar = torch.as_tensor(scheduler.alphas_cumprod).detach().cpu().to(torch.float64)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    return 1 - alpha_bar / previous, alpha_bar


def select_terms(
    num_train_timesteps: int, num_terms: int | None, sampling: str, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, weights) of the KL terms to evaluate among i = 1 … T−1 (module docstring, Monte Carlo)."""
    count = num_train_timesteps - 1
    if num_terms is None or num_terms >= count:
        return torch.arange(1, num_train_timesteps), torch.ones(count, dtype=torch.float64)
    check_choice("term_sampling", sampling, TERM_SAMPLINGS)
    if num_terms < 1:
        raise ValueError(f"num_terms={num_terms}; it must be ≥ 1 (or None for all {count} terms).")
    if sampling == "uniform":
        chosen = torch.randperm(count, generator=generator)[:num_terms].sort().values + 1
        return chosen, torch.full((num_terms,), count / num_terms, dtype=torch.float64)
    edges = torch.linspace(0, count, num_terms + 1, dtype=torch.float64).round().long()
    sizes = edges[1:] - edges[:-1]
    offsets = (torch.rand(num_terms, generator=generator, dtype=torch.float64) * sizes).long()
    return edges[:-1] + offsets + 1, sizes.to(torch.float64)


def gaussian_kl(mean_q: torch.Tensor, var_q: torch.Tensor, mean_p: torch.Tensor, var_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_q, var_q) ‖ N(mean_p, var_p)) summed over all but the first axis (diagonal Gaussians)."""
    kl = 0.5 * (torch.log(var_p) - torch.log(var_q) + (var_q + (mean_q - mean_p) ** 2) / var_p - 1)
    return kl.flatten(1).sum(1)


def _log_mass_between(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Φ(upper) − Φ(lower)) for lower < upper, accurate in both tails (mirrored where lower > 0)."""
    mirror = lower > 0
    lo, hi = torch.where(mirror, -upper, lower), torch.where(mirror, -lower, upper)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi))


def discretized_gaussian_nll(x0: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """−log P(x0) of Ho et al.'s Eq. 13 decoder (bins of width 2/255, outer bins to ±∞), nats per example."""
    inv_std = torch.exp(-0.5 * log_var)
    half = BIN_WIDTH_8BIT / 2
    upper, lower = (x0 + half - mean) * inv_std, (x0 - half - mean) * inv_std
    log_mass = _log_mass_between(lower, upper)
    log_mass = torch.where(x0 < -1 + half, torch.special.log_ndtr(upper), log_mass)
    log_mass = torch.where(x0 > 1 - half, torch.special.log_ndtr(-lower), log_mass)
    return -log_mass.flatten(1).sum(1)


def gaussian_nll(x0: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """−log N(x0; mean, exp(log_var)) summed over all but the first axis (the continuous decoder)."""
    return (0.5 * ((x0 - mean) ** 2 * torch.exp(-log_var) + log_var + math.log(2 * math.pi))).flatten(1).sum(1)


class _ReverseModel:
    """The model's reverse kernel p(x_{i−1} | x_i) = N(μ_i, σ_i²) of a VP scheduler (module docstring)."""

    def __init__(self, model: ModelFn, scheduler: object, variance_type: str, first_step_variance: str) -> None:
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        check_choice("first_step_variance", first_step_variance, FIRST_STEP_VARIANCES)
        self.model, self.variance_type = model, variance_type.removesuffix("_log")
        self.prediction_type = parametrization_of(scheduler).prediction_type
        config = getattr(scheduler, "config", {})
        self.clip_range = float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample", False) else None
        self.betas, self.alpha_bar = vp_chain(scheduler)
        self.previous = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        posterior_var = (1 - self.previous) * self.betas / (1 - self.alpha_bar)
        first = posterior_var[1] if first_step_variance == "posterior_clipped" else self.betas[0]
        self.posterior_var = posterior_var  # β̃_i, 0 at i = 0
        self.fixed_small = torch.cat([first.reshape(1), posterior_var[1:]])  # β̃_i with the decoder's variance at 0
        self.fixed_large = torch.cat([first.reshape(1), self.betas[1:]])

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, i: int) -> torch.Tensor:
        """μ̃_i(x0, x_i) of Eq. 7 (with ᾱ_{−1} = 1, μ̃_0 = x0)."""
        coef_x0 = self.previous[i].sqrt() * self.betas[i] / (1 - self.alpha_bar[i])
        coef_xt = (1 - self.betas[i]).sqrt() * (1 - self.previous[i]) / (1 - self.alpha_bar[i])
        return coef_x0 * x0 + coef_xt * x_t

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ_i, log σ_i²) at x_i in float64 (log σ_i² a 0-d tensor for the fixed types)."""
        output = self.model(x_t, i)
        learned = self.variance_type in ("learned", "learned_range")
        channels = x_t.shape[1]
        if output.shape[1] != (2 * channels if learned else channels) or output.shape[2:] != x_t.shape[2:]:
            raise ValueError(
                f"variance_type={self.variance_type!r} needs a model output of shape "
                f"{(x_t.shape[0], (2 if learned else 1) * channels, *x_t.shape[2:])}, got {tuple(output.shape)}."
            )
        output = output.to(torch.float64)
        if learned:
            output, variance = output.split(channels, dim=1)
        x = x_t.to(torch.float64)
        a, b = self.alpha_bar[i].sqrt(), (1 - self.alpha_bar[i]).sqrt()
        x0, _ = split_prediction(output, x, a, b, self.prediction_type)
        if self.clip_range is not None:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        mean = self.posterior(x0, x, i)
        if self.variance_type == "fixed_small":  # 0-d host scalars broadcast against tensors on any device
            return mean, self.fixed_small[i].log()
        if self.variance_type == "fixed_large":
            return mean, self.fixed_large[i].log()
        if self.variance_type == "learned":
            return mean, variance.clamp_min(1e-20).log()
        fraction = (variance + 1) / 2
        return mean, fraction * self.betas[i].log() + (1 - fraction) * self.fixed_small[i].log()


def variational_bound(
    model: ModelFn,
    data: torch.Tensor,
    scheduler: object,
    *,
    variance_type: str | None = None,
    decoder: Literal["discretized", "gaussian"] = "discretized",
    num_terms: int | None = None,
    term_sampling: Literal["uniform", "stratified"] = "stratified",
    first_step_variance: Literal["posterior_clipped", "beta"] = "posterior_clipped",
    generator: torch.Generator | None = None,
) -> BoundTerms:
    """The variational bound (Ho et al., 2020, Eq. 5) of ``model`` on ``data`` per example, in nats.

    Args:
        model: ``(sample, timestep) -> model_output`` in ``scheduler``'s parametrisation (an integer
            timestep i for the whole batch), e.g. ``ExactDenoiser(mixture, scheduler)`` or :func:`pipeline_model`.
        data: Examples x0, shape (B, C, …) (or (B, d)); 8-bit values in [−1, 1] for the discretised decoder.
        scheduler: A discrete VP scheduler (ours or diffusers' DDPM/DDIM…): ᾱ, prediction type, clipping.
        variance_type: σ_i² (module docstring); default the scheduler's ``variance_type`` (``fixed_small``
            where it has none, e.g. DDIM).
        decoder: ``discretized`` (8-bit data) or ``gaussian`` (continuous data).
        num_terms, term_sampling: evaluate a subset of the KL terms, importance weighted (module docstring).
        first_step_variance: decoder variance of the fixed types, ``posterior_clipped`` (β̃_1) or ``beta`` (β_0).
        generator: Seeds the noise draws and the subset (CPU generator).
    """
    check_choice("decoder", decoder, DECODERS)
    variance_type = variance_type or getattr(scheduler, "config", {}).get("variance_type", "fixed_small")
    reverse = _ReverseModel(model, scheduler, variance_type, first_step_variance)
    x0 = torch.as_tensor(data)
    x0_64 = x0.to(torch.float64)
    T = len(reverse.alpha_bar)
    timesteps, weights = select_terms(T, num_terms, term_sampling, generator)

    def noisy(i: int) -> torch.Tensor:
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(x0.device)
        return (reverse.alpha_bar[i].sqrt() * x0_64 + (1 - reverse.alpha_bar[i]).sqrt() * noise).to(x0.dtype)

    a_T2, b_T2 = reverse.alpha_bar[-1], 1 - reverse.alpha_bar[-1]
    prior = (0.5 * (a_T2 * x0_64**2 + b_T2 - 1 - b_T2.log())).flatten(1).sum(1)
    terms = []
    for i in timesteps.tolist():
        x_t = noisy(i)
        mean, log_var = reverse(x_t, i)
        true_mean = reverse.posterior(x0_64, x_t.to(torch.float64), i)
        terms.append(gaussian_kl(true_mean, reverse.posterior_var[i], mean, log_var.exp()))
    mean, log_var = reverse(noisy(0), 0)
    nll = discretized_gaussian_nll if decoder == "discretized" else gaussian_nll
    diffusion = torch.stack(terms, dim=1) if terms else torch.zeros(len(x0), 0, dtype=torch.float64)
    return BoundTerms(prior, diffusion, timesteps, weights, nll(x0_64, mean, log_var), x0[0].numel())
