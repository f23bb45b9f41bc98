"""The process flow: runs the registered stages (:mod:`radflow.stages`) over a store, in order.

Each stage is one Prefect task run; its ranges (whole ``images`` shards, one acquisition array,
one volume) are Dask tasks that read their own rows and write their own parts. A range whose
inputs and settings are unchanged since it was recorded done is skipped, so re-running a
finished processing run does nothing, and a run killed at any point resumes where it stopped.
"""

from __future__ import annotations

from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner

from radflow.cluster import connect, dashboard_link
from radflow.config import Settings
from radflow.errors import ConfigError
from radflow.flows._common import (build_settings, compact_tables, markdown_table, performance_report,
                                   publish_artifact, run_logger)
from radflow.flows._flow import flow
from radflow.flows._progress import report as progress
from radflow.flows.runner import _has_gpu_workers, run_stage
from radflow.stages import Request, registered
from radflow.store.handle import open_store
from radflow.store.lock import writer
from radflow.store.urls import normalize
from radflow.store.versions import transaction

__all__ = ["process_flow", "STEPS", "check_canvas_fits", "local_worker_memory"]

#: the registered stages, in run order
STEPS = tuple(registered())


def local_worker_memory(cfg: Settings) -> int:
    """Memory limit of one worker of the local cluster these settings start (0 for a remote cluster)."""
    import os

    import psutil
    from dask.utils import parse_bytes

    if cfg.cluster.address or cfg.cluster.kind != "local":
        return 0
    if cfg.cluster.memory_limit != "auto":
        return int(parse_bytes(cfg.cluster.memory_limit))
    return int(psutil.virtual_memory().total // (cfg.cluster.n_workers or os.cpu_count() or 1))


def check_canvas_fits(cfg: Settings, worker_memory: int | None = None) -> None:
    """``ConfigError`` naming the settings when one processing chunk (``infer_batch`` canvases as float32,
    about three copies while it is resized, enhanced and written) cannot fit a worker's memory."""
    memory = local_worker_memory(cfg) if worker_memory is None else worker_memory
    need = 3 * cfg.infer_batch * cfg.canvas * cfg.canvas * 4
    if memory and need > memory:
        raise ConfigError(f"a chunk of RADFLOW_INFER_BATCH={cfg.infer_batch} canvases of RADFLOW_CANVAS={cfg.canvas} "
                          f"needs about {need / 2**30:.1f} GiB, more than a worker's {memory / 2**30:.1f} GiB; "
                          "use a smaller --canvas or RADFLOW_INFER_BATCH")


@flow(name="radflow-process", task_runner=ThreadPoolTaskRunner(max_workers=4), validate_parameters=False)
def process_flow(
    store: str,
    steps: list[str] | tuple[str, ...] = STEPS,
    model: str | None = None,
    arch: str | None = None,
    canvas: int | None = None,
    cluster: str | None = None,
    storage_options: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    embeddings: bool = False,
    card: dict[str, Any] | None = None,
    report: bool = False,
    labels: str | None = None,
) -> dict[str, Any]:
    """Run processing steps over a store.

    Parameters
    ----------
    store : store URL
    steps : registered stages (built in: ``preprocess``, ``infer``, ``features``, ``reconstruct``, ``volumes``),
        run in registry order; ``reconstruct`` turns ingested k-space and sinograms into ``recon/`` images with
        QC against references; ``volumes`` assembles CT/MR series into ``volumes/<key>``
    model : weights file (TorchScript, ONNX, a state_dict with ``arch``, or a registered format); needed for ``infer``
    arch : torchvision architecture of a state_dict model
    embeddings : also store the penultimate-layer embedding (``embedding_layer`` in the model card)
    card : model-card fields overriding the card beside the weights (labels, activation, input_size ...)
    canvas : side of the ``images`` canvas (default: the existing ``images``, else settings, 1024)
    storage_options : fsspec options for the store (default: ``RADFLOW_STORAGE_OPTIONS``)
    report : also write the HTML QC report under ``<store>/reports/`` (``labels``: a CSV with
        ``sop_instance_uid`` and 0/1 label columns adds ROC curves)
    """
    log = run_logger()
    stages = registered()
    unknown = set(steps) - set(stages)
    if unknown:
        raise ConfigError(f"unknown processing steps {sorted(unknown)}; choose from {', '.join(stages)}")
    cfg = build_settings(dict(settings or {}), cluster)
    storage_options = storage_options if storage_options is not None else (cfg.storage_options or None)
    url = normalize(store)
    st = open_store(url, storage_options)
    # one writer: plans read what is done under the lock; a versioned store commits one version (and a
    # checkpoint after each stage)
    with writer(url, storage_options, command="process", wait_s=cfg.writer_wait_s), \
            transaction(url, storage_options, command="process") as tx:
        if tx is not None:  # read through the transaction: each stage's prepare sees what the one before made
            st = open_store(url, storage_options)
        request = Request(st, cfg, canvas=canvas, model=model, arch=arch, card=card, embeddings=embeddings)
        summary: dict[str, Any] = {"store": url, "frames": int(len(request.frame_index)), "steps": {}}
        if "preprocess" in steps and len(request.frame_index):
            from radflow.stages._images import canvas_of

            check_canvas_fits(cfg.model_copy(update={"canvas": canvas_of(request)}))  # before any array is created
        jobs = []
        for name in (n for n in stages if n in steps):  # prepared in order, before the cluster starts: fail fast
            job = stages[name].prepare(request)
            if job is None:
                log.info("%s: nothing to do in this store (no %s)", name, ", ".join(stages[name].reads))
            else:
                jobs.append(job)
        shown = next((j.options["sha256"] for j in jobs if j.stage.name == "infer"), None)  # the report's model
        if report and shown is None:
            from radflow.report.qc import one_model

            one_model(st.predictions())  # several models' predictions and none named: fail before the run
        if not jobs:
            return summary
        with connect(cfg.cluster) as client, performance_report(url, cfg, storage_options, "process") as report_url:
            link = dashboard_link(client)
            if link:
                log.info("Dask dashboard: %s", link)
                progress("dashboard", url=link)
            if report_url:
                summary["performance_report"] = report_url
            request.gpu = _has_gpu_workers(client)
            for job in jobs:
                summary["steps"][job.stage.name] = run_stage(job, request)
                if tx is not None:
                    tx.summary = {"steps": {k: {"frames": v.get("frames", 0), "ranges": v.get("ranges", 0)}
                                            for k, v in summary["steps"].items()}}
            compacted = compact_tables(client, url, storage_options, cfg.compact_parts)
            if compacted:
                summary["compacted"] = compacted
        table = markdown_table([{"step": k, **v} for k, v in summary["steps"].items()])
        publish_artifact(
            f"# radflow process\n\nStore: `{url}`\n\n{table}",
            key="radflow-process", description="radflow process summary",
        )
        if report:
            from radflow.flows.report import write_report

            summary["report"] = write_report(url, labels=labels, model=shown, storage_options=storage_options,
                                             settings=settings)
            log.info("QC report: %s", summary["report"])
        return summary
