"""radflow's ingest command against the script a user would write instead, on the same archive, in one run.

Baselines (the twenty lines a user writes: ``pydicom.dcmread`` → ``pixel_array`` → a Zarr v3 array):

* ``plain script, 1 process, sharded``: one process; frames of one shape go to one array,
  sharded and zstd-1 compressed like radflow's ``raw/`` arrays, written a whole shard at a time;
* ``plain script, N processes, unsharded``: N processes (``--procs``), one chunk per frame.

radflow: ``radflow ingest SRC STORE`` as a subprocess, start to exit (imports, Prefect's local
API, the local cluster, discovery, header index, planning, decode, checksums, sharded writes, the
ledger and tables) three ways: as the first command of a while (it starts the local API that radflow
keeps up between commands: ``radflow api stop`` before it, untimed), as the next command (that API
kept from the one before), and with ``PREFECT_API_URL`` pointing at a running Prefect API (what a user
with ``prefect server start`` gets). Runs are interleaved (``--repeat``) and each
figure is the median. The start-up breakdown comes from the command's ``--verbose`` log.

    python benchmarks/baseline.py [--n 64] [--unique 64] [--syntax explicit|jpeg2000|mixed] [--procs 2] [--repeat 2]
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


def plain_unsharded(files: list[str], out: str, procs: int) -> None:
    """N processes: one chunk per frame, each process decoding and writing its own frames."""
    import zarr
    from zarr.codecs import ZstdCodec

    root = zarr.open_group(out, mode="w")
    jobs = []
    for (rows, cols, bits, spp), group in _frames(files).items():
        shape = (rows, cols) if spp == 1 else (rows, cols, spp)
        root.create_array(f"raw_{rows}x{cols}", shape=(len(group), *shape), dtype=f"uint{bits}", chunks=(1, *shape),
                          compressors=ZstdCodec(level=1))
        jobs += [(f, out, i) for i, f in enumerate(group)]
    with ProcessPoolExecutor(procs) as pool:
        list(pool.map(_write_one, jobs, chunksize=4))


#: (phase, a line of ``radflow --verbose ingest`` that ends it)
PHASES = (
    ("Prefect API launched or found", r"(starting|using) radflow's local Prefect API|starting a temporary Prefect API"),
    ("cluster started", r"started local cluster"),
    ("flow run begins", r"Beginning flow run"),
    ("discovery", r"inputs discovered"),
    ("first batch submitted", r"submitting \d+ batches"),
    ("flow run ends", r"Finished in state Completed\(\)\s*$"),
)


def radflow_cli(src: str, store: str, env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """``radflow --verbose ingest`` start to exit; the time each phase's line appeared."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "radflow", "--verbose", "ingest", src, store], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    marks: dict[str, float] = {}
    for line in proc.stdout:
        for name, pattern in PHASES:
            if re.search(pattern, line) and (name not in marks or name == "flow run ends"):
                marks[name] = time.perf_counter() - t0
    if proc.wait():
        raise SystemExit(f"radflow ingest failed with exit code {proc.returncode}")
    return time.perf_counter() - t0, marks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64, help="full-size radiographs (default 64)")
    p.add_argument("--unique", type=int, default=64, help="of them synthesized; the rest are copies with new UIDs (default 64)")
    p.add_argument("--syntax", choices=["explicit", "jpeg2000", "mixed"], default="explicit")
    p.add_argument("--procs", type=int, default=2, help="processes of the unsharded plain script (default 2)")
    p.add_argument("--repeat", type=int, default=2, help="interleaved rounds (default 2)")
    p.add_argument("--out", default=None)
    args = p.parse_args()

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
    cases = {
        "plain script, 1 process, sharded (zstd-1)": lambda out: plain_sharded(files, out),
        f"plain script, {args.procs} processes, unsharded": lambda out: plain_unsharded(files, out, args.procs),
        "radflow ingest CLI, first command (starts API)": lambda out: radflow_cli(s.dicom, out, env),
        "radflow ingest CLI, next command (API kept)": lambda out: radflow_cli(s.dicom, out, env),
        "radflow ingest CLI, running Prefect API": lambda out: radflow_cli(s.dicom, out, env_api),
        # the same, raw frames compressed with the script's codec (zstd-1) rather than radflow's default (bit-shuffled LZ4)
        "radflow ingest CLI, next command, zstd-1": lambda out: radflow_cli(s.dicom, out, {**env, "RADFLOW_RAW_CODEC": "zstd"}),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    marks: dict[str, list[dict[str, float]]] = {k: [] for k in cases}
    sizes: dict[str, int] = {}  # bytes the store holds after the run (frames, tables, metadata)
    try:
        for r in range(args.repeat):
            for name, fn in cases.items():
                if "first command" in name:
                    subprocess.run(stop_kept, env=env, check=True, stdout=subprocess.DEVNULL)
                out = os.path.join(work, f"out-{r}-{len(times[name])}-{abs(hash(name)) % 10**6}.zarr")
                t = time.perf_counter()
                got = fn(out)
                times[name].append(time.perf_counter() - t)
                if isinstance(got, tuple):
                    marks[name].append(got[1])
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
    print(f"{'pipeline':<46} {'wall s':>8} {'MB/s':>8} {'× baseline':>11} {'stored MB':>10}")
    ref = mb / statistics.median(times[base])
    for name, ts in times.items():
        rate = mb / statistics.median(ts)
        print(f"{name:<46} {statistics.median(ts):>8.1f} {rate:>8.1f} {rate / ref:>10.2f}× {sizes.get(name, 0) / 1e6:>10.0f}")
    for name in [n for n in cases if n.startswith("radflow")]:
        print(f"\nstart-up breakdown, {name} (seconds since the command started, median):")
        for phase, _ in PHASES:
            seen = [m[phase] for m in marks[name] if phase in m]
            if seen:
                print(f"  {phase:<24} {statistics.median(seen):6.1f}")
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
