"""The one stage runner: plan a stage's ranges, skip the completed ones, run the rest on the cluster.

A stage (:mod:`radflow.stages`) is one Prefect task run; its ranges are Dask tasks, one per
range, each reading its own rows from the store and writing its own parts and, last, its
completion row in ``tables/stages``. A range is done when that row carries the job's settings
fingerprint and the range's input token; a range of a stage that runs after another (``infer``
and ``features`` after ``preprocess``) also folds the upstream range's row into its token, so
re-preprocessing a range re-runs what was derived from it. What crosses into this process: one
row of counts per range, never per-frame rows.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from radflow.cluster.sealed import submit
from radflow.cluster.waiting import each_done, result
from radflow.flows._common import run_logger
from radflow.flows._progress import report as progress
from radflow.stages.base import Job, Range, Request, completed, fingerprint, run_range
from radflow.store import versions

__all__ = ["run_stage", "pending"]


def pending(job: Job, ranges: list[Range]) -> tuple[list[Range], int]:
    """The ranges still to run (tokens folded with their upstream completion), and how many wait for an
    upstream range that is not done."""
    done = completed(job.store, job.scope, job.storage_options)
    upstream = completed(job.store, job.after, job.storage_options) if job.after else None
    todo, waiting = [], 0
    for rng in ranges:
        if upstream is not None:
            if rng.part not in upstream:
                waiting += 1
                continue
            rng = Range(rng.part, rng.lo, rng.hi, rng.frames, fingerprint(rng.token, *upstream[rng.part]), rng.data)
        if done.get(rng.part) != (job.key, rng.token):
            todo.append(rng)
    return todo, waiting


def _has_gpu_workers(client) -> bool:
    return any("GPU" in (w.get("resources") or {}) for w in client.scheduler_info().get("workers", {}).values())


def _on_worker(client, *, every: bool):
    """``on_worker(fn, *args, **kwargs)`` for a stage's ``bind``: ``fn`` on one worker, or on every worker at
    once (the first worker's result returned, every call's error raised)."""

    def one(fn, *a, **kw):
        return result(submit(client, fn, *a, **kw))

    def everywhere(fn, *a, **kw):
        workers = list(client.scheduler_info().get("workers", {})) or [None]
        futures = [submit(client, fn, *a, workers=None if w is None else [w], allow_other_workers=w is None, **kw)
                   for w in workers]
        return [result(f) for f in futures][0]

    return everywhere if every else one


@task(name="stage", cache_policy=NO_CACHE)
def _stage_task(job: Job, request: Request) -> dict[str, Any]:
    from distributed import get_client

    log = run_logger()
    client = get_client()
    name = job.stage.name
    t0 = time.perf_counter()
    for plugin in job.plugins:  # before bind: what bind loads on a worker stays there for the ranges
        client.register_plugin(plugin, name=getattr(plugin, "name", None))
    job = job.stage.bind(job, request, _on_worker(client, every=job.stage.bind_on_every_worker))
    ranges = job.stage.plan(job, request)
    todo, waiting = pending(job, ranges)
    if waiting:
        log.warning("%s: %d of %d ranges wait for %s; run that step first", name, waiting, len(ranges), job.after)
    resources = {"GPU": 1} if job.gpu and _has_gpu_workers(client) else None
    progress("stage-start", stage=name, total=sum(r.frames for r in todo))
    futures = {submit(client, versions.task(job.store, run_range), job, r, key=f"{job.scope}-{r.part}-{r.token[:8]}",
                      resources=resources, retries=1): r for r in todo}
    frames, failed = 0, []
    for fut in each_done(list(futures)):
        rng = futures[fut]
        if fut.status == "error":
            failed.append((rng, fut.exception()))
            log.error("%s: range %s failed: %s", name, rng.part, fut.exception())
            continue
        frames += versions.settle(job.store, fut.result())
        progress("stage-advance", stage=name, advance=rng.frames)
    progress("stage-end", stage=name)
    versions.checkpoint(job.store, f"{name}: {len(todo) - len(failed)} ranges")  # the next stage reads what this one wrote
    seconds = time.perf_counter() - t0
    if failed:  # the completed ranges are recorded: a re-run does only the failed ones
        raise failed[0][1]
    out = {"frames": frames, "ranges": len(todo), "skipped": len(ranges) - len(todo) - waiting, "seconds": seconds,
           "images_per_s": frames / seconds if seconds else 0.0}
    if job.stage.unit:
        out[job.stage.unit] = len(todo)
    log.info("%s: %d frames in %d ranges (%d already done) in %.1f s", name, frames, len(todo), out["skipped"], seconds)
    return out


def run_stage(job: Job, request: Request) -> dict[str, Any]:
    """Run one prepared stage as the Prefect task ``stage-<name>`` on the current Dask client."""
    return _stage_task.with_options(name=f"stage-{job.stage.name}")(quote(job), quote(request))
