"""Zip and tar sources: members read without extraction; escaping, link, device and bomb members rejected."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile

import numpy as np
import pydicom
import pytest

import radflow
from radflow.config import Limits
from radflow.ingest.archives import list_members

pytestmark = pytest.mark.slow


def _make_archives(root, dicoms):
    data = [open(p, "rb").read() for p in dicoms]
    zpath = os.path.join(root, "study.zip")
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("series/a.dcm", data[0])
        zf.writestr("series/b.dcm", data[1])
        zf.writestr("../escape.dcm", data[0])
        zf.writestr("/abs/path.dcm", data[0])
        link = zipfile.ZipInfo("series/link.dcm")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr("bomb.dcm", b"\0" * (20 * 2**20))
    tpath = os.path.join(root, "study.tar.gz")
    with tarfile.open(tpath, "w:gz") as tf:
        def add(name, payload=None, **kw):
            info = tarfile.TarInfo(name)
            for k, v in kw.items():
                setattr(info, k, v)
            if payload is not None:
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
            else:
                tf.addfile(info)
        add("c.dcm", data[2])
        add("../../up.dcm", data[2])
        add("sym.dcm", type=tarfile.SYMTYPE, linkname="c.dcm")
        add("hard.dcm", type=tarfile.LNKTYPE, linkname="c.dcm")
        add("dev.dcm", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
    return zpath, tpath


def test_archive_members_ingested_and_unsafe_rejected(tmp_path, prefect_api, dask_client):
    from radflow.synth import write_archive

    src = write_archive(tmp_path / "src", 3, seed=9, sizes=((512, 512),), broken=False)
    dicoms = sorted(os.path.join(d, f) for d, _, fs in os.walk(src.dicom) for f in fs)
    drop = tmp_path / "drop"
    drop.mkdir()
    zpath, tpath = _make_archives(str(drop), dicoms)
    members = {u.split("::")[0]: why for u, _, _, why in list_members(zpath, os.path.getsize(zpath), Limits())}
    assert members["zip://series/a.dcm"] is None and "escapes" in members["zip://../escape.dcm"]
    assert "absolute" in members["zip:///abs/path.dcm"] and "link" in members["zip://series/link.dcm"]
    assert "compression ratio" in members["zip://bomb.dcm"]
    before = sorted(os.listdir(drop))
    store = str(tmp_path / "arch.zarr")
    summary = radflow.ingest(str(drop), store)
    assert sorted(os.listdir(drop)) == before  # nothing extracted beside the archives
    ledger = st_ledger = radflow.open_store(store).ledger()
    by_name = {u.split("::")[0]: (s, r) for u, s, r in zip(ledger["source"], ledger["status"], ledger["reason"])}
    ok = {k for k, (s, _) in by_name.items() if s == "ok"}
    assert ok == {"zip://series/a.dcm", "zip://series/b.dcm", "tar://c.dcm"}
    unsafe = {k for k, (_, r) in by_name.items() if r == "ARCHIVE_UNSAFE_MEMBER"}
    assert unsafe == {"zip://../escape.dcm", "zip:///abs/path.dcm", "zip://series/link.dcm", "zip://bomb.dcm",
                      "tar://../../up.dcm", "tar://sym.dcm", "tar://hard.dcm", "tar://dev.dcm"}
    assert len(st_ledger) == summary["discovered"] == 11
    st = radflow.open_store(store)
    inst = st.instances()
    expected = {"zip://series/a.dcm": dicoms[0], "zip://series/b.dcm": dicoms[1], "tar://c.dcm": dicoms[2]}
    for _, row in inst.iterrows():
        ref = pydicom.dcmread(expected[row["source"].split("::")[0]]).pixel_array
        np.testing.assert_array_equal(st.raw_frame(int(row["index"])), ref)
    again = radflow.ingest(str(drop), store)
    assert again["new"] == 0


def test_dicomdir_source_lists_referenced_files(tmp_path, pydicom_test_files, prefect_api, dask_client):
    import shutil

    from pydicom.fileset import FileSet

    media = tmp_path / "media"
    shutil.copytree(os.path.join(pydicom_test_files, "dicomdirtests"), media)
    (media / "unreferenced.dcm").write_bytes(b"not part of the media")
    referenced = sorted(os.path.normpath(i.path) for i in FileSet(pydicom.dcmread(media / "DICOMDIR")))
    store = str(tmp_path / "media.zarr")
    summary = radflow.ingest(str(media / "DICOMDIR"), store)
    ledger = radflow.open_store(store).ledger()
    assert sorted(ledger["source"]) == sorted(referenced + [str(media / "DICOMDIR")])
    assert summary["discovered"] == len(referenced) + 1
