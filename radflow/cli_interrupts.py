"""How the ``radflow`` command ends: on SIGINT and SIGTERM (exit 130 / 143 within seconds), and after a flow
command without the interpreter's teardown."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

__all__ = ["INTERRUPT_GRACE_S", "install_interrupts", "exit_now"]

#: a run is given this long to unwind (cancel Dask work, close the cluster, mark the Prefect run) after a signal
INTERRUPT_GRACE_S = 6.0


def install_interrupts() -> dict[str, int]:
    """SIGINT and SIGTERM stop the command: the first raises ``KeyboardInterrupt`` in the main thread
    (in-flight work is abandoned, the cluster is closed, Prefect marks the run crashed while its API
    is up; the store is left as after a crash, which the next run resumes) and, whatever happens
    while unwinding, the process exits ``128 + signal`` within ``INTERRUPT_GRACE_S``; a second
    signal exits at once. Orchestration logging is silenced (its API server may be gone)."""
    import signal
    import threading

    state: dict[str, int] = {}

    def handler(signum: int, frame: Any) -> None:
        code = 128 + signum
        if "code" in state:
            os._exit(state["code"])
        state["code"] = code
        for name in ("prefect", "distributed", "httpx", "uvicorn"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        print("radflow: interrupted", file=sys.stderr, flush=True)
        timer = threading.Timer(INTERRUPT_GRACE_S, lambda: os._exit(code))
        timer.daemon = True
        timer.start()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return state


def exit_now(code: int) -> None:
    """End the process as the interpreter would, less the teardown of every module and object (Prefect,
    Dask, Zarr, pydicom, pyarrow): after a flow command that took 1.2 s of a 2-core machine. Non-daemon
    threads are joined and ``atexit`` handlers run first, as at a normal exit."""
    import atexit
    import threading

    threading._shutdown()  # what the interpreter's exit does first: join the non-daemon threads
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
