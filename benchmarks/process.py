"""`radflow process` (the whole command, start to exit) against the loop a user would write over the
same store with radflow's own kernels, in one process, in the same run.

Baseline "plain loop" (one Python process, no Prefect, no Dask):
* preprocess+features: read each raw frame from the store, ``prepare_frame`` (modality LUT, resize,
  window, invert, pad) into a float16 canvas array, write it to a Zarr array (chunks of 32 frames),
  ``block_features`` over it, the features to one Parquet file;
* inference: read those canvases back, ``to_model_input`` + ``predict`` per batch of 32 with the same
  model radflow loads, the scores to one Parquet file.

radflow: ``radflow process STORE --steps preprocess,features --canvas C`` and then ``--steps infer
--model M`` as subprocesses, with radflow's defaults (the local Prefect API kept between commands, the
first command's start of it untimed; one local worker with a thread per core for
preprocess, features and infer steps), or ``--workers N`` one-thread workers for both.

"stack alone": what radflow's stack costs before any work: a Prefect flow (on the same kept API) that starts
the same local Dask cluster, has its workers import what radflow's import for the step (torch and
torchvision for inference), and ends, reading no data.

Each side runs in its own process tree; peak memory is the largest sum over the tree, sampled every
50 ms, of each process's resident set (RSS: a shared library's pages count once per process that maps
them) and of its proportional set (PSS: shared pages split between the processes sharing them, what
the tree takes from the machine). Rounds are interleaved; medians printed.

    python benchmarks/process.py [--n 200] [--canvas 512] [--arch resnet18] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PLAIN = r'''
import json, sys, time
import numpy as np, pandas as pd, zarr
import radflow
from radflow.config import Settings
from radflow.stages.preprocess import frame_luts, frame_params
from radflow.store.tables import read_table
from radflow.tasks.features import FEATURES, block_features
from radflow.tasks.preprocess import Enhancements, prepare_frame

store, out, canvas, what, model = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
t0 = time.perf_counter()
cfg = Settings()
st = radflow.open_store(store)
inst = st.instances().sort_values("index").reset_index(drop=True)
if what == "preprocess,features":
    luts = read_table(store, "luts")
    luts = frame_luts(inst, luts) if luts is not None and len(luts) else {}
    raw = st.raw_arrays()
    enh = Enhancements(cfg.denoise, cfg.denoise_size, cfg.enhance, cfg.clahe_clip, cfg.unsharp_amount)
    images = np.zeros((len(inst), canvas, canvas), dtype=cfg.image_dtype)
    for i, row in enumerate(inst.itertuples(index=False)):
        frame = np.asarray(raw[row.raw_array][int(row.raw_position)])
        images[i] = prepare_frame(frame, frame_params(row, luts), canvas, cfg.resize_method, enh).astype(images.dtype)
    zarr.create_array(out + "/images.zarr", data=images, chunks=(32, canvas, canvas), overwrite=True)
    feats = block_features(images, inst[["rows", "cols"]].to_numpy(), canvas=canvas, cutoff=cfg.spectral_cutoff)
    df = pd.DataFrame(feats, columns=list(FEATURES))
    df.insert(0, "index", inst["index"].to_numpy())
    df.to_parquet(out + "/features.parquet")
else:
    from radflow.models.cache import cached_model
    from radflow.models.loading import ModelSpec
    from radflow.tasks.infer import predict, to_model_input

    loaded = cached_model(ModelSpec(model))
    images = zarr.open_array(out + "/images.zarr", mode="r")
    scores = [predict(loaded.module, to_model_input(np.asarray(images[i:i + 32], dtype=np.float32), loaded.card),
                      loaded.card, prepared=True) for i in range(0, images.shape[0], 32)]
    df = pd.DataFrame(np.concatenate(scores), columns=[f"p_{l}" for l in loaded.card.labels])
    df.insert(0, "index", inst["index"].to_numpy())
    df.to_parquet(out + "/predictions.parquet")
print(json.dumps({"frames": len(inst), "seconds": time.perf_counter() - t0}))
'''


#: the stack alone: a Prefect flow (radflow's kept API) that starts the local Dask cluster radflow's command
#: starts and has its workers import what radflow's would for the step, then ends; no data read
STACK = r'''
import importlib, os, sys
from distributed import Client, LocalCluster
from prefect import flow

def imports(names):
    for name in names:
        importlib.import_module(name)

@flow(name="stack-alone")
def alone(modules, workers):
    threads = 1 if workers else os.cpu_count()
    with LocalCluster(n_workers=workers or 1, threads_per_worker=threads, host="127.0.0.1", dashboard_address=":0") as c, \
            Client(c) as client:
        client.gather([client.submit(imports, modules, workers=[w], pure=False) for w in client.scheduler_info()["workers"]])

if __name__ == "__main__":
    alone(sys.argv[1].split(","), int(sys.argv[2]))
'''
#: what radflow's workers import for each step
STEP_MODULES = {"preprocess,features": "radflow.stages.preprocess,radflow.stages.features",
                "infer": "radflow.stages.infer,radflow.tasks.infer,torch,torchvision"}


def _tree_memory(pid: int) -> tuple[int, int]:
    """The process tree's summed resident and proportional set sizes (bytes)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    rss = pss = 0
    for p in procs:
        try:
            m = p.memory_full_info()
        except psutil.Error:
            continue
        rss += m.rss
        pss += getattr(m, "pss", m.rss)
    return rss, pss


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, tuple[int, int], str]:
    """Wall seconds, peak (RSS, PSS) bytes of the process tree, stdout."""
    peak_rss = peak_pss = 0
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_rss, peak_pss
        while not done.is_set():
            rss, pss = _tree_memory(proc.pid)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    secs = time.perf_counter() - t
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} … failed ({proc.returncode}):\n{err[-3000:]}")
    return secs, (peak_rss, peak_pss), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="radiographs (1024² to 2048²)")
    p.add_argument("--canvas", type=int, default=512)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--workers", type=int, default=None, help="one-thread workers (default: radflow's own choice)")
    args = p.parse_args()

    from _common import quiet

    quiet()
    import torch

    import radflow
    from radflow.flows._kept_api import kept_server
    from radflow.models.loading import save_model
    from radflow.synth import write_archive
    from radflow.tasks.infer import ModelCard
    from radflow.tasks.train import build_model

    work = tempfile.mkdtemp(prefix="radflow-bench-process-")
    try:
        archive = write_archive(os.path.join(work, "archive"), args.n, seed=4,
                                sizes=((1024, 1024), (2048, 1536), (2048, 2048)), broken=False)
        base = os.path.join(work, "base.zarr")
        radflow.ingest(archive.dicom, base)  # (this also starts the local Prefect API the commands below find)
        card = ModelCard(name=f"bench-{args.arch}", arch=args.arch, labels=("lesion",), input_size=224,
                         channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        torch.manual_seed(0)
        model = os.path.join(work, "model.pt")
        save_model(build_model(card).eval(), card, model)
        env = dict(os.environ)
        if args.workers:
            env.update(RADFLOW_CLUSTER__N_WORKERS=str(args.workers), RADFLOW_CLUSTER__THREADS_PER_WORKER="1")
        rows: dict[str, list[tuple[float, int, int]]] = {}  # (wall s, peak RSS, peak PSS) per round
        frames = 0
        for r in range(args.repeat):
            store = os.path.join(work, f"r{r}.zarr")
            shutil.copytree(base, store)
            plain_out = os.path.join(work, f"plain{r}")
            os.makedirs(plain_out)
            for steps in ("preprocess,features", "infer"):
                secs, peak, out = run([sys.executable, "-c", PLAIN, store, plain_out, str(args.canvas), steps, model], env)
                frames = json.loads(out.strip().splitlines()[-1])["frames"]
                rows.setdefault(f"plain loop: {steps}", []).append((secs, *peak))
                extra = ["--canvas", str(args.canvas)] if steps != "infer" else ["--model", model]
                secs, peak, _ = run([sys.executable, "-m", "radflow", "process", store, "--steps", steps, *extra], env)
                rows.setdefault(f"radflow process: {steps}", []).append((secs, *peak))
                secs, peak, _ = run([sys.executable, "-c", STACK, STEP_MODULES[steps], str(args.workers or 0)],
                                    {**env, "PREFECT_API_URL": kept_server()["url"]})
                rows.setdefault(f"stack alone: {steps}", []).append((secs, *peak))
            shutil.rmtree(store, ignore_errors=True)
        shape = f"{args.workers} one-thread workers" if args.workers else "radflow's own cluster shape"
        print(f"\n{frames} frames, canvas {args.canvas}, model {args.arch} at 224², {shape}, "
              f"median of {args.repeat} interleaved rounds")
        print(f"{'pipeline':<44} {'wall s':>7} {'frames/s':>9} {'speed ×':>8} {'RSS MB':>7} {'RSS ×':>6} {'PSS MB':>7} {'PSS ×':>6}")

        def medians(name: str) -> list[float]:
            return [statistics.median(column) for column in zip(*rows[name])]

        for steps in ("preprocess,features", "infer"):
            base = medians(f"plain loop: {steps}")
            for who in ("plain loop", "radflow process", "stack alone"):
                got = medians(f"{who}: {steps}")
                print(f"{who + ': ' + steps:<44} {got[0]:>7.1f} {frames / got[0]:>9.1f} {base[0] / got[0]:>7.2f}x "
                      f"{got[1] / 1e6:>7.0f} {got[1] / base[1]:>5.2f}x {got[2] / 1e6:>7.0f} {got[2] / base[2]:>5.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
