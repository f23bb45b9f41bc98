"""Compiled back-projection for CPU inputs (numba, parallel over image rows)."""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["backproject_numba"]


@numba.njit(parallel=True, fastmath=True, cache=True)
def _backproject(filtered: np.ndarray, cos: np.ndarray, sin: np.ndarray, out_size: int, det_center: float,
                 circle: bool) -> np.ndarray:
    n_ang, n_det = filtered.shape
    radius = out_size // 2
    last = n_det - 1
    out = np.zeros((out_size, out_size), dtype=filtered.dtype)
    for i in numba.prange(out_size):
        xr = i - radius
        jlo, jhi = 0, out_size
        if circle:  # pixels outside the reconstruction circle are zeroed afterwards: skip them
            h = radius * radius - xr * xr
            if h < 0:
                continue
            half = int(math.sqrt(h))
            jlo, jhi = radius - half, min(out_size, radius + half + 1)
        acc = out[i]
        for a in range(n_ang):
            c = cos[a]
            row = filtered[a]
            # t(j) = t0 + j * c; interpolate where 0 <= t < last (zero outside, like np.interp(left=0, right=0))
            t0 = det_center - xr * sin[a] - radius * c
            lo, hi = -1e30, 1e30
            if abs(c) > 1e-12:
                lo = (0.0 - t0) / c
                hi = (last - t0) / c
                if lo > hi:
                    lo, hi = hi, lo
            elif t0 < 0 or t0 >= last:
                continue
            j0 = max(jlo, int(math.ceil(max(lo, -1e9))))
            j1 = min(jhi, int(math.floor(min(hi, 1e9))) + 1)
            while j0 < j1 and not (0.0 <= t0 + j0 * c < last):  # rounding guards at both ends
                j0 += 1
            while j1 > j0 and not (0.0 <= t0 + (j1 - 1) * c < last):
                j1 -= 1
            for j in range(j0, j1):
                t = t0 + j * c
                k = int(t)
                acc[j] += row[k] + (t - k) * (row[k + 1] - row[k])
    return out


def backproject_numba(filtered: np.ndarray, theta_rad: np.ndarray, out_size: int, circle: bool = False) -> np.ndarray:
    """Sum of linearly interpolated filtered projections over angles (skimage ``iradon`` geometry).

    Parameters
    ----------
    filtered : (n_angles, n_det) float32/float64 NumPy
    theta_rad : (n_angles,) projection angles in radians
    out_size : side of the square output
    circle : compute only pixels inside the inscribed circle (others are 0)

    Returns
    -------
    (out_size, out_size) array of ``filtered``'s dtype (unscaled sum).
    """
    dt = filtered.dtype
    return _backproject(
        np.ascontiguousarray(filtered), np.cos(theta_rad).astype(dt), np.sin(theta_rad).astype(dt), int(out_size),
        float(filtered.shape[1] // 2), bool(circle),
    )
