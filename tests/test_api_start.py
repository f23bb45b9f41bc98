"""The command line's early start of Prefect's temporary API: used only where Prefect would start one."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest


def _configured(tmp_path, monkeypatch, env=None, files=None) -> bool:
    import tempfile

    from radflow.flows._api import _configured_elsewhere

    tmp_path = type(tmp_path)(tempfile.mkdtemp(dir=tmp_path))  # each case in a folder of its own

    for key in ("PREFECT_API_URL", "PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE",
                "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    for name, text in (files or {}).items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return _configured_elsewhere()


def test_a_configured_api_or_switch_is_left_to_prefect(tmp_path, monkeypatch):
    assert not _configured(tmp_path, monkeypatch)  # nothing configured: radflow starts the temporary API
    assert not _configured(tmp_path, monkeypatch, files={  # Prefect's default profiles
        "home/profiles.toml": 'active = "ephemeral"\n[profiles.ephemeral]\nPREFECT_SERVER_ALLOW_EPHEMERAL_MODE = "true"\n'
                              '[profiles.local]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n'})
    assert _configured(tmp_path, monkeypatch, env={"PREFECT_API_URL": "http://127.0.0.1:4200/api"})
    assert _configured(tmp_path, monkeypatch, files={
        "home/profiles.toml": 'active = "local"\n[profiles.local]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n'})
    assert _configured(tmp_path, monkeypatch, env={"PREFECT_PROFILE": "local"}, files={
        "home/profiles.toml": 'active = "ephemeral"\n[profiles.local]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n'})
    assert _configured(tmp_path, monkeypatch, files={
        "home/profiles.toml": 'active = "off"\n[profiles.off]\nPREFECT_SERVER_ALLOW_EPHEMERAL_MODE = false\n'})
    assert _configured(tmp_path, monkeypatch, files={"prefect.toml": '[api]\nurl = "http://127.0.0.1:4200/api"\n'})
    assert _configured(tmp_path, monkeypatch, files={"pyproject.toml": '[tool.prefect.api]\nurl = "http://x:4200/api"\n'})
    assert not _configured(tmp_path, monkeypatch, files={"pyproject.toml": '[project]\nname = "x"\n'})
    assert _configured(tmp_path, monkeypatch, files={".env": "PREFECT_API_URL=http://127.0.0.1:4200/api\n"})


def _port_free(port: int) -> bool:
    with socket.socket() as s:  # nothing listens on it (TIME_WAIT may linger)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.timeout(400)
def test_two_commands_at_once_share_one_kept_api(tmp_path):
    """Two `radflow ingest` started together, no Prefect API configured and a fresh PREFECT_HOME: one
    starts radflow's local API (without importing Prefect first), the other finds it and waits for it
    rather than booting a second server over the same database; both succeed, both runs are in the
    database, and the server outlives them for the next command until `radflow api stop`. The server
    is made slow to start (25 s more than usual, past Prefect's own 20 s default): radflow's start-up
    timeout fits a busy machine."""
    from radflow.synth import write_archive

    a = write_archive(tmp_path / "a", 4, seed=4, sizes=((128, 128),), broken=False)
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(  # only the API server process sleeps, before it imports anything
        "import sys, time\n"
        "if 'prefect.server.api.server:create_app' in sys.argv:\n"
        "    time.sleep(25)\n")
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RADFLOW_API"))}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               RADFLOW_CLUSTER__N_WORKERS="1", PYTHONPATH=os.pathsep.join(p for p in (str(slow), env.get("PYTHONPATH")) if p))
    procs = [subprocess.Popen([sys.executable, "-m", "radflow", "--verbose", "ingest", a.dicom, str(tmp_path / f"s{i}.zarr")],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL) for i in (1, 2)]
    t0 = time.monotonic()
    try:
        outs = [p.communicate(timeout=380) for p in procs]
        assert time.monotonic() - t0 > 25  # the server's start-up was slow indeed (a sleep, not a measurement)
        found = []
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err[-3000:]
            assert "4 discovered, 4 new, 4 ok" in out
            found.append(re.search(r"(starting|using) radflow's local Prefect API on http://127.0.0.1:(\d+)/api", err).groups())
        assert sorted(how for how, _ in found) == ["starting", "using"]  # one server, started once
        port = int(found[0][1])
        assert found[1][1] == found[0][1]
        import sqlite3

        with sqlite3.connect(home / "prefect.db") as db:
            runs = db.execute("select count(*) from flow_run join flow on flow.id = flow_run.flow_id "
                              "where flow.name = 'radflow-ingest' and flow_run.state_type = 'COMPLETED'").fetchone()[0]
        assert runs == 2
        status = subprocess.run([sys.executable, "-m", "radflow", "api"], env=env, capture_output=True, text=True, check=True)
        assert f"local Prefect API on http://127.0.0.1:{port}/api" in status.stdout  # kept for the next command
        assert not _port_free(port)
    finally:
        stop = subprocess.run([sys.executable, "-m", "radflow", "api", "stop"], env=env, capture_output=True, text=True)
    assert stop.returncode == 0 and "stopped the local Prefect API" in stop.stdout
    assert _port_free(port)
    assert not (home / "radflow-api.json").exists()


@pytest.mark.timeout(200)
def test_the_kept_api_stops_itself_once_idle(tmp_path, monkeypatch):
    """A kept server with a 3 s lease: a second user finds the same server; once both are done and 3 s
    have passed without a command, it stops and forgets its record. With ``RADFLOW_API_KEEP_S=0`` a
    command gets a temporary API of its own instead (stopped at its exit)."""
    import psutil

    from radflow.flows._kept_api import KeptAPI, kept_server

    home = str(tmp_path / "home")
    monkeypatch.setenv("PREFECT_HOME", home)
    first = KeptAPI(home, keep_s=3, timeout_s=180)
    second = KeptAPI(home, keep_s=3, timeout_s=180)
    try:
        assert first.started and not second.started and second.url == first.url
        second.wait_ready()
        assert kept_server(home)["pid"] == first.pid
        time.sleep(5)  # longer than the lease: the users' renewals keep it up
        assert first.process.poll() is None
    finally:
        first.stop()
        second.stop()
    assert first.process.wait(timeout=60) == 0  # stopped itself, cleanly
    assert kept_server(home) is None and not os.path.exists(os.path.join(home, "radflow-api.json"))
    assert not psutil.pid_exists(first.pid) or psutil.Process(first.pid).status() == psutil.STATUS_ZOMBIE

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RADFLOW_API"))}
    env.update(PREFECT_HOME=home, RADFLOW_API_KEEP_S="0")
    code = ("from radflow.flows._api import start_temporary_api\n"
            "api = start_temporary_api()\nprint(type(api).__name__, api.process.pid)\napi.stop()\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    kind, pid = out.stdout.split()
    assert kind == "TemporaryAPI" and kept_server(home) is None  # this command's own server, not a kept one
    assert not psutil.pid_exists(int(pid)) or psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE


def test_the_temporary_api_holds_its_port_from_the_start(tmp_path, monkeypatch):
    """The port is bound before the server process has even imported Prefect: a Dask cluster started
    meanwhile cannot be given it (it once was, and the flow's API calls went to a Dask scheduler)."""
    from radflow.flows._api import TemporaryAPI

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    api = TemporaryAPI(timeout_s=300)  # that the server then serves on it: the test above
    try:
        with socket.socket() as s, pytest.raises(OSError):
            s.bind(("127.0.0.1", api.port))
    finally:
        api.stop()
    with socket.socket() as s:  # released at the end
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", api.port))


def test_no_flow_run_heartbeats_under_radflows_own_api_unless_asked(monkeypatch):
    """radflow's local API runs no services, so nothing reads heartbeats; each flow run's end waited up to
    a second for the heartbeat thread. A user's own setting stands."""
    from prefect.settings import get_current_settings

    from radflow.flows._api import _no_heartbeats

    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    monkeypatch.delenv("PREFECT_RUNNER_HEARTBEAT_FREQUENCY", raising=False)
    before = get_current_settings().flows.heartbeat_frequency
    with _no_heartbeats():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == before
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")
    with _no_heartbeats():
        assert get_current_settings().flows.heartbeat_frequency == before  # (this process's settings, untouched)


def test_the_api_server_imports_the_radflow_the_command_runs(tmp_path):
    """The kept server runs ``python -m radflow.flows._kept_api`` in ``PREFECT_HOME``: a command run from a
    copy of radflow that is not installed (a source checkout) must start a server that imports that copy,
    not fail to find radflow (as it did) or import an installed one."""
    import shutil

    import radflow

    copy = tmp_path / "checkout"
    shutil.copytree(os.path.dirname(radflow.__file__), copy / "radflow",
                    ignore=shutil.ignore_patterns("__pycache__", "data"))
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    code = ("import os, subprocess, sys\n"
            "from radflow.flows._kept_api import server_env\n"
            "env = server_env({k: v for k, v in os.environ.items() if k != 'PYTHONPATH'})\n"
            "out = subprocess.run([sys.executable, '-c', 'import radflow; print(radflow.__file__)'], env=env,\n"
            f"                     cwd={str(elsewhere)!r}, capture_output=True, text=True, check=True)\n"
            "print(out.stdout.strip())\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=copy, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(copy / "radflow" / "__init__.py")


def test_the_api_servers_connections_send_without_delay():
    """The server's socket is handed over as a descriptor. Wrapped as uvicorn's ``fd=`` wraps it (a Unix
    socket), asyncio left Nagle's algorithm on for every TCP connection, and each request after the first on
    a kept-alive connection waited ~40 ms for the client's delayed ACK. The connections the server's
    event loop accepts must have ``TCP_NODELAY``."""
    import asyncio

    from radflow.flows._kept_api import _listening_socket

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    sock = _listening_socket(os.dup(listener.fileno()))
    listener.close()
    assert (sock.family, sock.proto) == (socket.AF_INET, socket.IPPROTO_TCP)

    async def accepted_nodelay() -> int:
        got: asyncio.Future = asyncio.get_running_loop().create_future()

        class Protocol(asyncio.Protocol):
            def connection_made(self, transport):
                got.set_result(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Protocol, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname())
        try:
            return await asyncio.wait_for(got, 10)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(accepted_nodelay()) != 0
