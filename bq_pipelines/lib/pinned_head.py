"""One HEAD request, lean, for an event loop: the ingestion API's probe of a request's source.

The same guarantees as an `httpx.AsyncClient` on `AsyncGuardedTransport` (lib/http_guard.py):
each connection pinned to the addresses the policy's resolver allowed, every redirect hop
checked before it is sent, httpx's redirect rules. Without httpx's client and httpcore's pool,
which cost ~1.1 ms of CPU per HEAD on a kept-alive connection, two thirds of an accepted POST
(bench/NOTES.md, "what the HEAD costs"). Anything but a HEAD (the ranged GET a server that
refuses HEAD gets, downloads) stays on httpx.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import h11
import httpcore
import httpx

from bq_pipelines.lib.http_guard import (
    KEEPALIVE_SECONDS,
    MAX_CONNECTIONS,
    AddressResolver,
    AsyncioStream,
    AsyncPinnedBackend,
    httpx_errors,
    verified_context,
)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 20  # httpx's default
READ_SIZE = 64 * 1024
DEFAULT_PORTS = {"http": 80, "https": 443}
# What the HEADs sent through httpx say: a source host sees one client.
HEAD_HEADERS = [
    (b"Accept", b"*/*"),
    (b"Accept-Encoding", b"identity"),
    (b"Connection", b"keep-alive"),
    (b"User-Agent", f"python-httpx/{httpx.__version__}".encode()),
]


@dataclass
class _HeadConnection:
    stream: AsyncioStream
    protocol: h11.Connection
    idle_since: float = 0.0

    def reusable(self, now: float) -> bool:
        # Anything buffered, or the server's close, means it cannot carry another request.
        fresh = now - self.idle_since < KEEPALIVE_SECONDS
        return fresh and not self.stream.get_extra_info("is_readable")


def _host(url: httpx.URL) -> str:
    """The host as sent (IDNA-encoded), as httpcore connects to it and verifies TLS for it."""
    return url.raw_host.decode("ascii")


def _port(url: httpx.URL) -> int:
    return url.port or DEFAULT_PORTS.get(url.scheme, 0)


def _keeps_authorization(previous: httpx.URL, target: httpx.URL) -> bool:
    """httpx's rule: a redirect keeps the Authorization header within one origin (and from
    http:80 to https:443 of the same host), and drops it for good anywhere else."""
    same = (previous.scheme, previous.host, _port(previous)) == (
        target.scheme,
        target.host,
        _port(target),
    )
    upgrade = (
        previous.host == target.host
        and (previous.scheme, _port(previous)) == ("http", 80)
        and (target.scheme, _port(target)) == ("https", 443)
    )
    return same or upgrade


class AsyncPinnedHead:
    """HEAD requests on kept-alive pinned connections (one pool per origin), every hop checked by
    `check` before it is sent; errors are httpx's, so callers classify them as for httpx. Bound
    to the event loop that first uses it."""

    def __init__(
        self,
        resolve: AddressResolver,
        check: Callable[[str], Awaitable[None]],
        *,
        verify: bool = True,
    ) -> None:
        self._backend = AsyncPinnedBackend(resolve)
        self._check = check
        self._verify = verify
        self._idle: dict[tuple[str, str, int], list[_HeadConnection]] = {}

    async def head(self, url: str, *, authorization: str | None, timeout: float) -> httpx.Response:
        """The answer to HEAD `url` after its redirects (`authorization`: the header's value
        for the URL's origin); `timeout` for each connect, read and write, as httpx's."""
        current = httpx.URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            await self._check(str(current))
            if current.scheme not in DEFAULT_PORTS:
                raise httpx.UnsupportedProtocol(
                    f"Request URL has an unsupported protocol '{current.scheme}://'."
                )
            response = await self._request(current, authorization, timeout)
            location = response.headers.get("Location")
            if response.status_code not in REDIRECT_STATUSES or location is None:
                return response
            try:
                target = current.join(location)
            except httpx.InvalidURL as error:
                raise httpx.RemoteProtocolError(
                    f"Invalid URL in location header: {error}."
                ) from None
            if not _keeps_authorization(current, target):
                authorization = None
            current = target
        raise httpx.TooManyRedirects("Exceeded maximum allowed redirects.")

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await connection.stream.aclose()

    async def _request(
        self, url: httpx.URL, authorization: str | None, timeout: float
    ) -> httpx.Response:
        key = (url.scheme, _host(url), _port(url))
        connection = self._take(key)
        if connection is not None:
            try:
                return await self._exchange(key, connection, url, authorization, timeout)
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                pass  # a kept-alive connection the server closed meanwhile: once more, anew
        connection = await self._connect(url, timeout)
        return await self._exchange(key, connection, url, authorization, timeout)

    def _take(self, key: tuple[str, str, int]) -> _HeadConnection | None:
        idle = self._idle.get(key, [])
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.reusable(now):
                return connection
            connection.stream.close_now()
        return None

    def _put(self, key: tuple[str, str, int], connection: _HeadConnection) -> None:
        """Back to the origin's idle list, newest last (taken first); the oldest, expired or
        beyond MAX_CONNECTIONS, are closed rather than left to the server's timeout."""
        now = time.monotonic()
        connection.idle_since = now
        idle = self._idle.setdefault(key, [])
        idle.append(connection)
        while idle and (len(idle) > MAX_CONNECTIONS or not idle[0].reusable(now)):
            idle.pop(0).stream.close_now()

    async def _connect(self, url: httpx.URL, timeout: float) -> _HeadConnection:
        with httpx_errors():
            stream: httpcore.AsyncNetworkStream = await self._backend.connect_tcp(
                _host(url), _port(url), timeout=timeout
            )
            if url.scheme == "https":
                stream = await stream.start_tls(
                    verified_context(self._verify), server_hostname=_host(url), timeout=timeout
                )
        assert isinstance(stream, AsyncioStream)
        return _HeadConnection(stream, h11.Connection(h11.CLIENT))

    async def _exchange(
        self,
        key: tuple[str, str, int],
        connection: _HeadConnection,
        url: httpx.URL,
        authorization: str | None,
        timeout: float,
    ) -> httpx.Response:
        headers = [(b"Host", url.netloc), *HEAD_HEADERS]
        if authorization is not None:
            headers.append((b"Authorization", authorization.encode("latin-1")))
        kept = False
        try:
            with httpx_errors(), _h11_errors():
                protocol = connection.protocol
                request = h11.Request(method=b"HEAD", target=url.raw_path, headers=headers)
                ended = h11.EndOfMessage()  # no body: sent as nothing, needed by h11's states
                await connection.stream.write(
                    (protocol.send(request) or b"") + (protocol.send(ended) or b""), timeout
                )
                answer = await _answer(connection, timeout)
            if protocol.our_state is h11.DONE and protocol.their_state is h11.DONE:
                protocol.start_next_cycle()
                self._put(key, connection)
                kept = True
        finally:
            if not kept:
                connection.stream.close_now()
        return httpx.Response(
            status_code=answer.status_code,
            headers=answer.headers,
            extensions={"reason_phrase": answer.reason, "http_version": b"HTTP/1.1"},
            request=httpx.Request("HEAD", url),
        )


async def _answer(connection: _HeadConnection, timeout: float) -> h11.Response:
    """Read until the HEAD's answer is complete (h11 knows it has no body)."""
    protocol, answer = connection.protocol, None
    while True:
        event = protocol.next_event()
        if event is h11.NEED_DATA:
            chunk = await connection.stream.read(READ_SIZE, timeout)
            if not chunk and answer is None:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            protocol.receive_data(chunk)
        elif isinstance(event, h11.Response):
            answer = event
        elif isinstance(event, h11.EndOfMessage) and answer is not None:
            return answer
        elif isinstance(event, h11.ConnectionClosed):
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        elif event is h11.PAUSED:  # not before the answer's end, which returns above
            raise httpx.RemoteProtocolError("Server sent more than one answer.")


@contextlib.contextmanager
def _h11_errors() -> Iterator[None]:
    try:
        yield
    except h11.RemoteProtocolError as error:
        raise httpx.RemoteProtocolError(str(error)) from error
    except h11.LocalProtocolError as error:
        raise httpx.LocalProtocolError(str(error)) from error
