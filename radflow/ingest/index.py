"""The header index: what planning needs to know of each new input, read on the workers.

:func:`index_inputs` runs on a worker and returns one small dict per input. The flow folds them
into a :class:`HeaderIndex` chunk by chunk, column by column: at MIMIC-CXR's count (377,110 new
inputs) a dict per input held ~750 bytes in the flow process; the index holds ~130 (a few codes,
the frame count and the remapped SOP UID) beside the discovered references the flow already has.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Iterator, Sequence

import numpy as np

from radflow.config import Limits
from radflow.dicom.pseudonym import remap_uid
from radflow.errors import InputRejected, Reason, SourceUnavailable
from radflow.ingest import dicomweb
from radflow.ingest.sources import InputRef, open_input
from radflow.store import layout
from radflow.watchdog import deadline

__all__ = ["HeaderIndex", "Entry", "index_inputs"]


class HeaderIndex:
    """The header index of one run's new inputs, in the order of ``refs`` (URI order).

    Fields that repeat across an archive (status, kind, array, dtype, shapes, reasons) are stored
    as one code per input into a small table of their distinct values; ``frames`` as an integer
    array; ``sop_key`` as one string per input; a rejection's ``detail`` only for rejected inputs.
    ``uri``, ``size``, ``version`` and ``source`` are read from the input's :class:`InputRef`.
    """

    CODED = ("status", "reason", "kind", "dtype", "array", "shape", "ref_shape", "array_attrs")

    def __init__(self, refs: Sequence[InputRef]) -> None:
        self.refs = list(refs)
        n = len(self.refs)
        self._codes = {c: np.zeros(n, dtype=np.int32) for c in self.CODED}
        self._values: dict[str, list[Any]] = {c: [None] for c in self.CODED}  # code 0: not indexed yet
        self._lookup: dict[str, dict[Any, int]] = {c: {} for c in self.CODED}
        self._frames = np.zeros(n, dtype=np.int64)
        self._sop_keys: list[str] = [""] * n
        self._details: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.refs)

    def fill(self, start: int, rows: list[dict[str, Any]]) -> None:
        """Record ``rows`` (from :func:`index_inputs`) for the inputs ``start, start + 1, …``."""
        for i, row in enumerate(rows, start):
            for c in self.CODED:
                self._codes[c][i] = self._code(c, row.get(c))
            self._frames[i] = int(row.get("frames") or 0)
            self._sop_keys[i] = row.get("sop_key") or ""
            if row.get("detail"):
                self._details[i] = str(row["detail"])

    def _code(self, column: str, value: Any) -> int:
        key = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
        code = self._lookup[column].get(key)
        if code is None:
            code = self._lookup[column][key] = len(self._values[column])
            self._values[column].append(tuple(value) if isinstance(value, list) else value)
        return code

    def value(self, i: int, key: str) -> Any:
        if key in self._codes:
            return self._values[key][self._codes[key][i]]
        if key in ("uri", "size", "version"):
            return getattr(self.refs[i], key)
        if key == "source":
            return self.refs[i].label
        if key == "frames":
            return int(self._frames[i])
        if key == "sop_key":
            return self._sop_keys[i]
        if key == "detail":
            return self._details.get(i, "")
        raise KeyError(key)

    def with_status(self, status: str) -> Iterator[Entry]:
        """The entries whose status is ``status`` (``candidate`` or ``rejected``), in URI order."""
        code = self._lookup["status"].get(status)
        if code is None:
            return iter(())
        return (Entry(self, int(i)) for i in np.flatnonzero(self._codes["status"] == code))


class Entry:
    """One input's row of a :class:`HeaderIndex`, read like a dict; pickles as a plain dict."""

    KEYS = ("uri", "size", "version", "source", "frames", "sop_key", "detail", *HeaderIndex.CODED)
    __slots__ = ("_index", "_i")

    def __init__(self, index: HeaderIndex, i: int) -> None:
        self._index, self._i = index, i

    def __getitem__(self, key: str) -> Any:
        return self._index.value(self._i, key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            value = self[key]
        except KeyError:
            return default
        return default if value is None and default is not None else value

    def to_dict(self) -> dict[str, Any]:
        return {k: self[k] for k in self.KEYS}

    def __reduce__(self):  # a worker gets a plain dict
        return (dict, (self.to_dict(),))

    def __repr__(self) -> str:
        return f"Entry({self.to_dict()!r})"


def index_inputs(
    refs: list[tuple], limits: Limits, storage_options: dict[str, Any] | None = None,
    secret: bytes | None = None,
) -> list[dict[str, Any]]:
    """Read the headers of ``refs`` (``(uri, size, version[, unsafe[, reason]])``) for planning; never raises
    per input. A ref with ``unsafe`` set is rejected with ``reason`` without being opened.

    Returns one row per input: ``uri, size, version, status`` (``candidate`` or
    ``rejected``), ``reason, detail`` and, for candidates, ``kind`` (``dicom`` or
    ``kspace``/``sinogram`` for HDF5 acquisitions), the target ``array`` with its frame ``shape``,
    ``ref_shape`` and ``dtype``, ``frames``, and for DICOM the remapped SOP Instance UID
    ``sop_key`` (with ``secret``) to find duplicates. No identifying values. Each header is
    read under ``limits.input_timeout_s``.
    """
    out = []
    # a DICOMweb source: the next instances' metadata is asked for meanwhile
    with dicomweb.ReadAhead.of([r[0] for r in refs if not (len(r) > 3 and r[3])],
                               functools.partial(dicomweb.metadata, storage_options=storage_options),
                               storage_options) as ahead:
        for ref in refs:
            out.append(_index_row(ref, limits, storage_options, secret, ahead))
    return out


def _index_row(ref: tuple, limits: Limits, storage_options: dict[str, Any] | None, secret: bytes | None,
               ahead: dicomweb.ReadAhead) -> dict[str, Any]:
    uri, size, version = ref[:3]
    unsafe = ref[3] if len(ref) > 3 else None
    reason = ref[4] if len(ref) > 4 else Reason.ARCHIVE_UNSAFE_MEMBER.value
    row: dict[str, Any] = {"uri": uri, "size": size, "version": version}
    try:
        with deadline(limits.input_timeout_s, "reading one header"):
            if unsafe:  # discovery decided: never opened
                raise InputRejected(Reason(reason), unsafe)
            _index_one(row, uri, size, limits, storage_options, secret, ahead)
    except SourceUnavailable:  # the source, not this input: the batch fails and the run resumes later
        raise
    except InputRejected as exc:
        row.update(status="rejected", reason=exc.reason.value, detail=exc.detail)
    except Exception as exc:  # never fail the run for one input
        row.update(status="rejected", reason=Reason.DECODE_ERROR.value, detail=f"unexpected {type(exc).__name__} reading header")
    return row


def _index_one(row: dict[str, Any], uri: str, size: int, limits: Limits,
               storage_options: dict[str, Any] | None, secret: bytes | None, ahead: dicomweb.ReadAhead) -> None:
    """Fill ``row`` with the planning facts of one input's header (raises ``InputRejected``)."""
    from radflow.ingest.acquisitions import HDF5_SIGNATURE, acquisition_index_row
    from radflow.dicom.read import header_from_dataset, read_header

    if size > limits.max_file_bytes:
        raise InputRejected(Reason.DIMENSION_LIMIT, f"file of {size} bytes exceeds limit {limits.max_file_bytes}")
    if dicomweb.is_dicomweb(uri):  # the header from the archive's metadata: the pixels are fetched once, by the batch
        h = header_from_dataset(ahead.take(uri), limits)
        _dicom_row(row, h, secret)
        return
    with open_input(uri, storage_options, limits.max_file_bytes) as fh:
        if fh.read(8) == HDF5_SIGNATURE:
            fh.seek(0)
            row.update(status="candidate", reason=None, detail="", **acquisition_index_row(fh, limits))
            return
        fh.seek(0)
        h = read_header(fh, limits)
    _dicom_row(row, h, secret)


def _dicom_row(row: dict[str, Any], h, secret: bytes | None) -> None:
    shape = [layout.size_class(h.rows), layout.size_class(h.cols)] + ([h.samples] if h.samples > 1 else [])
    row.update(status="candidate", reason=None, detail="", kind="dicom", frames=h.frames, dtype=h.dtype,
               array="raw/" + layout.raw_array_name(h.dtype, h.rows, h.cols, h.samples), shape=shape,
               ref_shape=[], array_attrs={}, sop_key=remap_uid(secret, h.identity.sop_uid) if secret else "")
