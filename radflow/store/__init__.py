"""The store format alone: URLs and filesystems, the versioned Zarr layout, Parquet tables,
the store handle (:func:`open_store`), inspection, digest and verify."""

from radflow.store.handle import Store, open_store

__all__ = ["Store", "open_store"]
