"""Reading a radflow store: :func:`open_store` and :class:`Store`."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from radflow.store import layout, versions
from radflow.store.layout import KINDS, reference_path
from radflow.store.tables import list_parts, read_table, terminal_ledger
from radflow.store.urls import normalize, zarr_store

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Store", "open_store"]

log = logging.getLogger(__name__)


class Store:
    """A radflow store at a URL: Zarr arrays plus Parquet tables.

    A versioned store (format 2) is read at its newest version, whichever it is at each call (arrays
    and tables from the same version), or at ``version`` for good: a version id from
    :meth:`history`, a tag, or a ``datetime`` (the version that was newest then). :attr:`version`
    names what is read, so an analysis or a trained model can record exactly what it used. A
    format-1 store has no versions: its tables and arrays are read as they are on each call.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, version: Any = None) -> None:
        self.url = normalize(url)
        self.storage_options = dict(storage_options or {})
        self._pinned: str | None = None
        self._tip: tuple[str, Any] | None = None
        self._versioned = versions.current(self.url) is None and (
            version is not None or versions.is_versioned(self.url, self.storage_options))
        if self._versioned and version is not None:
            session = versions.readonly(self.url, self.storage_options, version)
            self._pinned = session.snapshot_id
            self._tip = (self._pinned, layout.open_root(versions.RetryingStore(session.store), mode="r"))
        elif version is not None:
            raise ValueError(f"{self.url} is a format-1 store without versions; `radflow migrate` it first")
        elif not self._versioned:
            self._root = layout.open_root(zarr_store(self.url, self.storage_options, read_only=True), mode="r")
        else:
            self.root  # noqa: B018 - a missing store fails here

    @property
    def root(self):
        """The store's root group (at :attr:`version` for a versioned store)."""
        if not self._versioned:
            return self._root
        if self._pinned is None:
            tip = versions.tip(self.url, self.storage_options)
            if self._tip is None or self._tip[0] != tip:
                session = versions.readonly(self.url, self.storage_options, tip)
                self._tip = (tip, layout.open_root(versions.RetryingStore(session.store), mode="r"))
                self.__dict__.pop("_instances_by_index", None)
        return self._tip[1]

    @property
    def version(self) -> str | None:
        """The version this handle reads (``None`` for a format-1 store): fixed when opened with
        ``version=``, else the newest."""
        if not self._versioned:
            return None
        self.root  # noqa: B018 - the newest, now
        return self._tip[0]

    def history(self) -> pd.DataFrame:
        """The store's versions, newest first (``version, time, message, command, radflow_version,
        checkpoint, summary``); empty for a format-1 store."""
        import pandas as pd

        return pd.DataFrame(versions.history(self.url, self.storage_options),
                            columns=["version", "time", "message", "command", "radflow_version", "checkpoint", "summary"])

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @property
    def meta(self) -> dict[str, Any]:
        """The store's root ``radflow`` attributes (format version, source, creation time ...)."""
        return dict(self.root.attrs["radflow"])

    @property
    def privacy(self) -> dict[str, Any]:
        """How the store treats identifying values: ``mode`` (``deidentify`` or ``keep-identifiers``),
        ``source_paths`` (``kept`` or ``hashed``), and the de-identification evidence."""
        return dict(self.root.attrs.get("privacy") or {})

    # -- tables -------------------------------------------------------------
    def table(self, name: str) -> pd.DataFrame:
        return read_table(self.url, name, self.storage_options, version=self.version)

    def ledger(self, *, history: bool = False) -> pd.DataFrame:
        """One row per discovered input: source, size, sha256, status, reason, frames, batch — its
        terminal outcome over every attempt (see :func:`radflow.store.tables.terminal_ledger`);
        ``history=True`` gives every attempt's row."""
        df = self.table("ledger")
        df = df if history else terminal_ledger(df)
        return df.sort_values("source", kind="stable").reset_index(drop=True)

    def instances(self) -> pd.DataFrame:
        """One row per stored frame, ordered by ``index``."""
        return self.table("instances").sort_values("index", kind="stable").reset_index(drop=True)

    def headers(self, parse: bool = False) -> pd.DataFrame:
        """One row per stored instance: ``sop_uid``, ``patient_key``, ``source`` and its ``header``
        in the DICOM JSON model, de-identified (see :attr:`privacy`). ``parse=True`` adds a
        ``dataset`` column of :class:`pydicom.Dataset` objects."""
        df = self.table("headers")
        if parse and len(df):
            import pydicom

            df["dataset"] = [pydicom.Dataset.from_json(h) for h in df["header"]]
        return df

    def features(self) -> pd.DataFrame:
        df = self.table("features")
        return df.sort_values("index").reset_index(drop=True) if "index" in df else df

    def predictions(self) -> pd.DataFrame:
        df = self.table("predictions")
        return df.sort_values("index").reset_index(drop=True) if "index" in df else df

    def kspace(self) -> pd.DataFrame:
        """One row per ingested k-space slice: ``kspace_index, source, slice, array, position`` ..."""
        return self._acquisitions("kspace")

    def sinograms(self) -> pd.DataFrame:
        """One row per ingested sinogram slice: ``sinogram_index, source, slice, array, position`` ..."""
        return self._acquisitions("sinogram")

    def _acquisitions(self, kind: str) -> pd.DataFrame:
        k = KINDS[kind]
        df = self.table(k.table)
        return df.sort_values(k.index_col).reset_index(drop=True) if k.index_col in df else df

    def kspace_slice(self, kspace_index: int, *, recon: bool = False, reference: bool = False) -> np.ndarray:
        """Stored k-space ``(coils, ky, kx)`` complex64 of one slice; with ``recon=True`` its
        reconstruction ``(h, w)`` float32 from ``recon/``; with ``reference=True`` the file's own
        reference image (fastMRI's ``reconstruction_rss``)."""
        return self._slice("kspace", kspace_index, recon, reference)

    def sinogram_slice(self, sinogram_index: int, *, recon: bool = False, reference: bool = False) -> np.ndarray:
        """Stored sinogram ``(n_det, n_angles)`` float32 of one slice; with ``recon=True`` its FBP
        image; with ``reference=True`` the file's reference image."""
        return self._slice("sinogram", sinogram_index, recon, reference)

    def _slice(self, kind: str, index: int, recon: bool, reference: bool = False) -> np.ndarray:
        k = KINDS[kind]
        table = self._acquisitions(kind).set_index(k.index_col)
        try:
            row = table.loc[int(index)]
        except KeyError:
            raise IndexError(f"no {kind} slice {index} in {self.url}") from None
        path = (reference_path(row["array"]) if reference else
                "recon/" + row["array"].split("/", 1)[1] if recon else row["array"])
        arr = self.root[path]
        layout.require_chunk(arr, int(row["position"]))
        return np.asarray(arr[int(row["position"])])

    def volumes(self) -> pd.DataFrame:
        """One row per assembled volume: ``key``, series, shape, spacing, uneven spacing, tilt, affine."""
        df = self.table("volumes")
        return df.sort_values("key").reset_index(drop=True) if "key" in df else df

    def volume(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Volume ``key`` as ``(array (z, y, x), affine (4, 4))``; the affine maps ``(z, y, x, 1)`` to mm (LPS)."""
        try:
            arr = self.root[f"volumes/{key}"]
        except KeyError:
            raise KeyError(f"no volume {key!r} in {self.url}; see open_store(...).volumes()") from None
        return np.asarray(arr[:]), np.asarray(arr.attrs["affine"], dtype=np.float64)

    def errors(self) -> pd.DataFrame:
        return self.table("errors")

    def parts(self, name: str) -> list[str]:
        return list_parts(self.url, name, self.storage_options, version=self.version)

    # -- arrays -------------------------------------------------------------
    def raw_arrays(self) -> dict[str, zarr.Array]:
        try:
            raw = self.root["raw"]
        except KeyError:
            return {}
        return {name: raw[name] for name in sorted(raw.array_keys())}

    @functools.cached_property
    def _instances_by_index(self) -> pd.DataFrame:
        return self.instances().set_index("index")

    def raw_frame(self, index: int, *, check: bool = True) -> np.ndarray:
        """Frame ``index`` at its native size, bit-exact as decoded at ingest.

        Returns ``(rows, cols)`` or ``(rows, cols, samples)`` in the stored dtype.
        Raises :class:`~radflow.errors.MissingChunkError` if its chunk is absent.
        """
        root = self.root  # first: a newer version drops the cached index
        try:
            row = self._instances_by_index.loc[int(index)]
        except KeyError:
            raise IndexError(f"no frame with index {index} in {self.url}") from None
        arr = root[f"raw/{row['raw_array']}"]
        pos = int(row["raw_position"])
        if check:
            layout.require_chunk(arr, pos)
        return np.asarray(arr[pos, : int(row["rows"]), : int(row["cols"])])

    @property
    def images(self) -> zarr.Array:
        try:
            return self.root["images"]
        except KeyError:
            raise KeyError(f"{self.url} has no 'images' array yet; run `radflow process {self.url} --steps preprocess`") from None

    def dataset(self):
        """An ``xarray.Dataset`` over ``images`` (Dask-backed) with coordinates from ``instances``.

        Only frames present in ``instances`` are included; the ``frame`` dimension is
        labelled by the global ``index``.
        """
        import dask.array as da
        import xarray as xr

        inst = self.instances()
        imgs = self.images
        idx = inst["index"].to_numpy()
        idx = idx[idx < imgs.shape[0]]
        inst = inst[inst["index"].isin(idx)]
        arr = da.from_zarr(imgs)[idx]
        coords = {"index": ("frame", idx)}
        for col in ("source", "frame", "patient_key", "study_key", "sop_uid", "modality", "view", "rows", "cols", "photometric"):
            coords[col if col != "frame" else "source_frame"] = ("frame", inst[col].to_numpy())
        ds = xr.Dataset({"images": (("frame", "y", "x"), arr)}, coords=coords)
        ds.attrs.update({"store": self.url, "canvas": int(imgs.shape[1])})
        return ds

    def object_count(self) -> int:
        """Number of objects (files) the store consists of."""
        from radflow.store.urls import filesystem

        fs, path = filesystem(self.url, self.storage_options)
        return len(fs.find(path))


def open_store(url: str, storage_options: dict[str, Any] | None = None, version: Any = None) -> Store:
    """Open an existing radflow store (local path or ``s3://…``) for reading: its newest version, or
    ``version`` (see :class:`Store`)."""
    return Store(url, storage_options, version)
