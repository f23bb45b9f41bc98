"""Image-quality metrics with fastMRI's definitions: NMSE, PSNR, SSIM.

``gt`` and ``pred`` are ``(slices, H, W)`` (or ``(H, W)``) real arrays of one library
(NumPy, CuPy or torch); results are Python floats.
"""

from __future__ import annotations

from typing import Any

from radflow.tasks._xp import namespace
from radflow.tasks.filters import uniform

__all__ = ["nmse", "psnr", "ssim"]


def nmse(gt: Any, pred: Any) -> float:
    """Normalized mean squared error ``||gt - pred||² / ||gt||²``."""
    xp = namespace(gt, pred)
    d = gt - pred
    return float(xp.sum(d * d)) / float(xp.sum(gt * gt))


def psnr(gt: Any, pred: Any, maxval: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB with ``data_range = gt.max()`` (fastMRI)."""
    import math

    xp = namespace(gt, pred)
    maxval = float(xp.max(gt)) if maxval is None else float(maxval)
    d = gt - pred
    mse = float(xp.mean(d * d))
    return float("inf") if mse == 0 else 10.0 * math.log10(maxval * maxval / mse)


def _ssim2d(x: Any, y: Any, data_range: float, win: int = 7, k1: float = 0.01, k2: float = 0.03) -> float:
    """Structural similarity of one 2-D pair (scikit-image's defaults: 7×7 uniform window,
    sample covariance, mean over the interior away from the window's reach)."""
    xp = namespace(x, y)
    x = xp.astype(x, xp.float64)
    y = xp.astype(y, xp.float64)
    npix = win * win
    cov_norm = npix / (npix - 1)
    ux, uy = uniform(x, win), uniform(y, win)
    uxx, uyy, uxy = uniform(x * x, win), uniform(y * y, win), uniform(x * y, win)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return float(xp.mean(s[pad:-pad, pad:-pad]))


def ssim(gt: Any, pred: Any, maxval: float | None = None) -> float:
    """Mean SSIM over slices with ``data_range = gt.max()`` over the whole volume (fastMRI)."""
    xp = namespace(gt, pred)
    maxval = float(xp.max(gt)) if maxval is None else float(maxval)
    if gt.ndim == 2:
        return _ssim2d(gt, pred, maxval)
    return sum(_ssim2d(gt[i], pred[i], maxval) for i in range(gt.shape[0])) / gt.shape[0]
