"""Parquet tables beside the arrays: ``<store>/tables/<name>/part-<id>.parquet``.

Each writer (an ingest batch, a processing range) owns its part names, which are pure
functions of its inputs, so a retried writer overwrites its own parts and never
another's. Readers concatenate the parts. pandas, polars, DuckDB and Spark read the
folders directly.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import uuid
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from radflow.store.urls import filesystem, is_remote, join

if TYPE_CHECKING:  # pandas is imported where a table is read as a DataFrame, not by every writer
    import pandas as pd

__all__ = ["anomaly_counts", "terminal_ledger", "TRANSIENT_REASONS", "LEDGER_SCHEMA", "INSTANCES_SCHEMA", "HEADERS_SCHEMA", "TABLES", "table_url", "write_part", "read_table",
           "read_arrow", "list_parts", "part_names", "compact_table", "compact_store", "table_names", "PART_COLUMN"]

log = logging.getLogger(__name__)

LEDGER_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("size", pa.int64()),
        ("version", pa.string()),
        ("sha256", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("frames", pa.int32()),
        ("batch", pa.string()),
        ("seconds", pa.float64()),
        ("anomalies", pa.list_(pa.string())),  # what was read leniently (radflow.errors.Anomaly codes; no values)
    ]
)

INSTANCES_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("source", pa.string()),
        ("frame", pa.int32()),
        ("raw_array", pa.string()),
        ("raw_position", pa.int64()),
        ("rows", pa.int32()),
        ("cols", pa.int32()),
        ("samples", pa.int32()),
        ("dtype", pa.string()),
        ("patient_key", pa.string()),
        ("study_key", pa.string()),
        ("series_uid", pa.string()),
        ("sop_uid", pa.string()),
        ("modality", pa.string()),
        ("view", pa.string()),
        ("body_part", pa.string()),
        ("photometric", pa.string()),
        ("color_space", pa.string()),
        ("modality_lut", pa.bool_()),
        ("voi_lut", pa.bool_()),
        ("bits_allocated", pa.int32()),
        ("bits_stored", pa.int32()),
        ("pixel_representation", pa.int32()),
        ("rescale_slope", pa.float64()),
        ("rescale_intercept", pa.float64()),
        ("window_center", pa.float64()),
        ("window_width", pa.float64()),
        ("spacing_row", pa.float64()),
        ("spacing_col", pa.float64()),
        ("ipp_x", pa.float64()),
        ("ipp_y", pa.float64()),
        ("ipp_z", pa.float64()),
        *[(f"iop_{i}", pa.float64()) for i in range(6)],
        ("acquisition_number", pa.int32()),
        ("burned_in_risk", pa.bool_()),
        ("burned_in_rule", pa.string()),
        ("masked", pa.bool_()),
        ("frame_of_reference", pa.string()),
        ("transfer_syntax", pa.string()),
        ("decoder", pa.string()),
        ("anomalies", pa.list_(pa.string())),
        ("crc32", pa.int64()),
        ("batch", pa.string()),
    ]
)

HEADERS_SCHEMA = pa.schema(
    [
        ("sop_uid", pa.string()),
        ("patient_key", pa.string()),
        ("source", pa.string()),
        ("header", pa.string()),  # DICOM JSON model (PS3.18 F), de-identified unless the store says otherwise
    ]
)

TABLES = {"ledger": LEDGER_SCHEMA, "instances": INSTANCES_SCHEMA, "headers": HEADERS_SCHEMA, "features": None, "predictions": None, "errors": None,
          "kspace": None, "sinograms": None, "volumes": None,
          "luts": None, "stages": None}
#: bookkeeping tables: how a store was made, not what it holds (left out of the content digest)
BOOKKEEPING = ("stages",)


def _is_frame(obj: Any) -> bool:
    """Whether ``obj`` is a pandas DataFrame (which it cannot be while pandas is not imported)."""
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(obj, pd.DataFrame)


def anomaly_counts(rows: pd.DataFrame | list[dict[str, Any]]) -> dict[str, int]:
    """Inputs (or frames) per anomaly code, from ledger or instance rows with an ``anomalies`` list
    (``"CODE element VR"`` strings); rows without the column (older stores) count as none."""
    lists = rows.get("anomalies") if _is_frame(rows) else [r.get("anomalies") for r in rows]
    counts: dict[str, int] = {}
    for found in ([] if lists is None else lists):
        if found is None or len(found) == 0:
            continue
        for code in sorted({str(a).split(" ", 1)[0] for a in found}):
            counts[code] = counts.get(code, 0) + 1
    return dict(sorted(counts.items()))


#: reasons a later run retries (the cause may pass: permissions fixed, a worker's bad moment)
TRANSIENT_REASONS = ("IO_ERROR", "WORKER_LOST", "TIMEOUT")
_RANK = {"ok": 0, "duplicate": 1, "rejected": 2}


def terminal_ledger(ledger: pd.DataFrame) -> pd.DataFrame:
    """One row per input (``source, size, version``): its best outcome over every attempt — ``ok``, then
    ``duplicate``, then a permanent rejection, then a transient one (retries add rows; the ledger
    keeps them all). A folder that could not be listed drops out once a later run lists paths
    under it."""
    if ledger.empty or "status" not in ledger:
        return ledger
    rank = ledger["status"].map(_RANK).fillna(3) * 2 + ledger["reason"].isin(TRANSIENT_REASONS)
    best = ledger.assign(_rank=rank).sort_values(["_rank", "batch"], kind="stable")
    best = best.drop_duplicates(["source", "size", "version"], keep="first").drop(columns="_rank")
    folders = best[(best["reason"] == "IO_ERROR") & best["detail"].fillna("").str.startswith("folder cannot be listed")]
    if len(folders):
        sources = best["source"].astype(str)
        listed = [f for f in folders["source"] if sources.str.startswith(str(f) + "/").any()]
        best = best[~best["source"].isin(listed) | ~best.index.isin(folders.index)]
    return best


def table_url(store_url: str, name: str) -> str:
    return join(store_url, "tables", name)


def write_part(
    store_url: str,
    name: str,
    part: str,
    rows: list[dict[str, Any]] | pd.DataFrame | pa.Table,
    *,
    schema: pa.Schema | None = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write one part of table ``name`` atomically; return its URL.

    Local parts are written to a temporary name and renamed; an S3 PUT is atomic. In a versioned store
    the file's name is unique (``part-<part>.v<hex>.parquet``, so a version's files never change) and
    the part is listed in the session this write belongs to (see :mod:`radflow.store.versions`): it is
    part of the store from that session's commit on.
    """
    from radflow.store import versions

    session = versions.session_for(store_url, write=True)
    if session is None and versions.is_versioned(store_url, storage_options):
        raise RuntimeError(f"{store_url} is versioned: write its tables inside a transaction")
    schema = schema if schema is not None else TABLES.get(name)
    if isinstance(rows, pa.Table):
        table = rows
    elif _is_frame(rows):
        table = pa.Table.from_pandas(rows, schema=schema, preserve_index=False)
    elif schema is not None:
        table = pa.Table.from_pylist(rows, schema=schema)
    else:
        table = pa.Table.from_pylist(rows)
    file = f"part-{part}.parquet" if session is None else f"part-{part}.v{uuid.uuid4().hex[:8]}.parquet"
    url = join(table_url(store_url, name), file)
    _write(url, table, storage_options)
    if session is not None:
        _register(versions.RetryingStore(session.store), name, part, file, table.num_rows)
    return url


def _node(part: str) -> str:
    return part.replace("/", "%2F")


def _register(zstore, name: str, part: str, file: str, rows: int) -> None:
    """List ``file`` as part ``part`` of table ``name`` in a versioned store's session."""
    import zarr

    root = zarr.open_group(zstore, mode="r+")
    group = root.require_group(f"tables/{name}/{_node(part)}")
    group.attrs.put({"file": file, "rows": int(rows)})


def _unregister(zstore, name: str, nodes: list[str]) -> None:
    import zarr

    root = zarr.open_group(zstore, mode="r+")
    for node in nodes:
        try:
            del root[f"tables/{name}/{node}"]
        except KeyError:
            pass


def _manifest(store_url: str, name: str, storage_options: dict[str, Any] | None,
              version: Any = None) -> dict[str, tuple[Any, ...]] | None:
    """A versioned store's files of table ``name`` as ``{url: (rows, node)}`` at this thread's session,
    the newest version or ``version``; ``None`` for a format-1 store (its parts are what is listed)."""
    import zarr

    from radflow.store import versions

    session = versions.session_for(store_url) if version is None else None
    if session is None:
        if version is None and not versions.is_versioned(store_url, storage_options):
            return None
        session = versions.readonly(store_url, storage_options, version)
    root = zarr.open_group(versions.RetryingStore(session.store), mode="r")
    try:
        group = root[f"tables/{name}"]
    except KeyError:
        return {}
    fs, base = filesystem(table_url(store_url, name), storage_options)  # paths as a listing gives them
    fs.invalidate_cache(base)  # a listing cached before these parts were written must not hide them
    out = {}
    for node, child in group.groups():
        file = child.attrs.get("file")
        if file:
            out[f"{base.rstrip('/')}/{file}"] = (child.attrs.get("rows"), node)
    return out


def _write(url: str, table: pa.Table, storage_options: dict[str, Any] | None, *,
           row_group_size: int | None = None) -> None:
    """One Parquet object, whole or not at all: a local temporary name renamed, or one PUT."""
    fs, path = filesystem(url, storage_options)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=row_group_size)
    data = buf.getvalue()
    if is_remote(url):
        fs.pipe_file(path, data)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)


#: a compacted file: ``part-~<generation>-<hex>.parquet`` (``~`` never occurs in a writer's part name)
_COMPACTED = re.compile(r"^part-~(\d{8})-[0-9a-f]{8}\.parquet$")
#: the column of a compacted file naming the part each row came from
PART_COLUMN = "_part"
#: a compacted file's rows are sorted by the first of these it has, in row groups of this many rows
_SORT_KEYS = ("index", "kspace_index", "sinogram_index", "source", "sop_uid", "key", "part")
COMPACT_ROW_GROUP = 4096


_UNIQUE = re.compile(r"\.v[0-9a-f]{8}$")


def _part_name(path: str) -> str:
    return _UNIQUE.sub("", os.path.basename(path)[len("part-"):-len(".parquet")])


def list_parts(store_url: str, name: str, storage_options: dict[str, Any] | None = None, *,
               version: Any = None) -> list[str]:
    """Every Parquet file of table ``name``: the parts writers wrote and the files compaction made of them."""
    return sorted(_listing(store_url, name, storage_options, version))


def _listing(store_url: str, name: str, storage_options: dict[str, Any] | None,
             version: Any = None) -> dict[str, tuple[Any, ...]]:
    """``{file: stamp}`` of table ``name``'s Parquet files: a versioned store's manifest, else one listing
    (stamp: size and modification time)."""
    listed = _manifest(store_url, name, storage_options, version)
    return listed if listed is not None else _folder(store_url, name, storage_options)


def _folder(store_url: str, name: str, storage_options: dict[str, Any] | None) -> dict[str, tuple[Any, ...]]:
    """``{file: (size, modified)}`` of the Parquet files in table ``name``'s folder, from one listing."""
    fs, path = filesystem(table_url(store_url, name), storage_options)
    fs.invalidate_cache(path)  # parts are written by other processes while a run goes on
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        return {}
    return {p: (info.get("size"), info.get("mtime") or info.get("LastModified") or info.get("ETag"))
            for p, info in found.items() if p.endswith(".parquet") and os.path.basename(p).startswith("part-")}


#: per process: (file, size, modified) → {column: (min, max)} from its footer; parts never change in place
_FOOTER_STATS: dict[tuple[Any, ...], dict[str, tuple[Any, Any] | None]] = {}


def _may_match(fs, path: str, stamp: tuple[Any, ...], filters: Any) -> bool:
    """Whether a part can hold rows that pass ``filters`` (a list of ``(column, op, value)``), judged by
    the min/max statistics of its footer, read once per process. ``True`` when in doubt."""
    if not isinstance(filters, list) or not all(isinstance(f, tuple) and len(f) == 3 for f in filters):
        return True
    key = (path, *stamp)
    stats = _FOOTER_STATS.get(key)
    if stats is None:
        if len(_FOOTER_STATS) > 200_000:
            _FOOTER_STATS.clear()
        stats = {}
        meta = pq.read_metadata(path, filesystem=fs)
        names = meta.schema.names
        for col in {f[0] for f in filters}:
            if col not in names:
                stats[col] = None
                continue
            j = names.index(col)
            lo = hi = None
            for g in range(meta.num_row_groups):
                st = meta.row_group(g).column(j).statistics
                if st is None or not st.has_min_max:
                    lo = hi = None
                    break
                lo = st.min if lo is None else min(lo, st.min)
                hi = st.max if hi is None else max(hi, st.max)
            stats[col] = None if lo is None else (lo, hi)
        _FOOTER_STATS[key] = stats
    try:
        for col, op, value in filters:
            bounds = stats.get(col)
            if bounds is None:
                continue
            lo, hi = bounds
            if (op in ("==", "=") and not lo <= value <= hi) or (op == ">=" and hi < value) or \
                    (op == ">" and hi <= value) or (op == "<" and lo >= value) or (op == "<=" and lo > value) or \
                    (op == "in" and not any(lo <= v <= hi for v in value)):
                return False
    except TypeError:  # a value of another type than the column's: let pyarrow decide
        return True
    return True


def _compacted_names(fs, path: str) -> list[str]:
    """The part names a compacted file holds (from its footer; no rows read)."""
    import json

    meta = pq.read_schema(path, filesystem=fs).metadata or {}
    return list(json.loads(meta.get(b"radflow.parts", b"[]")))


Source = tuple[str, "str | None", frozenset]  # (file, its part name or None when compacted, names it no longer supplies)


def _sources(fs, files: list[str], unreadable: list[str] | None = None) -> tuple[list[Source], set[str]]:
    """Which file supplies each part, and every part name. A writer's own part supersedes its rows in a
    compacted file; a newer compacted file an older one (both exist only between compaction's write and
    its deletes)."""
    loose = {_part_name(f): f for f in files if not _COMPACTED.match(os.path.basename(f))}
    compacted = sorted((f for f in files if _COMPACTED.match(os.path.basename(f))),
                       key=lambda f: os.path.basename(f), reverse=True)
    taken = set(loose)
    out: list[Source] = [(f, n, frozenset()) for n, f in loose.items()]
    for f in compacted:  # newest first
        try:
            names = _compacted_names(fs, f)
        except FileNotFoundError:
            raise
        except Exception:  # a damaged footer
            if unreadable is None:
                raise
            unreadable.append(f)
            continue
        out.append((f, None, frozenset(taken.intersection(names))))
        taken.update(names)
    return out, taken


def _retrying(fn):
    """Run ``fn()`` again, on a fresh listing, when compaction removed a listed file before it was read
    (the compacted file that holds its rows exists before any old file is removed)."""
    import time

    deadline = time.monotonic() + 120
    attempt = 0
    while True:
        try:
            return fn()
        except FileNotFoundError:
            attempt += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(min(0.5, 0.01 * attempt))


def part_names(store_url: str, name: str, storage_options: dict[str, Any] | None = None, *,
               version: Any = None) -> set[str]:
    """The names of every part of table ``name`` that writers wrote, whether or not it was compacted since."""
    fs, _ = filesystem(table_url(store_url, name), storage_options)
    return _retrying(lambda: _sources(fs, list_parts(store_url, name, storage_options, version=version))[1])


def _read_file(fs, src: Source, columns: list[str] | None, filters: Any, with_part: bool) -> pa.Table:
    path, part, superseded = src
    cols = columns
    if cols is not None:  # a part without a requested column (an older writer) reads without it
        present = set(pq.read_schema(path, filesystem=fs).names)
        cols = [c for c in dict.fromkeys([*cols, *([PART_COLUMN] if part is None else [])]) if c in present]
    table = pq.read_table(path, filesystem=fs, columns=cols, filters=filters)
    if part is not None:
        if with_part:
            table = table.append_column(PART_COLUMN, pa.array([part] * table.num_rows, pa.string()))
        return table
    if superseded:
        import pyarrow.compute as pc

        table = table.filter(pc.invert(pc.is_in(table[PART_COLUMN], pa.array(sorted(superseded), pa.string()))))
    if not with_part:
        table = table.drop_columns([PART_COLUMN])
    return table


def read_arrow(store_url: str, name: str, storage_options: dict[str, Any] | None = None, *,
               columns: list[str] | None = None, filters: Any = None, unreadable: list[str] | None = None,
               with_part: bool = False, version: Any = None) -> pa.Table | None:
    """Table ``name`` as one Arrow table (``None`` when it has no parts), files read in parallel threads
    with ``columns`` and ``filters`` (pyarrow's DNF list or an expression) pushed down to each file.

    Reads see each part exactly once while compaction runs beside them (see :func:`compact_table`).
    ``with_part=True`` adds a ``_part`` column naming each row's part; ``version`` reads a versioned
    store's table as it was at that version."""
    from concurrent.futures import ThreadPoolExecutor

    fs, _ = filesystem(table_url(store_url, name), storage_options)
    manifest = _manifest(store_url, name, storage_options, version)  # a versioned store: its parts never move

    def one(src: Source) -> pa.Table | None:
        try:
            return _read_file(fs, src, columns, filters, with_part)
        except FileNotFoundError:
            if manifest is None:
                raise  # compaction removed it meanwhile: read a fresh listing
            if unreadable is None:
                raise FileNotFoundError(f"{src[0]}: a part the store's version lists is missing; run `radflow verify`") from None
            unreadable.append(src[0])
            return None
        except Exception:  # pyarrow raises assorted types for a damaged part
            if unreadable is None:
                raise
            unreadable.append(src[0])
            return None

    def attempt() -> list[pa.Table]:
        files = manifest if manifest is not None else _folder(store_url, name, storage_options)
        sources, _ = _sources(fs, sorted(files), unreadable)
        if filters is not None:  # a writer's part whose footer rules the filter out is not opened again
            sources = [src for src in sources if src[1] is None or _may_match(fs, src[0], files[src[0]], filters)]
        if not sources:
            return []
        with ThreadPoolExecutor(max_workers=min(16, len(sources))) as pool:
            return [t for t in pool.map(one, sources) if t is not None]

    tables = attempt() if manifest is not None else _retrying(attempt)
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def count_rows(store_url: str, name: str, storage_options: dict[str, Any] | None = None, *,
               version: Any = None) -> int:
    """Rows of table ``name`` from the Parquet footers (no column is read)."""
    # with the part-name column: Arrow concatenates zero-column tables into zero rows
    table = read_arrow(store_url, name, storage_options, columns=[], with_part=True, version=version)
    return 0 if table is None else table.num_rows


def read_table(store_url: str, name: str, storage_options: dict[str, Any] | None = None, *,
               columns: list[str] | None = None, filters: Any = None,
               unreadable: list[str] | None = None, version: Any = None) -> pd.DataFrame:
    """All parts of table ``name`` as one DataFrame (empty, with the schema's columns, if none); see
    :func:`read_arrow` for ``columns`` and ``filters``.

    With ``unreadable`` (a list), a part that does not parse is appended to it and skipped
    instead of raising (``radflow verify`` reads damaged stores this way)."""
    table = read_arrow(store_url, name, storage_options, columns=columns, filters=filters, unreadable=unreadable,
                       version=version)
    if table is None:
        schema = TABLES.get(name)
        if schema is None:
            import pandas as pd

            return pd.DataFrame(columns=columns or [])
        empty = schema.empty_table()
        return (empty.select([c for c in columns if c in schema.names]) if columns else empty).to_pandas()
    return table.to_pandas()


def compact_table(store_url: str, name: str, storage_options: dict[str, Any] | None = None, *,
                  min_parts: int = 2) -> dict[str, int]:
    """Rewrite table ``name``'s parts as one file, atomically for readers.

    The new file ``part-~<generation>-<hex>.parquet`` carries each row's part name (column ``_part``,
    and the list of names in its footer); it is written whole (temporary name and rename, or one PUT)
    before any old file is removed. A reader that lists both the new file and old ones reads each
    part once: a writer's own part supersedes its rows in a compacted file, a newer compacted file an
    older one. An old part rewritten since compaction listed it is left in place (it supersedes).
    Returns ``{"files_before": n, "files_after": m, "rows": r}``.
    """
    import json

    from radflow.store import versions

    fs, _ = filesystem(table_url(store_url, name), storage_options)
    listed = _listing(store_url, name, storage_options)
    files = sorted(listed)
    if len(files) < max(2, min_parts):
        return {"files_before": len(files), "files_after": len(files), "rows": -1}
    stamps = {f: _stamp(fs, f) for f in files}
    table = read_arrow(store_url, name, storage_options, with_part=True)
    assert table is not None
    keys = [k for k in _SORT_KEYS if k in table.column_names][:1]
    if keys:  # rows in key order, small row groups: a reader's range filter skips all but its own groups
        table = table.sort_by([(keys[0], "ascending")])
    names = sorted(set(table[PART_COLUMN].to_pylist()) | _sources(fs, files)[1])
    gens = [int(m.group(1)) for f in files if (m := _COMPACTED.match(os.path.basename(f)))]
    meta = dict(table.schema.metadata or {})
    meta[b"radflow.parts"] = json.dumps(names).encode()
    table = table.replace_schema_metadata(meta)
    part = f"~{max(gens, default=0) + 1:08d}-{uuid.uuid4().hex[:8]}"
    _write(join(table_url(store_url, name), f"part-{part}.parquet"), table, storage_options,
           row_group_size=COMPACT_ROW_GROUP)
    session = versions.session_for(store_url, write=True)
    if session is None and versions.is_versioned(store_url, storage_options):
        raise RuntimeError(f"{store_url} is versioned: compact its tables inside a transaction")
    if session is not None:  # versioned: the new file replaces the old ones in the manifest; older versions keep them
        _unregister(versions.RetryingStore(session.store), name, [listed[f][1] for f in files])
        _register(versions.RetryingStore(session.store), name, part, f"part-{part}.parquet", table.num_rows)
        return {"files_before": len(files), "files_after": 1, "rows": table.num_rows}
    removed = 0
    for f in files:
        if _stamp(fs, f) != stamps[f]:
            continue  # rewritten by a writer meanwhile: it supersedes its compacted copy
        try:
            fs.rm_file(f)
            removed += 1
        except FileNotFoundError:
            pass
    return {"files_before": len(files), "files_after": len(files) - removed + 1, "rows": table.num_rows}


def _stamp(fs, path: str) -> tuple[Any, ...]:
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return (None,)
    return (info.get("size"), info.get("mtime") or info.get("LastModified") or info.get("ETag"), info.get("ETag"))


def table_names(store_url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The tables a store holds (folders under ``tables/``, or a versioned store's listed tables)."""
    import zarr

    from radflow.store import versions

    session = versions.session_for(store_url)
    if session is None and versions.is_versioned(store_url, storage_options):
        session = versions.readonly(store_url, storage_options)
    if session is not None:
        try:
            return sorted(n for n, _ in zarr.open_group(versions.RetryingStore(session.store), mode="r")["tables"].groups())
        except KeyError:
            return []
    fs, path = filesystem(join(store_url, "tables"), storage_options)
    fs.invalidate_cache(path)
    try:
        return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def compact_store(store_url: str, storage_options: dict[str, Any] | None = None, *, min_parts: int = 2,
                  tables: list[str] | None = None) -> dict[str, dict[str, int]]:
    """:func:`compact_table` over every table (or ``tables``) with at least ``min_parts`` files."""
    out = {}
    for name in tables or table_names(store_url, storage_options):
        if len(list_parts(store_url, name, storage_options)) >= max(2, min_parts):
            out[name] = compact_table(store_url, name, storage_options, min_parts=min_parts)
    return out
