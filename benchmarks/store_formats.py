"""Ingest throughput by store format: format 1 (plain sharded Zarr, the baseline) vs format 2
(the versioned Icechunk store: forks per batch, merges and commits), same archive, same run,
interleaved, on local disk and (``--s3``) on a moto S3 server on 127.0.0.1.

Each run is ``radflow.ingest`` into a new store on one local cluster started before timing (so the
difference is the store's: writes through an Icechunk session, table parts listed in the version,
the commits). Also prints each format-2 run's commits and the seconds they took, how long listing the
store's history takes, and reading a table at a version named by its id.

    python benchmarks/store_formats.py [--n 32] [--repeat 2] [--workers 2] [--s3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import tempfile
import time

from _common import quiet, use_syntax, warm_up


def _moto() -> tuple[object, str]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint})
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="radflow-bench")
    return server, endpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--s3", action="store_true", help="also on a moto S3 server (127.0.0.1)")
    args = p.parse_args()

    quiet()
    import radflow
    import radflow.synth.radiographs as R
    from radflow.cluster import connect
    from radflow.config import ClusterSettings

    work = tempfile.mkdtemp(prefix="radflow-bench-formats-")
    use_syntax("explicit")
    s = R.write_archive(os.path.join(work, "archive"), args.n, seed=5, sizes=((2500, 2048), (3000, 2500), (2048, 2048)),
                        broken=False)
    print(f"archive: {s.images} radiographs, {s.bytes / 1e6:.0f} MB (explicit VR little endian)")
    server = None
    places = ["local"]
    if args.s3:
        server, _ = _moto()
        places.append("s3")
    warm_up(work)
    rates: dict[tuple[str, int], list[float]] = {}
    commits: list[str] = []
    with connect(ClusterSettings(n_workers=args.workers)):
        for r in range(args.repeat):
            for place in places:
                for fmt in (1, 2):  # interleaved: both formats see the same load
                    store = (os.path.join(work, f"{place}-{fmt}-{r}.zarr") if place == "local"
                             else f"s3://radflow-bench/{fmt}-{r}.zarr")
                    t = time.perf_counter()
                    summary = radflow.ingest(s.dicom, store, settings={"store_format": fmt})
                    secs = time.perf_counter() - t
                    rates.setdefault((place, fmt), []).append(summary["bytes_in"] / secs / 1e6)
                    if fmt == 2:
                        t = time.perf_counter()
                        h = radflow.open_store(store).history()
                        listed = time.perf_counter() - t
                        t = time.perf_counter()
                        radflow.open_store(store, version=h["version"].iloc[0]).instances()  # a version named by its id
                        old = time.perf_counter() - t
                        commits.append(f"{place} run {r}: {summary['versions']} commits this run in {summary['commit_s']:.2f} s "
                                       f"({summary['commit_s'] / secs:.1%} of the run); history: {len(h)} versions "
                                       f"({int(h['checkpoint'].sum())} checkpoints) listed in {listed:.2f} s; "
                                       f"instances read at a named version in {old:.2f} s")
                    if place == "local":
                        shutil.rmtree(store, ignore_errors=True)
    print()
    print(f"{'store':<10} {'format':<34} {'MB/s (median)':>14} {'runs':>5} {'vs format 1':>12}")
    for place in places:
        base = statistics.median(rates[(place, 1)])
        for fmt, name in ((1, "1: plain Zarr (baseline)"), (2, "2: versioned (Icechunk)")):
            med = statistics.median(rates[(place, fmt)])
            print(f"{place:<10} {name:<34} {med:>14.1f} {len(rates[(place, fmt)]):>5} {med / base:>11.2f}x")
    print()
    for line in commits:
        print(line)
    if server is not None:
        server.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
