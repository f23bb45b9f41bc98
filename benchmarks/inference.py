"""Inference throughput: radflow's whole inference stage vs the model's pure forward pass, in one run.

(a) baseline "pure forward": the model on in-memory, already-normalized float32 tensors
    at the chosen batch size, all cores to torch, ``inference_mode``, the same memory
    format (channels-last) that radflow uses.
(b) radflow: ``radflow.process(store, steps=["infer"])`` over a store holding the same
    images (read from Zarr, decompressed, normalized, batched by ``images`` chunks on a
    local Dask cluster, model loaded once per worker, predictions written to Parquet).

    python benchmarks/inference.py [--n 256] [--arch resnet18] [--size 224] [--batch 32] [--workers 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3, help="timed runs of the radflow stage (best is reported)")
    args = p.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

    import numpy as np
    import torch

    import radflow
    from radflow.cluster import connect
    from radflow.config import ClusterSettings
    from radflow.models.loading import save_model
    from radflow.synth import write_archive
    from radflow.tasks.infer import ModelCard, to_model_input
    from radflow.tasks.train import build_model

    work = tempfile.mkdtemp(prefix="radflow-infer-")
    cores = os.cpu_count() or 1
    try:
        card = ModelCard(name=f"bench-{args.arch}", arch=args.arch, labels=("lesion",), input_size=args.size,
                         channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        torch.manual_seed(0)
        model = build_model(card).eval()
        weights = os.path.join(work, "model.pt")
        save_model(model, card, weights)
        warm = os.path.join(work, "warmup.pt")  # other weights (another sha256), so timed runs are not skipped
        save_model(build_model(card), card, warm)
        repeats = []
        for r in range(args.repeat):
            path = os.path.join(work, f"repeat{r}.pt")
            save_model(build_model(card), card, path)
            repeats.append(path)
        archive = write_archive(os.path.join(work, "archive"), args.n, seed=3, sizes=((512, 512), (600, 480)), broken=False)
        store = os.path.join(work, "store.zarr")
        settings = {"infer_batch": args.batch, "cluster": {"n_workers": args.workers, "threads_per_worker": cores // args.workers}}
        with connect(ClusterSettings(n_workers=args.workers, threads_per_worker=max(1, cores // args.workers))):
            radflow.ingest(archive.dicom, store)
            radflow.process(store, steps=["preprocess"], canvas=args.size, settings=settings)
            images = np.asarray(radflow.open_store(store).images[:], dtype=np.float32)

            # (a) pure forward pass on in-memory tensors, in the memory format radflow uses for this model
            torch.set_num_threads(cores)
            if card.channels_last:
                model = model.to(memory_format=torch.channels_last)
            batches = [to_model_input(images[i : i + args.batch], card) for i in range(0, len(images), args.batch)]
            with torch.inference_mode():
                model(batches[0])  # warm-up
                t = time.perf_counter()
                for b in batches:
                    model(b)
                pure = len(images) / (time.perf_counter() - t)

            # (b) radflow's inference stage over the store (first call warms up Prefect and the workers' model cache)
            radflow.process(store, steps=["infer"], model=warm, settings=settings)
            stage = stage_only = 0.0
            for path in repeats:  # best of --repeat runs, each with fresh weights
                t = time.perf_counter()
                out = radflow.process(store, steps=["infer"], model=path, settings=settings)
                frames = out["steps"]["infer"]["frames"]
                stage = max(stage, frames / (time.perf_counter() - t))
                stage_only = max(stage_only, frames / out["steps"]["infer"]["seconds"])
        print()
        print(f"model {args.arch} at {args.size}², batch {args.batch}, {len(images)} images, {cores} cores, "
              f"{args.workers} worker(s)")
        print(f"{'pipeline':<52} {'images/s':>9}")
        print(f"{'(a) pure forward pass (baseline), in-memory tensors':<52} {pure:>9.1f}")
        print(f"{'(b) radflow inference stage (Zarr → model → Parquet)':<52} {stage:>9.1f}")
        print(f"{'    of which the infer step alone (after flow set-up)':<52} {stage_only:>9.1f}")
        print(f"{'ratio (b)/(a)':<52} {stage / pure:>9.2f}")
        print(f"(b) is the wall time of radflow.process(steps=['infer']) including Prefect and Dask scheduling, "
              f"best of {args.repeat}.")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
