"""The verify flow: re-read every stored frame and slice (CRC32, chunk presence, readability) and check
the store's objects against each other; every problem is a row, nothing raises."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote  # large inputs: Prefect would visit every element

from radflow.cluster import connect
from radflow.cluster.sealed import submit
from radflow.cluster.waiting import result
from radflow.flows._common import build_settings, markdown_table, publish_artifact, run_logger
from radflow.flows._flow import flow
from radflow.flows._progress import report
from radflow.ingest.acquisitions import KINDS
from radflow.store.handle import open_store
from radflow.store.urls import normalize
from radflow.store.tables import read_table
from radflow.store.verify import check_structure, verify_frames

__all__ = ["verify_flow", "frames_to_verify"]


def frames_to_verify(st) -> dict[str, pd.DataFrame]:
    """Array path → rows with ``position, crc32`` (``rows, cols`` for raw frames) and an id column.
    Table parts that do not parse are skipped here (the structure check lists them)."""
    out: dict[str, pd.DataFrame] = {}
    inst = read_table(st.url, "instances", st.storage_options, unreadable=[])
    if not inst.empty:
        df = inst.rename(columns={"raw_position": "position"})[["index", "raw_array", "position", "rows", "cols", "crc32"]]
        for name, g in df.groupby("raw_array"):
            out[f"raw/{name}"] = g.drop(columns="raw_array")
    for kind in KINDS.values():
        table = read_table(st.url, kind.table, st.storage_options, unreadable=[])
        if table.empty or "crc32" not in table:
            continue
        for name, g in table.groupby("array"):
            out[name] = g[[kind.index_col, "position", "crc32"]]
    return out


@task(name="verify-array", cache_policy=NO_CACHE)
def verify_array_task(store: str, array: str, rows: pd.DataFrame, per_task: int,
                      storage_options: dict[str, Any] | None) -> tuple[int, list[dict[str, Any]]]:
    from distributed import get_client

    records = rows.sort_values("position").to_dict(orient="records")
    chunks = [records[i : i + per_task] for i in range(0, len(records), per_task)]
    client = get_client()
    futures = [submit(client, verify_frames, store, array, c, storage_options=storage_options) for c in chunks]
    problems = [p for f in futures for p in result(f)]
    return len(records), problems


@flow(name="radflow-verify", task_runner=ThreadPoolTaskRunner(max_workers=4), validate_parameters=False)
def verify_flow(store: str, cluster: str | None = None, storage_options: dict[str, Any] | None = None,
                settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check every stored frame and acquisition slice; returns ``checked``, ``problems`` and counts."""
    cfg = build_settings(settings, cluster)
    url = normalize(store)
    st = open_store(url, storage_options)
    groups = frames_to_verify(st)
    total = sum(len(g) for g in groups.values())
    checked = 0
    problems: list[dict[str, Any]] = check_structure(url, storage_options)
    with connect(cfg.cluster):
        report("stage-start", stage="verify", total=total)
        futures = [verify_array_task.submit(url, a, quote(g), 512, storage_options) for a, g in sorted(groups.items())]
        for fut in as_completed(futures):
            n, found = fut.result()
            checked += n
            problems += found
            report("stage-advance", stage="verify", advance=n)
        report("stage-end", stage="verify")
    counts = dict(Counter(p["problem"] for p in problems))
    run_logger().info("verified %d frames and slices: %s", checked, counts or "no problems")
    publish_artifact(
        f"# radflow verify\n\nStore: `{url}`\n\n{markdown_table([{'checked': checked, **counts}])}\n"
        + markdown_table(problems[:100]),
        key="radflow-verify", description="radflow verify: CRC32 and chunk presence of every stored frame",
    )
    return {"store": url, "checked": checked, "problems": problems, "counts": counts}
