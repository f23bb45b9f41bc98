"""Versioned stores (format version 2): every write is part of an Icechunk transaction.

A format-2 store at a URL is::

    store.zarr/
      repo/                              Icechunk repository: the Zarr hierarchy, one snapshot per commit
      tables/<name>/part-*.parquet       immutable, uniquely named Parquet files
      writer.lock

A table's parts at a version are the nodes ``tables/<name>/<part>`` of that version's hierarchy
(attributes ``file`` and ``rows``): a Parquet file a snapshot does not list is not part of the store
at that version. Arrays and tables therefore always agree at a version, and a killed run leaves
only files no snapshot lists (removed by :func:`expire`).

Who writes what:

* the flow opens a :class:`Transaction` (under the store's writer lock); its own writes (array
  shapes, root attributes, table parts it writes itself) go into the transaction's session;
* each Dask task that writes gets a fork of the last commit (:meth:`Transaction.task`), writes
  through it on its worker (:func:`in_session`), and hands it back with its result; the flow merges it
  (:meth:`Transaction.settle`);
* :meth:`Transaction.commit` makes what was merged one version: checkpoints while the run goes on
  (every ``checkpoint_every`` merged tasks, and wherever a later step reads what an earlier one
  wrote), the last one when the run ends. A version's metadata names its command, radflow version
  and summary (``radflow history``).

Format-1 stores (plain Zarr, written before versions existed) are read and written as before, with no
transaction, until ``radflow migrate`` turns them into format 2.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from radflow.config import VERSION
from radflow.store.retries import RetryingStore, retried, transient
from radflow.store.urls import _options, is_remote, normalize

__all__ = ["REPO", "tip", "Transaction", "transaction", "current", "task", "settle", "checkpoint", "in_session", "collect_garbage", "Forked", "session_for", "is_versioned",
           "repository", "readonly", "history", "expire", "storage", "root_expected"]

log = logging.getLogger(__name__)

REPO = "repo"
BRANCH = "main"


def storage(url: str, storage_options: dict[str, Any] | None = None):
    """The Icechunk storage of the store at ``url`` (its ``repo/`` folder or prefix)."""
    import icechunk as ic

    _logs()
    url = normalize(url)
    if not is_remote(url):
        return ic.local_filesystem_storage(os.path.join(url, REPO))
    if not url.startswith("s3://"):
        raise ValueError(f"versioned stores live on a local disk or S3, not {url.split('://')[0]}://")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    opts = _options(url, storage_options)
    client = dict(opts.get("client_kwargs") or {})
    endpoint = opts.get("endpoint_url") or client.get("endpoint_url")
    key, secret = opts.get("key"), opts.get("secret")
    return ic.s3_storage(
        bucket=bucket, prefix=f"{prefix.strip('/')}/{REPO}".lstrip("/"),
        region=client.get("region_name") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        endpoint_url=endpoint, allow_http=bool(endpoint and endpoint.startswith("http://")),
        force_path_style=bool(endpoint),
        access_key_id=key, secret_access_key=secret, session_token=opts.get("token"),
        from_env=None if key else True,
    )


@functools.lru_cache(maxsize=1)
def _logs() -> None:
    """Icechunk warns that its local-filesystem storage is unsafe for concurrent commits: radflow commits a
    store only under its writer lock (an flock locally), so that warning is silenced; others stay."""
    import icechunk as ic

    ic.set_logs_filter(os.environ.get("ICECHUNK_LOG") or "warn,icechunk::storage::object_store=error")


_KNOWN: dict[str, Any] = {}  # url → Repository (a store, once versioned, stays versioned)
_KNOWN_LOCK = threading.Lock()


def _key(url: str, storage_options: dict[str, Any] | None) -> str:
    import json

    opts = {k: v for k, v in (storage_options or {}).items() if k != "dicomweb"}  # a source's, not the store's
    return normalize(url) + "\0" + json.dumps(opts, sort_keys=True, default=str)


def repository(url: str, storage_options: dict[str, Any] | None = None, *, create: bool = False):
    """The store's Icechunk repository, or ``None`` for a format-1 store or none at all
    (``create=True``: a new repository where nothing is yet)."""
    import icechunk as ic

    key = _key(url, storage_options)
    with _KNOWN_LOCK:
        if key in _KNOWN:
            return _KNOWN[key]
    if not is_remote(normalize(url)) and not create and not os.path.isdir(os.path.join(normalize(url), REPO, "refs")):
        return None  # (a local storage object would make the folder)
    st = storage(url, storage_options)
    if retried(ic.Repository.exists, st):
        repo = retried(ic.Repository.open, st)
    elif create:
        try:
            repo = ic.Repository.create(st)
        except ic.IcechunkError:
            # a retried request of its own (S3 answered, the connection did not) or another writer made it
            if not retried(ic.Repository.exists, st):
                raise
            repo = retried(ic.Repository.open, st)
    else:
        return None
    with _KNOWN_LOCK:
        _KNOWN[key] = repo
    return repo


def is_versioned(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    return repository(url, storage_options) is not None


def readonly(url: str, storage_options: dict[str, Any] | None = None, version: str | _dt.datetime | None = None):
    """A read-only session of the store: the newest version, or ``version`` (a snapshot id, a tag, or a
    time: the version that was newest then)."""
    from radflow.errors import StoreNotFoundError

    repo = repository(url, storage_options)
    if repo is None:
        raise StoreNotFoundError(f"{url} is not a versioned radflow store")
    if version is None:
        return retried(repo.readonly_session, BRANCH)
    if isinstance(version, _dt.datetime):
        return retried(repo.readonly_session, BRANCH,
                       as_of=version if version.tzinfo else version.astimezone(_dt.timezone.utc))
    version = str(version)
    try:
        return retried(repo.readonly_session, snapshot_id=version)
    except Exception as exc:
        if transient(exc):
            raise
        try:
            return retried(repo.readonly_session, tag=version)
        except Exception as exc2:
            if transient(exc2):
                raise
            raise KeyError(f"{url} has no version {version!r}; `radflow history {url}` lists them") from None


def tip(url: str, storage_options: dict[str, Any] | None = None) -> str:
    """The id of the store's newest version."""
    repo = repository(url, storage_options)
    if repo is None:
        from radflow.errors import StoreNotFoundError

        raise StoreNotFoundError(f"{url} is not a versioned radflow store")
    return retried(repo.lookup_branch, BRANCH)


# -- the flow's side -------------------------------------------------------------------------

_OPEN: dict[str, "Transaction"] = {}  # url → the transaction this process has open on it


@dataclass
class Forked:
    """What a task that wrote through a fork returns: its value and the fork to merge."""

    value: Any
    session: Any


class Transaction:
    """The flow's writable view of a versioned store: its own writes, the merged forks, commits."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None, repo, *, command: str,
                 checkpoint_every: int = 64, checkpoint_seconds: float = 600.0) -> None:
        self.url = normalize(url)
        self.storage_options = storage_options
        self.repo = repo
        self.command = command
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.session = retried(repo.writable_session, BRANCH)
        self._parent = None  # a clean session at the last commit, the one forks come from
        self._dirty = False  # the flow wrote to the session itself since the last commit
        self._merged = 0
        self._since = time.monotonic()
        self._lock = threading.RLock()
        self.started = time.time()
        self.forks = 0  # handed to tasks
        self.settled = 0  # merged back: fewer means a task died, and what it wrote is garbage
        self.empty = False  # began on a branch with nothing in it (a new store)
        self.commits: list[str] = []
        self.commit_seconds = 0.0  # spent in the engine's commits (checkpoints and the last one)
        self.summary: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Transaction({self.url!r}, {self.command!r})"

    def wrote(self) -> None:
        with self._lock:
            self._dirty = True

    def fork(self):
        """A session for one task: the last commit (the flow's own writes committed first, so the
        task sees the arrays and shapes the flow made for it)."""
        with self._lock:
            if self._dirty:
                self.commit("checkpoint: planned", checkpoint=True)
            if self._parent is None:
                self._parent = retried(self.repo.writable_session, BRANCH)
            self.forks += 1
            return self._parent.fork()

    def task(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` wrapped to write through a fresh fork on its worker (see :func:`in_session`), known by
        ``fn``'s name."""
        wrapped = functools.partial(in_session, self.url, self.fork(), fn)
        wrapped.__name__ = getattr(fn, "__name__", "in_session")
        return wrapped

    def settle(self, out: Any) -> Any:
        """Merge a task's fork (when it returned one) and give its value."""
        if not isinstance(out, Forked):
            return out
        with self._lock:
            self.session.merge(out.session)
            self._merged += 1
            self.settled += 1
            due = self._merged >= self.checkpoint_every or time.monotonic() - self._since > self.checkpoint_seconds
        if due:
            self.commit("checkpoint", checkpoint=True)
        return out.value

    def commit(self, message: str, *, checkpoint: bool = False, **metadata: Any) -> str | None:
        """Commit what was written and merged as one version (nothing when nothing changed)."""
        with self._lock:
            self._dirty = False
            if not self.session.has_uncommitted_changes:
                return None
            meta = {"command": self.command, "radflow_version": VERSION, "checkpoint": checkpoint,
                    "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **metadata}
            meta["token"] = uuid.uuid4().hex
            t0 = time.perf_counter()
            snap = _commit(self.repo, self.session, message, _jsonable(meta))
            self.commit_seconds += time.perf_counter() - t0
            self.commits.append(snap)
            self.session = retried(self.repo.writable_session, BRANCH)
            self._parent = None
            self._merged = 0
            self._since = time.monotonic()
            log.info("%s: committed version %s (%s)", self.url, snap, message)
            return snap


    def finish(self, message: str) -> str | None:
        """The run's own version: what is left, committed with the run's summary. A run that committed
        checkpoints and has nothing left still gets it (its root ``updated`` time changes), so each
        run that wrote is one entry of the history; a run that wrote nothing leaves no version."""
        import zarr

        with self._lock:
            if not self.commits and not self.session.has_uncommitted_changes:
                return None
            root = zarr.open_group(self.session.store, mode="r+")
            meta = dict(root.attrs.get("radflow") or {})
            if meta:
                meta["updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                root.attrs["radflow"] = meta
            return self.commit(message, summary=self.summary)


def _commit(repo, session, message: str, meta: dict[str, Any]) -> str:
    """Commit, again after a transient storage error, unless the commit landed although its reply was
    lost (the branch's newest version then carries this commit's token)."""
    import icechunk as ic

    for attempt in range(8):
        try:
            return session.commit(message, metadata=meta, rebase_with=ic.ConflictDetector(), rebase_tries=20)
        except Exception as exc:
            if attempt == 7 or not (transient(exc) or "conflict" in str(exc).lower() or "read only" in str(exc).lower()):
                raise
            tip = retried(repo.lookup_branch, BRANCH)
            if (retried(repo.lookup_snapshot, tip).metadata or {}).get("token") == meta["token"]:
                return tip
            time.sleep(min(2.0, 0.05 * 2 ** attempt))
    raise AssertionError("unreachable")


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))


@contextlib.contextmanager
def transaction(url: str, storage_options: dict[str, Any] | None = None, *, command: str, create: bool = False,
                message: str | None = None, collect: bool = False) -> Iterator[Transaction | None]:
    """The flow's transaction on a store for the block (``None`` for a format-1 store, which is written
    directly). On the way out, what was merged is committed: whole tasks only, so an error or an
    interrupt keeps the finished batches and the next run resumes after them. ``create`` makes a
    format-2 store where none exists. What a killed run left uncommitted is deleted first when the
    newest version is a checkpoint (a run that did not finish) or ``collect`` says a run was killed."""
    url = normalize(url)
    if url in _OPEN:  # nested (``radflow run``'s process inside its ingest's store): the outer one commits
        yield _OPEN[url]
        return
    repo = repository(url, storage_options, create=create and not _is_plain_zarr(url, storage_options))
    if repo is None:
        yield None
        return
    ancestry = _ancestry(repo)
    tip = ancestry[0]
    if collect or (tip.metadata or {}).get("checkpoint"):
        found = collect_garbage(url, storage_options)
        if any(found.values()):
            log.info("%s: removed what an unfinished run left uncommitted (%d chunks, %d table files)", url,
                     found["chunks"], found["table_files"])
    tx = Transaction(url, storage_options, repo, command=command)
    tx.empty = len(ancestry) == 1  # only the repository's first version: no root group yet
    _OPEN[url] = tx
    try:
        yield tx
    except BaseException as exc:
        _OPEN.pop(url, None)
        with contextlib.suppress(Exception):
            tx.commit(f"{command}: interrupted ({type(exc).__name__})", checkpoint=True)
        raise
    _OPEN.pop(url, None)
    tx.finish(message or command)
    if tx.forks > tx.settled:  # a task died or was retried: what its attempt wrote is no version's
        found = collect_garbage(url, storage_options, since=tx.started - 1)
        log.info("%s: removed what %d lost task attempts wrote (%d chunks, %d table files)", url,
                 tx.forks - tx.settled, found["chunks"], found["table_files"])


def _is_plain_zarr(url: str, storage_options: dict[str, Any] | None) -> bool:
    """Whether a format-1 store (a Zarr group at the URL itself) is there."""
    from radflow.store.urls import filesystem, join

    fs, path = filesystem(join(url, "zarr.json"), storage_options)
    try:
        return bool(fs.exists(path))
    except Exception:
        return False


def root_expected(url: str) -> bool:
    """Whether the store's root group must exist in what this process writes through (not for a
    transaction that began on a new, empty store and has committed nothing)."""
    tx = _OPEN.get(normalize(url))
    return not (tx is not None and tx.empty and not tx.commits)


def current(url: str) -> Transaction | None:
    """The transaction this process has open on ``url``."""
    return _OPEN.get(normalize(url))


def task(url: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` for a Dask task that writes ``url``: through a fork when this process has a transaction open
    on it (pass the task's result to :func:`settle`), else ``fn`` itself."""
    tx = current(url)
    return fn if tx is None else tx.task(fn)


def settle(url: str, out: Any) -> Any:
    """A task's value, its fork merged into this process's transaction on ``url``."""
    tx = current(url)
    return tx.settle(out) if tx is not None else (out.value if isinstance(out, Forked) else out)


def checkpoint(url: str, message: str = "checkpoint") -> str | None:
    """Commit what this process's transaction on ``url`` merged so far (the tasks that follow read it)."""
    tx = current(url)
    return None if tx is None else tx.commit(message, checkpoint=True)


# -- the worker's side -----------------------------------------------------------------------

_ACTIVE = threading.local()


def in_session(url: str, fork, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Forked:
    """Run ``fn`` with ``fork`` as this thread's session for ``url`` (every array and table write of
    ``fn`` to that store goes through it); return its value with the fork."""
    url = normalize(url)
    before = getattr(_ACTIVE, "sessions", None)
    _ACTIVE.sessions = {**(before or {}), url: fork}
    try:
        return Forked(fn(*args, **kwargs), fork)
    finally:
        _ACTIVE.sessions = before


def session_for(url: str, *, write: bool = False):
    """The session this thread writes ``url`` through: a task's fork, or this process's transaction."""
    url = normalize(url)
    sessions = getattr(_ACTIVE, "sessions", None)
    if sessions and url in sessions:
        return sessions[url]
    tx = _OPEN.get(url)
    if tx is None:
        return None
    if write:
        tx.wrote()
    return tx.session


# -- history --------------------------------------------------------------------------------


def history(url: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The store's versions, newest first: ``version`` (snapshot id), ``time``, ``message`` and the
    commit's metadata (``command``, ``radflow_version``, ``checkpoint``, ``summary``)."""
    repo = repository(url, storage_options)
    if repo is None:
        return []
    out = []
    for snap in _ancestry(repo):
        meta = dict(snap.metadata or {})
        out.append({"version": snap.id, "time": snap.written_at.isoformat(timespec="milliseconds"), "message": snap.message,
                    "command": meta.get("command", ""), "radflow_version": meta.get("radflow_version", ""),
                    "checkpoint": bool(meta.get("checkpoint", False)), "summary": meta.get("summary") or {}})
    return out


def expire(url: str, older_than: _dt.datetime, storage_options: dict[str, Any] | None = None) -> dict[str, int]:
    """Forget versions older than ``older_than`` (the newest always stays) and delete what no
    remaining version uses: chunks (Icechunk's garbage collection) and table files. Run under the
    store's writer lock."""
    repo = repository(url, storage_options)
    if repo is None:
        raise ValueError(f"{url} is a format-1 store without versions; `radflow migrate` it first")
    when = older_than if older_than.tzinfo else older_than.astimezone(_dt.timezone.utc)
    expired = repo.expire_snapshots(when)
    gc = repo.garbage_collect(when)
    kept: set[str] = set()
    for snap in _ancestry(repo):
        kept |= _listed(_root_at(repo, snap.id))
    removed = _remove_tables(url, storage_options, kept, before=when.timestamp())
    return {"versions_expired": len(expired), "chunks_deleted": int(getattr(gc, "chunks_deleted", 0)),
            "table_files_deleted": removed}


def collect_garbage(url: str, storage_options: dict[str, Any] | None = None, *, since: float | None = None,
                    dry_run: bool = False) -> dict[str, int]:
    """Delete what a killed run or task wrote but no version uses: chunks no version references, and table
    files the newest version does not list that were written after ``since`` (a time; default: when the
    newest version was made — older unlisted files may belong to older versions). Run under the store's
    writer lock (no other writer has uncommitted work then); ``dry_run`` only counts."""
    repo = repository(url, storage_options)
    if repo is None:
        return {"chunks": 0, "table_files": 0}
    tip = _ancestry(repo)[0]
    gc = retried(repo.garbage_collect, _dt.datetime.now(_dt.timezone.utc), dry_run=dry_run)
    listed = _listed(_root_at(repo, tip.id))
    after = tip.written_at.timestamp() - 1 if since is None else since
    removed = _remove_tables(url, storage_options, listed, after=after, dry_run=dry_run)
    return {"chunks": int(getattr(gc, "chunks_deleted", 0)), "table_files": removed}


def _remove_tables(url: str, storage_options: dict[str, Any] | None, keep: set[str], *, before: float | None = None,
                   after: float | None = None, dry_run: bool = False) -> int:
    """Delete table files (``<table>/<file>``) not in ``keep``, modified before/after the given times."""
    from radflow.store.urls import filesystem, join

    fs, base = filesystem(join(url, "tables"), storage_options)
    fs.invalidate_cache(base)
    try:
        found = fs.find(base, detail=True)
    except FileNotFoundError:
        return 0
    removed = 0
    for path, info in found.items():
        rel = path[len(base.rstrip("/")) + 1:]
        if rel in keep or not rel.endswith(".parquet"):
            continue
        modified = info.get("mtime") or info.get("LastModified") or 0
        modified = modified.timestamp() if isinstance(modified, _dt.datetime) else float(modified)
        if (before is not None and modified >= before) or (after is not None and modified < after):
            continue
        if not dry_run:
            fs.rm_file(path)
        removed += 1
    return removed


def _ancestry(repo) -> list[Any]:
    """The branch's versions, newest first."""
    return retried(lambda: list(repo.ancestry(branch=BRANCH)))


def _root_at(repo, snapshot: str):
    """The root group at a snapshot (``None`` for the repository's empty first one)."""
    import zarr

    try:
        return zarr.open_group(RetryingStore(retried(repo.readonly_session, snapshot_id=snapshot).store), mode="r")
    except zarr.errors.GroupNotFoundError:
        return None


def _listed(root) -> set[str]:
    """``<table>/<file>`` of every table part a version lists."""
    return {f"{name}/{f}" for name, files in _manifest_files(root).items() for f in files}


def _manifest_files(root) -> dict[str, list[str]]:
    if root is None:
        return {}
    try:
        tables = root["tables"]
    except KeyError:
        return {}
    out: dict[str, list[str]] = {}
    for name, group in tables.groups():
        out[name] = [str(node.attrs.get("file")) for _, node in group.groups() if node.attrs.get("file")]
    return out
