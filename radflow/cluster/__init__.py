"""Where work runs: Dask clusters and worker plugins."""

from radflow.cluster.local import (connect, current_pending, dashboard_link, engine_imported, pending_cluster, start_local,
                                   warm_up)

__all__ = ["connect", "current_pending", "dashboard_link", "engine_imported", "pending_cluster", "start_local", "warm_up"]
