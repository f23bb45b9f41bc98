"""Duplicates are compared by value: native byte order, dtype and shape."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid

from radflow.config import Limits
from radflow.errors import StoreFormatError
from radflow.store.layout import frame_crc32
from radflow.ingest.duplicates import check_duplicates
from radflow.store.tables import read_table

PIXELS = (np.arange(24 * 32, dtype=np.int32).reshape(24, 32) * 37 % 4001 - 2000).astype(np.int16)


def _dicom(pixels: np.ndarray, *, ts: str, signed: bool, path) -> str:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid(entropy_srcs=["dup"])
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, int(signed)
    order = ">" if ts == ExplicitVRBigEndian else "<"
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(order)).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue())
    assert np.array_equal(pydicom.dcmread(str(path)).pixel_array.astype(np.int64), pixels.astype(np.int64)) or not signed
    return str(path)


def _check(tmp_path, path: str, checksum: str = "crc32c") -> tuple[str, str]:
    stored = [(7, frame_crc32(PIXELS, checksum), "int16", *PIXELS.shape, 1)]  # the first copy: int16, little endian
    item = {"uri": path, "size": 1, "version": "v", "sop_key": "k"}
    store = str(tmp_path / f"s-{checksum}.zarr")
    check_duplicates(store, [item], {"k": stored}, limits=Limits(), checksum=checksum)
    row = read_table(store, "ledger").set_index("source").loc[path]
    return row["reason"], row["detail"]


def test_big_endian_copy_with_the_same_values_is_identical(tmp_path):
    big = _dicom(PIXELS, ts=ExplicitVRBigEndian, signed=True, path=tmp_path / "big.dcm")
    assert pydicom.dcmread(big).pixel_array.dtype.byteorder == ">"  # pydicom returns the file's byte order
    assert _check(tmp_path, big)[0] == "DUPLICATE_IDENTICAL"
    assert _check(tmp_path, big, "crc32")[0] == "DUPLICATE_IDENTICAL"  # a store that records zlib's CRC-32


def test_same_bytes_under_another_dtype_conflict(tmp_path):
    unsigned = _dicom(PIXELS.view(np.uint16), ts=ExplicitVRLittleEndian, signed=False, path=tmp_path / "u16.dcm")
    reason, detail = _check(tmp_path, unsigned)
    assert reason == "DUPLICATE_CONFLICT" and "dtype uint16 vs int16" in detail


def test_other_values_conflict_and_crc_is_of_values(tmp_path):
    other = _dicom(PIXELS + 1, ts=ExplicitVRLittleEndian, signed=True, path=tmp_path / "other.dcm")
    assert _check(tmp_path, other)[0] == "DUPLICATE_CONFLICT"
    for checksum in ("crc32", "crc32c"):
        assert frame_crc32(PIXELS.astype(">i2"), checksum) == frame_crc32(PIXELS, checksum)  # values, not bytes
        assert frame_crc32(PIXELS.view(np.uint16), checksum) == frame_crc32(PIXELS, checksum)  # dtype: compared apart


def test_frame_checksums_are_the_standard_ones_and_see_every_flipped_byte():
    """CRC-32 (zlib) and CRC-32C (Castagnoli) of a frame's native bytes: the standard check values,
    and a flipped byte anywhere in a frame changes both."""
    import zlib

    import google_crc32c

    check = np.frombuffer(b"123456789", np.uint8)  # the CRC catalogue's check input
    assert frame_crc32(check, "crc32") == 0xCBF43926 and frame_crc32(check, "crc32c") == 0xE3069283
    frame = np.random.default_rng(0).integers(0, 4096, (64, 48), dtype=np.uint16)
    assert frame_crc32(frame, "crc32") == zlib.crc32(frame.tobytes())
    assert frame_crc32(frame, "crc32c") == google_crc32c.value(frame.tobytes())
    flat = frame.view(np.uint8).reshape(-1)
    for at in range(0, flat.size, 97):
        bad = flat.copy()
        bad[at] ^= 0x10
        bad_frame = bad.view(np.uint16).reshape(frame.shape)
        for checksum in ("crc32", "crc32c"):
            assert frame_crc32(bad_frame, checksum) != frame_crc32(frame, checksum)
    with pytest.raises(StoreFormatError, match="unknown frame checksum"):
        frame_crc32(frame, "md5")
