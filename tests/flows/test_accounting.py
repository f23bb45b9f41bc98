"""Every input accounted for: links, FIFOs and unreadable folders and files each get one ledger row
with its reason; a transient rejection is retried by the next run once its cause is fixed; an object
too large to decode in a worker's memory is rejected from its header."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys

import pydicom
import pytest

import radflow
from tests.dicom.test_read import make_dicom

pytestmark = pytest.mark.slow

#: without these capabilities root obeys file permissions, as an operator's service account does
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def _tree(root) -> dict[str, str]:
    """A source with every kind of path; returns name → expected reason ("ok" for stored files)."""
    (root / "src" / "sub").mkdir(parents=True)
    (root / "outside").mkdir()
    (root / "src" / "a.dcm").write_bytes(make_dicom(rows=16, cols=16))
    (root / "outside" / "b.dcm").write_bytes(make_dicom(rows=16, cols=16))
    (root / "src" / "locked").mkdir()
    (root / "src" / "locked" / "c.dcm").write_bytes(make_dicom(rows=16, cols=16))
    (root / "src" / "unreadable.dcm").write_bytes(make_dicom(rows=16, cols=16))
    os.symlink(root / "outside" / "b.dcm", root / "src" / "out_link.dcm")
    os.symlink("/etc/passwd", root / "src" / "passwd")
    os.symlink("a.dcm", root / "src" / "in_link.dcm")
    os.symlink("..", root / "src" / "sub" / "loop")
    os.symlink("nothing", root / "src" / "dangling")
    os.mkfifo(root / "src" / "fifo")
    os.chmod(root / "src" / "locked", 0)
    os.chmod(root / "src" / "unreadable.dcm", 0)
    return {"a.dcm": "ok", "locked": "IO_ERROR", "unreadable.dcm": "IO_ERROR", "out_link.dcm": "LINK_SKIPPED",
            "passwd": "LINK_SKIPPED", "in_link.dcm": "LINK_SKIPPED", "sub/loop": "LINK_SKIPPED",
            "dangling": "LINK_SKIPPED", "fifo": "NOT_REGULAR_FILE"}


def _ingest_without_dac(src, store) -> subprocess.CompletedProcess:
    """``radflow ingest`` as a command, by a root that obeys file permissions."""
    cmd = [*NO_DAC, sys.executable, "-m", "radflow", "ingest", str(src), str(store), "--workers", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux) to drop root's file-permission override")
def test_every_path_gets_a_row_and_fixed_errors_are_retried(tmp_path, prefect_api, dask_client):
    expected = _tree(tmp_path)
    src, store = tmp_path / "src", tmp_path / "s.zarr"
    first = _ingest_without_dac(src, store)
    assert "9 discovered" in first.stdout and "LINK_SKIPPED 5" in first.stdout and "IO_ERROR 2" in first.stdout
    ledger = radflow.open_store(str(store)).ledger()
    got = {os.path.relpath(s, src): (r if st != "ok" else "ok") for s, st, r in
           zip(ledger["source"], ledger["status"], ledger["reason"])}
    assert got == expected
    assert (ledger.loc[ledger["reason"] == "LINK_SKIPPED", "detail"].str.contains("not followed")).all()

    # the cause is fixed: the next run retries the transient rejections only, and stores them
    os.chmod(src / "locked", 0o755)
    os.chmod(src / "unreadable.dcm", 0o644)
    second = radflow.ingest(str(src), str(store))
    assert second["new"] == 2 and second["ok"] == 2, second  # the folder's file and the file, nothing else
    st = radflow.open_store(str(store))
    ledger = st.ledger()
    by = {os.path.relpath(s, src): st_ for s, st_ in zip(ledger["source"], ledger["status"])}
    assert by["locked/c.dcm"] == "ok" and by["unreadable.dcm"] == "ok" and "locked" not in by
    assert len(ledger) == 9 and len(st.ledger(history=True)) == 11  # one terminal row per path; history kept
    assert radflow.ingest(str(src), str(store))["new"] == 0  # nothing left to retry

    # links inside the source are followed on request; those that leave it never are
    followed = tmp_path / "f.zarr"
    radflow.ingest(str(src), str(followed), settings={"follow_links": True})
    f = radflow.open_store(str(followed)).ledger()
    reasons = {os.path.relpath(s, src): (r if st_ != "ok" else st_) for s, st_, r in zip(f["source"], f["status"], f["reason"])}
    assert reasons["in_link.dcm"] == "DUPLICATE_IDENTICAL" and reasons["out_link.dcm"] == "LINK_SKIPPED"
    assert reasons["passwd"] == "LINK_SKIPPED" and reasons["sub/loop"] == "LINK_SKIPPED"
    assert "leaves the source root" in f.set_index("source").loc[str(src / "passwd"), "detail"]


def _pixel_bomb() -> bytes:
    """A JPEG 2000 object whose header declares 43 frames of 7000 × 7000 (4.2 GB decoded) in a few KB."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    ds = pydicom.dcmread(io.BytesIO(make_dicom(rows=16, cols=16)))
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.Rows = ds.Columns = 7000
    ds.NumberOfFrames = 43
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 64] * 43)
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_pixel_bomb_is_rejected_before_decoding(tmp_path, prefect_api, dask_client):
    from radflow.flows.ingest import with_worker_memory
    from radflow.config import Settings

    src = tmp_path / "bomb"
    src.mkdir()
    (src / "bomb.dcm").write_bytes(_pixel_bomb())
    (src / "fine.dcm").write_bytes(make_dicom(rows=32, cols=32))
    store = str(tmp_path / "b.zarr")
    # the 8 GiB workers of the Kubernetes spec radflow generates
    summary = radflow.ingest(str(src), store, settings={"limits": {"worker_memory_bytes": 8 * 2**30}})
    ledger = radflow.open_store(store).ledger().set_index("source")
    assert ledger.loc[str(src / "bomb.dcm"), "reason"] == "MEMORY_LIMIT" and summary["ok"] == 1
    assert "8.0 GiB" in ledger.loc[str(src / "bomb.dcm"), "detail"]
    # without a setting, the limit is the cluster's smallest worker memory
    limits = with_worker_memory(Settings(), dask_client).limits
    assert limits.worker_memory_bytes == min(w["memory_limit"] for w in dask_client.scheduler_info()["workers"].values())


def test_canvas_that_cannot_fit_creates_nothing(tmp_path, prefect_api, dask_client):
    from radflow.errors import ConfigError
    from radflow.flows.process import check_canvas_fits
    from radflow.config import Settings

    src = tmp_path / "one"
    src.mkdir()
    (src / "a.dcm").write_bytes(make_dicom(rows=32, cols=32))
    store = str(tmp_path / "c.zarr")
    radflow.ingest(str(src), store)
    with pytest.raises(ConfigError, match="RADFLOW_CANVAS=16384"):
        radflow.process(store, steps=["preprocess"], canvas=16384, settings={"cluster": {"memory_limit": "8GiB"}})
    assert "images" not in radflow.open_store(store).root  # no array left behind
    check_canvas_fits(Settings(canvas=1024), worker_memory=8 * 2**30)  # the default fits an 8 GiB worker
