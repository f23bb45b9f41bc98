"""What the benchmark scripts share: quiet orchestration logs, one synthetic transfer syntax, and an
untimed first run that starts Prefect's temporary local API."""

from __future__ import annotations

import os


def quiet() -> None:
    """Benchmarks print tables; Prefect's and Dask's own logs stay at warnings."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")


def use_syntax(name: str) -> None:
    """Make the synthetic archive writer use one transfer syntax: ``explicit`` or ``jpeg2000``."""
    import radflow.synth.radiographs as R
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

    R._SYNTAXES = (ExplicitVRLittleEndian if name == "explicit" else JPEG2000Lossless,)
    R._SYNTAX_WEIGHTS = (1.0,)


def warm_up(work: str) -> None:
    """Ingest an empty folder once, untimed, so Prefect's local API is up before timing starts."""
    import radflow
    from radflow.cluster import connect
    from radflow.config import ClusterSettings

    empty = os.path.join(work, "empty")
    os.makedirs(empty, exist_ok=True)
    with connect(ClusterSettings(n_workers=1)):
        radflow.ingest(empty, os.path.join(work, "warmup.zarr"))


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one ``(start, stop)`` interval (Dask tasks computing): wall time minus
    this is the orchestration share the benchmarks print."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total
