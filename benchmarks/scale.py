"""Scale: radflow ingest on 1 and 2 local workers over (a) 20,000 small files and (b) >= 2 GB of
full-size uncompressed radiographs, plus (c) a JPEG 2000 archive against its decoder, with a
projection for MIMIC-CXR.

Baselines measured in the same run: "decoder, 1 core" is pydicom's ``dcmread`` + ``pixel_array``
+ CRC32 over the same files in one process, writing nothing (the decoder's own rate); the
1-worker run is the baseline of the 2-worker speed-up.

Printed per run: files/s, MB/s (bytes read), MB/s per core (per worker), peak scheduler RSS,
Prefect task runs, Dask tasks, orchestration share (wall time during which no Dask task was
computing: discovery, planning, Prefect bookkeeping, waiting) and the speed-up.

    python benchmarks/scale.py [--small 20000] [--large-gb 2.0] [--j2k 12] [--out DIR]

Runs on this machine (2 cores) share them between the flow process, the scheduler and the
workers; see the notes printed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
import zlib

from _common import busy_seconds, quiet, use_syntax, warm_up

MIMIC_IMAGES = 377_110
MIMIC_BYTES = 4.7e12


def small_archive(root: str, n: int) -> tuple[str, int]:
    """``n`` 64×64 16-bit DX files (one template, UIDs and pixels rewritten per file)."""
    import io

    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    uid0 = "1.2.826.0.1.3680043.10.999.100000000"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid0
    ds.PatientID, ds.Modality, ds.ViewPosition = "P000000", "DX", "PA"
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    base = np.random.default_rng(0).integers(0, 4096, (64, 64), dtype=np.uint16)
    ds.PixelData = base.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    template = buf.getvalue()
    pix_at = template.rindex(base.tobytes())
    total = 0
    for i in range(n):
        d = os.path.join(root, f"p{i // 100:04d}")
        if i % 100 == 0:
            os.makedirs(d, exist_ok=True)
        data = template.replace(uid0.encode(), f"{uid0[:-8]}{i:08d}".encode())
        data = data.replace(b"P000000", f"P{i // 10:06d}".encode(), 1)
        pixels = np.roll(base, i).tobytes()
        data = data[:pix_at] + pixels + data[pix_at + len(pixels):]
        with open(os.path.join(d, f"{i:06d}.dcm"), "wb") as fh:
            fh.write(data)
        total += len(data)
    return root, total


def full_size_archive(root: str, gigabytes: float, syntax: str, n: int | None = None) -> tuple[str, int, int]:
    from concurrent.futures import ProcessPoolExecutor

    import radflow.synth.radiographs as R

    use_syntax(syntax)
    n = n or int(gigabytes * 1e9 / (2500 * 2048 * 2)) + 1
    with ProcessPoolExecutor(2) as ex:
        s = R.write_archive(root, n, seed=7, sizes=((2500, 2048),), broken=False, map_fn=ex.map)
    return s.dicom, s.bytes, s.images


def decoder_rate(files: list[str]) -> tuple[float, int]:
    import pydicom

    t0 = time.perf_counter()
    nbytes = 0
    for f in files:
        zlib.crc32(pydicom.dcmread(f).pixel_array.tobytes())
        nbytes += os.path.getsize(f)
    return time.perf_counter() - t0, nbytes


def run(source: str, store: str, workers: int) -> dict:
    import psutil
    from distributed import get_task_stream
    from prefect.client.orchestration import get_client

    import radflow
    from radflow.cluster import connect
    from radflow.config import ClusterSettings
    from radflow.flows.ingest import ingest_flow

    shutil.rmtree(store, ignore_errors=True)
    with connect(ClusterSettings(n_workers=workers)) as client:
        peak = [0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], client.run_on_scheduler(lambda: psutil.Process().memory_info().rss))
                except Exception:  # the cluster is closing
                    return
                stop.wait(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with get_task_stream(client) as ts:
            t0 = time.perf_counter()
            state = ingest_flow(source, store, return_state=True)
            wall = time.perf_counter() - t0
        stop.set()
        sampler.join()
    summary = state.result()
    computing = [(ss["start"], ss["stop"]) for task in ts.data for ss in task["startstops"] if ss["action"] == "compute"]
    busy_union = busy_seconds(computing)
    task_seconds = sum(e - s for s, e in computing)
    with get_client(sync_client=True) as pc:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        flt = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        runs: list = []
        while True:
            page = pc.read_task_runs(flow_run_filter=flt, limit=200, offset=len(runs))
            runs += page
            if len(page) < 200:
                break
    assert radflow.open_store(store).ledger()["status"].eq("ok").all()
    return {"workers": workers, "wall": wall, "files": summary["discovered"], "bytes": summary["bytes_in"],
            "frames": summary["frames"], "scheduler_mb": peak[0] / 1e6, "prefect_tasks": len(runs),
            "dask_tasks": len(ts.data), "orchestration": max(0.0, wall - busy_union) / wall,
            "task_seconds": task_seconds}


def table(title: str, rows: list[dict], baseline: tuple[str, float, float] | None = None) -> None:
    print(f"\n{title}")
    print(f"{'run':<28} {'wall s':>7} {'files/s':>8} {'MB/s':>7} {'MB/s/core':>9} {'sched MB':>8} {'prefect':>7} "
          f"{'dask':>6} {'orch.':>6} {'speed-up':>8}")
    if baseline:
        name, secs, nbytes = baseline
        print(f"{name:<28} {secs:>7.1f} {'':>8} {nbytes / secs / 1e6:>7.1f} {nbytes / secs / 1e6:>9.1f}")
    for r in rows:
        mbs = r["bytes"] / r["wall"] / 1e6
        print(f"{'radflow, ' + str(r['workers']) + ' worker(s)':<28} {r['wall']:>7.1f} {r['files'] / r['wall']:>8.0f} "
              f"{mbs:>7.1f} {mbs / r['workers']:>9.1f} {r['scheduler_mb']:>8.0f} {r['prefect_tasks']:>7} "
              f"{r['dask_tasks']:>6} {100 * r['orchestration']:>5.1f}% {rows[0]['wall'] / r['wall']:>7.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", type=int, default=20_000, help="small files (default 20,000)")
    p.add_argument("--large-gb", type=float, default=2.0, help="GB of full-size uncompressed radiographs (default 2)")
    p.add_argument("--j2k", type=int, default=40, help="JPEG 2000 radiographs (default 40)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    quiet()
    work = args.out or tempfile.mkdtemp(prefix="radflow-scale-")
    warm_up(work)

    t = time.perf_counter()
    src, nbytes = small_archive(os.path.join(work, "small"), args.small)
    print(f"(a) {args.small} small files, {nbytes / 1e6:.0f} MB, written in {time.perf_counter() - t:.1f} s")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs)
    small = [run(src, os.path.join(work, f"small-{w}.zarr"), w) for w in (1, 2)]
    secs, nb = decoder_rate(files[:2000])
    sample = min(2000, len(files))
    table(f"(a) {len(files):,}-file archive", small, (f"decoder, 1 core ({sample:,} files)", secs * len(files) / sample, nb * len(files) / sample))
    shutil.rmtree(src)
    for w in (1, 2):
        shutil.rmtree(os.path.join(work, f"small-{w}.zarr"), ignore_errors=True)

    t = time.perf_counter()
    src, nbytes, n = full_size_archive(os.path.join(work, "large"), args.large_gb, "explicit")
    print(f"\n(b) {n} full-size radiographs (2500x2048, 16-bit, uncompressed), {nbytes / 1e9:.2f} GB, "
          f"written in {time.perf_counter() - t:.1f} s")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs)
    dec = decoder_rate(files[:20])
    large = [run(src, os.path.join(work, f"large-{w}.zarr"), w) for w in (1, 2)]
    table("(b) >= 2 GB of uncompressed radiographs (zstd-1 shards)", large,
          ("decoder, 1 core (20 files)", dec[0] * len(files) / 20, dec[1] * len(files) / 20))
    shutil.rmtree(src)
    for w in (1, 2):
        shutil.rmtree(os.path.join(work, f"large-{w}.zarr"), ignore_errors=True)

    src, nbytes, n = full_size_archive(os.path.join(work, "j2k"), 0, "jpeg2000", n=args.j2k)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs)
    dec_secs, dec_bytes = decoder_rate(files)
    j2k = [run(src, os.path.join(work, f"j2k-{w}.zarr"), w) for w in (1,)]
    table(f"(c) JPEG 2000 lossless archive ({n} radiographs, {nbytes / 1e6:.0f} MB)", j2k,
          ("decoder, 1 core", dec_secs, dec_bytes))
    ratio = (j2k[0]["bytes"] / j2k[0]["wall"]) / (dec_bytes / dec_secs)
    print(f"radflow 1 worker / decoder: {ratio:.2f}x")

    # projection from the measured per-image cost of (b)
    one, two = large
    per_image = one["wall"] / one["frames"]  # seconds per full-size image on one worker, end to end
    efficiency = (one["wall"] / two["wall"]) / 2
    orch = small[1]["orchestration"]
    print(f"\nMIMIC-CXR projection ({MIMIC_IMAGES:,} images, ~{MIMIC_BYTES / 1e12:.1f} TB), from (b): "
          f"{per_image * 1000:.0f} ms per image per worker end to end, 2-worker efficiency {efficiency:.2f}")
    print(f"{'workers':>8} {'hours':>8} {'TB/h':>6}")
    for n_workers in (1, 2, 8, 32, 128):
        eff = 1.0 if n_workers == 1 else efficiency
        hours = MIMIC_IMAGES * per_image / (n_workers * eff) / 3600
        print(f"{n_workers:>8} {hours:>8.1f} {MIMIC_BYTES / 1e12 / hours:>6.2f}")
    print(f"(assumes the 2-worker efficiency holds with more workers and storage keeps up; orchestration share at "
          f"{args.small:,} files on 2 workers was {100 * orch:.1f}%.)")
    print("\nNotes: this machine has 2 cores shared by the flow process, the scheduler and the workers, so the "
          "2-worker runs compete with orchestration for CPU.")
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
