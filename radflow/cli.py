"""The ``radflow`` command: a thin layer over the Python API.

Every command prints a one-line reason and exits non-zero on failure; long work
shows progress bars; ``--verbose`` shows Prefect's and Dask's own logs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

from radflow.cli_checks import NO_SETTINGS, canvas, check_settings, positive_int, probability, query_item, split_steps
from radflow.cli_interrupts import install_interrupts
from radflow.cli_progress import with_progress as _with_progress

__all__ = ["main"]


def _quiet_orchestration(verbose: bool) -> None:
    """Defaults for the orchestration stack, set before it is imported (never overriding the user's)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if not verbose:  # progress bars, the summary and a one-line reason on failure say what matters
        # (critical: a worker whose scheduler went first at an interrupt logs its heartbeat's traceback at error)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")  # run logs reach the Prefect UI at INFO ...
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")  # ... the terminal stays quiet
        os.environ.setdefault("PREFECT_LOGGING_SERVER_LEVEL", "WARNING")
        # an interrupt ends worker processes before they free their semaphores: multiprocessing's resource
        # tracker (its own process) frees them and would print a "leaked semaphore objects" warning
        os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning:multiprocessing.resource_tracker")
    logging.basicConfig(level=logging.INFO if verbose else logging.CRITICAL, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # run logs propagate to the root logger on their way to the Prefect API: not to the terminal
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.CRITICAL)


def _storage_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """fsspec options: ``RADFLOW_STORAGE_OPTIONS`` (JSON), then ``--endpoint-url`` over it."""
    from radflow.config import Settings

    opts = dict(Settings().storage_options or {})
    if getattr(args, "endpoint_url", None):
        opts["endpoint_url"] = args.endpoint_url
    return opts or None


def _settings(args: argparse.Namespace) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    if getattr(args, "workers", None) is not None:
        out["cluster"] = {"n_workers": args.workers}
    if getattr(args, "retry_rejected", False):
        out["retry_rejected"] = True
    if getattr(args, "follow_links", False):
        out["follow_links"] = True
    if getattr(args, "shard_mib", None) is not None:
        out["shard_target_mib"] = args.shard_mib
    if getattr(args, "performance_report", False):
        out["performance_report"] = True
    if args.command == "process":
        from radflow.config import cluster_for_steps

        return cluster_for_steps(split_steps(args.steps), out or None, getattr(args, "cluster", None))
    return out or None


def _print_ingest(s: dict[str, Any]) -> None:
    rej = ", ".join(f"{k} {v}" for k, v in s["rejected"].items()) or "none"
    dup = ", ".join(f"{k} {v}" for k, v in s.get("duplicates", {}).items()) or "none"
    print(f"inputs: {s['discovered']} discovered, {s['new']} new, {s['ok']} ok; duplicates: {dup}; rejected: {rej}")
    if s.get("anomalies"):
        print("kept with anomalies (inputs): " + ", ".join(f"{k} {v}" for k, v in s["anomalies"].items()))
    print(f"frames: {s['frames']} in {s['batches']} batches; {s['bytes_in'] / 1e6:.1f} MB read in {s['seconds']:.1f} s "
          f"({s['mb_per_s']:.1f} MB/s, {s['images_per_s']:.1f} images/s)")
    if s.get("phase_seconds"):
        print("worker time, summed over threads: " + ", ".join(f"{k} {v:.2f} s" for k, v in s["phase_seconds"].items()))
    if s.get("performance_report"):
        print(f"Dask performance report: {s['performance_report']}")


def _print_process(s: dict[str, Any]) -> None:
    if not s["steps"]:
        print("up to date: nothing to do")
    for step, v in s["steps"].items():
        if step == "volumes":
            print(f"volumes: {v['volumes']} assembled from {v['frames']} slices" if v.get("volumes")
                  else "volumes: nothing to assemble (no CT/MR/PT/NM series with position and orientation)")
        elif not v.get("frames"):
            print(f"{step}: up to date, nothing to do")
        else:
            print(f"{step}: {v['frames']} frames in {v['seconds']:.1f} s ({v['images_per_s']:.1f} images/s)")
    if s.get("performance_report"):
        print(f"Dask performance report: {s['performance_report']}")
    if s.get("report"):
        print(f"QC report: {s['report']}")


def cmd_synth(args: argparse.Namespace) -> int:
    from concurrent.futures import ProcessPoolExecutor

    from radflow.synth import write_archive

    if args.kspace:
        from radflow.synth.kspace import write_fastmri

        paths = write_fastmri(os.path.join(args.dir, "kspace"), args.kspace, seed=args.seed)
        print(f"wrote {len(paths)} fastMRI-format k-space files under {os.path.join(args.dir, 'kspace')}")
    if args.sinograms:
        from radflow.synth.sinograms import write_sinograms

        paths = write_sinograms(os.path.join(args.dir, "sinograms"), args.sinograms, seed=args.seed)
        print(f"wrote {len(paths)} CT sinogram files under {os.path.join(args.dir, 'sinograms')}")
    if not args.n:
        return 0
    with ProcessPoolExecutor(max_workers=args.jobs or os.cpu_count()) as ex:
        s = write_archive(args.dir, args.n, seed=args.seed, map_fn=lambda f, *it: ex.map(f, *it, chunksize=4))
    print(f"wrote {s.images} radiographs ({s.lesions} with a lesion) and {s.broken} broken files, {s.bytes / 1e6:.1f} MB")
    print(f"DICOM under {s.dicom}; labels in {s.labels}")
    print("transfer syntaxes: " + ", ".join(f"{k} {v}" for k, v in sorted(s.syntaxes.items())))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    import radflow

    query = dict(args.query) if getattr(args, "query", None) else None
    s = _with_progress(lambda: radflow.ingest(args.source, args.store, cluster=args.cluster, query=query,
                                              storage_options=_storage_options(args), settings=_settings(args)))
    _print_ingest(s)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from radflow.flows.schedule import serve_ingest

    serve_ingest(args.source, args.store, cron=args.cron, name=args.name, timezone=args.timezone, cluster=args.cluster,
                 query=dict(args.query) if args.query else None)
    return 0


def cmd_process(args: argparse.Namespace) -> int:
    import radflow

    card = None
    if args.card:
        from radflow.models.loading import read_card_file

        card = read_card_file(args.card)
    s = _with_progress(lambda: radflow.process(args.store, steps=split_steps(args.steps), model=args.model, arch=args.arch,
                                               canvas=args.canvas, cluster=args.cluster,
                                               storage_options=_storage_options(args), settings=_settings(args),
                                               embeddings=args.embeddings, card=card, report=args.report,
                                               labels=args.labels))
    _print_process(s)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Ingest, then process, on one cluster (``main`` starts a local one once for both)."""
    steps = split_steps(args.steps)
    if "infer" in steps and not args.model:
        steps.remove("infer")
    args.steps = ",".join(steps)
    cmd_ingest(args)
    return cmd_process(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from radflow.flows.evaluate import evaluate_flow

    res = evaluate_flow(args.store, args.labels, threshold=args.threshold, split=args.split,
                        storage_options=_storage_options(args))
    for r in res["evaluation"]:
        print(f"{r['model']} [{r['model_sha256'][:12]}] {r['label']}: AUC {r['auc']:.3f}, sensitivity {r['sensitivity']:.3f}, "
              f"specificity {r['specificity']:.3f} at {r['threshold']} (n={r['n']}, positives={r['positives']})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from radflow.flows.demo import demo_flow

    t0 = time.perf_counter()
    s = _with_progress(lambda: demo_flow(args.out, n=args.n, seed=args.seed, canvas=args.canvas,
                                              epochs=args.epochs, cluster=args.cluster))
    ing = s["ingest"]
    print()
    print("radflow demo — summary")
    print(f"  archive      {s['synth']['images']} synthetic radiographs + {s['synth']['broken']} broken files, "
          f"{s['synth']['bytes'] / 1e6:.0f} MB, under {s['archive']}")
    _indent = "  "
    rej = ", ".join(f"{k} {v}" for k, v in ing["rejected"].items()) or "none"
    print(f"{_indent}inputs       {ing['discovered']} discovered, {ing['ok']} ok, rejected: {rej}")
    print(f"{_indent}frames       {ing['frames']} stored in {ing['batches']} batches")
    print(f"{_indent}ingest       {ing['mb_per_s']:.1f} MB/s, {ing['images_per_s']:.1f} images/s ({ing['seconds']:.1f} s)")
    for step, v in s["process"].items():
        print(f"{_indent}{step:<12} {v['images_per_s']:.1f} images/s ({v['frames']} frames, {v['seconds']:.1f} s)")
    tr = s["train"]
    print(f"{_indent}train        resnet18 on {tr['train_images']} images ({tr['train_positives']} with a lesion) in {tr['seconds']:.1f} s")
    if not s["evaluation"] and s.get("evaluation_note"):
        print(f"{_indent}held-out     not evaluated: {s['evaluation_note']}")
    for r in s["evaluation"]:
        auc = "n/a (one class only)" if r["auc"] != r["auc"] else f"{r['auc']:.3f}"
        print(f"{_indent}held-out     AUC {auc} for '{r['label']}' on {r['n']} images, model {r['model']} "
              f"[{r['model_sha256'][:12]}] (sensitivity {r['sensitivity']:.2f}, specificity {r['specificity']:.2f} "
              f"at {r['threshold']})")
    print(f"{_indent}store        {s['store']}")
    print(f"{_indent}tables       {s['tables']}  (ledger, instances, headers, features, predictions, evaluation)")
    if s.get("report"):
        print(f"{_indent}QC report    {s['report']}  (open it in a browser)")
    print(f"{_indent}model        {s['model']}  (weights SHA-256 {tr['sha256'][:12]})")
    print(f"{_indent}total        {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from radflow.flows.verify import verify_flow

    res = _with_progress(lambda: verify_flow(args.store, cluster=args.cluster, storage_options=_storage_options(args)))
    print(f"checked {res['checked']} frames and slices of {res['store']}")
    if not res["problems"]:
        print("all match their recorded CRC32; no chunk is missing; tables and arrays agree")
        return 0
    print("problems: " + ", ".join(f"{k} {v}" for k, v in sorted(res["counts"].items())))
    for p in res["problems"][:50]:
        if "object" in p:  # a structural problem: names the damaged object
            print(f"  {p['problem']:<22} {p['object']}: {p['detail']}")
            continue
        ident = ", ".join(f"{k} {p[k]}" for k in ("index", "kspace_index", "sinogram_index") if k in p)
        print(f"  {p['problem']:<22} {p['array']} position {p['position']} ({ident}): {p['detail']}")
    if len(res["problems"]) > 50:
        print(f"  ... and {len(res['problems']) - 50} more")
    return 1


def cmd_report(args: argparse.Namespace) -> int:
    from radflow.flows.report import report_flow

    print(report_flow(args.store, labels=args.labels, out=args.out, model=args.model, storage_options=_storage_options(args)))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from radflow.config import reference_markdown

    print(reference_markdown(), end="")
    return 0


def cmd_k8s_spec(args: argparse.Namespace) -> int:
    import yaml

    from radflow.cluster.kubernetes import cluster_spec
    from radflow.config import Settings

    cluster = Settings().cluster
    if args.workers:
        cluster = cluster.model_copy(update={"n_workers": args.workers})
    class NoAliases(yaml.SafeDumper):  # repeated values written out, never as &id001 anchors
        def ignore_aliases(self, data: Any) -> bool:
            return True

    print(yaml.dump(cluster_spec(cluster), Dumper=NoAliases, sort_keys=False), end="")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from importlib import metadata

    import radflow
    from radflow.dicom.read import decodable_syntaxes

    print(f"radflow {radflow.__version__} (Python {sys.version.split()[0]})")
    for pkg in ("numpy", "zarr", "dask", "distributed", "xarray", "pydicom", "pylibjpeg", "pylibjpeg-openjpeg",
                "pylibjpeg-libjpeg", "pylibjpeg-rle", "python-gdcm", "torch", "torchvision", "prefect", "s3fs",
                "cupy-cuda12x", "dask-cuda"):
        try:
            print(f"  {pkg:<20} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            print(f"  {pkg:<20} (not installed)")
    print("pixel decoders (transfer syntax: plugins):")
    for s in decodable_syntaxes():
        plugins = ", ".join(s["plugins"]) if s["plugins"] else "NONE — install a decoder plugin"
        print(f"  {s['name']} ({s['uid']}): {plugins}")
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        gpus = [torch.cuda.get_device_name(i) for i in range(n)]
    except Exception:  # a broken CUDA install must not break `info`
        gpus = []
    print("GPUs: " + (", ".join(gpus) if gpus else "none"))
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from radflow.store.tables import compact_store

    from radflow.errors import StoreNotFoundError
    from radflow.store.lock import writer
    from radflow.store.urls import filesystem, normalize
    from radflow.store.versions import transaction

    options = _storage_options(args)
    fs, root = filesystem(normalize(args.store), options)
    if not fs.exists(root):  # before the lock, which would create the folder
        raise StoreNotFoundError(f"no store at {normalize(args.store)!r}")
    with writer(args.store, options, command="compact"), transaction(args.store, options, command="compact"):
        out = compact_store(args.store, options, min_parts=args.min_parts, tables=args.table or None)
    if not out:
        print(f"nothing to compact: no table has {args.min_parts} or more Parquet files")
    for name, r in out.items():
        print(f"{name:<12} {r['files_before']:>7} → {r['files_after']} files, {r['rows']} rows")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from radflow.store.inspect import describe

    info = describe(args.store, _storage_options(args))
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    m = info["meta"]
    print(f"store {info['url']}  (radflow format {m.get('format_version')}, written by radflow {m.get('radflow_version')}, "
          f"created {m.get('created')})")
    if info.get("version"):
        print(f"version {info['version']}  (`radflow history` lists every version)")
    print(f"source {m.get('source')}")
    pv = info["privacy"]
    if pv["mode"] == "keep-identifiers":
        print("privacy  IDENTIFIERS KEPT (keep-identifiers): headers hold patient names, IDs, dates and UIDs unchanged")
    else:
        print(f"privacy  {pv['mode']}: {pv.get('detail') or ''}")
    print(f"         dates {pv.get('dates')}; source paths {pv.get('source_paths')}"
          f"{'; masked regions for ' + ', '.join(pv['masks']) if pv.get('masks') else ''}; "
          f"{info['burned_in_risk']} frames flagged for burned-in text risk")
    print("inputs by status/reason:")
    for row in info["ledger"]:
        print(f"  {row['status']:<10} {row['reason'] or '':<24} {row['inputs']}")
    if info.get("anomalies"):
        print("ok inputs kept with anomalies: " + ", ".join(f"{k} {v}" for k, v in info["anomalies"].items()))
    print("frames by modality and size:")
    for row in info["frames"]:
        print(f"  {row['modality'] or '?':<6} {row['size']:<14} {row['frames']}")
    print("arrays:")
    for a in info["arrays"]:
        held = f"{a['filled']} of {a['shape'][0]} filled, " if a.get("filled") is not None else ""
        print(f"  {a['name']:<28} {held}shape {a['shape']} {a['dtype']} chunks {a['chunks']} shards {a['shards']} "
              f"{a['stored_bytes'] / 1e6:.1f} MB stored")
    print("tables: " + ", ".join(f"{k} {v} rows" for k, v in info["tables"].items()))
    print(f"objects: {info['objects']} ({info['objects_per_1000_inputs']:.1f} per 1,000 inputs)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="radflow",
        description="Turn imaging archives into sharded Zarr stores and Parquet tables; process them on Dask under Prefect.",
        epilog="Start with `radflow demo`. Configuration: RADFLOW_* environment variables (see README).",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="show Prefect's and Dask's logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser, cluster: bool = True) -> None:
        if cluster:
            sp.add_argument("--cluster", help="Dask scheduler address (tcp://host:8786); default: a local cluster")
            sp.add_argument("--workers", type=positive_int, help="workers of the local cluster (default: one per core)")
            sp.add_argument("--performance-report", action="store_true",
                            help="save a Dask performance report (HTML) under STORE/reports/")
        sp.add_argument("--endpoint-url", help="S3-compatible endpoint for s3:// URLs (default: AWS_ENDPOINT_URL)")

    sp = sub.add_parser("synth", help="write a synthetic DICOM radiograph archive (and k-space files)")
    sp.add_argument("dir", help="output folder (DICOM under DIR/dicom, labels in DIR/labels.csv)")
    sp.add_argument("--n", type=positive_int, default=200, help="radiographs to write (default 200)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--jobs", type=positive_int, help="processes (default: one per core)")
    sp.add_argument("--kspace", type=int, default=0, metavar="N",
                    help="also write N fastMRI-format multi-coil k-space files under DIR/kspace")
    sp.add_argument("--sinograms", type=int, default=0, metavar="N",
                    help="also write N CT sinogram files (HDF5: sinogram, theta, reference) under DIR/sinograms")
    sp.set_defaults(func=cmd_synth)

    def source_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("source", help="folder, s3:// prefix, zip/tar archive, DICOMDIR, or a DICOMweb service "
                        "(dicomweb+https://host/dicom-web)")
        sp.add_argument("store")
        sp.add_argument("--query", action="append", type=query_item, metavar="KEY=VALUE",
                        help="DICOMweb source: a QIDO-RS filter, repeatable (Modality=CR,DX StudyDate=20200101-20201231)")

    sp = sub.add_parser("ingest", help="ingest a DICOM archive (folder, s3:// prefix or DICOMweb) into a store")
    source_args(sp)
    sp.add_argument("--shard-mib", type=positive_int, help="target shard size in MiB (default 128)")
    sp.add_argument("--retry-rejected", action="store_true",
                    help="read every rejected input again (transient reasons are retried anyway, up to 3 runs)")
    sp.add_argument("--follow-links", action="store_true",
                    help="follow symbolic links whose target lies inside SOURCE (default: each is recorded LINK_SKIPPED)")
    common(sp)
    sp.set_defaults(func=cmd_ingest)

    sp = sub.add_parser("serve", help="serve a scheduled incremental ingestion (Prefect deployment with a cron schedule)")
    source_args(sp)
    sp.add_argument("--cron", required=True, help='cron schedule, e.g. "0 2 * * *" (02:00 every night in --timezone)')
    sp.add_argument("--timezone", default="UTC", help="IANA time zone the cron times are in (default UTC; e.g. Europe/Berlin)")
    sp.add_argument("--name", default="scheduled", help="deployment name (default: scheduled)")
    sp.add_argument("--cluster", help="Dask scheduler address; default: a local cluster per run")
    sp.set_defaults(func=cmd_serve)

    def process_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--steps", default="preprocess,infer,features,reconstruct",
                        help="comma-separated: preprocess, infer, features, reconstruct (k-space → recon/), "
                             "volumes (CT/MR series → volumes/)")
        sp.add_argument("--model", help="model weights: a TorchScript file (.pt), an ONNX file (.onnx), or a "
                                        "state_dict with --arch")
        sp.add_argument("--arch", help="torchvision architecture of a state_dict model (e.g. densenet121, resnet50)")
        sp.add_argument("--canvas", type=canvas, help="side of the analysis canvas of `images` (default 1024)")
        sp.add_argument("--card", help="model card (JSON or YAML) overriding the one beside the weights")
        sp.add_argument("--embeddings", action="store_true", help="also store penultimate-layer embeddings")
        sp.add_argument("--report", action="store_true", help="write the HTML QC report under STORE/reports/")
        sp.add_argument("--labels", help="with --report: CSV with sop_instance_uid and 0/1 label columns (ROC curves)")

    sp = sub.add_parser("process", help="preprocess, infer and extract features over a store")
    sp.add_argument("store")
    process_args(sp)
    common(sp)
    sp.set_defaults(func=cmd_process)

    sp = sub.add_parser("run", help="ingest then process (infer only with --model)")
    sp.add_argument("source")
    sp.add_argument("store")
    sp.add_argument("--shard-mib", type=positive_int, help="target shard size in MiB (default 128)")
    sp.add_argument("--retry-rejected", action="store_true",
                    help="read every rejected input again (transient reasons are retried anyway, up to 3 runs)")
    sp.add_argument("--follow-links", action="store_true",
                    help="follow symbolic links whose target lies inside SOURCE (default: each is recorded LINK_SKIPPED)")
    process_args(sp)
    common(sp)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("evaluate", help="score predictions against labels (CSV keyed by sop_instance_uid)")
    sp.add_argument("store")
    sp.add_argument("--labels", required=True)
    sp.add_argument("--threshold", type=probability, default=0.5, help="decision threshold, between 0 and 1 (default 0.5)")
    sp.add_argument("--split", help="only label rows whose 'split' column has this value")
    common(sp, cluster=False)
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("demo", help="synthesize an archive and run every stage on a local cluster")
    sp.add_argument("--out", default="radflow-demo", help="output folder (default ./radflow-demo)")
    sp.add_argument("--n", type=positive_int, default=200, help="radiographs (default 200)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--canvas", type=canvas, default=256, help="analysis canvas (default 256 for the demo)")
    sp.add_argument("--epochs", type=positive_int, default=16, help="training epochs of the demo's model (default 16)")
    sp.add_argument("--cluster", help="Dask scheduler address; default: a local cluster")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("verify", help="re-read every stored frame; check CRC32 and chunk presence (exit 1 on problems)")
    sp.add_argument("store")
    common(sp)
    sp.set_defaults(func=cmd_verify)

    sp = sub.add_parser("info", help="versions, pixel decoders available, GPUs")
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser("report", help="write the HTML QC report of a store (thumbnails, rejections, distributions, ROC)")
    sp.add_argument("store")
    sp.add_argument("--labels", help="CSV with sop_instance_uid and 0/1 label columns: adds ROC curves")
    sp.add_argument("--out", help="where to write it (default STORE/reports/qc-<time>.html)")
    sp.add_argument("--model", help="whose predictions to show when the store holds several models' (a name or the "
                                    "start of the weights' SHA-256)")
    common(sp, cluster=False)
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("config", help="print the configuration reference (every RADFLOW_* setting) as Markdown")
    sp.set_defaults(func=cmd_config)

    sp = sub.add_parser("k8s-spec", help="print the DaskCluster resource (YAML) that kind=kubernetes creates")
    sp.add_argument("--workers", type=positive_int, help="worker pods (default RADFLOW_CLUSTER__N_WORKERS or 2)")
    sp.set_defaults(func=cmd_k8s_spec)

    sp = sub.add_parser("compact", help="rewrite each table's many Parquet parts as one file (safe beside readers)")
    sp.add_argument("store")
    sp.add_argument("--table", action="append", help="only this table (repeatable; default: every table)")
    sp.add_argument("--min-parts", type=positive_int, default=2, help="compact a table with at least this many files")
    common(sp, cluster=False)
    sp.set_defaults(func=cmd_compact)

    sp = sub.add_parser("inspect", help="summarize a store: inputs, frames, arrays, tables, objects")
    sp.add_argument("store")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    common(sp, cluster=False)
    sp.set_defaults(func=cmd_inspect)

    from radflow.cli_api import add_parser as add_api
    from radflow.cli_export import add_parser as add_export
    from radflow.cli_versions import add_parsers

    add_parsers(sub, common)
    add_export(sub, common)
    add_api(sub)
    return p


#: the flows each command runs (imported while Prefect's API boots) and whether it needs a cluster throughout
FLOW_COMMANDS = {
    "ingest": (("radflow.flows.ingest",), True), "process": (("radflow.flows.process",), True),
    "run": (("radflow.flows.ingest", "radflow.flows.process"), True), "demo": (("radflow.flows.demo",), True),
    "verify": (("radflow.flows.verify",), True), "report": (("radflow.flows.report",), False),
    "evaluate": (("radflow.flows.evaluate",), False), "serve": (("radflow.flows.schedule",), False),
}


def _engines(args: argparse.Namespace):
    """Prefect's API, the command's flows and its cluster, started side by side (see flows._api.engines)."""
    from radflow.flows._api import engines

    modules, needs_cluster = FLOW_COMMANDS[args.command]
    return engines(modules, cluster=needs_cluster, settings=_settings(args), address=getattr(args, "cluster", None))


def _stop_temporary_api() -> None:
    from radflow.flows._common import stop_temporary_api  # Prefect lives in flows/; imported on the way out only

    stop_temporary_api()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_orchestration(args.verbose)
    interrupted = install_interrupts() if argv is None else {}  # the command line; not an embedding caller
    try:
        if args.command not in NO_SETTINGS:
            check_settings(args)
        if args.command not in FLOW_COMMANDS:
            return int(args.func(args) or 0)
        with _engines(args):
            code = int(args.func(args) or 0)
        if argv is None:  # the command line: what the interpreter's exit would do, less its teardown
            from radflow.cli_interrupts import exit_now

            exit_now(code)
        return code
    except BrokenPipeError:  # `radflow inspect | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # one-line reason; the traceback with --verbose
        if "code" in interrupted:  # what an interrupt broke on its way out (the API server gone ...)
            _stop_temporary_api()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(interrupted["code"])
        if args.verbose:
            raise
        print(f"radflow: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except BaseException as exc:  # an interrupt, or Prefect's TerminationSignal for a SIGTERM during a flow
        if not isinstance(exc, KeyboardInterrupt) and type(exc).__name__ != "TerminationSignal":
            raise
        code = interrupted.get("code") or (143 if type(exc).__name__ == "TerminationSignal" else 130)
        if "code" not in interrupted:
            print("radflow: interrupted", file=sys.stderr)
        if argv is not None:
            return code
        _stop_temporary_api()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # what is left (Prefect's event and log workers) must not hold the exit


def _one_line(exc: BaseException) -> str:
    """A one-line reason for ``exc`` (settings errors name the environment variable)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        errors = exc.errors()
        first = errors[0]
        var = "RADFLOW_" + "__".join(str(p).upper() for p in first.get("loc", ()))
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        value = "<hidden>" if "SECRET" in var or "KEY" in var else repr(first.get("input"))
        return f"invalid setting {var}={value}: {first.get('msg')}{more}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
