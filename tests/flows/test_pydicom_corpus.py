"""pydicom's bundled test files and the pydicom-data package, ingested together with the defaults.

Every file that pydicom (lenient) or GDCM decodes is stored, or reported as a duplicate of a stored
instance with the right verdict; what was read leniently is recorded as anomalies. Each stored frame
of a losslessly compressed file equals an independent decoder's output (dcmtk's command-line
decompressors; GDCM's image reader for JPEG 2000, which dcmtk does not read).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter

import numpy as np
import pydicom
import pytest

import radflow
from radflow.config import Limits
from radflow.errors import InputRejected
from radflow.dicom.read import decode_frames, header_from_dataset, read_dataset

pytestmark = pytest.mark.slow

#: files the strict reader rejects and the default keeps, with the anomaly each must carry
LENIENT = {
    "bad_sequence.dcm": "INVALID_VALUE SOPInstanceUID (0008,0018) UI",
    "rtdose.dcm": "INVALID_VALUE ReferencedSOPInstanceUID (0008,1155) UI",
    "SC_rgb_jpeg.dcm": "SYNTAX_MISMATCH_REPAIRED",
    "OT-PAL-8-face.dcm": "NO_FILE_META",
    "JPEG-lossy.dcm": "DECODER_FALLBACK gdcm-image-reader",
    "empty_lut_jpeg_ll.dcm": "LUT_DESCRIPTOR_EMPTY ModalityLUTSequence",
    "long_accession.dcm": "INVALID_VALUE AccessionNumber (0008,0050) SH",
}
#: big-endian copies of little-endian instances: the same values, so identical duplicates
BIG_ENDIAN_COPIES = ("MR_small_bigendian.dcm", "MR_small_expb.dcm", "emri_small_big_endian.dcm", "rtdose_expb.dcm")
#: lossless syntaxes and the dcmtk tool that decompresses each (JPEG 2000 goes to GDCM)
DCMTK = {
    "1.2.840.10008.1.2.4.57": ["dcmdjpeg"], "1.2.840.10008.1.2.4.70": ["dcmdjpeg"],
    "1.2.840.10008.1.2.4.80": ["dcmdjpls"], "1.2.840.10008.1.2.5": ["dcmdrle"],
    "1.2.840.10008.1.2.1.99": ["dcmconv", "+te"], "1.2.840.10008.1.2.2": ["dcmconv", "+te"],
}
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


def _pydicom_data_dir() -> str:
    import data_store

    return os.path.join(os.path.dirname(data_store.__file__), "data")


def _write_synthetic_defects(folder, jpeg_ll: str) -> None:
    """Two real 16-bit JPEG Lossless SV1 images with defects legacy archives carry: an empty LUT
    Descriptor in the Modality LUT Sequence, and an Accession Number longer than SH allows."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    before = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        ds = pydicom.dcmread(jpeg_ll)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["empty-lut"])
        item = Dataset()
        item.add_new(0x00283002, "US", None)  # LUT Descriptor, empty
        item.add_new(0x00283006, "US", [0, 1, 2, 3])  # LUT Data
        item.ModalityLUTType = "HU"
        ds.ModalityLUTSequence = [item]
        ds.save_as(folder / "empty_lut_jpeg_ll.dcm")
        ds = pydicom.dcmread(jpeg_ll)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["long-accession"])
        ds.AccessionNumber = "A" * 40
        ds.save_as(folder / "long_accession.dcm")
    finally:
        pydicom.config.settings.writing_validation_mode = before


def _reference(path: str) -> np.ndarray | None:
    """What an independent reading gives: pydicom's lenient decode (forced for a file without file
    meta), else GDCM's image reader; None when neither decodes the file."""
    try:
        try:
            ds = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            ds = pydicom.dcmread(path, force=True)
            ds.file_meta = pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian if ds.is_implicit_VR else (
                pydicom.uid.ExplicitVRLittleEndian if ds.is_little_endian else pydicom.uid.ExplicitVRBigEndian)
        return ds.pixel_array
    except Exception:
        return _gdcm(path)


def _gdcm(path: str) -> np.ndarray | None:
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(path)
    if not reader.Read():
        return None
    image = reader.GetImage()
    buf = image.GetBuffer()
    if buf is None:
        return None
    fmt = image.GetPixelFormat()
    dtype = {"UINT8": "<u1", "INT8": "<i1", "UINT12": "<u2", "INT12": "<i2", "UINT16": "<u2", "INT16": "<i2"}.get(
        fmt.GetScalarTypeAsString())
    if dtype is None:
        return None
    dims = [int(d) for d in image.GetDimensions()]
    shape = ([dims[2]] if len(dims) > 2 else []) + [dims[1], dims[0]] + ([fmt.GetSamplesPerPixel()] if fmt.GetSamplesPerPixel() > 1 else [])
    return np.frombuffer(buf.encode("utf-8", "surrogateescape"), dtype=dtype).reshape(shape)


@pytest.fixture(scope="module")
def corpus_store(tmp_path_factory, pydicom_test_files, prefect_api, dask_client):
    tmp = tmp_path_factory.mktemp("corpus")
    corpus = tmp / "corpus"
    shutil.copytree(pydicom_test_files, corpus / "pydicom")
    shutil.copytree(_pydicom_data_dir(), corpus / "pydicom-data")
    _write_synthetic_defects(corpus / "synthetic", os.path.join(_pydicom_data_dir(), "JPEG-LL.dcm"))
    store = str(tmp / "corpus.zarr")
    summary = radflow.ingest(str(corpus), store)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(corpus) for f in fs if not f.startswith("."))
    return store, files, summary


def test_every_real_image_is_kept(corpus_store):
    from radflow.config import Settings, resolve_secret_key
    from radflow.dicom.pseudonym import remap_uid

    store, files, summary = corpus_store
    key = resolve_secret_key(Settings())
    st = radflow.open_store(store)
    ledger = st.ledger()
    assert sorted(ledger["source"]) == files
    assert ledger["status"].isin(["ok", "rejected", "duplicate"]).all()
    assert ledger.loc[ledger["status"] != "ok", "reason"].notna().all()
    inst = st.instances()
    by_source = ledger.set_index("source")
    decodable = 0
    for path in files:
        ref = _reference(path)
        if ref is None:
            continue
        decodable += 1
        status, reason = by_source.loc[path, "status"], by_source.loc[path, "reason"]
        assert status in ("ok", "duplicate"), f"{os.path.basename(path)} decodes but was {status} {reason}"
        if status == "duplicate":
            sop = remap_uid(key, str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID))
            stored = inst[inst["sop_uid"] == sop].sort_values("frame")
            assert len(stored) > 0 and path not in set(stored["source"])
            if reason == "DUPLICATE_IDENTICAL":
                pixels = np.stack([st.raw_frame(int(i)) for i in stored["index"]])
                np.testing.assert_array_equal(pixels.reshape(ref.shape), ref, err_msg=path)
            continue
        rows = inst[inst["source"] == path].sort_values("frame")
        samples = int(rows.iloc[0]["samples"])
        frames = ref.reshape((len(rows), *ref.shape[-3:])) if samples > 1 else ref.reshape(
            (len(rows), int(rows.iloc[0]["rows"]), int(rows.iloc[0]["cols"])))
        for (_, row), expected in zip(rows.iterrows(), frames):
            np.testing.assert_array_equal(st.raw_frame(int(row["index"])), expected, err_msg=path)
    assert decodable >= 150 and radflow.verify(store)["problems"] == []

    name = {os.path.basename(p): p for p in files}
    for fname, expected in LENIENT.items():
        row = by_source.loc[name[fname]]
        assert row["status"] == "ok", (fname, row["reason"], row["detail"])
        assert any(a.startswith(expected) for a in row["anomalies"]), (fname, list(row["anomalies"]))
        frames = inst[inst["source"] == name[fname]]
        assert all(any(a.startswith(expected) for a in f) for f in frames["anomalies"])
        assert all("=" not in a and "'" not in a for a in row["anomalies"])  # element and VR, never a value
    assert inst.loc[inst["source"] == name["JPEG-lossy.dcm"], "decoder"].eq("gdcm-image-reader").all()
    for fname in BIG_ENDIAN_COPIES:
        assert by_source.loc[name[fname], "reason"] == "DUPLICATE_IDENTICAL", fname
    assert summary["anomalies"].get("INVALID_VALUE", 0) >= 3 and summary["anomalies"].get("NO_FILE_META", 0) >= 1

    # the strict mode still rejects what the default keeps
    for fname in ("bad_sequence.dcm", "rtdose.dcm", "long_accession.dcm", "OT-PAL-8-face.dcm", "SC_rgb_jpeg.dcm"):
        with pytest.raises(InputRejected) as info:
            data = open(name[fname], "rb").read()
            ds = read_dataset(data, validation="raise")
            decode_frames(ds, header_from_dataset(ds, Limits(validation="raise")))
        assert info.value.reason.value in ("INVALID_VALUE", "NOT_DICOM", "SYNTAX_MISMATCH")

    ok = ledger[ledger["status"] == "ok"]
    codes = Counter(a.split(" ", 1)[0] for found in ok["anomalies"] for a in sorted({x.split(" ", 1)[0] for x in found}))
    table = Counter(f"{s}:{r}" for s, r in zip(ledger["status"], ledger["reason"].fillna("")) if s != "ok")
    print(f"\ncorpus: {len(files)} files, {decodable} decodable by pydicom (lenient) or GDCM, {len(ok)} stored "
          f"({len(inst)} frames), {int(ok['anomalies'].map(len).gt(0).sum())} of them with anomalies "
          f"({', '.join(f'{k} {v}' for k, v in sorted(codes.items()))}); "
          + ", ".join(f"{k} {v}" for k, v in sorted(table.items())))


def test_lossless_frames_equal_an_independent_decoder(corpus_store):
    """dcmtk decompresses every losslessly compressed (and big-endian, deflated) stored file; pydicom's
    read of its output equals the stored frames. JPEG 2000 lossless is checked against GDCM."""
    if not shutil.which("dcmdjpeg"):
        if os.environ.get("CI"):
            pytest.fail("dcmtk is not installed (make test installs Debian's dcmtk)")
        pytest.skip("dcmtk not installed (apt-get install dcmtk)")
    from radflow.config import Settings, resolve_secret_key
    from radflow.dicom.pseudonym import remap_uid

    store, files, _ = corpus_store
    key = resolve_secret_key(Settings())
    st = radflow.open_store(store)
    inst = st.instances()
    ledger = st.ledger()
    kept = ledger[(ledger["status"] == "ok") | (ledger["reason"] == "DUPLICATE_IDENTICAL")]
    checked: Counter[str] = Counter()
    for path, status in zip(kept["source"], kept["status"]):
        head = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        ts = str(head.file_meta.get("TransferSyntaxUID", "")) if hasattr(head, "file_meta") else ""
        if ts not in DCMTK and ts != J2K_LOSSLESS:
            continue
        if ts == "1.2.840.10008.1.2.2" and int(head.get("BitsAllocated", 16)) > 16:
            continue  # 32-bit pixels under VR OW: dcmtk swaps 16-bit words, pydicom (and the LE copy) 32-bit values
        # an identical duplicate is checked against the stored copy of its instance
        rows = inst[inst["source"] == path] if status == "ok" else inst[inst["sop_uid"] == remap_uid(key, str(head.SOPInstanceUID))]
        rows = rows.sort_values("frame")
        stored = np.stack([st.raw_frame(int(i)) for i in rows["index"]])
        if ts in DCMTK:
            out = os.path.join(os.path.dirname(store), "dcmtk.dcm")
            subprocess.run([*DCMTK[ts], path, out], check=True, capture_output=True, timeout=120)
            ref = pydicom.dcmread(out).pixel_array
        else:
            ref = _gdcm(path)
            bits, signed = int(rows["bits_stored"].iloc[0]), int(rows["pixel_representation"].iloc[0]) == 1
            if signed and ref.min() >= 0 and ref.max() < (1 << bits):  # GDCM keeps the codestream's unsigned
                half = 1 << (bits - 1)  # values; the header (which pydicom follows) says signed: sign-extend
                ref = ((ref.astype(np.int64) + half) % (1 << bits) - half).astype(stored.dtype)
        np.testing.assert_array_equal(stored, ref.reshape(stored.shape), err_msg=path)
        checked[ts] += 1
    assert sum(checked.values()) >= 30 and len(checked) >= 5, checked
    print("\nindependent decoder cross-check (files per transfer syntax): "
          + ", ".join(f"{pydicom.uid.UID(k).name} {v}" for k, v in sorted(checked.items())))
