"""A small HTTP proxy between s3fs and a moto server that injects S3's transient faults.

Every ``every``-th request gets a fault, cycling through:

* ``slowdown`` — ``503 SlowDown`` without forwarding the request;
* ``reset`` — the connection is reset (RST) before any response; the request is not forwarded;
* ``truncate`` — the request is forwarded, but the response body is cut short after its headers
  promised the full ``Content-Length`` (a PUT's empty reply is reset instead, after moto applied it).

Requests under ``forbidden`` answer ``403 AccessDenied`` (a permanent error, never retried).
Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import itertools
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("slowdown", "reset", "truncate")
_SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
_DENIED = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'


class FaultProxy:
    def __init__(self, target: str, every: int = 4, forbidden: str = "/forbidden") -> None:
        self.target = urlsplit(target)
        self.every = every
        self.forbidden = forbidden
        self.enabled = True
        self.injected: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _reply(self, status: int, body: bytes, headers=()) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":  # (a body after a HEAD's answer is read as the next answer's start)
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                path = urlsplit(self.path).path
                with proxy._lock:
                    proxy.requests[path] += 1
                    n = next(proxy._counter)
                if proxy.forbidden and proxy.forbidden in path:
                    self._reply(403, _DENIED, [("Content-Type", "application/xml")])
                    return
                fault = FAULTS[(n // proxy.every) % len(FAULTS)] if proxy.enabled and n % proxy.every == 0 else None
                if fault == "slowdown":
                    proxy._count(fault)
                    self._reply(503, _SLOWDOWN, [("Content-Type", "application/xml")])
                    return
                if fault == "reset":
                    proxy._count(fault)
                    self._reset()
                    return
                conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "content-length")}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None,
                             headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if fault == "truncate":
                    proxy._count(fault)
                    if len(data) < 16 or self.command == "HEAD":
                        self._reset()
                        return
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection"):
                            self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self._reset()
                    return
                self.send_response(resp.status)
                head = self.command == "HEAD"
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection") and (head or k.lower() != "content-length"):
                        self.send_header(k, v)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:  # a reset it caused itself: not news
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _count(self, fault: str) -> None:
        with self._lock:
            self.injected[fault] += 1

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
