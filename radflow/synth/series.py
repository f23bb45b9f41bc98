"""Synthetic CT series (one DICOM file per slice) with known geometry, made in code.

Files are named in shuffled order and carry misleading InstanceNumbers, so a reader that
sorts by name or InstanceNumber gets the wrong volume; the right order is by
ImagePositionPatient along the slice normal.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = ["ct_phantom", "write_ct_series"]

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def ct_phantom(slices: int, size: int) -> np.ndarray:
    """``(slices, size, size)`` int16 stored values: a sphere plus a per-slice ramp that makes order visible."""
    z, y, x = np.mgrid[:slices, :size, :size].astype(np.float32)
    r = np.sqrt(((z - slices / 2) / (slices / 2)) ** 2 + ((y - size / 2) / (size / 3)) ** 2 + ((x - size / 2) / (size / 3)) ** 2)
    return (1024 + 400 * (r < 1) + 10 * z).astype(np.int16)


def write_ct_series(root: str | os.PathLike[str], *, slices: int = 12, size: int = 64, spacing: float = 2.5,
                    pixel: float = 0.8, origin: tuple[float, float, float] = (-25.0, -25.0, -100.0),
                    skip: tuple[int, ...] = (), duplicate: int | None = None, seed: int = 0,
                    offsets: tuple[float, ...] | None = None, tilt: float = 0.0) -> tuple[list[str], np.ndarray]:
    """Write one axial CT series; return ``(paths, expected volume in z order)``.

    ``skip`` leaves slices out (missing slices); ``duplicate`` writes a second instance at
    that slice's position with different pixels (the first one stored should win).
    ``offsets`` gives each slice's table position in mm (uneven spacing; default
    ``k * spacing``); ``tilt`` (degrees) tilts the image plane about the x axis as a tilted
    gantry does, while the table still moves along z.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    vol = ct_phantom(slices, size)
    study, series, frame = (generate_uid(entropy_srcs=[f"ct-{seed}-{k}"]) for k in ("study", "series", "for"))
    kept = [k for k in range(slices) if k not in skip]
    order = rng.permutation(len(kept))
    paths = []
    items = [(k, vol[k]) for k in kept] + ([(duplicate, vol[duplicate] + 7)] if duplicate is not None else [])
    for n, (k, pix) in enumerate(items):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CT_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"ct-{seed}-sop-{n}"])
        ds.PatientID, ds.PatientName = f"CT{seed:04d}", "SYNTH^CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.InstanceNumber = int(rng.integers(1, 1000))  # misleading on purpose
        ds.AcquisitionNumber = 1
        t = np.deg2rad(tilt)
        ds.ImageOrientationPatient = [1, 0, 0, 0, round(float(np.cos(t)), 6), round(float(np.sin(t)), 6)]
        z = offsets[k] if offsets is not None else k * spacing
        ds.ImagePositionPatient = [origin[0], origin[1], round(origin[2] + z, 4)]
        ds.PixelSpacing = [pixel, pixel]
        ds.SliceThickness = spacing
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = pix.astype(np.int16).tobytes()
        path = root / f"slice_{int(order[n]) if n < len(order) else n:04d}_{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(str(path))
    return paths, vol[kept]
