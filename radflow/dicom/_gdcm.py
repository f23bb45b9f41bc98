"""The fallback decoder: GDCM's own image reader (not pydicom's GDCM plugin, which refuses some
syntaxes GDCM itself reads, such as 12-bit lossy JPEG)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from radflow.errors import InputRejected, Reason

if TYPE_CHECKING:
    from radflow.dicom.read import Header

__all__ = ["gdcm_image"]


_GDCM_DTYPES = {"UINT8": "u1", "INT8": "i1", "UINT12": "u2", "INT12": "i2", "UINT16": "u2", "INT16": "i2",
                "UINT32": "u4", "INT32": "i4", "FLOAT32": "f4", "FLOAT64": "f8"}


def gdcm_image(source: bytes, header: Header) -> np.ndarray:
    """Decode ``source`` with GDCM's own image reader (not pydicom's GDCM plugin, which refuses some
    syntaxes GDCM itself reads). GDCM reads from a file: the bytes go to a private temporary file
    (in memory-backed ``/dev/shm`` where it exists) that is removed at once."""
    try:
        import gdcm
    except ImportError:
        raise InputRejected(Reason.NO_DECODER, "not installed (pip install python-gdcm)") from None
    import os
    import tempfile

    folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    fd, path = tempfile.mkstemp(suffix=".dcm", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(source)
        return _gdcm_read(gdcm, path, header)
    except InputRejected:
        raise
    except Exception as exc:  # GDCM's wrappers raise assorted types on data they cannot read
        raise InputRejected(Reason.DECODE_ERROR, f"{type(exc).__name__}") from None
    finally:
        os.unlink(path)


def _gdcm_read(gdcm: Any, path: str, header: Header) -> np.ndarray:
    reader = gdcm.ImageReader()
    reader.SetFileName(path)
    if not reader.Read():
        raise InputRejected(Reason.DECODE_ERROR, "cannot read the object")
    image = reader.GetImage()
    fmt = image.GetPixelFormat()
    dims = [int(d) for d in image.GetDimensions()]
    samples = int(fmt.GetSamplesPerPixel())
    dtype = _GDCM_DTYPES.get(fmt.GetScalarTypeAsString())
    if dtype is None:
        raise InputRejected(Reason.DECODE_ERROR, f"unsupported pixel format {fmt.GetScalarTypeAsString()}")
    buf = image.GetBuffer()
    if buf is None:
        raise InputRejected(Reason.DECODE_ERROR, "no pixel buffer")
    data = buf.encode("utf-8", "surrogateescape") if isinstance(buf, str) else bytes(buf)
    photometric = image.GetPhotometricInterpretation().GetString().strip()
    cols, rows = dims[0], dims[1]
    frames = dims[2] if len(dims) > 2 else 1
    arr = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"))
    if arr.size != frames * rows * cols * samples:
        raise InputRejected(Reason.DECODE_ERROR, f"{arr.size} values for {frames}x{rows}x{cols}x{samples}")
    arr = arr.reshape((frames, rows, cols, samples) if samples > 1 else (frames, rows, cols))
    if samples == 3 and photometric.startswith("YBR_FULL"):
        from pydicom.pixels import convert_color_space

        arr = convert_color_space(arr, photometric, "RGB")  # as pixel_array returns colour
    if arr.dtype.newbyteorder("=") != np.dtype(header.dtype):
        raise InputRejected(Reason.DECODE_ERROR, f"GDCM gave {arr.dtype.name}, the header declares {np.dtype(header.dtype).name}")
    return np.ascontiguousarray(arr, dtype=np.dtype(header.dtype))
