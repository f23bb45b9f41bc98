"""Every public kernel rejects an axis that does not exist or a shape it cannot handle with a
``ValueError`` naming the argument, never a silently wrong result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radflow.tasks import contrast, features, filters, preprocess, recon


def test_two_dimensional_kspace_needs_coil_axis_none():
    rng = np.random.default_rng(0)
    k2 = (rng.standard_normal((32, 48)) + 1j * rng.standard_normal((32, 48))).astype(np.complex64)
    with pytest.raises(ValueError, match="coil_axis"):
        recon.kspace_to_image(k2)  # the default coil_axis=-3 does not exist in a 2-D k-space
    single = recon.kspace_to_image(k2, coil_axis=None)
    reference = np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k2), norm="ortho")))
    assert single.shape == (32, 48)
    np.testing.assert_allclose(single, reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="coil_axis"):
        recon.kspace_to_image(torch.from_numpy(k2))  # the same through the torch path


@pytest.mark.parametrize("axis", [3, -4, -1, -2, 2])
def test_coil_axis_that_does_not_exist_or_is_an_image_axis(axis):
    k = np.zeros((4, 16, 16), np.complex64)
    with pytest.raises(ValueError, match="coil_axis"):
        recon.kspace_to_image(k, coil_axis=axis)
    with pytest.raises(ValueError, match="axis"):
        recon.rss(k, axis=axis)


def test_multi_coil_axes_that_exist_still_work():
    rng = np.random.default_rng(1)
    k = (rng.standard_normal((2, 4, 16, 16)) + 1j * rng.standard_normal((2, 4, 16, 16))).astype(np.complex64)
    a = recon.kspace_to_image(k, coil_axis=1)
    b = recon.kspace_to_image(np.moveaxis(k, 1, 0), coil_axis=0)
    assert a.shape == b.shape == (2, 16, 16)
    np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("call, name", [
    (lambda x: recon.fbp(x), "sinogram"),
    (lambda x: recon.ifft2c(x.astype(np.complex64)), "kspace"),
    (lambda x: recon.fft2c(x), "image"),
    (lambda x: recon.center_crop(x, (2, 2)), "x"),
    (lambda x: filters.gaussian(x, 1.0), "x"),
    (lambda x: filters.median(x, 3), "x"),
    (lambda x: filters.uniform(x, 3), "x"),
    (lambda x: preprocess.resize(x, (4, 4)), "x"),
    (lambda x: preprocess.pad_to_canvas(x, 8, 0, 0), "x"),
    (lambda x: features.high_frequency_fraction(x), "img"),
    (lambda x: features.glcm_contrast_homogeneity(x), "img"),
    (lambda x: contrast.clahe(x), "x"),
])
def test_one_dimensional_input_is_refused_by_name(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call(np.zeros(16, np.float32))


def test_shapes_a_kernel_cannot_handle():
    with pytest.raises(ValueError, match="shape"):
        preprocess.resize(np.zeros((8, 8), np.float32), (0, 4))
    with pytest.raises(ValueError, match="canvas"):
        preprocess.pad_to_canvas(np.zeros((8, 8), np.float32), 8, 4, 0)
    with pytest.raises(ValueError, match="tiles"):
        contrast.clahe(np.zeros((8, 8), np.float32), tiles=(0, 2))
    with pytest.raises(ValueError, match="x must be"):
        preprocess.to_grayscale(np.zeros((2, 8, 8, 3), np.float32))
