"""DICOM PS3.15 Annex E de-identification of headers (radflow.dicom.deid)."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from pydicom.dataset import Dataset

from radflow.dicom.deid import Deidentifier, annex_e_rules
from radflow.dicom.pseudonym import remap_uid
from radflow.synth.canary import CanaryCorpus, SAFE_PRIVATE, canary_dataset

KEY = b"k" * 32


def test_action_table_is_the_standards():
    rules = annex_e_rules()
    assert len(rules) > 400
    assert rules[0x00100010].basic == "Z"  # Patient's Name
    assert rules[0x00080018].basic == "U"  # SOP Instance UID
    assert rules[0x00080020].modified_dates == "C"  # Study Date: cleaned under the modified-dates option
    assert rules[0x00081140].basic == "X/Z/U*"  # Referenced Image Sequence


def test_every_canaried_attribute_is_removed_emptied_or_replaced():
    ds, canaried, skipped = canary_dataset(0, 0, "20200101")
    assert len(canaried) >= 400 and len(skipped) < 20
    raw = Deidentifier(KEY, keep_identifiers=True).to_json(ds).encode()
    out = Deidentifier(KEY).to_json(ds).encode()
    patterns = CanaryCorpus("x").patterns
    assert all(raw.count(p) > 0 for p in patterns)  # the scan finds them when they are there
    assert {p: out.count(p) for p in patterns} == {p: 0 for p in patterns}


def test_actions_per_code():
    ds, _, _ = canary_dataset(0, 0, "20200101")
    out = Deidentifier(KEY, private_allowlist=(SAFE_PRIVATE[0],)).apply(ds)
    assert "PatientName" in out and not out.PatientName  # Z
    assert "PatientAddress" not in out  # X
    assert out.PersonName == "ANONYMOUS"  # D
    assert out.SOPInstanceUID == remap_uid(KEY, ds.SOPInstanceUID) and out.SOPInstanceUID.startswith("2.25.")
    ref = out.ReferencedImageSequence[0]  # X/Z/U*: kept, UIDs remapped, other table attributes applied
    assert ref.ReferencedSOPInstanceUID == remap_uid(KEY, ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID)
    assert ref.ReferencedSOPClassUID == ds.ReferencedImageSequence[0].ReferencedSOPClassUID
    assert ref.PersonName == "ANONYMOUS"
    assert out[0x00111001].value == SAFE_PRIVATE[1] and out[0x00110010].value == "RADFLOW SAFE"  # allowlisted
    assert 0x00111002 not in out and 0x00091001 not in out and 0x00090010 not in out  # other private elements
    assert 0x60004000 not in out and 0x50000022 not in out  # overlay comments, curves
    assert out.PatientIdentityRemoved == "YES" and out.LongitudinalTemporalInformationModified == "MODIFIED"
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107", "113111"]
    assert "PixelData" not in out and "MediaStorageSOPInstanceUID" not in getattr(out, "file_meta", Dataset())


def _patient_ds(pid: str, date: str, time: str, sop: str) -> Dataset:
    ds = Dataset()
    ds.PatientID, ds.StudyDate, ds.StudyTime, ds.SOPInstanceUID = pid, date, time, sop
    ds.AcquisitionDateTime = date + time
    ds.InstanceCreationDate = date  # not in Table E.1-1: still shifted, or it would reveal the shift
    return ds


def test_dates_shift_per_patient_and_intervals_stay_exact():
    d = Deidentifier(KEY)
    dates = ["20190103", "20190420", "20201129", "20240229"]
    shifted = [d.apply(_patient_ds("P1", x, "081500.25", f"1.2.3.{i}")) for i, x in enumerate(dates)]
    day = lambda s: dt.datetime.strptime(s, "%Y%m%d").date()  # noqa: E731
    orig = [day(x) for x in dates]
    new = [day(s.StudyDate) for s in shifted]
    assert [b - a for a, b in zip(orig, orig[1:])] == [b - a for a, b in zip(new, new[1:])]
    assert all(n != o for n, o in zip(new, orig))
    assert all(s.InstanceCreationDate == s.StudyDate for s in shifted)
    assert all(s.AcquisitionDateTime == s.StudyDate + s.StudyTime for s in shifted)  # one shift for DA, TM, DT
    assert shifted[0].StudyTime != "081500.25" and re.fullmatch(r"\d{6}\.\d{2}", shifted[0].StudyTime)
    other = d.apply(_patient_ds("P2", dates[0], "081500.25", "1.2.4"))
    assert other.StudyDate != shifted[0].StudyDate or other.StudyTime != shifted[0].StudyTime
    removed = Deidentifier(KEY, dates="remove").apply(_patient_ds("P1", dates[0], "081500", "1.2.5"))
    assert not removed.StudyDate and "AcquisitionDateTime" not in removed and "InstanceCreationDate" not in removed


def test_uid_remapping_has_no_collisions_and_is_valid():
    uids = [f"1.2.840.113619.2.55.3.{i}.{j}" for i in range(300) for j in range(100)]
    mapped = {remap_uid(KEY, u) for u in uids}
    assert len(mapped) == len(uids)
    assert all(len(m) <= 64 and re.fullmatch(r"2\.25\.(0|[1-9]\d*)", m) for m in mapped)
    assert remap_uid(KEY, uids[0]) == remap_uid(KEY, uids[0]) != remap_uid(b"other" * 8, uids[0])


def test_header_json_round_trips_through_pydicom():
    ds, _, _ = canary_dataset(1, 2, "20200101")
    doc = Deidentifier(KEY).to_json(ds)
    back = Dataset.from_json(json.loads(doc))
    assert back.PatientID == Deidentifier(KEY).apply(ds).PatientID and back.Modality == "DX"


def test_allowlist_entries_are_checked():
    with pytest.raises(ValueError, match="GGGG,xxEE"):
        Deidentifier(KEY, private_allowlist=("0010,xx01,EVEN GROUP",))


def test_burned_in_rules():
    from radflow.dicom.read import burned_in_rules

    ds = Dataset()
    ds.Modality = "CR"
    assert burned_in_rules(ds) == ""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "YES"
    assert burned_in_rules(ds) == "BurnedInAnnotation YES; ImageType SECONDARY"
    ds = Dataset()
    ds.Modality, ds.ImageType = "US", "ORIGINAL\\PRIMARY"
    assert burned_in_rules(ds) == "Modality US"
    ds = Dataset()
    ds.Modality, ds.ConversionType = "OT", "WSD"
    assert burned_in_rules(ds) == "SCREEN SAVE; Modality OT"


def test_values_read_leniently_never_cost_the_image(pydicom_test_files):
    """A header with values pydicom only reads leniently still gets its (de-identified) JSON: an
    element that cannot be expressed is left out, the rest is kept."""
    import os

    from radflow.dicom.read import read_dataset

    data = open(os.path.join(pydicom_test_files, "badVR.dcm"), "rb").read()
    ds = read_dataset(data, validation="warn")
    for keep in (False, True):
        doc = json.loads(Deidentifier(KEY, keep_identifiers=keep).to_json(ds))
        assert "00080060" in doc or "00100020" in doc  # Modality or Patient ID made it through
