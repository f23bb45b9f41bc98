"""Scheduled incremental ingestion: ``radflow serve --cron "…" SOURCE STORE``.

The ingest flow is served as a Prefect deployment with a cron schedule; each scheduled run
ingests only what is new under SOURCE (inputs are keyed by path, size and version, batches are
content-addressed), so a nightly run over a growing archive appends the day's files. Runs show
in the Prefect UI with their artifact; ``prefect deployment run 'radflow-ingest/<name>'``
starts one by hand. ``prefect.yaml`` at the repository root holds the same deployments for
``prefect deploy`` onto a work pool.
"""

from __future__ import annotations

from typing import Any

from radflow.flows.ingest import ingest_flow

__all__ = ["serve_ingest", "schedule"]


def serve_ingest(source: str, store: str, *, cron: str, name: str = "scheduled", timezone: str = "UTC",
                 cluster: str | None = None, settings: dict[str, Any] | None = None,
                 query: dict[str, str] | None = None) -> None:
    """Serve the ingest flow on ``cron`` until interrupted (blocks)."""
    from radflow.store.urls import normalize

    params: dict[str, Any] = {"source": normalize(source), "store": normalize(store)}
    if cluster:
        params["cluster"] = cluster
    if settings:
        params["settings"] = settings
    if query:
        params["query"] = query
    ingest_flow.serve(name=name, schedule=schedule(cron, timezone), parameters=params, print_starting_message=True,
                      tags=["radflow", "ingest"], description=f"incremental ingestion on '{cron}' ({timezone})")


def schedule(cron: str, timezone: str = "UTC"):
    """Prefect's cron schedule in ``timezone`` (an IANA name: ``Europe/Berlin``); a wrong name fails here."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from prefect.schedules import Cron

    from radflow.errors import ConfigError

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"--timezone {timezone!r} is not an IANA time zone name (e.g. UTC, Europe/Berlin)") from None
    return Cron(cron, timezone=timezone)
