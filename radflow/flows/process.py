"""The process flow: ``raw`` → ``images`` (preprocess) → ``predictions`` (infer) and ``features``.

Each stage is split into ranges of whole ``images`` shards; one Prefect task per
range builds a Dask graph with ``dask.array.map_blocks`` over the range's chunks and
computes it on the cluster. A range whose frames are unchanged since it was last
done is skipped, so re-running a finished processing run does nothing.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote  # large inputs: Prefect would visit every element

from radflow.cluster import connect, dashboard_link
from radflow.errors import ConfigError, ModelError
from radflow.flows import _blocks
from radflow.flows._common import build_settings, markdown_table, performance_report, run_logger
from radflow.flows._progress import report as progress
from radflow.store import layout
from radflow.ingest.acquisitions import KINDS, kind_of_array, reference_path
from radflow.models.loading import ModelSpec, load_model
from radflow.store.handle import open_store
from radflow.store.tables import write_part
from radflow.store.volumes import write_volume
from radflow.store.urls import normalize, zarr_store
from radflow.tasks.features import FEATURES
from radflow.tasks.preprocess import Enhancements
from radflow.tasks.volumes import VolumePlan, plan_volumes

__all__ = ["process_flow", "STEPS", "frame_params", "plan_ranges"]

STEPS = ("preprocess", "infer", "features", "reconstruct", "volumes")


def frame_params(instances: pd.DataFrame, lo: int, hi: int, raw_names: list[str]) -> np.ndarray:
    """Per-index preprocessing parameters for ``[lo, hi)``: ``(hi - lo, len(PARAM_COLUMNS))`` float64."""
    cols = _blocks.PARAM_COLUMNS
    out = np.zeros((hi - lo, len(cols)))
    sel = instances[(instances["index"] >= lo) & (instances["index"] < hi)]
    if sel.empty:
        return out
    pos = sel["index"].to_numpy() - lo
    name_id = {n: i for i, n in enumerate(raw_names)}
    values = {
        "valid": np.ones(len(sel)),
        "index": sel["index"].to_numpy(dtype=float),
        "raw_id": sel["raw_array"].map(name_id).to_numpy(dtype=float),
        "raw_position": sel["raw_position"].to_numpy(dtype=float),
        "rows": sel["rows"].to_numpy(dtype=float),
        "cols": sel["cols"].to_numpy(dtype=float),
        "rescale_slope": sel["rescale_slope"].fillna(1.0).to_numpy(dtype=float),
        "rescale_intercept": sel["rescale_intercept"].fillna(0.0).to_numpy(dtype=float),
        "window_center": sel["window_center"].to_numpy(dtype=float),
        "window_width": sel["window_width"].to_numpy(dtype=float),
        "monochrome1": (sel["photometric"] == "MONOCHROME1").to_numpy(dtype=float),
    }
    for j, c in enumerate(cols):
        out[pos, j] = values[c]
    return out


def frame_luts(instances: pd.DataFrame, luts: pd.DataFrame) -> dict[int, dict[str, Any]]:
    """Global frame index → LUT-sequence parameters for :class:`~radflow.tasks.preprocess.FrameParams`."""
    if luts.empty:
        return {}
    by_sop: dict[str, dict[str, Any]] = {}
    for row in luts.itertuples(index=False):
        data = np.asarray(row.data, dtype=np.float32)
        value = (int(row.first_mapped), data) if row.kind == "modality" else (int(row.first_mapped), int(row.bits), data)
        by_sop.setdefault(row.sop_uid, {})[f"{row.kind}_lut"] = value
    sel = instances[instances["sop_uid"].isin(by_sop)]
    return {int(i): by_sop[s] for i, s in zip(sel["index"], sel["sop_uid"])}


def plan_ranges(n: int, shard_frames: int, frames_per_task: int) -> list[tuple[int, int]]:
    """Split ``[0, n)`` into ranges of whole shards of about ``frames_per_task`` frames."""
    span = max(shard_frames, (frames_per_task // shard_frames) * shard_frames)
    return [(lo, min(n, lo + span)) for lo in range(0, n, span)]


def _images_da(images, lo: int, hi: int):
    import dask.array as da

    return da.from_zarr(images)[lo:hi]


@task(name="preprocess-range", cache_policy=NO_CACHE, retries=1)
def preprocess_task(store: str, lo: int, hi: int, params: np.ndarray, raw_names: list[str], canvas: int, method: str,
                    enhancements: Enhancements, luts: dict[int, dict[str, Any]],
                    storage_options: dict[str, Any] | None) -> int:
    import dask.array as da

    root = layout.open_root(zarr_store(store, storage_options), mode="r+")
    images = root["images"].with_config({"write_empty_chunks": True})
    shard = images.shards[0]
    p = da.from_array(params[:, None, :], chunks=(shard, 1, params.shape[1]))
    imgs = p.map_blocks(
        _blocks.preprocess_block,
        store_url=store, options_json=json.dumps(storage_options or {}), raw_names=tuple(raw_names), canvas=canvas,
        method=method, out_dtype=images.dtype.name, enhancements=enhancements, luts=luts,
        chunks=(p.chunks[0], (canvas,), (canvas,)), dtype=images.dtype, meta=np.empty((0, 0, 0), images.dtype),
    )
    da.store(imgs, images, regions=(slice(lo, hi), slice(None), slice(None)), lock=False)
    return int(params[:, 0].sum())


@task(name="features-range", cache_policy=NO_CACHE, retries=1)
def features_task(store: str, lo: int, hi: int, geometry: np.ndarray, canvas: int, cutoff: float,
                  storage_options: dict[str, Any] | None) -> int:
    import dask.array as da

    root = layout.open_root(zarr_store(store, storage_options), mode="r")
    imgs = _images_da(root["images"], lo, hi)
    rows = da.from_array(geometry[:, 0].reshape(-1, 1, 1), chunks=(imgs.chunks[0], 1, 1))
    cols = da.from_array(geometry[:, 1].reshape(-1, 1, 1), chunks=(imgs.chunks[0], 1, 1))
    feats = da.map_blocks(
        _blocks.features_block, imgs, rows, cols, canvas=canvas, cutoff=cutoff, drop_axis=[2],
        chunks=(imgs.chunks[0], (len(FEATURES),)), dtype=np.float64, meta=np.empty((0, 0), np.float64),
    ).compute()
    valid = geometry[:, 0] > 0
    df = pd.DataFrame(feats[valid], columns=list(FEATURES))
    df.insert(0, "index", np.arange(lo, hi)[valid])
    df.insert(0, "kind", "image")
    write_part(store, "features", f"{lo:012d}", df, storage_options=storage_options)
    return int(valid.sum())


@task(name="reconstruct-array", cache_policy=NO_CACHE, retries=1)
def reconstruct_task(store: str, array: str, rows: pd.DataFrame, storage_options: dict[str, Any] | None) -> int:
    """Reconstruct every slice of one k-space or sinogram array into ``recon/<name>``; QC rows into ``features``."""
    import dask
    import dask.array as da

    kind = kind_of_array(array)
    root = layout.open_root(zarr_store(store, storage_options), mode="r+")
    src = root[array]
    name = array.split("/", 1)[1]
    ref = root[reference_path(array)] if reference_path(array) in root else None
    fps = int(src.attrs["frames_per_shard"])
    sd = da.from_zarr(src).rechunk((fps,) + (-1,) * (src.ndim - 1))
    if kind.kind == "kspace":
        out_shape = tuple(ref.shape[1:]) if ref is not None else tuple(src.shape[2:])
        img = sd.map_blocks(_blocks.recon_block, crop=out_shape if ref is not None else None, drop_axis=[1],
                            chunks=(sd.chunks[0], (out_shape[0],), (out_shape[1],)), dtype=np.float32,
                            meta=np.empty((0, 0, 0), np.float32))
    else:
        size = int(ref.shape[1]) if ref is not None else int(src.shape[1])
        out_shape = (size, size)
        img = sd.map_blocks(_blocks.fbp_block, theta=tuple(src.attrs["theta"]), output_size=size,
                            chunks=(sd.chunks[0], (size,), (size,)), dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))
    recon = layout.ensure_frames_array(root, f"recon/{name}", dtype="float32", shape=out_shape, fps=fps, zstd_level=1,
                                       kind="recon", dims=("slice", "y", "x"))
    if recon.shape[0] < src.shape[0]:
        recon.resize((src.shape[0], *out_shape))
    stored = da.store(img, recon.with_config({"write_empty_chunks": True}), lock=False, compute=False)
    if ref is None:
        dask.compute(stored)
        return len(rows)
    refd = da.from_zarr(ref).rechunk((fps, -1, -1))
    qc = da.map_blocks(_blocks.qc_block, img, refd, drop_axis=[2], chunks=(img.chunks[0], (3,)), dtype=np.float64,
                       meta=np.empty((0, 0), np.float64))
    _, values = dask.compute(stored, qc)
    pos = rows["position"].to_numpy()
    df = rows[[kind.index_col, "source", "slice"]].reset_index(drop=True).copy()
    df.insert(0, "kind", kind.kind)
    df["nmse"], df["psnr"], df["ssim"] = values[pos, 0], values[pos, 1], values[pos, 2]
    write_part(store, "features", f"{kind.kind}-{name}", df, storage_options=storage_options)
    return len(rows)


def _reconstruct(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Run ``reconstruct`` over every acquisition array whose slices changed since it was last done."""
    st = open_store(url, storage_options)
    groups: dict[str, pd.DataFrame] = {}
    for kind in KINDS.values():
        table = st.table(kind.table)
        if not table.empty:
            groups.update({a: g for a, g in table.groupby("array")})
    t0 = time.perf_counter()
    frames = 0
    if groups:
        root = layout.open_root(zarr_store(url, storage_options), mode="r+")
        todo = [a for a, g in groups.items() if dict(root[a].attrs).get("reconstructed") != len(g)]
        progress("stage-start", stage="reconstruct", total=sum(len(groups[a]) for a in todo))
        futures = {reconstruct_task.submit(url, a, quote(groups[a]), storage_options): a for a in todo}
        for fut in as_completed(list(futures)):
            n = fut.result()
            root[futures[fut]].attrs["reconstructed"] = n
            frames += n
            progress("stage-advance", stage="reconstruct", advance=n)
        progress("stage-end", stage="reconstruct")
    seconds = time.perf_counter() - t0
    return {"frames": frames, "seconds": seconds, "images_per_s": frames / seconds if seconds else 0.0}


@task(name="assemble-volume", cache_policy=NO_CACHE, retries=1)
def volume_task(store: str, plan: VolumePlan, inst: pd.DataFrame, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    from distributed import get_client

    return get_client().submit(write_volume, store, plan, inst, storage_options=storage_options, pure=False).result()


def _volumes(url: str, inst: pd.DataFrame, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Assemble every CT/MR series into ``volumes/<key>``; one ``volumes`` table row per volume."""
    t0 = time.perf_counter()
    plans = plan_volumes(inst)
    progress("stage-start", stage="volumes", total=len(plans))
    cols = ["index", "raw_array", "raw_position", "rows", "cols"]
    futures = [volume_task.submit(url, quote(p), quote(inst[inst["index"].isin(p.indices)][cols]), storage_options) for p in plans]
    records = []
    for fut in as_completed(futures):
        records.append(fut.result())
        progress("stage-advance", stage="volumes", advance=1)
    progress("stage-end", stage="volumes")
    if records:
        write_part(url, "volumes", "all", pd.DataFrame(records).sort_values("key"), storage_options=storage_options)
    seconds = time.perf_counter() - t0
    return {"frames": sum(r["slices"] for r in records), "volumes": len(records), "seconds": seconds,
            "images_per_s": sum(r["slices"] for r in records) / seconds if seconds else 0.0}


@dataclasses.dataclass(frozen=True)
class InferPlan:
    """What every inference range needs: the model reference and the output layout."""

    spec: ModelSpec
    labels: tuple[str, ...]
    model_name: str
    sha256: str
    embedding_dim: int = 0
    autocast: str | None = None
    gpu: bool = False


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


def plan_inference(spec: ModelSpec, canvas: int, *, embeddings: bool, autocast: str | None, gpu: bool) -> InferPlan:
    """Load the model once here (fail fast before cluster time) and probe its output layout."""
    from radflow.tasks.infer import predict

    loaded = load_model(spec)
    try:
        probe = predict(loaded.module, np.zeros((2, canvas, canvas), np.float32), loaded.card, embeddings=embeddings)
    except ValueError as exc:  # the output contract (tasks.infer.check_output)
        raise ModelError(f"{spec.url}: {exc}") from None
    scores = probe.scores if embeddings else probe
    if not np.isfinite(scores).any():
        raise ModelError(f"{spec.url}: the model returned NaN or infinity for every output on a blank canvas")
    n_out = scores.shape[1]
    labels = tuple(loaded.card.labels) or tuple(str(i) for i in range(n_out))
    if len(labels) != n_out:
        raise ConfigError(f"model card names {len(labels)} labels but the model has {n_out} outputs")
    return InferPlan(spec, labels, loaded.card.name, loaded.sha256,
                     probe.embeddings.shape[1] if embeddings else 0, autocast, gpu)


@task(name="infer-range", cache_policy=NO_CACHE, retries=1)
def infer_task(store: str, lo: int, hi: int, keys: pd.DataFrame, plan: InferPlan,
               storage_options: dict[str, Any] | None) -> int:
    import dask

    root = layout.open_root(zarr_store(store, storage_options), mode="r")
    imgs = _images_da(root["images"], lo, hi)
    width = len(plan.labels) + plan.embedding_dim
    with dask.annotate(resources={"GPU": 1} if plan.gpu else {}):
        out = imgs.map_blocks(
            _blocks.infer_block, spec=plan.spec, autocast=plan.autocast, embedding_dim=plan.embedding_dim,
            drop_axis=[2], chunks=(imgs.chunks[0], (width,)), dtype=np.float32, meta=np.empty((0, 0), np.float32),
        )
    scores = out.compute(optimize_graph=not plan.gpu)
    idx = keys["index"].to_numpy() - lo
    df = keys.reset_index(drop=True).copy()
    for j, label in enumerate(plan.labels):
        df[f"p_{label}"] = scores[idx, j]
    nonfinite = ~np.isfinite(scores[idx, : len(plan.labels)]).all(axis=1)
    df["nonfinite"] = nonfinite  # a row with a NaN or infinite score is kept and flagged
    if nonfinite.any():
        run_logger().warning("%d of %d frames in [%d, %d) have NaN or infinite scores (flagged in predictions.nonfinite)",
                             int(nonfinite.sum()), len(df), lo, hi)
    df["model"] = plan.model_name
    df["model_sha256"] = plan.sha256
    table = pa.Table.from_pandas(df, preserve_index=False)
    if plan.embedding_dim:  # a fixed-size list column: (n, embedding_dim) float32
        emb = np.ascontiguousarray(scores[idx, len(plan.labels):], dtype=np.float32)
        values = pa.array(emb.reshape(-1), type=pa.float32())
        table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(values, plan.embedding_dim))
    write_part(store, "predictions", f"{plan.sha256[:12]}-{lo:012d}", table, storage_options=storage_options)
    return len(df)


def _has_gpu_workers(client) -> bool:
    return any("GPU" in (w.get("resources") or {}) for w in client.scheduler_info().get("workers", {}).values())


def _run_stage(name: str, ranges: list[tuple[int, int]], counts: dict[int, int], done: dict[str, int], submit) -> int:
    """Submit ``submit(lo, hi)`` for ranges not done with the same frame count; return frames processed."""
    todo = [(lo, hi) for lo, hi in ranges if counts.get(lo, 0) and done.get(str(lo)) != counts[lo]]
    progress("stage-start", stage=name, total=sum(counts[lo] for lo, _ in todo))
    futures = {submit(lo, hi): lo for lo, hi in todo}
    frames = 0
    for fut in as_completed(list(futures)):
        n = fut.result()
        done[str(futures[fut])] = n
        frames += n
        progress("stage-advance", stage=name, advance=n)
    progress("stage-end", stage=name)
    return frames


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
    steps : any of ``preprocess``, ``infer``, ``features``, ``reconstruct``, ``volumes`` (run in that order;
        ``reconstruct`` turns ingested k-space and sinograms into ``recon/`` images with QC against references;
        ``volumes`` assembles CT/MR series into ``volumes/<key>``)
    model : weights file (TorchScript, ONNX, a state_dict with ``arch``, or a registered format); needed for ``infer``
    arch : torchvision architecture of a state_dict model
    embeddings : also store the penultimate-layer embedding (``embedding_layer`` in the model card)
    card : model-card fields overriding the card beside the weights (labels, activation, input_size ...)
    canvas : side of the ``images`` canvas (default: settings, 1024)
    report : also write the HTML QC report under ``<store>/reports/`` (``labels``: a CSV with
        ``sop_instance_uid`` and 0/1 label columns adds ROC curves)
    """
    log = run_logger()
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise ConfigError(f"unknown processing steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    overrides = dict(settings or {})
    if canvas is not None:
        overrides["canvas"] = canvas
    cfg = build_settings(overrides, cluster)
    url = normalize(store)
    st = open_store(url, storage_options)
    inst = st.instances()
    summary: dict[str, Any] = {"store": url, "frames": int(len(inst)), "steps": {}}
    image_steps = [s for s in STEPS if s in steps and s not in ("reconstruct", "volumes")]
    if inst.empty or not image_steps:
        if image_steps:
            log.info("store has no image frames; skipping %s", ", ".join(image_steps))
        with connect(cfg.cluster):
            if "reconstruct" in steps:
                summary["steps"]["reconstruct"] = _reconstruct(url, storage_options)
            if "volumes" in steps and not inst.empty:
                summary["steps"]["volumes"] = _volumes(url, inst, storage_options)
        return summary
    n = int(inst["index"].max()) + 1
    root = layout.open_root(zarr_store(url, storage_options), mode="r+")
    if "images" in root and canvas is None:
        cfg = cfg.model_copy(update={"canvas": int(root["images"].shape[1])})
    check_canvas_fits(cfg)  # before any array is created
    chunk = cfg.infer_batch
    chunk_bytes = chunk * cfg.canvas * cfg.canvas * np.dtype(cfg.image_dtype).itemsize
    images = layout.ensure_images_array(
        root, n=n, canvas=cfg.canvas, dtype=cfg.image_dtype, chunk_frames=chunk,
        shard_frames=chunk * max(1, (cfg.shard_target_mib * 2**20) // chunk_bytes),
    )
    shard = images.shards[0]
    ranges = plan_ranges(n, shard, cfg.stage_frames_per_task)
    counts = {lo: int(((inst["index"] >= lo) & (inst["index"] < hi)).sum()) for lo, hi in ranges}
    stages = dict(images.attrs.get("stages") or {})
    enhancements = Enhancements(cfg.denoise, cfg.denoise_size, cfg.enhance, cfg.clahe_clip, cfg.unsharp_amount)
    recipe = {"method": cfg.resize_method, **dataclasses.asdict(enhancements)}
    previous = images.attrs.get("recipe") or ({"method": "area", **dataclasses.asdict(Enhancements())} if stages else None)
    if "preprocess" in steps and previous not in (None, recipe):
        log.info("preprocessing settings changed; every range is preprocessed again")
        stages = {}
    raw_names = sorted(st.raw_arrays())
    geometry = np.zeros((n, 2), dtype=np.int64)
    geometry[inst["index"].to_numpy()] = inst[["rows", "cols"]].to_numpy()
    ordered = [s for s in STEPS if s in steps]
    luts = frame_luts(inst, st.table("luts")) if "preprocess" in steps else {}
    with connect(cfg.cluster) as client, performance_report(url, cfg, storage_options, "process") as report_url:
        link = dashboard_link(client)
        if link:
            log.info("Dask dashboard: %s", link)
            progress("dashboard", url=link)
        if report_url:
            summary["performance_report"] = report_url
        for step in ordered:
            t0 = time.perf_counter()
            if step == "reconstruct":
                summary["steps"][step] = _reconstruct(url, storage_options)
                continue
            if step == "volumes":
                summary["steps"][step] = _volumes(url, inst, storage_options)
                continue
            if step == "preprocess":
                done = stages.setdefault("preprocess", {})
                frames = _run_stage(step, ranges, counts, done, lambda lo, hi: preprocess_task.submit(
                    url, lo, hi, quote(frame_params(inst, lo, hi, raw_names)), raw_names, cfg.canvas, cfg.resize_method,
                    enhancements, quote({i: v for i, v in luts.items() if lo <= i < hi}), storage_options))
                # a re-preprocessed range invalidates what was derived from it
                for key, val in stages.items():
                    if key != "preprocess":
                        for lo in list(val):
                            if done.get(lo) != val[lo]:
                                val.pop(lo)
            elif step == "features":
                done = stages.setdefault("features", {})
                frames = _run_stage(step, ranges, counts, done, lambda lo, hi: features_task.submit(
                    url, lo, hi, geometry[lo:hi], cfg.canvas, cfg.spectral_cutoff, storage_options))
            else:
                if not model:
                    raise ConfigError("step 'infer' needs a model: --model PATH (TorchScript, or a state_dict with --arch)")
                spec = ModelSpec(normalize(model), arch=arch or "", card=card, storage_options=storage_options)
                plan = plan_inference(spec, cfg.canvas, embeddings=embeddings, gpu=_has_gpu_workers(client),
                                      autocast=None if cfg.infer_autocast == "none" else cfg.infer_autocast)
                from radflow.models.cache import ModelCache

                client.register_plugin(ModelCache(), name=ModelCache.name)
                keys = inst[["index", "patient_key", "study_key", "sop_uid"]]
                done = stages.setdefault(f"infer-{plan.sha256[:12]}{'-emb' if embeddings else ''}", {})
                frames = _run_stage(step, ranges, counts, done, lambda lo, hi: infer_task.submit(
                    url, lo, hi, quote(keys[(keys["index"] >= lo) & (keys["index"] < hi)]), plan, storage_options))
            seconds = time.perf_counter() - t0
            images.attrs["stages"] = stages
            if step == "preprocess":
                images.attrs["recipe"] = recipe
            summary["steps"][step] = {"frames": frames, "seconds": seconds, "images_per_s": frames / seconds if seconds else 0.0}
            log.info("%s: %d frames in %.1f s", step, frames, seconds)
    table = markdown_table([{"step": k, **v} for k, v in summary["steps"].items()])
    create_markdown_artifact(
        f"# radflow process\n\nStore: `{url}`\n\n{table}",
        key="radflow-process", description="radflow process summary",
    )
    if report:
        from radflow.flows.report import write_report

        summary["report"] = write_report(url, labels=labels, storage_options=storage_options, settings=settings)
        log.info("QC report: %s", summary["report"])
    return summary
