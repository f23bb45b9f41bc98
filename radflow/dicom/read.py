"""DICOM header and pixel reading with pydicom 3 and its decoder plugins.

Two steps, both bounded:

* :func:`read_header` reads one object's header without touching pixel bytes and
  returns a :class:`Header`; declared sizes are checked against
  :class:`~radflow.config.Limits` here, before anything is allocated.
* :func:`decode_frames` decodes the pixel data of a fully read dataset and says which
  decoder plugin produced it. The frames are exactly what ``ds.pixel_array`` returns
  (the stored values; no modality LUT, windowing or inversion applied); when every
  pydicom plugin fails, GDCM's own image reader is tried on the file's bytes.

Reading is lenient by default, as the reference toolkits (dcmtk, GDCM) read: a value
that breaks its VR's rules, a file without preamble or file meta, an encoding that
contradicts the transfer syntax or an unusable LUT descriptor is read anyway and
recorded as an *anomaly* (:class:`radflow.errors.Anomaly`, naming the element and VR,
never the value). ``validation="raise"`` is the opt-in strict mode that rejects them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import get_expected_length, get_nr_frames, pixel_dtype
from pydicom.uid import UID

from radflow.config import Limits
from radflow.dicom._in_place import IN_PLACE as _IN_PLACE, deflated as _deflated, element_name as _element_name
from radflow.dicom._in_place import values_in_place as _values_in_place, with_unused_bits_clear
from radflow.errors import Anomaly, InputRejected, NoDecoderError, Reason, anomaly

__all__ = ["Header", "Identity", "read_header", "read_dataset", "header_from_dataset", "decode_frames", "decodable_syntaxes",
           "FALLBACK_DECODERS"]

log = logging.getLogger(__name__)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_MISSING_PACKAGE_HINT = {
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg or pyjpegls",
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg or pyjpegls",
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg>=2.4",
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg>=2.4",
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg>=2.4",
}


@dataclass(frozen=True)
class Identity:
    """Identifying values of one object. Never written anywhere in clear."""

    patient_id: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""

    def __repr__(self) -> str:  # keep identifiers out of logs and tracebacks
        return "Identity(<redacted>)"


@dataclass(frozen=True)
class Header:
    """What the header of one image object declares (no identifying values).

    ``dtype`` is the dtype pydicom's ``pixel_array`` returns for it; ``shape`` of one
    frame is ``(rows, cols)`` or ``(rows, cols, samples)``.
    """

    rows: int
    cols: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    dtype: str
    photometric: str
    transfer_syntax: str
    sop_class: str = ""
    modality: str = ""
    view: str = ""
    body_part: str = ""
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    window_center: float = float("nan")
    window_width: float = float("nan")
    spacing_row: float = float("nan")
    spacing_col: float = float("nan")
    orientation: tuple[float, ...] = ()  # ImageOrientationPatient: row direction then column direction
    positions: tuple[tuple[float, float, float], ...] = ()  # ImagePositionPatient per frame (mm)
    acquisition_number: int = -1
    manufacturer: str = ""
    model: str = ""
    burned_in: str = ""  # why the frames may carry burned-in text ("" = no header rule fired)
    frame_of_reference: str = field(default="", compare=False)  # identifying: remapped before writing
    modality_lut: tuple[int, int, tuple[int, ...]] | None = field(default=None, repr=False)  # (first mapped, bits, data)
    voi_lut: tuple[int, int, tuple[int, ...]] | None = field(default=None, repr=False)
    anomalies: tuple[str, ...] = ()  # what was read leniently (closed codes with element and VR; no values)
    identity: Identity = field(default_factory=Identity, compare=False)

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.cols * self.samples * np.dtype(self.dtype).itemsize

    def public(self) -> dict[str, Any]:
        """The header's fields without identifying values."""
        d = asdict(self)
        for k in ("identity", "frame_of_reference", "modality_lut", "voi_lut"):
            d.pop(k)
        return d


def _first_float(value: Any, default: float = float("nan")) -> float:
    if value is None or value == "":
        return default
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        if not value:
            return default
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _spacing(ds: pydicom.Dataset) -> tuple[float, float]:
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        v = ds.get(kw)
        if v is not None and len(v) == 2:
            try:
                return float(v[0]), float(v[1])
            except (TypeError, ValueError):
                continue
    return float("nan"), float("nan")


def _classify_read_error(exc: BaseException) -> InputRejected:
    msg = str(exc).lower()
    if isinstance(exc, InvalidDicomError) and "expected explicit vr" in msg:
        return InputRejected(Reason.SYNTAX_MISMATCH, "dataset is encoded with implicit VR under an explicit-VR transfer syntax")
    if isinstance(exc, InvalidDicomError):
        return InputRejected(Reason.NOT_DICOM, "no DICOM preamble/prefix and not parseable as DICOM")
    if isinstance(exc, EOFError) or "eof" in msg or "end of file" in msg or "truncat" in msg:
        return InputRejected(Reason.TRUNCATED, f"file ends inside the dataset ({type(exc).__name__})")
    return InputRejected(Reason.NOT_DICOM, f"unparseable DICOM header ({type(exc).__name__})")


_VALIDATION_LOCK = threading.RLock()


@contextlib.contextmanager
def _validation(mode: str):
    """pydicom's reading validation mode for the duration of one read.

    pydicom keeps the mode in a process-wide setting, so reads that change it are
    serialized; decoding (the slow part) runs outside.
    """
    wanted = pydicom.config.RAISE if mode == "raise" else pydicom.config.WARN
    with _VALIDATION_LOCK:
        before = pydicom.config.settings.reading_validation_mode
        pydicom.config.settings.reading_validation_mode = wanted
        try:
            yield
        finally:
            pydicom.config.settings.reading_validation_mode = before


def _convert_all(ds: pydicom.Dataset, found: list[str] | None) -> None:
    """Convert every element (recursing into sequences) so value errors surface now, naming the
    element but never its value. Deferred values (pixel bytes of a header-only read) are skipped.

    Each element is first converted with pydicom's validation set to raise. A violation rejects
    the input (``found is None``: strict mode) or is appended to ``found`` as an
    ``INVALID_VALUE`` anomaly and the element converted leniently, as pydicom's ``warn`` mode does.
    """
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)  # (without it, pydicom reads a deferred value here)
        if getattr(raw, "value", b"") is None and getattr(raw, "length", 0):
            continue  # deferred: left in the file
        try:
            with _validation("raise"):
                elem = ds[tag]
        except ValueError as exc:
            vr = getattr(raw, "VR", None) or _dictionary_vr(tag)
            where = f"{_element_name(tag)} {vr}"
            if found is None:
                what = "too long" if "length" in str(exc).lower() else "malformed"
                raise InputRejected(
                    Reason.INVALID_VALUE,
                    f"{_element_name(tag)} has a {what} {vr} value (strict reading: RADFLOW_LIMITS__VALIDATION=raise; "
                    "the default, warn, keeps the input and records the anomaly)",
                ) from None
            found.append(anomaly(Anomaly.INVALID_VALUE, where))
            with _validation("warn"):
                elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                _convert_all(item, found)


def _dictionary_vr(tag: BaseTag) -> str:
    """The VR the data dictionary gives ``tag`` (implicit-VR files do not carry one)."""
    try:
        return pydicom.datadict.dictionary_VR(tag)
    except KeyError:
        return "UN"


_NO_META = "missing dicom file meta information"
_PLAUSIBLE = ("SOPClassUID", "Modality", "StudyInstanceUID", "SeriesInstanceUID", "Rows")


def _read_without_meta(fobj: BinaryIO, start: int, defer: int | str | None) -> pydicom.Dataset:
    """A bare dataset (no preamble, no file meta) read with pydicom's ``force``, the way dcmtk and GDCM
    read such files; ``NOT_DICOM`` unless it parses into a plausible DICOM object. The inferred
    transfer syntax is set in a new file meta so the pixel data can be decoded."""
    fobj.seek(start)
    ds = pydicom.dcmread(fobj, force=True, defer_size=defer)
    tags = list(ds.keys())
    plausible = bool(tags) and all(t.group >= 0x0008 for t in tags) and any(kw in ds for kw in _PLAUSIBLE)
    if not plausible:
        raise InvalidDicomError("no preamble or file meta, and the bytes do not parse as a DICOM dataset")
    meta = pydicom.dataset.FileMetaDataset()
    meta.TransferSyntaxUID = _inferred_syntax(ds)
    ds.file_meta = meta
    return ds


def read_dataset(src: bytes | BinaryIO | str, *, header_only: bool = False, validation: str = "warn",
                 anomalies: list[str] | None = None) -> pydicom.Dataset:
    """Parse a DICOM object; failures become ``NOT_DICOM``/``TRUNCATED``/``INVALID_VALUE`` rejections.

    ``header_only`` defers every value larger than 1 KiB, so pixel bytes are never read.
    ``validation="warn"`` (the default) reads as pydicom's lenient mode and the reference toolkits
    do, appending what it tolerated to ``anomalies`` (closed codes of
    :class:`radflow.errors.Anomaly` with element and VR): invalid values, a missing preamble or
    file meta, an encoding that contradicts the transfer syntax. ``validation="raise"`` rejects
    each of them instead (``INVALID_VALUE``, ``NOT_DICOM``, ``SYNTAX_MISMATCH``).
    """
    in_memory = isinstance(src, (bytes, bytearray, memoryview))
    fobj = io.BytesIO(src) if in_memory else src
    lenient = validation != "raise"
    found: list[str] = []
    start = fobj.tell() if hasattr(fobj, "tell") and not isinstance(fobj, str) else 0
    try:
        with warnings.catch_warnings(record=True) as caught, _validation(validation):
            warnings.simplefilter("always")
            # header only: values over 1 KiB stay in the file; the whole object in memory: large values are
            # not copied out of it by the parser, but taken from ``src`` afterwards (the pixel data as a view)
            defer = "1 KB" if header_only else (_IN_PLACE if in_memory and not _deflated(src) else None)
            try:
                ds = pydicom.dcmread(fobj, defer_size=defer)
            except InvalidDicomError as exc:
                if not (lenient and _NO_META in str(exc).lower() and not isinstance(fobj, str)):
                    raise
                ds = _read_without_meta(fobj, start, defer)
                found.append(anomaly(Anomaly.NO_FILE_META, f"transfer syntax inferred as {UID(ds.file_meta.TransferSyntaxUID).name}"))
            if defer == _IN_PLACE and not _values_in_place(ds, memoryview(src)):
                ds = pydicom.dcmread(io.BytesIO(src))  # offsets that are not the object's (an inflated stream)
            if not header_only:
                _check_complete(ds)
            _convert_all(ds, found if lenient else None)  # parse every element now, inside the guard
    except InputRejected:
        raise
    except Exception as exc:  # pydicom raises many types for malformed input
        raise _classify_read_error(exc) from None
    for w in caught:
        text = str(w.message).lower()
        if "end of file" in text:
            raise InputRejected(Reason.TRUNCATED, "file ends inside an element (pydicom reached end of file before its delimiter)")
        if "expected explicit vr" in text or "expected implicit vr" in text:
            found.append(anomaly(Anomaly.SYNTAX_MISMATCH_REPAIRED, "VR encoding differs from the transfer syntax; read as encoded"))
    if anomalies is not None:
        anomalies.extend(dict.fromkeys(found))  # each finding once, in order
    return ds


def _check_complete(ds: pydicom.Dataset) -> None:
    """``TRUNCATED`` if the file ends before the pixel data's declared value length."""
    for kw in _PIXEL_KEYWORDS:
        if kw not in ds:
            continue
        elem = ds.get_item(kw)
        length = getattr(elem, "length", None)
        value = elem.value
        if length is not None and length != 0xFFFFFFFF and value is not None and len(value) < length:
            raise InputRejected(Reason.TRUNCATED, f"file ends inside {kw}: {len(value)} of {length} declared bytes present")


def _inferred_syntax(ds: pydicom.Dataset) -> str:
    """The uncompressed transfer syntax pydicom found the bytes in (no file meta to say it)."""
    if ds.is_implicit_VR:
        return pydicom.uid.ImplicitVRLittleEndian
    return pydicom.uid.ExplicitVRLittleEndian if ds.is_little_endian else pydicom.uid.ExplicitVRBigEndian


def _transfer_syntax(ds: pydicom.Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return _inferred_syntax(ds) if ts is None else str(ts)


def _lut(ds: pydicom.Dataset, keyword: str, found: list[str]) -> tuple[int, int, tuple[int, ...]] | None:
    """The first LUT of a Modality or VOI LUT Sequence: ``(first stored value mapped, bits, data)``.

    An item whose LUT Descriptor is empty or not three numbers is ignored and recorded as
    ``LUT_DESCRIPTOR_EMPTY`` (the image is kept; the LUT cannot be applied)."""
    seq = ds.get(keyword)
    if not seq or "LUTDescriptor" not in seq[0] or "LUTData" not in seq[0]:
        return None
    desc = seq[0].LUTDescriptor
    data = seq[0].LUTData
    if not isinstance(desc, (list, tuple, pydicom.multival.MultiValue)) or len(desc) != 3 or data is None \
            or any(not isinstance(v, (int, float)) for v in desc):
        found.append(anomaly(Anomaly.LUT_DESCRIPTOR_EMPTY, f"{keyword} LUTDescriptor (0028,3002) US/SS"))
        return None
    if isinstance(data, (bytes, bytearray)):
        data = np.frombuffer(data, dtype="<u2" if int(desc[2]) > 8 else "u1").tolist()
    elif not isinstance(data, (list, tuple, pydicom.multival.MultiValue)):
        data = [data]
    return int(desc[1]), int(desc[2]), tuple(int(v) for v in data)


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _geometry(ds: pydicom.Dataset, frames: int) -> tuple[tuple[float, ...], tuple[tuple[float, float, float], ...], tuple[float, float] | None]:
    """Orientation, per-frame positions and (enhanced objects) pixel spacing from the image plane
    module or the functional groups of an enhanced multi-frame object."""
    orientation = _floats(ds.get("ImageOrientationPatient"), 6) or ()
    position = _floats(ds.get("ImagePositionPatient"), 3)
    spacing = None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) == frames:
        shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
        positions = []
        for item in per_frame:
            pos = None
            groups = [g for g in (item, shared) if g is not None]
            for g in groups:
                if pos is None and "PlanePositionSequence" in g:
                    pos = _floats(g.PlanePositionSequence[0].get("ImagePositionPatient"), 3)
                if not orientation and "PlaneOrientationSequence" in g:
                    orientation = _floats(g.PlaneOrientationSequence[0].get("ImageOrientationPatient"), 6) or ()
                if spacing is None and "PixelMeasuresSequence" in g:
                    sp = _floats(g.PixelMeasuresSequence[0].get("PixelSpacing"), 2)
                    spacing = (sp[0], sp[1]) if sp else None
            if pos is None:
                return orientation, (), spacing
            positions.append(pos)
        return orientation, tuple(positions), spacing
    return orientation, ((position,) if position and frames == 1 else ()), spacing


_TEXT_MODALITIES = ("US", "OT", "SC", "XC", "ES")


def burned_in_rules(ds: pydicom.Dataset) -> str:
    """The header rules that flag a burned-in text risk, ``"; "``-joined ("" when none fires):
    Burned In Annotation YES, Image Type SECONDARY or SCREEN SAVE (also as Conversion Type
    WSD/SD), and modalities that routinely carry text in the pixels (US, OT, SC, XC, ES)."""
    rules = []
    if str(ds.get("BurnedInAnnotation", "") or "").upper() == "YES":
        rules.append("BurnedInAnnotation YES")
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])] if not isinstance(ds.get("ImageType"), str) \
        else [str(ds.get("ImageType")).upper()]
    if "SECONDARY" in image_type:
        rules.append("ImageType SECONDARY")
    if "SCREEN SAVE" in image_type or str(ds.get("ConversionType", "") or "").upper() in ("WSD", "SD"):
        rules.append("SCREEN SAVE")
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in _TEXT_MODALITIES:
        rules.append(f"Modality {modality}")
    return "; ".join(rules)


def header_from_dataset(ds: pydicom.Dataset, limits: Limits, anomalies: list[str] | tuple[str, ...] = ()) -> Header:
    """Build a :class:`Header` and check declared sizes against ``limits``.

    ``anomalies`` are what :func:`read_dataset` recorded; the header carries them with its own
    findings (an unusable LUT descriptor)."""
    found = list(anomalies)
    if not any(kw in ds for kw in _PIXEL_KEYWORDS):
        meta = getattr(ds, "file_meta", None)
        if "SOPClassUID" not in ds and (meta is None or "MediaStorageSOPClassUID" not in meta):
            raise InputRejected(Reason.NOT_DICOM, "no SOP Class UID in the dataset or its file meta: not a DICOM object")
        raise InputRejected(Reason.NON_IMAGE, "object has no pixel data (e.g. a structured report or presentation state)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits_allocated = int(ds.BitsAllocated)
        bits_stored = int(ds.get("BitsStored", bits_allocated) or bits_allocated)
        pixel_rep = int(ds.get("PixelRepresentation", 0) or 0)
        frames = int(get_nr_frames(ds, warn=False))
        photometric = str(ds.get("PhotometricInterpretation", "") or "")
    except (AttributeError, TypeError, ValueError) as exc:
        invalid = [a for a in found if a.startswith(Anomaly.INVALID_VALUE.value) and "(0028," in a]
        if invalid:  # the image module itself holds the invalid value: nothing to decode with
            raise InputRejected(Reason.INVALID_VALUE, f"image module unusable: {invalid[0][len('INVALID_VALUE '):]} is invalid") from None
        raise InputRejected(Reason.DECODE_ERROR, f"image module incomplete ({type(exc).__name__}: missing or invalid Rows/Columns/BitsAllocated)") from None
    if rows <= 0 or cols <= 0 or frames <= 0 or samples <= 0:
        raise InputRejected(Reason.DIMENSION_LIMIT, f"declared size {frames}x{rows}x{cols}x{samples} is empty")
    if rows * cols * samples > limits.max_frame_pixels:
        raise InputRejected(Reason.DIMENSION_LIMIT, f"frame of {rows}x{cols}x{samples} exceeds limit of {limits.max_frame_pixels} values")
    if frames > limits.max_frames:
        raise InputRejected(Reason.DIMENSION_LIMIT, f"{frames} frames exceed limit of {limits.max_frames}")
    ts = _transfer_syntax(ds)
    if "PixelData" in ds:
        _decoder_for(UID(ts))
    try:
        dtype = np.dtype(pixel_dtype(ds)).str if "PixelData" in ds else (
            "<f4" if "FloatPixelData" in ds else "<f8"
        )
    except (NotImplementedError, ValueError, AttributeError) as exc:
        raise InputRejected(Reason.DECODE_ERROR, f"unsupported pixel format ({exc})") from None
    dtype = np.dtype(dtype).newbyteorder("=").str
    total = rows * cols * samples * frames * np.dtype(dtype).itemsize
    if total > limits.max_object_bytes:
        raise InputRejected(Reason.DIMENSION_LIMIT, f"declared decoded size {total} bytes exceeds limit {limits.max_object_bytes}")
    if limits.worker_memory_bytes and total * limits.decode_memory_factor > limits.worker_memory_bytes:
        raise InputRejected(Reason.MEMORY_LIMIT, f"declared decoded size {total / 2**30:.2f} GiB needs about "
                            f"{total * limits.decode_memory_factor / 2**30:.1f} GiB to decode; a worker has "
                            f"{limits.worker_memory_bytes / 2**30:.1f} GiB (give workers more memory, "
                            "RADFLOW_CLUSTER__MEMORY_LIMIT)")
    spacing = _spacing(ds)
    orientation, positions, enhanced_spacing = _geometry(ds, frames)
    if enhanced_spacing is not None and spacing[0] != spacing[0]:
        spacing = enhanced_spacing
    return Header(
        rows=rows,
        cols=cols,
        frames=frames,
        samples=samples,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        pixel_representation=pixel_rep,
        dtype=dtype,
        photometric=photometric,
        transfer_syntax=ts,
        sop_class=str(ds.get("SOPClassUID", "") or ""),
        modality=str(ds.get("Modality", "") or ""),
        view=str(ds.get("ViewPosition", "") or ""),
        body_part=str(ds.get("BodyPartExamined", "") or ""),
        rescale_slope=_first_float(ds.get("RescaleSlope"), 1.0),
        rescale_intercept=_first_float(ds.get("RescaleIntercept"), 0.0),
        window_center=_first_float(ds.get("WindowCenter")),
        window_width=_first_float(ds.get("WindowWidth")),
        spacing_row=spacing[0],
        spacing_col=spacing[1],
        orientation=orientation,
        positions=positions,
        acquisition_number=int(_first_float(ds.get("AcquisitionNumber"), -1)),
        manufacturer=str(ds.get("Manufacturer", "") or ""),
        model=str(ds.get("ManufacturerModelName", "") or ""),
        burned_in=burned_in_rules(ds),
        frame_of_reference=str(ds.get("FrameOfReferenceUID", "") or ""),
        modality_lut=_lut(ds, "ModalityLUTSequence", found),
        voi_lut=_lut(ds, "VOILUTSequence", found),
        anomalies=tuple(dict.fromkeys(found)),
        identity=Identity(
            patient_id=str(ds.get("PatientID", "") or ""),
            study_uid=str(ds.get("StudyInstanceUID", "") or ""),
            series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
            sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
        ),
    )


def read_header(src: bytes | BinaryIO | str, limits: Limits) -> Header:
    """Read and check one object's header without reading its pixel data."""
    found: list[str] = []
    ds = read_dataset(src, header_only=True, validation=limits.validation, anomalies=found)
    return header_from_dataset(ds, limits, found)


def _decoder_for(ts: UID):
    """pydicom's decoder for ``ts``; ``NoDecoderError`` naming the package when none can run here."""
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise NoDecoderError(f"transfer syntax {ts.name} ({ts}) is not supported by pydicom or any plugin") from None
    if not decoder.is_native and not decoder.is_available:
        hint = _MISSING_PACKAGE_HINT.get(str(ts), ", ".join(decoder.missing_dependencies) or "a decoder plugin")
        raise NoDecoderError(f"transfer syntax {ts.name} ({ts}) has no decoder installed; pip install {hint}")
    return decoder


def _plugin_order(decoder) -> list[str]:
    """Available plugins in the order ``ds.pixel_array`` tries them (pydicom's registration order),
    so the first that succeeds gives exactly what ``pixel_array`` returns."""
    order = list(getattr(decoder, "_available", {}) or decoder.available_plugins)
    return [p for p in order if p in decoder.available_plugins]


#: Decoders tried after every pydicom plugin has failed (their frames carry a DECODER_FALLBACK anomaly).
FALLBACK_DECODERS = ("gdcm-image-reader",)


def decode_frames(ds: pydicom.Dataset, header: Header, source: bytes | None = None) -> tuple[np.ndarray, str]:
    """Decode all frames of ``ds``.

    Parameters
    ----------
    source : the object's bytes, when at hand: if every pydicom plugin fails, GDCM's own image
        reader decodes them (it reads 12-bit lossy JPEG, which no pydicom plugin does).

    Returns
    -------
    frames : (frames, rows, cols) or (frames, rows, cols, samples) ndarray
        Exactly what ``ds.pixel_array`` returns (or the fallback decoder's output, in the same
        layout and dtype), with a leading frame axis always; read-only for native encodings (a view
        of the dataset's pixel bytes).
    decoder : str
        ``"<plugin>"`` that produced it (``"pydicom"`` for native encodings, ``"gdcm-image-reader"``
        for the fallback).
    """
    if "PixelData" not in ds:
        arr = ds.pixel_array  # float/double float pixel data: native only
        return _with_frame_axis(np.asarray(arr), header), "pydicom"
    ts = UID(header.transfer_syntax)
    decoder = _decoder_for(ts)
    if decoder.is_native:
        expected = get_expected_length(ds, "bytes")
        actual = len(ds.PixelData)
        if actual < expected:
            raise InputRejected(Reason.PIXEL_LENGTH_MISMATCH, f"pixel data has {actual} bytes, header declares {expected}")
        plugins = ["pydicom"]
    else:
        plugins = _plugin_order(decoder)
    errors = []
    for plugin in plugins:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if plugin == "pydicom" and decoder.is_native:
                    # a read-only view of the pixel bytes the dataset already holds, not a copy of them
                    # (the same values; callers never write into decoded frames); unused bits corrected
                    # only where a value has any set (pydicom would copy and shift every frame)
                    ds.pixel_array_options(view_only=True, correct_unused_bits=False)
                    arr = with_unused_bits_clear(ds.pixel_array, header.bits_stored, header.bits_allocated,
                                                 header.pixel_representation == 1)
                else:
                    ds.pixel_array_options(decoding_plugin=plugin)
                    arr = ds.pixel_array
            return _with_frame_axis(np.asarray(arr), header), plugin
        except Exception as exc:  # decoder plugins raise assorted types
            errors.append(f"{plugin}: {type(exc).__name__}")
            ds._pixel_array = None
            ds._pixel_id = {}
    if source is not None:
        try:
            from radflow.dicom._gdcm import gdcm_image

            arr = gdcm_image(source, header)
        except InputRejected as exc:
            errors.append(f"gdcm-image-reader: {exc.detail}")
        else:
            return _with_frame_axis(arr, header), FALLBACK_DECODERS[0]
    raise InputRejected(Reason.DECODE_ERROR, f"{ts.name} pixel data failed to decode ({'; '.join(errors)})")


def _with_frame_axis(arr: np.ndarray, header: Header) -> np.ndarray:
    frame_shape = (header.rows, header.cols) if header.samples == 1 else (header.rows, header.cols, header.samples)
    if arr.shape == frame_shape:
        arr = arr[np.newaxis]
    if arr.shape != (header.frames, *frame_shape):
        raise InputRejected(Reason.DECODE_ERROR, f"decoded shape {arr.shape} differs from declared {(header.frames, *frame_shape)}")
    return arr


def decodable_syntaxes() -> list[dict[str, Any]]:
    """Every transfer syntax pydicom knows, with whether (and by which plugins) it decodes here."""
    from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS

    out = []
    for uid in _PIXEL_DATA_DECODERS:
        dec = get_decoder(uid)
        plugins = ["pydicom"] if dec.is_native else _plugin_order(dec)
        out.append({"uid": str(uid), "name": UID(uid).name, "available": bool(plugins), "plugins": plugins})
    return out
