"""Kernels validated against scipy.ndimage / scikit-image, with NumPy and torch CPU inputs.

Documented tolerances: Gaussian, median, unsharp mask, histogram equalization 1e-5
absolute; CLAHE (a different but equivalent interpolation scheme from skimage's)
mean absolute difference < 0.01, max < 0.05.
"""

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import data, exposure, filters

from radflow.tasks.contrast import apply_lut, clahe, equalize_hist, percentile_clip, zscore
from radflow.tasks.filters import gaussian, median, unsharp_mask

IMG = data.camera().astype(np.float32)[::2, ::2] / 255.0


def inputs():
    return [IMG, torch.from_numpy(IMG.copy())]


def host(a):
    return a.numpy() if isinstance(a, torch.Tensor) else a


@pytest.mark.parametrize("x", inputs(), ids=["numpy", "torch"])
def test_gaussian_median_unsharp(x):
    np.testing.assert_allclose(host(gaussian(x, 1.5)), ndimage.gaussian_filter(IMG, 1.5, mode="reflect"), atol=1e-5)
    np.testing.assert_allclose(host(median(x, 5)), ndimage.median_filter(IMG, 5, mode="reflect"), atol=1e-6)
    ref = filters.unsharp_mask(IMG, radius=2, amount=1.5, preserve_range=True)
    out = unsharp_mask(x, 2, 1.5)
    assert type(out) is type(x)
    np.testing.assert_allclose(host(out), ref, atol=1e-5)


@pytest.mark.parametrize("x", inputs(), ids=["numpy", "torch"])
def test_equalization(x):
    np.testing.assert_allclose(host(equalize_hist(x)), exposure.equalize_hist(IMG), atol=1e-5)
    full = data.camera().astype(np.float32) / 255.0  # 512², 64-px regions (skimage redistributes the
    # clipped excess in whole counts, so small regions differ more)
    arr = full if isinstance(x, np.ndarray) else torch.from_numpy(full)
    ours = host(clahe(arr, tiles=(8, 8), clip_limit=0.01))
    ref = exposure.equalize_adapthist(full, kernel_size=(64, 64), clip_limit=0.01)
    assert np.abs(ours - ref).mean() < 0.01 and np.abs(ours - ref).max() < 0.05


@pytest.mark.parametrize("x", inputs(), ids=["numpy", "torch"])
def test_zscore_percentile_lut(x):
    z = host(zscore(x))
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4
    c = host(percentile_clip(x, 5, 95))
    lo, hi = np.quantile(IMG, [0.05, 0.95])
    np.testing.assert_allclose([c.min(), c.max()], [lo, hi], rtol=1e-5)
    inside = (IMG > lo) & (IMG < hi)
    np.testing.assert_array_equal(c[inside], IMG[inside])


def test_lut_sequence_semantics():
    stored = np.array([[0, 5, 10, 20]], np.uint16)
    lut = np.arange(8, dtype=np.float32) * 10  # maps stored 5..12
    for arr in (stored, torch.from_numpy(stored.astype(np.int32))):
        np.testing.assert_array_equal(host(apply_lut(arr, lut, first_mapped=5)), [[0, 0, 50, 70]])


def test_median_rejects_even_size():
    with pytest.raises(ValueError):
        median(IMG, 4)
