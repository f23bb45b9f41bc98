"""Rehearsal at MIMIC-CXR's count: a synthetic archive with MIMIC-CXR's layout
(``files/p10/p10000032/s50414267/<sop>.dcm``, CXR headers with view positions, two or three images
per study) at a small pixel size, run end to end — ingest, preprocess, a small model's inference,
features — on a 2-worker local cluster; then 1 % new studies and the same run again; then
30 simulated nightly increments and ``radflow compact``.

Printed per size and stage: wall time, inputs/s, the flow process's peak RSS, the scheduler's peak
RSS, Prefect task runs, Dask tasks, orchestration share (wall time in which no Dask task computed),
store objects and Parquet files. Then the cost growth against the smallest size (the baseline,
measured in the same run), the table-read figures, and a projection to the real archive (4.7 TB of
full-size frames) from per-image costs of full-size radiographs measured in this run.

    python benchmarks/rehearsal.py --inputs 377110 --sizes 20000,100000 [--out DIR]
    python benchmarks/rehearsal.py --inputs 500             # the size CI runs

Targets (issue 13; measured here, never asserted in tests): 0 lost inputs and verify passing;
time per input at the largest size within 20 % of the smallest; flow peak RSS < 1 GiB;
orchestration <= 5 % of wall; the 1 % increment <= 5 % of the full run; ``instances()`` < 2 s and
``inspect`` < 5 s, unchanged after 30 increments and compaction.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor

from _common import busy_seconds, quiet, warm_up

MIMIC_IMAGES = 377_110
MIMIC_BYTES = 4.7e12
SIDE = 64  # pixels per side of the rehearsal's frames (full-size CXRs are ~2500 x 3000)
VIEWS = (b"PA", b"AP", b"LL")
PLACE_PATIENT, PLACE_STUDY, PLACE_SERIES, PLACE_SOP = b"p99999991", b"88888888", b"777777777777", b"666666666666"
UID = "1.2.826.0.1.3680043.10.999."


def _template() -> tuple[bytes, int]:
    """One CXR file with fixed-width placeholders for the patient, study, series and SOP values."""
    import io

    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = UID + "3." + PLACE_SOP.decode()
    ds.StudyInstanceUID = UID + "1." + PLACE_STUDY.decode()
    ds.SeriesInstanceUID = UID + "2." + PLACE_SERIES.decode()
    ds.PatientID = PLACE_PATIENT.decode()
    ds.PatientName = "MIMIC^" + PLACE_PATIENT.decode()
    ds.PatientBirthDate, ds.PatientSex, ds.StudyDate = "21000101", "F", "21800506"
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "VV", "CHEST"
    ds.Rows = ds.Columns = SIDE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.zeros((SIDE, SIDE), np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    return data, len(data) - SIDE * SIDE * 2


def _studies(n: int, seed: int, first_patient: int, first_study: int) -> list[tuple[int, int, int]]:
    """``(patient, study, images)`` until ``n`` images: 1-4 studies per patient, 2-3 images per study
    (patients below 10^8, studies below 10^8: the placeholders' widths)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out, total, patient = [], 0, first_patient
    while total < n:
        for _ in range(int(rng.integers(1, 5))):
            k = min(int(rng.integers(2, 4)), n - total)
            if k <= 0:
                break
            out.append((patient, first_study + len(out), k))
            total += k
        patient += 1
    return out


def _write_studies(args: tuple[str, list[tuple[int, int, int]], int]) -> int:
    import numpy as np

    root, studies, seed = args
    header, pix_at = _template()
    head = header[:pix_at]
    rng = np.random.default_rng(seed)
    base = (rng.random((SIDE, SIDE)) * 3000).astype(np.uint16)
    written = 0
    for patient, study, k in studies:
        pid = f"p{patient:08d}"
        d = os.path.join(root, "files", pid[:3], pid, f"s{study}")
        os.makedirs(d, exist_ok=True)
        for j in range(k):
            sop = f"{study:08d}{j:04d}"
            h = (head.replace(PLACE_PATIENT, pid.encode()).replace(PLACE_STUDY, f"{study:08d}".encode())
                 .replace(PLACE_SERIES, f"{study:08d}{j:04d}".encode()).replace(PLACE_SOP, sop.encode())
                 .replace(b"VV", VIEWS[j % 3]))
            pixels = np.roll(base, patient * 7 + j * 131).tobytes()
            with open(os.path.join(d, f"{sop}.dcm"), "wb") as fh:
                fh.write(h + pixels)
            written += 1
    return written


def mimic_archive(root: str, n: int, *, seed: int = 0, first_patient: int = 10_000_000,
                  first_study: int = 50_000_000) -> int:
    """Write ``n`` CXR files in MIMIC-CXR's layout under ``root/files`` (two processes); return ``n``."""
    studies = _studies(n, seed, first_patient, first_study)
    assert studies[-1][0] < 10**8 and studies[-1][1] < 10**8
    chunks = [studies[i::8] for i in range(8)]
    with ProcessPoolExecutor(2) as ex:
        return sum(ex.map(_write_studies, [(root, c, seed + i) for i, c in enumerate(chunks)]))


def _model(work: str) -> str:
    """The model file, built in a child process: the flow process never imports torch."""
    with ProcessPoolExecutor(1) as ex:
        return ex.submit(_build_model, work).result()


def _build_model(work: str) -> str:
    import torch

    from radflow.models.loading import save_model
    from radflow.tasks.infer import ModelCard
    from radflow.tasks.train import build_model

    card = ModelCard(name="rehearsal-mobilenet", arch="mobilenet_v3_small", labels=("finding",), input_size=SIDE,
                     channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    torch.manual_seed(0)
    path = os.path.join(work, "model.pt")
    save_model(build_model(card).eval(), card, path)
    return path


class Meter:
    """Peak RSS of this (the flow) process and of the scheduler, Dask task stream, Prefect task runs."""

    def __init__(self, client) -> None:
        self.client = client

    def __enter__(self) -> "Meter":
        import psutil
        from distributed import get_task_stream

        self.flow_peak = self.sched_peak = 0
        self.stop = threading.Event()
        me = psutil.Process()

        def sample() -> None:
            while not self.stop.is_set():
                self.flow_peak = max(self.flow_peak, me.memory_info().rss)
                try:
                    self.sched_peak = max(self.sched_peak, self.client.run_on_scheduler(
                        lambda: __import__("psutil").Process().memory_info().rss))
                except Exception:  # the cluster is closing
                    pass
                self.stop.wait(0.2)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        self.ts = get_task_stream(self.client)
        self.ts.__enter__()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.t0
        self.ts.__exit__(*exc)
        self.stop.set()
        self.thread.join()
        computing = [(s["start"], s["stop"]) for t in self.ts.data for s in t["startstops"] if s["action"] == "compute"]
        self.busy = busy_seconds(computing)
        self.dask_tasks = len(self.ts.data)
        self.by_prefix: dict[str, int] = {}
        for t in self.ts.data:
            key = str(t["key"])
            self.by_prefix[key.split("-")[0]] = self.by_prefix.get(key.split("-")[0], 0) + 1


@contextlib.contextmanager
def scheduler_and_workers(work: str, workers: int = 2):
    """A Dask scheduler and ``workers`` one-thread workers as their own processes on 127.0.0.1, as on a
    cluster: the flow process's RSS and the scheduler's are measured apart."""
    import subprocess

    sched_file = os.path.join(work, "scheduler.json")
    if os.path.exists(sched_file):
        os.remove(sched_file)
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--dashboard-address", "127.0.0.1:0", "--scheduler-file", sched_file],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(sched_file) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        with open(sched_file) as fh:
            address = json.load(fh)["address"]
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers",
                                       str(workers), "--nthreads", "1", "--host", "127.0.0.1",
                                       "--dashboard-address", "127.0.0.1:0"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address) as c:
            c.wait_for_workers(workers, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def prefect_task_runs(flow_run_id) -> dict[str, int]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as pc:
        flt = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        runs: list = []
        while True:
            page = pc.read_task_runs(flow_run_filter=flt, limit=200, offset=len(runs))
            runs += page
            if len(page) < 200:
                break
    out: dict[str, int] = {}
    for r in runs:
        key = "-".join(r.name.split("-")[:2]) if r.name.startswith("stage-") else r.name.split("-")[0]
        out[key] = out.get(key, 0) + 1
    out["all"] = len(runs)
    return out


def store_counts(store: str) -> tuple[int, int]:
    objects = parquet = 0
    for d, _, fs in os.walk(store):
        objects += len(fs)
        if f"{os.sep}tables{os.sep}" in d + os.sep:
            parquet += sum(f.endswith(".parquet") for f in fs)
    return objects, parquet


SHARD_MIB = 1  # set from --shard-mib


def run_once(client, source: str, store: str, model: str, label: str) -> list[dict]:
    """Ingest then process (preprocess, infer, features): one row per stage."""
    from radflow.flows.ingest import ingest_flow
    from radflow.flows.process import process_flow

    rows = []
    settings = {"canvas": SIDE, "shard_target_mib": SHARD_MIB}  # compaction at its default threshold
    with Meter(client) as m:
        state = ingest_flow(source, store, settings=settings, return_state=True)
    s = state.result()
    objects, parquet = store_counts(store)
    runs = prefect_task_runs(state.state_details.flow_run_id)
    rows.append({"size": label, "stage": "ingest", "inputs": s["new"], "wall": m.wall, "flow_mb": m.flow_peak / 2**20,
                 "sched_mb": m.sched_peak / 2**20, "prefect": runs["all"], "dask": m.dask_tasks,
                 "orch": max(0.0, m.wall - m.busy) / m.wall if m.wall else 0.0, "objects": objects, "parquet": parquet,
                 "lost": s["new"] - s["ok"] - sum(s["duplicates"].values()) - sum(s["rejected"].values())})
    print_table(rows[-1:])  # as each flow ends: a long run shows its figures before it finishes
    with Meter(client) as m:
        state = process_flow(store, steps=["preprocess", "infer", "features"], model=model, canvas=SIDE,
                             settings=settings, return_state=True)
    p = state.result()
    objects, parquet = store_counts(store)
    runs = prefect_task_runs(state.state_details.flow_run_id)
    overhead = m.wall - sum(v["seconds"] for v in p["steps"].values())
    for step, v in p["steps"].items():
        rows.append({"size": label, "stage": step, "inputs": v["frames"], "wall": v["seconds"],
                     "flow_mb": m.flow_peak / 2**20, "sched_mb": m.sched_peak / 2**20,
                     "prefect": runs.get(f"stage-{step}", 0), "dask": v["ranges"], "orch": None,
                     "objects": objects, "parquet": parquet, "lost": 0})
    rows.append({"size": label, "stage": "process (all)", "inputs": p["frames"], "wall": m.wall,
                 "flow_mb": m.flow_peak / 2**20, "sched_mb": m.sched_peak / 2**20, "prefect": runs["all"],
                 "dask": m.dask_tasks, "orch": max(0.0, m.wall - m.busy) / m.wall if m.wall else 0.0,
                 "objects": objects, "parquet": parquet, "lost": 0, "outside_stages_s": overhead})
    print_table(rows[1:])
    return rows


def read_figures(store: str) -> dict[str, float]:
    import radflow
    from radflow.store.inspect import describe

    t = time.perf_counter()
    n = len(radflow.open_store(store).instances())
    instances_s = time.perf_counter() - t
    t = time.perf_counter()
    describe(store)
    return {"rows": n, "instances_s": instances_s, "inspect_s": time.perf_counter() - t}


def print_table(rows: list[dict]) -> None:
    print(f"\n{'size':>8} {'stage':<14} {'inputs':>8} {'wall s':>8} {'inputs/s':>9} {'flow MB':>8} {'sched MB':>8} "
          f"{'prefect':>7} {'dask':>7} {'orch.':>6} {'objects':>8} {'parquet':>7} {'lost':>5}")
    for r in rows:
        orch = f"{100 * r['orch']:.1f}%" if r["orch"] is not None else ""
        rate = r["inputs"] / r["wall"] if r["wall"] else 0.0
        print(f"{r['size']:>8} {r['stage']:<14} {r['inputs']:>8} {r['wall']:>8.1f} {rate:>9.0f} {r['flow_mb']:>8.0f} "
              f"{r['sched_mb']:>8.0f} {r['prefect']:>7} {r['dask']:>7} {orch:>6} {r['objects']:>8} {r['parquet']:>7} "
              f"{r['lost']:>5}")


def full_size_costs(client, work: str) -> dict[str, float]:
    """Seconds per full-size radiograph (2500 x 2048, 16-bit) for ingest and process, 2 workers."""
    sys.path.insert(0, os.path.dirname(__file__))
    from scale import full_size_archive

    from radflow.flows.ingest import ingest_flow
    from radflow.flows.process import process_flow

    src, nbytes, n = full_size_archive(os.path.join(work, "full"), 0, "explicit", n=24)
    store = os.path.join(work, "full.zarr")
    t = time.perf_counter()
    ingest_flow(src, store)
    ingest_s = time.perf_counter() - t
    t = time.perf_counter()
    process_flow(store, steps=["preprocess", "infer", "features"], model=os.path.join(work, "model.pt"), canvas=1024)
    process_s = time.perf_counter() - t
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(store, ignore_errors=True)
    return {"images": n, "bytes_per_image": nbytes / n, "ingest_s": ingest_s / n, "process_s": process_s / n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=int, default=MIMIC_IMAGES, help="the largest size (default 377,110)")
    p.add_argument("--sizes", default="", help="smaller sizes first, comma-separated (e.g. 20000,100000)")
    p.add_argument("--increments", type=int, default=30, help="simulated nightly increments before compaction")
    p.add_argument("--shard-mib", type=int, default=1,
                   help="shard target (default 1 MiB: 128 frames of 64x64 per shard, near the 8-64 frames per "
                        "shard of full-size radiographs at the default 128 MiB)")
    p.add_argument("--no-full-size", action="store_true", help="skip the full-size per-image measurement")
    p.add_argument("--out", default=None, help="work folder (kept); default: a temporary one, removed")
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = p.parse_args()
    global SHARD_MIB
    SHARD_MIB = args.shard_mib
    quiet()
    os.environ.setdefault("RADFLOW_SECRET_KEY", "rehearsal-key-" + "0" * 32)
    import radflow
    from radflow.cluster import connect
    from radflow.config import ClusterSettings

    work = args.out or tempfile.mkdtemp(prefix="radflow-rehearsal-")
    os.makedirs(work, exist_ok=True)
    warm_up(work)
    model = _model(work)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s} | {args.inputs})
    rows: list[dict] = []
    figures: dict[str, dict] = {}
    import psutil

    with scheduler_and_workers(work) as address, connect(ClusterSettings(address=address)) as client:
        print(f"flow process RSS before the first run: {psutil.Process().memory_info().rss / 2**20:.0f} MB "
              "(Python, pandas, pyarrow, Prefect, Dask client)", flush=True)
        for n in sizes:
            label = f"{n:,}"
            src = os.path.join(work, f"archive-{n}")
            store = os.path.join(work, f"store-{n}.zarr")
            shutil.rmtree(store, ignore_errors=True)
            t = time.perf_counter()
            if not os.path.isdir(src):
                mimic_archive(src, n)
            print(f"{label} inputs in MIMIC-CXR's layout under {src} (written in {time.perf_counter() - t:.0f} s)",
                  flush=True)
            rows += run_once(client, src, store, model, label)
            full_wall = sum(r["wall"] for r in rows if r["size"] == label and r["stage"] in ("ingest", "process (all)"))
            extra = max(1, n // 100)
            mimic_archive(src, extra, seed=1, first_patient=60_000_000, first_study=60_000_000)  # 1 % new patients
            inc = run_once(client, src, store, model, label + "+1%")
            rows += inc
            inc_wall = sum(r["wall"] for r in inc if r["stage"] in ("ingest", "process (all)"))
            t = time.perf_counter()
            v = radflow.verify(store)
            verify_s = time.perf_counter() - t
            fig = {"full_wall_s": full_wall, "increment_wall_s": inc_wall, "increment_share": inc_wall / full_wall,
                   "per_input_ms": 1000 * full_wall / n, "verify_ok": not v["problems"], "verified": v["checked"],
                   "verify_s": verify_s, "read_after_run": read_figures(store)}
            ledger = radflow.open_store(store).ledger()
            fig["lost"] = int(n + extra - len(ledger))
            fig["not_ok"] = int((ledger["status"] != "ok").sum())
            print_table([r for r in rows if r["size"] in (label, label + "+1%")])
            print(f"increment: {inc_wall:.1f} s = {100 * fig['increment_share']:.1f} % of the full run's "
                  f"{full_wall:.1f} s; verify {'passed' if fig['verify_ok'] else 'FAILED'} in {verify_s:.0f} s; "
                  f"ledger rows {len(ledger)} for {n + extra} inputs ({fig['not_ok']} not ok)", flush=True)
            if n == sizes[-1] and args.increments:
                per = max(1, n // 20_000)
                for k in range(args.increments):  # nightly: a few new studies, ingest + process
                    mimic_archive(src, per * 3, seed=100 + k, first_patient=70_000_000 + 10_000 * k,
                                  first_study=70_000_000 + 10_000 * k)
                    run_once(client, src, store, model, f"night {k + 1}")
                fig["read_after_increments"] = read_figures(store)
                from radflow.store.lock import writer
                from radflow.store.tables import compact_store
                from radflow.store.versions import transaction

                t = time.perf_counter()
                with writer(store, command="compact"), transaction(store, command="compact"):  # as `radflow compact`
                    fig["compaction"] = compact_store(store)
                fig["compaction_s"] = time.perf_counter() - t
                fig["read_after_compaction"] = read_figures(store)
                fig["objects_after_compaction"] = store_counts(store)
            figures[label] = fig
            print(json.dumps({label: fig}, indent=1, default=str), flush=True)
        full = None if args.no_full_size else full_size_costs(client, work)

    print("\n== rehearsal ==")
    print_table(rows)
    base = sizes[0]
    print(f"\ncost growth (baseline: {base:,} inputs, same run)")
    print(f"{'inputs':>9} {'ms/input':>9} {'vs base':>8} {'incr. %':>8} {'instances() s':>14} {'inspect s':>10}")
    for n in sizes:
        f = figures[f"{n:,}"]
        print(f"{n:>9,} {f['per_input_ms']:>9.2f} {f['per_input_ms'] / figures[f'{base:,}']['per_input_ms']:>7.2f}x "
              f"{100 * f['increment_share']:>7.1f}% {f['read_after_run']['instances_s']:>14.2f} "
              f"{f['read_after_run']['inspect_s']:>10.2f}")
    last = figures[f"{sizes[-1]:,}"]
    if "read_after_increments" in last:
        for k in ("read_after_increments", "read_after_compaction"):
            r = last[k]
            print(f"{k.replace('_', ' '):<26} instances() {r['instances_s']:.2f} s ({r['rows']:,} rows), "
                  f"inspect {r['inspect_s']:.2f} s")
        print(f"compaction: {last['compaction_s']:.1f} s; " + ", ".join(
            f"{k} {v['files_before']} → {v['files_after']}" for k, v in last["compaction"].items()))
    if full:
        per_input_orch = last["full_wall_s"] / sizes[-1]
        hours2 = MIMIC_IMAGES * (full["ingest_s"] + full["process_s"]) / 3600
        print(f"\nprojection to MIMIC-CXR ({MIMIC_IMAGES:,} images, {MIMIC_BYTES / 1e12:.1f} TB) from full-size "
              f"radiographs measured here ({full['images']} x 2500x2048 16-bit; ingest {1000 * full['ingest_s']:.0f} ms, "
              f"process {1000 * full['process_s']:.0f} ms per image on 2 workers):")
        print(f"{'workers':>8} {'hours':>8}")
        for w in (2, 8, 32, 128):
            print(f"{w:>8} {hours2 * 2 / w:>8.1f}")
        print(f"(linear in workers from the 2-worker figure; the rehearsal's per-input cost at small frames, "
              f"{1000 * per_input_orch:.1f} ms, bounds the per-input overhead that does not shrink with pixels.)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "figures": figures, "full_size": full}, fh, indent=1, default=str)
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
