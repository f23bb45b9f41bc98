"""Intensity and contrast kernels: z-score, percentile clipping, LUTs, histogram equalization, CLAHE.

All take the array namespace from the input and return the same library and device.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from radflow.tasks._xp import bincount, from_host, namespace, quantiles, require_ndim

__all__ = ["zscore", "percentile_clip", "apply_lut", "equalize_hist", "clahe"]


def zscore(x: Any, eps: float = 1e-8) -> Any:
    """``(x - mean) / std`` over all values (population std), float32."""
    xp = namespace(x)
    x = xp.astype(x, xp.float32)
    return (x - xp.mean(x)) / (xp.std(x) + eps)


def percentile_clip(x: Any, lo: float = 0.5, hi: float = 99.5) -> Any:
    """Clip to the ``lo``–``hi`` percentiles; values inside are unchanged."""
    xp = namespace(x)
    q = quantiles(x, [lo / 100.0, hi / 100.0])
    return xp.clip(x, float(q[0]), float(q[1]))


def apply_lut(x: Any, lut: Any, first_mapped: int) -> Any:
    """DICOM LUT (modality or VOI LUT Sequence): ``lut[clip(x - first_mapped, 0, len - 1)]``.

    Parameters
    ----------
    x : integer stored values
    lut : (n,) LUT data (same library as ``x`` or NumPy)
    first_mapped : the first stored value mapped (LUT Descriptor, second value)
    """
    xp = namespace(x)
    lut = from_host(np.asarray(lut), x) if isinstance(lut, np.ndarray) else lut
    idx = xp.clip(xp.astype(x, xp.int64) - int(first_mapped), 0, lut.shape[0] - 1)
    return xp.reshape(xp.take(lut, xp.reshape(idx, (-1,))), x.shape)


def _interp(x: Any, xs: np.ndarray, ys: Any) -> Any:
    """``np.interp(x, xs, ys)`` for evenly spaced ``xs`` (clamped at both ends), any namespace."""
    xp = namespace(x)
    step = float(xs[1] - xs[0]) if len(xs) > 1 else 1.0
    pos = xp.clip((x - float(xs[0])) / step, 0.0, float(len(xs) - 1))
    i0 = xp.astype(xp.floor(pos), xp.int64)
    i0 = xp.clip(i0, 0, max(0, len(xs) - 2))
    frac = pos - xp.astype(i0, pos.dtype)
    flat0 = xp.reshape(i0, (-1,))
    a = xp.reshape(xp.take(ys, flat0), x.shape)
    b = xp.reshape(xp.take(ys, xp.clip(flat0 + 1, 0, len(xs) - 1)), x.shape)
    return a + frac * (b - a)


def equalize_hist(x: Any, nbins: int = 256) -> Any:
    """Global histogram equalization to [0, 1] (skimage's ``equalize_hist``: CDF at bin centres,
    linear interpolation between them)."""
    xp = namespace(x)
    x = xp.astype(x, xp.float32)
    lo, hi = float(xp.min(x)), float(xp.max(x))
    if hi <= lo:
        return xp.zeros_like(x)
    width = (hi - lo) / nbins
    idx = xp.clip(xp.astype(xp.floor((x - lo) / width), xp.int64), 0, nbins - 1)
    hist = xp.astype(bincount(xp.reshape(idx, (-1,)), nbins), xp.float32)
    cdf = xp.cumulative_sum(hist) if hasattr(xp, "cumulative_sum") else xp.cumsum(hist)
    cdf = cdf / cdf[-1]
    centers = lo + width * (np.arange(nbins) + 0.5)
    return _interp(x, centers, cdf)


def clahe(x: Any, tiles: tuple[int, int] = (8, 8), clip_limit: float = 0.01, nbins: int = 256) -> Any:
    """Contrast-limited adaptive histogram equalization of a 2-D image in [0, 1].

    The image is divided into ``tiles`` contextual regions; each region's histogram is
    clipped at ``clip_limit`` (a fraction of the region's pixels per bin, as skimage's
    ``equalize_adapthist``), the excess redistributed uniformly, and the region's CDF
    mapping bilinearly interpolated between region centres.

    Returns
    -------
    (H, W) float32 in [0, 1], same library and device.
    """
    require_ndim(x, "x", exactly=2)
    if len(tiles) != 2 or min(tiles) < 1:
        raise ValueError(f"tiles must be two positive counts, got {tuple(tiles)}")
    xp = namespace(x)
    x = xp.clip(xp.astype(x, xp.float32), 0.0, 1.0)
    h, w = x.shape
    ty, tx = tiles
    th, tw = math.ceil(h / ty), math.ceil(w / tx)
    bins = xp.clip(xp.astype(xp.floor(x * nbins), xp.int64), 0, nbins - 1)
    rows = from_host(np.minimum(np.arange(h) // th, ty - 1).astype(np.int64), x)
    cols = from_host(np.minimum(np.arange(w) // tw, tx - 1).astype(np.int64), x)
    region = rows[:, None] * tx + cols[None, :]
    hist = xp.astype(bincount(xp.reshape(region * nbins + bins, (-1,)), ty * tx * nbins), xp.float32)
    hist = xp.reshape(hist, (ty * tx, nbins))
    npix = xp.sum(hist, axis=1, keepdims=True)
    limit = xp.clip(clip_limit * npix, 1.0, None)
    for _ in range(4):  # redistribute the clipped excess (a few passes converge)
        excess = xp.sum(xp.clip(hist - limit, 0.0, None), axis=1, keepdims=True)
        hist = xp.minimum(hist, limit) + excess / nbins
    cdf = xp.cumulative_sum(hist, axis=1) if hasattr(xp, "cumulative_sum") else xp.cumsum(hist, axis=1)
    maps = xp.reshape(cdf / cdf[:, -1:], (-1,))
    # bilinear interpolation between the mappings of the four nearest region centres
    cy = (np.arange(h) + 0.5 - th / 2) / th
    cx = (np.arange(w) + 0.5 - tw / 2) / tw
    y0 = np.clip(np.floor(cy), 0, ty - 1).astype(np.int64)
    x0 = np.clip(np.floor(cx), 0, tx - 1).astype(np.int64)
    y1 = np.minimum(y0 + 1, ty - 1)
    x1 = np.minimum(x0 + 1, tx - 1)
    fy = from_host(np.clip(cy - y0, 0, 1).astype(np.float32)[:, None], x)
    fx = from_host(np.clip(cx - x0, 0, 1).astype(np.float32)[None, :], x)

    def lookup(ry: np.ndarray, rx: np.ndarray) -> Any:
        reg = from_host((ry[:, None] * tx + rx[None, :]).astype(np.int64), x)
        return xp.reshape(xp.take(maps, xp.reshape(reg * nbins + bins, (-1,))), (h, w))

    top = lookup(y0, x0) * (1 - fx) + lookup(y0, x1) * fx
    bottom = lookup(y1, x0) * (1 - fx) + lookup(y1, x1) * fx
    return top * (1 - fy) + bottom * fy
