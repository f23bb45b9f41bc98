"""``radflow history`` and ``radflow migrate``: a store's versions (see :mod:`radflow.store.versions`)."""

from __future__ import annotations

import argparse
import json


def cmd_history(args: argparse.Namespace) -> int:
    import datetime as dt

    from radflow.cli import _storage_options
    from radflow.store import versions
    from radflow.store.lock import writer

    options = _storage_options(args)
    if not versions.is_versioned(args.store, options):
        print(f"{args.store} is a format-1 store: it has no versions (`radflow migrate {args.store}` makes it versioned)")
        return 0
    if args.expire_older_than is not None:
        cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=args.expire_older_than)
        with writer(args.store, options, command="history --expire-older-than"):
            out = versions.expire(args.store, cutoff, options)
        print(f"expired {out['versions_expired']} versions older than {cutoff:%Y-%m-%d %H:%M} UTC; deleted "
              f"{out['chunks_deleted']} chunks and {out['table_files_deleted']} table files no version uses")
        return 0
    rows = versions.history(args.store, options)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        if r["checkpoint"] and not args.all:
            continue
        summary = ", ".join(f"{k} {v}" for k, v in r["summary"].items() if not isinstance(v, dict))
        steps = r["summary"].get("steps") or {}
        summary += ", ".join(f"{k} {v.get('frames', 0)} frames" for k, v in steps.items())
        print(f"{r['version']}  {r['time']}  {r['message']:<28} {summary}")
    hidden = sum(r["checkpoint"] for r in rows)
    if hidden and not args.all:
        print(f"({hidden} checkpoint versions not shown: --all)")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from radflow.cli import _storage_options
    from radflow.store.migrate import migrate

    out = migrate(args.store, _storage_options(args))
    if out["already"]:
        print(f"{out['store']} is already format 2")
    else:
        print(f"{out['store']}: format 1 → 2, {out['objects']} objects ({out['bytes'] / 1e6:.1f} MB) copied, "
              f"{out['table_parts']} table parts listed, version {out['version']} in {out['seconds']:.1f} s")
    return 0


def add_parsers(sub, common) -> None:
    sp = sub.add_parser("history", help="list a store's versions (each run that wrote it); expire old ones")
    sp.add_argument("store")
    sp.add_argument("--all", action="store_true", help="also the checkpoint versions inside runs")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--expire-older-than", type=float, metavar="DAYS", default=None,
                    help="forget versions older than DAYS days (the newest stays) and delete what none of the others uses")
    common(sp, cluster=False)
    sp.set_defaults(func=cmd_history)

    sp = sub.add_parser("migrate", help="turn a format-1 store into a versioned (format 2) store, in place")
    sp.add_argument("store")
    common(sp, cluster=False)
    sp.set_defaults(func=cmd_migrate)
