"""Preprocessing kernels: raw stored frame → analysis-ready canvas.

Every function takes the array namespace from its input and returns an array of the
same library on the same device (NumPy in, NumPy out; CuPy in, CuPy out; torch in,
torch out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from radflow.tasks._xp import device, from_host, namespace, quantiles, require_ndim

__all__ = [
    "FrameParams",
    "Enhancements",
    "enhance",
    "apply_modality_lut",
    "invert",
    "window",
    "percentile_normalize",
    "resize",
    "fit_geometry",
    "pad_to_canvas",
    "to_grayscale",
    "prepare_frame",
]

Method = Literal["area", "bilinear", "bicubic"]


@dataclass(frozen=True)
class Enhancements:
    """Optional steps applied to the normalized, resized frame (before padding)."""

    denoise: Literal["none", "gaussian", "median"] = "none"
    denoise_size: float = 1.0
    enhance: Literal["none", "equalize", "clahe"] = "none"
    clahe_clip: float = 0.01
    unsharp_amount: float = 0.0


@dataclass(frozen=True)
class FrameParams:
    """What preprocessing needs to know about one stored frame (from ``instances``)."""

    rows: int
    cols: int
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    window_center: float = float("nan")
    window_width: float = float("nan")
    monochrome1: bool = False
    modality_lut: tuple[int, Any] | None = None  # (first stored value mapped, LUT data): replaces the rescale
    voi_lut: tuple[int, int, Any] | None = None  # (first mapped, bits, data): replaces window/percentiles


def apply_modality_lut(x: Any, slope: float, intercept: float) -> Any:
    """Linear modality LUT ``x * slope + intercept`` as float32 (units: modality units)."""
    xp = namespace(x)
    y = xp.astype(x, xp.float32)
    if slope != 1.0:
        y = y * float(slope)
    if intercept != 0.0:
        y = y + float(intercept)
    return y


def invert(x: Any) -> Any:
    """MONOCHROME1 → MONOCHROME2 for values normalized to [0, 1]: ``1 - x``."""
    return 1.0 - x


def window(x: Any, center: float, width: float) -> Any:
    """DICOM linear VOI window (PS3.3 C.11.2.1.2.1) mapped to [0, 1], float32."""
    if not (width > 1):
        raise ValueError(f"window width must be > 1, got {width}")
    xp = namespace(x)
    y = (x - (float(center) - 0.5)) / (float(width) - 1.0) + 0.5
    return xp.clip(y, 0.0, 1.0)


def percentile_normalize(x: Any, lo: float = 0.5, hi: float = 99.5) -> Any:
    """Map the ``lo``–``hi`` percentile range of ``x`` to [0, 1] and clip."""
    xp = namespace(x)
    q = quantiles(x, [lo / 100.0, hi / 100.0])
    a, b = float(q[0]), float(q[1])
    if b <= a:
        return xp.zeros_like(x)
    return xp.clip((x - a) / (b - a), 0.0, 1.0)


def _kernel_weights(in_len: int, out_len: int, method: Method, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """Separable resampling taps: ``(out_len, K)`` input indices and weights (rows sum to 1).

    Pixel ``i`` covers ``[i, i + 1)``; output pixel ``j`` is centred at
    ``(j + 0.5) * in_len / out_len``. With anti-aliasing the kernel is stretched by the
    downscale factor (PIL's convention); ``area`` uses exact overlap lengths.
    """
    scale = in_len / out_len
    stretch = max(scale, 1.0) if antialias else 1.0
    centers = (np.arange(out_len, dtype=np.float64) + 0.5) * scale
    radius = {"area": 0.5, "bilinear": 1.0, "bicubic": 2.0}[method] * stretch
    first = np.floor(centers - radius).astype(np.int64)
    k = int(math.ceil(2 * radius)) + 2
    idx = first[:, None] + np.arange(k)[None, :]
    if method == "area":
        half = 0.5 * stretch
        w = np.clip(np.minimum(idx + 1, centers[:, None] + half) - np.maximum(idx, centers[:, None] - half), 0, None)
    else:
        t = np.abs((idx + 0.5 - centers[:, None]) / stretch)
        if method == "bilinear":
            w = np.clip(1.0 - t, 0, None)
        else:  # Keys cubic, a = -0.5
            a = -0.5
            w = np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1, np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))
    w = np.where((idx >= 0) & (idx < in_len), w, 0.0)
    w /= w.sum(axis=1, keepdims=True)
    return np.clip(idx, 0, in_len - 1), w.astype(np.float32)


def _resample_axis(x: Any, axis: int, out_len: int, method: Method, antialias: bool) -> Any:
    xp = namespace(x)
    in_len = x.shape[axis]
    if in_len == out_len:
        return x
    idx, w = _kernel_weights(in_len, out_len, method, antialias)
    keep = np.abs(w).sum(axis=0) > 0  # drop taps that are zero for every output
    idx, w = idx[:, keep], w[:, keep]
    shape = [1] * x.ndim
    shape[axis] = out_len
    out = None
    floating = xp.isdtype(x.dtype, "real floating")
    for k in range(idx.shape[1]):
        taken = xp.take(x, from_host(idx[:, k], x), axis=axis)
        if not floating:  # stored integers: float32 from the taken rows on (never a float copy of the whole input)
            taken = xp.astype(taken, xp.float32)
        wk = xp.reshape(from_host(w[:, k], x), tuple(shape))
        out = taken * wk if out is None else out + taken * wk
    return out


def resize(x: Any, shape: tuple[int, int], method: Method = "area", *, antialias: bool = True) -> Any:
    """Resize the last two axes of ``x`` to ``shape`` (separable, anti-aliased).

    Parameters
    ----------
    x : (..., H, W) float array, or integer (resampled as float32), of NumPy, CuPy or torch
    shape : (out_H, out_W)
    method : ``area`` (exact box overlap), ``bilinear`` (triangle) or ``bicubic`` (Keys, a=-0.5)

    Returns
    -------
    (..., out_H, out_W) array of ``x``'s library and dtype (float32 for integer ``x``; an axis already of
    its size is passed through as it is).
    """
    require_ndim(x, "x", at_least=2)
    if len(shape) != 2 or min(int(shape[0]), int(shape[1])) < 1:
        raise ValueError(f"shape must be two positive sizes (out_H, out_W), got {tuple(shape)}")
    y = _resample_axis(x, x.ndim - 2, int(shape[0]), method, antialias)
    return _resample_axis(y, y.ndim - 1, int(shape[1]), method, antialias)


def fit_geometry(rows: int, cols: int, canvas: int) -> tuple[int, int, int, int]:
    """Aspect-preserving fit of a ``rows × cols`` frame into a square canvas.

    Returns ``(height, width, top, left)`` of the content inside the canvas.
    """
    scale = canvas / max(rows, cols)
    h = max(1, min(canvas, int(round(rows * scale))))
    w = max(1, min(canvas, int(round(cols * scale))))
    return h, w, (canvas - h) // 2, (canvas - w) // 2


def pad_to_canvas(x: Any, canvas: int, top: int, left: int) -> Any:
    """Place 2-D ``x`` at ``(top, left)`` on a zero ``canvas × canvas`` of its library."""
    require_ndim(x, "x", exactly=2)
    if top < 0 or left < 0 or top + x.shape[0] > canvas or left + x.shape[1] > canvas:
        raise ValueError(f"a {tuple(x.shape)} frame at ({top}, {left}) does not fit a {canvas}x{canvas} canvas")
    xp = namespace(x)
    out = xp.zeros((canvas, canvas), dtype=x.dtype, device=device(x))
    out[top : top + x.shape[0], left : left + x.shape[1]] = x
    return out


def to_grayscale(x: Any) -> Any:
    """(H, W, 3) RGB → (H, W) luminance (ITU-R BT.601 weights); 2-D input passes through."""
    if getattr(x, "ndim", None) not in (2, 3):
        raise ValueError(f"x must be (H, W) or (H, W, samples), got shape {tuple(getattr(x, 'shape', ()))}")
    if x.ndim == 2:
        return x
    xp = namespace(x)
    x = xp.astype(x, xp.float32)
    if x.shape[-1] == 3:
        return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    return xp.mean(x, axis=-1)


def enhance(x: Any, opts: Enhancements) -> Any:
    """Denoise, then enhance contrast, then sharpen a [0, 1] frame, as ``opts`` says."""
    from radflow.tasks import contrast, filters

    xp = namespace(x)
    if opts.denoise == "gaussian":
        x = filters.gaussian(x, opts.denoise_size)
    elif opts.denoise == "median":
        x = filters.median(x, int(opts.denoise_size) | 1)
    if opts.enhance == "equalize":
        x = contrast.equalize_hist(x)
    elif opts.enhance == "clahe":
        x = contrast.clahe(x, clip_limit=opts.clahe_clip)
    if opts.unsharp_amount > 0:
        x = filters.unsharp_mask(x, 2.0, opts.unsharp_amount, clip=(0.0, 1.0))
    return xp.astype(x, xp.float32)


def prepare_frame(frame: Any, params: FrameParams, canvas: int, method: Method = "area",
                  enhancements: Enhancements | None = None) -> Any:
    """Stored frame → analysis-ready canvas.

    Steps: crop to native size, modality LUT (LUT sequence or rescale), VOI LUT sequence
    if any, aspect-preserving resize, window (the header's first VOI window, if any) or
    0.5–99.5 percentile normalization,
    MONOCHROME1 inversion, optional :class:`Enhancements`, zero padding. Without a LUT
    sequence the rescale, linear, comes after the resize (same values, no full-size copy).

    Parameters
    ----------
    frame : (H, W) or (H, W, C) array as stored (possibly padded beyond rows/cols)
    params : FrameParams
    canvas : side of the output

    Returns
    -------
    (canvas, canvas) float32 in [0, 1], same library and device as ``frame``.
    """
    from radflow.tasks.contrast import apply_lut

    xp = namespace(frame)
    x = frame[: params.rows, : params.cols]
    x = to_grayscale(x)
    h, w, top, left = fit_geometry(params.rows, params.cols, canvas)
    if params.modality_lut is None and params.voi_lut is None:
        # a linear modality LUT commutes with the resize (its weights sum to one): rescaling the resized
        # frame gives the same values without a float32 copy of the full-size frame (30 MB for a 14-inch
        # detector's 3,000 × 2,500 pixels, per frame in flight)
        x = apply_modality_lut(resize(x, (h, w), method), params.rescale_slope, params.rescale_intercept)
    else:
        if params.modality_lut is not None:
            x = xp.astype(apply_lut(x, params.modality_lut[1], params.modality_lut[0]), xp.float32)
        else:
            x = apply_modality_lut(x, params.rescale_slope, params.rescale_intercept)
        if params.voi_lut is not None:  # a VOI LUT is non-linear: applied at full resolution, output scaled to [0, 1]
            first, bits, data = params.voi_lut
            x = xp.astype(apply_lut(xp.floor(x), data, first), xp.float32) / float(2**bits - 1)
        x = resize(x, (h, w), method)
    if params.voi_lut is not None:
        x = xp.clip(x, 0.0, 1.0)
    elif params.window_width == params.window_width and params.window_width > 1:
        x = window(x, params.window_center, params.window_width)
    else:
        x = percentile_normalize(x)
    if params.monochrome1:
        x = invert(x)
    if enhancements is not None and enhancements != Enhancements():
        x = enhance(x, enhancements)
    return pad_to_canvas(x, canvas, top, left)
