"""The command line's argument types and the checks that run before Prefect or Dask start:
settings and the key, paths, steps and files, each error naming what the user typed."""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["positive_int", "probability", "canvas", "NO_SETTINGS", "STEPS", "split_steps", "check_settings",
           "check_arguments"]


def split_steps(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def query_item(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of ``--query`` (a QIDO-RS attribute: a keyword such as ``Modality`` or a tag ``00080060``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. Modality=CR,DX or StudyDate=20200101-20201231)")
    return key.strip(), value.strip()


def probability(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return value


def canvas(text: str) -> int:
    value = positive_int(text)
    if value < 16 or value > 16384 or value % 2:
        raise argparse.ArgumentTypeError(f"must be an even size from 16 to 16384 pixels, got {value}")
    return value


#: commands that need no settings (they print documentation or versions)
NO_SETTINGS = {"config", "info", "synth", "api"}


def check_settings(args: argparse.Namespace) -> None:
    """Settings and the key checked before anything starts: a bad value names its variable at once,
    an unknown ``RADFLOW_*`` name (a typo) is reported as a warning."""
    from radflow.config import Settings, resolve_secret_key, unknown_environment

    for name in unknown_environment():
        print(f"radflow: warning: {name} is not a radflow setting and is ignored (see `radflow config`)", file=sys.stderr)
    settings = Settings()
    check_arguments(args)
    if args.command in ("ingest", "run", "demo", "serve", "process"):
        try:
            resolve_secret_key(settings)
        except ValueError as exc:
            from radflow.errors import ConfigError

            raise ConfigError(str(exc)) from None


#: the built-in processing steps (kept here so a typo is reported before Prefect or Dask start; a test keeps
#: it equal to the registry's built-ins); a step not among them is looked up in the registry (entry points)
STEPS = ("preprocess", "infer", "features", "reconstruct", "volumes")


def check_arguments(args: argparse.Namespace) -> None:
    """Paths, steps and files checked before Prefect or Dask start; errors name the argument typed."""
    from radflow.errors import ConfigError

    def local(url: str) -> bool:
        return "://" not in url or url.startswith("file://")

    def path(url: str) -> str:
        return url[len("file://"):] if url.startswith("file://") else url

    source = getattr(args, "source", None)
    if source and local(source) and not os.path.exists(path(source)):
        raise ConfigError(f"SOURCE {source!r} does not exist")
    if getattr(args, "query", None) and source and not source.startswith("dicomweb+"):
        raise ConfigError("--query selects instances of a DICOMweb SOURCE (dicomweb+https://host/path) only")
    if source and source.startswith("dicomweb+"):
        from radflow.config import Settings
        from radflow.ingest.dicomweb import check

        check(source, Settings().dicomweb)  # the URL, the credentials and the service, in a second
    store = getattr(args, "store", None)
    if store and args.command not in ("ingest", "run", "serve") and local(store) \
            and not os.path.exists(os.path.join(path(store), "zarr.json")) \
            and not os.path.isdir(os.path.join(path(store), "repo", "refs")):
        from radflow.errors import StoreNotFoundError

        raise StoreNotFoundError(f"no radflow store at STORE {store!r} (neither repo/ nor zarr.json there); create one with "
                                 "`radflow ingest SOURCE STORE`")
    steps = getattr(args, "steps", None)
    if steps is not None:
        unknown = sorted(set(split_steps(steps)) - set(STEPS))
        if unknown:
            from radflow.stages import registered

            known = registered()
            unknown = [s for s in unknown if s not in known]
        if unknown or not split_steps(steps):
            from radflow.stages import registered

            raise ConfigError(f"--steps {steps!r}: unknown steps {unknown}; choose from {', '.join(registered())}")
    for flag in ("model", "card", "labels"):
        value = getattr(args, flag, None)
        if value and local(value) and not os.path.isfile(path(value)):
            raise ConfigError(f"--{flag} {value!r} is not a file")
