"""scratch_diffusion.control.transforms: the built-in control images, exact values on hand-made images.

Every expected value is computed by hand (or by a plain loop over the definition) on images of small integers,
where each float32 operation before the last square root and division is exact.
"""

from __future__ import annotations

import pytest
import torch

from scratch_diffusion.control.transforms import (
    CONTROL_TRANSFORMS,
    control_transform,
    edge_map,
    low_resolution,
)


def test_low_resolution_is_the_block_mean_repeated():
    image = torch.tensor(
        [[0.0, 1.0, 0.0, 0.0],
         [1.0, 0.0, 0.0, 0.0],
         [0.0, 0.0, 1.0, 1.0],
         [0.0, 0.25, 1.0, 1.0]]
    )[None, None]  # fmt: skip
    expected = torch.tensor(
        [[0.5, 0.5, 0.0, 0.0],
         [0.5, 0.5, 0.0, 0.0],
         [0.0625, 0.0625, 1.0, 1.0],
         [0.0625, 0.0625, 1.0, 1.0]]
    )[None, None]  # fmt: skip
    assert torch.equal(low_resolution(image, factor=2), expected)
    assert torch.equal(low_resolution(image, factor=4), torch.full_like(image, 6.25 / 16))
    assert torch.equal(low_resolution(image, factor=1), image)


def test_low_resolution_works_per_image_and_channel_and_keeps_shape_dtype():
    images = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    images[1, 2, :4, :4] = 1.0  # one 4×4 block lit in the last channel of the second image
    out = low_resolution(images)  # the default factor 4
    assert out.shape == images.shape and out.dtype == torch.float64
    assert torch.equal(out, images)  # each 4×4 block is constant already: unchanged
    images[0, 0, 0, 0] = 1.0
    out = low_resolution(images)
    assert torch.equal(out[0, 0, :4, :4], torch.full((4, 4), 1 / 16, dtype=torch.float64))
    assert out[0, 0].sum() == 1 and out[0, 1:].abs().sum() == 0 and torch.equal(out[1], images[1])


def test_edge_map_of_a_vertical_step():
    """Columns 0 0 1 1: G_x = (1 + 2 + 1)·(1 − 0) = 4 on both sides of the step, 0 elsewhere (replicated border)."""
    step = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4)[None, None]
    expected = torch.tensor([[0.0, 1.0, 1.0, 0.0]] * 4)[None, None]
    assert torch.equal(edge_map(step), expected)
    assert torch.equal(edge_map(step.transpose(-1, -2)), expected.transpose(-1, -2))  # horizontal: G_y
    assert torch.equal(edge_map(3 * step / 4), expected)  # normalised: the contrast does not matter


def _sobel_magnitude_by_loops(image: list[list[int]]) -> list[list[int]]:
    """G_x² + G_y² of one channel by the definition: 3×3 sums with the border replicated (integers, exact)."""
    h, w = len(image), len(image[0])

    def at(i: int, j: int) -> int:
        return image[min(max(i, 0), h - 1)][min(max(j, 0), w - 1)]

    weights = (1, 2, 1)
    out = []
    for i in range(h):
        row = []
        for j in range(w):
            gx = sum(weights[k] * (at(i + k - 1, j + 1) - at(i + k - 1, j - 1)) for k in range(3))
            gy = sum(weights[k] * (at(i + 1, j + k - 1) - at(i - 1, j + k - 1)) for k in range(3))
            row.append(gx * gx + gy * gy)
        out.append(row)
    return out


def test_edge_map_matches_the_definition_on_an_impulse_and_a_corner():
    """A lit pixel and a lit corner square: √(G_x² + G_y²) / max, with the integer sums done by loops here.

    The sums of squares are small integers (exact in float32); the square root and the division are each
    correctly rounded in both computations, so the results are equal bit for bit.
    """
    for lit in ([(2, 2)], [(0, 0), (0, 1), (1, 0), (1, 1)]):
        image = [[0] * 5 for _ in range(5)]
        for i, j in lit:
            image[i][j] = 1
        squares = torch.tensor(_sobel_magnitude_by_loops(image), dtype=torch.float32)
        magnitude = squares.sqrt()
        expected = magnitude / magnitude.max()
        got = edge_map(torch.tensor(image, dtype=torch.float32)[None, None])
        assert torch.equal(got[0, 0], expected), (lit, got[0, 0], expected)
        assert got.min() == 0 and got.max() == 1


def test_edge_map_normalises_per_image_over_its_channels():
    step = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4)
    images = torch.stack([
        torch.stack([step / 2, step]),  # the second channel's edge is twice the first's
        torch.stack([torch.zeros(4, 4), step / 8]),  # a faint edge in an image of its own: still 1
    ])  # fmt: skip
    out = edge_map(images)
    edge = torch.tensor([[0.0, 1.0, 1.0, 0.0]] * 4)
    assert torch.equal(out[0, 0], edge / 2) and torch.equal(out[0, 1], edge)
    assert torch.equal(out[1, 0], torch.zeros(4, 4)) and torch.equal(out[1, 1], edge)


def test_edge_map_of_a_constant_image_is_zero_and_is_deterministic():
    assert torch.equal(edge_map(torch.full((2, 3, 6, 6), 0.7)), torch.zeros(2, 3, 6, 6))
    images = torch.rand(4, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    first = edge_map(images)
    assert torch.equal(first, edge_map(images.clone()))
    assert first.shape == images.shape and first.min() >= 0 and first.amax(dim=(1, 2, 3)).eq(1).all()


def test_transforms_by_name():
    assert {"low_resolution": low_resolution, "edges": edge_map} == CONTROL_TRANSFORMS
    assert control_transform("edges") is edge_map
    with pytest.raises(ValueError, match=r"control transform 'canny' is not known; allowed: low_resolution, edges\."):
        control_transform("canny")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: low_resolution(torch.zeros(1, 1, 6, 6)), r"factor 4 does not divide the images' 6×6 pixels; "
         r"allowed: 1, 2, 3, 6\."),
        (lambda: low_resolution(torch.zeros(1, 1, 4, 4), factor=0), r"factor 0 is not allowed; pass an integer ≥ 1"),
        (lambda: low_resolution(torch.zeros(1, 1, 4, 4), factor=2.0), r"factor 2\.0 is not allowed"),
        (lambda: low_resolution(torch.zeros(1, 4, 4)), r"low_resolution takes a floating-point tensor \(B, C, H, W\)"
         r".*got a 3-D torch\.float32 tensor of shape \(1, 4, 4\)"),
        (lambda: edge_map(torch.zeros(1, 1, 4, 4, dtype=torch.uint8)), r"edge_map takes a floating-point tensor.*"
         r"torch\.uint8"),
        (lambda: edge_map([[0.0]]), r"edge_map takes .* got a list"),
    ],
)  # fmt: skip
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_transforms_run_on_the_images_device_and_dtype():
    images = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    for name, transform in CONTROL_TRANSFORMS.items():
        out = transform(images)
        assert out.dtype == images.dtype and out.device == images.device, name
        assert all(0 <= v <= 1 for v in (out.min().item(), out.max().item())), name
