"""Crashes do not change what a store holds: a flow process killed with SIGKILL mid-run and run
again, or a worker killed mid-batch, gives the same content digest as an uninterrupted run and
leaves no orphan objects."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import radflow
from radflow.errors import StoreNotFoundError
from radflow.synth import write_archive

pytestmark = pytest.mark.slow

SETTINGS = {"shard_target_mib": 2, "max_files_per_batch": 4}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_archive(tmp_path_factory.mktemp("resume"), 36, seed=8, sizes=((1024, 1024), (768, 1024)), broken=True)


@pytest.fixture(scope="module")
def reference(archive, tmp_path_factory, prefect_api, dask_client):
    store = str(tmp_path_factory.mktemp("ref") / "ref.zarr")
    radflow.ingest(archive.dicom, store, settings=SETTINGS)
    return store


@pytest.fixture(scope="module")
def hashed_reference(archive, tmp_path_factory, prefect_api, dask_client):
    """The uninterrupted run with source paths recorded as keyed hashes (the journal must not hold them)."""
    store = str(tmp_path_factory.mktemp("ref") / "hashed.zarr")
    radflow.ingest(archive.dicom, store, settings={**SETTINGS, "privacy": {"hash_sources": True}})
    return store


def _orphans(store: str) -> dict[str, int]:
    """What no version of the store uses (chunks, table files), plans the newest version still holds, and
    anything written beside the engine's repository and the tables."""
    from radflow.store import journal, versions

    found = versions.collect_garbage(store, since=0, dry_run=True)
    found["journal"] = len(journal.documents(store))
    found["beside"] = len(set(os.listdir(store)) - {"repo", "tables", "writer.lock", "reports"})
    return found


NO_ORPHANS = {"chunks": 0, "table_files": 0, "journal": 0, "beside": 0}


def _batch_parts(store: str) -> list[str]:
    try:
        names = os.listdir(os.path.join(store, "tables", "ledger"))
    except FileNotFoundError:
        return []
    return [n for n in names if n.startswith("part-") and not n.startswith(("part-index-", "part-dup-"))]


def _read_committed(store: str) -> int:
    """Open the store as a reader does (its newest version, pinned) and read every frame its instances
    table lists, each checked against its recorded checksum; the number of frames read."""
    st = radflow.open_store(store)
    st = radflow.open_store(store, version=st.version)
    assert st.version in set(st.history()["version"])
    inst = st.instances()
    for i in inst["index"] if len(inst) else []:
        st.raw_frame(int(i))  # a missing chunk or a half-written shard raises
    return len(inst)


def _reader(store: str, stop: threading.Event, seen: dict) -> None:
    while not stop.is_set():
        try:
            seen["frames"].append(_read_committed(store))
        except StoreNotFoundError:  # nothing committed yet
            pass
        except Exception as exc:  # reported by the test
            seen["errors"].append(repr(exc))
        time.sleep(0.3)  # (each look reads every frame: leave the run its cores)


def test_flow_process_killed_with_sigkill_resumes_to_the_same_store(archive, hashed_reference, tmp_path, prefect_api):
    """SIGKILL mid-ingest: a reader during the run and after the kill sees only committed versions (every
    listed frame readable and intact); the re-run finishes the killed run's plan from the engine."""
    reference = hashed_reference
    from prefect.settings import PREFECT_API_URL

    store = str(tmp_path / "killed.zarr")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "RADFLOW_SHARD_TARGET_MIB": "2",
           "RADFLOW_MAX_FILES_PER_BATCH": "4", "RADFLOW_CLUSTER__N_WORKERS": "2", "RADFLOW_PRIVACY__HASH_SOURCES": "true",
           "RADFLOW_CHECKPOINT_BATCHES": "2"}  # versions appear while it runs
    cmd = [sys.executable, "-m", "radflow", "ingest", archive.dicom, store]
    seen: dict = {"frames": [], "errors": []}
    stop = threading.Event()
    reader = threading.Thread(target=_reader, args=(store, stop, seen), daemon=True)
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        reader.start()
        deadline = time.monotonic() + 300
        # once some batches are done, freeze the run (the flow process and its local cluster, wherever they
        # are: a shard half written, a commit under way) and look; kill it frozen once a look found frames
        # (the run's pace does not matter: 37 small batches can all end within a reader thread's one look)
        while proc.poll() is None and time.monotonic() < deadline:
            if len(_batch_parts(store)) < 8:
                time.sleep(0.02)
                continue
            os.killpg(proc.pid, signal.SIGSTOP)
            try:
                seen["frames"].append(_read_committed(store))
            except StoreNotFoundError:  # no version committed yet
                pass
            except Exception as exc:  # reported by the test
                seen["errors"].append(repr(exc))
            if any(seen["frames"]) or seen["errors"]:
                break
            os.killpg(proc.pid, signal.SIGCONT)
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # mid-run
        proc.wait()
    stop.set()
    reader.join(60)
    assert seen["errors"] == [] and any(seen["frames"]), seen  # it looked, and what it saw was whole
    after_kill = _read_committed(store)  # the last checkpoint, whole, with the batches it merged
    assert after_kill > 0 and after_kill >= max(seen["frames"]), (after_kill, seen)
    done_at_kill = len(_batch_parts(store))
    from radflow.store import journal as recorded

    journal = recorded.documents(store)  # the killed run's plan, in the newest version it committed
    assert not os.path.exists(os.path.join(store, "journal"))
    assert not any(archive.dicom.encode() in doc for doc in journal)
    n_batches = len(_batch_parts(reference))
    assert 0 < done_at_kill < n_batches and journal, (done_at_kill, n_batches, (tmp_path / "first.log").read_text()[-2000:])

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert radflow.digest(store) == radflow.digest(reference)
    assert _orphans(store) == NO_ORPHANS  # what the killed run left uncommitted is gone, no journal left
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and _orphans(store) == NO_ORPHANS
    assert radflow.digest(store) == radflow.digest(reference)
    print(f"\nkilled after {done_at_kill} of {n_batches} batches; a reader looked {len(seen['frames'])} times "
          f"during the run (up to {max(seen['frames'])} frames, all intact; {after_kill} after the kill); resumed store equals the uninterrupted one")


def test_worker_killed_mid_batch_gives_the_same_store(archive, reference, tmp_path, prefect_api, dask_client):
    from distributed import Client, LocalCluster
    from distributed.client import _set_global_client

    store = str(tmp_path / "worker.zarr")
    killed: list[str] = []
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address="127.0.0.1:0") as cluster, Client(cluster, set_as_default=False) as watch:
            errors: list[BaseException] = []

            def run() -> None:
                try:
                    radflow.ingest(archive.dicom, store, cluster=cluster.scheduler_address, settings=SETTINGS)
                except BaseException as exc:  # reported below
                    errors.append(exc)

            t = threading.Thread(target=run)
            t.start()
            deadline = time.monotonic() + 300
            while not killed and t.is_alive() and time.monotonic() < deadline:
                for addr, keys in watch.processing().items():
                    if any(str(k).startswith("ingest-batch-") for k in keys):
                        pid = watch.run(os.getpid, workers=[addr])[addr]
                        os.kill(pid, signal.SIGKILL)
                        killed.append(addr)
                        break
                time.sleep(0.02)
            t.join(600)
            assert not errors, errors
    finally:
        _set_global_client(dask_client)
    assert killed, "no batch was seen running"
    assert radflow.digest(store) == radflow.digest(reference)
    assert _orphans(store) == NO_ORPHANS  # the killed attempt's writes were removed at the end of the run


@pytest.mark.parametrize("signum, code, group", [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)])
def test_an_interrupted_ingest_exits_at_once_and_the_next_run_resumes(archive, reference, tmp_path, signum, code, group):
    """Ctrl-C reaches the whole process group (radflow, its local cluster and its temporary Prefect
    server); SIGTERM (a scheduler stopping a job) reaches radflow alone."""
    store = str(tmp_path / "interrupted.zarr")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # radflow's own temporary API server
    env.update(RADFLOW_SHARD_TARGET_MIB="2", RADFLOW_MAX_FILES_PER_BATCH="4", RADFLOW_CLUSTER__N_WORKERS="2")
    cmd = [sys.executable, "-m", "radflow", "ingest", archive.dicom, store]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(_batch_parts(store)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    t0 = time.monotonic()
    (os.killpg if group else os.kill)(proc.pid, signum)
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    text = err.decode(errors="replace")
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever the group left behind (a cluster's workers)
    except ProcessLookupError:
        pass
    assert proc.returncode == code and took < 12, (proc.returncode, took, text[-2000:])
    assert "radflow: interrupted" in text and "Traceback" not in text and len(text.splitlines()) < 40, text[-3000:]
    assert len(_batch_parts(store)) < len(_batch_parts(reference))  # it stopped mid-run
    again = subprocess.run(cmd, env={**env}, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert radflow.digest(store) == radflow.digest(reference)
    print(f"\n{signal.Signals(signum).name}: exit {proc.returncode} after {took:.1f} s; the re-run equals the uninterrupted store")


def test_a_second_writer_fails_at_once_and_the_store_gets_the_inputs_once(archive, reference, tmp_path, prefect_api,
                                                                          dask_client):
    from radflow.errors import StoreBusy
    from radflow.store.lock import writer

    store = str(tmp_path / "busy.zarr")
    with writer(store, command="ingest"):  # another run is writing this store
        with pytest.raises(StoreBusy, match="being written by `radflow ingest`"):
            radflow.ingest(archive.dicom, store, settings=SETTINGS)
    assert not os.path.exists(os.path.join(store, "zarr.json")) and not os.path.exists(os.path.join(store, "repo"))
    radflow.ingest(archive.dicom, store, settings=SETTINGS)
    radflow.ingest(archive.dicom, store, settings=SETTINGS)  # after the first: nothing new, nothing twice
    assert radflow.digest(store)["store"] == radflow.digest(reference)["store"]
