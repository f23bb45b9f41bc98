"""Synthetic CT sinogram files (radflow's HDF5 sinogram format), made in code.

``sinogram`` ``(slices, n_detectors, n_angles)`` float32 — parallel-beam projections
of a Shepp–Logan phantom that changes from slice to slice — ``theta`` in degrees, the
phantom itself as ``reference`` ``(slices, n, n)``, and a fake ``patient_id`` attribute.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from radflow.synth.kspace import shepp_logan

__all__ = ["write_sinograms", "radon"]


def radon(image: np.ndarray, theta_deg: np.ndarray) -> np.ndarray:
    """Parallel-beam projections ``(n, n_angles)`` of a square image inside its inscribed circle
    (scikit-image's ``radon`` geometry: rotate, then sum along rows)."""
    from scipy.ndimage import map_coordinates

    n = image.shape[0]
    c = n // 2
    y, x = np.mgrid[:n, :n].astype(np.float64) - c
    out = np.empty((n, len(theta_deg)), np.float32)
    for i, angle in enumerate(np.deg2rad(theta_deg)):
        cos, sin = np.cos(angle), np.sin(angle)
        coords = [-sin * x + cos * y + c, cos * x + sin * y + c]  # rotation about (n // 2, n // 2): rows, cols
        out[:, i] = map_coordinates(image, coords, order=1, mode="constant").sum(axis=0)
    return out


def write_sinograms(root: str | os.PathLike[str], n_files: int = 1, *, slices: int = 3, size: int = 128,
                    angles: int = 180, noise: float = 0.0, seed: int = 0) -> list[str]:
    """Write ``n_files`` sinogram files ``root/sino<k>.h5``; return their paths."""
    import h5py

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    theta = np.linspace(0.0, 180.0, angles, endpoint=False)
    yy, xx = np.mgrid[:size, :size] - size // 2
    inside = (yy**2 + xx**2) <= (size // 2) ** 2
    paths = []
    for f in range(n_files):
        rng = np.random.default_rng([seed, f])
        phantoms = np.stack([shepp_logan(size, -0.6 + 1.2 * s / max(1, slices - 1)) * inside for s in range(slices)])
        sino = np.stack([radon(p, theta) for p in phantoms])
        if noise:
            sino += noise * rng.standard_normal(sino.shape).astype(np.float32)
        path = root / f"sino{f:04d}.h5"
        with h5py.File(path, "w") as h5:
            h5.create_dataset("sinogram", data=sino.astype(np.float32))
            h5.create_dataset("theta", data=theta)
            h5.create_dataset("reference", data=phantoms.astype(np.float32))
            h5.attrs["patient_id"] = f"SYNTH-CT-{seed:03d}-{f:04d}"
        paths.append(str(path))
    return paths
