"""radflow's ingest command against the script a user would write instead, on the same archive, in one run.

Baselines (the twenty lines a user writes: ``pydicom.dcmread`` → ``pixel_array`` → a Zarr v3 array), each
run as ``python`` start to exit, as radflow's command is (the interpreter's start, the imports and the walk
of the source folder included):

* ``plain script, 1 process, sharded``: one process; frames of one shape go to one array,
  sharded and zstd-1 compressed like radflow's ``raw/`` arrays, written a whole shard at a time;
* ``plain script, N processes, unsharded``: N processes (``--procs``), one chunk per frame;
* ``plain script as a Prefect flow on a local Dask cluster``: the same per-frame work mapped over a
  ``LocalCluster`` of N one-thread workers from a Prefect flow (the running Prefect API): what the
  script costs on radflow's stack, before any of radflow's own work.

radflow: ``radflow ingest SRC STORE`` as a subprocess, start to exit (imports, Prefect's local
API, the local cluster, discovery, header index, planning, decode, checksums, sharded writes, the
ledger and tables) three ways: as the first command of a while (it starts the local API that radflow
keeps up between commands: ``radflow api stop`` before it, untimed), as the next command (that API
kept from the one before), and with ``PREFECT_API_URL`` pointing at a running Prefect API (what a user
with ``prefect server start`` gets). Runs are interleaved (``--repeat``) and each
figure is the median, with the whole machine's CPU-seconds during each run. The start-up breakdown
comes from the command's ``--verbose`` log; the data path's (read, digest, decode, checksum, compress,
write, tables: worker seconds) from its summary; the plain script's own steps are timed one by one
in one process after the rounds.

    python benchmarks/baseline.py [--n 64] [--unique 64] [--syntax explicit|jpeg2000|mixed] [--procs 2] [--repeat 2]

(``baseline.py --plain sharded|unsharded|prefect-dask SRC OUT [--procs N]`` is one plain script run.)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

from _common import quiet, use_syntax

SHAPES = ((2500, 2048), (3000, 2500), (2048, 2048))


def _frames(files: list[str]) -> dict[tuple, list[str]]:
    import pydicom

    groups: dict[tuple, list[str]] = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        key = (int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated), int(getattr(ds, "SamplesPerPixel", 1)))
        groups.setdefault(key, []).append(f)
    return groups


def _copies(files: list[str], n: int, folder: str) -> list[str]:
    """``n`` more radiographs: copies of ``files`` in turn, each with a SOP Instance UID of its own (synthesis
    runs at about 8 MB/s here; a copy is a read and a write)."""
    import pydicom
    from pydicom.uid import generate_uid

    os.makedirs(folder, exist_ok=True)
    out = []
    for i in range(max(0, n)):
        ds = pydicom.dcmread(files[i % len(files)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[files[i % len(files)], str(i)])
        out.append(os.path.join(folder, f"copy{i:05d}.dcm"))
        ds.save_as(out[-1], enforce_file_format=True)
    return out


def plain_sharded(files: list[str], out: str) -> None:
    """One process: read, decode, write whole shards of a sharded zstd-1 array per frame shape."""
    import numpy as np
    import pydicom
    import zarr
    from zarr.codecs import ZstdCodec

    root = zarr.open_group(out, mode="w")
    for (rows, cols, bits, spp), group in _frames(files).items():
        per_shard = max(1, (64 << 20) // (rows * cols * bits // 8 * spp))
        shape = (rows, cols) if spp == 1 else (rows, cols, spp)
        arr = root.create_array(f"raw_{rows}x{cols}", shape=(len(group), *shape), dtype=f"uint{bits}",
                                chunks=(1, *shape), shards=(per_shard, *shape), compressors=ZstdCodec(level=1))
        for lo in range(0, len(group), per_shard):
            block = np.stack([pydicom.dcmread(f).pixel_array for f in group[lo:lo + per_shard]])
            arr[lo:lo + len(block)] = block


def _write_one(args: tuple[str, str, int]) -> None:
    import pydicom
    import zarr

    path, out, i = args
    pixels = pydicom.dcmread(path).pixel_array
    arr = zarr.open_array(out, mode="r+", path=f"raw_{pixels.shape[0]}x{pixels.shape[1]}")
    arr[i] = pixels


def _unsharded_jobs(files: list[str], out: str) -> list[tuple[str, str, int]]:
    """One array per frame shape, one chunk per frame (zstd-1); a job per input."""
    import zarr
    from zarr.codecs import ZstdCodec

    root = zarr.open_group(out, mode="w")
    jobs = []
    for (rows, cols, bits, spp), group in _frames(files).items():
        shape = (rows, cols) if spp == 1 else (rows, cols, spp)
        root.create_array(f"raw_{rows}x{cols}", shape=(len(group), *shape), dtype=f"uint{bits}", chunks=(1, *shape),
                          compressors=ZstdCodec(level=1))
        jobs += [(f, out, i) for i, f in enumerate(group)]
    return jobs


def plain_unsharded(files: list[str], out: str, procs: int) -> None:
    """N processes: one chunk per frame, each process decoding and writing its own frames."""
    jobs = _unsharded_jobs(files, out)
    with ProcessPoolExecutor(procs) as pool:
        list(pool.map(_write_one, jobs, chunksize=4))


def plain_prefect_dask(files: list[str], out: str, procs: int) -> None:
    """The unsharded script's work as a Prefect flow mapping it over a local Dask cluster of ``procs`` workers."""
    from distributed import Client, LocalCluster
    from prefect import flow

    @flow(name="plain-script")
    def convert() -> None:
        jobs = _unsharded_jobs(files, out)
        with LocalCluster(n_workers=procs, threads_per_worker=1, host="127.0.0.1", dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            client.gather(client.map(_write_one, jobs, pure=False))

    convert()


def _plain_main(mode: str, src: str, out: str, procs: int) -> None:
    """One plain script run, as a user would run it: walk ``src``, convert, exit."""
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs)
    if mode == "sharded":
        plain_sharded(files, out)
    elif mode == "unsharded":
        plain_unsharded(files, out, procs)
    else:
        plain_prefect_dask(files, out, procs)


def plain_parts(files: list[str], out: str) -> dict[str, float]:
    """The plain script's work per radiograph, step by step in one process (milliseconds): what radflow's data
    path is set against, phase by phase (zstd-1 as the script's arrays; each chunk written to a new file)."""
    import numcodecs
    import numpy as np
    import pydicom

    os.makedirs(out, exist_ok=True)
    zstd = numcodecs.Zstd(level=1)
    spent = dict.fromkeys(("read + parse (dcmread)", "decode (pixel_array)", "compress (zstd-1)", "write"), 0.0)
    for i, f in enumerate(files):
        t0 = time.perf_counter()
        ds = pydicom.dcmread(f)
        t1 = time.perf_counter()
        pixels = np.ascontiguousarray(ds.pixel_array)
        t2 = time.perf_counter()
        data = zstd.encode(pixels)
        t3 = time.perf_counter()
        with open(os.path.join(out, f"c{i}"), "wb") as fh:
            fh.write(data)
        t4 = time.perf_counter()
        for k, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            spent[k] += dt
    shutil.rmtree(out, ignore_errors=True)
    return {k: 1000 * v / max(1, len(files)) for k, v in spent.items()}


#: (phase, a line of ``radflow --verbose ingest`` that ends it)
PHASES = (
    ("Prefect API launched or found", r"(starting|using) radflow's local Prefect API|starting a temporary Prefect API"),
    ("flows imported", r"imported radflow\.flows"),
    ("cluster started", r"started local cluster"),
    ("flow run begins", r"Beginning flow run"),
    ("discovery", r"inputs discovered"),
    ("header index", r"indexed \d+ headers"),
    ("planning", r"planned \d+ batches"),
    ("first batch submitted", r"submitting \d+ batches"),
    ("flow run ends", r"Finished in state Completed\(\)\s*$"),
)
#: the command's summary line with its workers' seconds per phase of the data path (summed over threads)
WORKER_TIME = re.compile(r"worker time, summed over threads: (.*)$")


def machine_cpu_s() -> float:
    """CPU-seconds the whole machine has spent (all processes, user and system; /proc/stat): around a run on a
    quiet machine, what the run cost however many processes it started, its kept API's included."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    busy = sum(fields[:7]) - fields[3] - fields[4]  # user nice system (idle iowait) irq softirq; not steal
    return busy / os.sysconf("SC_CLK_TCK")


def radflow_cli(src: str, store: str, env: dict[str, str]) -> tuple[float, dict[str, float], dict[str, float]]:
    """``radflow --verbose ingest`` start to exit; the time each phase's line appeared, and the data path's
    worker seconds by phase (from the command's summary)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "radflow", "--verbose", "ingest", src, store], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    marks: dict[str, float] = {}
    worker: dict[str, float] = {}
    for line in proc.stdout:
        for name, pattern in PHASES:
            if re.search(pattern, line) and (name not in marks or name == "flow run ends"):
                marks[name] = time.perf_counter() - t0
        if m := WORKER_TIME.search(line):
            worker = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) s", m.group(1))}
    if proc.wait():
        raise SystemExit(f"radflow ingest failed with exit code {proc.returncode}")
    return time.perf_counter() - t0, marks, worker


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64, help="full-size radiographs (default 64)")
    p.add_argument("--unique", type=int, default=64, help="of them synthesized; the rest are copies with new UIDs (default 64)")
    p.add_argument("--syntax", choices=["explicit", "jpeg2000", "mixed"], default="explicit")
    p.add_argument("--procs", type=int, default=2, help="processes of the unsharded plain script (default 2)")
    p.add_argument("--repeat", type=int, default=2, help="interleaved rounds (default 2)")
    p.add_argument("--out", default=None)
    p.add_argument("--plain", nargs=3, metavar=("MODE", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain:
        return _plain_main(*args.plain, args.procs)

    quiet()
    import radflow.synth.radiographs as R

    work = args.out or tempfile.mkdtemp(prefix="radflow-baseline-")
    if args.syntax != "mixed":
        use_syntax(args.syntax)
    s = R.write_archive(os.path.join(work, "archive"), min(args.n, args.unique), seed=5, sizes=SHAPES, broken=False)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(s.dicom) for f in fs)
    files += _copies(files, args.n - len(files), os.path.join(s.dicom, "copies"))
    s = dataclasses.replace(s, images=len(files), bytes=sum(os.path.getsize(f) for f in files))
    print(f"archive: {s.images} radiographs ({min(args.n, args.unique)} synthesized), {s.bytes / 1e6:.0f} MB "
          f"({args.syntax}) under {s.dicom}", flush=True)

    env = {**os.environ, "RADFLOW_SECRET_KEY": os.environ.get("RADFLOW_SECRET_KEY", "baseline-benchmark-key-32-bytes-or-more"),
           "PREFECT_LOGGING_LEVEL": "INFO"}  # the breakdown reads Prefect's own lines (flow run begins, ends)
    env.pop("PREFECT_API_URL", None)
    server = _prefect_server(work)
    env_api = {**env, "PREFECT_API_URL": server[1]}
    env["PREFECT_HOME"] = os.path.join(work, "prefect-home-kept")  # the kept API's own database
    stop_kept = [sys.executable, "-m", "radflow", "api", "stop"]
    def plain(mode: str, env: dict[str, str]) -> Callable[[str], None]:
        return lambda out: subprocess.run([sys.executable, os.path.abspath(__file__), "--plain", mode, s.dicom, out, "--procs",
                                           str(args.procs)], env=env, check=True, stdin=subprocess.DEVNULL)

    cases = {
        "plain script, 1 process, sharded (zstd-1)": plain("sharded", env),
        f"plain script, {args.procs} processes, unsharded": plain("unsharded", env),
        "plain script as a Prefect flow on a local Dask cluster": plain("prefect-dask", {**env_api, "PREFECT_LOGGING_LEVEL": "WARNING"}),
        "radflow ingest CLI, first command (starts API)": lambda out: radflow_cli(s.dicom, out, env),
        "radflow ingest CLI, next command (API kept)": lambda out: radflow_cli(s.dicom, out, env),
        "radflow ingest CLI, running Prefect API": lambda out: radflow_cli(s.dicom, out, env_api),
        # the same, raw frames compressed with the script's codec (zstd-1) rather than radflow's default (bit-shuffled LZ4)
        "radflow ingest CLI, next command, zstd-1": lambda out: radflow_cli(s.dicom, out, {**env, "RADFLOW_RAW_CODEC": "zstd"}),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    marks: dict[str, list[dict[str, float]]] = {k: [] for k in cases}
    worker: dict[str, list[dict[str, float]]] = {k: [] for k in cases}
    sizes: dict[str, int] = {}  # bytes the store holds after the run (frames, tables, metadata)
    try:
        for r in range(args.repeat):
            for name, fn in cases.items():
                if "first command" in name:
                    subprocess.run(stop_kept, env=env, check=True, stdout=subprocess.DEVNULL)
                out = os.path.join(work, f"out-{r}-{len(times[name])}-{abs(hash(name)) % 10**6}.zarr")
                c, t = machine_cpu_s(), time.perf_counter()
                got = fn(out)
                times[name].append(time.perf_counter() - t)
                cpu[name].append(machine_cpu_s() - c)
                if isinstance(got, tuple):
                    marks[name].append(got[1])
                    worker[name].append(got[2])
                sizes[name] = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
                shutil.rmtree(out, ignore_errors=True)
                print(f"  round {r + 1}: {name}: {times[name][-1]:.1f} s", flush=True)
    finally:
        server[0].terminate()
        server[0].wait()
        subprocess.run(stop_kept, env=env, stdout=subprocess.DEVNULL)
    mb = s.bytes / 1e6
    base = f"plain script, {args.procs} processes, unsharded"
    print(f"\n== ingest of {s.images} radiographs, {mb:.0f} MB; median of {args.repeat}; baseline: {base} ==")
    print(f"{'pipeline':<54} {'wall s':>8} {'MB/s':>8} {'× baseline':>11} {'CPU s':>7} {'stored MB':>10}")
    ref = mb / statistics.median(times[base])
    for name, ts in times.items():
        rate = mb / statistics.median(ts)
        print(f"{name:<54} {statistics.median(ts):>8.1f} {rate:>8.1f} {rate / ref:>10.2f}× "
              f"{statistics.median(cpu[name]):>7.1f} {sizes.get(name, 0) / 1e6:>10.0f}")
    print("(CPU s: the whole machine's CPU-seconds during the run, every process's, on a machine otherwise quiet)")
    for name in [n for n in cases if n.startswith("radflow")]:
        print(f"\nstart-up breakdown, {name} (seconds since the command started, median):")
        for phase, _ in PHASES:
            seen = [m[phase] for m in marks[name] if phase in m]
            if seen:
                print(f"  {phase:<29} {statistics.median(seen):6.1f}")
        phases = sorted({k for w in worker[name] for k in w}, key=list(worker[name][0]).index) if worker[name] else []
        if phases:
            print(f"  data path, worker seconds summed over threads (median; ms per radiograph):")
            for k in phases:
                v = statistics.median(w.get(k, 0.0) for w in worker[name])
                print(f"    {k:<27} {v:6.2f}  {1000 * v / s.images:6.1f}")
    parts = plain_parts(files[:32], os.path.join(work, "parts"))
    print(f"\nplain script's steps, one process, {min(32, len(files))} radiographs (ms per radiograph):")
    for k, v in parts.items():
        print(f"    {k:<27} {v:6.1f}")
    print(f"    {'total':<27} {sum(parts.values()):6.1f}")
    if not args.out:
        shutil.rmtree(work, ignore_errors=True)


def _prefect_server(work: str) -> tuple[subprocess.Popen, str]:
    """A Prefect API for the 'running Prefect API' case: ``prefect server start`` on a free loopback port."""
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PREFECT_HOME": os.path.join(work, "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
                             "--no-services"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("prefect server start did not answer within 180 s")


if __name__ == "__main__":
    main()
