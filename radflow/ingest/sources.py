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

__all__ = ["InputRef", "discover", "read_bytes", "open_input"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True, slots=True)  # one per discovered input: slots halve its size
class InputRef:
    """One discovered input file (or archive member).

    ``version`` changes when the object changes (local mtime in ns, S3 ETag, member
    CRC); together with ``size`` it decides whether a later run sees the input as new.
    ``unsafe`` holds why the path must not be opened; it is then rejected without being read,
    with ``reason`` (``ARCHIVE_UNSAFE_MEMBER`` for archive members, ``LINK_SKIPPED`` for links
    not followed, ``NOT_REGULAR_FILE`` for FIFOs, sockets and devices, ``IO_ERROR`` for a folder
    that cannot be listed).
    """

    uri: str
    size: int
    version: str
    unsafe: str | None = field(default=None, compare=False)
    reason: str = field(default="ARCHIVE_UNSAFE_MEMBER", compare=False)
    source: str = field(default="", compare=False)  # what tables record (a keyed hash when paths are hashed)

    @property
    def label(self) -> str:
        return self.source or self.uri


def _uri(fs, path: str, remote: bool) -> str:
    return fs.unstrip_protocol(path) if remote else path


def discover(source: str, storage_options: dict[str, Any] | None = None, limits: Limits | None = None, *,
             follow_links: bool = False, query: dict[str, str] | None = None,
             secret: bytes | None = None) -> list[InputRef]:
    """List every path under ``source`` (recursively), sorted by URI: regular files to ingest, and
    every other path a local walk meets, each to be rejected with its reason (so every path ends
    with one ledger row): links not followed (``LINK_SKIPPED``), FIFOs, sockets and devices
    (``NOT_REGULAR_FILE``), folders that cannot be listed (``IO_ERROR``).

    ``follow_links`` follows symbolic links whose target lies inside the source root (never one
    that leaves it, nor a loop). Zip and tar archives (by suffix) are listed member by member
    instead of as files (see :mod:`radflow.ingest.archives`). A ``source`` that is a DICOMDIR
    file lists the files that DICOM media directory references. Hidden files and folders (name
    starting with ``.``) are skipped.

    A ``dicomweb+http(s)://`` source lists the archive's instances that match ``query`` (QIDO-RS
    attributes, see :mod:`radflow.ingest.dicomweb`), labelled with their SOP Instance UID keyed by
    ``secret``.
    """
    from radflow.ingest import dicomweb
    from radflow.ingest.archives import is_archive, list_members

    if dicomweb.is_dicomweb(source):
        if secret is None:
            raise ValueError("a DICOMweb source needs the store's key (its instances are labelled by keyed UIDs)")
        return dicomweb.discover(source, query, secret, dicomweb.options(storage_options)[0])
    if query:
        raise ValueError("a query (--query) selects instances of a DICOMweb source only")

    limits = limits or Limits()
    url = normalize(source)
    fs, root = filesystem(url, storage_options)
    remote = is_remote(url)
    if not fs.exists(root):
        raise FileNotFoundError(f"source {url!r} does not exist")
    refs: list[InputRef] = []
    if fs.isfile(root) and not remote and os.path.basename(root).upper() == "DICOMDIR":
        found = _dicomdir_members(fs, root)
        root = os.path.dirname(root)
    elif fs.isfile(root):
        found = {root: fs.info(root)}
    elif not remote:
        found, refused = _walk_local(root, follow_links)
        refs += refused
    else:
        found = fs.find(root, withdirs=False, detail=True)
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


def _walk_local(root: str, follow_links: bool) -> tuple[dict[str, dict[str, Any]], list[InputRef]]:
    """Regular files under ``root`` (``path → {"size", "mtime"}``) and a rejected ref for every other
    path met. Links are followed only with ``follow_links``, only inside ``root``, never in a loop."""
    import stat

    top = os.path.realpath(root)
    found: dict[str, dict[str, Any]] = {}
    refused: list[InputRef] = []
    visited: set[str] = {top}

    def refuse(path: str, reason: str, why: str) -> None:
        refused.append(InputRef(path, 0, "", why, reason))

    def visit(folder: str) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            refuse(folder, "IO_ERROR", f"folder cannot be listed ({type(exc).__name__}); its contents are unknown")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = entry.path
            try:
                if entry.is_symlink():
                    if not follow_links:
                        refuse(path, "LINK_SKIPPED", "a symbolic link (links are not followed; "
                               "RADFLOW_FOLLOW_LINKS=true follows those inside the source)")
                        continue
                    target = os.path.realpath(path)
                    if os.path.commonpath([top, target]) != top:
                        refuse(path, "LINK_SKIPPED", "a symbolic link that leaves the source root (never followed)")
                        continue
                    if not os.path.exists(target):
                        refuse(path, "LINK_SKIPPED", "a symbolic link to nothing")
                        continue
                    if os.path.isdir(target):
                        if target in visited:
                            refuse(path, "LINK_SKIPPED", "a symbolic link back into a folder already walked (a loop)")
                            continue
                        visited.add(target)
                        visit(path)
                        continue
                mode = os.stat(path).st_mode  # follows an accepted link
                if stat.S_ISDIR(mode):
                    real = os.path.realpath(path)
                    if real not in visited:
                        visited.add(real)
                        visit(path)
                elif stat.S_ISREG(mode):
                    st = os.stat(path)
                    found[path] = {"size": st.st_size, "mtime": st.st_mtime, "type": "file"}  # as fsspec's info
                else:
                    kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"
                    refuse(path, "NOT_REGULAR_FILE", f"a {kind}, not a regular file (never opened)")
            except OSError as exc:
                refuse(path, "IO_ERROR", f"cannot stat the path ({type(exc).__name__})")

    visit(root)
    return found, refused


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
    from radflow.ingest import dicomweb
    from radflow.ingest.archives import is_member_uri, read_member

    if dicomweb.is_dicomweb(uri):
        return dicomweb.retrieve(uri, storage_options, max_bytes)
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


def open_input(uri: str, storage_options: dict[str, Any] | None = None, max_bytes: int | None = None):
    """A binary file object over one input for reading its header (local or fsspec, read in 256 KiB blocks,
    so the pixels need not be read); an archive member is read whole. ``IO_ERROR`` if it cannot be opened."""
    import io

    from radflow.ingest.archives import is_member_uri

    if is_member_uri(uri):
        return io.BytesIO(read_bytes(uri, storage_options, max_bytes))
    fs, path = filesystem(uri, storage_options)
    try:
        return fs.open(path, "rb", block_size=256 * 1024) if "://" in uri else open(path, "rb")
    except OSError as exc:
        raise InputRejected(Reason.IO_ERROR, f"cannot open input: {type(exc).__name__}") from None
