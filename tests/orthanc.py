"""A real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) for the DICOMweb tests, and a small
HTTP proxy in front of it that injects faults.

Orthanc listens on 127.0.0.1 only, on free ports, with HTTP basic authentication, its storage in a
folder of the test's (a stopped server started again on the same folder holds the same instances).
The proxy forwards every request; it answers ``503`` to every ``every_503``-th request without
forwarding it (each request at most once, so its retry passes), ``404`` to the retrieves of the SOP
Instance UIDs in ``missing``, and calls ``on_retrieve(n)`` before forwarding the ``n``-th WADO-RS
instance retrieve (a test stops Orthanc there); it counts the most requests it had in flight at once.
A request it cannot forward (Orthanc stopped) gets ``502``, as a gateway in front of a stopped archive
answers.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "radflow", "orthanc-test-password"


def orthanc_binary() -> str:
    found = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.path.exists(p)), None)
    if found and os.path.exists(PLUGIN):
        return found
    if os.environ.get("CI"):
        pytest.fail("Orthanc with its DICOMweb plugin is needed (make test installs Debian's orthanc orthanc-dicomweb)")
    pytest.skip("no Orthanc here (apt-get install orthanc orthanc-dicomweb); make test installs it")


def _die_with_parent() -> None:
    """Orthanc ends with the test process, however that ends (Linux: PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.binary = orthanc_binary()
        self.port = 0
        self.proc: subprocess.Popen | None = None
        os.makedirs(os.path.join(folder, "db"), exist_ok=True)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"dicomweb+{self.http}/dicom-web"

    def start(self) -> "Orthanc":
        for attempt in range(5):  # a port taken between choosing and binding: choose again (a restart keeps its port)
            if not self.port or attempt:
                self.port = _free_port()
            config = {
                "Name": "radflow-test", "StorageDirectory": os.path.join(self.folder, "db"),
                "IndexDirectory": os.path.join(self.folder, "db"), "HttpPort": self.port,
                "DicomServerEnabled": False, "DicomPort": _free_port(), "RemoteAccessAllowed": False,
                "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}, "Plugins": [PLUGIN],
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
                "HttpCompressionEnabled": False, "StableAge": 1,
            }
            path = os.path.join(self.folder, "orthanc.json")
            with open(path, "w") as fh:
                json.dump(config, fh)
            log = open(os.path.join(self.folder, "orthanc.log"), "ab")
            self.proc = subprocess.Popen([self.binary, path], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    self.get("/system")
                    return self
                except OSError:
                    time.sleep(0.2)
            self.stop()
        raise RuntimeError(f"Orthanc did not start (see {self.folder}/orthanc.log)")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        req = urllib.request.Request(self.http + path, data=body, method=method)
        token = __import__("base64").b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.read()

    def get(self, path: str):
        return json.loads(self._request("GET", path))

    def upload(self, path: str) -> str:
        """POST one file to Orthanc's REST API; its ``Status`` (``Success``, ``AlreadyStored``)."""
        with open(path, "rb") as fh:
            return json.loads(self._request("POST", "/instances", fh.read()))["Status"]


class FaultProxy:
    def __init__(self, target: str, every_503: int = 0) -> None:
        self.target = urlsplit(target)
        self.every_503 = every_503
        self.on_retrieve = None
        self.missing: set[str] = set()  # SOP Instance UIDs whose retrieve answers 404
        self.injected = 0
        self.unreachable: list[str] = []
        self.in_flight = self.most_in_flight = 0
        self._refused: set[tuple[str, str]] = set()
        self.requests: Counter[str] = Counter()
        self._count = itertools.count(1)
        self._retrieves = itertools.count(1)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]] = ()) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                path = self.path
                retrieve = self.command == "GET" and "/instances/" in path and not path.rstrip("/").endswith("metadata")
                with proxy._lock:
                    n = next(proxy._count)
                    proxy.requests["retrieve" if retrieve else "other"] += 1
                    k = next(proxy._retrieves) if retrieve else 0
                if proxy.every_503 and n % proxy.every_503 == 0 and (self.command, path) not in proxy._refused:
                    with proxy._lock:  # (a request refused once is let through on its retries: no flaky pile-up)
                        proxy._refused.add((self.command, path))
                        proxy.injected += 1
                    self._reply(503, b"busy", [("Retry-After", "0")])
                    return
                if retrieve and path.rstrip("/").rsplit("/", 1)[-1] in proxy.missing:
                    self._reply(404, b"no such instance")
                    return
                if retrieve and proxy.on_retrieve is not None:
                    proxy.on_retrieve(k)
                # in flight: from the request read to the archive's answer read, before the answer is written
                # back (once written, the client may release its slot and another request start at once,
                # while this thread is still on its way to a decrement placed after the write)
                with proxy._lock:
                    proxy.in_flight += 1
                    proxy.most_in_flight = max(proxy.most_in_flight, proxy.in_flight)
                try:
                    conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=60)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    conn.request(self.command, path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    answer = (resp.status, resp.read(), resp.getheaders())
                    conn.close()
                except OSError as exc:
                    proxy.unreachable.append(f"{self.command} {path}: {exc!r}")
                    answer = (502, b"archive unreachable", [])
                finally:
                    with proxy._lock:
                        proxy.in_flight -= 1
                self._reply(*answer)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def dicomweb(self) -> str:
        return f"dicomweb+http://127.0.0.1:{self.port}/dicom-web"

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
