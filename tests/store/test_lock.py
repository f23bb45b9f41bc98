"""The store's writer lock: a second writer fails at once, naming the first; a killed writer leaves no
stale lock on local disk and an expiring lease on S3."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from radflow.errors import StoreBusy
from radflow.store.lock import LOCK_NAME, writer


def test_a_second_local_writer_fails_at_once_naming_the_first(tmp_path):
    store = str(tmp_path / "s.zarr")
    with writer(store, command="ingest"):
        t0 = time.monotonic()
        with pytest.raises(StoreBusy, match=r"being written by `radflow ingest` \(pid \d+"):
            with writer(store, command="process"):
                pass
        assert time.monotonic() - t0 < 2
    with writer(store, command="process"):  # released at the end of the block
        pass


def test_a_killed_writer_leaves_no_stale_local_lock(tmp_path):
    store = str(tmp_path / "s.zarr")
    code = ("import sys, time; from radflow.store.lock import writer\n"
            f"with writer({store!r}, command='ingest'):\n    print('held', flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(StoreBusy, match=f"pid {proc.pid}"):
            with writer(store, command="process"):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    # what a table write killed between its temporary file and the rename leaves behind
    tables = tmp_path / "s.zarr" / "tables" / "ledger"
    tables.mkdir(parents=True)
    (tables / "part-abc.parquet.0123abcd.tmp").write_bytes(b"PAR1 half")
    (tables / "part-def.parquet").write_bytes(b"PAR1")
    with writer(store, command="process"):
        assert sorted(p.name for p in tables.iterdir()) == ["part-def.parquet"]  # the next writer removes it


@pytest.mark.slow
def test_an_s3_lease_is_exclusive_renewed_and_taken_over_when_expired(s3_server):
    import s3fs

    opts = {"endpoint_url": s3_server, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("radflow-lock")
    store = "s3://radflow-lock/s.zarr"
    with writer(store, opts, command="ingest", ttl_s=3):
        first = json.loads(fs.cat_file(f"radflow-lock/s.zarr/{LOCK_NAME}"))
        with pytest.raises(StoreBusy, match="radflow ingest"):
            with writer(store, opts, command="process"):
                pass
        time.sleep(4)  # longer than the ttl: the holder renewed its lease meanwhile
        fs.invalidate_cache()
        renewed = json.loads(fs.cat_file(f"radflow-lock/s.zarr/{LOCK_NAME}"))
        assert renewed["id"] == first["id"] and renewed["expires"] > first["expires"]
        with pytest.raises(StoreBusy):
            with writer(store, opts, command="process"):
                pass
    assert not fs.exists(f"radflow-lock/s.zarr/{LOCK_NAME}")
    # a killed run's lease (never deleted) is taken over once it has expired
    fs.pipe_file(f"radflow-lock/s.zarr/{LOCK_NAME}", json.dumps({"command": "ingest", "expires": time.time() - 1}).encode())
    with writer(store, opts, command="process"):
        pass
