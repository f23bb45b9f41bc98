"""One typed settings object, read from ``RADFLOW_*`` environment variables.

Nested fields use ``__``: ``RADFLOW_CLUSTER__ADDRESS=tcp://host:8786``. Settings are
built explicitly (``Settings()``) and passed along; nothing reads the environment at
import time.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: radflow's version, recorded in every store it writes (radflow.__version__ re-exports it)
VERSION = "0.1.0"

__all__ = ["VERSION", "MIN_KEY_BYTES", "check_key", "unknown_environment", "Settings", "ClusterSettings", "KubernetesSettings", "PrivacySettings", "Limits", "resolve_secret_key", "key_fingerprint"]


class Limits(BaseModel):
    """Bounds checked against header-declared sizes *before* any pixel allocation."""

    max_frame_pixels: int = Field(50_000_000, ge=1, description="rows × columns × samples of one frame")
    max_frames: int = Field(10_000, ge=1, description="frames in one object")
    max_object_bytes: int = Field(4 * 2**30, ge=1, description="declared decoded size of one object")
    max_file_bytes: int = Field(8 * 2**30, ge=1, description="size of one input file")
    max_compression_ratio: float = Field(200.0, gt=1, description="uncompressed/compressed size above which an archive member is unsafe")
    input_timeout_s: float = Field(
        900.0, ge=0, description="seconds one input may take to read and decode on a worker; past it the worker "
        "process is restarted and the input, probed alone, is recorded as TIMEOUT (0 = no deadline)")
    worker_memory_bytes: int = Field(
        0, ge=0, description="memory limit of the workers that decode (set by the ingest flow from the cluster; 0 = "
        "unknown): an object whose declared decoded size times `decode_memory_factor` exceeds it is rejected "
        "as MEMORY_LIMIT before decoding")
    decode_memory_factor: float = Field(
        3.0, ge=1, description="peak memory of decoding one object, as a multiple of its decoded size (the decoded "
        "frames, the batch's shard block and one conversion copy)")
    validation: Literal["raise", "warn"] = Field(
        "warn", description="`warn` (default) reads every file the way dcmtk, GDCM and pydicom's lenient mode do and "
        "records what it tolerated as anomalies on the input's ledger and instance rows (INVALID_VALUE, NO_FILE_META, "
        "SYNTAX_MISMATCH_REPAIRED, LUT_DESCRIPTOR_EMPTY, DECODER_FALLBACK); `raise` is the strict mode that rejects "
        "invalid values (INVALID_VALUE), files without file meta (NOT_DICOM) and encodings that contradict the "
        "transfer syntax (SYNTAX_MISMATCH)")


class KubernetesSettings(BaseModel):
    """A Dask cluster on Kubernetes through the Dask operator (``kind="kubernetes"``)."""

    name: str = Field("radflow", description="DaskCluster resource name")
    namespace: str = Field("default", description="Kubernetes namespace")
    image: str = Field("ghcr.io/radflow/radflow:latest", description="container image with radflow installed")
    worker_cpu: str = Field("2", description="CPU request and limit of a worker pod")
    worker_memory: str = Field("8Gi", description="memory request and limit of a worker pod")
    worker_gpus: int = Field(0, ge=0, description="nvidia.com/gpu per worker pod (0: CPU workers)")
    secret_name: str | None = Field(None, description="Kubernetes secret whose keys become the pods' environment "
                                    "(RADFLOW_SECRET_KEY, AWS credentials)")
    node_selector: dict[str, str] = Field(default_factory=dict, description="node labels worker pods must match")


class ClusterSettings(BaseModel):
    """Where Dask work runs."""

    address: str | None = Field(None, description="scheduler address (tcp://host:8786 or tls://…); None starts a cluster of `kind`")
    kind: Literal["local", "local-cuda", "kubernetes"] = Field("local", description="cluster started when no address is given")
    rmm_pool_size: float | str | None = Field(
        0.8, description="local-cuda: RMM pool per GPU (fraction of device memory, or '24GB'), shared by CuPy and "
        "torch; None: no pool")
    tls_ca_file: Path | None = Field(None, description="CA certificate for a tls:// scheduler")
    tls_cert: Path | None = Field(None, description="client certificate for a tls:// scheduler")
    tls_key: Path | None = Field(None, description="client key for a tls:// scheduler")
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    n_workers: int | None = Field(None, ge=1, description="local workers; default: one per core")
    threads_per_worker: int = Field(1, ge=1, description="threads of each worker")
    memory_limit: str = Field("auto", description="memory limit of each local worker (Dask syntax, e.g. '8GiB')")
    nice: int = Field(5, ge=0, le=19, description="niceness added to a local cluster's processes (scheduler, workers): "
                      "the command itself (its flow, Prefect's API) stays responsive while they work; 0: the command's own")
    dashboard_address: str = Field("127.0.0.1:0", description="where local clusters serve the Dask dashboard (port 0: a free one)")
    start_timeout_s: float = Field(
        180.0, gt=0, description="how long a local cluster's scheduler and worker processes may take to start "
        "(Dask's own 30 s fails on a loaded laptop: 'Nanny failed to start')")
    allowed_failures: int = Field(1, ge=0, description="worker deaths a task may cause before it is given up "
                                  "(then a batch is probed input by input and the culprit recorded as WORKER_LOST)")
    spill_to_disk: bool = Field(
        False, description="let local workers spill task data to disk; off by default: radflow's task results are "
        "small, pixel data goes straight to the store, and spilled results (which hold input paths) would be "
        "temporary files outside the store's privacy controls")
    worker_start: Literal["auto", "forkserver", "spawn"] = Field(
        "auto", description="how local workers start: `forkserver` forks each (a restarted one too) from one process "
        "that imported Dask and the command's worker modules once, as the cluster began; `spawn` starts each as a "
        "fresh interpreter that imports them itself; `auto`: forkserver for two workers or more (ingest of 64 "
        "radiographs on two: first batch 0.5 s sooner, 1.4 CPU-s less), spawn for one (the server would be one "
        "process more, saving no import: process preprocess+features peaked at 902 MB RSS against 770)")
    worker_env: dict[str, str] = Field(
        default_factory=lambda: {"MALLOC_MMAP_THRESHOLD_": str(256 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(64 * 2**20),
                                 "MALLOC_ARENA_MAX": "1"},
        description="environment of local worker processes, added to Dask's; glibc serves allocations under "
        "256 MiB from its heap and keeps up to 64 MiB of it free (Dask's own setting returns all but 64 KiB), in "
        "one arena for all threads, so torch's activations and a frame's full-size temporaries reuse pages "
        "instead of faulting in fresh zeroed ones (measured, 200 radiographs: ResNet-18 forward 0.64 s → 0.48 s "
        "per 32 images with the first; with the second, process preprocess+features 11.8–14.1 s → 9.0–11.7 s and "
        "infer 17.3–18.0 s → 15.5–16.7 s, at about 150 MB more resident memory, which one arena instead of one "
        "per thread takes back); a variable already in the command's environment wins",
    )


class PrivacySettings(BaseModel):
    """What radflow does with identifying values (DICOM PS3.15 Annex E, see radflow.dicom.deid)."""

    mode: Literal["deidentify", "keep-identifiers"] = Field(
        "deidentify", description="`deidentify` applies the Basic Profile to every header value written; "
        "`keep-identifiers` (internal, access-controlled deployments only) writes headers unchanged and is "
        "recorded in the store")
    dates: Literal["shift", "remove"] = Field(
        "shift", description="`shift`: Retain Longitudinal Temporal Information with Modified Dates (each "
        "patient's dates move back by a constant, keyed number of days, times by a constant number of seconds); "
        "`remove`: the Basic Profile's action for each date")
    max_date_shift_days: int = Field(3650, ge=1, description="dates move back by 1 … this many days")
    private_allowlist: list[str] = Field(
        default_factory=list, description="private elements kept (Retain Safe Private), each 'GGGG,xxEE,CREATOR'")
    hash_sources: bool = Field(
        False, description="write a keyed hash instead of the input path in the `source` columns (paths such as "
        "MIMIC-CXR's encode subject and study numbers)")
    masks: dict[str, list[tuple[int, int, int, int]]] = Field(
        default_factory=dict, description="pixel regions (row0, col0, row1, col1) set to 0 in stored frames, per "
        "modality ('US') or device ('MANUFACTURER/MODEL'), for burned-in text")


class DicomWebSettings(BaseModel):
    """DICOMweb sources and destinations (``dicomweb+https://…``): requests, paging and credentials.
    Credentials are read from the environment or a file, never from a URL; they are never logged."""

    max_concurrency: int = Field(4, ge=1, description="requests one run keeps in flight against the archive, "
                                 "across all its workers (protects a production PACS)")
    page_size: int = Field(1000, ge=1, description="instances per QIDO-RS page (limit/offset paging)")
    timeout_s: float = Field(60.0, gt=0, description="seconds one HTTP request may take")
    attempts: int = Field(5, ge=1, description="attempts of a request answered 408, 429, 502, 503 or 504 (or cut "
                          "off), with exponential back-off")
    backoff_ms: int = Field(500, ge=1, description="back-off unit: the waits between attempts are 2, 4, 8 … times this "
                            "(with 500: 1 s, 2 s, 4 s, 8 s)")
    token: SecretStr | None = Field(None, description="bearer token (Authorization: Bearer)")
    username: str | None = Field(None, description="user name for HTTP basic authentication")
    password: SecretStr | None = Field(None, description="password for HTTP basic authentication")
    credentials_file: Path | None = Field(None, description='JSON file with {"token": …} or {"username": …, '
                                          '"password": …} (e.g. a mounted secret)')


class Settings(BaseSettings):
    """All of radflow's configuration.

    Environment: ``RADFLOW_<FIELD>``, nested with ``__``. Secrets never appear in
    ``repr``, logs or the store.
    """

    model_config = SettingsConfigDict(env_prefix="RADFLOW_", env_nested_delimiter="__", extra="forbid")

    secret_key: SecretStr | None = Field(
        None, description="key of the keyed hashes that pseudonymize patients and remap UIDs"
    )
    key_file: Path | None = Field(
        None, description="file holding the key when secret_key is unset (default ~/.config/radflow/secret.key)"
    )
    shard_target_mib: int = Field(128, ge=1, description="target uncompressed size of one shard object")
    raw_codec: Literal["blosc-lz4", "zstd"] = Field(
        "blosc-lz4", description="lossless codec of new raw arrays: bit-shuffled LZ4 (Blosc; faster both ways and smaller "
        "than zstd-1 on 16-bit images) or zstd at raw_zstd_level; existing arrays keep theirs")
    raw_zstd_level: int = Field(1, ge=-7, le=22, description="zstd level of new raw arrays when raw_codec is zstd")
    canvas: int = Field(1024, ge=16, le=16384, description="side of the fixed analysis canvas of `images`")
    resize_method: Literal["area", "bilinear", "bicubic"] = Field("area", description="anti-aliased resampling onto the canvas")
    denoise: Literal["none", "gaussian", "median"] = Field("none", description="denoising of `images` after resizing")
    denoise_size: float = Field(1.0, gt=0, description="Gaussian sigma or median window (odd) in canvas pixels")
    enhance: Literal["none", "equalize", "clahe"] = Field("none", description="contrast enhancement of `images`")
    clahe_clip: float = Field(0.01, gt=0, description="CLAHE clip limit (fraction of a region's pixels per bin)")
    unsharp_amount: float = Field(0.0, ge=0, description="unsharp-mask amount (0 = off), radius = 2 px")
    image_dtype: Literal["float16", "uint16"] = Field("float16", description="dtype of `images` (uint16: 0 … 65535 for 0 … 1)")
    infer_batch: int = Field(32, ge=1, description="frames per inference batch (= `images` chunk)")
    infer_autocast: Literal["none", "bf16", "fp16"] = Field("none", description="mixed precision for inference on GPUs")
    header_files_per_task: int = Field(256, ge=1, description="files per header-index Dask task")
    max_files_per_batch: int = Field(4096, ge=1, description="upper bound of inputs in one ingest batch")
    compact_parts: int = Field(256, ge=0, description="after a run, compact a table with more than this many "
                               "Parquet files into one (0 = never; `radflow compact` does it on demand)")
    store_format: Literal[1, 2] = Field(2, description="format of a new store: 2 = versioned (Icechunk: every run "
                                        "commits a version, `radflow history`), 1 = plain Zarr (no versions)")
    writer_wait_s: float = Field(0.0, ge=0, description="seconds a run waits for a store another run is writing "
                                 "(its writer lock) before failing; 0 = fail at once, naming that run")
    checkpoint_batches: int = Field(64, ge=1, description="a versioned store commits a checkpoint after this many "
                                    "finished ingest batches or processing ranges (a killed run resumes from it)")
    stage_shards_per_range: int = Field(1, ge=1, description="`images` shards per processing range (one Dask task, "
                                        "one completion record); more = fewer, longer tasks")
    spectral_cutoff: float = Field(0.25, gt=0, lt=0.71, description="cycles/pixel above which spectral energy counts as high-frequency")
    retry_attempts: int = Field(3, ge=1, description="times an input whose rejection may pass (IO_ERROR, "
                                "WORKER_LOST, TIMEOUT) is tried over successive runs")
    retry_rejected: bool = Field(False, description="retry every rejected input on this run, whatever its reason "
                                 "(`radflow ingest --retry-rejected`)")
    follow_links: bool = Field(False, description="follow symbolic links found in a local source, when their target "
                               "lies inside the source (links that leave it are never followed); off: each link gets a "
                               "LINK_SKIPPED ledger row")
    api_keep_s: float = Field(600.0, ge=0, description="seconds the local Prefect API a command starts (when no "
                              "PREFECT_API_URL is configured) stays up after the last command, for the next ones; "
                              "0 = each command starts its own and stops it at exit (`radflow api stop`: now)")
    performance_report: bool = Field(False, description="save a Dask performance report (HTML) of each ingest and "
                                     "process run under <store>/reports/")
    limits: Limits = Field(default_factory=Limits)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    dicomweb: DicomWebSettings = Field(default_factory=DicomWebSettings)
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for store and source URLs "
                                             "(credentials belong in the environment, not here)")

    @field_validator("secret_key")
    @classmethod
    def _strong_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            check_key(v.get_secret_value().encode(), "RADFLOW_SECRET_KEY")
        return v

    @field_validator("canvas")
    @classmethod
    def _even_canvas(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"canvas must be even, got {v}")
        return v


MIN_KEY_BYTES = 32
_MAKE_KEY = "make one with: python -c 'import secrets; print(secrets.token_hex(32))'"


#: steps whose work is array arithmetic that releases the GIL (a model's forward passes, numpy/scipy on
#: frames): one process with a thread per core runs them as fast as a process per core, with one copy of
#: the model, of torch and of every other import
THREADED_STEPS = frozenset({"infer", "preprocess", "features"})


def cluster_for_steps(steps: Any, overrides: dict[str, Any] | None, address: str | None = None) -> dict[str, Any] | None:
    """Settings overrides for a run of ``steps``: a local CPU cluster that runs only :data:`THREADED_STEPS`
    gets one worker with every core rather than one one-thread worker per core, each holding its own copy of
    the model (and of torch) and of the stage's imports. Measured here (2 cores, 200 radiographs, canvas
    512): ``preprocess,features`` 12.2 s on one two-thread worker against 12.6 s on two one-thread ones, peak
    memory 928 MB against 1,151 MB; ``infer`` uses every core in one forward pass. Left alone where the
    cluster's shape or kind is set (environment, overrides, a scheduler address) or another step runs too
    (reconstruction and volumes were not measured); many-core machines were not measured either."""
    steps = set(steps or ())
    if not steps or not steps <= THREADED_STEPS or address:
        return overrides
    cluster = dict((overrides or {}).get("cluster") or {})
    shaped = {"n_workers", "threads_per_worker", "address", "kind"}
    if shaped & set(cluster) or any(os.environ.get(f"RADFLOW_CLUSTER__{k.upper()}", "").strip() for k in shaped):
        return overrides
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {**(overrides or {}), "cluster": {**cluster, "n_workers": 1, "threads_per_worker": cores}}


def check_key(key: bytes, where: str) -> bytes:
    """``key`` if it is long enough to keep pseudonyms from being recomputed from clear identifiers."""
    if len(key.strip()) < MIN_KEY_BYTES:
        raise ValueError(f"{where} holds {'no key' if not key.strip() else f'a key of {len(key.strip())} bytes'}; "
                         f"the pseudonymization key must be at least {MIN_KEY_BYTES} bytes ({_MAKE_KEY})")
    return key


def unknown_environment(environ: dict[str, str] | None = None) -> list[str]:
    """``RADFLOW_*`` variables that name no setting (typos such as ``RADFLOW_CANVS``), sorted."""
    environ = dict(os.environ if environ is None else environ)
    known: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            ann = info.annotation
            known.add(f"{prefix}{name.upper()}")
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name.upper()}__")

    walk(Settings, "RADFLOW_")
    return sorted(k for k in environ if k.upper().startswith("RADFLOW_") and k.upper() not in known)


def _default_key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "radflow" / "secret.key"


def resolve_secret_key(settings: Settings) -> bytes:
    """Return the pseudonymization key: ``settings.secret_key``, else the key file.

    The key file is created (mode 0600, 32 random bytes) on first use, so one
    installation pseudonymizes consistently across runs. Share it (or set
    ``RADFLOW_SECRET_KEY``) on every machine that writes to the same store.
    """
    if settings.secret_key is not None:
        return check_key(settings.secret_key.get_secret_value().encode(), "RADFLOW_SECRET_KEY")
    path = settings.key_file or _default_key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return check_key(path.read_text().strip().encode(), f"the key file {str(path)!r}")


def key_fingerprint(key: bytes) -> str:
    """A short public fingerprint of the key (recorded in the store to detect a key change)."""
    return hashlib.sha256(b"radflow-key-fingerprint\0" + key).hexdigest()[:16]


def reference_markdown() -> str:
    """The configuration reference (every setting, its variable, default and meaning) as Markdown,
    generated from the settings model: ``radflow config`` prints it; docs/configuration.md is it."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `radflow.config.Settings` by `radflow config`; do not edit by hand.",
        "Every setting is an environment variable (`RADFLOW_` + the path in capitals, nested with `__`);",
        "dicts and lists are JSON. Flows also take them as a `settings` dict (except the key).",
        "",
        "| variable | type | default | meaning |",
        "|---|---|---|---|",
    ]

    def type_name(annotation: Any) -> str:
        import typing

        if typing.get_origin(annotation) is Literal:
            return " or ".join(f"`{a}`" for a in typing.get_args(annotation))
        text = getattr(annotation, "__name__", None) or str(annotation)
        return text.replace("typing.", "").replace("pathlib.", "").replace("pydantic.types.", "").replace("|", "or")

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name.upper()}__")
                continue
            default = info.get_default(call_default_factory=True)
            if isinstance(default, SecretStr) or name == "secret_key":
                default = "none (key file)"
            default_text = "none" if default is None else f"`{default}`" if default != "" else '`""`'
            desc = (info.description or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{prefix}{name.upper()}` | {type_name(ann)} | {default_text} | {desc} |")

    walk(Settings, "RADFLOW_")
    return "\n".join(lines) + "\n"
