"""A realistic synthetic chest-radiograph archive, deterministic for a seed.

The archive mimics what a PACS export looks like: patients with studies and series,
CR and DX objects, MONOCHROME1 and MONOCHROME2, 10–16 stored bits, sizes from 512 to
3000 px a side, some with rescale slope/intercept and window centre/width, several
transfer syntaxes, fake identifying values, and a few broken files. About a third of
the images hold a synthetic lesion (a soft round opacity in a lung field), listed
in ``labels.csv`` so inference can be scored.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import logging
import os
from collections import Counter
from typing import Callable, Iterable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.utils import compress
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    PYDICOM_IMPLEMENTATION_UID,
    generate_uid,
)

__all__ = ["chest_radiograph", "write_archive", "SynthSummary", "SIZES"]

log = logging.getLogger(__name__)

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"

#: (rows, cols) of the generated radiographs; 512 to 3000 px a side.
SIZES = ((512, 512), (1024, 1024), (1536, 1280), (2048, 2048), (2500, 2048), (3000, 2500))
_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless, JPEG2000Lossless)
_SYNTAX_WEIGHTS = (0.35, 0.2, 0.1, 0.2, 0.15)


@dataclasses.dataclass
class SynthSummary:
    dicom: str
    images: int
    lesions: int
    broken: int
    bytes: int
    syntaxes: dict[str, int]
    labels: str


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2


def chest_radiograph(
    rows: int, cols: int, rng: np.random.Generator, *, lesion: tuple[float, float, float] | None = None,
    lesion_contrast: float = 0.3,
) -> np.ndarray:
    """A synthetic frontal chest radiograph.

    Parameters
    ----------
    rows, cols : int
        Output size in pixels.
    rng : numpy.random.Generator
    lesion : (row, col, radius) in fractions of the image height, or None
    lesion_contrast : peak added intensity of the lesion (the lung fields are ~0.25)

    Returns
    -------
    (rows, cols) float32 in [0, 1]; brighter is more attenuating (MONOCHROME2 sense).
    """
    # Anatomy at low resolution (smooth), then upsampled; texture and noise at full size.
    lr, lc = max(64, rows // 4), max(64, cols // 4)
    yy, xx = np.mgrid[0:lr, 0:lc].astype(np.float32)
    yy /= lr
    xx /= lc
    jitter = rng.normal(0, 0.015, 8)
    img = np.full((lr, lc), 0.05, np.float32)
    body = _ellipse(yy, xx, 0.6, 0.5, 0.75, 0.46 + jitter[0])
    img = np.where(body < 1, 0.55 + 0.1 * (1 - body), img)
    for side, cx in ((-1, 0.32 + jitter[1]), (1, 0.68 + jitter[2])):
        lung = _ellipse(yy, xx, 0.47 + jitter[3], cx, 0.3 + jitter[4], 0.15)
        img = np.where(lung < 1, 0.22 + 0.12 * lung, img)
    heart = _ellipse(yy, xx, 0.62, 0.56 + jitter[5], 0.15, 0.13)
    img = np.where(heart < 1, 0.62 + 0.05 * (1 - heart), img)
    spine = np.exp(-(((xx - 0.5 - jitter[6] * 0.3) / 0.035) ** 2)) * (yy > 0.1)
    img = img + 0.18 * spine
    from scipy.ndimage import zoom

    img = zoom(img, (rows / lr, cols / lc), order=1)[:rows, :cols]
    y = np.linspace(0, 1, rows, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, cols, dtype=np.float32)[None, :]
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * (y * 9.0 + 2.0 * (x - 0.5) ** 2) + jitter[7] * 10)
    lungmask = ((img > 0.15) & (img < 0.4)).astype(np.float32)
    img = img + 0.06 * ribs**4 * lungmask
    if lesion is not None:
        r0, c0, rad = lesion
        d2 = ((y - r0) ** 2 + ((x - c0) * cols / rows) ** 2) / (rad**2)
        img = img + lesion_contrast * np.exp(-d2 * 2.0)
    img += rng.normal(0, 0.015, (rows, cols)).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def _lesion_site(rng: np.random.Generator) -> tuple[float, float, float]:
    cx = rng.choice([0.32, 0.68]) + rng.uniform(-0.06, 0.06)
    return float(rng.uniform(0.3, 0.62)), float(cx), float(rng.uniform(0.04, 0.08))


def _base_dataset(sop_class: str, sop_uid: str, ts: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    return ds


def _patient(ds: Dataset, p: int, birth: str, sex: str) -> None:
    ds.PatientName = f"SYNTH^PATIENT^{p:05d}"
    ds.PatientID = f"SYN{p:07d}"
    ds.PatientBirthDate = birth
    ds.PatientSex = sex
    ds.InstitutionName = "Synthetic General Hospital"
    ds.ReferringPhysicianName = "SYNTH^REFERRER"


def _plan(n: int, seed: int, sizes: tuple[tuple[int, int], ...], lesion_fraction: float) -> list[dict]:
    """Everything random about the archive except the pixels, drawn in one sequence."""
    rng = np.random.default_rng(seed)
    specs: list[dict] = []
    patient = 0
    while len(specs) < n:
        patient += 1
        split = "test" if rng.random() < 0.3 else "train"
        birth = (_dt.date(1940, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 60 * 365)))).strftime("%Y%m%d")
        sex = str(rng.choice(["F", "M"]))
        for study in range(int(rng.integers(1, 3))):
            date = (_dt.date(2015, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 3000)))).strftime("%Y%m%d")
            for inst in range(int(rng.integers(1, 3))):
                if len(specs) >= n:
                    break
                i = len(specs)
                has_lesion = bool(rng.random() < lesion_fraction)
                specs.append(
                    {
                        "i": i, "seed": seed, "patient": patient, "study": study, "instance": inst, "split": split,
                        "birth": birth, "sex": sex, "date": date,
                        "study_uid": generate_uid(entropy_srcs=[f"synth-{seed}-study-{patient}-{study}"]),
                        "series_uid": generate_uid(entropy_srcs=[f"synth-{seed}-series-{patient}-{study}"]),
                        "sop_uid": generate_uid(entropy_srcs=[f"synth-{seed}-sop-{i}"]),
                        "size": sizes[int(rng.integers(len(sizes)))],
                        "lesion": _lesion_site(rng) if has_lesion else None,
                        "syntax": str(_SYNTAXES[int(rng.choice(len(_SYNTAXES), p=_SYNTAX_WEIGHTS))]),
                        "modality": str(rng.choice(["CR", "DX"])),
                        "mono1": bool(rng.random() < 0.3),
                        "bits": int(rng.choice([10, 12, 14, 16])),
                        "rescale": bool(rng.random() < 0.3),
                        "window": bool(rng.random() < 0.5),
                        "view": str(rng.choice(["PA", "AP"])),
                    }
                )
    return specs


def _write_one(spec: dict, dicom: str) -> tuple[str, int, str, dict]:
    """Render and write one radiograph; return ``(relative path, bytes, syntax name, label row)``."""
    rng = np.random.default_rng([spec["seed"], spec["i"]])
    rows, cols = spec["size"]
    site = spec["lesion"]
    ts = pydicom.uid.UID(spec["syntax"])
    bits = spec["bits"]
    img = chest_radiograph(rows, cols, rng, lesion=site)
    maxval = (1 << bits) - 1
    pix = np.round(img * maxval).astype(np.uint16)
    if spec["mono1"]:
        pix = (maxval - pix).astype(np.uint16)
    modality = spec["modality"]
    ds = _base_dataset(CR_STORAGE if modality == "CR" else DX_STORAGE, spec["sop_uid"], ExplicitVRLittleEndian)
    _patient(ds, spec["patient"], spec["birth"], spec["sex"])
    ds.StudyInstanceUID = spec["study_uid"]
    ds.SeriesInstanceUID = spec["series_uid"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = spec["date"]
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"ACC{spec['patient']:05d}{spec['study']}"
    ds.StudyID = f"{spec['study'] + 1}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = spec["instance"] + 1
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = spec["view"]
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if spec["mono1"] else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.ImagerPixelSpacing = [round(430.0 / rows, 4), round(430.0 / rows, 4)]
    slope, intercept = (0.5, 10.0) if spec["rescale"] else (1.0, 0.0)
    if spec["rescale"]:
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "US"
    if spec["window"]:  # a VOI window, in modality (rescaled) units
        lo, hi = np.percentile(pix[::8, ::8] * slope + intercept, [1, 99])
        ds.WindowCenter = f"{(lo + hi) / 2:.1f}"
        ds.WindowWidth = f"{max(hi - lo, 2):.1f}"
    if ts in (RLELossless, JPEG2000Lossless):
        compress(ds, ts, pix, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    else:
        ds.PixelData = pix.tobytes()
        ds.file_meta.TransferSyntaxUID = ts
    rel = f"p{spec['patient']:05d}/s{spec['study']}/{spec['i']:06d}.dcm"
    path = Path(dicom) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    label = {
        "path": rel,
        "sop_instance_uid": spec["sop_uid"],
        "lesion": int(site is not None),
        "lesion_row": "" if site is None else round(site[0], 4),
        "lesion_col": "" if site is None else round(site[1], 4),
        "lesion_radius": "" if site is None else round(site[2], 4),
        "split": spec["split"],
    }
    return rel, path.stat().st_size, ts.name, label


def write_archive(
    root: str | os.PathLike[str],
    n: int = 200,
    *,
    seed: int = 0,
    sizes: tuple[tuple[int, int], ...] = SIZES,
    broken: bool = True,
    lesion_fraction: float = 1 / 3,
    map_fn: Callable[..., Iterable] = map,
) -> SynthSummary:
    """Write ``n`` synthetic radiographs (plus a few broken files) under ``root``.

    Layout: ``root/dicom/p<patient>/s<study>/<instance>.dcm``, broken files under
    ``root/dicom/broken/``, and ``root/labels.csv`` (one row per image: ``path``
    relative to ``root/dicom``, ``sop_instance_uid, lesion, lesion_row, lesion_col,
    lesion_radius, split``). With ``broken=True`` the archive also holds
    ``max(3, n // 40)`` broken files: truncated, not DICOM, and a non-image
    structured report. ``map_fn`` (e.g. an executor's ``map``) renders images in
    parallel; the archive is identical whatever it is.

    Returns
    -------
    SynthSummary
    """
    root = Path(root)
    dicom = root / "dicom"
    dicom.mkdir(parents=True, exist_ok=True)
    specs = _plan(n, seed, sizes, lesion_fraction)
    results = list(map_fn(_write_one, specs, [str(dicom)] * len(specs)))
    labels = [r[3] for r in results]
    syntaxes = Counter(r[2] for r in results)
    total = sum(r[1] for r in results)
    n_lesions = sum(lab["lesion"] for lab in labels)
    written = len(results)
    paths = [dicom / r[0] for r in results]
    rng = np.random.default_rng([seed, n, 7])
    n_broken = 0
    if broken and paths:
        bdir = dicom / "broken"
        bdir.mkdir(exist_ok=True)
        for k in range(max(3, n // 40)):
            kind = k % 3
            if kind == 0:  # truncated in the middle of the pixel data
                src = paths[k % len(paths)].read_bytes()
                (bdir / f"truncated_{k}.dcm").write_bytes(src[: len(src) // 2])
            elif kind == 1:  # not DICOM at all
                (bdir / f"not_dicom_{k}.dcm").write_bytes(rng.bytes(4096))
            else:  # a structured report: DICOM without pixel data
                sr = _base_dataset(SR_STORAGE, generate_uid(entropy_srcs=[f"synth-{seed}-sr-{k}"]), ExplicitVRLittleEndian)
                _patient(sr, 1, "19700101", "O")
                sr.Modality = "SR"
                sr.StudyInstanceUID = generate_uid(entropy_srcs=[f"synth-{seed}-srstudy-{k}"])
                sr.SeriesInstanceUID = generate_uid(entropy_srcs=[f"synth-{seed}-srseries-{k}"])
                sr.ValueType = "CONTAINER"
                sr.save_as(bdir / f"report_{k}.dcm", enforce_file_format=True)
            n_broken += 1
    labels_path = root / "labels.csv"
    with open(labels_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(labels[0]) if labels else ["path"])
        w.writeheader()
        w.writerows(labels)
    return SynthSummary(str(dicom), written, n_lesions, n_broken, total, dict(syntaxes), str(labels_path))
