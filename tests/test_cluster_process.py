"""The local cluster in a process of its own: reached at its address, its workers deaf to a terminal's
Ctrl-C, and gone when the command that started it dies, however it dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

_OWNER = r'''
import json, os, signal, sys, time
from radflow.cluster import connect
from radflow.config import ClusterSettings

if __name__ == "__main__":
    with connect(ClusterSettings(n_workers=2, threads_per_worker=1)) as client:
        info = {"me": os.getpid(), "scheduler": client.run_on_scheduler(os.getpid),
                "workers": list(client.run(os.getpid).values()),
                "deaf": all(client.run(lambda: signal.getsignal(signal.SIGINT) == signal.SIG_IGN).values()),
                "answer": client.submit(sum, [1, 2, 3]).result(),
                "nice": [os.nice(0), *client.run(lambda: os.nice(0)).values()],
                "malloc": list(client.run(lambda: {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}).values()),
                # the environment each worker's process began with (a fork's is its server's): what glibc read
                "exec_env": list(client.run(lambda: dict(kv.split("=", 1) for kv in open("/proc/self/environ").read()
                                                         .split("\0") if kv.startswith(("MALLOC_", "OMP_")))).values()),
                "parents": list(client.run(lambda: os.getppid()).values()),
                "stderr": os.readlink("/proc/self/fd/2"),
                "worker_stderr": list(client.run(lambda: os.readlink("/proc/self/fd/2")).values())}
        client.run(lambda: print("a line a worker wrote to its stderr", file=sys.stderr, flush=True))
        time.sleep(2)  # the command forwards it on a thread of its own
        print(json.dumps(info), flush=True)
        if sys.argv[1] == "wait":
            time.sleep(600)
'''


def _gone(pids: list[int], within_s: float) -> bool:
    import psutil

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.timeout(240)
def test_the_local_cluster_runs_beside_the_command_and_ends_with_it(tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(_OWNER)
    # (a MALLOC_* variable of the command's own environment wins over radflow's worker_env, as Dask's nannies
    # rank them; one an in-process Dask nanny of an earlier test left in this process is not the user's)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, "DASK_LOGGING__DISTRIBUTED": "error"}
    # a command that ends normally: the work ran on the cluster, whose scheduler is not in the command
    done = subprocess.run([sys.executable, str(script), "exit"], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["answer"] == 6 and info["scheduler"] != info["me"] and info["me"] not in info["workers"]
    assert info["deaf"]  # Ctrl-C at a terminal reaches the whole group; the command stops the run
    mine, *workers = info["nice"]
    assert workers == [min(19, mine + 5)] * 2  # the command's own work goes first on a busy machine
    # glibc serves torch's activations and frame buffers from one heap and keeps 64 MiB of it free (radflow's
    # worker_env over Dask's pre-spawn environment)
    assert [(m["MALLOC_MMAP_THRESHOLD_"], m["MALLOC_TRIM_THRESHOLD_"], m["MALLOC_ARENA_MAX"]) for m in info["malloc"]] == \
        [(str(256 * 2**20), str(64 * 2**20), "1")] * 2  # (Dask's own trim threshold is 64 KiB)
    # workers are forked from one server (started with those settings, and Dask's one BLAS thread), not spawned
    # by the cluster's process
    assert [(e["MALLOC_TRIM_THRESHOLD_"], e["MALLOC_ARENA_MAX"], e["OMP_NUM_THREADS"]) for e in info["exec_env"]] == \
        [(str(64 * 2**20), "1", "1")] * 2
    server = set(info["parents"])
    assert len(server) == 1 and server.isdisjoint([info["scheduler"], info["me"]])
    # the workers' errors reach the command's stderr through the command, not by holding its stderr: a pipe
    # reading the command ends when the command does, not when the last worker has stopped
    assert info["stderr"] not in info["worker_stderr"]
    assert "a line a worker wrote to its stderr" in done.stderr
    assert _gone([info["scheduler"], *info["workers"], *server], 60)

    # a command killed outright (SIGKILL): its cluster does not outlive it
    owner = subprocess.Popen([sys.executable, str(script), "wait"], env=env, stdout=subprocess.PIPE, text=True,
                             stderr=subprocess.DEVNULL)
    try:
        info = json.loads(owner.stdout.readline())
        assert len(info["workers"]) == 2
        owner.send_signal(signal.SIGKILL)
        owner.wait(30)
        assert _gone([info["scheduler"], *info["workers"], *info["parents"]], 90)
    finally:
        owner.kill()


_BLOCK = r'''
import json, os, sys
from radflow.cluster.local import connect, current_pending, engine_imported, pending_cluster, start_local
from radflow.config import ClusterSettings

if __name__ == "__main__":
    settings = ClusterSettings(n_workers=1, threads_per_worker=1, worker_start="forkserver")
    # (a module nothing else imports: the workers start with it, never asked to import it)
    with pending_cluster(settings, start_local(settings, ("radflow.tasks.recon",))) as pending:
        engine_imported()  # (the command's flows, imported meanwhile, may now import distributed's modules)
        module = sys.modules.get("distributed")
        imported = module is not None and not getattr(module.__spec__, "_initializing", True) \
            and "distributed.diagnostics.plugin" in sys.modules
        again = start_local(settings)  # the block's cluster is starting: no second one
        pending.warm(("radflow.store.shards",))
        with connect(settings) as client:  # the block's first connect waits for it and takes it
            first = client.run_on_scheduler(os.getpid)
            answer = client.submit(sum, [1, 2]).result()
            warmed = all(client.run(lambda: __import__("sys").modules.get("radflow.store.shards") is not None).values())
            preloaded = all(client.run(lambda: "radflow.tasks.recon" in __import__("sys").modules).values())
        with connect(settings) as client:  # a later flow of the block: the same cluster
            second = client.run_on_scheduler(os.getpid)
        workers = list(client.run(os.getpid).values())
    print(json.dumps({"again": again is None, "first": first, "second": second, "answer": answer, "warmed": warmed,
                      "preloaded": preloaded, "workers": workers, "pending": current_pending() is None, "imported": imported}), flush=True)
'''


@pytest.mark.timeout(240)
def test_a_block_goes_on_while_its_cluster_starts_and_its_flows_share_it(tmp_path):
    script = tmp_path / "block.py"
    script.write_text(_BLOCK)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "DASK_LOGGING__DISTRIBUTED": "error"})
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["again"] and info["answer"] == 3 and info["first"] == info["second"]
    assert info["imported"]  # the block's thread imported distributed whole before the wait returned
    assert info["warmed"]  # the modules asked for before the workers were up were imported on them
    assert info["preloaded"]  # and those named when the cluster began, before any task ran
    assert info["pending"]  # the block's end closed it
    assert _gone([info["first"], *info["workers"]], 60)


_PROBE = '''
import os
with open(os.environ["SEALED_MARKS"], "a") as marks:  # each process that imports this module says so
    marks.write(f"{os.getpid()}\\n")


def double(x):
    return 2 * x
'''

_SEALED = r'''
import json, os, sys
from radflow.cluster import connect
from radflow.cluster.sealed import submit
from radflow.config import ClusterSettings

if __name__ == "__main__":
    with connect(ClusterSettings(n_workers=1, threads_per_worker=1)) as client:
        import sealed_probe
        out = {"scheduler": client.run_on_scheduler(os.getpid), "worker": list(client.run(os.getpid).values())[0]}
        fut = submit(client, sealed_probe.double, 21)
        out["sealed"] = fut.result()
        out["name"] = fut.key.rsplit("-", 1)[0]
        out["after_sealed"] = sorted({int(p) for p in open(os.environ["SEALED_MARKS"]).read().split()} - {os.getpid()})
        out["plain"] = client.submit(sealed_probe.double, 4).result()  # Dask's own submit: the scheduler opens it
        out["after_plain"] = sorted({int(p) for p in open(os.environ["SEALED_MARKS"]).read().split()} - {os.getpid()})
    print(json.dumps(out), flush=True)
'''


@pytest.mark.timeout(240)
def test_a_sealed_task_is_opened_by_its_worker_and_not_by_the_scheduler(tmp_path):
    """radflow's tasks reach the scheduler sealed: it never imports the modules of their functions and
    arguments (the control, Dask's own submit of the same function, has it import them)."""
    (tmp_path / "sealed_probe.py").write_text(_PROBE)
    (tmp_path / "owner.py").write_text(_SEALED)
    marks = tmp_path / "marks"
    env = {**os.environ, "DASK_LOGGING__DISTRIBUTED": "error", "SEALED_MARKS": str(marks),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(tmp_path / "owner.py")], capture_output=True, text=True, timeout=180,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["sealed"] == 42 and info["name"] == "double"
    assert info["after_sealed"] == [info["worker"]]  # opened on the worker only
    assert info["plain"] == 8 and info["scheduler"] in info["after_plain"]  # (the check can fail)


@pytest.mark.timeout(240)
def test_a_temporary_folder_too_deep_for_the_servers_socket_has_the_workers_spawned(tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(_OWNER)
    deep = tmp_path / ("d" * 60) / ("e" * 60)  # (a Unix socket's path holds 107 bytes)
    deep.mkdir(parents=True)
    env = {**os.environ, "TMPDIR": str(deep), "DASK_LOGGING__DISTRIBUTED": "error"}
    done = subprocess.run([sys.executable, str(script), "exit"], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["answer"] == 6 and set(info["parents"]) == {info["scheduler"]}  # spawned by the cluster's process
    assert "too deep for the server's socket" in done.stderr


def test_workers_are_forked_from_a_server_where_that_saves_an_import():
    from radflow.cluster.local import forked_workers
    from radflow.config import ClusterSettings

    assert forked_workers(ClusterSettings(n_workers=2))  # (checked on a running cluster above)
    assert not forked_workers(ClusterSettings(n_workers=1))  # one worker: the server would be a process more
    assert forked_workers(ClusterSettings(n_workers=1, worker_start="forkserver"))
    assert not forked_workers(ClusterSettings(n_workers=4, worker_start="spawn"))
    assert not forked_workers(ClusterSettings(n_workers=2, kind="local-cuda"))  # dask-cuda starts its own


def test_each_flow_a_command_runs_on_a_cluster_names_the_modules_its_workers_import():
    import importlib.util

    from radflow.cli import FLOW_COMMANDS
    from radflow.flows._api import WORKER_MODULES

    for modules, cluster in FLOW_COMMANDS.values():
        assert not cluster or all(m in WORKER_MODULES for m in modules), modules
    assert all(importlib.util.find_spec(m) is not None for names in WORKER_MODULES.values() for m in names)
