"""The variational bound's terms, parametrisations and variance types; the bits/dim conversions."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from scratch_diffusion.likelihood import (
    BIN_WIDTH_8BIT,
    bits_per_dim,
    check_on_8bit_grid,
    dequantize,
    dequantized_bits_per_dim,
    variational_bound,
)
from scratch_diffusion.likelihood.variational_bound import (
    discretized_gaussian_nll,
    gaussian_nll,
    select_terms,
    vp_chain,
)
from scratch_schedulers import ScratchDDPMScheduler, ScratchFlowMatchScheduler
from scratch_schedulers.oracle import ExactDenoiser, GaussianMixture

MIXTURE = GaussianMixture.example()
SMALL_CHAIN = {"num_train_timesteps": 50, "beta_start": 0.002, "beta_end": 0.3, "clip_sample": False}
# The bounds below are float64 sums of 49 KL terms ‖μ − μ̂‖²/(2σ²): a conversion's rounding δμ̂ ≤ 10·2⁻⁵³/a (a ≥ 0.02 in
# SMALL_CHAIN) enters as |μ − μ̂|·δμ̂/σ² with σ² ≥ β̃_1 ≈ 1e-3: ≤ 49·10·1e3·50·2⁻⁵³ ≈ 3e-9 nats < 1e-8 (BOUND_ATOL).
BOUND_ATOL = 1e-8


def _bound(scheduler, x, model=None, **kwargs):
    model = model or ExactDenoiser(MIXTURE, scheduler)
    return variational_bound(
        model, x, scheduler, decoder="gaussian", generator=torch.Generator().manual_seed(0), **kwargs
    )


def test_every_prediction_type_gives_the_same_bound():
    x = MIXTURE.sample(64, torch.Generator().manual_seed(0))
    totals = [
        _bound(ScratchDDPMScheduler(**SMALL_CHAIN, prediction_type=kind), x).total
        for kind in ("epsilon", "sample", "v_prediction")
    ]
    for total in totals[1:]:
        torch.testing.assert_close(total, totals[0], rtol=0, atol=BOUND_ATOL)


def test_diffusers_scheduler_gives_the_same_bound_as_ours():
    x = MIXTURE.sample(64, torch.Generator().manual_seed(0))
    ours = _bound(ScratchDDPMScheduler(**SMALL_CHAIN, variance_type="fixed_large"), x)
    theirs = _bound(DDPMScheduler(**SMALL_CHAIN, variance_type="fixed_large"), x)
    torch.testing.assert_close(ours.total, theirs.total, rtol=0, atol=BOUND_ATOL)


class _WithVariance:
    """The exact denoiser plus a constant variance channel block (model output of 2·C channels)."""

    def __init__(self, scheduler, value_at):
        self.model, self.value_at = ExactDenoiser(MIXTURE, scheduler), value_at

    def __call__(self, sample, timestep):
        mean = self.model(sample, timestep)
        return torch.cat([mean, torch.full_like(mean, float(self.value_at(int(timestep))))], dim=1)


def test_learned_variance_types_reduce_to_the_fixed_ones():
    x = MIXTURE.sample(64, torch.Generator().manual_seed(0))
    small = ScratchDDPMScheduler(**SMALL_CHAIN, variance_type="fixed_small")
    large = ScratchDDPMScheduler(**SMALL_CHAIN, variance_type="fixed_large")
    fixed_small, fixed_large = _bound(small, x), _bound(large, x)
    learned_range = ScratchDDPMScheduler(**SMALL_CHAIN, variance_type="learned_range")
    low = _bound(learned_range, x, _WithVariance(learned_range, lambda i: -1.0))  # f = 0: log β̃_i
    high = _bound(learned_range, x, _WithVariance(learned_range, lambda i: 1.0))  # f = 1: log β_i
    torch.testing.assert_close(low.total, fixed_small.total, rtol=0, atol=BOUND_ATOL)
    # learned_range's upper end at i = 0 is β_0 where fixed_large's decoder uses β̃_1 (Ho et al.): compare the KL terms
    torch.testing.assert_close(high.diffusion, fixed_large.diffusion, rtol=0, atol=BOUND_ATOL)
    learned = ScratchDDPMScheduler(**SMALL_CHAIN, variance_type="learned")
    betas, alpha_bar = vp_chain(small)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    posterior = betas * (1 - previous) / (1 - alpha_bar)  # β̃_i; the decoder takes β̃_1
    variances = torch.cat([posterior[1:2], posterior[1:]])
    as_small = _bound(learned, x, _WithVariance(learned, lambda i: variances[i]))
    torch.testing.assert_close(as_small.total, fixed_small.total, rtol=0, atol=BOUND_ATOL)


def test_bound_refuses_what_it_cannot_evaluate():
    x = MIXTURE.sample(4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="flow path"):
        _bound(ScratchFlowMatchScheduler(), x)
    learned = ScratchDDPMScheduler(**SMALL_CHAIN, variance_type="learned_range")
    with pytest.raises(ValueError, match=r"needs a model output of shape \(4, 4\)"):
        _bound(learned, x)
    with pytest.raises(ValueError, match="decoder"):
        variational_bound(ExactDenoiser(MIXTURE, learned), x, learned, decoder="logistic")


@pytest.mark.parametrize("sampling", ["uniform", "stratified"])
def test_term_subsets_are_unbiased(sampling):
    """E[w_i·1(i chosen)] = 1 for every term i, so the weighted subset sum is unbiased for Σ_i L_i."""
    generator = torch.Generator().manual_seed(0)
    draws, T, K = 4000, 41, 8
    credit = torch.zeros(T, dtype=torch.float64)
    for _ in range(draws):
        indices, weights = select_terms(T, K, sampling, generator)
        assert len(set(indices.tolist())) == K and int(indices.min()) >= 1 and int(indices.max()) <= T - 1
        credit[indices] += weights
    credit = credit[1:] / draws
    # each term is drawn with p = K/(T − 1) = 0.2 per draw: credit_i has sd √((1 − p)/(p·draws)) ≈ 0.032, and 0.25 is
    # 7.9 sd (max over 40 terms: P < 1e-13); the weights of a draw sum to T − 1 exactly, so the mean credit is 1 up to
    # float64 sums of draws·K weights (≤ 32000·2⁻⁵³ ≈ 4e-12)
    assert float((credit - 1).abs().max()) < 0.25 and abs(float(credit.mean()) - 1) < draws * K * 2.0**-53


def test_subset_bound_matches_the_full_bound_on_average():
    """7 of the 49 KL terms, stratified, averaged over 40 draws of the subset: the full bound within its errors."""
    x = MIXTURE.sample(200, torch.Generator().manual_seed(0))
    scheduler = ScratchDDPMScheduler(**SMALL_CHAIN, variance_type="fixed_large")
    full = _bound(scheduler, x).total
    means = []
    for seed in range(40):
        subset = variational_bound(
            ExactDenoiser(MIXTURE, scheduler), x, scheduler, decoder="gaussian", num_terms=7,
            generator=torch.Generator().manual_seed(100 + seed),
        )  # fmt: skip
        assert subset.diffusion.shape == (200, 7) and float(subset.weights.sum()) == 49
        means.append(float(subset.total.mean()))
    spread = math.hypot(torch.tensor(means).std() / math.sqrt(len(means)), full.std() / math.sqrt(len(full)))
    assert abs(sum(means) / len(means) - float(full.mean())) < 4 * spread, (means, float(full.mean()))  # 4 sd
    assert set(subset.terms_bits_per_dim()) == {"prior", "diffusion", "decoder", "total"}


def test_discretized_decoder_limits():
    """A sharp decoder on the bin centre has mass 1; a wide one ≈ density × bin width; outer bins reach ±∞."""
    x = torch.tensor([[-1.0, 0.0, 1.0]], dtype=torch.float64)
    sharp = discretized_gaussian_nll(x, x, torch.full_like(x, math.log(1e-8)))
    assert float(sharp) < 1e-9  # mass outside the bin 2Φ(−39) ≈ 1e-330: 0 up to float64 rounding of the CDFs
    log_var = torch.full_like(x, math.log(0.25))
    wide = discretized_gaussian_nll(x[:, 1:2], x[:, 1:2] + 0.1, log_var[:, 1:2])
    approx = gaussian_nll(x[:, 1:2], x[:, 1:2] + 0.1, log_var[:, 1:2]) - math.log(BIN_WIDTH_8BIT)
    # midpoint rule over a bin of width Δ = 2/255: relative error Δ²/24·|f''/f| = Δ²/24·|0.1² − 0.25|/0.25² ≈ 1e-5
    assert abs(float(wide - approx)) < 1e-4
    edge = discretized_gaussian_nll(x[:, :1], torch.tensor([[-5.0]], dtype=torch.float64), log_var[:, :1])
    assert float(edge) < 1e-12  # the lowest bin takes all the mass below −1 + 1/255: −log Φ(8) ≈ 6e-16
    far = discretized_gaussian_nll(x[:, 1:2], torch.tensor([[0.9]], dtype=torch.float64), torch.tensor([[-10.0]]))
    assert math.isfinite(float(far)) and float(far) > 100  # deep in the tail, no log(0)


def test_units():
    images = torch.arange(256, dtype=torch.float32).reshape(1, 1, 16, 16) / 127.5 - 1
    y = dequantize(images, torch.Generator().manual_seed(0))
    assert float((y - images).abs().max()) <= BIN_WIDTH_8BIT / 2 and float((y - images).abs().max()) > 0
    # The uniform density on the bins is 1/Δ^D: exactly 0 bits/dim for the discrete data it dequantises.
    D = images.numel()
    assert (
        abs(float(dequantized_bits_per_dim(torch.tensor([D * -math.log(BIN_WIDTH_8BIT)], dtype=torch.float64), D)))
        < 1e-12  # float64: (D·log Δ⁻¹ − D·log Δ⁻¹)/(D·log 2) cancels to ≤ 4·2⁻⁵³·|log Δ|/log 2 ≈ 4e-15
    )
    assert float(bits_per_dim(torch.tensor([D * math.log(2)]), D)) == pytest.approx(1.0)
    assert float(dequantized_bits_per_dim(torch.zeros(1), D)) == pytest.approx(math.log2(127.5))
    torch.testing.assert_close(check_on_8bit_grid(images + 1e-6), images)
    with pytest.raises(ValueError, match="not 8-bit values"):
        check_on_8bit_grid(images + 0.3 * BIN_WIDTH_8BIT)
