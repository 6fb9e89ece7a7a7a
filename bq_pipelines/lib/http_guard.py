"""httpx transports that connect only to addresses a policy accepts, pinned at connect time:
`GuardedTransport` for `httpx.Client`, `AsyncGuardedTransport` for `httpx.AsyncClient` (the
ingestion API's probes, in its event loop). Both ask the same resolver, the policy's.

Checking a URL's host name and then letting the HTTP client resolve it again leaves a window in
which DNS can answer differently (DNS rebinding). Here the name is resolved once, by the policy,
and the TCP connection goes to one of the addresses it returned; TLS still verifies the
certificate against the host name (httpcore sends SNI and checks the name given by the URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import ssl
import typing
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import anyio.to_thread
import httpcore
import httpx

# Resolves `host` for a connection to `port` and returns the addresses allowed for it, in the
# order to try; raises (e.g. SourceRefused) when none is allowed.
AddressResolver = Callable[[str, int], Sequence[str]]

# Connections a pinned client keeps, busy or idle: more than the requests that share it at once
# (the ingestion API's 20-40 concurrent probes, a run's threads), so none queues for a
# connection. httpcore's sync pool can close a connection it has just handed to a queued request
# (encode/httpcore#1110): a probe through the API's shared threaded client failed with "[Errno 9]
# Bad file descriptor" under 20 clients, and its request was accepted as if the source had not
# answered.
MAX_CONNECTIONS = 64
KEEPALIVE_SECONDS = 5.0  # httpx's default

# httpcore and httpx name their exceptions alike; callers classify httpx's.
_ERRORS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProxyError, httpx.ProxyError),
)


def verified_context(verify: bool) -> ssl.SSLContext:
    return _ssl_context(verify, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=8)
def _ssl_context(verify: bool, cafile: str | None, capath: str | None) -> ssl.SSLContext:
    # Building a context loads the CA bundle (~70 ms here): one per settings, shared by every
    # connection (contexts are safe to share once configured). httpx reads SSL_CERT_FILE and
    # SSL_CERT_DIR itself; they are in the key so that a change takes effect.
    return httpx.create_ssl_context(verify=verify)


@contextlib.contextmanager
def httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as error:
        for core, mapped in _ERRORS:
            if isinstance(error, core):
                raise mapped(str(error)) from error
        raise


def _pool_options(verify: bool) -> dict[str, typing.Any]:
    return {
        "ssl_context": verified_context(verify),
        # As many kept as allowed: a surplus keep-alive is closed by the pool, the same race.
        "max_connections": MAX_CONNECTIONS,
        "max_keepalive_connections": MAX_CONNECTIONS,
        "keepalive_expiry": KEEPALIVE_SECONDS,
    }


def _core_request(request: httpx.Request) -> httpcore.Request:
    return httpcore.Request(
        method=request.method,
        url=httpcore.URL(
            scheme=request.url.raw_scheme,
            host=request.url.raw_host,
            port=request.url.port,
            target=request.url.raw_path,
        ),
        headers=request.headers.raw,
        content=request.stream,
        extensions=request.extensions,
    )


def _addresses_to_try(host: str, addresses: Sequence[str]) -> Sequence[str]:
    if not addresses:
        raise httpcore.ConnectError(f"{host}: no address to connect to")
    return addresses


class _PinnedBackend(httpcore.NetworkBackend):
    """Opens TCP connections to the resolver's addresses only; never a Unix socket."""

    def __init__(self, resolve: AddressResolver) -> None:
        self._resolve = resolve
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        failure: Exception | None = None
        for address in _addresses_to_try(host, self._resolve(host, port)):
            try:
                return self._inner.connect_tcp(
                    address, port, timeout, local_address, list(socket_options or [])
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error
        assert failure is not None
        raise failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("connections to Unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: typing.Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with httpx_errors():
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class GuardedTransport(httpx.BaseTransport):
    """`httpx.Client(transport=GuardedTransport(resolve))`: every connection (redirect hops
    included) goes to an address `resolve` allowed. No proxies: they would connect for us."""

    def __init__(self, resolve: AddressResolver, *, verify: bool = True) -> None:
        self._pool = httpcore.ConnectionPool(
            network_backend=_PinnedBackend(resolve), **_pool_options(verify)
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        with httpx_errors():
            response = self._pool.handle_request(_core_request(request))
        assert isinstance(response.stream, typing.Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


@contextlib.contextmanager
def _mapped(kind: type[Exception], timeout_kind: type[Exception]) -> Iterator[None]:
    """OS and TLS errors as httpcore's `kind`, a timeout as `timeout_kind` (the cause kept:
    lib/sources tells a certificate failure by it)."""
    try:
        yield
    except TimeoutError as error:
        raise timeout_kind(str(error) or "timed out") from error
    except (OSError, ssl.SSLError, EOFError) as error:
        raise kind(str(error) or type(error).__name__) from error


class AsyncioStream(httpcore.AsyncNetworkStream):
    """A connection on asyncio's streams. httpcore's anyio stream cost the API's probe more
    CPU than the request itself: anyio builds its attribute table on every keep-alive check
    (`is_readable`, asked before each reuse) and takes a task lookup on every read and write."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _mapped(httpcore.ReadError, httpcore.ReadTimeout):
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        with _mapped(httpcore.WriteError, httpcore.WriteTimeout):
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()

    async def aclose(self) -> None:
        self.close_now()

    def close_now(self) -> None:
        """Close without waiting (asyncio's close is not a coroutine): for callers outside one."""
        self._writer.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        with _mapped(httpcore.ConnectError, httpcore.ConnectTimeout):
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        return self

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":
            # Idle keep-alive connection: anything received (data, or the server's close)
            # means it cannot carry another request. The transport reads eagerly, so look at
            # what it buffered, not at the socket.
            buffered = getattr(self._reader, "_buffer", b"")
            return self._reader.at_eof() or bool(buffered) or self._writer.is_closing()
        names = {"client_addr": "sockname", "server_addr": "peername"}
        return self._writer.get_extra_info(names.get(info, info))


class AsyncPinnedBackend(httpcore.AsyncNetworkBackend):
    """`_PinnedBackend` for an event loop: the same resolver, run in a worker thread (it may
    ask DNS), once per new connection; kept-alive connections do not ask again."""

    def __init__(self, resolve: AddressResolver) -> None:
        self._resolve = resolve

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await anyio.to_thread.run_sync(self._resolve, host, port)
        failure: Exception | None = None
        for address in _addresses_to_try(host, addresses):
            try:
                return await _connect(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("connections to Unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connect(
    address: str,
    port: int,
    timeout: float | None,
    local_address: str | None,
    socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None,
) -> AsyncioStream:
    local = None if local_address is None else (local_address, 0)
    with _mapped(httpcore.ConnectError, httpcore.ConnectTimeout):
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(address, port, local_addr=local)
        sock = writer.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
    return AsyncioStream(reader, writer)


class _AsyncResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: typing.AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with httpx_errors():
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class AsyncGuardedTransport(httpx.AsyncBaseTransport):
    """`httpx.AsyncClient(transport=AsyncGuardedTransport(resolve))`: `GuardedTransport` for an
    event loop, every connection pinned to the addresses `resolve` allowed."""

    def __init__(self, resolve: AddressResolver, *, verify: bool = True) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            network_backend=AsyncPinnedBackend(resolve), **_pool_options(verify)
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        with httpx_errors():
            response = await self._pool.handle_async_request(_core_request(request))
        assert isinstance(response.stream, typing.AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_AsyncResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
