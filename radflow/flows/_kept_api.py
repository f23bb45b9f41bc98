"""Prefect's local API kept up between radflow commands, one per ``PREFECT_HOME``.

Without ``PREFECT_API_URL`` every command used to boot Prefect's API server (10–20 s of CPU on a
small machine, on the path to its first batch) and stop it at exit; two commands at once each
booted one over the same SQLite database. Now the first command starts the server in a session of
its own (a terminal's Ctrl-C does not reach it), records it in ``PREFECT_HOME/radflow-api.json``
and leaves it up; the next commands find it there and use it. Each command renews a lease
(``radflow-api.lease``, its modification time) while it runs; the server stops itself once the
lease is ``RADFLOW_API_KEEP_S`` seconds old (default 600) and forgets its record. Finding,
starting and stopping happen under an ``flock`` on ``radflow-api.lock``, so two commands started
together share one server, and a server never stops while a command is attaching to it.
``RADFLOW_API_KEEP_S=0`` gives every command a server of its own again (:class:`radflow.flows._api.TemporaryAPI`);
``radflow api stop`` stops the kept one now. Nothing here imports Prefect, except the server's own process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

__all__ = ["KeptAPI", "DEFAULT_KEEP_S", "keep_seconds", "prefect_home", "attach_or_start", "kept_server", "stop_kept",
           "wait_healthy"]

log = logging.getLogger("radflow.flows._api")

DEFAULT_KEEP_S = 600.0
APP = "prefect.server.api.server:create_app"  # in the server's argv, as in Prefect's own temporary server
_STATE, _LOCK, _LEASE, _LOG = "radflow-api.json", "radflow-api.lock", "radflow-api.lease", "radflow-api.log"


def keep_seconds() -> float:
    """``RADFLOW_API_KEEP_S`` (validated with the other settings, ``Settings.api_keep_s``)."""
    raw = os.environ.get("RADFLOW_API_KEEP_S", "").strip()
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_KEEP_S
    except ValueError:
        from radflow.errors import ConfigError

        raise ConfigError(f"invalid setting RADFLOW_API_KEEP_S={raw!r}: seconds expected") from None


def prefect_home() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get("PREFECT_HOME") or "~/.prefect"))


@contextlib.contextmanager
def _locked(home: str) -> Iterator[None]:
    os.makedirs(home, exist_ok=True)
    fd = os.open(os.path.join(home, _LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel however the holder ends
        yield
    finally:
        os.close(fd)


def _state(home: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(home, _STATE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _is_server(pid: int) -> bool:
    """Whether ``pid`` is a kept API server (not a process that inherited a dead server's pid)."""
    import psutil

    try:
        return __name__ in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def kept_server(home: str | None = None) -> dict[str, Any] | None:
    """The record of the kept server of ``home`` (``pid``, ``url``, ``keep_s``, ``started``), if one runs."""
    state = _state(home or prefect_home())
    return state if state and _is_server(int(state.get("pid", 0))) else None


def _renew(home: str) -> None:
    path = os.path.join(home, _LEASE)
    with open(path, "a"):
        pass
    os.utime(path)


def server_env(environ: dict[str, str] | os._Environ) -> dict[str, str]:
    """The server process's environment: Prefect's server settings, no ``PREFECT_API_URL``, and the folder
    that holds the running ``radflow`` first on ``PYTHONPATH`` (the server runs in ``PREFECT_HOME``, so a
    command run from a source checkout, not installed, would otherwise start a server that cannot import
    ``radflow``, or one that imports another copy)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above radflow/
    env = {**environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, environ.get("PYTHONPATH")) if p)
    return env


class KeptAPI:
    """This command's use of the kept server: waits for it, renews the lease while the command runs."""

    def __init__(self, home: str, keep_s: float, timeout_s: float) -> None:
        self.home, self.keep_s, self.timeout_s = home, keep_s, timeout_s
        self.process: subprocess.Popen | None = None  # set when this command started the server
        self.ready = False
        self.restarts = 0
        with _locked(home):
            state = kept_server(home)
            if state is None:
                self._launch()
            else:
                self.pid, self.url = int(state["pid"]), str(state["url"])
            _renew(home)
        self.started = self.process is not None
        self._done = threading.Event()
        self._renewing = threading.Thread(target=self._renew_while_running, name="radflow-api-lease", daemon=True)
        self._renewing.start()

    def _launch(self) -> None:
        """Start the server (the caller holds the lock): a socket bound here and handed to it, so its port is
        taken from the first moment; its record written before the lock is released."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        env = server_env(os.environ)
        with open(os.path.join(self.home, _LOG), "ab") as errors:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(sock.fileno()), self.home, str(self.keep_s), APP],
                env=env, cwd=self.home, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                pass_fds=(sock.fileno(),), start_new_session=True)
        sock.close()  # the server holds it now
        self.pid, self.url = self.process.pid, f"http://127.0.0.1:{port}/api"
        record = {"pid": self.pid, "url": self.url, "keep_s": self.keep_s, "started": time.time()}
        tmp = os.path.join(self.home, f".{_STATE}.{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(tmp, os.path.join(self.home, _STATE))

    def _renew_while_running(self) -> None:
        period = max(0.5, min(30.0, self.keep_s / 4))
        while not self._done.wait(period):
            with contextlib.suppress(OSError):
                _renew(self.home)

    def wait_ready(self) -> None:
        """Block until the API answers ``/health`` (within ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``)."""
        if not self.ready:
            wait_healthy(lambda: self.url, self.timeout_s, self._check, "radflow's local Prefect API")
            self.ready = True

    def _check(self) -> None:
        code = self.process.poll() if self.process is not None else None
        if code == 3 and self.restarts < 3:  # uvicorn's start-up failure (the database being created
            self.restarts += 1             # by a server of another PREFECT_HOME setting): once more
            with _locked(self.home):
                self._launch()
        elif code is not None or (self.process is None and not _is_server(self.pid)):
            raise RuntimeError(f"radflow's local Prefect API server (pid {self.pid}) exited"
                               f"{f' with code {code}' if code is not None else ''}; its log: "
                               f"{os.path.join(self.home, _LOG)}")

    def stop(self) -> None:
        """This command is done with the server (which stays up ``keep_s`` from now)."""
        if not self._done.is_set():
            self._done.set()
            with contextlib.suppress(OSError):
                _renew(self.home)

    kill = stop  # an interrupted command leaves the shared server to the others


def wait_healthy(url: Any, timeout_s: float, check: Any, what: str) -> None:
    """Poll ``url()/health`` until it answers 200; ``check()`` runs before each try (it restarts a server
    that failed to start, or raises for one that is gone)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5.0) as client:
        while True:
            check()
            try:
                if client.get(f"{url()}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer within {timeout_s:.0f} s "
                                   "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); on a busy machine raise it, or "
                                   "point PREFECT_API_URL at a running server (`prefect server start`)")
            time.sleep(0.1)


def attach_or_start(keep_s: float, timeout_s: float) -> KeptAPI:
    api = KeptAPI(prefect_home(), keep_s, timeout_s)
    log.info("%s radflow's local Prefect API on %s (kept %.0f s after the last command; PREFECT_HOME %s)",
             "starting" if api.started else "using", api.url, keep_s, api.home)
    return api


def stop_kept(home: str | None = None, timeout_s: float = 15.0) -> dict[str, Any] | None:
    """Stop the kept server of ``home`` now; returns its record (``None``: none was running)."""
    home = home or prefect_home()
    with _locked(home):
        state = kept_server(home)
        with contextlib.suppress(OSError):
            os.remove(os.path.join(home, _STATE))
    if state is None:
        return None
    import psutil

    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(int(state["pid"]))
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except psutil.TimeoutExpired:
            proc.kill()
    return state


def _listening_socket(fd: int) -> socket.socket:
    """The inherited listening socket, as what it is (TCP over IPv4), with ``TCP_NODELAY`` (the connections
    it accepts inherit it). Not uvicorn's ``fd=``: that wraps any descriptor as a Unix socket, so asyncio
    left Nagle's algorithm on for every connection, and each request after the first on a kept-alive
    connection waited ~40 ms for the client's delayed ACK (Prefect's client reuses its connection: a flow
    run's dozen requests took ~0.5 s)."""
    sock = socket.socket(fileno=fd)  # family, type and protocol read from the descriptor
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _serve(fd: int, home: str | None = None, keep_s: float = 0.0) -> None:
    """The server process: Prefect's API app under uvicorn on the inherited socket. A kept server (``home``
    given) runs until the lease runs out or its record names another process (``radflow api stop``, or a
    newer server); a command's temporary one until that command stops it."""
    import uvicorn

    sock = _listening_socket(fd)
    server = uvicorn.Server(uvicorn.Config(APP, factory=True, log_level="error", lifespan="on"))

    def watch() -> None:
        while not server.should_exit:
            time.sleep(max(0.2, min(5.0, keep_s / 10)))
            if not os.path.isdir(home):  # its PREFECT_HOME removed (a test's, say): nothing to serve
                break
            with _locked(home):
                state = _state(home)
                if not state or int(state.get("pid", 0)) != os.getpid():
                    break
                try:
                    idle = time.time() - os.stat(os.path.join(home, _LEASE)).st_mtime
                except OSError:
                    idle = keep_s + 1
                if idle > keep_s:
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(home, _STATE))
                    break
        server.should_exit = True

    if home is not None:
        threading.Thread(target=watch, name="radflow-api-idle", daemon=True).start()
    server.run(sockets=[sock])  # a failed start-up exits with uvicorn's code 3 (the caller retries on it)


if __name__ == "__main__":  # python -m radflow.flows._kept_api FD [PREFECT_HOME KEEP_S]
    _serve(int(sys.argv[1]), *((sys.argv[2], float(sys.argv[3])) if len(sys.argv) > 3 else ()))
