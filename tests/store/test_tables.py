"""Parquet tables: column and filter push-down, and compaction that readers never see half done."""

from __future__ import annotations

import os
import threading

import pandas as pd
import pytest

from radflow.store.tables import compact_table, list_parts, part_names, read_table, write_part


def _write(store: str, parts: int, rows: int = 10, offset: int = 0) -> None:
    for p in range(parts):
        lo = (p + offset) * rows
        df = pd.DataFrame({"index": range(lo, lo + rows), "value": [float(p + offset)] * rows, "name": ["x"] * rows})
        write_part(store, "features", f"{lo:012d}", df)


def test_columns_and_filters_are_pushed_to_every_part(tmp_path):
    store = str(tmp_path / "s.zarr")
    _write(store, 5)
    df = read_table(store, "features", columns=["index"], filters=[("index", ">=", 12), ("index", "<", 31)])
    assert list(df.columns) == ["index"] and sorted(df["index"]) == list(range(12, 31))
    assert read_table(store, "missing").empty


def test_compaction_keeps_every_row_once_and_a_later_part_supersedes_its_compacted_copy(tmp_path):
    store = str(tmp_path / "s.zarr")
    _write(store, 30)
    before = read_table(store, "features").sort_values("index").reset_index(drop=True)
    names = part_names(store, "features")
    out = compact_table(store, "features")
    assert out == {"files_before": 30, "files_after": 1, "rows": 300}
    assert len(list_parts(store, "features")) == 1
    pd.testing.assert_frame_equal(read_table(store, "features").sort_values("index").reset_index(drop=True), before)
    assert part_names(store, "features") == names  # a resumed writer still finds its part
    # a range re-run after compaction rewrites its part: its new rows replace the compacted ones
    write_part(store, "features", f"{20:012d}", pd.DataFrame({"index": range(20, 30), "value": [-1.0] * 10, "name": ["y"] * 10}))
    _write(store, 2, offset=30)
    df = read_table(store, "features").sort_values("index").reset_index(drop=True)
    assert len(df) == 320 and (df.loc[df["index"].between(20, 29), "value"] == -1.0).all()
    compact_table(store, "features")  # a second generation merges the first
    assert len(list_parts(store, "features")) == 1
    pd.testing.assert_frame_equal(read_table(store, "features").sort_values("index").reset_index(drop=True), df)


def test_a_reader_during_compaction_sees_old_parts_or_new_never_both_never_neither(tmp_path, monkeypatch):
    import time

    from fsspec.implementations.local import LocalFileSystem

    rm_file = LocalFileSystem.rm_file

    def slow_rm_file(self, path):  # deletes as slow as an object store's, so readers land between them
        time.sleep(0.004)
        return rm_file(self, path)

    monkeypatch.setattr(LocalFileSystem, "rm_file", slow_rm_file)
    store = str(tmp_path / "s.zarr")
    expected = set(range(0, 400 * 5))
    reads: list[int] = []
    wrong: list[str] = []
    for rounds in range(4):
        _write(store, 100, rows=5, offset=rounds * 100)
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                try:
                    idx = read_table(store, "features", columns=["index"])["index"]
                except Exception as exc:  # noqa: BLE001 - reported below
                    wrong.append(repr(exc))
                    return
                have = set(idx)
                if len(idx) != len(have) or not have <= expected or len(have) != (rounds + 1) * 500:
                    wrong.append(f"round {rounds}: {len(idx)} rows, {len(have)} distinct")
                reads.append(len(idx))

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        compact_table(store, "features")
        stop.set()
        for t in threads:
            t.join()
    assert not wrong, wrong[:5]
    assert len(reads) >= 8 and len(list_parts(store, "features")) == 1


def test_a_damaged_part_is_reported_not_fatal_when_asked(tmp_path):
    store = str(tmp_path / "s.zarr")
    _write(store, 3)
    bad = list_parts(store, "features")[1]
    with open(bad, "wb") as fh:
        fh.write(b"not parquet")
    with pytest.raises(Exception):
        read_table(store, "features")
    unreadable: list[str] = []
    assert len(read_table(store, "features", unreadable=unreadable)) == 20 and unreadable == [bad]
    assert os.path.exists(bad)


def test_radflow_compact_command(tmp_path, capsys):
    from radflow.cli import main

    store = str(tmp_path / "s.zarr")
    _write(store, 12)
    write_part(store, "ledger", "b1", [])
    open(os.path.join(store, "zarr.json"), "w").write('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    assert main(["compact", store]) == 0
    out = capsys.readouterr().out
    assert "features" in out and "12 → 1 files, 120 rows" in out and "ledger" not in out
    assert len(list_parts(store, "features")) == 1 and len(read_table(store, "features")) == 120
    assert main(["compact", store]) == 0 and "nothing to compact" in capsys.readouterr().out


def test_a_compacted_table_is_sorted_in_small_row_groups_so_range_reads_skip_the_rest(tmp_path):
    import pyarrow.parquet as pq

    store = str(tmp_path / "s.zarr")
    for p in reversed(range(40)):  # parts written out of order
        write_part(store, "features", f"{p:04d}", pd.DataFrame({"index": range(p * 500, p * 500 + 500), "v": 1.0}))
    compact_table(store, "features")
    (path,) = list_parts(store, "features")
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 5 and meta.num_rows == 20_000
    stats = [meta.row_group(i).column(0).statistics for i in range(meta.num_row_groups)]
    assert [(s.min, s.max) for s in stats] == [(i * 4096, min(20_000, (i + 1) * 4096) - 1) for i in range(5)]
    df = read_table(store, "features", filters=[("index", ">=", 9000), ("index", "<", 9100)])
    assert sorted(df["index"]) == list(range(9000, 9100))


def test_a_filtered_read_opens_only_the_parts_whose_footers_can_match(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    import radflow.store.tables as tables

    store = str(tmp_path / "s.zarr")
    _write(store, 50)
    read_table(store, "features", filters=[("index", ">=", 0)])  # footers read once per process
    opened: list[str] = []
    real = pq.read_table

    def counting(path, *args, **kwargs):
        opened.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tables.pq, "read_table", counting)
    df = read_table(store, "features", filters=[("index", ">=", 120), ("index", "<", 140)])
    assert sorted(df["index"]) == list(range(120, 140)) and len(opened) == 2
    opened.clear()
    df = read_table(store, "features", filters=[("index", "in", [5, 495])])
    assert sorted(df["index"]) == [5, 495] and len(opened) == 2
    opened.clear()
    write_part(store, "features", f"{120:012d}", pd.DataFrame({"index": [999_999], "value": [0.0], "name": ["z"]}))
    df = read_table(store, "features", filters=[("index", ">=", 120), ("index", "<", 140)])  # a rewritten part: read anew
    assert sorted(df["index"]) == list(range(130, 140))


def test_row_counts_come_from_the_footers_of_every_part(tmp_path):
    from radflow.store.tables import count_rows

    store = str(tmp_path / "s.zarr")
    assert count_rows(store, "features") == 0
    _write(store, 12)  # 12 writer parts of 10 rows
    assert count_rows(store, "features") == 120
    compact_table(store, "features")
    _write(store, 3)  # rewrites of three compacted parts supersede their rows there
    assert count_rows(store, "features") == len(read_table(store, "features")) == 120
