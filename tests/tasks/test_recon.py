import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, radon, rescale

from radflow.tasks.recon import FILTERS, center_crop, fbp, fft2c, ifft2c, kspace_to_image, rss


@pytest.fixture(scope="module")
def phantom_sino():
    ph = rescale(shepp_logan_phantom(), 128 / 400, anti_aliasing=False)
    theta = np.linspace(0, 180, 90, endpoint=False)
    return ph, theta, radon(ph, theta)


@pytest.mark.parametrize("filt", FILTERS)
def test_fbp_interp_equals_iradon_and_fourier_is_as_accurate(phantom_sino, filt):
    ph, theta, sino = phantom_sino
    ref = iradon(sino, theta, filter_name=filt)
    np.testing.assert_allclose(fbp(sino, theta, filter=filt, method="interp"), ref, atol=1e-9)
    mask = np.hypot(*(np.mgrid[:128, :128] - 64)) <= 64
    rmse = lambda a: np.sqrt(np.mean((a - ph)[mask] ** 2))  # noqa: E731
    for method in ("interp", "fourier"):
        out = fbp(sino.astype(np.float32), theta, filter=filt, method=method)
        assert out.dtype == np.float32 and out.shape == (128, 128)
        assert rmse(out) <= rmse(ref) * 1.0001, method
    # the two methods agree closely away from sharp edges
    smooth = fbp(sino, theta, filter="hann", method="fourier")
    assert np.corrcoef(smooth[mask], iradon(sino, theta, filter_name="hann")[mask])[0, 1] > 0.99


@pytest.mark.parametrize("n, angles", [(64, 32), (160, 400), (200, 60)])
def test_fourier_rmse_no_worse_than_iradon_across_sampling(n, angles):
    ph = rescale(shepp_logan_phantom(), n / 400, anti_aliasing=False)
    theta = np.linspace(0, 180, angles, endpoint=False)
    sino = radon(ph, theta)
    mask = np.hypot(*(np.mgrid[:n, :n] - n // 2)) <= n // 2
    rmse = lambda a: np.sqrt(np.mean((a - ph)[mask] ** 2))  # noqa: E731
    assert rmse(fbp(sino, theta)) <= rmse(iradon(sino, theta))


def test_fbp_no_circle_and_output_size(phantom_sino):
    _, theta, sino = phantom_sino
    np.testing.assert_allclose(fbp(sino, theta, circle=False, method="interp"), iradon(sino, theta, circle=False), atol=1e-9)
    np.testing.assert_allclose(fbp(sino, theta, output_size=100, method="interp"), iradon(sino, theta, output_size=100), atol=1e-9)
    for kw in ({"circle": False}, {"output_size": 100}):
        a, b = fbp(sino, theta, method="fourier", **kw), iradon(sino, theta, **kw)
        assert a.shape == b.shape and np.sqrt(np.mean((a - b) ** 2)) < 0.02


def test_fbp_torch_both_backends_and_batch(phantom_sino):
    _, theta, sino = phantom_sino
    s32 = sino.astype(np.float32)
    ref = fbp(s32, theta, method="interp")
    for backend in ("compiled", "array"):
        out = fbp(torch.from_numpy(s32), theta, method="interp", backend=backend)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
        np.testing.assert_allclose(out.numpy(), ref, atol=1e-4)
    four = fbp(torch.from_numpy(s32), theta)
    assert isinstance(four, torch.Tensor)
    np.testing.assert_allclose(four.numpy(), fbp(s32, theta), atol=1e-6)
    ref = fbp(s32, theta)
    batch = np.stack([s32, 2 * s32])
    out = fbp(batch, theta)
    assert out.shape == (2, 128, 128)
    np.testing.assert_allclose(out[1], 2 * ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        fbp(s32, theta[:-1])


def _reference_ifft2c(k):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


@pytest.mark.parametrize("shape", [(4, 64, 48), (3, 63, 50)])
def test_ifft2c_matches_fastmri_convention(shape):
    rng = np.random.default_rng(0)
    k = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    ours = ifft2c(k)
    assert ours.dtype == np.complex64
    np.testing.assert_allclose(ours, _reference_ifft2c(k), atol=1e-5)
    np.testing.assert_allclose(ifft2c(fft2c(k)), k, atol=1e-5)
    t = ifft2c(torch.from_numpy(k))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), _reference_ifft2c(k), atol=1e-5)


def test_kspace_to_image_rss_and_crop():
    rng = np.random.default_rng(1)
    k = (rng.standard_normal((2, 4, 64, 64)) + 1j * rng.standard_normal((2, 4, 64, 64))).astype(np.complex64)
    img = kspace_to_image(k, crop=(32, 32))
    ref = np.sqrt((np.abs(_reference_ifft2c(k)) ** 2).sum(axis=1))[:, 16:48, 16:48]
    assert img.shape == (2, 32, 32) and img.dtype == np.float32
    np.testing.assert_allclose(img, ref, rtol=1e-4)
    np.testing.assert_allclose(kspace_to_image(torch.from_numpy(k), crop=(32, 32)).numpy(), ref, rtol=1e-4)
    np.testing.assert_allclose(rss(_reference_ifft2c(k).astype(np.complex64), axis=1), np.sqrt((np.abs(_reference_ifft2c(k)) ** 2).sum(1)), rtol=1e-5)
    with pytest.raises(ValueError):
        center_crop(img, (64, 64))
