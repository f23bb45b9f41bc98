"""Keyed hashes that replace identifying values before anything is written.

Patient and study keys are HMAC-SHA256 digests under the installation's secret key;
UIDs are remapped to the ``2.25.<integer>`` form (a UUID-derived UID, PS3.5 B.2), so
references between objects stay consistent across runs and workers, but the original
values cannot be recovered without the key.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["keyed_hash", "remap_uid", "source_label"]


def keyed_hash(key: bytes, value: str, *, purpose: str, n_hex: int = 20) -> str:
    """Hex digest of ``value`` under ``key``; ``purpose`` separates the key spaces.

    An empty value maps to ``""`` (absent stays absent).
    """
    if not value:
        return ""
    mac = hmac.new(key, f"{purpose}\0{value}".encode(), hashlib.sha256)
    return mac.hexdigest()[:n_hex]


def remap_uid(key: bytes, uid: str) -> str:
    """Deterministic replacement UID ``2.25.<int>`` (at most 44 characters) for ``uid``."""
    if not uid:
        return ""
    digest = hmac.new(key, f"uid\0{uid}".encode(), hashlib.sha256).digest()[:16]
    return "2.25." + str(int.from_bytes(digest, "big"))


def source_label(key: bytes, uri: str) -> str:
    """What the ``source`` columns hold for ``uri`` when source paths are hashed (one label per path,
    stable across runs with the same key)."""
    return "hmac-sha256:" + keyed_hash(key, uri, purpose="source", n_hex=32)
