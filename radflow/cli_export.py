"""``radflow export``: a store's results back as DICOM (see :mod:`radflow.export.results`)."""

from __future__ import annotations

import argparse


def cmd_export(args: argparse.Namespace) -> int:
    from radflow.cli import _storage_options
    from radflow.errors import ConfigError
    from radflow.export.results import export_predictions

    if args.masks:
        raise ConfigError("--masks: no stage in this radflow writes segmentation masks, so there is nothing to "
                          "export as DICOM SEG (predictions export as SR with --predictions)")
    if not args.predictions:
        raise ConfigError("say what to export: --predictions (DICOM SR)")
    out = export_predictions(args.store, args.to, source=args.source, query=dict(args.query) if args.query else None,
                             storage_options=_storage_options(args))
    print(f"{out['reports']} DICOM SR reports for {out['matched']} of {out['instances']} predicted instances → {out['to']}")
    if out["not_found"]:
        print(f"{out['not_found']} predicted instances are no longer in the source (not exported)")
    return 0


def add_parser(sub, common) -> None:
    from radflow.cli_checks import query_item

    sp = sub.add_parser("export", help="a store's predictions as DICOM SR, to a folder or a DICOMweb archive (STOW-RS)")
    sp.add_argument("store")
    sp.add_argument("--to", required=True, metavar="DIR|dicomweb+https://…",
                    help="a folder, or a DICOMweb service to send the reports to (STOW-RS)")
    sp.add_argument("--predictions", action="store_true", help="each predicted image's outputs as a Comprehensive SR "
                    "(TID 1500) referencing it, with the model's name and weights sha256")
    sp.add_argument("--masks", action="store_true", help="segmentation masks as DICOM SEG (where a stage wrote masks)")
    sp.add_argument("--source", help="where the images are now (default: the store's source); listed again to "
                    "re-identify the store's keyed UIDs")
    sp.add_argument("--query", action="append", type=query_item, metavar="KEY=VALUE",
                    help="DICOMweb source: list only these instances (QIDO-RS filter, repeatable)")
    common(sp, cluster=False)
    sp.set_defaults(func=cmd_export)
