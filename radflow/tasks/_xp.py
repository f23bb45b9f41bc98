"""Array-namespace helpers: one code path for NumPy, CuPy and torch inputs.

The namespace is taken from the input (``array_api_compat.array_namespace``), which
refuses mixed inputs. CuPy is never imported here; CuPy- or torch-specific calls are
picked by the input's type.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np
from array_api_compat import is_cupy_array, is_numpy_array, is_torch_array

__all__ = ["namespace", "device", "from_host", "to_host", "bincount", "quantiles", "is_numpy_array", "is_torch_array", "is_cupy_array"]


def namespace(*arrays: Any):
    """The array-API namespace of the inputs (NumPy, CuPy or torch); mixed inputs raise TypeError."""
    return array_api_compat.array_namespace(*arrays)


def device(x: Any) -> Any:
    return array_api_compat.device(x)


def from_host(values: np.ndarray, like: Any) -> Any:
    """``values`` (a small NumPy array) on the namespace and device of ``like``."""
    xp = namespace(like)
    if is_numpy_array(like):
        return values
    return xp.asarray(values, device=device(like))


def to_host(x: Any) -> np.ndarray:
    """A NumPy copy of ``x`` (for tables and writing)."""
    if is_numpy_array(x):
        return x
    if is_torch_array(x):
        return x.detach().cpu().numpy()
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def bincount(x: Any, minlength: int) -> Any:
    """Counts of non-negative integers in 1-D ``x`` (not in the array API; dispatched)."""
    if is_torch_array(x):
        import torch

        return torch.bincount(x, minlength=minlength)
    if is_cupy_array(x):
        import cupy

        return cupy.bincount(x, minlength=minlength)
    return np.bincount(x, minlength=minlength)


def quantiles(x: Any, qs: Any) -> Any:
    """Linear-interpolated quantiles (``numpy.quantile``'s default) of all values of ``x``.

    ``qs`` in [0, 1]; returns a 1-D array in ``x``'s namespace.
    """
    xp = namespace(x)
    if is_numpy_array(x) or is_cupy_array(x):
        mod = np if is_numpy_array(x) else __import__("cupy")
        return mod.quantile(x.reshape(-1), mod.asarray(qs, dtype=np.float64)).astype(x.dtype)
    flat = xp.sort(xp.reshape(x, (-1,)))
    n = flat.shape[0]
    pos = np.asarray(qs, dtype=np.float64) * (n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = from_host((pos - lo).astype(np.float32), x)
    a = xp.take(flat, from_host(lo, x))
    b = xp.take(flat, from_host(hi, x))
    return a + (b - a) * xp.astype(frac, flat.dtype)
