"""Zip and tar archives as sources, read member by member without extracting to disk.

Members are addressed as ``zip://<member>::<archive URL>`` or
``tar://<member>::<archive URL>`` (fsspec's chained-URL form; the archive may be local
or on S3). Listing checks every member before anything is read: names that are
absolute or climb out of the archive (``..``), links, devices and FIFOs, members
larger than the file limit and absurd compression ratios become
``ARCHIVE_UNSAFE_MEMBER`` rejections and are never opened.
"""

from __future__ import annotations

import posixpath
import stat
import tarfile
import zipfile
from typing import Any, Iterator

from radflow.config import Limits
from radflow.errors import InputRejected, Reason
from radflow.store.urls import filesystem

__all__ = ["ARCHIVE_SUFFIXES", "is_archive", "is_member_uri", "list_members", "read_member"]

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def is_member_uri(uri: str) -> bool:
    return uri.startswith(("zip://", "tar://")) and "::" in uri


def _kind(path: str) -> str:
    return "zip" if path.lower().endswith(".zip") else "tar"


def _unsafe_name(name: str) -> str | None:
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\\" in name:
        return "absolute or non-POSIX member path"
    if ".." in posixpath.normpath(name).split("/"):
        return "member path escapes the archive root"
    return None


def list_members(archive_uri: str, archive_size: int, limits: Limits,
                 storage_options: dict[str, Any] | None = None) -> Iterator[tuple[str, int, str, str | None]]:
    """Yield ``(member URI, size, version, rejection detail or None)`` for every file member."""
    fs, path = filesystem(archive_uri, storage_options)
    kind = _kind(path)
    with fs.open(path, "rb") as fh:
        if kind == "zip":
            with zipfile.ZipFile(fh) as zf:
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    mode = info.external_attr >> 16
                    why = _unsafe_name(info.filename)
                    if why is None and stat.S_ISLNK(mode):
                        why = "symbolic link member"
                    elif why is None and info.file_size > limits.max_file_bytes:
                        why = f"member of {info.file_size} bytes exceeds the file limit"
                    elif why is None and info.file_size > 1_000_000 and info.file_size / max(1, info.compress_size) > limits.max_compression_ratio:
                        why = f"compression ratio {info.file_size / max(1, info.compress_size):.0f}:1 exceeds {limits.max_compression_ratio:.0f}:1"
                    yield f"zip://{info.filename}::{archive_uri}", int(info.file_size), f"{info.CRC:08x}", why
            return
        with tarfile.open(fileobj=fh, mode="r:*") as tf:
            members = tf.getmembers()
    total = sum(m.size for m in members if m.isfile())
    compressed = not path.lower().endswith(".tar")
    ratio_why = None
    if compressed and total > 1_000_000 and total / max(1, archive_size) > limits.max_compression_ratio:
        ratio_why = f"archive expands {total / max(1, archive_size):.0f}:1, over {limits.max_compression_ratio:.0f}:1"
    for m in members:
        if m.isdir():
            continue
        why = _unsafe_name(m.name)
        if why is None and (m.issym() or m.islnk()):
            why = "link member"
        elif why is None and (m.isdev() or m.isfifo() or not m.isfile()):
            why = "device, FIFO or special member"
        elif why is None and m.size > limits.max_file_bytes:
            why = f"member of {m.size} bytes exceeds the file limit"
        yield f"tar://{m.name}::{archive_uri}", int(m.size), f"{int(m.mtime)}:{m.size}", why or ratio_why


def read_member(uri: str, storage_options: dict[str, Any] | None = None, max_bytes: int | None = None) -> bytes:
    """Bytes of one archive member (``zip://m::archive`` or ``tar://m::archive``)."""
    scheme, rest = uri.split("://", 1)
    member, archive = rest.split("::", 1)
    fs, path = filesystem(archive, storage_options)
    try:
        with fs.open(path, "rb") as fh:
            if scheme == "zip":
                with zipfile.ZipFile(fh) as zf:
                    info = zf.getinfo(member)
                    if max_bytes is not None and info.file_size > max_bytes:
                        raise InputRejected(Reason.ARCHIVE_UNSAFE_MEMBER, "member exceeds the file limit")
                    return zf.read(info)
            with tarfile.open(fileobj=fh, mode="r:*") as tf:
                m = tf.getmember(member)
                if not m.isfile():
                    raise InputRejected(Reason.ARCHIVE_UNSAFE_MEMBER, "not a regular file member")
                if max_bytes is not None and m.size > max_bytes:
                    raise InputRejected(Reason.ARCHIVE_UNSAFE_MEMBER, "member exceeds the file limit")
                f = tf.extractfile(m)
                return f.read() if f is not None else b""
    except (KeyError, zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        raise InputRejected(Reason.IO_ERROR, f"cannot read archive member: {type(exc).__name__}") from None
