"""Ingest throughput: radflow end to end vs a plain pydicom decode loop, measured in one run.

Baseline ("pydicom loop, 1 core"): for each file, ``pydicom.dcmread`` + ``pixel_array``
+ CRC32 in one process, writing nothing — the decoder's own rate, an upper bound for a
single core. radflow: ``radflow.ingest`` on a local Dask cluster with 1 and 2 workers
(discovery, header index, planning, decode, sharded zstd write, Parquet tables).

    python benchmarks/ingest.py [--n 24] [--syntax explicit|jpeg2000|mixed] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import zlib

from _common import quiet, use_syntax, warm_up


def baseline(files: list[str]) -> tuple[float, int, int]:
    import pydicom

    t0 = time.perf_counter()
    nbytes = frames = 0
    for f in files:
        ds = pydicom.dcmread(f)
        arr = ds.pixel_array
        zlib.crc32(arr.tobytes())
        nbytes += os.path.getsize(f)
        frames += 1
    return time.perf_counter() - t0, nbytes, frames


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--syntax", choices=["explicit", "jpeg2000", "mixed"], default="explicit")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    quiet()
    import radflow
    import radflow.synth.radiographs as R
    from radflow.config import ClusterSettings
    from radflow.cluster import connect

    work = args.out or tempfile.mkdtemp(prefix="radflow-bench-")
    if args.syntax != "mixed":
        use_syntax(args.syntax)
    t = time.perf_counter()
    s = R.write_archive(os.path.join(work, "archive"), args.n, seed=5, sizes=((2500, 2048), (3000, 2500), (2048, 2048)), broken=False)
    print(f"archive: {s.images} radiographs, {s.bytes / 1e6:.0f} MB ({args.syntax}), made in {time.perf_counter() - t:.1f} s")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(s.dicom) for f in fs)

    warm_up(work)
    rows = []
    secs, nbytes, frames = baseline(files)
    base = nbytes / secs / 1e6
    rows.append(("pydicom loop (baseline), 1 core", secs, nbytes / secs / 1e6, frames / secs))
    for workers in (1, 2):
        store = os.path.join(work, f"store-{workers}.zarr")
        shutil.rmtree(store, ignore_errors=True)
        with connect(ClusterSettings(n_workers=workers)):
            t = time.perf_counter()
            summary = radflow.ingest(s.dicom, store)
            secs = time.perf_counter() - t
        rows.append((f"radflow ingest, {workers} worker(s)", secs, summary["bytes_in"] / secs / 1e6, summary["frames"] / secs))
    print()
    print(f"{'pipeline':<36} {'seconds':>8} {'MB/s':>8} {'images/s':>9} {'vs baseline':>12}")
    for name, secs, mbs, ips in rows:
        print(f"{name:<36} {secs:>8.2f} {mbs:>8.1f} {ips:>9.2f} {mbs / base:>11.2f}x")
    print("\nradflow times include discovery, header indexing, planning, Prefect task runs and the Parquet tables;")
    print("the local cluster is started before timing.")
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
