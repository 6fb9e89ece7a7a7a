"""A local HTTP server standing in for remote data hosts.

A real `ThreadingHTTPServer` on 127.0.0.1 (port 0) serves the files under a root folder with
Content-Length, ETag (size + mtime), Last-Modified, HEAD, single Range requests (206, If-Range) and
per-path fault injection. Every request is recorded, so tests can count what a client did.

`serving(root)` starts one for a `with` block; the tests' fixtures `http_host` and
`http_host_session` are in bq_pipelines_tests/fixtures/http_server.py.

`LocalHttpHost` API:
- `.root: Path`, `.base_url: str`, `.url(path) -> str`
- `.put(path, data: bytes) -> Path`: write a file under the root (parents created).
- `.mirror_path(remote_url) -> Path`, `.mirror_url(remote_url) -> str`: the legacy hosts' layout,
  `https://host/a/b.tif` is served as `<base_url>/host/a/b.tif` from `<root>/host/a/b.tif`.
- `.requests: list[RecordedRequest]` (method, path, headers); `.count(method, path=None)`.
- `.fail(path, status=503, times=1, method=None, headers=None)`: answer `status` instead of the
  file (`times=None`: always); `headers` adds e.g. `{"Retry-After": "1"}`.
- `.truncate(path, times=1)`: announce the full Content-Length, send half the body and close.
- `.delay(path, seconds, times=1)`: sleep before answering (to trigger client read timeouts).
- `.reset()`: forget faults and recorded requests.

Paths given to these methods are URL paths relative to the root, with or without a leading "/".
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

logger = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024
RANGE_PATTERN = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass
class _Fault:
    """A misbehaviour to apply to the next `times` matching requests (None: every request)."""

    kind: str  # "fail", "truncate" or "delay"
    times: int | None
    method: str | None = None
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def matches(self, method: str) -> bool:
        return (self.times is None or self.times > 0) and self.method in (None, method)

    def consume(self) -> None:
        if self.times is not None:
            self.times -= 1


def _normalise(path: str) -> str:
    """URL path without query, with exactly one leading slash, percent-decoded."""
    return "/" + unquote(urlsplit(path).path).lstrip("/")


class _Server(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: bursts of concurrent clients (the ingestion
    # API's benchmark) would see dropped SYNs and 1 s retransmits no real host imposes.
    request_queue_size = 128


class LocalHttpHost:
    """A running local HTTP host; see the module docstring for the API."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list[RecordedRequest] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            # A short poll interval keeps fixture teardown (shutdown) fast.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="local-http-host",
            daemon=True,
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + "/" + path.lstrip("/")

    def put(self, path: str, data: bytes) -> Path:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        # Atomic, so a request in flight keeps reading the old version like on a real host.
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, target)
        return target

    def mirror_path(self, remote_url: str) -> Path:
        parts = urlsplit(remote_url)
        return self.root / parts.netloc / unquote(parts.path).lstrip("/")

    def mirror_url(self, remote_url: str) -> str:
        parts = urlsplit(remote_url)
        return self.url(f"{parts.netloc}/{parts.path.lstrip('/')}")

    def count(self, method: str, path: str | None = None) -> int:
        wanted = None if path is None else _normalise(path)
        with self._lock:
            return sum(
                1
                for request in self.requests
                if request.method == method and wanted in (None, request.path)
            )

    def fail(
        self,
        path: str,
        status: int = 503,
        times: int | None = 1,
        method: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._add(path, _Fault("fail", times, method, status=status, headers=dict(headers or {})))

    def truncate(self, path: str, times: int | None = 1) -> None:
        self._add(path, _Fault("truncate", times, "GET"))

    def delay(self, path: str, seconds: float, times: int | None = 1) -> None:
        self._add(path, _Fault("delay", times, seconds=seconds))

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _add(self, path: str, fault: _Fault) -> None:
        with self._lock:
            self._faults.setdefault(_normalise(path), []).append(fault)

    def _record(self, method: str, raw_path: str, headers: dict[str, str]) -> str:
        path = _normalise(raw_path)
        with self._lock:
            self.requests.append(RecordedRequest(method, path, headers))
        return path

    def _take_fault(self, path: str, method: str, kind: str) -> _Fault | None:
        """The first active fault of `kind` for this request, consumed once."""
        with self._lock:
            for fault in self._faults.get(path, []):
                if fault.kind == kind and fault.matches(method):
                    fault.consume()
                    return fault
        return None


def _etag(size: int, mtime_ns: int) -> str:
    return f'"{size:x}-{mtime_ns:x}"'


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=` range, or None when it cannot be satisfied."""
    match = RANGE_PATTERN.match(header.strip())
    if not match or size == 0:
        return None
    first, last = match.groups()
    if not first:  # suffix range: the last N bytes
        if not last:
            return None
        return max(0, size - int(last)), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if start <= end else None


def _make_handler(host: LocalHttpHost) -> type[BaseHTTPRequestHandler]:
    """The request handler class of one host (the server builds one handler per request)."""
    return type("Handler", (_Handler,), {"host": host})


class _Handler(BaseHTTPRequestHandler):
    host: LocalHttpHost
    # HTTP/1.1 keeps connections alive like real hosts; every answer sets Content-Length.
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("local http host: " + format, *args)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def _serve(self, send_body: bool) -> None:
        path = self.host._record(self.command, self.path, dict(self.headers.items()))
        delay = self.host._take_fault(path, self.command, "delay")
        if delay:
            time.sleep(delay.seconds)
        failure = self.host._take_fault(path, self.command, "fail")
        if failure:
            self._send_status(failure.status, failure.headers, send_body)
            return
        target = (self.host.root / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.host.root.resolve()) or not target.is_file():
            self._send_status(HTTPStatus.NOT_FOUND, {}, send_body)
            return
        self._send_file(path, target, send_body)

    def _send_status(self, status: int, headers: dict[str, str], send_body: bool) -> None:
        body = f"{status} {HTTPStatus(status).phrase}\n".encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _send_file(self, path: str, target: Path, send_body: bool) -> None:
        stat = target.stat()
        size, etag = stat.st_size, _etag(stat.st_size, stat.st_mtime_ns)
        last_modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
        first, last = 0, size - 1
        status = HTTPStatus.OK
        if "Range" in self.headers and self._if_range_holds(etag, last_modified):
            wanted = _parse_range(self.headers["Range"], size)
            if wanted is None:
                self._send_status(
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                    {"Content-Range": f"bytes */{size}"},
                    send_body,
                )
                return
            first, last = wanted
            status = HTTPStatus.PARTIAL_CONTENT
        length = max(0, last - first + 1)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", last_modified)
        self.send_header("Accept-Ranges", "bytes")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        if not send_body:
            return
        truncated = self.host._take_fault(path, self.command, "truncate")
        with target.open("rb") as source:
            source.seek(first)
            self._copy(source, length // 2 if truncated else length)
        if truncated:
            # Closing after half the announced bytes is what a dropped connection looks like.
            self.close_connection = True

    def _if_range_holds(self, etag: str, last_modified: str) -> bool:
        validator = self.headers.get("If-Range")
        return validator is None or validator in (etag, last_modified)

    def _copy(self, source: BinaryIO, remaining: int) -> None:
        while remaining > 0:
            chunk = source.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                break
            self.wfile.write(chunk)
            remaining -= len(chunk)


@contextlib.contextmanager
def serving(root: Path) -> Iterator[LocalHttpHost]:
    """A started LocalHttpHost serving `root`, stopped on exit."""
    host = LocalHttpHost(root)
    host.start()
    try:
        yield host
    finally:
        host.stop()


__all__ = ["LocalHttpHost", "RecordedRequest", "serving"]
