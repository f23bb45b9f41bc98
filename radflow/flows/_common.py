"""Helpers shared by the flows (Prefect is imported only inside the functions that need it)."""

from __future__ import annotations

import sys

import contextlib
import datetime as _dt
import logging
import os
import tempfile
import uuid
from typing import Any, Iterator

from radflow.config import Settings
from radflow.errors import ConfigError

__all__ = ["build_settings", "run_logger", "markdown_table", "performance_report", "request_slots", "publish_artifact"]


def build_settings(overrides: dict[str, Any] | None, cluster: str | None = None) -> Settings:
    """Settings from the environment plus explicit overrides.

    Secrets are refused as overrides: flow parameters are recorded by Prefect, so the
    key must come from ``RADFLOW_SECRET_KEY`` or the key file.
    """
    overrides = dict(overrides or {})
    if "secret_key" in overrides:
        raise ConfigError("pass the pseudonymization key through RADFLOW_SECRET_KEY or RADFLOW_KEY_FILE, not as an option")
    if set(overrides.get("dicomweb") or {}) & {"token", "password", "username"}:
        raise ConfigError("pass DICOMweb credentials through RADFLOW_DICOMWEB__TOKEN (or __USERNAME and __PASSWORD, "
                          "or __CREDENTIALS_FILE), not as an option: flow parameters are recorded")
    settings = Settings()
    if overrides:
        merged = settings.model_dump()
        merged.pop("secret_key", None)
        for k, v in overrides.items():
            if isinstance(v, dict) and isinstance(merged.get(k), dict):
                merged[k] = {**merged[k], **v}
            else:
                merged[k] = v
        settings = Settings(**merged, secret_key=settings.secret_key)
    if cluster:
        settings.cluster.address = cluster
    return settings


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run, else the module logger."""
    try:
        from prefect import get_run_logger
        from prefect.exceptions import MissingContextError

        try:
            return get_run_logger()
        except MissingContextError:
            pass
    except ImportError:  # pragma: no cover
        pass
    return logging.getLogger("radflow.flows")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of ``rows`` (floats to 4 significant digits)."""
    if not rows:
        return "_(none)_\n"
    cols = list(rows[0])

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def performance_report(store: str, settings: Settings, storage_options: dict[str, Any] | None,
                       name: str) -> Iterator[str | None]:
    """With ``settings.performance_report``, record Dask's performance report (task stream,
    worker profiles, bandwidth) of the block and save it as ``<store>/reports/<name>-<UTC time>.html``;
    yields that URL (``None`` when off)."""
    if not settings.performance_report:
        yield None
        return
    from distributed import performance_report as dask_report

    from radflow.store.urls import filesystem, join

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    url = join(store, "reports", f"{name}-{stamp}.html")
    with tempfile.TemporaryDirectory(prefix="radflow-report-") as tmp:
        local = os.path.join(tmp, "report.html")
        with dask_report(filename=local):
            yield url
        fs, path = filesystem(url, storage_options)
        fs.makedirs(fs._parent(path), exist_ok=True)
        with open(local, "rb") as fh:
            fs.pipe_file(path, fh.read())
    run_logger().info("Dask performance report: %s", url)


def compact_tables(client: Any, store: str, storage_options: dict[str, Any] | None, threshold: int) -> dict[str, Any]:
    """Compact, on a worker, every table of ``store`` with more than ``threshold`` Parquet files
    (``threshold`` 0: never). Returns what was compacted."""
    if not threshold:
        return {}
    from radflow.store.tables import compact_store, list_parts, table_names

    names = [n for n in table_names(store, storage_options) if len(list_parts(store, n, storage_options)) > threshold]
    if not names:
        return {}
    from radflow.cluster.sealed import submit
    from radflow.cluster.waiting import result

    from radflow.store.versions import settle, task

    out = settle(store, result(submit(client, task(store, compact_store), store, storage_options,
                                      min_parts=threshold + 1, tables=names)))
    run_logger().info("compacted %s", ", ".join(f"{k} ({v['files_before']} → {v['files_after']} files)" for k, v in out.items()))
    return out


def stop_temporary_api() -> None:
    """Stop Prefect's temporary API server, if this process started one for itself (an exit that skips
    ``atexit`` must not leave it running; a kept server is left to the other commands)."""
    from radflow.flows._api import current_api

    if current_api() is not None:
        current_api().kill()
    if "prefect.server.api.server" not in sys.modules:
        return
    try:
        from prefect.server.api.server import SubprocessASGIServer

        for server in list(getattr(SubprocessASGIServer, "_instances", {}).values()):
            proc = getattr(server, "server_process", None)
            if proc is not None:
                proc.kill()
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass


@contextlib.contextmanager
def request_slots(client, src: str, cfg: Settings, storage_options: dict[str, Any] | None):
    """``storage_options`` that carry, for a DICOMweb source, a cluster-wide semaphore of
    ``dicomweb.max_concurrency`` request slots (the run's limit across all its workers)."""
    from radflow.ingest.dicomweb import is_dicomweb

    if not is_dicomweb(src):
        yield storage_options
        return
    from distributed import Semaphore

    slots = Semaphore(max_leases=cfg.dicomweb.max_concurrency, name=f"radflow-dicomweb-{uuid.uuid4().hex}")
    try:
        yield {**(storage_options or {}), "dicomweb": {"settings": cfg.dicomweb, "slots": slots}}
    finally:
        slots.close()


def publish_artifact(markdown: str, *, key: str, description: str) -> None:
    """The run's summary as a Prefect markdown artifact. Never fails the run: the work is done and its
    result returned whether or not Prefect's API takes the artifact (under load a sync API call cut off
    by its deadline has surfaced inside Prefect as an ``UnboundLocalError``)."""
    from prefect.artifacts import create_markdown_artifact

    try:
        create_markdown_artifact(markdown, key=key, description=description)
    except Exception as exc:  # noqa: BLE001 - the artifact is a view of a result already written
        run_logger().warning("could not record the %s artifact in Prefect (%s); the run's result is unaffected",
                             key, type(exc).__name__)
