"""Stage ``infer``: batched model inference over ``images`` into ``predictions`` parts
``<model hash>-<lo>`` (model name, version and weights hash on every row; NaN or infinite
scores kept and flagged in ``nonfinite``). The model is loaded once per worker (:mod:`radflow.models.cache`)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterable

import numpy as np
import pyarrow as pa

from radflow.errors import ConfigError, ModelError
from radflow.models.loading import ModelSpec, weights_sha256
from radflow.stages._images import canvas_of, image_ranges, stored_chunks, unit_float
from radflow.stages.base import Job, Range, Request, Stage, instance_rows, register
from radflow.store.tables import write_part
from radflow.store.urls import normalize

__all__ = ["Infer", "InferPlan", "plan_inference", "infer_blocks"]

log = logging.getLogger("radflow.stages.infer")


@dataclasses.dataclass(frozen=True)
class InferPlan:
    """What every inference range needs: the model reference and the output layout."""

    spec: ModelSpec
    labels: tuple[str, ...]
    model_name: str
    sha256: str
    embedding_dim: int = 0
    autocast: str | None = None


def plan_inference(spec: ModelSpec, canvas: int, *, embeddings: bool, autocast: str | None) -> InferPlan:
    """Load the model into this worker's cache (where the ranges find it) and probe its output layout."""
    from radflow.models.cache import cached_model
    from radflow.tasks.infer import predict

    loaded = cached_model(spec)
    blank = np.zeros((2, canvas, canvas), np.float32)
    try:
        probe = loaded.runner.submit(lambda: predict(loaded.module, blank, loaded.card, embeddings=embeddings,
                                                     device=getattr(loaded, "device", None))).result()
    except ValueError as exc:  # the output contract (tasks.infer.check_output)
        raise ModelError(f"{spec.url}: {exc}") from None
    scores = probe.scores if embeddings else probe
    if not np.isfinite(scores).any():
        raise ModelError(f"{spec.url}: the model returned NaN or infinity for every output on a blank canvas")
    n_out = scores.shape[1]
    labels = tuple(loaded.card.labels) or tuple(str(i) for i in range(n_out))
    if len(labels) != n_out:
        raise ConfigError(f"model card names {len(labels)} labels but the model has {n_out} outputs")
    return InferPlan(spec, labels, loaded.card.name, loaded.sha256, probe.embeddings.shape[1] if embeddings else 0,
                     autocast)


def infer_blocks(blocks: Iterable[np.ndarray], *, spec: ModelSpec, autocast: str | None = None, embedding_dim: int = 0,
                 micro_batch: int | None = None) -> np.ndarray:
    """Model outputs for a sequence of ``(n, H, W)`` float canvas blocks in 0 … 1 (model loaded once per
    worker), concatenated: ``(sum n, outputs + embedding_dim)`` float32, scores then the embedding when asked.

    The blocks are taken (read from the store, when ``blocks`` reads them) and made into model input on
    this, the task's, thread while the model's own thread (:mod:`radflow.models.cache`) runs the forward
    pass of the block before; one task thread of the worker at a time (another task's thread waits):
    two blocks read and converted at once beside a forward pass were the inference command's peak (at
    canvas 1024, 200 radiographs: the process tree at 2,077 MB, 1,959 MB one at a time, at the same speed)."""
    from radflow.models.cache import cached_model
    from radflow.tasks.infer import predict, to_model_input

    model = cached_model(spec)
    device = getattr(model, "device", None)
    kw = {"autocast": autocast, "micro_batch": micro_batch, "prepared": True, "device": device}

    def run(x) -> np.ndarray:
        if embedding_dim:
            out = predict(model.module, x, model.card, embeddings=True, **kw)
            return np.concatenate([out.scores, out.embeddings], axis=1).astype(np.float32)
        return predict(model.module, x, model.card, **kw)

    outs: list[np.ndarray] = []
    running = None
    blocks = iter(blocks)
    while True:
        with model.feeding:  # one task thread of the worker at a time reads a block and makes it model input
            block = next(blocks, None)
            if block is None:
                break
            x = to_model_input(block, model.card)
            del block
        if x.device.type == "cpu" and device not in (None, "cpu"):
            x = x.pin_memory()
        submitted = model.runner.submit(run, x)
        del x
        if running is not None:
            outs.append(running.result())
        running = submitted
    if running is not None:
        outs.append(running.result())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


class Infer(Stage):
    name = "infer"
    order = 20
    reads = ("images", "instances")
    writes = ("predictions",)
    description = "model scores (and embeddings) per frame"
    bind_on_every_worker = True  # each worker loads the model while the others do

    def prepare(self, request: Request) -> Job | None:
        if not len(request.frame_index):
            return None
        if not request.model:
            raise ConfigError("step 'infer' needs a model: --model PATH (TorchScript, or a state_dict with --arch)")
        cfg = request.settings
        spec = ModelSpec(normalize(request.model), arch=request.arch or "", card=request.card,
                         storage_options=request.store.storage_options or None)
        from radflow.models.cache import ModelCache

        sha = weights_sha256(spec)  # the model is loaded and probed on a worker (bind): no torch in the flow
        scope = f"infer-{sha[:12]}{'-emb' if request.embeddings else ''}"
        ask = {"spec": spec, "sha256": sha, "canvas": canvas_of(request), "embeddings": request.embeddings,
               "autocast": None if cfg.infer_autocast == "none" else cfg.infer_autocast}
        return Job(self, request.store.url, request.store.storage_options, scope, scope, ask, after="preprocess",
                   gpu=True, plugins=(ModelCache(),))

    def bind(self, job: Job, request: Request, on_worker) -> Job:
        ask = job.options
        plan = on_worker(plan_inference, ask["spec"], ask["canvas"], embeddings=ask["embeddings"], autocast=ask["autocast"])
        return dataclasses.replace(job, options=plan)

    def plan(self, job: Job, request: Request) -> list[Range]:
        return image_ranges(request)

    def run(self, job: Job, rng: Range) -> int:
        plan: InferPlan = job.options
        keys = instance_rows(job, rng, ["index", "patient_key", "study_key", "sop_uid"])
        # float canvases go to the model input as stored (converted there a few frames at a time); uint16 scaled first
        blocks = (unit_float(b) if b.dtype == np.uint16 else b for _, b in stored_chunks(job, rng))
        scores = infer_blocks(blocks, spec=plan.spec, autocast=plan.autocast, embedding_dim=plan.embedding_dim)
        idx = keys["index"].to_numpy() - rng.lo
        df = keys.copy()
        for j, label in enumerate(plan.labels):
            df[f"p_{label}"] = scores[idx, j]
        nonfinite = ~np.isfinite(scores[idx, : len(plan.labels)]).all(axis=1)
        df["nonfinite"] = nonfinite  # a row with a NaN or infinite score is kept and flagged
        if nonfinite.any():
            log.warning("%d of %d frames in [%d, %d) have NaN or infinite scores (flagged in predictions.nonfinite)",
                        int(nonfinite.sum()), len(df), rng.lo, rng.hi)
        df["model"] = plan.model_name
        df["model_sha256"] = plan.sha256
        table = pa.Table.from_pandas(df, preserve_index=False)
        if plan.embedding_dim:  # a fixed-size list column: (n, embedding_dim) float32
            emb = np.ascontiguousarray(scores[idx, len(plan.labels):], dtype=np.float32)
            values = pa.array(emb.reshape(-1), type=pa.float32())
            table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(values, plan.embedding_dim))
        write_part(job.store, "predictions", f"{plan.sha256[:12]}-{rng.part}", table, storage_options=job.storage_options)
        return len(df)


register(Infer)
