"""What the stages over ``images`` share: the canvas, the shard ranges, and opening arrays on a worker."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from radflow.stages.base import Job, Range, Request, shard_ranges
from radflow.store import layout, versions
from radflow.store.urls import zarr_store

__all__ = ["canvas_of", "image_ranges", "open_array", "images_block", "array_chunks", "stored_chunks",
           "unit_float"]


def canvas_of(request: Request) -> int:
    """The canvas a run works at: ``--canvas``, else the existing ``images`` array's, else the settings'."""
    if request.canvas is not None:
        return int(request.canvas)
    if "images" in request.store.root:
        return int(request.store.root["images"].shape[1])
    return int(request.settings.canvas)


def image_ranges(request: Request) -> list[Range]:
    """Whole-shard ranges of ``images`` that hold stored frames."""
    images = layout.open_root(zarr_store(request.store.url, request.store.storage_options), mode="r")["images"]
    return shard_ranges(request.frame_index, int(images.shape[0]), int(images.shards[0]),
                        request.settings.stage_shards_per_range)


@functools.lru_cache(maxsize=16)
def _root(store: str, options_json: str, mode: str):
    return layout.open_root(zarr_store(store, json.loads(options_json) or None), mode=mode)


def open_array(job: Job, path: str, mode: str = "r"):
    """Array ``path`` of the job's store: through the task's session in a versioned store, else the
    group opened once per worker process."""
    if versions.is_versioned(job.store, job.storage_options):  # (a task's fork only exists for those)
        return layout.open_root(zarr_store(job.store, job.storage_options, read_only=mode == "r"), mode=mode)[path]
    return _root(job.store, json.dumps(job.storage_options, sort_keys=True), mode)[path]


def unit_float(block: np.ndarray) -> np.ndarray:
    """A block of ``images`` as float32 in 0 … 1 (uint16 images scaled)."""
    x = block.astype(np.float32)
    if block.dtype == np.uint16:
        x /= 65535.0
    return x


def images_block(job: Job, rng: Range, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    """``images[lo:hi]`` (the range's, or the part ``lo … hi`` of it) as float32 in 0 … 1 (uint16 images scaled):
    a whole shard at canvas 1024 is 128 MiB as stored and 256 MiB as float32; :func:`stored_chunks` takes a
    range a chunk at a time."""
    return unit_float(np.asarray(open_array(job, "images")[rng.lo if lo is None else lo:rng.hi if hi is None else hi]))


def array_chunks(arr: Any, lo: int, hi: int) -> Iterator[tuple[int, np.ndarray]]:
    """``arr[lo:hi]`` one stored chunk of its first axis at a time, as stored: ``(first frame's index, frames)``."""
    step = int(arr.chunks[0])
    for at in range(lo, hi, step):
        yield at, np.asarray(arr[at:min(at + step, hi)])


def stored_chunks(job: Job, rng: Range) -> Iterator[tuple[int, np.ndarray]]:
    """The range of ``images`` by :func:`array_chunks` (a whole range at once, and as float32, was a range's
    shard twice over in memory per task thread)."""
    return array_chunks(open_array(job, "images"), rng.lo, rng.hi)
