"""Values taken in place: a DICOM object held whole in memory is parsed with its large values deferred, then
each is given its bytes from the object itself (native pixel data as a read-only view), so the parser never
copies them out (see :func:`radflow.dicom.read.read_dataset`)."""

from __future__ import annotations

import pydicom
from pydicom.tag import BaseTag
from pydicom.uid import UID

from radflow.errors import InputRejected, Reason

__all__ = ["IN_PLACE", "values_in_place", "deflated", "nothing_deferred", "element_name", "with_unused_bits_clear"]


def element_name(tag: BaseTag) -> str:
    """An element's keyword and tag (never its value)."""
    keyword = pydicom.datadict.keyword_for_tag(tag)
    return f"{keyword} {tag}" if keyword else f"{tag}" + (" (private)" if tag.is_private else "")


#: values this large are taken from the object's bytes after parsing rather than copied by the parser
IN_PLACE = 1 << 16


def values_in_place(ds: pydicom.Dataset, buf: memoryview) -> bool:
    """Give each value the parser deferred (top level only: pydicom defers nothing inside sequences) its
    bytes from ``buf``, the object the dataset was parsed from: native pixel data as a read-only view
    (decoded without a copy of the encoded bytes), anything else as a copy. ``False`` when offsets do
    not refer to ``buf`` (a deflated object is parsed from its inflated stream)."""
    from pydicom.dataelem import RawDataElement

    meta = getattr(ds, "file_meta", None)
    syntax = UID(meta.get("TransferSyntaxUID", "") if meta is not None else "")
    if not syntax.is_transfer_syntax or syntax.is_deflated:  # unknown (decided later), or inflated offsets
        return nothing_deferred(ds)
    view = not syntax.is_encapsulated
    for tag, raw in list(ds._dict.items()):
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length and raw.length != 0xFFFFFFFF:
            value = buf[raw.value_tell : raw.value_tell + raw.length]
            if len(value) < raw.length and tag != 0x7FE00010:  # (cut pixel data: _check_complete says how much)
                raise InputRejected(Reason.TRUNCATED, f"file ends inside {element_name(BaseTag(tag))}: "
                                                      f"{len(value)} of {raw.length} declared bytes present")
            ds._dict[tag] = raw._replace(value=value if view and tag == 0x7FE00010 else bytes(value))
    return True


def deflated(src: bytes | bytearray | memoryview) -> bool:
    """Whether the object may be deflated (parsed from its inflated stream, whose offsets are not the
    object's): its syntax UID among the first bytes, where the file meta names it. A mistake either way
    only costs speed: a false yes reads the object as before, a false no is read again
    (:func:`values_in_place` says ``False``)."""
    return _DEFLATED_UID in bytes(src[:1024])


_DEFLATED_UID = str(pydicom.uid.DeflatedExplicitVRLittleEndian).encode()


def nothing_deferred(ds: pydicom.Dataset) -> bool:
    """Whether the parser left no value in the object."""
    from pydicom.dataelem import RawDataElement

    return not any(isinstance(r, RawDataElement) and r.value is None and r.length for r in ds._dict.values())


def with_unused_bits_clear(arr, bits_stored: int, bits_allocated: int, signed: bool):
    """``arr`` as pydicom's unused-bits correction leaves it (the bits above *Bits Stored* cleared, or
    copies of the sign bit when signed), computed only where needed: an array whose values all lie in
    the range *Bits Stored* can hold is unchanged by that correction, and is returned as it is (a view
    of the object's bytes stays a view: one pass that reads, not a copy and two passes that write)."""
    import numpy as np

    if arr.dtype.kind not in "iu" or not 0 < bits_stored < bits_allocated or arr.dtype.itemsize * 8 != bits_allocated \
            or not arr.size:
        return arr
    lo, hi = (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
    if arr.max() <= hi and (not signed or arr.min() >= lo):
        return arr
    out = np.array(arr, dtype=arr.dtype, copy=True)
    shift = bits_allocated - bits_stored
    np.left_shift(out, shift, out=out)
    np.right_shift(out, shift, out=out)  # arithmetic for a signed dtype: the sign bit is copied down
    return out
