"""Versioned stores (format 2): each run that writes is one version, any version reads back exactly as
it was, a format-1 store migrates in place, old versions expire, and what a killed run left
uncommitted is removed."""

from __future__ import annotations

import datetime as dt
import os
import shutil

import numpy as np
import pandas as pd
import pytest

import radflow
from radflow.store import versions
from radflow.store.lock import writer
from radflow.synth import write_archive

pytestmark = pytest.mark.slow

SETTINGS = {"shard_target_mib": 2, "max_files_per_batch": 4}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_archive(tmp_path_factory.mktemp("versions"), 16, seed=21, sizes=((512, 512), (600, 480)), broken=False)


def _subset(archive, dest, n: int) -> str:
    """The first ``n`` files of the archive, copied under ``dest``."""
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(archive.dicom) for f in fs)
    for f in files[:n]:
        out = os.path.join(dest, os.path.relpath(f, archive.dicom))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copy2(f, out)
    return str(dest)


def _frames(st) -> dict[str, bytes]:
    inst = st.instances()
    return {r.sop_uid: st.raw_frame(int(r.index)).tobytes() for r in inst.itertuples()}


def test_each_run_is_a_version_and_an_old_version_reads_as_it_was(archive, tmp_path, prefect_api, dask_client):
    src = _subset(archive, tmp_path / "src", 6)
    store = str(tmp_path / "v.zarr")
    radflow.ingest(src, store, settings=SETTINGS)
    first = radflow.open_store(store, version=radflow.open_store(store).version)  # this version, for good
    ledger1, inst1, frames1 = first.ledger(), first.instances(), _frames(first)
    assert first.meta["format_version"] == 2 and os.path.isdir(os.path.join(store, "repo"))

    _subset(archive, tmp_path / "src", 16)  # ten more inputs arrive; a checkpoint after every batch
    radflow.ingest(src, store, settings={**SETTINGS, "checkpoint_batches": 1})
    everything = first.history()
    assert everything["checkpoint"].sum() >= 3  # "planned", then one per batch at least
    runs = first.history()
    runs = runs[~runs["checkpoint"] & (runs["command"] != "")]
    assert list(runs["command"]) == ["ingest", "ingest"], runs
    assert runs.iloc[0]["summary"]["new"] == 10 and runs.iloc[1]["summary"]["new"] == 6

    # the handle pinned before the second run still reads the first version, arrays and tables alike
    pd.testing.assert_frame_equal(first.ledger(), ledger1)
    assert _frames(first) == frames1
    old = radflow.open_store(store, version=runs.iloc[1]["version"])
    assert old.version == first.version
    pd.testing.assert_frame_equal(old.instances(), inst1)
    assert _frames(old) == frames1
    live = radflow.open_store(store)  # follows the newest version
    new = radflow.open_store(store, version=live.version)
    assert new.version == runs.iloc[0]["version"] and len(new.ledger()) == 16 and len(new.instances()) == 16
    frames2 = _frames(new)
    assert {k: v for k, v in frames2.items() if k in frames1} == frames1
    as_of = radflow.open_store(store, version=dt.datetime.fromisoformat(runs.iloc[1]["time"]) + dt.timedelta(milliseconds=1))
    assert as_of.version == first.version  # the version that was newest at that time
    with pytest.raises(KeyError, match="no version"):
        radflow.open_store(store, version="NOSUCHVERSION0000000")

    # a run with nothing new writes no version
    radflow.ingest(src, store, settings=SETTINGS)
    assert live.version == new.version

    # a table compacted in a later version: the older versions keep their parts; expiring them deletes those
    from radflow.store.tables import compact_store

    with writer(store, command="compact"), versions.transaction(store, command="compact"):
        compact_store(store, min_parts=2)
    assert len(radflow.open_store(store).parts("ledger")) == 1
    pd.testing.assert_frame_equal(radflow.open_store(store, version=old.version).ledger(), ledger1)
    before = sum(len(fs) for _, _, fs in os.walk(os.path.join(store, "tables")))
    with writer(store, command="expire"):
        out = versions.expire(store, dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1))
    assert out["versions_expired"] >= 3 and out["table_files_deleted"] > 0
    after = sum(len(fs) for _, _, fs in os.walk(os.path.join(store, "tables")))
    assert after == before - out["table_files_deleted"]
    with pytest.raises(KeyError):
        radflow.open_store(store, version=old.version)
    latest = radflow.open_store(store)
    assert len(latest.ledger()) == 16 and _frames(latest) == frames2
    assert radflow.digest(store)["store"] == radflow.digest(store)["store"]


def test_a_format_1_store_migrates_in_place_with_the_same_content(archive, tmp_path, prefect_api, dask_client):
    store = str(tmp_path / "old.zarr")
    radflow.ingest(archive.dicom, store, settings={**SETTINGS, "store_format": 1})
    assert os.path.exists(os.path.join(store, "zarr.json")) and not os.path.exists(os.path.join(store, "repo"))
    assert radflow.open_store(store).history().empty
    before = radflow.digest(store)
    frames = _frames(radflow.open_store(store))

    from radflow.ingest.batches import BatchPlan
    from radflow.ingest.journal import completed_batches, pending_journals, write_journal
    from radflow.store.migrate import migrate

    # the plan of a run killed after its batches (a format-1 journal file) moves into the versioned store
    done = sorted(completed_batches(store))[0]
    write_journal(store, [BatchPlan(done, "dicom", "raw/" + next(iter(radflow.open_store(store).raw_arrays())), "<u2",
                                    (512, 512), (), 4, 0, 4, 0, inputs=())], {}, {})
    assert os.path.isdir(os.path.join(store, "journal"))
    out = migrate(store)
    assert out["objects"] > 0 and out["table_parts"] > 0 and not out["already"]
    assert not os.path.exists(os.path.join(store, "zarr.json")) and not os.path.exists(os.path.join(store, "raw"))
    assert not os.path.exists(os.path.join(store, "journal")) and [j.plans[0].batch_id for j in pending_journals(store)] == [done]
    st = radflow.open_store(store)
    assert st.meta["format_version"] == 2 and list(st.history()["command"][:1]) == ["migrate"]
    after = radflow.digest(store)
    same = {k for k in before if k not in ("attrs", "store")}
    assert {k: after[k] for k in same} == {k: before[k] for k in same}
    assert _frames(st) == frames
    assert migrate(store)["already"]
    assert radflow.verify(store)["counts"] == {}
    summary = radflow.ingest(archive.dicom, store, settings=SETTINGS)  # finishes the moved plan: nothing new
    assert summary["new"] == 0 and pending_journals(store) == [] and radflow.digest(store) == after
    tip = radflow.open_store(store).version
    summary = radflow.ingest(archive.dicom, store, settings=SETTINGS)  # a later run: nothing new, no version
    assert summary["new"] == 0 and radflow.open_store(store).version == tip


def test_what_a_killed_run_left_uncommitted_is_removed(archive, tmp_path, prefect_api, dask_client):
    import zarr

    from radflow.store.tables import write_part

    src = _subset(archive, tmp_path / "src", 4)
    store = str(tmp_path / "k.zarr")
    radflow.ingest(src, store, settings=SETTINGS)
    clean = radflow.digest(store)
    files = sorted(os.listdir(os.path.join(store, "tables", "ledger")))
    # a run that wrote a chunk and a table part through its session, then died before committing
    repo = versions.repository(store)
    session = repo.writable_session("main")
    name = next(iter(radflow.open_store(store).raw_arrays()))
    arr = zarr.open_group(session.store, mode="r+")[f"raw/{name}"]
    arr[arr.shape[0] - 1] = np.ones(arr.shape[1:], arr.dtype)
    versions.in_session(store, session, write_part, store, "ledger", "killed-batch",
                        [{"source": "x", "status": "ok"}])
    assert len(os.listdir(os.path.join(store, "tables", "ledger"))) == len(files) + 1
    assert versions.collect_garbage(store, dry_run=True) == {"chunks": 1, "table_files": 1}
    with writer(store, command="ingest"):
        assert versions.collect_garbage(store) == {"chunks": 1, "table_files": 1}
    assert sorted(os.listdir(os.path.join(store, "tables", "ledger"))) == files
    assert versions.collect_garbage(store, dry_run=True) == {"chunks": 0, "table_files": 0}
    assert radflow.digest(store) == clean


def test_commands_started_together_take_turns(archive, tmp_path, prefect_api, dask_client):
    """Two ingests of one source into one new store, then an ingest and a ``process`` on it, each pair
    started together with RADFLOW_WRITER_WAIT_S: every command exits 0, the store holds each input once
    (its digest equals one run's) and the process read a committed version."""
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    src = _subset(archive, tmp_path / "src", 6)
    reference = str(tmp_path / "ref.zarr")
    radflow.ingest(src, reference, settings=SETTINGS)
    store = str(tmp_path / "t.zarr")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "RADFLOW_WRITER_WAIT_S": "600",
           "RADFLOW_SHARD_TARGET_MIB": "2", "RADFLOW_MAX_FILES_PER_BATCH": "4", "RADFLOW_CLUSTER__N_WORKERS": "1"}

    def together(*cmds: list[str]) -> list[subprocess.CompletedProcess]:
        procs = [subprocess.Popen([sys.executable, "-m", "radflow", *c], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL) for c in cmds]
        out = [(p, *p.communicate(timeout=600)) for p in procs]
        return [subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, o, e in out]

    both = together(["ingest", src, store], ["ingest", src, store])
    assert [r.returncode for r in both] == [0, 0], [r.stderr[-2000:] for r in both]
    assert radflow.digest(store) == radflow.digest(reference)
    runs = radflow.open_store(store).history()
    assert list(runs[~runs["checkpoint"] & (runs["command"] == "ingest")]["command"]) == ["ingest"]  # one wrote

    _subset(archive, tmp_path / "src", 16)
    pair = together(["ingest", src, store], ["process", store, "--steps", "preprocess,features", "--canvas", "64"])
    assert [r.returncode for r in pair] == [0, 0], [r.stderr[-2000:] for r in pair]
    st = radflow.open_store(store)
    assert len(st.ledger()) == 16 and len(st.instances()) == 16
    done = len(st.features())
    assert done in (6, 16)  # the process ran before or after the ingest committed, never halfway
    radflow.process(store, steps=["preprocess", "features"], canvas=64)
    assert len(radflow.open_store(store).features()) == 16
    assert radflow.verify(store)["problems"] == []
