"""A generated malformed corpus: every class that cannot be kept is rejected with its reason, before
any large allocation; what the reference toolkits read is kept with its anomaly recorded (and rejected
by the strict mode); the run completes with one ledger row per file."""

from __future__ import annotations

import io
import os

import numpy as np
import pydicom
import pytest

import radflow
from tests.dicom.test_read import BASIC_SR, make_dicom, truncated_encapsulated, unknown_syntax

pytestmark = pytest.mark.slow


def _resave(data: bytes, edit) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    edit(ds)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def _lying_syntax() -> bytes:
    """Native (unencapsulated) pixel bytes under a file meta that claims RLE Lossless (same UID length)."""
    data = make_dicom(rows=64, cols=64)
    return data.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.5\x00", 1)


def _invalid_value() -> bytes:
    """A Patient's Name over the PN component limit of 64 characters (pydicom raises on reading it strictly)."""
    data = make_dicom(rows=16, cols=16, PatientName="A")
    return data.replace(b"\x10\x00\x10\x00PN\x02\x00A ", b"\x10\x00\x10\x00PN\x50\x00" + b"CANARY" * 13 + b"XY", 1)


def _implicit_under_explicit() -> bytes:
    """File meta says explicit VR little endian; the dataset after it is encoded implicit VR."""
    explicit = make_dicom(rows=16, cols=16)
    ds = pydicom.dcmread(io.BytesIO(explicit))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    implicit = buf.getvalue()

    def body_start(data: bytes) -> int:
        return 132 + 12 + int.from_bytes(data[140:144], "little")

    return explicit[: body_start(explicit)] + implicit[body_start(implicit):]


def _short_pixels(ds):
    ds.PixelData = ds.PixelData[:100]


CASES = {
    "empty.dcm": (lambda: b"", "NOT_DICOM"),
    "random.dcm": (lambda: os.urandom(5000), "NOT_DICOM"),
    "text.txt": (lambda: b"patient list\n" * 50, "NOT_DICOM"),
    "prefix_then_garbage.dcm": (lambda: b"\0" * 128 + b"DICM" + os.urandom(300), "NOT_DICOM"),
    "truncated_pixels.dcm": (lambda: make_dicom(rows=128, cols=128)[:-5000], "TRUNCATED"),
    "truncated_encapsulated.dcm": (truncated_encapsulated, "TRUNCATED"),
    "short_pixel_data.dcm": (lambda: _resave(make_dicom(rows=64, cols=64), _short_pixels), "PIXEL_LENGTH_MISMATCH"),
    "absurd_dimensions.dcm": (lambda: _resave(make_dicom(rows=16, cols=16), lambda ds: (setattr(ds, "Rows", 65535), setattr(ds, "Columns", 65535), setattr(ds, "NumberOfFrames", 9999))), "DIMENSION_LIMIT"),
    "unknown_syntax.dcm": (unknown_syntax, "NO_DECODER"),
    "structured_report.dcm": (lambda: make_dicom(pixels=False, sop_class=BASIC_SR), "NON_IMAGE"),
    "no_rows.dcm": (lambda: _resave(make_dicom(), lambda ds: delattr(ds, "Rows")), "DECODE_ERROR"),
    "bad_bits.dcm": (lambda: _resave(make_dicom(), lambda ds: setattr(ds, "BitsAllocated", 13)), "DECODE_ERROR"),
}


#: kept by default with the anomaly each carries; rejected by the strict mode with the reason given
KEPT = {
    "lying_syntax.dcm": (_lying_syntax, "DECODER_FALLBACK", None),  # GDCM reads the native bytes under the RLE claim
    "invalid_value.dcm": (_invalid_value, "INVALID_VALUE PatientName (0010,0010) PN", "INVALID_VALUE"),
    "implicit_under_explicit.dcm": (_implicit_under_explicit, "SYNTAX_MISMATCH_REPAIRED", "SYNTAX_MISMATCH"),
}


def test_malformed_corpus(tmp_path, prefect_api, dask_client):
    from radflow.config import Limits
    from radflow.errors import InputRejected
    from radflow.dicom.read import decode_frames, header_from_dataset, read_dataset

    src = tmp_path / "bad"
    src.mkdir()
    for name, (make, _) in CASES.items():
        (src / name).write_bytes(make())
    for name, (make, _, _) in KEPT.items():
        (src / name).write_bytes(make())
    (src / "good.dcm").write_bytes(make_dicom(rows=32, cols=32))
    store = str(tmp_path / "bad.zarr")
    summary = radflow.ingest(str(src), store)
    ledger = radflow.open_store(store).ledger().set_index("source")
    assert len(ledger) == len(CASES) + len(KEPT) + 1 == summary["discovered"]
    got = {os.path.basename(s): r for s, r in ledger["reason"].items()}
    expected = {name: reason for name, (_, reason) in CASES.items()}
    assert {k: got[k] for k in expected} == expected
    assert ledger.loc[str(src / "good.dcm"), "status"] == "ok"
    assert len(set(expected.values())) >= 7 and len(expected) >= 10
    assert "CANARY" not in ledger.to_csv()
    st = radflow.open_store(store)
    inst = st.instances().set_index("source")
    reference = pydicom.dcmread(io.BytesIO(make_dicom(rows=64, cols=64))).pixel_array
    for name, (make, anomaly, strict) in KEPT.items():
        row = ledger.loc[str(src / name)]
        assert row["status"] == "ok", (name, row["reason"], row["detail"])
        assert any(a.startswith(anomaly) for a in row["anomalies"]), (name, list(row["anomalies"]))
        assert any(a.startswith(anomaly) for a in inst.loc[str(src / name), "anomalies"])
        if strict is None:
            continue
        with pytest.raises(InputRejected) as info:  # the opt-in strict mode rejects it
            ds = read_dataset(make(), validation="raise")
            decode_frames(ds, header_from_dataset(ds, Limits(validation="raise")))
        assert info.value.reason.value == strict
    from radflow.store.inspect import describe

    assert describe(store)["anomalies"] == summary["anomalies"] == {
        "DECODER_FALLBACK": 1, "INVALID_VALUE": 1, "SYNTAX_MISMATCH_REPAIRED": 1}  # counted for inspect and the summary
    lying = inst.loc[str(src / "lying_syntax.dcm")]
    assert lying["decoder"] == "gdcm-image-reader"
    np.testing.assert_array_equal(st.raw_frame(int(lying["index"])), reference)
