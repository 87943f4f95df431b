"""Image operators: one convention (scale, borders) for torch and numpy, checked against known values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamfuse.imageops import LAPLACIAN, SOBEL_SCALE, SOBEL_X, arrays, gaussian_radius, tensors


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).random((23, 31)).astype(np.float32)


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x)[None, None]


def test_torch_and_numpy_agree(image):
    for a, b in zip(arrays.sobel(image), tensors.sobel(_t(image))):
        np.testing.assert_allclose(a, b[0, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(arrays.box_filter(image, 5), tensors.box_filter(_t(image), 5)[0, 0].numpy(), atol=1e-6)
    for sigma in (1.0, 3.0, 8.0):  # 8: radius 24, wider than the image's 23 rows, so the border falls back to replicate
        np.testing.assert_allclose(arrays.gaussian_blur(image, sigma),
                                   tensors.gaussian_blur(_t(image), sigma)[0, 0].numpy(), atol=1e-5)


@pytest.mark.parametrize("shape", [(9, 14), (10, 14)])  # sigma 3: radius 9, as wide as the 9 rows, then narrower
def test_numpy_and_torch_blur_agree_where_the_image_side_equals_the_radius(shape):
    # without it, the hand rule (numpy) and the training target (torch) part on small images: one reflects a border
    # that the other replicates
    image = np.random.default_rng(1).random(shape).astype(np.float32)
    np.testing.assert_allclose(arrays.gaussian_blur(image, 3.0), tensors.gaussian_blur(_t(image), 3.0)[0, 0].numpy(),
                               atol=1e-5)


@pytest.mark.parametrize("sigma, radius", [(0.5, 2), (1.5, 5), (3.0, 9), (8.0, 24)])
def test_the_gaussian_reaches_int_3_sigma_plus_half_pixels_on_both_sides(sigma, radius):
    # without it, a kernel cut at 3 sigma rounded down (4 px for sigma 1.5) drops taps the convention documents
    assert gaussian_radius(sigma) == radius
    impulse = np.zeros((61, 61), np.float32)
    impulse[30, 30] = 1.0
    for row in (arrays.gaussian_blur(impulse, sigma)[30], tensors.gaussian_blur(_t(impulse), sigma)[0, 0, 30].numpy()):
        assert np.flatnonzero(row).tolist() == list(range(30 - radius, 31 + radius))


def test_a_zero_sigma_blur_is_the_identity_and_a_negative_or_nan_sigma_is_refused_in_both_twins(image):
    # the torch twin divided by 2 sigma^2 = 0 (all NaN) while OpenCV blurred with a sigma of its own choosing; the
    # identity is a copy, as every other sigma's blur is a new array: a caller writing into it must not change x
    same, tensor = arrays.gaussian_blur(image, 0.0), _t(image)
    np.testing.assert_array_equal(same, image)
    assert not np.shares_memory(same, image)
    same = tensors.gaussian_blur(tensor, 0.0)
    torch.testing.assert_close(same, tensor, rtol=0, atol=0)
    assert same.data_ptr() != tensor.data_ptr()
    for sigma in (-1.0, float("nan"), float("inf")):
        for blur, x in ((arrays.gaussian_blur, image), (tensors.gaussian_blur, _t(image))):
            with pytest.raises(ValueError, match="sigma must be a finite number of pixels >= 0"):
                blur(x, sigma)


def test_sobel_of_a_unit_ramp_is_one_and_signed():
    ramp = torch.arange(16.0).view(1, 1, 1, 16).expand(1, 1, 8, 16)
    gx, gy = tensors.sobel(ramp)
    torch.testing.assert_close(gx[..., 1:-1], torch.ones_like(gx[..., 1:-1]))  # scale 1/8: unit slope -> 1
    assert gy.abs().max() == 0 and tensors.sobel(-ramp)[0][..., 1:-1].max() < 0
    assert gx[..., 0].eq(0.5).all()  # replicate border: a half slope at the edge
    torch.testing.assert_close(tensors.gradient_magnitude(ramp, 0.0)[..., 1:-1], gx[..., 1:-1])


def test_sobel_adjoint_is_the_transpose_away_from_the_border():
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(1, 2, 12, 12)
    x[..., 2:-2, 2:-2] = torch.rand(1, 2, 8, 8, generator=g)  # zero near the border: replicate = zero padding
    u, v = torch.rand(2, 1, 2, 12, 12, generator=g)
    gx, gy = tensors.sobel(x)
    torch.testing.assert_close((gx * u + gy * v).sum(), (x * tensors.sobel_adjoint(u, v)).sum())


def test_laplacian_box_and_blur_on_known_images():
    yy, xx = torch.meshgrid(torch.arange(10.0), torch.arange(10.0), indexing="ij")
    quad = (xx.square() + yy.square()).view(1, 1, 10, 10)
    torch.testing.assert_close(tensors.laplacian(quad)[..., 1:-1, 1:-1], torch.full((1, 1, 8, 8), 4.0))
    flat = torch.full((1, 2, 9, 9), 0.3)
    torch.testing.assert_close(tensors.box_filter(flat, 3), flat)
    torch.testing.assert_close(tensors.gaussian_blur(flat, 3.0), flat)
    np.testing.assert_allclose(arrays.gaussian_blur(np.full((9, 9), 0.3), 3.0), 0.3)


def test_operators_used_in_inference_serve_autograd_too():
    with torch.inference_mode():
        tensors.sobel(torch.rand(1, 1, 5, 5, dtype=torch.float64))
    for x in (torch.rand(1, 1, 5, 5, dtype=torch.float64), torch.full((1, 1, 5, 5), 0.5, dtype=torch.float64)):
        x.requires_grad_(True)  # a flat image too: eps under the square root keeps its gradient finite there
        tensors.gradient_magnitude(x).sum().backward()
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("kernel", ["sobel_x", "sobel_y", "lap"])
def test_shifted_slices_equal_the_depthwise_convolution(kernel):
    weights = {"sobel_x": torch.tensor(SOBEL_X) * SOBEL_SCALE, "sobel_y": torch.tensor(SOBEL_X).t() * SOBEL_SCALE,
               "lap": torch.tensor(LAPLACIAN)}[kernel].double().expand(3, 1, 3, 3)
    x = torch.rand(2, 3, 7, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    reference = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), weights,
                                           groups=3)
    torch.testing.assert_close(tensors._filter(x, kernel), reference)
    adjoint = torch.nn.functional.conv2d(x, weights.flip(-1, -2), padding=1, groups=3)
    torch.testing.assert_close(tensors._filter(x, kernel, adjoint=True), adjoint)


@pytest.mark.parametrize("shape, factor", [((2, 1, 6, 8), 8), ((1, 2, 12, 16), 4), ((1, 3, 1, 5), 2),
                                           ((1, 1, 1, 1), 8)])
def test_upsample_is_bilinear_interpolation_with_its_exact_gradient(shape, factor):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(*shape, dtype=torch.float64, generator=gen, requires_grad=True)
    g = torch.rand(*shape[:2], shape[2] * factor, shape[3] * factor, dtype=torch.float64, generator=gen)
    reference = torch.nn.functional.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    out = tensors.upsample(x, factor)
    assert torch.equal(out, reference)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(reference, x, g)[0])
