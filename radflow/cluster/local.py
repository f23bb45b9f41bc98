"""Where Dask work runs: a local CPU cluster, a local CUDA cluster, or an existing scheduler."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterator

from radflow.config import ClusterSettings
from radflow.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["connect", "dashboard_link", "security", "start_local", "start_forkserver", "forked_workers", "warm_up", "Starting",
           "Pending", "pending_cluster", "current_pending", "engine_imported"]

log = logging.getLogger(__name__)

_importing: list[threading.Event] = []  # one per cluster thread of this process still importing distributed


def _on_thread(target: Callable[[], None], name: str) -> None:
    """Run ``target`` on a daemon thread that first imports Dask's ``distributed`` (see :func:`engine_imported`)."""
    imported = threading.Event()
    _importing.append(imported)

    def run() -> None:
        try:
            import distributed  # noqa: F401
        except BaseException:  # noqa: BLE001 - ``target`` meets it again and reports it where the cluster is asked for
            pass
        finally:
            imported.set()
        target()

    threading.Thread(target=run, name=name, daemon=True).start()


def engine_imported() -> None:
    """Wait until the cluster threads of this process have imported ``distributed`` (at once when none is
    importing it). A command's main thread calls this after importing its flows and before running them:
    two threads importing distributed's modules at once can each find the other's half-initialised
    (``cannot import name 'ForwardLoggingPlugin' from partially initialized module``), so its main thread
    imports none of them while a cluster thread does."""
    for imported in list(_importing):
        imported.wait()
        with contextlib.suppress(ValueError):
            _importing.remove(imported)


def dashboard_link(client: "Client") -> str | None:
    try:
        return client.dashboard_link
    except Exception:  # no dashboard (bokeh missing or disabled)
        return None


class Starting:
    """A cluster being started while the caller does something else (imports its flows): a local
    cluster in a process of its own (:mod:`radflow.cluster._process`), another kind on a thread of
    this process. Local worker processes start with SIGINT ignored: Ctrl-C at a terminal reaches the
    whole process group, and it is the flow process that stops the run and closes the cluster (see
    ``radflow.cli``); the cluster process ignores it, and a thread started from the main thread has
    this process ignore it until the cluster is taken (the worker processes inherit that)."""

    def __init__(self, settings: ClusterSettings, preload: tuple[str, ...] = ()) -> None:
        import signal
        from concurrent.futures import Future

        self.future: Future = Future()
        self._previous = None
        if settings.kind == "local":
            from radflow.cluster._process import ClusterProcess

            self._process: Any = ClusterProcess(settings, preload)
            return
        self._process = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, signal.SIG_IGN)

        def start() -> None:
            try:
                self.future.set_result(_start(settings))
            except BaseException as exc:  # handed to the caller by result()
                self.future.set_exception(exc)

        _on_thread(start, "radflow-cluster-start")

    def _restore(self) -> None:
        if self._previous is not None:
            import signal

            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def result(self):
        """The started cluster (waits for it); the caller owns it from here."""
        try:
            if self._process is not None:
                cluster, self._process, self.future = self._process, None, None
                return cluster.wait()
            cluster, self.future = self.future.result(), None
            return cluster
        finally:
            self._restore()

    def discard(self) -> None:
        """Close the cluster if nobody took it."""
        if self._process is not None:
            self._process.close()
            self._process = None
        if self.future is not None:
            future, self.future = self.future, None
            with contextlib.suppress(BaseException):
                future.result().close()
        self._restore()


class Pending:
    """A local cluster started for a block of work (a command), connected to on a thread of its own as
    soon as it is up, and handed to the block's first :func:`connect` with the same settings, which
    waits for it only then: the block (a flow's start with Prefect's API, the discovery of inputs) goes
    on meanwhile. The block owns it: :meth:`close` at the block's end."""

    def __init__(self, settings: ClusterSettings, starting: Starting) -> None:
        from concurrent.futures import Future

        self.settings = settings
        self.future: Future = Future()
        self._starting = starting
        self._lock = threading.Lock()
        self._modules: tuple[str, ...] = ()
        self._client: Any = None
        self.warming: list[Any] = []  # held until the block ends (a released future may never run)
        _on_thread(self._connect, "radflow-cluster-connect")

    def _connect(self) -> None:
        try:
            cluster = self._starting.result()
            client = _client_of(cluster, self.settings)
            with self._lock:
                self._client = client
                self.warming += warm_up(client, self._modules)
            self.future.set_result((cluster, client))
        except BaseException as exc:  # raised where the cluster is asked for
            self.future.set_exception(exc)

    def warm(self, modules: tuple[str, ...]) -> None:
        """Have the workers import ``modules`` as soon as they are up (now, if they are)."""
        with self._lock:
            new = tuple(m for m in modules if m not in self._modules)
            self._modules += new
            if self._client is not None and new:
                self.warming += warm_up(self._client, new)

    def client(self) -> "Client":
        return self.future.result()[1]

    def close(self) -> None:
        """Close the client and the cluster (a cluster still starting is told to stop)."""
        global _pending
        if _pending is self:
            _pending = None
        if not self.future.done():
            self._starting.discard()  # (if the thread has taken it already, it finishes connecting first)
        try:
            cluster, client = self.future.result(timeout=60)
        except BaseException:  # never started, or started and already lost: nothing of it to close
            return
        self.warming.clear()
        client.close()
        cluster.close()


_pending: Pending | None = None


@contextlib.contextmanager
def pending_cluster(settings: ClusterSettings, starting: Starting) -> Iterator[Pending]:
    """``starting`` (a local cluster in its own process) as the block's :class:`Pending` cluster."""
    global _pending
    pending = _pending = Pending(settings, starting)
    try:
        yield pending
    finally:
        pending.close()


def current_pending() -> Pending | None:
    return _pending


def start_local(settings: ClusterSettings, preload: tuple[str, ...] = ()) -> Starting | None:
    """Start the cluster :func:`connect` would start, without waiting for it (``None`` where ``connect``
    would start nothing: a scheduler address, a client already current in this process, or a block's
    cluster still starting). ``preload``: modules the workers of a local cluster start with
    (:func:`start_forkserver`)."""
    if settings.address or _pending is not None:
        return None
    if "distributed" in sys.modules:  # (else no client can be current: distributed is not imported for this)
        from distributed.client import _get_global_client

        current = _get_global_client()
        if current is not None and current.status == "running":
            return None
    return Starting(settings, preload)


@contextlib.contextmanager
def connect(settings: ClusterSettings | None = None, starting: Starting | None = None) -> Iterator["Client"]:
    """A Dask client for the configured cluster, closed (and a local cluster stopped) on exit.

    * ``settings.address`` set: connect to that scheduler (``tcp://host:8786``,
      ``tls://…`` with the TLS settings of Dask's own configuration).
    * ``kind="local"``: a ``LocalCluster`` of worker processes on 127.0.0.1, one per
      core by default.
    * ``kind="local-cuda"``: dask-cuda's ``LocalCUDACluster``, one worker per GPU.
    * ``kind="kubernetes"``: a ``DaskCluster`` from :func:`radflow.cluster.kubernetes.cluster_spec`
      through the Dask operator (``dask-kubernetes``), removed when the run ends.

    If a client is already current in this process (one made by the caller), it is
    reused and left open. ``starting``: the cluster :func:`start_local` is starting, taken instead
    of starting one here.
    """
    from distributed import Client
    from distributed.client import _get_global_client

    settings = settings or ClusterSettings()
    if settings.address:
        client = Client(settings.address, set_as_default=True, security=security(settings))
        log.info("connected to scheduler %s", settings.address)
        try:
            with client.as_current():  # tasks' get_client() finds this client, not an older current one
                yield client
        finally:
            client.close()
        return
    current = _get_global_client()
    if current is not None and current.status == "running":
        yield current
        return
    if _pending is not None and _pending.settings == settings and starting is None:  # the block's cluster
        client = _pending.client()
        with client.as_current():
            yield client
        return
    import dask

    cluster = (starting or Starting(settings)).result()
    client = _client_of(cluster, settings)
    try:
        # a nanny restarts its worker after a decoder kills it; the cluster must not close the nanny when
        # its worker is found missing between two restarts (read by the cluster at each worker's removal)
        with client.as_current(), dask.config.set({"distributed.deploy.lost-worker-timeout": "1h"}):  # and in _process
            yield client
    finally:
        client.close()
        cluster.close()


def _client_of(cluster: Any, settings: ClusterSettings) -> "Client":
    """The default client of a cluster just started (a local cluster in a process of its own is reached at its
    address; another kind is handed to the client)."""
    from distributed import Client

    client = Client(cluster.scheduler_address if settings.kind == "local" else cluster, set_as_default=True)
    if settings.kind == "local-cuda":
        from radflow.cluster.plugins import RMMAllocators

        client.register_plugin(RMMAllocators())
    log.info("started %s cluster with %d workers; dashboard %s", settings.kind, len(cluster.workers), dashboard_link(client))
    return client


def warm_up(client: "Client", modules: tuple[str, ...]) -> list[Any]:
    """Import ``modules`` on every worker now, as a task each (a worker's first real task would import them
    anyway, on the run's critical path; started while something else is waited for, the imports overlap
    it). Returns the futures: keep them until the work begins (a released future may never run)."""
    if not modules:
        return []
    from radflow.cluster.sealed import import_all

    return [client.submit(import_all, tuple(modules), workers=[addr], allow_other_workers=False, pure=False,
                          key=f"radflow-warm-up-{i}-{uuid.uuid4().hex[:8]}")
            for i, addr in enumerate(client.scheduler_info().get("workers", {}))]


def security(settings: ClusterSettings):
    """TLS credentials for a ``tls://`` scheduler (``None``: Dask's own configuration applies)."""
    files = (settings.tls_ca_file, settings.tls_cert, settings.tls_key)
    if not any(files):
        return None
    if not all(files):
        raise ConfigError("TLS needs all of RADFLOW_CLUSTER__TLS_CA_FILE, __TLS_CERT and __TLS_KEY")
    from distributed.security import Security

    return Security(tls_ca_file=str(files[0]), tls_client_cert=str(files[1]), tls_client_key=str(files[2]),
                    require_encryption=True)


def _seconds(value: Any) -> float:
    from dask.utils import parse_timedelta

    return float(parse_timedelta(value, default="seconds") or 0)


def _worker_environ(settings: ClusterSettings) -> dict[str, str]:
    """What a nanny sets in the environment before it starts its worker: Dask's pre-spawn environment with
    ``settings.worker_env`` over it, a variable of this process's own environment over both."""
    import importlib.util

    import dask
    import yaml

    if "distributed" not in sys.modules:  # its defaults (one BLAS thread …), as its import would set them (0.5 s)
        with open(os.path.join(importlib.util.find_spec("distributed").submodule_search_locations[0], "distributed.yaml")) as f:
            dask.config.update_defaults(yaml.safe_load(f))

    return {k: os.environ.get(k, str(v)) for k, v in _pre_spawn_environ(settings).items() if v is not None}


def _pre_spawn_environ(settings: ClusterSettings) -> dict[str, Any]:
    """Dask's ``distributed.nanny.pre-spawn-environ`` with ``settings.worker_env`` over it."""
    import dask

    return {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **settings.worker_env}


def start_forkserver(settings: ClusterSettings, preload: tuple[str, ...] = ()) -> bool:
    """Start the process a local cluster's workers are forked from (:func:`forked_workers`), now,
    with ``distributed`` and ``preload`` imported in it: each worker (and each restart of one) then starts
    with them, where a spawned worker is a fresh interpreter that imports Dask and then the command's
    modules on its own (two workers on two cores: twice the CPU, at the same time as the command's
    imports). It runs in the environment a nanny gives its worker (glibc reads ``MALLOC_*`` when a
    process starts, so the forks have the settings the server started with; NumPy's BLAS reads its
    thread count when imported there). Called in the cluster process before it imports Dask's scheduler:
    the server's imports overlap that. ``False`` where it cannot start (the workers are then spawned):
    its Unix socket would lie deeper than a socket's path may be (108 bytes) under a deep ``TMPDIR``
    (Python 3.11 does not fall back to a shorter folder there)."""
    import multiprocessing
    import multiprocessing.forkserver
    from multiprocessing import util

    folder = util.get_temp_dir()  # (made now if not yet) where the socket will be: ``listener-`` and 8 characters
    if len(os.fsencode(os.path.join(folder, "listener-" + "x" * 8))) >= 108:
        log.warning("local workers are spawned, not forked: the temporary folder %s is too deep for the server's "
                    "socket (set TMPDIR to a shorter one)", folder)
        return False
    environ = _worker_environ(settings)
    if environ.get("PYTHONHASHSEED") in (None, "0"):  # what every Dask nanny sets: one hash seed on every worker
        environ["PYTHONHASHSEED"] = "6640"
    os.environ.update(environ)
    multiprocessing.get_context("forkserver").set_forkserver_preload(["distributed", *preload])
    try:
        multiprocessing.forkserver.ensure_running()
    except OSError as exc:
        log.warning("local workers are spawned, not forked: the server they fork from did not start (%s)", exc)
        return False
    import distributed.utils as dask_utils

    # (Dask would otherwise import every package it knows of, pandas included, into this process, the
    # scheduler's, to choose the server's preloads: the server is running, so its choice would be unused)
    dask_utils._forkserver_preload_set = True
    return True


def local_workers(settings: ClusterSettings) -> int:
    """How many workers a local cluster of ``settings`` starts."""
    return settings.n_workers or max(1, (os.cpu_count() or 1) // max(1, settings.threads_per_worker))


def forked_workers(settings: ClusterSettings) -> bool:
    """Whether a cluster of ``settings`` forks its workers from a server (:func:`start_forkserver`)."""
    if settings.kind != "local" or settings.worker_start == "spawn":
        return False
    return settings.worker_start == "forkserver" or local_workers(settings) > 1


def _start(settings: ClusterSettings, forked: bool = False):
    """The cluster of ``settings`` (``forked``: a local cluster's workers come from the server
    :func:`start_forkserver` started)."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ": _pre_spawn_environ(settings),  # read by each nanny
                          **({"distributed.worker.multiprocessing-method": "forkserver"} if forked else {}),
                          "distributed.scheduler.allowed-failures": settings.allowed_failures,
                          # task results (index rows with input paths) never land on local disk unless asked
                          "distributed.worker.memory.target": 0.6 if settings.spill_to_disk else False,
                          "distributed.worker.memory.spill": 0.7 if settings.spill_to_disk else False,
                          # a loaded machine starts worker processes slowly: they may connect late
                          "distributed.comm.timeouts.connect": max(settings.start_timeout_s, _seconds(
                              dask.config.get("distributed.comm.timeouts.connect")))}):
        if settings.kind == "local-cuda":
            try:
                from dask_cuda import LocalCUDACluster
            except ImportError as exc:
                raise MissingDependencyError("cluster kind 'local-cuda' needs dask-cuda; pip install 'radflow[gpu]'") from exc
            return LocalCUDACluster(n_workers=settings.n_workers, threads_per_worker=settings.threads_per_worker,
                                    memory_limit=settings.memory_limit, dashboard_address=settings.dashboard_address,
                                    ip="127.0.0.1", rmm_pool_size=settings.rmm_pool_size)
        if settings.kind == "kubernetes":
            try:
                from dask_kubernetes.operator import KubeCluster
            except ImportError as exc:
                raise MissingDependencyError("cluster kind 'kubernetes' needs dask-kubernetes; pip install dask-kubernetes "
                                             "(and the Dask operator in the Kubernetes cluster)") from exc
            from radflow.cluster.kubernetes import cluster_spec

            return KubeCluster(custom_cluster_spec=cluster_spec(settings), namespace=settings.kubernetes.namespace)
        if settings.kind == "local":
            return LocalCluster(
                n_workers=local_workers(settings),
                threads_per_worker=settings.threads_per_worker,
                processes=True,
                memory_limit=settings.memory_limit,
                host="127.0.0.1",
                dashboard_address=settings.dashboard_address,
                silence_logs=logging.WARNING,
                timeout=settings.start_timeout_s,
            )
    raise ConfigError(f"unknown cluster kind {settings.kind!r}")  # pragma: no cover - guarded by the settings model
