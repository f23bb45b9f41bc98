"""The embedded default: synthesize an archive, ingest, preprocess, train, infer, evaluate.

Everything runs on one local Dask cluster under Prefect's local API; no server,
cloud account, GPU or download is needed.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from radflow.cluster import connect, dashboard_link
from radflow.cluster.sealed import submit
from radflow.config import resolve_secret_key
from radflow.errors import ConfigError
from radflow.flows._common import build_settings, run_logger
from radflow.flows._flow import flow
from radflow.flows._progress import report
from radflow.flows.evaluate import evaluate_flow, join_labels
from radflow.flows.ingest import ingest_flow
from radflow.flows.process import process_flow
from radflow.models.loading import save_model
from radflow.store.handle import open_store
from radflow.synth import write_archive
from radflow.tasks.infer import ModelCard
from radflow.tasks.train import train_classifier

__all__ = ["demo_flow", "DEMO_CARD"]

#: The demo's model: a torchvision ResNet-18 trained from scratch on 128² inputs.
DEMO_CARD = ModelCard(
    name="demo-lesion-resnet18", arch="resnet18", labels=("lesion",), activation="sigmoid", input_size=128,
    channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), version="1",
)


@task(name="synthesize-archive", cache_policy=NO_CACHE)
def synth_task(out: str, n: int, seed: int) -> dict[str, Any]:
    from distributed import get_client

    report("stage-start", stage="synthesize", total=None)
    client = get_client()

    def dask_map(fn, *iterables):
        return client.gather([submit(client, fn, *args) for args in zip(*iterables)])

    summary = write_archive(out, n, seed=seed, map_fn=dask_map)
    report("stage-end", stage="synthesize")
    return summary.__dict__


@task(name="train-model", cache_policy=NO_CACHE)
def train_task(store: str, labels_csv: str, model_url: str, epochs: int, seed: int, settings: dict[str, Any] | None) -> dict[str, Any]:
    """Train the demo model on the ``train`` split of ``images``; save weights and card."""
    st = open_store(store)
    inst = st.instances()[["index", "sop_uid"]]
    labels = pd.read_csv(labels_csv)
    joined = join_labels(inst, labels, resolve_secret_key(build_settings(settings)), split="train")
    idx = np.sort(joined["index"].to_numpy())
    y = joined.set_index("index").loc[idx, "lesion"].to_numpy()
    report("stage-start", stage="train", total=None)
    x = np.asarray(st.images.oindex[idx], dtype=np.float32) if len(idx) else np.zeros((0, 1, 1), np.float32)
    t0 = time.perf_counter()
    model = train_classifier(x, y, DEMO_CARD, epochs=epochs, seed=seed)
    sha = save_model(model, DEMO_CARD, model_url)
    report("stage-end", stage="train")
    return {"train_images": int(len(idx)), "train_positives": int(y.sum()), "seconds": time.perf_counter() - t0, "sha256": sha}


def fresh_folder(out: str) -> str:
    """``out``, or the first free ``out.2``, ``out.3`` … when ``out`` holds an earlier demo: a second demo
    never mixes its archive, model and predictions into the first one's store."""
    if not os.path.exists(os.path.join(out, "store.zarr")):
        return out
    k = 2
    while os.path.exists(f"{out}.{k}"):
        k += 1
    run_logger().warning("%s holds an earlier demo; this one writes to %s.%d", out, out, k)
    from radflow.flows._progress import report as progress

    progress("note", text=f"{out} holds an earlier demo; this one writes to {out}.{k}")
    return f"{out}.{k}"


@flow(name="radflow-demo", validate_parameters=False)
def demo_flow(out: str, n: int = 200, seed: int = 0, canvas: int = 256, epochs: int = 16, cluster: str | None = None) -> dict[str, Any]:
    """Run radflow end to end on a synthetic archive under ``out``.

    Returns the summary: ingest counts and throughput, processing rates, training and
    the held-out AUC, and where the store and tables are.
    """
    log = run_logger()
    out = fresh_folder(os.path.abspath(out))
    archive, store = os.path.join(out, "archive"), os.path.join(out, "store.zarr")
    model_url = os.path.join(out, "model", "lesion-resnet18.pt")
    cfg = build_settings({"canvas": canvas}, cluster)
    t0 = time.perf_counter()
    with connect(cfg.cluster) as client:
        link = dashboard_link(client)
        if link:
            log.info("Dask dashboard: %s", link)
            report("dashboard", url=link)
        address = client.scheduler.address
        synth = synth_task(archive, n, seed)
        ingest = ingest_flow(synth["dicom"], store, cluster=address)
        pre = process_flow(store, steps=["preprocess"], canvas=canvas, cluster=address)
        train = train_task(store, synth["labels"], model_url, epochs, seed, None)
        post = process_flow(store, steps=["infer", "features"], model=model_url, cluster=address, report=True,
                            labels=synth["labels"])
        try:
            evaluation, note = evaluate_flow(store, synth["labels"], split="test")["evaluation"], ""
        except ConfigError as exc:  # a small demo's held-out split can hold one class only: no AUC to give
            evaluation, note = [], str(exc)
            run_logger().warning("held-out evaluation skipped: %s", note)
    return {
        "archive": archive,
        "store": store,
        "tables": os.path.join(store, "tables"),
        "report": post.get("report"),
        "model": model_url,
        "synth": synth,
        "ingest": ingest,
        "process": {**pre["steps"], **post["steps"]},
        "train": train,
        "evaluation": evaluation,
        "evaluation_note": note,
        "seconds": time.perf_counter() - t0,
    }
