"""Where work runs: Dask clusters and worker plugins."""

from radflow.cluster.local import connect, dashboard_link, start_local, warm_up

__all__ = ["connect", "dashboard_link", "start_local", "warm_up"]
