"""A local Dask cluster (scheduler and nannies) in a process of its own.

The flow process only holds a client. Started in the flow process, the scheduler and the nannies
shared its interpreter lock with the imports of the flows while they started (they took 4–5 s on two
cores where either alone takes 1.5–2.5 s) and with Prefect's threads while the run went on. The
cluster process reads its settings and the modules its workers start with (one JSON line) from its
standard input (with two workers or more, the server they are forked from starts at once, importing
those while this process imports Dask and starts the scheduler), answers with one line
(``{"address": …, "workers": n}`` or ``{"error": …}``) on its standard output, and closes the
cluster when its standard input ends: when the command closes it, or when the command dies
however it dies (the kernel closes the pipe). It ignores SIGINT, as do the worker processes it
starts: a terminal's Ctrl-C reaches the whole process group, and it is the command that stops
the run and then closes the cluster. It and its workers run ``settings.nice`` steps nicer than the
command: on two cores, the flow run's start with Prefect's API (a few short HTTP round trips) waited
behind the workers' start. Six pairs of runs (64 radiographs): at niceness 5 the first batch was
submitted at 3.8–4.0 s (0: 4.0–6.1 s) and the command ended at 6.2–6.7 s (0: 6.5–8.8 s).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from radflow.config import ClusterSettings

__all__ = ["ClusterProcess"]


class ClusterProcess:
    """The command's side: the process started at once, its answer awaited by :meth:`wait`."""

    def __init__(self, settings: ClusterSettings, preload: tuple[str, ...] = ()) -> None:
        self.settings = settings
        # its errors (and its workers') reach the command's through a pipe the command reads, not the command's
        # own stderr: a reader of the command's output (a pipe, a CI log) sees the end when the command exits,
        # not when the last worker has stopped
        self.process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, bufsize=1, errors="replace")
        threading.Thread(target=_forward, args=(self.process.stderr,), name="radflow-cluster-stderr", daemon=True).start()
        self.process.stdin.write(json.dumps({"settings": settings.model_dump(mode="json"), "preload": list(preload),
                                             "log_level": logging.getLogger().getEffectiveLevel()}) + "\n")
        self.process.stdin.flush()
        self.scheduler_address = ""
        self.workers: dict[str, Any] = {}

    def wait(self) -> "ClusterProcess":
        answer: list[str] = []
        reader = threading.Thread(target=lambda: answer.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.settings.start_timeout_s + 60)
        line = answer[0].strip() if answer else ""
        if not line:
            proc = self.process
            self.close(timeout=5)
            raise RuntimeError(f"the local Dask cluster did not start within {self.settings.start_timeout_s + 60:.0f} s"
                               if not answer else f"the local Dask cluster's process exited ({proc.returncode})")
        reply = json.loads(line)
        if "error" in reply:
            self.close(timeout=5)
            raise RuntimeError(f"the local Dask cluster failed to start: {reply['error']}")
        self.scheduler_address = reply["address"]
        self.workers = dict.fromkeys(reply["workers"])
        return self

    def close(self, timeout: float | None = None) -> None:
        """Have the cluster process close the cluster and exit; with ``timeout``, wait for it so long
        (then kill it). Without, the command goes on (to its exit) while the workers stop."""
        proc, self.process = self.process, None
        if proc is None:
            return
        try:
            proc.stdin.close()  # the cluster process closes the cluster and exits
            if timeout is not None:
                proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            proc.stdout.close()  # (its stderr is closed by the reader at the end of the stream)


def _forward(stream) -> None:
    """The cluster process's error lines, written to the command's ``sys.stderr`` while the command runs."""
    try:
        for line in stream:
            sys.stderr.write(line)
            sys.stderr.flush()
    except (OSError, ValueError):  # the command's stderr closed, or the pipe closed under the reader
        pass


def _main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the worker processes
    message = json.loads(sys.stdin.readline())
    # radflow's own messages, as the command shows them (its errors go to the command's stderr)
    logging.basicConfig(level=message["log_level"], format="%(levelname)s %(name)s: %(message)s")
    settings = ClusterSettings.model_validate(message["settings"])
    if settings.nice:  # (inherited by the workers) the command's latency-bound work goes first on a busy machine
        os.nice(settings.nice)
    from radflow.cluster.local import _start, forked_workers, start_forkserver

    # the server's imports run while this process imports Dask and starts the scheduler
    forked = forked_workers(settings) and start_forkserver(settings, tuple(message["preload"]))
    import dask
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else printed goes where the command's own errors go
    try:
        cluster = _start(settings, forked)
    except Exception as exc:  # handed to the command
        out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        out.flush()
        raise SystemExit(1) from None
    # a nanny restarts its worker after a decoder kills it; the cluster must not close the nanny when its
    # worker is found missing between two restarts (read by the cluster at each worker's removal)
    dask.config.set({"distributed.deploy.lost-worker-timeout": "1h"})
    try:
        try:
            out.write(json.dumps({"address": cluster.scheduler_address, "workers": list(cluster.workers)}) + "\n")
            out.flush()
        except OSError:  # the command is gone (or gave up on this cluster) already
            return
        sys.stdin.read()  # until the command closes it or is gone
    finally:
        cluster.close(timeout=20)


if __name__ == "__main__":
    _main()
