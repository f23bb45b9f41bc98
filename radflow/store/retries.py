"""Retries for a versioned store's storage: what Icechunk does not retry itself (a response whose body
breaks off, a reset connection mid-transfer) is tried again here, with exponential back-off."""

from __future__ import annotations

import time
from typing import Any, Callable

__all__ = ["transient", "retried", "RetryingStore"]

#: what an object store's hiccup looks like in Icechunk's errors (a reset connection, a body cut short, a 503)
_TRANSIENT = ("streaming", "connection", "reset by peer", "timed out", "timeout", "503", "slowdown", "slow down",
              "dispatch failure", "io error", "broken pipe", "unexpected eof", "error reading", "incomplete body",
              "throttl", "service unavailable", "internal error")


def transient(exc: BaseException) -> bool:
    """Whether an error of the storage is worth another attempt."""
    text = str(exc).lower()
    return type(exc).__name__ == "IcechunkError" and any(t in text for t in _TRANSIENT)


def retried(fn: Callable[..., Any], *args: Any, attempts: int = 8, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, again after a transient storage error (exponential back-off with jitter,
    ``attempts`` in all). Icechunk retries failed requests itself; a response whose body breaks off
    (a reset connection mid-transfer) reaches radflow as an error, and is retried here."""
    import random

    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt == attempts - 1 or not transient(exc):
                raise
            time.sleep(min(2.0, 0.05 * 2 ** attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def _retrying_store_class():
    from zarr.storage import WrapperStore

    class _RetryingStore(WrapperStore):
        """An Icechunk session's Zarr store whose reads and writes are tried again after a transient storage
        error (see :func:`retried`)."""

        async def _again(self, name: str, *args: Any, **kwargs: Any) -> Any:
            import asyncio
            import random

            for attempt in range(8):
                try:
                    return await getattr(self._store, name)(*args, **kwargs)
                except Exception as exc:
                    if attempt == 7 or not transient(exc):
                        raise
                    await asyncio.sleep(min(2.0, 0.05 * 2 ** attempt) * (0.5 + random.random()))

        async def get(self, key: str, *args: Any, **kwargs: Any) -> Any:
            import asyncio

            out = await self._again("get", key, *args, **kwargs)
            # Icechunk answers "no such key" when the version's snapshot could not be fetched (a transfer that
            # broke off): the root of a radflow store always exists once made, so its absence is asked again
            for attempt in range(4 if key == "zarr.json" and getattr(self, "root_expected", True) else 0):
                if out is not None:
                    break
                await asyncio.sleep(0.05 * 2 ** attempt)
                out = await self._again("get", key, *args, **kwargs)
            return out

        async def get_partial_values(self, *args: Any, **kwargs: Any) -> Any:
            return await self._again("get_partial_values", *args, **kwargs)

        async def exists(self, *args: Any, **kwargs: Any) -> Any:
            return await self._again("exists", *args, **kwargs)

        async def set(self, *args: Any, **kwargs: Any) -> Any:
            return await self._again("set", *args, **kwargs)

        async def delete(self, *args: Any, **kwargs: Any) -> Any:
            return await self._again("delete", *args, **kwargs)

    return _RetryingStore


def RetryingStore(zstore, *, root_expected: bool = True):  # noqa: N802 - a class made on first use (zarr imported lazily)
    """``zstore`` (an Icechunk session's store) with retries after transient storage errors.
    ``root_expected=False``: the session may hold no root yet (a new store), so a missing root is not
    asked again."""
    global _RETRYING
    if _RETRYING is None:
        _RETRYING = _retrying_store_class()
    out = _RETRYING(zstore)
    out.root_expected = root_expected
    return out


_RETRYING = None
