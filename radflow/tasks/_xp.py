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

__all__ = ["namespace", "device", "from_host", "to_host", "bincount", "quantiles", "require_ndim", "check_axis",
           "is_numpy_array", "is_torch_array", "is_cupy_array"]


def namespace(*arrays: Any):
    """The array-API namespace of the inputs (NumPy, CuPy or torch); mixed inputs raise TypeError."""
    return array_api_compat.array_namespace(*arrays)


def require_ndim(x: Any, name: str, *, at_least: int | None = None, exactly: int | None = None) -> None:
    """``ValueError`` naming ``name`` unless ``x`` has the number of axes a kernel needs."""
    nd = getattr(x, "ndim", None)
    if nd is None:
        raise ValueError(f"{name} must be an array, got {type(x).__name__}")
    if exactly is not None and nd != exactly:
        raise ValueError(f"{name} must have {exactly} axes, got shape {tuple(x.shape)}")
    if at_least is not None and nd < at_least:
        raise ValueError(f"{name} must have at least {at_least} axes, got shape {tuple(x.shape)}")


def check_axis(axis: int, ndim: int, name: str, *, before_last: int = 0) -> int:
    """``axis`` as a non-negative index into ``ndim`` axes; ``ValueError`` naming ``name`` when it does
    not exist or (``before_last=k``) is one of the last ``k`` axes."""
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise ValueError(f"{name} must be an integer axis, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} does not exist in an array of {ndim} axes")
    axis = int(axis) % ndim
    if before_last and axis >= ndim - before_last:
        raise ValueError(f"{name}={axis} must come before the last {before_last} axes of an array of {ndim} axes")
    return axis


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
