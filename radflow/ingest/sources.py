"""Discover inputs under a source URL (a local directory or an ``s3://`` prefix)."""

from __future__ import annotations

import logging
import os
import tarfile
import zipfile
from dataclasses import dataclass, field
from typing import Any

from radflow.config import Limits
from radflow.errors import InputRejected, Reason
from radflow.store.urls import filesystem, is_remote, normalize

__all__ = ["InputRef", "discover", "read_bytes"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class InputRef:
    """One discovered input file (or archive member).

    ``version`` changes when the object changes (local mtime in ns, S3 ETag, member
    CRC); together with ``size`` it decides whether a later run sees the input as new.
    ``unsafe`` holds why an archive member must not be opened (then it is rejected as
    ``ARCHIVE_UNSAFE_MEMBER`` without being read).
    """

    uri: str
    size: int
    version: str
    unsafe: str | None = field(default=None, compare=False)
    source: str = field(default="", compare=False)  # what tables record (a keyed hash when paths are hashed)

    @property
    def label(self) -> str:
        return self.source or self.uri


def _uri(fs, path: str, remote: bool) -> str:
    return fs.unstrip_protocol(path) if remote else path


def discover(source: str, storage_options: dict[str, Any] | None = None, limits: Limits | None = None) -> list[InputRef]:
    """List every regular file under ``source`` (recursively), sorted by URI.

    Zip and tar archives (by suffix) are listed member by member instead of as files
    (see :mod:`radflow.ingest.archives`). A ``source`` that is a DICOMDIR file lists
    the files that DICOM media directory references. Hidden files and folders (name
    starting with ``.``) are skipped.
    """
    from radflow.ingest.archives import is_archive, list_members

    limits = limits or Limits()
    url = normalize(source)
    fs, root = filesystem(url, storage_options)
    remote = is_remote(url)
    if not fs.exists(root):
        raise FileNotFoundError(f"source {url!r} does not exist")
    if fs.isfile(root) and not remote and os.path.basename(root).upper() == "DICOMDIR":
        found = _dicomdir_members(fs, root)
        root = os.path.dirname(root)
    elif fs.isfile(root):
        found = {root: fs.info(root)}
    else:
        found = fs.find(root, withdirs=False, detail=True)
    refs = []
    for path, info in found.items():
        rel = path[len(root) :].lstrip("/")
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if info.get("type", "file") != "file":
            continue
        version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
        if isinstance(version, float):
            version = str(int(version * 1e9))
        uri, size, version = _uri(fs, path, remote), int(info.get("size") or 0), str(version).strip('"')
        if is_archive(path):
            try:
                for m_uri, m_size, m_version, unsafe in list_members(uri, size, limits, storage_options):
                    refs.append(InputRef(m_uri, m_size, f"{version}:{m_version}", unsafe))
                continue
            except (OSError, EOFError, ValueError, zipfile.BadZipFile, tarfile.TarError):
                pass  # not a readable archive: ingest it as a plain file (it will be rejected with its reason)
        refs.append(InputRef(uri, size, version))
    refs.sort()
    log.info("discovered %d inputs under %s", len(refs), url)
    return refs


def _dicomdir_members(fs, path: str) -> dict[str, dict[str, Any]]:
    """The files a DICOMDIR (DICOM media directory) references, with their info (the DICOMDIR too)."""
    import pydicom
    from pydicom.fileset import FileSet

    try:
        fileset = FileSet(pydicom.dcmread(path))
    except Exception as exc:  # a broken DICOMDIR is an error of the source, not of one input
        raise ValueError(f"{path!r} is not a readable DICOMDIR ({type(exc).__name__})") from None
    found = {path: fs.info(path)}
    for instance in fileset:
        member = os.path.normpath(instance.path)
        if fs.exists(member):
            found[member] = fs.info(member)
    return found


def read_bytes(uri: str, storage_options: dict[str, Any] | None = None, max_bytes: int | None = None) -> bytes:
    """Read one input (a file or an archive member) whole; I/O failures become ``IO_ERROR`` rejections."""
    from radflow.ingest.archives import is_member_uri, read_member

    if is_member_uri(uri):
        return read_member(uri, storage_options, max_bytes)
    try:
        fs, path = filesystem(uri, storage_options)
        if max_bytes is not None:
            size = fs.size(path)
            if size is not None and size > max_bytes:
                raise InputRejected(Reason.DIMENSION_LIMIT, f"file of {size} bytes exceeds limit {max_bytes}")
        return fs.cat_file(path)
    except InputRejected:
        raise
    except (OSError, ValueError) as exc:
        raise InputRejected(Reason.IO_ERROR, f"cannot read input: {type(exc).__name__}") from exc
