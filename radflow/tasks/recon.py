"""Reconstruction kernels: CT filtered back-projection and MRI k-space → image.

Both follow established conventions so results can be checked against the reference
libraries: :func:`fbp` takes scikit-image ``iradon``'s conventions (sinogram
``(n_detectors, n_angles)``, ``theta`` in degrees, same filters and geometry); its
``method="interp"`` equals ``iradon`` to rounding, its default Fourier (gridrec) path does
not (see :func:`fbp`), and
:func:`kspace_to_image` matches fastMRI (centred orthonormal 2-D inverse FFT, then
root-sum-of-squares over coils). Inputs may be NumPy, CuPy or torch arrays; the
result is of the same library and on the same device.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import numpy as np

from radflow.tasks._xp import check_axis, device, from_host, is_cupy_array, is_numpy_array, is_torch_array, namespace, require_ndim

__all__ = ["FILTERS", "fourier_filter", "fbp", "kspace_to_image", "ifft2c", "fft2c", "rss", "center_crop"]

FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")
Filter = Literal["ramp", "shepp-logan", "cosine", "hamming", "hann"]


def fourier_filter(size: int, name: Filter | None = "ramp") -> np.ndarray:
    """Frequency response ``(size,)`` float64 of a reconstruction filter.

    The ramp is the DFT of the band-limited spatial-domain ramp kernel (Kak & Slaney,
    ch. 3, eq. 61), which avoids the DC bias of a sampled ``|f|``; the other filters
    are the ramp times a window.
    """
    if size % 2:
        raise ValueError(f"filter size must be even, got {size}")
    kernel = np.zeros(size)
    kernel[0] = 0.25
    odd = np.concatenate([np.arange(1, size // 2 + 1, 2), np.arange(size // 2 - 1, 0, -2)])
    kernel[1::2] = -1.0 / (np.pi * odd) ** 2
    ramp = 2.0 * np.real(np.fft.fft(kernel))
    if name is None:
        return np.ones(size)
    if name == "ramp":
        return ramp
    if name == "shepp-logan":
        omega = np.pi * np.fft.fftfreq(size)[1:]
        ramp[1:] *= np.sin(omega) / omega
        return ramp
    if name == "cosine":
        return ramp * np.fft.fftshift(np.sin(np.linspace(0, np.pi, size, endpoint=False)))
    if name == "hamming":
        return ramp * np.fft.fftshift(np.hamming(size))
    if name == "hann":
        return ramp * np.fft.fftshift(np.hanning(size))
    raise ValueError(f"unknown filter {name!r}; choose from {FILTERS}")


def _filtered_projections(sino: Any, filter_name: Filter | None, circle: bool) -> tuple[Any, int]:
    """Zero-pad, filter in the frequency domain; returns ``(n_angles, n_det')`` real and ``n_det'``."""
    xp = namespace(sino)
    n_det = sino.shape[-2]
    if circle:  # the circle's support extends to the diagonal of the square
        diag = int(np.ceil(np.sqrt(2) * n_det))
        before = diag // 2 - n_det // 2
        n_det = diag
    else:
        before = 0
    padded = max(64, int(2 ** np.ceil(np.log2(2 * n_det))))
    proj = xp.zeros((sino.shape[-1], padded), dtype=sino.dtype, device=device(sino))
    proj[:, before : before + sino.shape[-2]] = xp.permute_dims(sino, (1, 0))
    resp = from_host(fourier_filter(padded, filter_name).astype(np.float32 if sino.dtype == xp.float32 else np.float64), sino)
    filtered = xp.real(xp.fft.ifft(xp.fft.fft(proj, axis=-1) * resp, axis=-1))[:, :n_det]
    return xp.astype(filtered, sino.dtype), n_det


def _backproject_xp(filtered: Any, theta_rad: np.ndarray, out_size: int, chunk: int = 8) -> Any:
    """Vectorized back-projection for any namespace (angles in chunks; no loop over pixels)."""
    xp = namespace(filtered)
    n_ang, n_det = filtered.shape
    radius = out_size // 2
    grid = np.arange(out_size, dtype=np.float64) - radius
    xr = from_host(grid.astype(np.float32)[:, None], filtered)  # first axis
    yr = from_host(grid.astype(np.float32)[None, :], filtered)
    flat = xp.reshape(filtered, (-1,))
    out = xp.zeros((out_size, out_size), dtype=filtered.dtype, device=device(filtered))
    for a0 in range(0, n_ang, chunk):
        a1 = min(n_ang, a0 + chunk)
        c = from_host(np.cos(theta_rad[a0:a1]).astype(np.float32)[:, None, None], filtered)
        s = from_host(np.sin(theta_rad[a0:a1]).astype(np.float32)[:, None, None], filtered)
        t = yr[None] * c - xr[None] * s + float(n_det // 2)
        k = xp.floor(t)
        f = t - k
        k = xp.astype(k, xp.int64)
        inside = (k >= 0) & (k < n_det - 1)
        kc = xp.clip(k, 0, n_det - 2)
        offs = from_host((np.arange(a0, a1, dtype=np.int64) * n_det)[:, None, None], filtered)
        lo = xp.reshape(xp.take(flat, xp.reshape(kc + offs, (-1,))), kc.shape)
        hi = xp.reshape(xp.take(flat, xp.reshape(kc + offs + 1, (-1,))), kc.shape)
        v = lo + xp.astype(f, lo.dtype) * (hi - lo)
        out = out + xp.sum(xp.where(inside, v, xp.zeros_like(v)), axis=0)
    return out


def fbp(
    sinogram: Any,
    theta: Any = None,
    filter: Filter | None = "ramp",
    output_size: int | None = None,
    circle: bool = True,
    *,
    method: Literal["auto", "fourier", "interp"] = "auto",
    backend: Literal["auto", "compiled", "array"] = "auto",
) -> Any:
    """Filtered back-projection (parallel beam), scikit-image ``iradon`` conventions.

    What each method matches: ``interp`` equals ``iradon`` (same filter, linear
    interpolation) to float rounding. ``fourier`` (the CPU default) is a different
    reconstruction of the same data: on a Shepp–Logan phantom of maximum 1.0 it differs
    from ``iradon`` by up to about 0.09 per pixel while its RMSE against the phantom is
    at or below ``iradon``'s in most configurations. Use ``method="interp"`` when results
    must equal scikit-image's.

    Parameters
    ----------
    sinogram : (..., n_detectors, n_angles) float32/float64, NumPy, CuPy or torch
        Leading axes are a batch.
    theta : (n_angles,) angles in degrees; default ``linspace(0, 180, n_angles, endpoint=False)``
    filter : ``ramp``, ``shepp-logan``, ``cosine``, ``hamming``, ``hann`` or None
    output_size : side of the reconstruction; default ``n_detectors`` (circle) or
        ``floor(sqrt(n_detectors**2 / 2))``
    circle : the object lies inside the inscribed circle; outside is set to 0
    method : ``interp`` back-projects with linear interpolation (equal to ``iradon`` to
        rounding); ``fourier`` grids the filtered spectra onto a Cartesian grid
        (gridrec: O(N² log N), CPU; the filter also carries one detector sample's
        aperture response, sinc(ω); on Shepp–Logan phantoms its RMSE is at or below
        ``iradon``'s); ``auto`` picks ``fourier`` on the CPU and ``interp`` on devices
    backend : for ``interp``: ``compiled`` (numba; NumPy and CPU torch), ``array``
        (vectorized in the input's namespace: CuPy, CUDA torch), or ``auto``

    Returns
    -------
    (..., output_size, output_size) reconstruction, same library, device and float dtype.
    """
    require_ndim(sinogram, "sinogram", at_least=2)
    xp = namespace(sinogram)
    if sinogram.ndim > 2:
        lead = sinogram.shape[:-2]
        flat = xp.reshape(sinogram, (-1, *sinogram.shape[-2:]))
        outs = [fbp(flat[i], theta, filter, output_size, circle, method=method, backend=backend) for i in range(flat.shape[0])]
        stacked = xp.stack(outs)
        return xp.reshape(stacked, (*lead, *stacked.shape[-2:]))
    if sinogram.dtype not in (xp.float32, xp.float64):
        sinogram = xp.astype(sinogram, xp.float32)
    n_det, n_ang = sinogram.shape
    theta_deg = np.linspace(0, 180, n_ang, endpoint=False) if theta is None else np.asarray(
        theta.cpu() if is_torch_array(theta) else (theta.get() if is_cupy_array(theta) else theta), dtype=np.float64)
    if theta_deg.shape != (n_ang,):
        raise ValueError(f"theta has {theta_deg.shape[0]} angles, sinogram has {n_ang}")
    if filter is not None and filter not in FILTERS:
        raise ValueError(f"unknown filter {filter!r}; choose from {FILTERS}")
    if output_size is None:
        output_size = n_det if circle else int(np.floor(np.sqrt(n_det**2 / 2.0)))
    theta_rad = np.deg2rad(theta_deg)
    on_cpu = is_numpy_array(sinogram) or (is_torch_array(sinogram) and sinogram.device.type == "cpu")
    if method == "auto":
        method = "fourier" if on_cpu else "interp"
    if method == "fourier":
        if not on_cpu:
            raise ValueError("method='fourier' runs on the CPU; use method='interp' for device arrays")
        img = _fbp_fourier(sinogram.numpy() if is_torch_array(sinogram) else sinogram, theta_rad, filter, output_size, circle)
        img = img.astype(np.float64 if sinogram.dtype == xp.float64 else np.float32, copy=False)
        img = img if is_numpy_array(sinogram) else __import__("torch").from_numpy(img)
    elif method == "interp":
        filtered, _ = _filtered_projections(sinogram, filter, circle)
        if backend == "compiled" or (backend == "auto" and on_cpu):
            if not on_cpu:
                raise ValueError("the compiled back-projection runs on the CPU; use backend='array' for device arrays")
            from radflow.tasks._backproject import backproject_numba

            host = filtered.numpy() if is_torch_array(filtered) else filtered
            img = backproject_numba(host, theta_rad, output_size, circle)
            img = img if is_numpy_array(sinogram) else __import__("torch").from_numpy(img)
        else:
            img = _backproject_xp(filtered, theta_rad, output_size)
    else:
        raise ValueError(f"unknown method {method!r}; choose 'fourier', 'interp' or 'auto'")
    if circle:
        g = np.arange(output_size) - output_size // 2
        outside = from_host((g[:, None] ** 2 + g[None, :] ** 2) > (output_size // 2) ** 2, img)
        img = xp.where(outside, xp.zeros_like(img), img)
    return img * (np.pi / (2 * n_ang))


def _fbp_fourier(sino: np.ndarray, theta_rad: np.ndarray, filter_name: Filter | None, output_size: int, circle: bool) -> np.ndarray:
    """Gridrec path: same padding and filter as the interpolating path, no back-projection loop."""
    import scipy.fft

    from radflow.tasks._gridrec import gridrec

    n_det = sino.shape[0]
    n_pad = int(np.ceil(np.sqrt(2) * n_det)) if circle else n_det
    before = n_pad // 2 - n_det // 2
    padded = max(64, int(2 ** np.ceil(np.log2(2 * n_pad))))
    proj = np.zeros((sino.shape[1], padded), np.float32)
    proj[:, before : before + n_det] = sino.T
    m = padded // 2 + 1
    omega = np.arange(m) / padded
    # One detector sample's aperture (a box, response sinc(ω)): band-limited gridding would otherwise keep
    # the angular-undersampling streaks that linear interpolation (response ≈ sinc²) damps.
    response = fourier_filter(padded, filter_name)[:m] * np.sinc(omega)
    spectra = scipy.fft.rfft(proj, axis=1, workers=-1) * response
    return gridrec(spectra, omega, n_pad // 2, theta_rad, output_size)


# -- MRI -------------------------------------------------------------------------------


def _shift_sign(n: int) -> np.ndarray:
    return np.where(np.arange(n) % 2 == 0, 1.0, -1.0)


@functools.lru_cache(maxsize=16)
def _boards(ny: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
    """Input and output ±1 checkerboards that fold the centring shifts into the transform (even sizes)."""
    board = (_shift_sign(ny)[:, None] * _shift_sign(nx)[None, :]).astype(np.float32)
    sign = (-1.0) ** (ny // 2 + nx // 2)
    return board, (board * sign).astype(np.float32)


def _ifft2c_numpy(kspace: np.ndarray, *, output_phase: bool) -> np.ndarray:
    """For even N: fftshift(ifft(ifftshift(x)))[k] = (-1)^(k + N/2) · ifft((-1)^n · x)[k], per axis.

    The output modulation only flips signs, so magnitude-only callers skip it.
    """
    import scipy.fft

    board, out_board = _boards(*kspace.shape[-2:])
    x = np.multiply(kspace, board, dtype=np.complex64)  # one pass: copy + input modulation
    y = scipy.fft.ifft2(x, norm="ortho", workers=-1, overwrite_x=True)
    if output_phase:
        y *= out_board
    return y


def ifft2c(kspace: Any) -> Any:
    """Centred orthonormal 2-D inverse FFT over the last two axes (fastMRI's ``ifft2c``).

    ``fftshift(ifft2(ifftshift(x), norm="ortho"))``. For even sizes on NumPy the shifts
    are folded into the transform as checkerboard modulations (no shifted copies) and
    the transform runs multi-threaded (``scipy.fft``). Complex64 in, complex64 out.
    """
    require_ndim(kspace, "kspace", at_least=2)
    xp = namespace(kspace)
    ny, nx = kspace.shape[-2:]
    if is_numpy_array(kspace) and ny % 2 == 0 and nx % 2 == 0:
        return _ifft2c_numpy(kspace, output_phase=True)
    if is_cupy_array(kspace):
        import cupy

        cache = cupy.fft.config.get_plan_cache()
        if cache.get_size() > 16:
            cache.set_size(16)  # bound the plan cache on the GPU
    x = xp.fft.ifftshift(kspace, axes=(-2, -1))
    x = xp.fft.ifft2(x, norm="ortho") if hasattr(xp.fft, "ifft2") else xp.fft.ifftn(x, axes=(-2, -1), norm="ortho")
    return xp.fft.fftshift(x, axes=(-2, -1))


def fft2c(image: Any) -> Any:
    """Centred orthonormal 2-D FFT over the last two axes (inverse of :func:`ifft2c`)."""
    require_ndim(image, "image", at_least=2)
    xp = namespace(image)
    x = xp.fft.ifftshift(image, axes=(-2, -1))
    x = xp.fft.fft2(x, norm="ortho") if hasattr(xp.fft, "fft2") else xp.fft.fftn(x, axes=(-2, -1), norm="ortho")
    return xp.fft.fftshift(x, axes=(-2, -1))


def rss(coil_images: Any, axis: int = -3) -> Any:
    """Root-sum-of-squares over ``axis`` of complex coil images; float32 magnitude.

    ``coil_images`` : (..., coils, H, W) complex; ``axis`` must exist and come before the two image axes.
    """
    require_ndim(coil_images, "coil_images", at_least=3)
    xp = namespace(coil_images)
    nd = coil_images.ndim
    axis = check_axis(axis, nd, "axis", before_last=2)
    if is_numpy_array(coil_images) and coil_images.dtype == np.complex64 and (axis % nd) == nd - 3 \
            and coil_images.flags.c_contiguous:
        lead, (c, h, w) = coil_images.shape[:-3], coil_images.shape[-3:]
        f = coil_images.view(np.float32).reshape(-1, c, h * w * 2)  # (batch, coil, re/im interleaved), no copies
        acc = np.zeros((f.shape[0], h * w * 2), np.float32)
        tmp = np.empty(h * w * 2, np.float32)
        for b in range(f.shape[0]):
            for k in range(c):  # accumulate |.|² coil by coil: cache-sized passes, no large temporaries
                np.multiply(f[b, k], f[b, k], out=tmp)
                acc[b] += tmp
        pairs = acc.reshape(f.shape[0], h * w, 2)
        return np.sqrt(pairs[..., 0] + pairs[..., 1]).reshape(*lead, h, w)
    re, im = xp.real(coil_images), xp.imag(coil_images)
    return xp.sqrt(xp.sum(re * re + im * im, axis=axis))


def center_crop(x: Any, shape: tuple[int, int]) -> Any:
    """Centre crop of the last two axes to ``shape`` (fastMRI's ``center_crop``)."""
    require_ndim(x, "x", at_least=2)
    h, w = int(shape[0]), int(shape[1])
    if not (0 < h <= x.shape[-2] and 0 < w <= x.shape[-1]):
        raise ValueError(f"crop {shape} does not fit {tuple(x.shape[-2:])}")
    top = (x.shape[-2] - h) // 2
    left = (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


def kspace_to_image(kspace: Any, coil_axis: int | None = -3, crop: tuple[int, int] | None = None) -> Any:
    """Multi-coil k-space → root-sum-of-squares magnitude image.

    Parameters
    ----------
    kspace : (..., coils, ky, kx) complex64 (NumPy, CuPy or torch); ``coil_axis=None``
        for single-coil ``(..., ky, kx)``
    coil_axis : the coil axis, which must exist and come before the two k-space axes (a 2-D
        k-space with the default ``-3`` is a ``ValueError``, never a silently wrong image);
        ``None``: single coil, magnitude of the inverse FFT
    crop : optional ``(h, w)`` centre crop of the result (fastMRI's 320×320 convention)

    Returns
    -------
    (..., h, w) float32 magnitude, same library and device.
    """
    require_ndim(kspace, "kspace", at_least=2)
    if coil_axis is not None:
        if kspace.ndim < 3:
            raise ValueError(f"coil_axis={coil_axis} does not exist in a k-space of shape {tuple(kspace.shape)}; "
                             "pass coil_axis=None for single-coil (ky, kx) k-space")
        coil_axis = check_axis(coil_axis, kspace.ndim, "coil_axis", before_last=2)
    xp = namespace(kspace)
    if kspace.dtype != xp.complex64:
        kspace = xp.astype(kspace, xp.complex64)
    ny, nx = kspace.shape[-2:]
    if is_numpy_array(kspace) and ny % 2 == 0 and nx % 2 == 0:
        images = _ifft2c_numpy(kspace, output_phase=False)  # magnitudes ignore the output sign flips
    else:
        images = ifft2c(kspace)
    if coil_axis is None:
        re, im = xp.real(images), xp.imag(images)
        out = xp.sqrt(re * re + im * im)
    else:
        out = rss(images, axis=coil_axis)
    return center_crop(out, crop) if crop is not None else out
