"""Where bytes live: a URL (local path or ``s3://``) to an fsspec filesystem or a Zarr store."""

from __future__ import annotations

import os
from typing import Any

import fsspec
from fsspec.core import url_to_fs

__all__ = ["filesystem", "join", "is_remote", "zarr_store", "plain_store", "normalize"]


def normalize(url: str | os.PathLike[str]) -> str:
    """Absolute local path or an unchanged remote URL, without a trailing slash."""
    url = os.fspath(url)
    if "://" in url and not url.startswith("file://"):
        return url.rstrip("/")
    if url.startswith("file://"):
        url = url[len("file://") :]
    return os.path.abspath(os.path.expanduser(url))


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(fs, path)`` for a URL.

    S3 credentials come from ``storage_options`` or the standard AWS environment and
    profile; ``AWS_ENDPOINT_URL`` (or ``endpoint_url`` in the options) selects an
    S3-compatible server.
    """
    return url_to_fs(url, **_options(url, storage_options))


S3_RETRIES = {"max_attempts": 10, "mode": "standard"}


def _options(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """fsspec options for ``url``. For S3: the endpoint from the environment, and retries.

    Transient errors are retried with exponential back-off and jitter at two levels:
    botocore's ``standard`` mode (10 attempts: 500/502/503/504, ``SlowDown`` and other
    throttling codes, connection resets and timeouts) and s3fs's own wrapper (5 attempts:
    truncated bodies, timeouts, ``SlowDown``). Permanent errors (403, 404) are raised at once.
    ``storage_options={"config_kwargs": {"retries": ...}}`` overrides the botocore policy.
    """
    opts = dict(storage_options or {})
    opts.pop("dicomweb", None)  # a DICOMweb source's settings and request slots, not an fsspec option
    if url.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in opts and "client_kwargs" not in opts:
            opts["endpoint_url"] = endpoint
        config = dict(opts.get("config_kwargs") or {})
        config.setdefault("retries", dict(S3_RETRIES))
        opts["config_kwargs"] = config
    return opts


def join(url: str, *parts: str) -> str:
    out = url.rstrip("/")
    for p in parts:
        out = out + "/" + p.strip("/")
    return out


def zarr_store(url: str, storage_options: dict[str, Any] | None = None, *, read_only: bool = False,
               version: Any = None):
    """A zarr-python 3 store for the URL.

    A versioned store (format 2, :mod:`radflow.store.versions`): the session this thread writes through
    (a task's fork, the flow's transaction), else the newest version (or ``version``), read-only: a write
    outside a transaction fails. A format-1 store: ``LocalStore`` or ``FsspecStore`` over the URL itself.
    """
    from radflow.store import versions

    session = versions.session_for(url, write=not read_only) if version is None else None
    if session is not None:
        return versions.RetryingStore(session.store, root_expected=versions.root_expected(url))
    if version is not None or versions.is_versioned(url, storage_options):
        return versions.RetryingStore(versions.readonly(url, storage_options, version).store)
    return plain_store(url, storage_options, read_only=read_only)


def plain_store(url: str, storage_options: dict[str, Any] | None = None, *, read_only: bool = False):
    """The Zarr store over the URL itself (a format-1 store's hierarchy)."""
    from zarr.storage import FsspecStore, LocalStore

    if not is_remote(url):
        return LocalStore(normalize(url), read_only=read_only)
    opts = _options(url, storage_options)
    opts.setdefault("asynchronous", True)
    return FsspecStore.from_url(url, storage_options=opts, read_only=read_only)
