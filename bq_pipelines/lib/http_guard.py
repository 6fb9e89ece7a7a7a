"""An httpx transport that connects only to addresses a policy accepts, pinned at connect time.

Checking a URL's host name and then letting the HTTP client resolve it again leaves a window in
which DNS can answer differently (DNS rebinding). Here the name is resolved once, by the policy,
and the TCP connection goes to one of the addresses it returned; TLS still verifies the
certificate against the host name (httpcore sends SNI and checks the name given by the URL).
"""

from __future__ import annotations

import contextlib
import functools
import os
import ssl
import typing
from collections.abc import Callable, Iterator, Sequence

import httpcore
import httpx

# Resolves `host` for a connection to `port` and returns the addresses allowed for it, in the
# order to try; raises (e.g. SourceRefused) when none is allowed.
AddressResolver = Callable[[str, int], Sequence[str]]

# Connections a pinned client keeps, busy or idle: more than the ingestion API's threads (anyio's
# pool: 40) probe at once, so a request never queues for a connection. httpcore's sync pool can
# close a connection it has just handed to a queued request (encode/httpcore#1110): a probe then
# failed with "[Errno 9] Bad file descriptor" under 20 concurrent clients, and its request was
# accepted as if the source had not answered.
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


@functools.lru_cache(maxsize=8)
def _ssl_context(verify: bool, cafile: str | None, capath: str | None) -> ssl.SSLContext:
    # Building a context loads the CA bundle (~70 ms here): one per settings, shared by every
    # connection (contexts are safe to share once configured). httpx reads SSL_CERT_FILE and
    # SSL_CERT_DIR itself; they are in the key so that a change takes effect.
    return httpx.create_ssl_context(verify=verify)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as error:
        for core, mapped in _ERRORS:
            if isinstance(error, core):
                raise mapped(str(error)) from error
        raise


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
        addresses = self._resolve(host, port)
        if not addresses:
            raise httpcore.ConnectError(f"{host}: no address to connect to")
        failure: Exception | None = None
        for address in addresses:
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
        with _httpx_errors():
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
            ssl_context=_ssl_context(
                verify, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
            ),
            network_backend=_PinnedBackend(resolve),
            # As many kept as allowed: a surplus keep-alive is closed by the pool, the same race.
            max_connections=MAX_CONNECTIONS,
            max_keepalive_connections=MAX_CONNECTIONS,
            keepalive_expiry=KEEPALIVE_SECONDS,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
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
        with _httpx_errors():
            response = self._pool.handle_request(core_request)
        assert isinstance(response.stream, typing.Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()
