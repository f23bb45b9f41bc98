"""Prefect's local API, started (or found, :mod:`radflow.flows._kept_api`) by the command line as its first step.

Without ``PREFECT_API_URL`` Prefect starts a temporary API server at the first flow call: after
radflow has imported its flows, after this process has imported Prefect's whole server package
(seconds of CPU, only to launch a subprocess), and before the Dask cluster is started. The
command line starts the same server (Prefect's app under uvicorn, with its database under
``PREFECT_HOME``, so runs stay visible in ``prefect server start`` afterwards) in its first
milliseconds and points ``PREFECT_API_URL`` at it; the server boots on another core while the
command imports its flows and starts the cluster, and the first flow call waits for it only if it
is not up yet. By default that server is kept up between commands (``RADFLOW_API_KEEP_S``, see
:mod:`radflow.flows._kept_api`): only the first command of a while waits for it. Nothing here imports Prefect.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
from typing import Any, Iterator

__all__ = ["TemporaryAPI", "start_temporary_api", "current_api", "engines"]

log = logging.getLogger(__name__)


_current: "Any" = None  # this process's TemporaryAPI or KeptAPI


def current_api() -> Any:
    """The local API this process started or uses (``None``: Prefect's own configuration applies)."""
    return _current


class TemporaryAPI:
    """One Prefect API server process on 127.0.0.1 for this command alone, stopped when it exits
    (``RADFLOW_API_KEEP_S=0``)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.errors = tempfile.TemporaryFile()  # the server's stderr, read only if it fails to start
        # the port is bound here and the socket handed to the server (its descriptor): between choosing a
        # free port and a server binding it seconds later, the Dask cluster started meanwhile could take it
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server's own socket
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.process = self._launch()
        self.ready = False
        self.restarts = 0
        atexit.register(self.stop)

    def _launch(self) -> subprocess.Popen:
        from radflow.flows._kept_api import APP, server_env

        fd = self.socket.fileno()
        cmd = [sys.executable, "-m", "radflow.flows._kept_api", str(fd), APP]  # serves until stopped
        return subprocess.Popen(cmd, env=server_env(os.environ), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=self.errors, pass_fds=(fd,))

    def wait_ready(self) -> None:
        """Block until the API answers ``/health`` (the startup timeout of Prefect's own temporary
        server applies: ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``)."""
        from radflow.flows._kept_api import wait_healthy

        if not self.ready:
            wait_healthy(lambda: self.url, self.timeout_s, self._check, "Prefect's temporary API server")
            self.ready = True

    def _check(self) -> None:
        code = self.process.poll()
        if code == 3 and self.restarts < 3:  # uvicorn's start-up failure (the database being created
            self.restarts += 1             # by another command's server at that moment): once more
            log.info("Prefect's temporary API server failed to start; starting it again on %s", self.url)
            self.process = self._launch()
        elif code is not None:
            raise RuntimeError(f"Prefect's temporary API server exited with code {code}: {self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        self.errors.seek(0)
        return " ".join(self.errors.read().decode(errors="replace").split()[-60:])

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        self.socket.close()
        log.info("stopping the temporary Prefect API on %s", self.url)
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()


#: what each flow's Dask tasks import on a worker, by flow module: a local cluster's workers start with them
#: (:func:`radflow.cluster.local.start_forkserver`), another cluster's import them as soon as they are up
#: (:func:`radflow.cluster.warm_up`). Named here, not in the flows' modules: the cluster starts before those are imported.
WORKER_MODULES = {
    # (pyarrow imports pandas at its first conversion of Python rows: a batch's first table part)
    "radflow.flows.ingest": ("radflow.ingest.index", "radflow.ingest.batches", "pandas"),
    "radflow.flows.process": ("radflow.stages.preprocess", "radflow.stages.features"),
    "radflow.flows.verify": ("radflow.store.verify",),
}
WORKER_MODULES["radflow.flows.demo"] = WORKER_MODULES["radflow.flows.ingest"] + WORKER_MODULES["radflow.flows.process"]


@contextlib.contextmanager
def engines(modules: tuple[str, ...], *, cluster: bool, settings: dict[str, Any] | None = None,
            address: str | None = None) -> Iterator[None]:
    """Prefect's API, the flows and the cluster, started side by side rather than one after another.

    The local API server (when no API is configured and none is kept up) boots in its own process;
    with ``cluster``, a local Dask cluster of ``settings`` starts in a process of its own (another
    kind: on a thread) while this process imports the flow ``modules``; the block then holds a client of it (flows
    reuse it; it stays up for the block: one cluster for several flows, as ``radflow run``) and
    finds the API up (or waits for it). A scheduler ``address``, or a client already current in
    this process, is connected to rather than started."""
    api = start_temporary_api()
    with contextlib.ExitStack() as stack:
        warming: list[Any] = []  # held until the block ends (a released future may never run)
        stack.callback(warming.clear)
        starting = None
        worker_modules = tuple(dict.fromkeys(m for name in modules for m in WORKER_MODULES.get(name, ())))
        if cluster:
            from radflow.cluster import pending_cluster, start_local
            from radflow.flows._common import build_settings

            cluster_settings = build_settings(settings, address).cluster
            starting = start_local(cluster_settings, worker_modules)  # None where nothing is started here
            if starting is not None and cluster_settings.kind == "local":  # a flow waits for it only where it first needs it
                stack.enter_context(pending_cluster(cluster_settings, starting))
            elif starting is not None:
                stack.callback(starting.discard)  # a cluster the block never took (an import failed) is closed
        new = [name for name in modules if name not in sys.modules]
        for name in modules:
            importlib.import_module(name)
        if new:
            log.info("imported %s", ", ".join(new))
        if cluster:
            from radflow.cluster import connect, current_pending, engine_imported, warm_up

            engine_imported()  # the flows import distributed's modules as they run: not while the cluster's thread does

            pending = current_pending()
            if pending is not None:
                pending.warm(worker_modules)
            else:
                client = stack.enter_context(connect(cluster_settings, starting=starting))
                warming += warm_up(client, worker_modules)
        if api is not None:
            api.wait_ready()
            stack.enter_context(_no_heartbeats())
        yield


def _no_heartbeats():
    """Flow-run heartbeats off under radflow's own local API, unless set: that server runs no services, so
    nothing reads them, and each flow run's end waited up to 1 s for the heartbeat thread's next wake-up."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if any(k in os.environ for k in ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")):
        return contextlib.nullcontext()
    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def start_temporary_api() -> Any:
    """Find radflow's kept local API or start it now (with ``RADFLOW_API_KEEP_S=0``: a temporary API
    for this command alone), unless Prefect is configured otherwise (an API URL or temporary servers
    turned off, in the environment, the active profile, ``prefect.toml``, ``pyproject.toml`` or
    ``.env``: Prefect's own rules then apply) or already imported."""
    global _current
    if _current is not None and os.environ.get("PREFECT_API_URL") == _current.url:
        return _current
    if "prefect" in sys.modules or _configured_elsewhere():
        return None
    from radflow.flows._kept_api import attach_or_start, keep_seconds

    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or 180)
    keep = keep_seconds()
    if keep > 0:
        try:
            _current = attach_or_start(keep, timeout)
            atexit.register(_current.stop)
        except OSError as exc:  # PREFECT_HOME not writable for the record and lease: a server of its own
            log.warning("cannot keep a local Prefect API under PREFECT_HOME (%s); this command starts its own", exc)
            keep = 0
    if keep <= 0:
        _current = TemporaryAPI(timeout)
        log.info("starting a temporary Prefect API on %s (runs are kept under PREFECT_HOME; `prefect server start` "
                 "shows them)", _current.url)
    os.environ["PREFECT_API_URL"] = _current.url
    return _current


_API_KEYS = ("PREFECT_API_URL", "PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE")


def _configured_elsewhere() -> bool:
    """Whether any of Prefect's setting sources names an API URL or an ephemeral-mode switch."""
    import tomllib

    if any(os.environ.get(k, "").strip() for k in _API_KEYS):
        return True
    home = os.path.expanduser(os.environ.get("PREFECT_HOME") or "~/.prefect")
    profiles = os.environ.get("PREFECT_PROFILES_PATH") or os.path.join(home, "profiles.toml")
    try:
        with open(profiles, "rb") as f:
            doc = tomllib.load(f)
        active = os.environ.get("PREFECT_PROFILE") or doc.get("active") or "ephemeral"
        profile = {k: str(v).strip().lower() for k, v in doc.get("profiles", {}).get(active, {}).items()}
        if profile.get("PREFECT_API_URL") or "false" in (profile.get(k) for k in _API_KEYS[1:]):
            return True
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        return True  # a profile file radflow cannot read: leave it to Prefect
    for name in ("prefect.toml", "pyproject.toml", ".env"):
        try:
            text = open(name, encoding="utf-8", errors="replace").read()
        except OSError:
            continue
        if name == ".env" and any(k in text for k in _API_KEYS):
            return True
        if name != ".env":
            try:
                doc = tomllib.loads(text)
            except ValueError:
                return True
            doc = doc.get("tool", {}).get("prefect", {}) if name == "pyproject.toml" else doc
            if doc.get("api", {}).get("url") or "ephemeral" in doc.get("server", {}):
                return True
    return False
