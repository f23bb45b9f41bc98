"""A synthetic corpus with a distinct canary value in every attribute of DICOM PS3.15 Table E.1-1.

Used to prove that nothing identifying survives into what radflow writes: every text value
starts with ``CANARY``, every UID with :data:`CANARY_UID_ROOT`, every date is
:data:`CANARY_DATE`; a byte scan of the outputs must find none of them.

Per file: every table attribute with a textual VR (binary VRs — OB, US — cannot carry a
distinctive text value, and command-set elements cannot appear in a file; both are listed
in ``skipped``), each sequence attribute with an item
that holds table attributes again (a nested Person Name and Referenced SOP Instance UID),
private elements (one block removed, one block in the safe allowlist), overlay comments and
curve data. Patients: ``n_patients``; studies on several dates so that date intervals can
be checked after shifting. Broken variants carry the same canaries, so that the message of
every rejection is scanned too.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

__all__ = ["CanaryCorpus", "write_canary_corpus", "CANARY_TEXT", "CANARY_UID_ROOT", "CANARY_DATE", "SAFE_PRIVATE"]

CANARY_TEXT = "CANARY"
CANARY_UID_ROOT = "1.2.826.0.1.3680043.10.4242."
CANARY_DATE = "19230417"
CANARY_TIME = "231415.1234"
CANARY_NUMBER = "98765.4321"
CANARY_AGE = "093Y"
SAFE_PRIVATE = ("0011,xx01,RADFLOW SAFE", "SAFE-PRIVATE-VALUE")  # (allowlist entry, its value)
_SC = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
_DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


@dataclass
class CanaryCorpus:
    root: str
    files: list[str] = field(default_factory=list)
    canaried: list[str] = field(default_factory=list)  # table attributes that carry a canary
    skipped: list[str] = field(default_factory=list)  # table attributes with a binary VR (no canary)
    study_dates: dict[str, list[str]] = field(default_factory=dict)  # patient canary id → StudyDate per file

    @property
    def patterns(self) -> list[bytes]:
        """Byte patterns the scan looks for (none may appear in any output)."""
        return [CANARY_TEXT.encode(), CANARY_UID_ROOT.encode(), CANARY_DATE.encode(), CANARY_TIME[:6].encode(),
                CANARY_NUMBER.encode(), CANARY_AGE.encode()]


def _value(vr: str, n: int):
    if vr in ("LO", "SH", "ST", "LT", "UT", "UC", "PN", "CS", "AE"):
        return f"{CANARY_TEXT}{n:03d}"
    if vr == "UR":
        return f"https://example.invalid/{CANARY_TEXT}{n:03d}"
    if vr == "UI":
        return f"{CANARY_UID_ROOT}{n}"
    return {"DA": CANARY_DATE, "TM": CANARY_TIME, "DT": CANARY_DATE + CANARY_TIME, "DS": CANARY_NUMBER,
            "IS": "987654321", "AS": CANARY_AGE}.get(vr)


def _nested_item(n: int) -> Dataset:
    item = Dataset()
    item.PersonName = f"{CANARY_TEXT}SQ{n:03d}"
    item.ReferencedSOPClassUID = _SC
    item.ReferencedSOPInstanceUID = f"{CANARY_UID_ROOT}9{n}"
    return item


def canary_dataset(patient: int, study: int, study_date: str) -> tuple[Dataset, list[str], list[str]]:
    """One secondary-capture image whose every Table E.1-1 attribute holds a canary."""
    from radflow.dicom.deid import annex_e_rules

    ds = Dataset()
    canaried, skipped = [], []
    for n, (tag, rule) in enumerate(sorted(annex_e_rules().items())):
        if tag >> 16 in (0x0000, 0x0002, 0xFFFA, 0xFFFC):
            skipped.append(rule.name)  # command set / signatures / padding: not stored in files' datasets
            continue
        try:
            vr = pydicom.datadict.dictionary_VR(tag)
        except KeyError:
            skipped.append(rule.name)
            continue
        if vr == "SQ":
            ds.add_new(tag, "SQ", Sequence([_nested_item(n)]))
        elif (value := _value(vr, n)) is not None:
            ds.add_new(tag, vr, value)
        else:
            skipped.append(rule.name)
            continue
        canaried.append(rule.name)
    uid = f"{CANARY_UID_ROOT}{patient}.{study}"
    ds.PatientID = f"{CANARY_TEXT}PID{patient}"
    ds.StudyInstanceUID = uid + ".1"
    ds.SeriesInstanceUID = uid + ".2"
    ds.SOPInstanceUID = uid + ".3"
    ds.StudyDate = study_date
    ds.SOPClassUID = _DX
    ds.Modality = "DX"
    ds.BurnedInAnnotation = "NO"
    # private: one block removed, one kept by the allowlist
    ds.add_new(0x00090010, "LO", f"{CANARY_TEXT} CREATOR")
    ds.add_new(0x00091001, "LO", f"{CANARY_TEXT}PRIVATE")
    ds.add_new(0x00110010, "LO", "RADFLOW SAFE")
    ds.add_new(0x00111001, "LO", SAFE_PRIVATE[1])
    ds.add_new(0x00111002, "LO", f"{CANARY_TEXT}PRIVATE2")  # same creator, not allowlisted
    ds.add_new(0x60004000, "LT", f"{CANARY_TEXT}OVERLAY")  # overlay comments
    ds.add_new(0x50000022, "LO", f"{CANARY_TEXT}CURVE")  # curve description (retired, curve group)
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(patient * 100 + study)
    ds.PixelData = rng.integers(0, 4096, (64, 64), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds, canaried, skipped


def _save(ds: Dataset, path: Path) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def write_canary_corpus(root: str | os.PathLike, n_patients: int = 2, studies: int = 3) -> CanaryCorpus:
    """Write the corpus under ``root`` (paths hold canaries too: ``CANARY<patient>/…``).

    Besides ``n_patients × studies`` good images: a truncated copy, an identical copy, a
    conflicting copy (same SOP Instance UID, other pixels), a structured-report-like object
    without pixels, a Patient's Name over the PN length limit, and a file whose dataset
    contradicts its transfer syntax — each carrying the same canaries.
    """
    root = Path(root)
    corpus = CanaryCorpus(str(root))
    dates = ["20190103", "20190420", "20201129", "20210706"]
    for p in range(n_patients):
        corpus.study_dates[f"{CANARY_TEXT}PID{p}"] = []
        for s in range(studies):
            ds, corpus.canaried, corpus.skipped = canary_dataset(p, s, dates[s % len(dates)])
            path = root / f"{CANARY_TEXT}SUBJECT{p}" / f"study{s}" / "image.dcm"
            _save(ds, path)
            corpus.files.append(str(path))
            corpus.study_dates[f"{CANARY_TEXT}PID{p}"].append(dates[s % len(dates)])
    bad = root / f"{CANARY_TEXT}SUBJECT0" / "extras"
    ds, _, _ = canary_dataset(0, 0, dates[0])
    data = _save(ds, bad / "identical_copy.dcm")
    (bad / "truncated.dcm").write_bytes(data[: len(data) - 3000])
    ds.PixelData = bytes(len(ds.PixelData))
    _save(ds, bad / "conflicting_copy.dcm")
    ds, _, _ = canary_dataset(0, 9, dates[0])
    del ds.PixelData
    _save(ds, bad / "no_pixels.dcm")
    ds, _, _ = canary_dataset(0, 10, dates[0])
    ds.PatientName = CANARY_TEXT * 12  # 72 characters: over the PN component limit
    pydicom.config.settings.writing_validation_mode, mode = pydicom.config.IGNORE, pydicom.config.settings.writing_validation_mode
    try:
        _save(ds, bad / "invalid_value.dcm")
    finally:
        pydicom.config.settings.writing_validation_mode = mode
    ds, _, _ = canary_dataset(0, 11, dates[0])
    explicit = _save(ds, bad / "_tmp.dcm")
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    implicit = _save(ds, bad / "_tmp.dcm")
    (bad / "_tmp.dcm").unlink()

    def body(data: bytes) -> int:
        return 132 + 12 + int.from_bytes(data[140:144], "little")

    (bad / "syntax_mismatch.dcm").write_bytes(explicit[: body(explicit)] + implicit[body(implicit):])
    corpus.files += sorted(str(p) for p in bad.iterdir())
    return corpus
