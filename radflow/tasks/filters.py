"""Denoising and sharpening: Gaussian, median, unsharp masking.

NumPy inputs go through ``scipy.ndimage``, CuPy inputs through ``cupyx.scipy.ndimage``
(imported lazily); other array libraries (torch) use a generic array-API path with
the same boundary handling (``mode="reflect"``: edge pixels mirrored) and are tested
against scipy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from radflow.tasks._ndimage import ndimage_for, symmetric_pad
from radflow.tasks._xp import namespace, require_ndim

__all__ = ["gaussian", "median", "unsharp_mask", "uniform", "gaussian_kernel"]


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Normalized 1-D Gaussian taps of radius ``int(truncate * sigma + 0.5)`` (scipy's convention)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _convolve_axis(x: Any, taps: np.ndarray, axis: int) -> Any:
    r = (len(taps) - 1) // 2
    p = symmetric_pad(x, r, axis)
    n = x.shape[axis]
    out = None
    for i, w in enumerate(taps):
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(i, i + n)
        term = p[tuple(sl)] * float(w)
        out = term if out is None else out + term
    return out


def gaussian(x: Any, sigma: float, *, truncate: float = 4.0) -> Any:
    """Gaussian smoothing of the last two axes; float32 in, float32 out.

    Parameters
    ----------
    x : (..., H, W) float array (NumPy, CuPy or torch)
    sigma : standard deviation in pixels
    """
    require_ndim(x, "x", at_least=2)
    if sigma <= 0:
        return x
    nd = ndimage_for(x)
    if nd is not None:
        sig = (0,) * (x.ndim - 2) + (sigma, sigma)
        return nd.gaussian_filter(x, sig, mode="reflect", truncate=truncate)
    taps = gaussian_kernel(sigma, truncate)
    return _convolve_axis(_convolve_axis(x, taps, x.ndim - 2), taps, x.ndim - 1)


def median(x: Any, size: int = 3) -> Any:
    """Median filter over a ``size × size`` window of the last two axes (``mode="reflect"``)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"median size must be odd and positive, got {size}")
    require_ndim(x, "x", at_least=2)
    nd = ndimage_for(x)
    if nd is not None:
        return nd.median_filter(x, size=(1,) * (x.ndim - 2) + (size, size), mode="reflect")
    xp = namespace(x)
    r = size // 2
    p = symmetric_pad(symmetric_pad(x, r, x.ndim - 2), r, x.ndim - 1)
    h, w = x.shape[-2:]
    windows = [p[..., i : i + h, j : j + w] for i in range(size) for j in range(size)]
    stacked = xp.stack(windows, axis=0)
    return xp.sort(stacked, axis=0)[(size * size) // 2]


def unsharp_mask(x: Any, radius: float = 1.0, amount: float = 1.0, *, clip: tuple[float, float] | None = None) -> Any:
    """``x + amount * (x - gaussian(x, radius))``, optionally clipped (skimage's ``unsharp_mask``)."""
    xp = namespace(x)
    out = x + amount * (x - gaussian(x, radius))
    if clip is not None:
        out = xp.clip(out, clip[0], clip[1])
    return out


def uniform(x: Any, size: int) -> Any:
    """Mean over a ``size × size`` window (odd ``size``) of the last two axes (``mode="reflect"``)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be odd and positive, got {size}")
    require_ndim(x, "x", at_least=2)
    nd = ndimage_for(x)
    if nd is not None:
        return nd.uniform_filter(x, size=(1,) * (x.ndim - 2) + (size, size), mode="reflect")
    taps = np.full(size, 1.0 / size)
    return _convolve_axis(_convolve_axis(x, taps, x.ndim - 2), taps, x.ndim - 1)
