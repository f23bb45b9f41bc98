"""radflow: medical-imaging archives into sharded Zarr v3 stores and Parquet tables.

Python API (heavy imports happen inside the calls)::

    import radflow
    radflow.ingest("archive/", "store.zarr")
    radflow.process("store.zarr", steps=("preprocess", "infer", "features"), model="model.pt")
    store = radflow.open_store("store.zarr")
    store.ledger(); store.instances(); store.raw_frame(0); store.dataset()
"""

from __future__ import annotations

import logging
import os
from typing import Any

from radflow.config import VERSION as __version__
__all__ = ["__version__", "ingest", "process", "verify", "digest", "open_store", "Settings"]

logging.getLogger(__name__).addHandler(logging.NullHandler())

# Prefect's temporary local API must answer within 20 s by default, which a loaded laptop often misses
# ("Timed out while attempting to connect to ephemeral Prefect API server"); a value the user set wins.
# Read when Prefect is first imported: radflow is imported before it.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

# The ingest engine is the package ``radflow.ingest``; the public API is the function ``radflow.ingest``.
# Importing the (light) package first registers it in ``sys.modules``, so the ``def ingest`` below keeps
# the name in this namespace: later ``from radflow.ingest.batches import ...`` find the package through
# ``sys.modules`` and no longer rebind ``radflow.ingest`` to the module.
import radflow.ingest  # noqa: E402,F401  (must stay before ``def ingest``)


def open_store(url: str, storage_options: dict[str, Any] | None = None, version: Any = None):
    """Open a radflow store for reading: its newest version, or ``version`` (an id from
    ``open_store(url).history()``, a tag, or a ``datetime``); see :class:`radflow.store.handle.Store`."""
    from radflow.store.handle import open_store as _open

    return _open(url, storage_options, version)


def _engines(module: str, options: dict[str, Any]):
    """Prefect's API, the flow's module and the cluster started side by side (see flows._api.engines)."""
    from radflow.flows._api import engines

    return engines((module,), cluster=True, settings=options.get("settings"), address=options.get("cluster"))


def ingest(source: str, store: str, **options: Any) -> dict[str, Any]:
    """Ingest a DICOM archive into a store; see :func:`radflow.flows.ingest.ingest_flow`."""
    with _engines("radflow.flows.ingest", options):
        from radflow.flows.ingest import ingest_flow

        return ingest_flow(source, store, **options)


def process(store: str, steps: tuple[str, ...] | list[str] | str = ("preprocess", "infer", "features"), **options: Any) -> dict[str, Any]:
    """Process a store; see :func:`radflow.flows.process.process_flow`."""
    if isinstance(steps, str):
        steps = [s.strip() for s in steps.split(",") if s.strip()]
    from radflow.config import cluster_for_steps

    settings = cluster_for_steps(steps, options.get("settings"), options.get("cluster"))
    if settings is not None:
        options = {**options, "settings": settings}
    with _engines("radflow.flows.process", options):
        from radflow.flows.process import process_flow

        return process_flow(store, steps=list(steps), **options)


def verify(store: str, **options: Any) -> dict[str, Any]:
    """Re-read every stored frame and check it; see :func:`radflow.flows.verify.verify_flow`."""
    with _engines("radflow.flows.verify", options):
        from radflow.flows.verify import verify_flow

        return verify_flow(store, **options)


def digest(store: str, storage_options: dict[str, Any] | None = None) -> dict[str, str]:
    """Content digests of a store (arrays, tables, attributes; no timestamps or timings);
    see :func:`radflow.store.verify.content_digest`."""
    from radflow.store.verify import content_digest

    return content_digest(store, storage_options)


def __getattr__(name: str):
    if name == "Settings":
        from radflow.config import Settings

        return Settings
    raise AttributeError(name)
