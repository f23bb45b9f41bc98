"""What a processing stage is, the registry of stages, and the completion table.

A stage says what it reads and writes, splits its work into :class:`Range` objects whose
names are pure functions of the work, and runs one range on a worker: the worker reads its
own slice of ``instances`` from the store and writes its own Parquet part, then records the
range's completion (``tables/stages``). The one runner (:mod:`radflow.flows.runner`)
plans, skips completed ranges and submits the rest; it knows no stage by name.

A new step is one module that defines a :class:`Stage` and calls :func:`register` (or
names it under the ``radflow.stages`` entry-point group in a separate package).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa

from radflow.config import Settings
from radflow.store.tables import read_table, write_part

__all__ = ["Range", "Job", "Request", "Stage", "register", "registered", "fingerprint", "completed", "run_range",
           "STAGES_SCHEMA", "shard_ranges"]

#: ``tables/stages``: one row per completed range, part ``<scope>-<range part>`` (a re-run overwrites it)
STAGES_SCHEMA = pa.schema([
    ("scope", pa.string()), ("part", pa.string()), ("key", pa.string()), ("token", pa.string()),
    ("lo", pa.int64()), ("hi", pa.int64()), ("frames", pa.int64()), ("seconds", pa.float64()),
])


def fingerprint(*values: Any) -> str:
    """A short stable hash of JSON-able values (settings, counts, plans)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Range:
    """One unit of a stage's work.

    ``part`` names its outputs and its completion row (a pure function of the work, so a retry
    overwrites the same objects); ``token`` fingerprints its inputs: the range is done when a
    completion row with the job's ``key`` and this token exists.
    """

    part: str
    lo: int = 0
    hi: int = 0
    frames: int = 0
    token: str = ""
    data: Any = None


@dataclasses.dataclass(frozen=True)
class Job:
    """A stage prepared for one run: small and picklable, it travels to every worker with each range."""

    stage: "Stage"
    store: str
    storage_options: dict[str, Any]
    scope: str  # completion namespace: the stage, or e.g. ``infer-<model hash>``
    key: str  # fingerprint of the settings its outputs depend on
    options: Any = None
    after: str | None = None  # scope whose completion of the same range feeds this one (invalidates it)
    gpu: bool = False  # runs on GPU workers when the cluster has them (Dask resource ``GPU``)
    plugins: tuple[Any, ...] = ()  # worker plugins the runner registers first (the model cache)


@dataclasses.dataclass
class Request:
    """What ``radflow process`` was asked, for the stages to prepare from (flow side)."""

    store: Any  # radflow.store.handle.Store
    settings: Settings
    canvas: int | None = None  # explicit --canvas
    model: str | None = None
    arch: str | None = None
    card: dict[str, Any] | None = None
    embeddings: bool = False
    gpu: bool = False  # the cluster has GPU workers (set by the runner)

    @functools.cached_property
    def frame_index(self) -> np.ndarray:
        """Global ``index`` of every stored frame, sorted (one column of ``instances``; what planning needs)."""
        idx = read_table(self.store.url, "instances", self.store.storage_options, columns=["index"])["index"]
        return np.sort(idx.to_numpy(dtype=np.int64))


class Stage:
    """A processing stage. Subclasses set the class attributes and implement the three methods."""

    name: ClassVar[str] = ""
    order: ClassVar[int] = 100  # steps run in this order
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    unit: ClassVar[str] = ""  # when set, the run summary counts ranges under this name (e.g. ``volumes``)
    #: ``bind``'s ``on_worker`` calls run on every worker at once (the first's result is used): what they load
    #: (a model, through the job's plugins) is then ready everywhere before the first range, loaded side by side
    bind_on_every_worker: ClassVar[bool] = False

    def prepare(self, request: Request) -> Job | None:
        """Flow side, before the cluster starts: check settings, create output arrays, return the job
        (``None``: nothing this stage can do in this store, e.g. no frames)."""
        raise NotImplementedError

    def bind(self, job: Job, request: Request, on_worker: Any) -> Job:
        """Flow side, once the cluster is up: finish the job with what needs the cluster (``on_worker(fn,
        *args, **kwargs)`` runs ``fn`` on a worker and returns its result; the flow process stays free of
        heavy libraries such as torch). Default: the job as prepared."""
        return job

    def plan(self, job: Job, request: Request) -> list[Range]:
        """Flow side: the ranges, from what planning needs (counts per range, not per-frame rows)."""
        raise NotImplementedError

    def run(self, job: Job, rng: Range) -> int:
        """Worker side: do one range, write its outputs, return the frames (or slices) it handled."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<stage {self.name}>"

    def __reduce__(self):  # stages are stateless: a worker rebuilds one from its class
        return (type(self), ())


_REGISTRY: dict[str, Stage] = {}


def register(stage: Stage | type[Stage]) -> Stage:
    """Add a stage (an instance or a class) to the registry under its ``name``; return it."""
    inst = stage() if isinstance(stage, type) else stage
    if not inst.name:
        raise ValueError(f"{stage!r} has no name")
    _REGISTRY[inst.name] = inst
    return inst


@functools.lru_cache(maxsize=1)
def _entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group="radflow.stages"):
        register(ep.load())


def registered() -> dict[str, Stage]:
    """Every registered stage by name, in run order (built-ins, entry points, then ones registered at run time)."""
    import radflow.stages  # noqa: F401 - the built-in stages register on import

    _entry_points()
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))


def completed(store_url: str, scope: str, storage_options: dict[str, Any] | None = None) -> dict[str, tuple[str, str]]:
    """``{range part: (key, token)}`` of every range of ``scope`` recorded as done."""
    df = read_table(store_url, "stages", storage_options, columns=["scope", "part", "key", "token"],
                    filters=[("scope", "==", scope)])
    return {p: (k, t) for p, k, t in zip(df["part"], df["key"], df["token"])}


def run_range(job: Job, rng: Range) -> int:
    """Run one range on a worker, then record its completion (written last: a range killed before
    this line is simply run again)."""
    t0 = time.perf_counter()
    frames = int(job.stage.run(job, rng))
    row = {"scope": job.scope, "part": rng.part, "key": job.key, "token": rng.token, "lo": rng.lo, "hi": rng.hi,
           "frames": frames, "seconds": time.perf_counter() - t0}
    write_part(job.store, "stages", f"{job.scope}-{rng.part}", [row], schema=STAGES_SCHEMA,
               storage_options=job.storage_options)
    return frames


def shard_ranges(index: np.ndarray, n: int, shard_frames: int, shards_per_range: int = 1) -> list[Range]:
    """Ranges of ``shards_per_range`` whole ``images`` shards over ``[0, n)`` (one writer per shard);
    ranges without frames are dropped. ``index``: the sorted global indices of stored frames."""
    span = shard_frames * max(1, shards_per_range)
    out = []
    for lo in range(0, n, span):
        hi = min(n, lo + span)
        count = int(np.searchsorted(index, hi) - np.searchsorted(index, lo))
        if count:
            out.append(Range(f"{lo:012d}", lo, hi, count, fingerprint(lo, hi, count)))
    return out


def instance_rows(job: Job, rng: Range, columns: list[str]) -> pd.DataFrame:
    """The range's own slice of ``instances`` (read on the worker, with push-down)."""
    df = read_table(job.store, "instances", job.storage_options, columns=columns,
                    filters=[("index", ">=", rng.lo), ("index", "<", rng.hi)])
    return df.sort_values("index", kind="stable").reset_index(drop=True)
