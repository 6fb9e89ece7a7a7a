"""The ingestion API's lean HEAD (lib/pinned_head.py) against a real server on loopback: kept-alive
connections, pinning, every hop checked, httpx's redirect and credential rules, httpx's errors.

The server is a small asyncio one written here: it counts connections, records what each
request carried, and can answer anything (a redirect, a broken status line, a close).
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from bq_pipelines.lib.errors import SourceRefused
from bq_pipelines.lib.pinned_head import MAX_REDIRECTS, AsyncPinnedHead
from bq_pipelines_tests.fixtures.tls import https_server, self_signed_certificate

OK = b'HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nETag: "v1"\r\n\r\n'


@dataclass
class Server:
    """Answers `routes[path](port)` (raw bytes) to each request; closes after it when the path
    is in `close_after`."""

    routes: dict[str, Callable[[int], bytes]]
    close_after: set[str] = field(default_factory=set)
    connections: int = 0
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                line, *lines = head.decode("latin-1").split("\r\n")
                path = line.split(" ")[1]
                headers = {
                    k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines if h)
                }
                self.requests.append((path, headers))
                writer.write(self.routes[path](self.port))
                await writer.drain()
                if path in self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


@asynccontextmanager
async def serving(server: Server) -> AsyncIterator[Server]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server


def redirect(to: str) -> Callable[[int], bytes]:
    return lambda port: (
        f"HTTP/1.1 302 Found\r\nLocation: {to.format(port=port)}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def pinned_to_loopback(checked: list[str] | None = None) -> AsyncPinnedHead:
    """Every host name resolves to 127.0.0.1 (the pinning); `checked` collects each hop."""

    async def check(url: str) -> None:
        if checked is not None:
            checked.append(url)
        if "/forbidden" in url:
            raise SourceRefused(url, "outside the allowlist")

    return AsyncPinnedHead(lambda host, port: ["127.0.0.1"], check)


def test_heads_share_one_kept_alive_connection_pinned_under_the_urls_host_name() -> None:
    async def run() -> tuple[list[int], Server]:
        async with serving(Server({"/a.tif": lambda port: OK})) as server:
            head = pinned_to_loopback()
            url = f"http://source.example:{server.port}/a.tif"
            statuses = [(await head.head(url, authorization=None, timeout=5)).status_code]
            for _ in range(29):
                answer = await head.head(url, authorization=None, timeout=5)
                statuses.append(answer.status_code)
            assert answer.headers["ETag"] == '"v1"' and answer.headers["Content-Length"] == "1234"
            await head.aclose()
            return statuses, server

    statuses, server = asyncio.run(run())
    assert statuses == [200] * 30
    assert server.connections == 1
    # Connected to 127.0.0.1, but the request names the URL's host, as httpx's would.
    assert {headers["host"] for _, headers in server.requests} == {f"source.example:{server.port}"}


def test_a_connection_the_server_closed_is_replaced_without_a_failed_head() -> None:
    async def run() -> tuple[list[int], Server]:
        server = Server({"/a.tif": lambda port: OK}, close_after={"/a.tif"})
        async with serving(server):
            head = pinned_to_loopback()
            url = f"http://127.0.0.1:{server.port}/a.tif"
            statuses = []
            for _ in range(3):
                statuses.append((await head.head(url, authorization=None, timeout=5)).status_code)
                await asyncio.sleep(0.05)  # the server's close arrives while the connection idles
            await head.aclose()
            return statuses, server

    statuses, server = asyncio.run(run())
    assert statuses == [200, 200, 200]
    assert server.connections == 3


def test_every_hop_is_checked_and_credentials_stay_on_their_origin() -> None:
    checked: list[str] = []

    async def run() -> tuple[Server, Server, httpx.Response]:
        async with serving(Server({"/elsewhere.tif": lambda port: OK})) as other:
            routes = {
                "/start.tif": redirect("/same-origin.tif"),
                "/same-origin.tif": redirect(f"http://127.0.0.1:{other.port}/elsewhere.tif"),
                "/to-forbidden.tif": redirect("/forbidden/secret.tif"),
                "/forbidden/secret.tif": lambda port: OK,
            }
            async with serving(Server(routes)) as first:
                head = pinned_to_loopback(checked)
                token = "Basic " + base64.b64encode(b"user:secret").decode()
                answer = await head.head(
                    f"http://127.0.0.1:{first.port}/start.tif", authorization=token, timeout=5
                )
                with pytest.raises(SourceRefused, match="forbidden"):
                    url = f"http://127.0.0.1:{first.port}/to-forbidden.tif"
                    await head.head(url, authorization=None, timeout=5)
                await head.aclose()
                return first, other, answer

    first, other, answer = asyncio.run(run())
    assert answer.status_code == 200 and str(answer.request.url).endswith("/elsewhere.tif")
    sent = {path: headers.get("authorization") for path, headers in first.requests + other.requests}
    token = "Basic " + base64.b64encode(b"user:secret").decode()
    assert sent["/start.tif"] == token and sent["/same-origin.tif"] == token
    assert sent["/elsewhere.tif"] is None  # another origin: dropped, as httpx does
    assert "/forbidden/secret.tif" not in sent  # refused before it was sent
    assert [url.rsplit("/", 1)[-1] for url in checked] == [
        "start.tif",
        "same-origin.tif",
        "elsewhere.tif",
        "to-forbidden.tif",
        "secret.tif",
    ]


def test_redirect_loops_and_broken_answers_are_httpx_errors() -> None:
    routes = {
        "/loop.tif": redirect("/loop.tif"),
        "/broken.tif": lambda port: b"HTTP/1.1 two hundred\r\n\r\n",
        "/closed.tif": lambda port: b"",
    }

    async def run() -> Server:
        async with serving(Server(routes, close_after={"/closed.tif"})) as server:
            head = pinned_to_loopback()
            base = f"http://127.0.0.1:{server.port}"
            with pytest.raises(httpx.TooManyRedirects):
                await head.head(f"{base}/loop.tif", authorization=None, timeout=5)
            with pytest.raises(httpx.RemoteProtocolError):
                await head.head(f"{base}/broken.tif", authorization=None, timeout=5)
            with pytest.raises(httpx.RemoteProtocolError, match="disconnected"):
                await head.head(f"{base}/closed.tif", authorization=None, timeout=5)
            with pytest.raises(httpx.UnsupportedProtocol):
                await head.head("ftp://127.0.0.1/x.tif", authorization=None, timeout=5)
            await head.aclose()
            return server

    server = asyncio.run(run())
    assert sum(path == "/loop.tif" for path, _ in server.requests) == MAX_REDIRECTS + 1


class _Head(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1234")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_tls_is_verified_for_the_urls_host_while_connecting_to_the_pinned_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A certificate for `localhost`, trusted through SSL_CERT_FILE: the connection goes to the
    pinned 127.0.0.1 and TLS verifies the URL's host name; an untrusted one is refused with
    the certificate error as its cause, as httpx's client gives it (lib/sources reads it so)."""
    certificate = self_signed_certificate(tmp_path / "tls", "localhost", dns_name="localhost")

    async def head_of(url: str) -> httpx.Response:
        head = pinned_to_loopback()
        try:
            return await head.head(url, authorization=None, timeout=5)
        finally:
            await head.aclose()

    with https_server(tmp_path / "tls", _Head) as server:
        url = f"https://localhost:{server.server_address[1]}/a.tif"
        with pytest.raises(httpx.ConnectError) as refused:
            asyncio.run(head_of(url))
        causes: list[BaseException] = [refused.value]
        while causes[-1].__cause__ is not None:
            causes.append(causes[-1].__cause__)
        assert any(isinstance(cause, ssl.SSLCertVerificationError) for cause in causes), causes
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate))
        answer = asyncio.run(head_of(url))
    assert answer.status_code == 200 and answer.headers["Content-Length"] == "1234"
