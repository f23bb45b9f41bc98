import glob
import io
import os

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from radflow.config import Limits
from radflow.errors import InputRejected, NoDecoderError, Reason
from radflow.dicom.read import decodable_syntaxes, decode_frames, header_from_dataset, read_dataset, read_header


SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
BASIC_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def make_dicom(rows=32, cols=24, frames=1, ts=ExplicitVRLittleEndian, pixels=True, bits=16, sop_class=SC_IMAGE, **extra) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid
    ds.PatientID = "CANARY-PATIENT"
    ds.Modality = "OT"
    if pixels:
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = bits
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 0
        if frames > 1:
            ds.NumberOfFrames = frames
        dt = np.uint16 if bits == 16 else np.uint8
        arr = (np.arange(frames * rows * cols) % 251).astype(dt)
        ds.PixelData = arr.tobytes()
    for k, v in extra.items():
        setattr(ds, k, v)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def unknown_syntax() -> bytes:
    """A file whose transfer syntax UID is one no decoder knows (1.2.840.10008.1.2.1 → …1.2.9)."""
    data = make_dicom()
    return data.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.9\x00", 1)


def truncated_encapsulated() -> bytes:
    """An RLE-compressed object cut in the middle of its encapsulated pixel data."""
    from pydicom.pixels.utils import compress
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(io.BytesIO(make_dicom(rows=64, cols=64)))
    compress(ds, RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    buf = io.BytesIO()
    ds.save_as(buf)
    data = buf.getvalue()
    return data[: len(data) - 100]


def reject_reason(data: bytes, limits=Limits()) -> Reason:
    with pytest.raises(InputRejected) as info:
        ds = read_dataset(data)
        h = header_from_dataset(ds, limits)
        decode_frames(ds, h)
    assert "CANARY" not in str(info.value)
    return info.value.reason


def test_decodes_multiframe_with_frame_axis():
    ds = read_dataset(make_dicom(frames=3))
    h = header_from_dataset(ds, Limits())
    frames, decoder = decode_frames(ds, h)
    assert frames.shape == (3, 32, 24) and frames.dtype == np.uint16 and decoder == "pydicom"
    np.testing.assert_array_equal(frames, ds.pixel_array)
    assert h.frame_bytes == 32 * 24 * 2
    assert "CANARY" not in repr(h) and "CANARY" not in str(h.public())


def test_header_only_read_does_not_need_pixels(tmp_path):
    p = tmp_path / "a.dcm"
    p.write_bytes(make_dicom(rows=40, cols=50))
    with open(p, "rb") as fh:
        h = read_header(fh, Limits())
    assert (h.rows, h.cols, h.frames, h.dtype) == (40, 50, 1, "<u2")


class _Counting(io.BytesIO):
    """A file object that counts the bytes read from it."""

    read_bytes = 0

    def read(self, size=-1):
        out = super().read(size)
        self.read_bytes += len(out)
        return out


def test_header_only_read_reads_the_header_not_the_pixels():
    """The header index reads a header; the pixels are read once, by the batch (before: checking every
    element read the deferred pixel data too, so each file was read whole twice)."""
    data = make_dicom(rows=1024, cols=1024)  # 2 MiB of pixel data
    fh = _Counting(data)
    h = read_header(fh, Limits())
    assert (h.rows, h.cols) == (1024, 1024)
    assert fh.read_bytes < 4096, fh.read_bytes


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"])
def test_native_pixels_are_decoded_from_the_objects_own_bytes(syntax):
    """A whole object in memory: native pixel data is decoded from a view of those bytes (no copy made by
    the parser), with exactly pydicom's values and element values; a cut object is still TRUNCATED."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, UID

    ds0 = pydicom.dcmread(io.BytesIO(make_dicom(rows=300, cols=200, frames=2)))
    ds0.file_meta.TransferSyntaxUID = UID(syntax)
    ds0.WindowCenter, ds0.WindowWidth = 2048, 4096  # ordinary elements beside the pixels
    ds0.add_new(0x00091010, "LO", "ACME")
    ds0.add_new(0x00091011, "OB", bytes(range(256)) * 400)  # a large non-pixel value: 100 KiB
    if syntax == ExplicitVRBigEndian:
        ds0.PixelData = np.frombuffer(ds0.PixelData, "<u2").astype(">u2").tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds0, implicit_vr=syntax == "1.2.840.10008.1.2", little_endian=syntax != ExplicitVRBigEndian,
                     force_encoding=True)
    data = buf.getvalue()
    expected = pydicom.dcmread(io.BytesIO(data))
    ds = read_dataset(data)
    frames, decoder = decode_frames(ds, header_from_dataset(ds, Limits()))
    np.testing.assert_array_equal(frames, expected.pixel_array)
    assert frames.dtype == expected.pixel_array.dtype and decoder == "pydicom"
    assert ds[0x00091011].value == expected[0x00091011].value and ds.WindowWidth == expected.WindowWidth
    if syntax != DeflatedExplicitVRLittleEndian:  # (parsed from the inflated stream)
        assert isinstance(ds.PixelData, memoryview) and np.shares_memory(np.frombuffer(ds.PixelData, np.uint8),
                                                                         np.frombuffer(data, np.uint8))
        with pytest.raises(InputRejected) as cut:
            read_dataset(data[:-1000])
        assert cut.value.reason == Reason.TRUNCATED


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("dirty", [False, True], ids=["clean", "set-unused-bits"])
def test_unused_bits_are_corrected_exactly_as_pydicom_does_and_only_where_set(signed, dirty):
    """12 bits stored in 16: values whose unused bits are clear (or copies of the sign bit) are pydicom's
    corrected values already and stay a view of the object's bytes; values with other bits set there (an
    overlay, garbage, a sign not carried up) come out exactly as pydicom's correction makes them."""
    rng = np.random.default_rng(7)
    values = rng.integers(-2048 if signed else 0, 2048 if signed else 4096, size=(256, 256)).astype("<i2" if signed else "<u2")  # 128 KiB: taken in place
    raw = values.view("<u2").copy()
    if dirty:  # random bits above bit 11 in a third of the pixels
        raw[::3] = (raw[::3] & 0x0FFF) | (rng.integers(1, 16, size=raw[::3].shape).astype("<u2") << 12)
    ds0 = pydicom.dcmread(io.BytesIO(make_dicom(rows=256, cols=256)))
    ds0.PixelRepresentation = int(signed)
    ds0.BitsStored, ds0.HighBit = 12, 11
    ds0.PixelData = raw.tobytes()
    buf = io.BytesIO()
    ds0.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    expected = pydicom.dcmread(io.BytesIO(data)).pixel_array  # pydicom's default: corrected
    ds = read_dataset(data)
    frames, _ = decode_frames(ds, header_from_dataset(ds, Limits()))
    np.testing.assert_array_equal(frames[0], expected)
    assert frames.dtype == expected.dtype
    np.testing.assert_array_equal(frames[0], values)  # what the 12 bits say
    assert np.shares_memory(frames, np.frombuffer(data, np.uint8)) == (not dirty)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: b"hello, not dicom" * 100, Reason.NOT_DICOM),
        (lambda: make_dicom()[:-300], Reason.TRUNCATED),
        (lambda: make_dicom(pixels=False, sop_class=BASIC_SR), Reason.NON_IMAGE),
        (lambda: make_dicom(pixels=False), Reason.NON_IMAGE),  # an image object stored without pixel data
        (lambda: truncated_encapsulated(), Reason.TRUNCATED),
        (lambda: make_dicom(rows=20000, cols=20000), Reason.DIMENSION_LIMIT),
        (lambda: unknown_syntax(), Reason.NO_DECODER),
    ],
    ids=["not-dicom", "truncated", "non-image", "image-without-pixels", "truncated-encapsulated", "too-large", "unknown-syntax"],
)
def test_rejections_have_the_right_reason(make, reason):
    if reason == Reason.DIMENSION_LIMIT:
        data = make_dicom(rows=64, cols=64)
        with pytest.raises(InputRejected) as info:
            header_from_dataset(read_dataset(data), Limits(max_frame_pixels=1000))
        assert info.value.reason == reason
        return
    assert reject_reason(make()) == reason


def test_pixel_length_mismatch():
    ds = pydicom.dcmread(io.BytesIO(make_dicom()))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    buf = io.BytesIO()
    ds.save_as(buf)
    assert reject_reason(buf.getvalue()) == Reason.PIXEL_LENGTH_MISMATCH


def test_no_decoder_error_names_syntax():
    ds = read_dataset(unknown_syntax())
    with pytest.raises(NoDecoderError, match="1.2.840.10008.1.2.9"):
        decode_frames(ds, header_from_dataset(ds, Limits()))


def test_decodable_syntaxes_lists_core_ones():
    names = {s["uid"]: s for s in decodable_syntaxes()}
    assert names["1.2.840.10008.1.2.1"]["plugins"] == ["pydicom"]
    assert names["1.2.840.10008.1.2.4.90"]["available"]  # JPEG 2000 lossless via pylibjpeg-openjpeg


def test_bundled_files_decode_like_pixel_array(pydicom_test_files):
    checked = 0
    for path in sorted(glob.glob(os.path.join(pydicom_test_files, "*"))):
        try:
            ds = read_dataset(open(path, "rb").read())
            h = header_from_dataset(ds, Limits())
            frames, _ = decode_frames(ds, h)
        except (InputRejected, IsADirectoryError):
            continue
        ref = pydicom.dcmread(path).pixel_array
        np.testing.assert_array_equal(frames.reshape(ref.shape), ref, err_msg=path)
        checked += 1
    assert checked >= 40


def _outcome(src) -> tuple:
    """What reading and decoding ``src`` gives: the rejection, or the header, anomalies, decoder and pixels."""
    try:
        found: list[str] = []
        ds = read_dataset(src, anomalies=found)
        h = header_from_dataset(ds, Limits(), found)
        frames, decoder = decode_frames(ds, h)
    except InputRejected as exc:
        return ("rejected", exc.reason, exc.detail)
    import json

    header = json.dumps(h.public(), sort_keys=True, default=str)  # (NaN reads equal here)
    return ("ok", header, tuple(h.anomalies), decoder, frames.dtype.str, frames.shape, frames.tobytes())


def test_decoding_from_the_objects_bytes_equals_decoding_from_the_file(pydicom_test_files):
    """Every bundled object (pydicom's test files, pydicom-data's vendor images): read from its bytes in
    memory (values taken in place) and from an open file (the parser copies them out) gives the same
    header, anomalies, decoder and pixels, or the same rejection."""
    import data_store

    paths = [p for folder in (pydicom_test_files, os.path.join(os.path.dirname(data_store.__file__), "data"))
             for p in sorted(glob.glob(os.path.join(folder, "*"))) if os.path.isfile(p)]
    decoded = 0
    for path in paths:
        data = open(path, "rb").read()
        if len(data) > 64 << 20:
            continue
        with open(path, "rb") as fh:
            from_file = _outcome(fh)
        assert _outcome(data) == from_file, path
        decoded += from_file[0] == "ok"
    assert decoded >= 60, decoded


def test_an_object_cut_inside_a_large_value_is_truncated():
    """Cut inside a large non-pixel value (taken from the object's bytes after parsing): ``TRUNCATED``, never
    an image with a short value."""
    ds0 = pydicom.dcmread(io.BytesIO(make_dicom(rows=32, cols=32)))
    ds0.add_new(0x00091010, "LO", "ACME")
    ds0.add_new(0x00091011, "OB", bytes(200_000))
    buf = io.BytesIO()
    ds0.save_as(buf)
    data = buf.getvalue()
    assert reject_reason(data[: len(data) - 2048 - 150_000]) == Reason.TRUNCATED
