"""``scipy.ndimage`` for NumPy, ``cupyx.scipy.ndimage`` for CuPy (imported lazily), or None."""

from __future__ import annotations

from typing import Any

import numpy as np

from radflow.tasks._xp import from_host, is_cupy_array, is_numpy_array, namespace

__all__ = ["ndimage_for", "symmetric_pad"]


def ndimage_for(x: Any):
    """The ndimage module for ``x``'s library, or None (then the generic array path is used)."""
    if is_numpy_array(x):
        import scipy.ndimage

        return scipy.ndimage
    if is_cupy_array(x):
        import cupyx.scipy.ndimage

        return cupyx.scipy.ndimage
    return None


def symmetric_pad(x: Any, pad: int, axis: int) -> Any:
    """Pad ``axis`` by ``pad`` on both sides, mirroring edge pixels (scipy's ``mode="reflect"``)."""
    n = x.shape[axis]
    idx = np.arange(-pad, n + pad)
    period = 2 * n
    idx = np.mod(idx, period)
    idx = np.where(idx >= n, period - 1 - idx, idx)
    xp = namespace(x)
    return xp.take(x, from_host(idx.astype(np.int64), x), axis=axis)
