"""The control and editing study's inputs and measures (``scratch_diffusion.demo.control_data``): masks, the mean-fill
baseline, the gap closed, corruptions, the low-resolution consistency and the nearest-neighbour copying check."""

from __future__ import annotations

import pytest
import torch

from scratch_diffusion.demo import control_data as data


def test_masks_regenerate_the_named_region():
    left, top, centre = (data.mask_named(name, 3) for name in ("left half", "top half", "centre 6×6"))
    assert left.shape == top.shape == centre.shape == (3, 1, 16, 16)
    assert torch.equal(left[0, 0, :, :8], torch.ones(16, 8)) and left[0, 0, :, 8:].sum() == 0
    assert torch.equal(top[0, 0, :8], torch.ones(8, 16)) and top[0, 0, 8:].sum() == 0
    rows, cols = torch.nonzero(centre[0, 0], as_tuple=True)
    assert len(rows) == 36 and (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 10, 5, 10)
    with pytest.raises(ValueError, match="known: \\['left half', 'top half', 'centre 6×6'\\]"):
        data.mask_named("bottom half", 1)
    with pytest.raises(ValueError, match="side=5"):
        data.centre_square_mask(5)


def test_mean_fill_keeps_the_known_pixels_and_fills_with_their_mean():
    images = torch.linspace(-1, 1, 2 * 256).reshape(2, 1, 16, 16)
    mask = data.mask_named("left half", 2)
    filled = data.mean_filled(images, mask)
    assert torch.equal(filled[..., 8:], images[..., 8:])  # known pixels: multiplied by 1, plus 0 — exact
    for image, fill in zip(images, filled, strict=True):
        # the mean of 128 values in [−1, 1]: float32 summation error ≤ 128·u·max|x| ≈ 8e-6
        assert torch.allclose(fill[..., :8], image[..., 8:].mean().expand(1, 16, 8), atol=1e-5, rtol=0)
    assert data.known_region_error(filled, images, mask) == 0.0
    changed = filled.clone()
    changed[1, 0, 3, 12] += 0.25
    assert data.known_region_error(changed, images, mask) == pytest.approx(0.25)
    changed[0, 0, 3, 2] += 9  # a masked pixel: not part of the known region
    assert data.known_region_error(changed, images, mask) == pytest.approx(0.25)


def test_gap_closed():
    assert data.gap_closed(0.8, 0.5, 0.9) == pytest.approx(0.75)
    assert data.gap_closed(0.5, 0.5, 0.9) == 0 and data.gap_closed(0.9, 0.5, 0.9) == 1
    assert data.gap_closed(0.4, 0.5, 0.9) == pytest.approx(-0.25)  # worse than the mean fill
    assert data.gap_closed(0.7, 0.9, 0.9) is None


def test_held_out_inputs_cycle_the_metric_split():
    split = data.held_out_split()
    inputs = data.held_out_inputs(1000)
    m = len(split.holdout_images)
    assert inputs.images.shape == (1000, 1, 16, 16) and m < 1000
    assert torch.equal(inputs.images[:m], split.holdout_images) and torch.equal(inputs.images[m], inputs.images[0])
    assert torch.equal(inputs.labels, split.holdout_labels[inputs.indices])


def test_gaussian_noise_is_seeded_clipped_and_of_its_sigma():
    zeros = torch.zeros(1000, 1, 16, 16)
    noisy = data.gaussian_noise(zeros, seed=3)
    assert torch.equal(noisy, data.gaussian_noise(zeros, seed=3))
    assert not torch.equal(noisy, data.gaussian_noise(zeros, seed=4))
    assert noisy.min() == -1 and noisy.max() == 1  # σ = 0.5 reaches ±1 (2σ) often: clipped there
    small = data.gaussian_noise(zeros, seed=3, sigma=0.1)  # 10σ from the clip: never clipped
    # 256,000 draws: the sample std's relative standard error is 1/√(2N) ≈ 0.0014; 1 % is seven of them
    assert small.std().item() == pytest.approx(0.1, rel=0.01)


def test_occlusion_sets_one_square_inside_its_region():
    ones = torch.ones(50, 1, 16, 16)
    occluded = data.occlusion(ones, seed=0)
    assert torch.equal(occluded, data.occlusion(ones, seed=0)) and torch.equal(ones, torch.ones_like(ones))
    corners = set()
    for image in occluded[:, 0]:
        rows, cols = torch.nonzero(image == data.OCCLUSION_VALUE, as_tuple=True)
        assert len(rows) == 36 and rows.max() - rows.min() == cols.max() - cols.min() == 5
        assert 2 <= rows.min() <= 8 and 2 <= cols.min() <= 8
        corners.add((int(rows.min()), int(cols.min())))
    assert len(corners) > 10  # positions drawn per image
    assert torch.equal(data.corrupt("occlusion 6×6", ones, 0), occluded)
    with pytest.raises(ValueError, match="corruption 'blur'"):
        data.corrupt("blur", ones, 0)


def test_consistency_is_the_mse_of_4x4_pools_on_the_unit_scale():
    images = torch.rand(4, 1, 16, 16) * 2 - 1
    blocky = upsampled(data.pooled(images)) * 2 - 1  # the low-resolution version, back on [−1, 1]
    # the pool of 16 equal values is that value up to 16 rounding errors of its sum (16·u ≈ 1e-6); squared ≈ 1e-12
    assert data.consistency(blocky, images).max() < 1e-10
    assert torch.equal(data.consistency(images, images), torch.zeros(4))
    shifted = (images + 0.2).clamp(max=1)
    expected = ((data.pooled(shifted) - data.pooled(images)) ** 2).flatten(1).mean(1)
    assert torch.equal(data.consistency(shifted, images), expected)
    assert data.rms_distance(torch.ones(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)).item() == 1.0  # white vs black


def upsampled(pooled: torch.Tensor) -> torch.Tensor:
    return pooled.repeat_interleave(4, dim=-2).repeat_interleave(4, dim=-1)


def test_nearest_distances_and_the_copying_check():
    bank = torch.eye(5).reshape(5, 1, 1, 5)
    assert torch.equal(data.nearest_distances(bank[:2], bank), torch.zeros(2))
    excluded = data.nearest_distances(bank[:2], bank, exclude=torch.tensor([0, -1]))
    assert excluded[0].item() == pytest.approx(2**0.5) and excluded[1] == 0

    split = data.held_out_split()
    copies = data.copying_check(split.train_images[:200])  # a model that returns training digits
    assert copies["median_distance_to_train"] == 0 and copies["closer_than_real_1st_percentile"] == 1
    held = data.copying_check(split.holdout_images, torch.arange(len(split.holdout_images)))  # unseen real digits
    assert held["median_ratio"] == held["real_median_ratio"] < 1  # more training digits (1,258 vs 539): nearer
    # the real digits against their own 1st percentile (linear interpolation between order statistics): at most
    # ⌈0.01·(m − 1)⌉ + 1 of the m lie below it
    m = len(split.holdout_images)
    assert held["closer_than_real_1st_percentile"] <= (-(-0.01 * (m - 1) // 1) + 1) / m
