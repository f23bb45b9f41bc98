"""In-process progress events from flows to whoever listens (the CLI's progress bars).

Library code never prints; flows call :func:`report`, and a front end registers a
callback with :func:`listen`. Events carry counts only, never identifying values.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator

__all__ = ["report", "listen"]

_LOCK = threading.Lock()
_LISTENERS: list[Callable[[str, dict[str, Any]], None]] = []


def report(event: str, **info: Any) -> None:
    """Send ``event`` (``stage-start``, ``stage-advance``, ``stage-end``, ``dashboard``, ``note``) to listeners."""
    with _LOCK:
        listeners = list(_LISTENERS)
    for cb in listeners:
        try:
            cb(event, info)
        except Exception:  # a broken display must not break the run
            pass


@contextlib.contextmanager
def listen(callback: Callable[[str, dict[str, Any]], None]) -> Iterator[None]:
    with _LOCK:
        _LISTENERS.append(callback)
    try:
        yield
    finally:
        with _LOCK:
            _LISTENERS.remove(callback)
