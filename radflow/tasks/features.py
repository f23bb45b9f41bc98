"""Per-frame features: intensity statistics, GLCM texture, high-frequency spectral energy."""

from __future__ import annotations

from typing import Any

import numpy as np

from radflow.tasks._xp import bincount, from_host, namespace, quantiles, require_ndim, to_host
from radflow.tasks.preprocess import fit_geometry

__all__ = ["FEATURES", "frame_features", "block_features", "glcm_contrast_homogeneity", "high_frequency_fraction"]

_PCTS = (1, 5, 25, 50, 75, 95, 99)
#: Column names of :func:`frame_features`, in order.
FEATURES = ("mean", "std", "min", "max", *(f"p{p:02d}" for p in _PCTS), "glcm_contrast", "glcm_homogeneity", "hf_energy_fraction")


def glcm_contrast_homogeneity(img: Any, levels: int = 32) -> tuple[float, float]:
    """GLCM contrast and homogeneity of a [0, 1] image.

    Symmetric, normalized co-occurrence matrix of ``levels`` grey levels over the
    offsets (0, 1) and (1, 0), averaged (skimage's ``graycoprops`` definitions).
    """
    require_ndim(img, "img", exactly=2)
    xp = namespace(img)
    q = xp.astype(xp.clip(xp.floor(img * levels), 0, levels - 1), xp.int64)
    counts = None
    for a, b in ((q[:, :-1], q[:, 1:]), (q[:-1, :], q[1:, :])):
        c = bincount(xp.reshape(a * levels + b, (-1,)), levels * levels)
        c = xp.reshape(xp.astype(c, xp.float64), (levels, levels))
        c = c + c.T
        c = c / xp.sum(c)
        counts = c if counts is None else counts + c
    p = counts / 2.0
    i = np.arange(levels, dtype=np.float64)
    d2 = from_host((i[:, None] - i[None, :]) ** 2, img)
    return float(xp.sum(p * d2)), float(xp.sum(p / (1.0 + d2)))


def high_frequency_fraction(img: Any, cutoff: float = 0.25) -> float:
    """Fraction of the (mean-removed) 2-D power spectrum above ``cutoff`` cycles/pixel."""
    require_ndim(img, "img", exactly=2)
    xp = namespace(img)
    z = img - xp.mean(img)
    f = xp.fft.rfftn(z)  # half the spectrum of a real frame (a float32 frame stays complex64)
    power = xp.real(f) ** 2 + xp.imag(f) ** 2
    ny, nx = img.shape
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.rfftfreq(nx)[None, :]
    k = np.arange(fx.shape[1])
    twice = np.where((k >= 1) & (k <= (nx - 1) // 2), 2.0, 1.0)[None, :]  # columns that stand for their mirror too
    weight = from_host(np.broadcast_to(twice, power.shape).astype(np.float32), img)
    high = from_host((np.sqrt(fy**2 + fx**2) > cutoff) * twice, img)
    total = float(xp.sum(power * xp.astype(weight, power.dtype)))
    return float(xp.sum(power * xp.astype(high, power.dtype))) / total if total > 0 else 0.0


def frame_features(img: Any, *, levels: int = 32, cutoff: float = 0.25) -> np.ndarray:
    """Features of one 2-D image in [0, 1] (NumPy, CuPy or torch).

    Returns
    -------
    (len(FEATURES),) float64 NumPy array, in the order of :data:`FEATURES`.
    """
    xp = namespace(img)
    x = xp.astype(img, xp.float32)
    q = to_host(quantiles(x, [p / 100 for p in _PCTS])).astype(np.float64)
    contrast, homog = glcm_contrast_homogeneity(x, levels)
    stats = [float(xp.mean(x)), float(xp.std(x)), float(xp.min(x)), float(xp.max(x))]
    return np.array([*stats, *q.tolist(), contrast, homog, high_frequency_fraction(x, cutoff)], dtype=np.float64)


def block_features(block: Any, geometry: Any, *, canvas: int, cutoff: float = 0.25) -> np.ndarray:
    """Features of every frame of a block of canvases, over each frame's content area.

    Parameters
    ----------
    block : (n, canvas, canvas) float array (NumPy, CuPy or torch)
    geometry : (n, 2) integer array of native ``rows, cols`` (0 marks an empty slot)

    Returns
    -------
    (n, len(FEATURES)) float64 NumPy array; rows of empty slots are NaN.
    """
    geometry = to_host(geometry)
    out = np.full((block.shape[0], len(FEATURES)), np.nan)
    for i in range(block.shape[0]):
        rows, cols = int(geometry[i, 0]), int(geometry[i, 1])
        if rows <= 0 or cols <= 0:
            continue
        h, w, top, left = fit_geometry(rows, cols, canvas)
        out[i] = frame_features(block[i, top : top + h, left : left + w], cutoff=cutoff)
    return out
