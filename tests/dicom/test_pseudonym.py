import re

from radflow.dicom.pseudonym import keyed_hash, remap_uid


def test_keyed_hash_is_deterministic_keyed_and_purpose_separated():
    assert keyed_hash(b"k", "SYN0001", purpose="patient") == keyed_hash(b"k", "SYN0001", purpose="patient")
    assert keyed_hash(b"k", "SYN0001", purpose="patient") != keyed_hash(b"k2", "SYN0001", purpose="patient")
    assert keyed_hash(b"k", "SYN0001", purpose="patient") != keyed_hash(b"k", "SYN0001", purpose="study")
    assert "SYN0001" not in keyed_hash(b"k", "SYN0001", purpose="patient")
    assert keyed_hash(b"k", "", purpose="patient") == ""


def test_remapped_uids_are_valid_and_collision_free():
    uids = {remap_uid(b"k", f"1.2.826.0.1.3680043.8.498.{i}") for i in range(20000)}
    assert len(uids) == 20000
    for u in list(uids)[:200]:
        assert u.startswith("2.25.") and len(u) <= 64 and re.fullmatch(r"2\.25\.[1-9][0-9]*", u)
    assert remap_uid(b"k", "1.2.3") == remap_uid(b"k", "1.2.3") != remap_uid(b"other", "1.2.3")
