"""Synthetic fastMRI-format multi-coil k-space files, made in code.

Each file mimics a fastMRI ``multicoil`` HDF5 file: ``kspace`` ``(slices, coils, ky,
kx)`` complex64, ``reconstruction_rss`` ``(slices, 320, 320)`` float32 (the
root-sum-of-squares reference, centre-cropped), ``ismrmrd_header`` (XML bytes) and
attributes ``acquisition``, ``max``, ``norm``, ``patient_id`` (a fake identifier).
The object is a modified Shepp–Logan phantom that changes from slice to slice, seen
through coils with smooth complex sensitivity maps.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np



def fft2c(image: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2-D FFT over the last two axes (fastMRI's convention), written here with
    NumPy so the synthetic data does not depend on the kernels it tests."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def ifft2c(kspace: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def rss(coil_images: np.ndarray, axis: int) -> np.ndarray:
    return np.sqrt(np.sum(np.abs(coil_images) ** 2, axis=axis))


def center_crop(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    top, left = (x.shape[-2] - shape[0]) // 2, (x.shape[-1] - shape[1]) // 2
    return x[..., top : top + shape[0], left : left + shape[1]]

__all__ = ["shepp_logan", "coil_sensitivities", "write_fastmri"]

# (intensity, semi-axis a, semi-axis b, centre x, centre y, angle in degrees): modified Shepp–Logan (Toft)
_ELLIPSES = (
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0),
    (-0.2, 0.11, 0.31, 0.22, 0.0, -18.0),
    (-0.2, 0.16, 0.41, -0.22, 0.0, 18.0),
    (0.1, 0.21, 0.25, 0.0, 0.35, 0.0),
    (0.1, 0.046, 0.046, 0.0, 0.1, 0.0),
    (0.1, 0.046, 0.046, 0.0, -0.1, 0.0),
    (0.1, 0.046, 0.023, -0.08, -0.605, 0.0),
    (0.1, 0.023, 0.023, 0.0, -0.606, 0.0),
    (0.1, 0.023, 0.046, 0.06, -0.605, 0.0),
)


def shepp_logan(n: int, z: float = 0.0) -> np.ndarray:
    """Modified Shepp–Logan phantom ``(n, n)`` float32 in [0, 1]; ``z`` in [-1, 1] shrinks it like a slice
    through an ellipsoid."""
    y, x = np.mgrid[1 : -1 : n * 1j, -1 : 1 : n * 1j]
    scale = np.sqrt(max(0.05, 1.0 - 0.6 * z * z))
    img = np.zeros((n, n))
    for value, a, b, x0, y0, phi in _ELLIPSES:
        t = np.deg2rad(phi)
        xr = (x - x0 * scale) * np.cos(t) + (y - y0 * scale) * np.sin(t)
        yr = -(x - x0 * scale) * np.sin(t) + (y - y0 * scale) * np.cos(t)
        img[(xr / (a * scale)) ** 2 + (yr / (b * scale)) ** 2 <= 1] += value
    return np.clip(img, 0, None).astype(np.float32)


def coil_sensitivities(coils: int, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Smooth complex sensitivity maps ``(coils, H, W)`` complex64 of coils placed around the object."""
    h, w = shape
    y, x = np.mgrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
    maps = []
    for c in range(coils):
        ang = 2 * np.pi * c / coils + rng.uniform(-0.2, 0.2)
        cx, cy = 1.2 * np.cos(ang), 1.2 * np.sin(ang)
        mag = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 0.8**2))
        phase = np.exp(1j * (rng.uniform(-np.pi, np.pi) + 0.5 * (x * np.cos(ang) + y * np.sin(ang))))
        maps.append(mag * phase)
    maps = np.stack(maps)
    return (maps / np.sqrt((np.abs(maps) ** 2).sum(0)).max()).astype(np.complex64)


def _header(ky: int, kx: int, crop: tuple[int, int], slices: int) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">'
        "<acquisitionSystemInformation><systemFieldStrength_T>3.0</systemFieldStrength_T></acquisitionSystemInformation>"
        f"<encoding><encodedSpace><matrixSize><x>{kx}</x><y>{ky}</y><z>1</z></matrixSize></encodedSpace>"
        f"<reconSpace><matrixSize><x>{crop[1]}</x><y>{crop[0]}</y><z>1</z></matrixSize></reconSpace>"
        f"<encodingLimits><slice><maximum>{slices - 1}</maximum></slice></encodingLimits></encoding>"
        "</ismrmrdHeader>"
    ).encode()


def write_fastmri(
    root: str | os.PathLike[str], n_files: int = 2, *, slices: int = 4, coils: int = 4,
    shape: tuple[int, int] = (384, 384), crop: tuple[int, int] = (320, 320), noise: float = 0.002, seed: int = 0,
) -> list[str]:
    """Write ``n_files`` fastMRI-format files ``root/file<k>.h5``; return their paths."""
    import h5py

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in range(n_files):
        rng = np.random.default_rng([seed, f])
        maps = coil_sensitivities(coils, shape, rng)
        kspace = np.empty((slices, coils, *shape), np.complex64)
        for s in range(slices):
            z = -0.8 + 1.6 * s / max(1, slices - 1)
            img = shepp_logan(shape[0], z)[:, : shape[1]] if shape[0] >= shape[1] else shepp_logan(shape[1], z)[: shape[0]]
            k = fft2c(maps * img[None])
            k += noise * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
            kspace[s] = k.astype(np.complex64)
        ref = center_crop(rss(ifft2c(kspace), axis=1), crop).astype(np.float32)
        path = root / f"file{f:04d}.h5"
        with h5py.File(path, "w") as h5:
            h5.create_dataset("kspace", data=kspace)
            h5.create_dataset("reconstruction_rss", data=ref)
            h5.create_dataset("ismrmrd_header", data=np.bytes_(_header(*shape, crop, slices)))
            h5.attrs["acquisition"] = "CORPD_FBK"
            h5.attrs["max"] = float(ref.max())
            h5.attrs["norm"] = float(np.linalg.norm(ref))
            h5.attrs["patient_id"] = f"SYNTH-MR-{seed:03d}-{f:04d}"
        paths.append(str(path))
    return paths
